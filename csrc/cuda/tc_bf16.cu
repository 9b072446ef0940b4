// The tensor-core kernels of Bf16Path (one file per operand path, so they compile in parallel).
#include "tc_kernels.cuh"

namespace coun_fast::tc {

template int launch_prepare<Bf16Path>(const Params&, cudaStream_t);
template int launch_forward<Bf16Path>(const Params&, bool, int, cudaStream_t);
template int launch_backward<Bf16Path>(const Params&, int, bool, int, cudaStream_t);
template int launch_finish<Bf16Path>(const Params&, bool, cudaStream_t);

}  // namespace coun_fast::tc

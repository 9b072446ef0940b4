// The tensor-core kernels of F16Path (one file per operand path, so they compile in parallel).
#include "tc_kernels.cuh"

namespace coun_fast::tc {

template int launch_prepare<F16Path>(const Params&, cudaStream_t);
template int launch_forward<F16Path>(const Params&, bool, int, cudaStream_t);
template int launch_backward<F16Path>(const Params&, int, bool, int, cudaStream_t);
template int launch_finish<F16Path>(const Params&, bool, cudaStream_t);

}  // namespace coun_fast::tc

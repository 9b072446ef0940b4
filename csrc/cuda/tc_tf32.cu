// The tensor-core kernels of Tf32Path (one file per operand path, so they compile in parallel).
#include "tc_kernels.cuh"

namespace coun_fast::tc {

template int launch_prepare<Tf32Path>(const Params&, cudaStream_t);
template int launch_forward<Tf32Path>(const Params&, bool, int, cudaStream_t);
template int launch_backward<Tf32Path>(const Params&, int, bool, int, cudaStream_t);
template int launch_finish<Tf32Path>(const Params&, bool, cudaStream_t);

}  // namespace coun_fast::tc

// The CUDA paths of coun_fast._C, run on the CPU by the CUDA emulation (cuda_emulation.h), behind
// a C interface for tests: tests/cuda_emulation.py compiles this file together with csrc/cuda/*.cu
// (as C++, with COUN_FAST_EMULATE) into a shared library and calls it through ctypes. The calls go
// through the same entry points the extension uses (cuda_workspace, contrastive_forward_cuda,
// contrastive_backward_cuda), so dispatch, planning, launches and kernels are all exercised. Not
// part of the package's extension.
#include "../cuda/tc_plan.h"
#include "coun_fast/contrastive.h"

using namespace coun_fast;

extern "C" {

// A matrix as the extension takes it: data, rows, dim, strides in elements, dtype code.
struct EmuMatrix {
  const void* data;
  int64_t rows, dim, row_stride, col_stride;
  int32_t dtype;
};

// One problem (see contrastive.h), the CUDA path (contrastive.h's CudaPath) and the emulated
// device (an index into cuda_emulation.h's g_devices).
struct EmuCall {
  EmuMatrix a, b;
  int32_t self, exclude_self, symmetric, reduction, rule;
  int64_t paired;  // > 0: the paired-prefix comparison
  float temperature;
  const int64_t* index;
  const int64_t* anchor_labels;
  const int64_t* candidate_labels;
  int32_t path, device;
};

}  // extern "C"

namespace {

MatrixView view(const EmuMatrix& m) {
  return MatrixView{m.data, m.rows, m.dim, m.row_stride, m.col_stride, static_cast<DType>(m.dtype)};
}

Problem problem_of(const EmuCall& call) {
  Problem problem{};
  problem.a = view(call.a);
  problem.self = call.self != 0;
  problem.b = problem.self ? problem.a : view(call.b);
  problem.compare = Comparison{call.paired > 0      ? Compare::kPairedPrefix
                               : call.exclude_self ? Compare::kExcludeSelf
                                                   : Compare::kAll,
                               call.paired};
  problem.symmetric = call.symmetric != 0;
  problem.temperature = call.temperature;
  problem.positives = Positives{static_cast<PositiveRule>(call.rule), call.index, call.anchor_labels,
                                call.candidate_labels, problem.a.rows / 2, false};
  problem.reduction = static_cast<Reduction>(call.reduction);
  return problem;
}

CudaLaunch launch_of(const EmuCall& call, void* saved, void* scratch) {
  return CudaLaunch{call.device, nullptr, static_cast<CudaPath>(call.path), saved, scratch};
}

}  // namespace

extern "C" {

// sizes[0..2]: saved, forward scratch, backward scratch bytes; for the tensor-core path also
// sizes[3..5]: forward splits, backward splits, backward variant (g_chunks).
void emu_workspace(const EmuCall* call, int64_t* sizes) {
  const Problem problem = problem_of(*call);
  const CudaWorkspace w = cuda_workspace(problem, static_cast<CudaPath>(call->path), call->device);
  sizes[0] = w.saved_bytes;
  sizes[1] = w.forward_scratch_bytes;
  sizes[2] = w.backward_scratch_bytes;
  const auto& device = coun_fast_emu::g_devices[call->device];
  tc::DeviceInfo info;
  info.sm_count = device.sm_count;
  info.shared_optin = device.shared_optin;
  info.major = 9;
  const tc::Plan plan = tc::make_plan(problem, info);
  sizes[3] = plan.params.forward_splits;
  sizes[4] = plan.params.backward_splits;
  sizes[5] = plan.g_chunks;
}

int emu_forward(const EmuCall* call, float* out, float* stats, void* saved, void* scratch) {
  return contrastive_forward_cuda(problem_of(*call), out, stats, launch_of(*call, saved, scratch));
}

int emu_backward(const EmuCall* call, const float* grad_out, const float* stats, void* saved,
                 void* scratch, void* grad_a, void* grad_b) {
  return contrastive_backward_cuda(problem_of(*call), grad_out, stats, grad_a, grad_b,
                                   launch_of(*call, saved, scratch));
}

}  // extern "C"

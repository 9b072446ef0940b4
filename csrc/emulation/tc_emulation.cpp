// The tensor-core path's kernels and plan, run on the CPU by the CUDA emulation
// (cuda_emulation.h), behind a C interface for tests (tests/test_tc_emulation.py builds this file
// into a shared library and calls it through ctypes). Not part of the package's extension.
#define COUN_FAST_EMULATE 1

#include "../cuda/tc_kernels.cuh"

namespace {

using namespace coun_fast;
using namespace coun_fast::tc;

}  // namespace

extern "C" {

// A matrix as the extension takes it: data, rows, dim, strides in elements, dtype code.
struct EmuMatrix {
  const void* data;
  int64_t rows, dim, row_stride, col_stride;
  int32_t dtype;
};

// One problem (see contrastive.h) and the emulated device.
struct EmuCall {
  EmuMatrix a, b;
  int32_t self, exclude_self, symmetric, reduction, rule;
  float temperature;
  const int64_t* index;
  const int64_t* anchor_labels;
  const int64_t* candidate_labels;
  int32_t sm_count, shared_optin;
};

}  // extern "C"

namespace {

MatrixView view(const EmuMatrix& m) {
  return MatrixView{m.data, m.rows, m.dim, m.row_stride, m.col_stride, static_cast<DType>(m.dtype)};
}

Plan plan_of(const EmuCall& call) {
  Problem problem{};
  problem.a = view(call.a);
  problem.self = call.self != 0;
  problem.b = problem.self ? problem.a : view(call.b);
  problem.exclude_self = call.exclude_self != 0;
  problem.symmetric = call.symmetric != 0;
  problem.temperature = call.temperature;
  problem.positives = Positives{static_cast<PositiveRule>(call.rule), call.index, call.anchor_labels,
                                call.candidate_labels, problem.a.rows / 2, false};
  problem.reduction = static_cast<Reduction>(call.reduction);
  DeviceInfo device;
  device.sm_count = call.sm_count;
  device.shared_optin = call.shared_optin;
  device.major = 9;
  return make_plan(problem, device);
}

template <class Path>
void run_forward(const Plan& plan) {
  coun_fast_emu::launch(prepare_kernel<Path>, prepare_grid(plan.params), kThreads, 0, plan.params);
  coun_fast_emu::launch(forward_kernel<Path>, forward_grid(plan.params), kThreads, plan.forward_shared,
                        plan.params);
}

template <class Path>
void run_backward(const Plan& plan) {
  coun_fast_emu::launch(backward_kernel<Path>(plan.g_chunks), backward_grid(plan.params), kThreads,
                        plan.backward_shared, plan.params);
}

}  // namespace

extern "C" {

// sizes[0..2] = saved, forward scratch, backward scratch bytes; sizes[3..5] = forward splits,
// backward splits, backward variant (g_chunks).
void emu_plan(const EmuCall* call, int64_t* sizes) {
  const Plan plan = plan_of(*call);
  sizes[0] = plan.saved_bytes;
  sizes[1] = plan.forward_scratch_bytes;
  sizes[2] = plan.backward_scratch_bytes;
  sizes[3] = plan.params.forward_splits;
  sizes[4] = plan.params.backward_splits;
  sizes[5] = plan.g_chunks;
}

void emu_forward(const EmuCall* call, float* out, float* stats, void* saved, void* scratch) {
  Plan plan = plan_of(*call);
  bind(plan, saved, scratch, nullptr);
  set_forward_outputs(plan, out, stats);
  switch (plan.kind) {
    case Kind::kBf16:
      return run_forward<Bf16Path>(plan);
    case Kind::kF16:
      return run_forward<F16Path>(plan);
    default:
      return run_forward<Tf32Path>(plan);
  }
}

void emu_backward(const EmuCall* call, const float* grad_out, const float* stats, void* saved,
                  void* scratch, void* grad_a, void* grad_b) {
  Plan plan = plan_of(*call);
  bind(plan, saved, nullptr, scratch);
  set_backward_io(plan, grad_out, stats, grad_a, grad_b);
  switch (plan.kind) {
    case Kind::kBf16:
      return run_backward<Bf16Path>(plan);
    case Kind::kF16:
      return run_backward<F16Path>(plan);
    default:
      return run_backward<Tf32Path>(plan);
  }
}

}  // extern "C"

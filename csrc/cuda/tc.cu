// Host side of the tensor-core path: device queries and the launches (the plan is in tc_plan.h,
// the kernels in tc_kernels.cuh, instantiated per operand path in tc_*.cu).
#include <mutex>

#include "cuda_api.h"
#include "tc.h"
#include "tc_plan.h"

namespace coun_fast::tc {
namespace {

constexpr int kMaxDevices = 64;

// Queried once per device.
const DeviceInfo& device_info(int device) {
  static DeviceInfo cache[kMaxDevices];
  static bool known[kMaxDevices] = {};
  static std::mutex mutex;
  static DeviceInfo invalid{cudaErrorInvalidDevice};
  if (device < 0 || device >= kMaxDevices) return invalid;
  std::lock_guard<std::mutex> lock(mutex);
  if (!known[device]) {
    DeviceInfo& info = cache[device];
    int status = cudaDeviceGetAttribute(&info.sm_count, cudaDevAttrMultiProcessorCount, device);
    if (status == cudaSuccess)
      status = cudaDeviceGetAttribute(&info.shared_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (status == cudaSuccess)
      status = cudaDeviceGetAttribute(&info.major, cudaDevAttrComputeCapabilityMajor, device);
    if (status == cudaSuccess && info.major < 8) status = cudaErrorNotSupported;  // needs sm_80+
    info.status = status;
    if (status != cudaSuccess) cudaGetLastError();
    known[device] = true;
  }
  return cache[device];
}

template <class Path>
int run_forward(const Plan& plan, bool occupancy, cudaStream_t stream) {
  if (int status = launch_prepare<Path>(plan.params, stream)) return status;
  return launch_forward<Path>(plan.params, occupancy, plan.forward_shared, stream);
}

template <class Path>
int run_backward(const Plan& plan, bool occupancy, cudaStream_t stream) {
  if (int status = launch_backward<Path>(plan.params, plan.g_chunks, occupancy, plan.backward_shared, stream))
    return status;
  return launch_finish<Path>(plan.params, occupancy, stream);
}

// The device's information, or the error that keeps the tensor-core path off it.
int check_device(const Problem& problem, int device, const DeviceInfo** info) {
  if (problem.a.dtype != problem.b.dtype) return cudaErrorInvalidValue;
  *info = &device_info(device);
  return (*info)->status;
}

}  // namespace

CudaWorkspace workspace(const Problem& problem, int device) {
  const DeviceInfo* info = nullptr;
  if (check_device(problem, device, &info) != cudaSuccess) return CudaWorkspace{0, 0, 0};
  const Plan plan = make_plan(problem, *info);
  return CudaWorkspace{plan.saved_bytes, plan.forward_scratch_bytes, plan.backward_scratch_bytes};
}

int forward(const Problem& problem, float* out, float* stats, const CudaLaunch& launch) {
  const DeviceInfo* info = nullptr;
  if (int status = check_device(problem, launch.device, &info)) return status;
  if (cudaError_t status = cudaSetDevice(launch.device)) return status;
  Plan plan = make_plan(problem, *info);
  bind(plan, launch.saved, launch.scratch, nullptr);
  set_forward_outputs(plan, out, stats);
  auto stream = static_cast<cudaStream_t>(launch.stream);
  const bool occupancy = launch.path == CudaPath::kTensorCoresOccupancy;
  switch (plan.kind) {
    case Kind::kBf16:
      return run_forward<Bf16Path>(plan, occupancy, stream);
    case Kind::kF16:
      return run_forward<F16Path>(plan, occupancy, stream);
    default:
      return run_forward<Tf32Path>(plan, occupancy, stream);
  }
}

int backward(const Problem& problem, const float* grad_out, const float* stats, void* grad_a,
             void* grad_b, const CudaLaunch& launch) {
  const DeviceInfo* info = nullptr;
  if (int status = check_device(problem, launch.device, &info)) return status;
  if (cudaError_t status = cudaSetDevice(launch.device)) return status;
  Plan plan = make_plan(problem, *info);
  bind(plan, launch.saved, nullptr, launch.scratch);
  set_backward_io(plan, grad_out, stats, grad_a, grad_b);
  auto stream = static_cast<cudaStream_t>(launch.stream);
  const bool occupancy = launch.path == CudaPath::kTensorCoresOccupancy;
  switch (plan.kind) {
    case Kind::kBf16:
      return run_backward<Bf16Path>(plan, occupancy, stream);
    case Kind::kF16:
      return run_backward<F16Path>(plan, occupancy, stream);
    default:
      return run_backward<Tf32Path>(plan, occupancy, stream);
  }
}

}  // namespace coun_fast::tc

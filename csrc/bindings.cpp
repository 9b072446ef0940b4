// pybind11 module coun_fast._C: validates arguments and dispatches to the CPU or CUDA kernels.
// No math here. Tensors arrive as plain integers (data pointers) with their sizes, element strides
// and a dtype code, so the module does not depend on torch's C++ ABI (see DESIGN.md decision 3).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>

#include "coun_fast/contrastive.h"

namespace py = pybind11;
using namespace coun_fast;

namespace {

// (data_ptr, rows, dim, row_stride, col_stride, dtype_code)
using MatrixArg = std::tuple<uintptr_t, int64_t, int64_t, int64_t, int64_t, int>;
// (index_ptr, anchor_labels_ptr, candidate_labels_ptr); 0 for absent
using PositivesArg = std::tuple<uintptr_t, uintptr_t, uintptr_t>;
// (positives, lse_ptr, count_ptr, grad_ptr)
using DirectionArg = std::tuple<PositivesArg, uintptr_t, uintptr_t, uintptr_t>;
// device index (-1: CPU), stream handle, workspace pointer, CPU threads
struct Target {
  int device;
  uintptr_t stream;
  uintptr_t workspace;
  int num_threads;
};

void require(bool condition, const std::string& message) {
  if (!condition) throw std::invalid_argument(message);
}

MatrixView to_view(const MatrixArg& arg, const char* name) {
  const auto& [ptr, rows, dim, row_stride, col_stride, dtype] = arg;
  require(ptr != 0, std::string(name) + ": null data pointer");
  require(rows > 0, std::string(name) + ": needs at least one row, got " + std::to_string(rows));
  require(dim > 0 && dim <= kMaxDim, std::string(name) + ": feature dimension must be in [1, " +
                                         std::to_string(kMaxDim) + "], got " + std::to_string(dim));
  require(dtype >= 0 && dtype <= 2,
          std::string(name) + ": dtype code must be 0 (float32), 1 (float16) or 2 (bfloat16)");
  return MatrixView{reinterpret_cast<const void*>(ptr), rows, dim, row_stride, col_stride,
                    static_cast<DType>(dtype)};
}

Positives to_positives(const PositivesArg& arg) {
  const auto& [index, anchor_labels, candidate_labels] = arg;
  require(index != 0 || (anchor_labels != 0 && candidate_labels != 0),
          "positives: give an index, or both anchor and candidate labels");
  return Positives{reinterpret_cast<const int64_t*>(index),
                   reinterpret_cast<const int64_t*>(anchor_labels),
                   reinterpret_cast<const int64_t*>(candidate_labels)};
}

std::optional<Direction> to_direction(const std::optional<DirectionArg>& arg) {
  if (!arg) return std::nullopt;
  const auto& [positives, lse, count, grad] = *arg;
  require(lse != 0 && count != 0 && grad != 0, "direction: lse, count and grad are required");
  return Direction{to_positives(positives),
                   RowStats{reinterpret_cast<const float*>(lse),
                            reinterpret_cast<const float*>(count),
                            reinterpret_cast<const float*>(grad)}};
}

void check_temperature(float temperature) {
  require(std::isfinite(temperature) && temperature > 0.f,
          "temperature must be a finite number > 0, got " + std::to_string(temperature));
}

#ifdef COUN_FAST_WITH_CUDA
CudaLaunch to_launch(const Target& target) {
  require(target.workspace != 0, "CUDA call without a workspace");
  return CudaLaunch{target.device, reinterpret_cast<void*>(target.stream),
                    reinterpret_cast<float*>(target.workspace)};
}

void check_cuda(int status, const char* what) {
  if (status != 0) throw std::runtime_error(std::string(what) + ": " + cuda_error_string(status));
}
#endif

[[noreturn]] void no_cuda() {
  throw std::runtime_error("coun_fast._C was built without CUDA kernels (nvcc was not found, or "
                           "COUN_FAST_CUDA=0); rebuild with nvcc on PATH");
}

void forward(const MatrixArg& anchors_arg, const MatrixArg& candidates_arg, float temperature,
             const PositivesArg& positives_arg, bool exclude_self, uintptr_t loss, uintptr_t lse,
             uintptr_t count, const Target& target) {
  const MatrixView anchors = to_view(anchors_arg, "anchors");
  const MatrixView candidates = to_view(candidates_arg, "candidates");
  require(anchors.dim == candidates.dim, "anchors and candidates differ in feature dimension");
  require(!exclude_self || anchors.rows == candidates.rows,
          "exclude_self needs as many candidates as anchors");
  check_temperature(temperature);
  const Positives positives = to_positives(positives_arg);
  auto* loss_ptr = reinterpret_cast<float*>(loss);
  auto* lse_ptr = reinterpret_cast<float*>(lse);
  auto* count_ptr = reinterpret_cast<float*>(count);
  if (target.device < 0) {
    py::gil_scoped_release release;
    contrastive_forward_cpu(anchors, candidates, temperature, positives, exclude_self, loss_ptr,
                            lse_ptr, count_ptr, target.num_threads);
    return;
  }
#ifdef COUN_FAST_WITH_CUDA
  check_cuda(contrastive_forward_cuda(anchors, candidates, temperature, positives, exclude_self,
                                      loss_ptr, lse_ptr, count_ptr, to_launch(target)),
             "contrastive_forward_cuda");
#else
  no_cuda();
#endif
}

void backward(const MatrixArg& owner_arg, const MatrixArg& other_arg, float temperature,
              bool exclude_self, const std::optional<DirectionArg>& as_anchor_arg,
              const std::optional<DirectionArg>& as_candidate_arg, uintptr_t grad_owner,
              const Target& target) {
  const MatrixView owner = to_view(owner_arg, "owner");
  const MatrixView other = to_view(other_arg, "other");
  require(owner.dim == other.dim, "owner and other differ in feature dimension");
  check_temperature(temperature);
  require(grad_owner != 0, "grad_owner: null data pointer");
  const std::optional<Direction> as_anchor = to_direction(as_anchor_arg);
  const std::optional<Direction> as_candidate = to_direction(as_candidate_arg);
  require(as_anchor || as_candidate, "backward needs at least one direction");
  const Direction* anchor_ptr = as_anchor ? &*as_anchor : nullptr;
  const Direction* candidate_ptr = as_candidate ? &*as_candidate : nullptr;
  void* grad = reinterpret_cast<void*>(grad_owner);
  if (target.device < 0) {
    py::gil_scoped_release release;
    contrastive_backward_cpu(owner, other, temperature, exclude_self, anchor_ptr, candidate_ptr,
                             grad, target.num_threads);
    return;
  }
#ifdef COUN_FAST_WITH_CUDA
  check_cuda(contrastive_backward_cuda(owner, other, temperature, exclude_self, anchor_ptr,
                                       candidate_ptr, grad, to_launch(target)),
             "contrastive_backward_cuda");
#else
  no_cuda();
#endif
}

void similarity(const MatrixArg& a_arg, const MatrixArg& b_arg, float temperature, uintptr_t out,
                const Target& target) {
  const MatrixView a = to_view(a_arg, "a");
  const MatrixView b = to_view(b_arg, "b");
  require(a.dim == b.dim, "a and b differ in feature dimension");
  check_temperature(temperature);
  auto* out_ptr = reinterpret_cast<float*>(out);
  if (target.device < 0) {
    py::gil_scoped_release release;
    similarity_cpu(a, b, temperature, out_ptr, target.num_threads);
    return;
  }
#ifdef COUN_FAST_WITH_CUDA
  check_cuda(similarity_cuda(a, b, temperature, out_ptr, to_launch(target)), "similarity_cuda");
#else
  no_cuda();
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "coun_fast kernels: fused contrastive losses over raw pointers (CPU and CUDA).";

  py::class_<Target>(m, "Target")
      .def(py::init<int, uintptr_t, uintptr_t, int>(), py::arg("device"), py::arg("stream"),
           py::arg("workspace"), py::arg("num_threads"))
      .def_readonly("device", &Target::device)
      .def_readonly("num_threads", &Target::num_threads);

  m.def("forward", &forward, py::arg("anchors"), py::arg("candidates"), py::arg("temperature"),
        py::arg("positives"), py::arg("exclude_self"), py::arg("loss"), py::arg("lse"),
        py::arg("count"), py::arg("target"),
        "Per-anchor loss, log-sum-exp and positive count (float32, length M).");
  m.def("backward", &backward, py::arg("owner"), py::arg("other"), py::arg("temperature"),
        py::arg("exclude_self"), py::arg("as_anchor"), py::arg("as_candidate"),
        py::arg("grad_owner"), py::arg("target"),
        "Gradient of the loss with respect to the owner's raw rows (owner's dtype, contiguous).");
  m.def("similarity", &similarity, py::arg("a"), py::arg("b"), py::arg("temperature"),
        py::arg("out"), py::arg("target"), "out (M x N float32) = norm(a) norm(b)^T / tau.");

  m.attr("MAX_DIM") = kMaxDim;
#ifdef COUN_FAST_WITH_CUDA
  m.attr("CUDA_COMPILED") = true;
  m.attr("CUDA_ARCHS") = std::string(cuda_architectures());
  m.def("cuda_device_count", &cuda_device_count, "Visible CUDA devices (0 without a driver).");
  m.def("cuda_workspace_floats", &cuda_workspace_floats, py::arg("rows"), py::arg("cols"),
        py::arg("dim"));
#else
  m.attr("CUDA_COMPILED") = false;
  m.attr("CUDA_ARCHS") = std::string();
  m.def("cuda_device_count", [] { return 0; });
  m.def("cuda_workspace_floats", [](int64_t, int64_t, int64_t) -> int64_t { return 0; });
#endif
}

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
// (a, b or None, temperature, rule, index_ptr, anchor_labels_ptr, candidate_labels_ptr,
//  exclude_self, paired, symmetric, reduction); pointers are 0 when absent; paired > 0 selects
//  the paired-prefix comparison (math.h's Comparison) with that many pairs.
using ProblemArg = std::tuple<MatrixArg, std::optional<MatrixArg>, float, int, uintptr_t, uintptr_t,
                              uintptr_t, bool, int64_t, bool, int>;
// (device index or -1 for the CPU, stream handle, CUDA path, saved ptr, scratch ptr, CPU threads)
using TargetArg = std::tuple<int, uintptr_t, int, uintptr_t, uintptr_t, int>;

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

void check_temperature(float temperature) {
  require(std::isfinite(temperature) && temperature > 0.f,
          "temperature must be a finite number > 0, got " + std::to_string(temperature));
}

Problem to_problem(const ProblemArg& arg) {
  const auto& [a_arg, b_arg, temperature, rule, index, anchor_labels, candidate_labels,
               exclude_self, paired, symmetric, reduction] = arg;
  Problem p{};
  p.a = to_view(a_arg, "anchors");
  p.self = !b_arg.has_value();
  p.b = p.self ? p.a : to_view(*b_arg, "candidates");
  require(p.a.dim == p.b.dim, "anchors and candidates differ in feature dimension");
  p.symmetric = symmetric;
  // exclude_self drops candidate i from anchor i: one set of rows (M == N), or the anchors as the
  // first M candidates (a rank's rows first among the gathered candidates, M <= N).
  require(!exclude_self || p.a.rows == p.b.rows || (!symmetric && p.a.rows <= p.b.rows),
          "exclude_self needs as many candidates as anchors (or at least as many, one direction)");
  require(!(symmetric && p.self), "symmetric needs separate candidates");
  require(paired >= 0, "paired must be >= 0, got " + std::to_string(paired));
  if (paired > 0) {
    require(!p.self && !symmetric && !exclude_self,
            "paired candidates need separate candidates, one direction and no exclude_self");
    require(paired <= p.a.rows && paired <= p.b.rows,
            "paired must be at most the number of anchors and of candidates, got " + std::to_string(paired));
  }
  p.compare = Comparison{paired > 0 ? Compare::kPairedPrefix : exclude_self ? Compare::kExcludeSelf : Compare::kAll,
                         paired};
  check_temperature(temperature);
  p.temperature = temperature;
  require(rule >= 0 && rule <= 3, "positive rule must be 0 (index), 1 (labels), 2 (diagonal) or 3 (partner)");
  const auto positive_rule = static_cast<PositiveRule>(rule);
  require(positive_rule != PositiveRule::kIndex || index != 0, "the index rule needs an index");
  require(positive_rule != PositiveRule::kLabels || (anchor_labels != 0 && candidate_labels != 0),
          "the label rule needs anchor and candidate labels");
  require(positive_rule != PositiveRule::kDiagonal || p.a.rows == p.b.rows || (!symmetric && p.a.rows <= p.b.rows),
          "the diagonal rule needs as many candidates as anchors (or at least as many, one direction)");
  require(positive_rule != PositiveRule::kPartner || (p.self && p.a.rows % 2 == 0),
          "the partner rule needs one input with an even number of rows");
  p.positives = Positives{positive_rule,
                          reinterpret_cast<const int64_t*>(index),
                          reinterpret_cast<const int64_t*>(anchor_labels),
                          reinterpret_cast<const int64_t*>(candidate_labels),
                          p.a.rows / 2,
                          false};
  require(reduction >= 0 && reduction <= 2, "reduction must be 0 (none), 1 (sum) or 2 (mean)");
  p.reduction = static_cast<Reduction>(reduction);
  return p;
}

#ifdef COUN_FAST_WITH_CUDA
void require_cuda_path(int path) {
  require(path >= 0 && path <= 2, "CUDA path must be 0 (exact), 1 (tensor cores) or 2 (their occupancy variant)");
}

CudaLaunch to_launch(const TargetArg& target, const Problem* problem = nullptr) {
  const auto& [device, stream, path, saved, scratch, threads] = target;
  require_cuda_path(path);
  require(path == 0 || problem == nullptr || problem->a.dtype == problem->b.dtype,
          "the tensor-core path needs anchors and candidates of one dtype");
  return CudaLaunch{device, reinterpret_cast<void*>(stream), static_cast<CudaPath>(path),
                    reinterpret_cast<void*>(saved), reinterpret_cast<void*>(scratch)};
}

void check_cuda(int status, const char* what) {
  if (status != 0) throw std::runtime_error(std::string(what) + ": " + cuda_error_string(status));
}
#endif

#ifndef COUN_FAST_WITH_CUDA
[[noreturn]] void no_cuda() {
  throw std::runtime_error("coun_fast._C was built without CUDA kernels (nvcc was not found, or "
                           "COUN_FAST_CUDA=0); rebuild with nvcc on PATH");
}
#endif

void forward(const ProblemArg& problem_arg, uintptr_t out, uintptr_t stats, const TargetArg& target) {
  const Problem problem = to_problem(problem_arg);
  require(out != 0 && stats != 0, "forward: null output pointer");
  auto* out_ptr = reinterpret_cast<float*>(out);
  auto* stats_ptr = reinterpret_cast<float*>(stats);
  if (std::get<0>(target) < 0) {
    py::gil_scoped_release release;
    contrastive_forward_cpu(problem, out_ptr, stats_ptr, std::get<5>(target));
    return;
  }
#ifdef COUN_FAST_WITH_CUDA
  check_cuda(contrastive_forward_cuda(problem, out_ptr, stats_ptr, to_launch(target, &problem)),
             "contrastive_forward_cuda");
#else
  no_cuda();
#endif
}

void backward(const ProblemArg& problem_arg, uintptr_t grad_out, uintptr_t stats, uintptr_t grad_a,
              uintptr_t grad_b, const TargetArg& target) {
  const Problem problem = to_problem(problem_arg);
  require(grad_out != 0 && stats != 0 && grad_a != 0, "backward: null pointer");
  require(problem.self || grad_b != 0, "backward: null gradient of the candidates");
  const auto* grad_ptr = reinterpret_cast<const float*>(grad_out);
  const auto* stats_ptr = reinterpret_cast<const float*>(stats);
  void* a_ptr = reinterpret_cast<void*>(grad_a);
  void* b_ptr = reinterpret_cast<void*>(grad_b);
  if (std::get<0>(target) < 0) {
    py::gil_scoped_release release;
    contrastive_backward_cpu(problem, grad_ptr, stats_ptr, a_ptr, b_ptr, std::get<5>(target));
    return;
  }
#ifdef COUN_FAST_WITH_CUDA
  check_cuda(contrastive_backward_cuda(problem, grad_ptr, stats_ptr, a_ptr, b_ptr, to_launch(target, &problem)),
             "contrastive_backward_cuda");
#else
  no_cuda();
#endif
}

// (saved bytes, forward scratch bytes, backward scratch bytes) of a CUDA call.
std::tuple<int64_t, int64_t, int64_t> workspace(const ProblemArg& problem_arg, int path, int device) {
#ifdef COUN_FAST_WITH_CUDA
  require_cuda_path(path);
  const CudaWorkspace w = cuda_workspace(to_problem(problem_arg), static_cast<CudaPath>(path), device);
  return {w.saved_bytes, w.forward_scratch_bytes, w.backward_scratch_bytes};
#else
  (void)problem_arg, (void)path, (void)device;
  return {0, 0, 0};
#endif
}

void similarity(const MatrixArg& a_arg, const MatrixArg& b_arg, float temperature, uintptr_t out,
                const TargetArg& target) {
  const MatrixView a = to_view(a_arg, "a");
  const MatrixView b = to_view(b_arg, "b");
  require(a.dim == b.dim, "a and b differ in feature dimension");
  check_temperature(temperature);
  auto* out_ptr = reinterpret_cast<float*>(out);
  if (std::get<0>(target) < 0) {
    py::gil_scoped_release release;
    similarity_cpu(a, b, temperature, out_ptr, std::get<5>(target));
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

  m.def("forward", &forward, py::arg("problem"), py::arg("out"), py::arg("stats"), py::arg("target"),
        "The reduced loss (or T per-anchor losses) into out and the statistics into stats.");
  m.def("backward", &backward, py::arg("problem"), py::arg("grad_out"), py::arg("stats"),
        py::arg("grad_a"), py::arg("grad_b"), py::arg("target"),
        "Gradients of both inputs' raw rows (their dtypes, contiguous); grad_b is 0 when self.");
  m.def("workspace", &workspace, py::arg("problem"), py::arg("path"), py::arg("device"),
        "(saved, forward scratch, backward scratch) bytes of a CUDA call.");
  m.def("similarity", &similarity, py::arg("a"), py::arg("b"), py::arg("temperature"),
        py::arg("out"), py::arg("target"), "out (M x N float32) = norm(a) norm(b)^T / tau.");

  m.attr("MAX_DIM") = kMaxDim;
  m.def("cpu_kernel_variant", &cpu_kernel_variant,
        "The instruction-set variant of the CPU kernels this machine runs (avx512, avx2, baseline, native).");
#ifdef COUN_FAST_WITH_CUDA
  m.attr("CUDA_COMPILED") = true;
  m.attr("CUDA_ARCHS") = std::string(cuda_architectures());
  m.def("cuda_device_count", &cuda_device_count, "Visible CUDA devices (0 without a driver).");
#else
  m.attr("CUDA_COMPILED") = false;
  m.attr("CUDA_ARCHS") = std::string();
  m.def("cuda_device_count", [] { return 0; });
#endif
}

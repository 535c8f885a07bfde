// The C side of lpl-torch-ext: plain C functions over libtorch's C++ API for what tch does
// not wrap. Every function returns 0 on success; on a C++ exception it copies the message
// into `err` (capacity `err_len`) and returns -1, so no exception crosses into Rust.
#include <ATen/Context.h>
#include <ATen/DeviceAccelerator.h>
#include <ATen/Functions.h>
#include <ATen/Version.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <cstdint>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>

namespace {

at::DeviceType device_type(int32_t device) {
  return device == 1 ? at::kCUDA : at::kCPU;
}

int32_t fail(const std::exception& e, char* err, size_t err_len) {
  if (err != nullptr && err_len > 0) {
    std::strncpy(err, e.what(), err_len - 1);
    err[err_len - 1] = '\0';
  }
  return -1;
}

// tch's tensor handles are `at::Tensor*`: copies of the handles (sharing storage) as a list.
std::vector<at::Tensor> tensor_list(const void* const* handles, size_t n) {
  std::vector<at::Tensor> list;
  list.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    list.push_back(*static_cast<const at::Tensor*>(handles[i]));
  }
  return list;
}

}  // namespace

extern "C" {

// `device`: 0 CPU, 1 CUDA. `dtype`: a c10::ScalarType code (5 half, 15 bfloat16).
int32_t lpl_autocast_get(int32_t device, int32_t* enabled, int32_t* dtype, char* err,
                         size_t err_len) {
  try {
    *enabled = at::autocast::is_autocast_enabled(device_type(device)) ? 1 : 0;
    *dtype = static_cast<int32_t>(at::autocast::get_autocast_dtype(device_type(device)));
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

int32_t lpl_autocast_set(int32_t device, int32_t enabled, int32_t dtype, char* err,
                         size_t err_len) {
  try {
    at::autocast::set_autocast_dtype(device_type(device), static_cast<at::ScalarType>(dtype));
    at::autocast::set_autocast_enabled(device_type(device), enabled != 0);
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

// As torch.autocast's __enter__/__exit__: the weight-cast cache lives while the nesting
// count is above zero and is cleared when the outermost region ends.
int32_t lpl_autocast_increment_nesting() { return at::autocast::increment_nesting(); }

int32_t lpl_autocast_decrement_nesting() {
  int32_t left = at::autocast::decrement_nesting();
  if (left == 0) {
    at::autocast::clear_cache();
  }
  return left;
}

// What this libtorch runs on, as text: 0 the CPU kernels ATen dispatches to (DEFAULT, AVX2,
// AVX512; ATEN_CPU_CAPABILITY), 1 the MKL version (MKL's vector maths dispatches on the CPU
// by itself). Truncated to out_len - 1 bytes, NUL-terminated.
int32_t lpl_runtime_info(int32_t which, char* out, size_t out_len, char* err, size_t err_len) {
  try {
    std::string s;
    switch (which) {
      case 0: s = at::get_cpu_capability(); break;
      case 1: s = at::get_mkl_version(); break;
      default: throw std::invalid_argument("unknown runtime info " + std::to_string(which));
    }
    if (out_len == 0) return 0;
    size_t n = s.size() < out_len - 1 ? s.size() : out_len - 1;
    std::memcpy(out, s.data(), n);
    out[n] = '\0';
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

// TF32 for CUDA matmuls and convolutions (torch.backends.{cuda.matmul,cudnn}.fp32_precision).
int32_t lpl_tf32_set(int32_t enabled, char* err, size_t err_len) {
  try {
    auto p = enabled != 0 ? at::Float32Precision::TF32 : at::Float32Precision::IEEE;
    at::globalContext().setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL, p);
    at::globalContext().setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::CONV, p);
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

int32_t lpl_tf32_get(int32_t* matmul, int32_t* conv, char* err, size_t err_len) {
  try {
    auto& ctx = at::globalContext();
    *matmul = ctx.float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL) ==
                      at::Float32Precision::TF32
                  ? 1
                  : 0;
    *conv = ctx.float32Precision(at::Float32Backend::CUDA, at::Float32Op::CONV) ==
                    at::Float32Precision::TF32
                ? 1
                : 0;
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

// The accelerator allocator's allocated bytes (current and peak since the last reset) of
// device `index`; fails when there is no accelerator.
int32_t lpl_device_memory(int32_t index, int64_t* current, int64_t* peak, char* err,
                          size_t err_len) {
  try {
    // the caching allocator sizes its per-device state at CUDA's lazy initialisation
    at::globalContext().lazyInitDevice(at::kCUDA);
    auto stats = at::accelerator::getDeviceStats(static_cast<c10::DeviceIndex>(index));
    const auto& all = stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)];
    *current = all.current;
    *peak = all.peak;
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

int32_t lpl_device_memory_reset_peak(int32_t index, char* err, size_t err_len) {
  try {
    at::globalContext().lazyInitDevice(at::kCUDA);
    at::accelerator::resetPeakStats(static_cast<c10::DeviceIndex>(index));
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

// torch.optim.AdamW(fused=True)'s update of one parameter group: param *= 1 - lr * wd;
// m = lerp(m, g, 1 - b1); v = b2 v + (1 - b2) g^2; param -= lr / (1 - b1^step) * m /
// (sqrt(v) / sqrt(1 - b2^step) + eps), with `step` a 0-d f32 tensor holding the update count
// including this one. `found_inf` (a 0-d f32 tensor, or null): when it holds 1 the kernel
// changes nothing. One multi-tensor kernel on CUDA, a vectorised loop on CPU.
int32_t lpl_fused_adamw(const void* const* params, const void* const* grads,
                        const void* const* exp_avgs, const void* const* exp_avg_sqs, size_t n,
                        double lr, double beta1, double beta2, double weight_decay, double eps,
                        const void* step, const void* found_inf, char* err, size_t err_len) {
  try {
    if (n == 0) return 0;
    at::NoGradGuard no_grad;
    auto steps = std::vector<at::Tensor>(n, *static_cast<const at::Tensor*>(step));
    std::optional<at::Tensor> inf;
    if (found_inf != nullptr) inf = *static_cast<const at::Tensor*>(found_inf);
    at::_fused_adamw_(tensor_list(params, n), tensor_list(grads, n), tensor_list(exp_avgs, n),
                      tensor_list(exp_avg_sqs, n), {}, steps, lr, beta1, beta2, weight_decay,
                      eps, /*amsgrad=*/false, /*maximize=*/false, /*grad_scale=*/std::nullopt,
                      inf);
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

// targets[i] += weight * (ends[i] - targets[i]) for a 0-d weight tensor on their device.
int32_t lpl_foreach_lerp_tensor(const void* const* targets, const void* const* ends, size_t n,
                                const void* weight, char* err, size_t err_len) {
  try {
    if (n == 0) return 0;
    at::NoGradGuard no_grad;
    auto t = tensor_list(targets, n);
    auto diff = at::_foreach_sub(tensor_list(ends, n), t);
    at::_foreach_mul_(diff, *static_cast<const at::Tensor*>(weight));
    at::_foreach_add_(t, diff);
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

// out (a 0-d f32 tensor) = the L2 norm of all tensors together, as clip_grad_norm_ computes
// it: vector_norm(stack(_foreach_norm(tensors))).
int32_t lpl_foreach_total_norm(const void* const* tensors, size_t n, const void* out, char* err,
                               size_t err_len) {
  try {
    at::NoGradGuard no_grad;
    auto target = *static_cast<const at::Tensor*>(out);
    if (n == 0) {
      target.zero_();
      return 0;
    }
    auto norms = at::_foreach_norm(tensor_list(tensors, n), 2, at::kFloat);
    target.copy_(at::linalg_vector_norm(at::stack(norms), 2));
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

// tensors[i] *= scale (a 0-d tensor on their device, no host synchronisation).
int32_t lpl_foreach_mul(const void* const* tensors, size_t n, const void* scale, char* err,
                        size_t err_len) {
  try {
    if (n == 0) return 0;
    at::NoGradGuard no_grad;
    at::_foreach_mul_(tensor_list(tensors, n), *static_cast<const at::Tensor*>(scale));
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

// libtorch's (Kineto) profiler, the engine behind torch.profiler: `lpl_profiler_start` starts
// recording CPU activity (and CUDA activity when `cuda` is 1) with input shapes;
// `lpl_profiler_stop` stops it and writes a Chrome trace (JSON) to `path`.
int32_t lpl_profiler_start(int32_t cuda, char* err, size_t err_len) {
  try {
    namespace prof = torch::autograd::profiler;
    using torch::profiler::impl::ActivityType;
    using torch::profiler::impl::ProfilerConfig;
    using torch::profiler::impl::ProfilerState;
    ProfilerConfig config(ProfilerState::KINETO, /*report_input_shapes=*/true);
    std::set<ActivityType> activities{ActivityType::CPU};
    if (cuda == 1) activities.insert(ActivityType::CUDA);
    prof::prepareProfiler(config, activities);
    prof::enableProfiler(config, activities);
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

int32_t lpl_profiler_stop(const char* path, char* err, size_t err_len) {
  try {
    auto result = torch::autograd::profiler::disableProfiler();
    if (!result) throw std::runtime_error("the profiler was not running");
    result->save(std::string(path));
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

}  // extern "C"

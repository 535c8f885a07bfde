// The C side of lpl-torch-ext: plain C functions over libtorch's C++ API for what tch does
// not wrap. Every function returns 0 on success; on a C++ exception it copies the message
// into `err` (capacity `err_len`) and returns -1, so no exception crosses into Rust.
#include <ATen/Context.h>
#include <ATen/DeviceAccelerator.h>
#include <ATen/autocast_mode.h>

#include <cstdint>
#include <cstring>
#include <exception>

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
    at::accelerator::resetPeakStats(static_cast<c10::DeviceIndex>(index));
    return 0;
  } catch (const std::exception& e) {
    return fail(e, err, err_len);
  }
}

}  // extern "C"

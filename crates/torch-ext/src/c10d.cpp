// The C side of lpl-torch-ext's `distributed` module: libtorch's own c10d (the engine of
// torch.distributed): the TCPStore rendezvous, the Gloo process group (CPU tensors) and the
// NCCL process group (CUDA tensors).
// Every function returns 0 on success; on a C++ exception it copies the message into `err`
// and returns -1. Gloo is compiled in only with -DUSE_C10D_GLOO (build.rs passes it when
// Gloo's headers are found: the torch wheel ships Gloo's code inside libtorch_cpu but not
// its headers); without it the group functions fail with a message naming the fix. NCCL is
// compiled in only with -DUSE_C10D_NCCL -DUSE_CUDA (build.rs passes them when libtorch_cuda,
// nccl.h and the CUDA runtime headers are found); its code is inside libtorch_cuda.
//
// Only c10d's own types cross this file: no gloo:: type is constructed or examined here
// (Debian's Gloo headers are older than the Gloo inside libtorch; the process group's layout
// does not depend on them, the inline GlooStore adapter would).
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdint>
#include <cstring>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

int32_t fail_with(const char* what, char* err, size_t err_len) {
  if (err != nullptr && err_len > 0) {
    std::strncpy(err, what, err_len - 1);
    err[err_len - 1] = '\0';
  }
  return -1;
}

// c10::Error's message without the C++ backtrace libtorch appends; others as they are.
#define LPL_C10D_CATCH                                          \
  catch (const c10::Error& e) {                                 \
    return fail_with(e.what_without_backtrace(), err, err_len); \
  }                                                             \
  catch (const std::exception& e) {                             \
    return fail_with(e.what(), err, err_len);                   \
  }

std::vector<at::Tensor> tensor_list(const void* const* handles, size_t n) {
  std::vector<at::Tensor> list;
  list.reserve(n);
  for (size_t i = 0; i < n; ++i) list.push_back(*static_cast<const at::Tensor*>(handles[i]));
  return list;
}

struct Store {
  // every key under a prefix (one per launch attempt and join, as torch.distributed does)
  c10::intrusive_ptr<c10d::Store> store;
};

// A Gloo or NCCL group: both are c10d backends with the same collectives. `device` is the
// CUDA device an NCCL group is bound to (its barrier runs there); unset for Gloo.
struct Group {
  c10::intrusive_ptr<c10d::Backend> pg;
  std::optional<at::Device> device;
};
#ifndef USE_C10D_GLOO
constexpr const char* kNoGloo =
    "this build has no Gloo (the CPU backend of torch.distributed): install Gloo's headers "
    "(Debian/Ubuntu: apt-get install libgloo-dev, or `cargo xtask setup` as root) and rebuild";
#endif
#ifndef USE_C10D_NCCL
constexpr const char* kNoNccl =
    "this build has no NCCL (the CUDA backend of torch.distributed): it needs a CUDA build of "
    "libtorch, nccl.h and the CUDA runtime headers at build time (`cargo xtask setup` installs "
    "them into the managed torch; or set NCCL_INCLUDE and CUDA_INCLUDE), then rebuild";
#endif

c10d::ReduceOp reduce_op(int32_t op) {
  switch (op) {
    case 0: return c10d::ReduceOp::SUM;
    case 1: return c10d::ReduceOp::AVG;
    case 2: return c10d::ReduceOp::MAX;
    default: throw std::invalid_argument("unknown reduce op " + std::to_string(op));
  }
}

}  // namespace

extern "C" {

int32_t lpl_c10d_has_gloo() {
#ifdef USE_C10D_GLOO
  return 1;
#else
  return 0;
#endif
}

int32_t lpl_c10d_has_nccl() {
#ifdef USE_C10D_NCCL
  return 1;
#else
  return 0;
#endif
}

// A TCPStore client of `host:port`, its keys under `prefix`; `is_server` also serves it
// (rank 0, unless torchrun's agent already does) and waits for all `world` processes.
// `timeout_ms` bounds the rendezvous and every store call.
int32_t lpl_c10d_store_new(const char* host, int32_t port, int32_t world, int32_t is_server,
                           int64_t timeout_ms, const char* prefix, void** out, char* err,
                           size_t err_len) {
  try {
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = is_server != 0;
    opts.numWorkers = static_cast<std::size_t>(world);
    opts.waitWorkers = true;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    auto store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    *out = new Store{std::move(store)};
    return 0;
  }
  LPL_C10D_CATCH
}

void lpl_c10d_store_free(void* store) { delete static_cast<Store*>(store); }

int32_t lpl_c10d_store_set(void* store, const char* key, const char* value, char* err,
                           size_t err_len) {
  try {
    std::string v(value);
    static_cast<Store*>(store)->store->set(key, std::vector<uint8_t>(v.begin(), v.end()));
    return 0;
  }
  LPL_C10D_CATCH
}

// Waits up to `timeout_ms` for `key`: 0 when it is set, 1 when the wait timed out, -1 on
// any other failure (the store's host is gone).
int32_t lpl_c10d_store_wait(void* store, const char* key, int64_t timeout_ms, char* err,
                            size_t err_len) {
  try {
    static_cast<Store*>(store)->store->wait({std::string(key)},
                                            std::chrono::milliseconds(timeout_ms));
    return 0;
  } catch (const c10::DistStoreError& e) {
    fail_with(e.what_without_backtrace(), err, err_len);
    return 1;
  }
  LPL_C10D_CATCH
}

// A Gloo process group of `world` ranks over `store`, this process being `rank`;
// `hostname` is the address the others reach this process at.
int32_t lpl_c10d_gloo_new(void* store, int32_t rank, int32_t world, int64_t timeout_ms,
                          const char* hostname, void** out, char* err, size_t err_len) {
#ifdef USE_C10D_GLOO
  try {
    auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::milliseconds(timeout_ms));
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(hostname));
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(
        static_cast<Store*>(store)->store, rank, world, opts);
    *out = new Group{std::move(pg), std::nullopt};
    return 0;
  }
  LPL_C10D_CATCH
#else
  (void)store, (void)rank, (void)world, (void)timeout_ms, (void)hostname, (void)out;
  return fail_with(kNoGloo, err, err_len);
#endif
}

// An NCCL process group of `world` ranks over `store`, this process being `rank`, bound to
// CUDA device `device_index` (torch.distributed's `device_id`): its communicator is made now,
// so a missing GPU or an unreachable peer fails here rather than at the first collective.
int32_t lpl_c10d_nccl_new(void* store, int32_t rank, int32_t world, int64_t timeout_ms,
                          int32_t device_index, void** out, char* err, size_t err_len) {
#ifdef USE_C10D_NCCL
  try {
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = std::chrono::milliseconds(timeout_ms);
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(static_cast<Store*>(store)->store,
                                                          rank, world, opts);
    at::Device device(at::kCUDA, static_cast<c10::DeviceIndex>(device_index));
    pg->setBoundDeviceId(device);
    pg->eagerConnectSingleDevice(device);
    *out = new Group{std::move(pg), device};
    return 0;
  }
  LPL_C10D_CATCH
#else
  (void)store, (void)rank, (void)world, (void)timeout_ms, (void)device_index, (void)out;
  return fail_with(kNoNccl, err, err_len);
#endif
}

void lpl_c10d_group_free(void* group) { delete static_cast<Group*>(group); }

// All-reduces `n` tensors in place (op: 0 sum, 1 average, 2 max), one collective each.
int32_t lpl_c10d_all_reduce(void* group, const void* const* tensors, size_t n, int32_t op,
                            char* err, size_t err_len) {
  try {
    c10d::AllreduceOptions opts;
    opts.reduceOp = reduce_op(op);
    // a list given to one allreduce means one tensor per device of this rank (same shape and
    // kind); ours are different tensors: one collective each
    for (auto& t : tensor_list(tensors, n)) {
      std::vector<at::Tensor> one{t};
      static_cast<Group*>(group)->pg->allreduce(one, opts)->wait();
    }
    return 0;
  }
  LPL_C10D_CATCH
}

// Broadcasts `n` tensors in place from `root`.
int32_t lpl_c10d_broadcast(void* group, const void* const* tensors, size_t n, int32_t root,
                           char* err, size_t err_len) {
  try {
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    for (auto& t : tensor_list(tensors, n)) {
      std::vector<at::Tensor> one{t};
      static_cast<Group*>(group)->pg->broadcast(one, opts)->wait();
    }
    return 0;
  }
  LPL_C10D_CATCH
}

// Gathers `input` of every rank into `outputs` (`world` tensors of its shape, in rank order).
int32_t lpl_c10d_all_gather(void* group, const void* input, const void* const* outputs,
                            size_t world, char* err, size_t err_len) {
  try {
    std::vector<at::Tensor> in{*static_cast<const at::Tensor*>(input)};
    std::vector<std::vector<at::Tensor>> out{tensor_list(outputs, world)};
    static_cast<Group*>(group)->pg->allgather(out, in)->wait();
    return 0;
  }
  LPL_C10D_CATCH
}

int32_t lpl_c10d_barrier(void* group, char* err, size_t err_len) {
  try {
    auto* g = static_cast<Group*>(group);
    c10d::BarrierOptions opts;
    if (g->device) {
      opts.device = g->device;
      opts.device_ids = {g->device->index()};
    }
    g->pg->barrier(opts)->wait();
    return 0;
  }
  LPL_C10D_CATCH
}

}  // extern "C"

//! libtorch's c10d, the engine of `torch.distributed`: the [`Store`] rendezvous
//! (`c10d::TCPStore`) and the [`ProcessGroup`] collectives over it (`c10d::ProcessGroupGloo`
//! for CPU tensors, `c10d::ProcessGroupNCCL` for CUDA tensors). No collective is our own:
//! these are the calls PyTorch's DDP makes.
//!
//! Gloo is in a build when Gloo's headers were found at build time ([`has_gloo`]), NCCL when
//! libtorch is a CUDA build and NCCL's and CUDA's headers were found ([`has_nccl`]); a build
//! without one fails [`ProcessGroup::gloo`] / [`ProcessGroup::nccl`] with a message naming
//! the fix. A collective that
//! fails (a peer died, a timeout) leaves the group unusable, as in PyTorch: every later call
//! fails too.

use std::ffi::{CString, c_char, c_void};
use std::time::Duration;

use tch::Tensor;

use crate::ffi::{checked, handles};
use crate::{Result, TorchExtError};

unsafe extern "C" {
    fn lpl_c10d_has_gloo() -> i32;
    fn lpl_c10d_has_nccl() -> i32;
    fn lpl_c10d_store_new(
        host: *const c_char,
        port: i32,
        world: i32,
        is_server: i32,
        timeout_ms: i64,
        prefix: *const c_char,
        out: *mut *mut c_void,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn lpl_c10d_store_free(store: *mut c_void);
    fn lpl_c10d_store_set(
        store: *mut c_void,
        key: *const c_char,
        value: *const c_char,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn lpl_c10d_store_wait(
        store: *mut c_void,
        key: *const c_char,
        timeout_ms: i64,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn lpl_c10d_gloo_new(
        store: *mut c_void,
        rank: i32,
        world: i32,
        timeout_ms: i64,
        hostname: *const c_char,
        out: *mut *mut c_void,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn lpl_c10d_nccl_new(
        store: *mut c_void,
        rank: i32,
        world: i32,
        timeout_ms: i64,
        device_index: i32,
        out: *mut *mut c_void,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn lpl_c10d_group_free(group: *mut c_void);
    fn lpl_c10d_all_reduce(
        group: *mut c_void,
        tensors: *const *const c_void,
        n: usize,
        op: i32,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn lpl_c10d_broadcast(
        group: *mut c_void,
        tensors: *const *const c_void,
        n: usize,
        root: i32,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn lpl_c10d_all_gather(
        group: *mut c_void,
        input: *const c_void,
        outputs: *const *const c_void,
        world: usize,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn lpl_c10d_barrier(group: *mut c_void, err: *mut c_char, len: usize) -> i32;
}

/// Whether this build has Gloo, torch.distributed's CPU backend.
pub fn has_gloo() -> bool {
    // SAFETY: no arguments, no state.
    unsafe { lpl_c10d_has_gloo() == 1 }
}

/// Whether this build has NCCL, torch.distributed's CUDA backend.
pub fn has_nccl() -> bool {
    // SAFETY: no arguments, no state.
    unsafe { lpl_c10d_has_nccl() == 1 }
}

fn rank_and_world(call: &'static str, rank: usize, world: usize) -> Result<(i32, i32)> {
    match (i32::try_from(rank), i32::try_from(world)) {
        (Ok(r), Ok(w)) if rank < world => Ok((r, w)),
        _ => Err(TorchExtError { call, message: format!("rank {rank} of {world}") }),
    }
}

fn c_string(call: &'static str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| TorchExtError { call, message: format!("{s:?} holds a NUL byte") })
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The rendezvous of a launch: a key-value store served by rank 0 at `host:port`
/// (`c10d::TCPStore`, what `torch.distributed`'s `env://` sets up from `MASTER_ADDR`/`PORT`).
#[derive(Debug)]
pub struct Store {
    ptr: *mut c_void,
}

// SAFETY: c10d's TCPStore is used from several threads by PyTorch itself (its calls lock);
// the handle is owned by one `Store` and freed once.
unsafe impl Send for Store {}
unsafe impl Sync for Store {}

impl Store {
    /// Joins the store of `world` processes at `host:port`, serving it when `serve` (rank
    /// 0, unless torchrun's agent serves it), waiting up to `timeout` for all of them; every
    /// key goes under `prefix` (`c10d::PrefixStore`).
    pub fn connect(
        host: &str,
        port: u16,
        world: usize,
        serve: bool,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self> {
        let (h, p) = (c_string("store_new", host)?, c_string("store_new", prefix)?);
        let world = i32::try_from(world).map_err(|_| TorchExtError {
            call: "store_new",
            message: format!("world size {world}"),
        })?;
        let mut ptr = std::ptr::null_mut();
        // SAFETY: `h` and `p` outlive the call; `ptr` receives a new handle on success only.
        checked("store_new", |e, l| unsafe {
            lpl_c10d_store_new(
                h.as_ptr(),
                i32::from(port),
                world,
                i32::from(serve),
                millis(timeout),
                p.as_ptr(),
                &mut ptr,
                e,
                l,
            )
        })?;
        Ok(Self { ptr })
    }

    /// Sets `key` to `value`.
    pub fn set(&self, key: &str, value: &str) -> Result<()> {
        let (k, v) = (c_string("store_set", key)?, c_string("store_set", value)?);
        // SAFETY: a live handle; the strings outlive the call.
        checked("store_set", |e, l| unsafe {
            lpl_c10d_store_set(self.ptr, k.as_ptr(), v.as_ptr(), e, l)
        })
    }

    /// Waits up to `timeout` for `key`: `Ok(true)` when it is set, `Ok(false)` when the wait
    /// timed out, an error when the store cannot be reached (its host, rank 0, is gone).
    pub fn wait(&self, key: &str, timeout: Duration) -> Result<bool> {
        let k = c_string("store_wait", key)?;
        let mut timed_out = false;
        // SAFETY: a live handle; the key outlives the call.
        checked("store_wait", |e, l| {
            let rc = unsafe { lpl_c10d_store_wait(self.ptr, k.as_ptr(), millis(timeout), e, l) };
            timed_out = rc == 1;
            if timed_out { 0 } else { rc }
        })?;
        Ok(!timed_out)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: the handle came from lpl_c10d_store_new and is freed once.
        unsafe { lpl_c10d_store_free(self.ptr) }
    }
}

/// A reduction of [`ProcessGroup::all_reduce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Elementwise sum.
    Sum,
    /// Elementwise mean over ranks.
    Avg,
    /// Elementwise maximum.
    Max,
}

/// A group of processes running collectives (`c10d::ProcessGroupGloo` or
/// `c10d::ProcessGroupNCCL`). Collectives are synchronous here: each call returns when its
/// work is done on this rank (NCCL: when it is ordered before later work on the current
/// CUDA stream, as `Work::wait` does in PyTorch).
#[derive(Debug)]
pub struct ProcessGroup {
    ptr: *mut c_void,
    rank: usize,
    world: usize,
}

// SAFETY: the handle is owned by one `ProcessGroup` and freed once; moving it to another
// thread is fine. Not `Sync`: two threads issuing collectives could issue them in different
// orders on different ranks.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// A Gloo group of `world` ranks over `store`, this process being `rank`, reachable by
    /// the others at `hostname`; a collective not done within `timeout` fails.
    pub fn gloo(
        store: &Store,
        rank: usize,
        world: usize,
        hostname: &str,
        timeout: Duration,
    ) -> Result<Self> {
        let h = c_string("gloo_new", hostname)?;
        let (r, w) = rank_and_world("gloo_new", rank, world)?;
        let mut ptr = std::ptr::null_mut();
        // SAFETY: a live store handle (the group keeps its own reference to the store);
        // `h` outlives the call; `ptr` receives a new handle on success only.
        checked("gloo_new", |e, l| unsafe {
            lpl_c10d_gloo_new(store.ptr, r, w, millis(timeout), h.as_ptr(), &mut ptr, e, l)
        })?;
        Ok(Self { ptr, rank, world })
    }

    /// An NCCL group of `world` ranks over `store`, this process being `rank`, bound to
    /// CUDA device `device_index` (every tensor given to its collectives must live there); a
    /// collective not done within `timeout` fails (NCCL's watchdog then ends the process, as
    /// in PyTorch). The communicator is made now: no GPU, or a peer that never comes, fails
    /// here.
    pub fn nccl(
        store: &Store,
        rank: usize,
        world: usize,
        device_index: usize,
        timeout: Duration,
    ) -> Result<Self> {
        let (r, w) = rank_and_world("nccl_new", rank, world)?;
        let d = i32::try_from(device_index).map_err(|_| TorchExtError {
            call: "nccl_new",
            message: format!("CUDA device {device_index}"),
        })?;
        let mut ptr = std::ptr::null_mut();
        // SAFETY: a live store handle (the group keeps its own reference to the store);
        // `ptr` receives a new handle on success only.
        checked("nccl_new", |e, l| unsafe {
            lpl_c10d_nccl_new(store.ptr, r, w, millis(timeout), d, &mut ptr, e, l)
        })?;
        Ok(Self { ptr, rank, world })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.world
    }

    /// Reduces each of `tensors` over the ranks, in place (one collective per tensor: pass
    /// few, large tensors; see [`crate::distributed`] users for bucketing).
    pub fn all_reduce(&self, tensors: &[Tensor], op: ReduceOp) -> Result<()> {
        let h = handles(tensors);
        let op = match op {
            ReduceOp::Sum => 0,
            ReduceOp::Avg => 1,
            ReduceOp::Max => 2,
        };
        // SAFETY: a live group; `h.len()` live tensor handles read during the call only.
        checked("all_reduce", |e, l| unsafe {
            lpl_c10d_all_reduce(self.ptr, h.as_ptr(), h.len(), op, e, l)
        })
    }

    /// Copies `root`'s `tensors` into every rank's, in place.
    pub fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<()> {
        let h = handles(tensors);
        let root = i32::try_from(root).unwrap_or(i32::MAX);
        // SAFETY: a live group; `h.len()` live tensor handles read during the call only.
        checked("broadcast", |e, l| unsafe {
            lpl_c10d_broadcast(self.ptr, h.as_ptr(), h.len(), root, e, l)
        })
    }

    /// Every rank's `input`, in rank order (each of `input`'s shape and kind).
    pub fn all_gather(&self, input: &Tensor) -> Result<Vec<Tensor>> {
        let input = input.contiguous();
        let outputs: Vec<Tensor> = (0..self.world).map(|_| input.empty_like()).collect();
        let h = handles(&outputs);
        // SAFETY: a live group; `input` and the `world` output handles outlive the call.
        checked("all_gather", |e, l| unsafe {
            lpl_c10d_all_gather(
                self.ptr,
                input.as_ptr() as *const c_void,
                h.as_ptr(),
                h.len(),
                e,
                l,
            )
        })?;
        Ok(outputs)
    }

    /// Returns once every rank has called it.
    pub fn barrier(&self) -> Result<()> {
        // SAFETY: a live group.
        checked("barrier", |e, l| unsafe { lpl_c10d_barrier(self.ptr, e, l) })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: the handle came from lpl_c10d_gloo_new or _nccl_new and is freed once.
        unsafe { lpl_c10d_group_free(self.ptr) }
    }
}

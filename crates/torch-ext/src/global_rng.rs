//! Exclusive use of libtorch's default generators, which are process-global.
//!
//! `tch::manual_seed`, `Tensor::randn`, weight initialisation and dropout all use libtorch's
//! default CPU (and CUDA) generator, one per process. A seeded computation is reproducible
//! only if no other thread draws from it in between: two trainings in one process, or two
//! tests of one test binary under `cargo test` (threads, unlike nextest's processes), would
//! otherwise interleave their draws. Every seeded section of lpl (training loops, sampling)
//! holds [`GlobalRng`] for its whole duration, and so does every test that draws.
//!
//! The lock is reentrant on its thread, so a seeded section may call another (a training loop
//! that samples a grid), and it survives a panic of its holder (a failed test does not wedge
//! the others).
//!
//! ```
//! let _rng = lpl_torch_ext::GlobalRng::seeded(0);
//! let a = tch::Tensor::randn([3], (tch::Kind::Float, tch::Device::Cpu));
//! tch::manual_seed(0);
//! let b = tch::Tensor::randn([3], (tch::Kind::Float, tch::Device::Cpu));
//! assert!(a.equal(&b)); // no other thread can have drawn in between
//! ```

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, ThreadId};

static OWNER: Mutex<Option<ThreadId>> = Mutex::new(None);
static RELEASED: Condvar = Condvar::new();

thread_local! {
    /// How many guards this thread holds (reentrancy).
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Exclusive use of libtorch's default generators while alive (see the module docs). Not
/// `Send`: it is released on the thread that took it.
#[derive(Debug)]
#[must_use = "the generators are exclusive only while the guard is alive"]
pub struct GlobalRng {
    _not_send: PhantomData<*const ()>,
}

fn owner() -> MutexGuard<'static, Option<ThreadId>> {
    // the protected value is a plain thread id: a panic elsewhere cannot leave it torn
    OWNER.lock().unwrap_or_else(PoisonError::into_inner)
}

impl GlobalRng {
    /// Waits until no other thread holds the generators, then holds them.
    pub fn lock() -> Self {
        let depth = DEPTH.with(Cell::get);
        if depth == 0 {
            let me = thread::current().id();
            let mut owner = owner();
            while owner.is_some() {
                owner = RELEASED.wait(owner).unwrap_or_else(PoisonError::into_inner);
            }
            *owner = Some(me);
        }
        DEPTH.with(|d| d.set(depth + 1));
        Self { _not_send: PhantomData }
    }

    /// [`Self::lock`], then `tch::manual_seed(seed)` (CPU and every CUDA device).
    pub fn seeded(seed: i64) -> Self {
        let guard = Self::lock();
        tch::manual_seed(seed);
        guard
    }

    /// `tch::manual_seed(seed)` while held.
    pub fn reseed(&mut self, seed: i64) {
        tch::manual_seed(seed);
    }
}

impl Drop for GlobalRng {
    fn drop(&mut self) {
        let depth = DEPTH.with(Cell::get).saturating_sub(1);
        DEPTH.with(|d| d.set(depth));
        if depth == 0 {
            *owner() = None;
            RELEASED.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn reentrant_and_exclusive() {
        let outer = GlobalRng::lock();
        let inner = GlobalRng::lock(); // same thread: no deadlock
        let inside = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&inside);
        let other = thread::spawn(move || {
            let _g = GlobalRng::lock();
            seen.fetch_add(1, Ordering::SeqCst);
        });
        thread::sleep(std::time::Duration::from_millis(50));
        drop(inner);
        thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(inside.load(Ordering::SeqCst), 0, "still held by the outer guard");
        drop(outer);
        other.join().map_err(|_| "other thread panicked").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(inside.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn released_by_a_panicking_holder() {
        let panicked = thread::spawn(|| {
            let _g = GlobalRng::lock();
            panic!("a failing test");
        })
        .join();
        assert!(panicked.is_err());
        let _g = GlobalRng::lock(); // would hang if the panic had kept it
    }
}

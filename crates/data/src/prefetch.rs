//! Bounded prefetching: a producer runs on its own thread and keeps up to `depth` items
//! ready before the consumer asks (the training loop never waits on decoding or gathering
//! unless the producer is slower than a step).

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Items produced ahead on a background thread; iterate to receive them in order.
/// Dropping it stops the producer (its next send fails) and joins the thread.
pub struct Prefetch<T> {
    rx: Option<Receiver<T>>,
    worker: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> Prefetch<T> {
    /// Runs `produce` on a new thread until it returns `None` or the consumer is dropped,
    /// holding at most `depth` (>= 1) finished items.
    pub fn spawn(depth: usize, mut produce: impl FnMut() -> Option<T> + Send + 'static) -> Self {
        let (tx, rx): (SyncSender<T>, Receiver<T>) = sync_channel(depth.max(1));
        let worker = std::thread::Builder::new()
            .name("lpl-prefetch".into())
            .spawn(move || {
                while let Some(item) = produce() {
                    if tx.send(item).is_err() {
                        break;
                    }
                }
            })
            .ok();
        Self { rx: Some(rx), worker }
    }
}

impl<T> Iterator for Prefetch<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl<T> Drop for Prefetch<T> {
    fn drop(&mut self) {
        // Dropping the receiver first makes a blocked `send` fail, so the join returns.
        self.rx.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_arrive_in_order_and_the_producer_stops_when_dropped() {
        let mut n = 0;
        let items: Vec<i32> = Prefetch::spawn(2, move || {
            n += 1;
            (n <= 5).then_some(n)
        })
        .collect();
        assert_eq!(items, vec![1, 2, 3, 4, 5]);
        // an endless producer: dropping after two items must not hang
        let mut endless = Prefetch::spawn(3, || Some(0u8));
        assert_eq!(endless.next(), Some(0));
        assert_eq!(endless.next(), Some(0));
        drop(endless);
    }
}

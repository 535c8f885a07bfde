//! Deterministic, resumable shuffled batch order: epoch `e` visits the samples in a
//! permutation fixed by `(seed, e)`; a [`BatchCursor`] (epoch, position) resumes mid-epoch.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::cache::{LatentBatch, LatentCache};
use crate::error::{DataError, Result};
use crate::prefetch::Prefetch;
use crate::preprocess::flip_coin;

/// PCG-XSH-RR 32 (O'Neill 2014), seeded from `(seed, epoch)`.
struct Pcg32 {
    state: u64,
    inc: u64,
}

impl Pcg32 {
    fn new(seed: u64, stream: u64) -> Self {
        let mut rng = Self { state: 0, inc: (stream << 1) | 1 };
        rng.next();
        rng.state = rng.state.wrapping_add(seed);
        rng.next();
        rng
    }

    fn next(&mut self) -> u32 {
        let old = self.state;
        self.state = old.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(self.inc);
        let xorshifted = (((old >> 18) ^ old) >> 27) as u32;
        xorshifted.rotate_right((old >> 59) as u32)
    }

    /// Uniform in `[0, n)` without modulo bias (rejection).
    fn below(&mut self, n: u32) -> u32 {
        let threshold = n.wrapping_neg() % n;
        loop {
            let r = self.next();
            if r >= threshold {
                return r % n;
            }
        }
    }
}

/// The permutation of `0..n` for `(seed, epoch)` (Fisher-Yates).
pub fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<i64> {
    let mut order: Vec<i64> = (0..n as i64).collect();
    let mut rng = Pcg32::new(seed, epoch);
    for i in (1..n).rev() {
        let j = rng.below(i as u32 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// Where a stream of shuffled batches stands; save it in a checkpoint to resume exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchCursor {
    /// Current epoch.
    pub epoch: u64,
    /// Samples of the current epoch already handed out.
    pub position: usize,
}

/// Shuffled batches over `n` samples; an epoch ends when fewer than `batch` samples remain
/// (those are dropped, as `drop_last` does), then the next epoch's permutation starts.
#[derive(Debug, Clone)]
pub struct BatchStream {
    n: usize,
    seed: u64,
    cursor: BatchCursor,
    order: Vec<i64>,
}

impl BatchStream {
    /// A stream at the start of epoch 0.
    pub fn new(n: usize, seed: u64) -> Self {
        Self::resume(n, seed, BatchCursor { epoch: 0, position: 0 })
    }

    /// A stream continuing from `cursor`.
    pub fn resume(n: usize, seed: u64, cursor: BatchCursor) -> Self {
        Self { n, seed, cursor, order: permutation(n, seed, cursor.epoch) }
    }

    /// Where it stands (before the next batch).
    pub fn cursor(&self) -> BatchCursor {
        self.cursor
    }

    /// The indices of the next `batch` samples (`batch` is clamped to `n`).
    pub fn next_batch(&mut self, batch: usize) -> Vec<i64> {
        let batch = batch.min(self.n).max(1);
        if self.cursor.position + batch > self.n {
            self.cursor = BatchCursor { epoch: self.cursor.epoch + 1, position: 0 };
            self.order = permutation(self.n, self.seed, self.cursor.epoch);
        }
        let out = self.order[self.cursor.position..self.cursor.position + batch].to_vec();
        self.cursor.position += batch;
        out
    }
}

/// Shuffled batches of a [`LatentCache`]: the order of a [`BatchStream`], each sample
/// flipped (its cached flipped latents) by [`flip_coin`]`(seed, epoch, index)` when `flip` is
/// on, so a stream resumed from a [`BatchCursor`] gives exactly the batches the uninterrupted
/// one would have.
#[derive(Debug, Clone)]
pub struct CacheBatches {
    cache: Arc<LatentCache>,
    stream: BatchStream,
    seed: u64,
    batch: usize,
    flip: bool,
    /// `(rank, world)`: this stream yields rows `rank * batch / world ..` of each batch.
    shard: (usize, usize),
}

impl CacheBatches {
    /// A stream over `cache` from `cursor` (`BatchCursor::default()` = the start).
    pub fn new(
        cache: Arc<LatentCache>,
        batch: usize,
        seed: u64,
        flip: bool,
        cursor: BatchCursor,
    ) -> Result<Self> {
        if flip && !cache.manifest.flipped {
            return Err(DataError::Invalid(format!(
                "{}: flipping asks for cached flipped latents; build the cache with flips",
                cache.dir.display()
            )));
        }
        let stream = BatchStream::resume(cache.len() as usize, seed, cursor);
        Ok(Self { cache, stream, seed, batch, flip, shard: (0, 1) })
    }

    /// Rank `rank`'s share of each batch of `world` ranks (torch's `DistributedSampler`
    /// over one global order): the stream still walks batches of the global size given to
    /// [`CacheBatches::new`], which `world` must divide, and yields its `batch / world`
    /// consecutive rows of each. The cursor is the global stream's, the same on every rank.
    pub fn sharded(mut self, rank: usize, world: usize) -> Result<Self> {
        if world == 0 || rank >= world || !self.batch.is_multiple_of(world) {
            return Err(DataError::Invalid(format!(
                "rank {rank} of {world}: a global batch of {} does not split into {world} equal shares",
                self.batch
            )));
        }
        if self.batch > self.cache.len() as usize {
            return Err(DataError::Invalid(format!(
                "{}: a global batch of {} is larger than the {} cached samples",
                self.cache.dir.display(),
                self.batch,
                self.cache.len()
            )));
        }
        self.shard = (rank, world);
        Ok(self)
    }

    /// The next batch and the cursor after it (save that cursor to resume after the batch).
    pub fn next_batch(&mut self) -> Result<(LatentBatch, BatchCursor)> {
        let mut indices = self.stream.next_batch(self.batch);
        let cursor = self.stream.cursor();
        let (rank, world) = self.shard;
        if world > 1 {
            let share = indices.len() / world;
            indices = indices[rank * share..(rank + 1) * share].to_vec();
        }
        let flips: Vec<bool> = if self.flip {
            indices.iter().map(|&i| flip_coin(self.seed, cursor.epoch, i)).collect()
        } else {
            Vec::new()
        };
        Ok((self.cache.gather(&indices, &flips)?, cursor))
    }

    /// Moves the stream to a background thread that keeps `depth` batches ready.
    pub fn prefetch(mut self, depth: usize) -> Prefetch<Result<(LatentBatch, BatchCursor)>> {
        Prefetch::spawn(depth, move || Some(self.next_batch()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_deterministic_and_differ_across_epochs() {
        let a = permutation(1000, 7, 0);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<i64>>(), "a permutation");
        assert_eq!(a, permutation(1000, 7, 0));
        assert_ne!(a, permutation(1000, 7, 1));
        assert_ne!(a, permutation(1000, 8, 0));
    }

    #[test]
    fn resuming_at_a_cursor_continues_the_same_sequence() {
        let mut full = BatchStream::new(100, 3);
        let all: Vec<Vec<i64>> = (0..30).map(|_| full.next_batch(16)).collect();
        let mut first = BatchStream::new(100, 3);
        for _ in 0..11 {
            first.next_batch(16);
        }
        let mut resumed = BatchStream::resume(100, 3, first.cursor());
        let rest: Vec<Vec<i64>> = (0..19).map(|_| resumed.next_batch(16)).collect();
        assert_eq!(rest, all[11..]);
        // 100 / 16: six batches per epoch, the remaining 4 samples are dropped
        assert_eq!(first.cursor().epoch, 1);
    }
}

//! Data-parallel training with torch DDP's semantics on libtorch's own c10d
//! ([`lpl_torch_ext::distributed`]): a [`World`] of ranks launched by torchrun or Slurm
//! ([`launch`]), identical initial weights (broadcast from rank 0), gradients averaged by
//! bucketed all-reduce, and the failure of a peer turned into an error naming its rank.
//!
//! How the loop stays independent of the world size: every rank draws the random numbers of
//! the whole global batch (noise, time steps, label dropout) from the same seeded generators
//! and keeps its own rows, and reads its own rows of the one global data order
//! ([`lpl_data::CacheBatches::sharded`]); means over the samples an LPL gate keeps are taken
//! over the global batch's kept samples ([`crate::objective::Share`]). So `world x batch`
//! trains as one process with the global batch does, up to the order of float additions.

pub mod launch;

use std::time::Duration;

use lpl_torch_ext::distributed::{ProcessGroup, ReduceOp, Store, has_nccl};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

pub use launch::{Launch, Launcher};

use crate::error::{Result, TrainError, invalid};

/// The collective engine of `[distributed] backend`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// NCCL for CUDA training, Gloo for CPU training (PyTorch's default choice).
    #[default]
    Auto,
    /// Gloo (CPU tensors; CUDA tensors through host copies).
    Gloo,
    /// NCCL (CUDA tensors).
    Nccl,
}

/// `[distributed]`: how ranks talk when the process was launched as one of several
/// (torchrun, Slurm); ignored in a single process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistributedConfig {
    /// The collective engine.
    pub backend: Backend,
    /// Seconds a rendezvous or a collective may wait for the other ranks before the run
    /// fails (a dead rank is usually noticed at once: its sockets close).
    pub timeout_s: f64,
    /// Gradient all-reduce bucket size in MB (torch DDP's `bucket_cap_mb`).
    pub bucket_mb: f64,
}

impl Default for DistributedConfig {
    fn default() -> Self {
        Self { backend: Backend::Auto, timeout_s: 600.0, bucket_mb: 25.0 }
    }
}

impl DistributedConfig {
    /// Checks the fields.
    pub fn validate(&self) -> Result<()> {
        if !(self.timeout_s.is_finite() && self.timeout_s > 0.0) {
            return Err(invalid(
                "distributed.timeout_s",
                format!("must be > 0, got {}", self.timeout_s),
            ));
        }
        if !(self.bucket_mb.is_finite() && self.bucket_mb > 0.0) {
            return Err(invalid(
                "distributed.bucket_mb",
                format!("must be > 0, got {}", self.bucket_mb),
            ));
        }
        Ok(())
    }
}

/// Joins made by this process so far: each gets its own key prefix in the store.
static JOINS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The ranks a run trains on: one process ([`World::single`]) or a joined process group.
#[derive(Debug)]
pub struct World {
    rank: usize,
    size: usize,
    link: Option<Link>,
}

#[derive(Debug)]
struct Link {
    // the group holds its own reference to the store; ours is for diagnosing failures
    store: Store,
    /// Names this launch's files (its rendezvous address and port).
    session: String,
    group: ProcessGroup,
    /// Where the group's collectives take their tensors: the bound CUDA device for NCCL,
    /// the CPU for Gloo (CUDA tensors are staged through host copies).
    device: Device,
    bucket_bytes: usize,
}

impl Link {
    /// Runs `op` on `tensors` as they are when they live on the group's device, else on
    /// copies there, copied back after (Gloo with CUDA tensors: the host copies).
    fn staged(
        &self,
        tensors: &[Tensor],
        op: impl FnOnce(&[Tensor]) -> lpl_torch_ext::Result<()>,
    ) -> lpl_torch_ext::Result<()> {
        if tensors.iter().all(|t| t.device() == self.device) {
            return op(tensors);
        }
        tch::no_grad(|| {
            let staged: Vec<Tensor> =
                tensors.iter().map(|t| t.to_device(self.device).contiguous()).collect();
            op(&staged)?;
            for (t, s) in tensors.iter().zip(&staged) {
                if t.device() != self.device {
                    t.shallow_clone().copy_(s);
                }
            }
            Ok(())
        })
    }
}

/// The engine for `backend` on `device`: NCCL only on CUDA and only when the build has it.
fn choose_backend(backend: Backend, device: Device) -> Result<Backend> {
    match (backend, device) {
        (Backend::Nccl, Device::Cuda(_)) if has_nccl() => Ok(Backend::Nccl),
        (Backend::Nccl, Device::Cuda(_)) => Err(invalid(
            "distributed.backend",
            "this build has no NCCL (it needs nccl.h and the CUDA runtime headers at build \
             time: run `cargo xtask setup` and rebuild): use `backend = \"gloo\"` (CUDA \
             tensors through host copies) or \"auto\"",
        )),
        (Backend::Nccl, _) => Err(invalid(
            "distributed.backend",
            format!("\"nccl\" runs on CUDA devices; this run's device is {device:?}"),
        )),
        (Backend::Auto, Device::Cuda(_)) if has_nccl() => Ok(Backend::Nccl),
        (Backend::Auto, Device::Cuda(_)) => {
            tracing::warn!(
                "this build has no NCCL: the CUDA gradients are all-reduced through Gloo \
                 (host copies: correct, slower than NCCL)"
            );
            Ok(Backend::Gloo)
        }
        _ => Ok(Backend::Gloo),
    }
}

/// This machine's address as the other ranks reach it: loopback when the rendezvous is local.
fn own_hostname(master_addr: &str) -> String {
    let local =
        master_addr == "localhost" || master_addr.starts_with("127.") || master_addr == "::1";
    if local {
        return "127.0.0.1".to_string();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "127.0.0.1".to_string())
}

impl World {
    /// One process: every collective is the identity.
    pub fn single() -> Self {
        Self { rank: 0, size: 1, link: None }
    }

    /// The world this process was launched into (torchrun's or Slurm's variables), joined;
    /// a single process when it was launched alone.
    pub fn from_env(config: &DistributedConfig, device: Device) -> Result<Self> {
        match Launch::from_env()? {
            None => Ok(Self::single()),
            Some(launch) => Self::join(&launch, config, device),
        }
    }

    /// Joins the process group of `launch` for training on `device`.
    pub fn join(launch: &Launch, config: &DistributedConfig, device: Device) -> Result<Self> {
        config.validate()?;
        let backend = choose_backend(config.backend, device)?;
        let timeout = Duration::from_secs_f64(config.timeout_s);
        let (rank, size) = (launch.rank, launch.world_size);
        // torchrun >= 2.x may serve the store itself (its agent's); then every rank is a
        // client. Keys go under the launch attempt and this process's join, as
        // torch.distributed puts them under /worker/attempt_N.
        let agent_store = std::env::var("TORCHELASTIC_USE_AGENT_STORE").is_ok_and(|v| v == "True");
        let attempt = std::env::var("TORCHELASTIC_RESTART_COUNT").unwrap_or_else(|_| "0".into());
        let join = JOINS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("/lpl/attempt_{attempt}/join_{join}");
        let serve = rank == 0 && !agent_store;
        let store =
            Store::connect(&launch.master_addr, launch.master_port, size, serve, &prefix, timeout)
                .map_err(|e| {
                    distributed(format!(
                        "rank {rank} of {size}: rendezvous at {}:{} failed: {e}",
                        launch.master_addr, launch.master_port
                    ))
                })?;
        let (group, comm_device) = match (backend, device) {
            (Backend::Nccl, Device::Cuda(index)) => {
                (ProcessGroup::nccl(&store, rank, size, index, timeout), device)
            }
            _ => {
                let host = own_hostname(&launch.master_addr);
                (ProcessGroup::gloo(&store, rank, size, &host, timeout), Device::Cpu)
            }
        };
        let group = group.map_err(|e| distributed(format!("rank {rank} of {size}: {e}")))?;
        let bucket_bytes = (config.bucket_mb * 1024.0 * 1024.0) as usize;
        tracing::info!(
            "rank {rank} of {size} ({:?} launch, local rank {}) joined over {backend:?} at {}:{}",
            launch.launcher,
            launch.local_rank,
            launch.master_addr,
            launch.master_port
        );
        Ok(Self {
            rank,
            size,
            link: Some(Link {
                store,
                group,
                device: comm_device,
                bucket_bytes: bucket_bytes.max(1),
                session: format!("{}-{join}", launch.master_port),
            }),
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether this is rank 0, the one that writes files.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// After a failed collective: which ranks are gone. Every survivor says so in the store
    /// and waits briefly for the others; those that never answer are named. When the store
    /// itself is unreachable, its host (rank 0) is the one that died.
    fn failure(&self, what: &str, error: lpl_torch_ext::TorchExtError) -> TrainError {
        let Some(link) = &self.link else { return error.into() };
        let (rank, size) = (self.rank, self.size);
        let gone: Vec<usize> = match link.store.set(&format!("lpl/failure/alive/{rank}"), "1") {
            Err(_) => vec![0],
            Ok(()) => (0..size)
                .filter(|&r| r != rank)
                .filter(|&r| {
                    !matches!(
                        link.store.wait(&format!("lpl/failure/alive/{r}"), Duration::from_secs(3)),
                        Ok(true)
                    )
                })
                .collect(),
        };
        let who = match gone.as_slice() {
            [] => "no rank is missing (a timeout?)".to_string(),
            [r] => format!("rank {r} is gone (killed, crashed or stopped answering)"),
            many => format!("ranks {many:?} are gone (killed, crashed or stopped answering)"),
        };
        distributed(format!("rank {rank} of {size}: {what} failed: {who}: {}", error.message))
    }

    /// Averages `grads` over the ranks in place, in buckets of about `bucket_mb` (one
    /// all-reduce per bucket; a bucket is the flat concatenation of whole tensors).
    pub fn average_gradients(&self, grads: &[Tensor]) -> Result<()> {
        let Some(link) = &self.link else { return Ok(()) };
        let mut bucket: Vec<&Tensor> = Vec::new();
        let mut bytes = 0usize;
        let flush = |bucket: &mut Vec<&Tensor>| -> Result<()> {
            if bucket.is_empty() {
                return Ok(());
            }
            tch::no_grad(|| -> Result<()> {
                let flat =
                    Tensor::cat(&bucket.iter().map(|g| g.flatten(0, -1)).collect::<Vec<_>>(), 0);
                link.staged(&[flat.shallow_clone()], |t| link.group.all_reduce(t, ReduceOp::Avg))
                    .map_err(|e| self.failure("the gradient all-reduce", e))?;
                let mut offset = 0;
                for g in bucket.iter() {
                    let n = g.numel() as i64;
                    g.shallow_clone().copy_(&flat.narrow(0, offset, n).view_as(g));
                    offset += n;
                }
                Ok(())
            })?;
            bucket.clear();
            Ok(())
        };
        for g in grads {
            let size = g.numel() * g.kind().elt_size_in_bytes();
            if bytes + size > link.bucket_bytes
                || bucket.first().is_some_and(|b| b.kind() != g.kind())
            {
                flush(&mut bucket)?;
                bytes = 0;
            }
            bucket.push(g);
            bytes += size;
        }
        flush(&mut bucket)
    }

    /// Averages each of `values` (small tensors: losses, logged terms) over the ranks.
    pub fn average(&self, values: &[Tensor]) -> Result<()> {
        let Some(link) = &self.link else { return Ok(()) };
        link.staged(values, |t| link.group.all_reduce(t, ReduceOp::Avg))
            .map_err(|e| self.failure("an all-reduce", e))
    }

    /// Sums each of `values` over the ranks.
    pub fn sum(&self, values: &[Tensor]) -> Result<()> {
        let Some(link) = &self.link else { return Ok(()) };
        link.staged(values, |t| link.group.all_reduce(t, ReduceOp::Sum))
            .map_err(|e| self.failure("an all-reduce", e))
    }

    /// Copies rank 0's `tensors` into every rank's (initial weights: identical on every
    /// rank whatever each built).
    pub fn broadcast_from_main(&self, tensors: &[Tensor]) -> Result<()> {
        let Some(link) = &self.link else { return Ok(()) };
        tch::no_grad(|| link.staged(tensors, |t| link.group.broadcast(t, 0)))
            .map_err(|e| self.failure("the broadcast", e))
    }

    /// Returns once every rank has called it.
    pub fn barrier(&self) -> Result<()> {
        let Some(link) = &self.link else { return Ok(()) };
        link.group.barrier().map_err(|e| self.failure("a barrier", e))
    }

    /// Every rank's `t` concatenated along dimension 0, in rank order.
    pub fn gather_cat(&self, t: &Tensor) -> Result<Tensor> {
        let Some(link) = &self.link else { return Ok(t.shallow_clone()) };
        let parts = link
            .group
            .all_gather(&t.to_device(link.device))
            .map_err(|e| self.failure("an all-gather", e))?;
        Ok(Tensor::cat(&parts, 0).to_device(t.device()))
    }

    /// This rank's contiguous share of `n` items (`0..n` split as evenly as it goes, in rank
    /// order): the batches of a sampling request, for instance.
    pub fn share(&self, n: usize) -> std::ops::Range<usize> {
        (self.rank * n / self.size)..((self.rank + 1) * n / self.size)
    }

    /// Every rank's `rows` (`(n_r, ...)`, any kind) concatenated in rank order, on rank 0
    /// only (`None` elsewhere), passed through files in `dir` as DiT's `sample_ddp.py`
    /// passes its samples: the directory must be shared by the ranks (one machine, or a
    /// shared filesystem, as for checkpoints). The files are removed once read.
    pub fn gather_rows_to_main(
        &self,
        rows: &Tensor,
        dir: &std::path::Path,
        tag: &str,
    ) -> Result<Option<Tensor>> {
        let Some(link) = &self.link else {
            return Ok(Some(rows.shallow_clone()));
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| TrainError::Io { path: dir.to_path_buf(), source: e })?;
        // named by the launch (its rendezvous port): two launches writing into one directory
        // do not meet
        let file =
            |r: usize| dir.join(format!(".lpl-gather-{tag}-{}-rank{r}.safetensors", link.session));
        let own = rows.to_device(Device::Cpu).contiguous();
        lpl_tensor_io::save(&[("rows".to_string(), own)], &Default::default(), &file(self.rank))?;
        self.barrier()?;
        let gathered = if self.is_main() {
            let mut parts = Vec::with_capacity(self.size);
            for r in 0..self.size {
                let mut tensors = lpl_tensor_io::read_tensors(&file(r))?;
                parts.push(tensors.remove("rows").ok_or_else(|| {
                    distributed(format!("{}: no `rows` tensor", file(r).display()))
                })?);
                let _ = std::fs::remove_file(file(r));
            }
            Some(Tensor::f_cat(&parts, 0)?)
        } else {
            None
        };
        // nobody starts another gather into the same files before rank 0 has read these
        self.barrier()?;
        Ok(gathered)
    }

    /// A 0-d f32 `flag` set on any rank, set on all (the non-finite step decision).
    pub fn any(&self, flag: &Tensor) -> Result<Tensor> {
        let Some(link) = &self.link else { return Ok(flag.shallow_clone()) };
        let f = flag.to_kind(Kind::Float).to_device(link.device).contiguous();
        link.group
            .all_reduce(&[f.shallow_clone()], ReduceOp::Max)
            .map_err(|e| self.failure("an all-reduce", e))?;
        Ok(f.to_device(flag.device()))
    }
}

fn distributed(message: String) -> TrainError {
    TrainError::Distributed { message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_follows_the_device_and_the_build() {
        assert_eq!(choose_backend(Backend::Auto, Device::Cpu).unwrap(), Backend::Gloo);
        assert_eq!(choose_backend(Backend::Gloo, Device::Cuda(1)).unwrap(), Backend::Gloo);
        // PyTorch's default: NCCL for CUDA when the build has it, else Gloo's host copies
        let auto_cuda = if has_nccl() { Backend::Nccl } else { Backend::Gloo };
        assert_eq!(choose_backend(Backend::Auto, Device::Cuda(0)).unwrap(), auto_cuda);
        let cpu = choose_backend(Backend::Nccl, Device::Cpu).unwrap_err().to_string();
        assert!(cpu.contains("distributed.backend") && cpu.contains("CUDA"), "{cpu}");
        match choose_backend(Backend::Nccl, Device::Cuda(0)) {
            Ok(b) => assert!(has_nccl() && b == Backend::Nccl),
            Err(e) => assert!(!has_nccl() && e.to_string().contains("no NCCL"), "{e}"),
        }
    }
}

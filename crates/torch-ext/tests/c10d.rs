//! libtorch's c10d through the shim: two processes (this test binary run again as each rank)
//! rendezvous on a TCPStore and run Gloo collectives; a rank killed mid-run makes the other's
//! collective fail within the timeout instead of hanging. NCCL: in the build whenever
//! libtorch is a CUDA build, and usable or failing cleanly depending on the GPUs.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::process::Command;
use std::time::{Duration, Instant};

use lpl_torch_ext::distributed::{ProcessGroup, ReduceOp, Store, has_gloo, has_nccl};
use tch::{Kind, Tensor};

const ROLE: &str = "LPL_C10D_TEST_ROLE";

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Runs test `name` of this binary as ranks 0 and 1 (`ROLE` = "rank:port:mode"); returns
/// their exit statuses and outputs.
fn launch(name: &str, mode: &str) -> Vec<(Option<i32>, String)> {
    let port = free_port();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|rank| {
            Command::new(&exe)
                .args(["--exact", name, "--nocapture", "--test-threads", "1"])
                .env(ROLE, format!("{rank}:{port}:{mode}"))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            (out.status.code(), text)
        })
        .collect()
}

fn role() -> Option<(usize, u16, String)> {
    let v = std::env::var(ROLE).ok()?;
    let mut it = v.split(':');
    let rank = it.next()?.parse().ok()?;
    let port = it.next()?.parse().ok()?;
    Some((rank, port, it.next()?.to_string()))
}

fn join(rank: usize, port: u16, timeout: Duration) -> (Store, ProcessGroup) {
    let store =
        Store::connect("127.0.0.1", port, 2, rank == 0, "test", Duration::from_secs(60)).unwrap();
    let group = ProcessGroup::gloo(&store, rank, 2, "127.0.0.1", timeout).unwrap();
    (store, group)
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
}

#[test]
fn this_build_has_gloo() {
    // CI installs Gloo's headers (cargo xtask setup); a build without them cannot pass the
    // distributed tests, so say so here first
    assert!(has_gloo(), "built without Gloo: install libgloo-dev and rebuild");
}

#[test]
fn this_build_has_nccl_when_libtorch_has_cuda() {
    // `cargo xtask setup` installs the CUDA header wheels the torch wheel lacks, so a CUDA
    // build of libtorch gives a build with NCCL, GPU or not; a CPU-only libtorch never has it
    let lib = std::path::Path::new(env!("LPL_TORCH_EXT_LIBTORCH_LIB"));
    let cuda_build = lib.join("libtorch_cuda.so").exists();
    assert_eq!(
        has_nccl(),
        cuda_build,
        "NCCL in the build: {}, {} a CUDA build (run `cargo xtask setup`, or set NCCL_INCLUDE \
         and CUDA_INCLUDE, and rebuild)",
        has_nccl(),
        lib.display()
    );
}

#[test]
fn nccl_group_works_on_a_gpu_and_fails_cleanly_without() {
    let store =
        Store::connect("127.0.0.1", free_port(), 1, true, "nccl", Duration::from_secs(30)).unwrap();
    let made = ProcessGroup::nccl(&store, 0, 1, 0, Duration::from_secs(30));
    match (has_nccl(), tch::Cuda::device_count() > 0) {
        (true, true) => {
            // one rank: every reduction is the identity, on the bound device
            let group = made.unwrap();
            let t = Tensor::arange(4, (Kind::Float, tch::Device::Cuda(0)));
            group.all_reduce(&[t.shallow_clone()], ReduceOp::Sum).unwrap();
            group.barrier().unwrap();
            assert_eq!(
                Vec::<f32>::try_from(t.to_device(tch::Device::Cpu)).unwrap(),
                [0., 1., 2., 3.]
            );
        }
        (true, false) => {
            let err = made.unwrap_err();
            assert!(err.message.contains("GPU"), "expected a no-GPU error, got {err}");
        }
        (false, _) => {
            let err = made.unwrap_err();
            assert!(err.message.contains("this build has no NCCL"), "got {err}");
        }
    }
}

#[test]
fn two_ranks_reduce_broadcast_gather() {
    if let Some((rank, port, _)) = role() {
        let (store, group) = join(rank, port, Duration::from_secs(60));
        assert_eq!((group.rank(), group.world_size()), (rank, 2));
        let r = rank as f64;
        let a = Tensor::full([3], r + 1.0, (Kind::Float, tch::Device::Cpu));
        let b = Tensor::arange(4, (Kind::Double, tch::Device::Cpu)) * (r + 1.0);
        group.all_reduce(&[a.shallow_clone(), b.shallow_clone()], ReduceOp::Sum).unwrap();
        assert_eq!(values(&a), [3.0; 3]);
        assert_eq!(Vec::<f64>::try_from(&b).unwrap(), [0.0, 3.0, 6.0, 9.0]);
        let m = Tensor::from_slice(&[r as f32 * 10.0, 1.0 - r as f32]);
        group.all_reduce(&[m.shallow_clone()], ReduceOp::Max).unwrap();
        assert_eq!(values(&m), [10.0, 1.0]);
        let avg = Tensor::from_slice(&[r as f32]);
        group.all_reduce(&[avg.shallow_clone()], ReduceOp::Avg).unwrap();
        assert_eq!(values(&avg), [0.5]);
        let c = Tensor::full([2, 2], 7.0 + r, (Kind::Float, tch::Device::Cpu));
        group.broadcast(&[c.shallow_clone()], 1).unwrap();
        assert_eq!(values(&c), [8.0; 4]);
        let g = group.all_gather(&Tensor::from_slice(&[rank as i64, 5])).unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(Vec::<i64>::try_from(&g[1]).unwrap(), [1, 5]);
        group.barrier().unwrap();
        store.set(&format!("done/{rank}"), "1").unwrap();
        assert!(store.wait(&format!("done/{}", 1 - rank), Duration::from_secs(30)).unwrap());
        assert!(!store.wait("never", Duration::from_millis(200)).unwrap());
        return;
    }
    for (rank, (code, out)) in launch("two_ranks_reduce_broadcast_gather", "ok").iter().enumerate()
    {
        assert_eq!(*code, Some(0), "rank {rank}:\n{out}");
    }
}

#[test]
fn a_killed_rank_fails_the_other_within_the_timeout() {
    if let Some((rank, port, _)) = role() {
        let (_store, group) = join(rank, port, Duration::from_secs(20));
        let a = Tensor::ones([4], (Kind::Float, tch::Device::Cpu));
        group.all_reduce(&[a.shallow_clone()], ReduceOp::Sum).unwrap();
        if rank == 1 {
            // SIGKILL itself: no destructor, no goodbye on the sockets beyond the kernel's
            let _ = Command::new("kill").args(["-9", &std::process::id().to_string()]).status();
            std::thread::sleep(Duration::from_secs(60));
        }
        let start = Instant::now();
        let err = group.all_reduce(&[a.shallow_clone()], ReduceOp::Sum).unwrap_err();
        println!("rank 0 failed after {:?}: {err}", start.elapsed());
        assert!(start.elapsed() < Duration::from_secs(20), "{:?}", start.elapsed());
        // the group is broken for good, as in PyTorch: later calls fail too
        assert!(group.barrier().is_err());
        return;
    }
    let start = Instant::now();
    let results = launch("a_killed_rank_fails_the_other_within_the_timeout", "kill");
    let (code0, out0) = &results[0];
    assert_eq!(*code0, Some(0), "rank 0 did not see the failure:\n{out0}");
    assert!(out0.contains("rank 0 failed after"), "{out0}");
    assert_eq!(results[1].0, None, "rank 1 was to die by SIGKILL:\n{}", results[1].1);
    assert!(start.elapsed() < Duration::from_secs(50));
}

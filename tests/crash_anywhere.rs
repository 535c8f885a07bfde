//! Nothing is lost, wherever a process dies. `lpl cache` and `lpl train` are SIGKILLed at
//! pseudo-random moments (at least 20 kills in all, landing in cache building, checkpoint
//! writes, metric appends and plain steps) and restarted each time (`--resume` once a
//! checkpoint exists). After every kill each published `.safetensors` file verifies (no
//! torn file: writes are to a temporary file, renamed); the run ends with a cache, a
//! metrics file and final weights identical to an uninterrupted run's, and no temporary file
//! left. A write that fails (the file-size limit `RLIMIT_FSIZE`, as a full disk would) stops
//! training with an error naming the file, and the previous checkpoints stay intact.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lpl::autoencoder::{AutoencoderKl, AutoencoderKlConfig, checkpoint};
use lpl::trainer::run_checkpoint;
use tch::{Device, Kind};

const LPL: &str = env!("CARGO_BIN_EXE_lpl");

/// Kills wanted across cache building and training together.
const MIN_KILLS: usize = 20;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lpl-crash-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A tiny RGB autoencoder and 144 16x16 grey PNGs in 3 class folders (read as RGB).
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    tch::manual_seed(0);
    let config = AutoencoderKlConfig {
        in_channels: 3,
        out_channels: 3,
        block_out_channels: vec![8, 8, 8],
        norm_num_groups: 4,
        scaling_factor: 1.0,
        ..AutoencoderKlConfig::default()
    };
    let ae = AutoencoderKl::new(&config, Device::Cpu, Kind::Float).unwrap();
    let ae_path = dir.join("ae.safetensors");
    checkpoint::save_kl(&ae, &ae_path, &BTreeMap::new()).unwrap();
    let images = dir.join("images");
    for i in 0..144u32 {
        let class = images.join(format!("c{}", i % 3));
        std::fs::create_dir_all(&class).unwrap();
        let img = image::GrayImage::from_fn(16, 16, |x, y| {
            image::Luma([((x * 13 + y * 7 + i * 31) % 256) as u8])
        });
        img.save(class.join(format!("{i:03}.png"))).unwrap();
    }
    (ae_path, images)
}

fn cache_command(ae: &Path, images: &Path, out: &Path) -> Command {
    let mut cmd = Command::new(LPL);
    cmd.args(["cache", "--device", "cpu", "--dataset", "folder", "--shard-size", "4", "--ae"])
        .arg(ae)
        .arg("--dataset-dir")
        .arg(images)
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

fn write_config(dir: &Path, name: &str, ae: &Path, cache: &Path, steps: usize) -> PathBuf {
    let text = format!(
        "output_dir = \"{}\"\nautoencoder = \"{}\"\n[data]\ncache = \"{}\"\n[model]\npreset = \"dit-tiny\"\n\
         [diffusion]\nschedule = \"sd15\"\nparameterization = \"eps\"\n[optim]\nlr = 1e-3\n\
         [train]\nsteps = {steps}\nbatch_size = 8\nlog_every = 1\ncheckpoint_every = 2\nkeep_checkpoints = 3\nseed = 3\n",
        dir.join(name).display(),
        ae.display(),
        cache.display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn train_command(config: &Path, run: &Path) -> Command {
    let mut cmd = Command::new(LPL);
    cmd.args(["train", "--device", "cpu"]);
    if !run_checkpoint::list_checkpoints(run).is_empty() {
        cmd.arg("--resume");
    }
    cmd.arg("--config").arg(config).stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

/// Every published `.safetensors` under `dir` verifies; returns the temporary files seen.
fn assert_nothing_torn(dir: &Path) -> usize {
    let mut temporaries = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for p in entries.flatten().map(|e| e.path()) {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if p.is_dir() {
                todo.push(p);
            } else if name.contains(".tmp-") {
                temporaries += 1;
            } else if name.ends_with(".safetensors") {
                lpl::tensor_io::verify(&p).unwrap_or_else(|e| panic!("torn file: {e}"));
            }
        }
    }
    temporaries
}

/// xorshift: the kill moments are the same on every run of the test.
struct Moments(u64);

impl Moments {
    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[derive(Default, Debug)]
struct Kills {
    total: usize,
    mid_write: usize,
}

/// Whether `dir` holds a temporary file of an atomic write in progress.
fn writing(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| e.file_name().to_string_lossy().contains(".tmp-"))
    })
}

/// Polls `done` until it holds or `child` exits.
fn wait_for(child: &mut std::process::Child, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done()
        && child.try_wait().unwrap().is_none()
        && start.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Runs `make()` to completion, SIGKILLing it until `wanted` kills happened. Every other
/// attempt dies at a pseudo-random moment: after 1 to 3 units of new `progress` (steps
/// logged, shards written) and 0 to 20 ms more, so each attempt gets a little further; the
/// others the moment a write to `writes_in` is in progress (its temporary file exists).
/// After each kill, nothing under `dir` is torn.
fn run_with_kills(
    mut make: impl FnMut() -> Command,
    progress: impl Fn() -> usize,
    wanted: usize,
    moments: &mut Moments,
    dir: &Path,
    writes_in: &Path,
) -> Kills {
    let mut kills = Kills::default();
    for attempt in 0..400 {
        let mut child = make().spawn().unwrap();
        if kills.total < wanted {
            if attempt % 2 == 0 {
                let target = progress() + 1 + moments.below(3) as usize;
                wait_for(&mut child, || progress() >= target);
                std::thread::sleep(Duration::from_millis(moments.below(20)));
            } else {
                wait_for(&mut child, || writing(writes_in));
            }
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills.total += 1;
                if assert_nothing_torn(dir) > 0 {
                    kills.mid_write += 1;
                }
                continue;
            }
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        return kills;
    }
    panic!("no run completed in 400 attempts");
}

/// Lines in a run's metrics file (steps logged).
fn logged(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl")).map_or(0, |t| t.lines().count())
}

/// Shard files in a cache directory.
fn shards(cache: &Path) -> usize {
    std::fs::read_dir(cache).map_or(0, |entries| {
        entries
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                name.starts_with("shard-") && name.ends_with(".safetensors")
            })
            .count()
    })
}

fn tensors(path: &Path) -> BTreeMap<String, tch::Tensor> {
    lpl::tensor_io::read_tensors(path).unwrap()
}

fn metrics(run: &Path) -> Vec<(u64, u64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap().to_bits()))
        .collect()
}

#[test]
fn killed_anywhere_and_resumed_equals_the_uninterrupted_run() {
    let dir = scratch("kills");
    let (ae, images) = setup(&dir);
    let steps = 48;

    let start = Instant::now();
    let status = cache_command(&ae, &images, &dir.join("cache-straight")).status().unwrap();
    assert!(status.success());
    let cache_time = start.elapsed();
    let straight = write_config(&dir, "straight", &ae, &dir.join("cache-straight"), steps);
    let start = Instant::now();
    let out = train_command(&straight, &dir.join("straight")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let train_time = start.elapsed();

    let mut moments = Moments(0x5EED_1234_ABCD_0001);
    let killed_cache = dir.join("cache-killed");
    let cache_kills = run_with_kills(
        || cache_command(&ae, &images, &killed_cache),
        || shards(&killed_cache),
        MIN_KILLS / 2,
        &mut moments,
        &killed_cache,
        &killed_cache,
    );
    let killed = write_config(&dir, "killed", &ae, &killed_cache, steps);
    let run = dir.join("killed");
    let train_kills = run_with_kills(
        || train_command(&killed, &run),
        || logged(&run),
        MIN_KILLS - cache_kills.total,
        &mut moments,
        &run,
        &run_checkpoint::checkpoint_dir(&run),
    );
    println!(
        "cache {cache_time:?}, train {train_time:?} uninterrupted; kills: cache {cache_kills:?}, train {train_kills:?}"
    );
    assert!(cache_kills.total + train_kills.total >= MIN_KILLS);
    assert!(cache_kills.mid_write > 0, "no kill landed in a shard write: {cache_kills:?}");
    assert!(train_kills.mid_write > 0, "no kill landed in a checkpoint write: {train_kills:?}");

    // the cache: same manifest (but its paths), same shards
    let manifest = |d: &Path| {
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("manifest.json")).unwrap())
                .unwrap();
        v["autoencoder"] = serde_json::Value::Null;
        v
    };
    assert_eq!(manifest(&dir.join("cache-straight")), manifest(&killed_cache));
    for shard in manifest(&killed_cache)["shards"].as_array().unwrap() {
        let file = shard["file"].as_str().unwrap();
        let (a, b) =
            (tensors(&dir.join("cache-straight").join(file)), tensors(&killed_cache.join(file)));
        assert!(a.iter().all(|(k, v)| v.equal(&b[k])), "{file} differs");
    }
    // training: every step logged once with the same loss, the same final weights
    assert_eq!(metrics(&dir.join("straight")), metrics(&run));
    let (_, a) =
        run_checkpoint::load(&run_checkpoint::checkpoint_path(&dir.join("straight"), steps))
            .unwrap();
    let (_, b) = run_checkpoint::load(&run_checkpoint::checkpoint_path(&run, steps)).unwrap();
    assert_eq!(a.len(), b.len());
    for (k, v) in &a {
        assert!(v.equal(&b[k]), "{k} differs");
    }
    assert_eq!(assert_nothing_torn(&run), 0, "temporary files left in {}", run.display());
    assert_eq!(assert_nothing_torn(&killed_cache), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[repr(C)]
struct RLimit {
    cur: u64,
    max: u64,
}

const RLIMIT_FSIZE: i32 = 1;
const SIGXFSZ: i32 = 25;
const SIG_IGN: usize = 1;

#[allow(unsafe_code)]
unsafe extern "C" {
    fn setrlimit(resource: i32, rlim: *const RLimit) -> i32;
    fn signal(signum: i32, handler: usize) -> usize;
}

#[test]
fn a_failed_write_stops_training_naming_the_file_and_keeps_the_last_checkpoint() {
    use std::os::unix::process::CommandExt as _;
    let dir = scratch("fsize");
    let (ae, images) = setup(&dir);
    let status = cache_command(&ae, &images, &dir.join("cache")).status().unwrap();
    assert!(status.success());
    let config = write_config(&dir, "run", &ae, &dir.join("cache"), 4);
    let run = dir.join("run");
    let out = train_command(&config, &run).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let last = run_checkpoint::checkpoint_path(&run, 4);
    let size = std::fs::metadata(&last).unwrap().len();
    let before = std::fs::read(&last).unwrap();

    // resume to step 8 with files limited below a checkpoint's size
    let config = write_config(&dir, "run", &ae, &dir.join("cache"), 8);
    let mut cmd = train_command(&config, &run);
    let limit = size / 2;
    // SAFETY: setrlimit and signal are async-signal-safe; nothing else runs before exec.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            // a write past the limit then fails with EFBIG instead of killing the process
            signal(SIGXFSZ, SIG_IGN);
            if setrlimit(RLIMIT_FSIZE, &RLimit { cur: limit, max: limit }) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "training went on past a failed write");
    assert!(stderr.contains("step-0000006.safetensors"), "{stderr}");
    assert!(stderr.contains("File too large"), "{stderr}");
    // the checkpoint before the failure is intact, and nothing half-written is published
    assert_eq!(std::fs::read(&last).unwrap(), before);
    lpl::tensor_io::verify(&last).unwrap();
    assert!(!run_checkpoint::checkpoint_path(&run, 6).exists());
    assert_eq!(assert_nothing_torn(&run), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

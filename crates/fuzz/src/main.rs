//! `lpl-fuzz`: mutation fuzzing of lpl's file readers on stable Rust (run by
//! `cargo xtask fuzz --seconds N`).
//!
//! For each target (see [`targets::TARGETS`]) a child process feeds mutated seed inputs to
//! the reader for its share of the time. A panic is a crash (caught, the input saved, the
//! loop goes on); a child that dies (abort, stack overflow, out of memory under its 8 GiB
//! address-space limit) is a crash too: the parent saves the input it was reading, which
//! is always on disk, and restarts it. An input that takes over a second is saved as slow.
//! Inputs that give an error message not seen before join the corpus (a cheap stand-in for
//! coverage feedback: it lets mutations build on inputs that got further).
//!
//! Output: a table (target, executions, per second, corpus, crashes, slow), JSON in
//! `<out>/report.json`, crashing inputs in `<out>/crashes/`. Exit status 1 when any target
//! crashed.

mod mutate;
mod targets;

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sha2::Digest as _;

use mutate::{Rng, mutate};
use targets::{TARGETS, Target};

const USAGE: &str = "usage: lpl-fuzz [--seconds N] [--target NAME] [--out DIR] [--seed S]

  --seconds N   total time, shared by the targets (default 60)
  --target NAME only this target (pth, pickle, safetensors, checkpoint, npz, idx, png,
                manifest, run_config, ablation_config)
  --out DIR     where report.json and crashes/ go (default target/fuzz)
  --seed S      first random seed (default 1)";

/// The message of the last panic (the hook keeps it instead of printing it).
static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

#[derive(Debug, Default, Clone, serde::Serialize)]
struct Stats {
    target: String,
    executions: u64,
    seconds: f64,
    corpus: usize,
    crashes: Vec<String>,
    slow: Vec<String>,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn target(name: &str) -> Result<&'static Target> {
    TARGETS.iter().find(|t| t.name == name).with_context(|| format!("unknown target `{name}`"))
}

/// Saves `input` as `<out>/<kind>/<target>-<sha8><ext>`; returns the path.
fn save(out: &Path, kind: &str, t: &Target, input: &[u8]) -> String {
    let digest = sha2::Sha256::digest(input);
    let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let ext = Path::new(t.file).extension().map(|e| format!(".{}", e.to_string_lossy()));
    let dir = out.join(kind);
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{}-{hex}{}", t.name, ext.unwrap_or_default()));
    let _ = std::fs::write(&path, input);
    path.display().to_string()
}

/// An error message with numbers and paths blurred: inputs that reach a new kind of error
/// join the corpus.
fn outcome_key(result: &Result<(), String>) -> String {
    match result {
        Ok(()) => "ok".into(),
        Err(msg) => {
            let msg = msg.rsplit(".pth: ").next().unwrap_or(msg);
            msg.chars().map(|c| if c.is_ascii_digit() { '#' } else { c }).take(80).collect()
        }
    }
}

/// The child: fuzz one target for `seconds`, print its stats as one JSON line.
fn child(t: &Target, seconds: f64, seed: u64, work: &Path, out: &Path) -> Result<()> {
    tch::set_num_threads(1);
    std::panic::set_hook(Box::new(|info| {
        if let Ok(mut last) = LAST_PANIC.lock() {
            *last = info.to_string();
        }
    }));
    std::fs::create_dir_all(work)?;
    let root = workspace_root();
    let shard = root.join("tests/fixtures/hostile/cache_valid/shard-00000.safetensors");
    if t.name == "manifest" {
        std::fs::copy(&shard, work.join("shard-00000.safetensors"))
            .with_context(|| format!("cannot copy {}", shard.display()))?;
    }
    let mut corpus = (t.seeds)(&root);
    if corpus.is_empty() {
        bail!("target {}: no seed inputs found under {}", t.name, root.display());
    }
    let seeds = corpus.clone();
    let input_path = work.join(t.file);
    let mut seen = HashSet::new();
    let mut stats = Stats { target: t.name.into(), ..Default::default() };
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    let deadline = Duration::from_secs_f64(seconds);
    while start.elapsed() < deadline {
        let base = &corpus[rng.below(corpus.len())];
        let mutated = mutate(base, &seeds, &mut rng, t.text);
        let input = (t.wrap)(mutated.clone());
        std::fs::write(&input_path, &input)?;
        let began = Instant::now();
        let result = std::panic::catch_unwind(|| (t.run)(&input_path, work));
        let took = began.elapsed();
        stats.executions += 1;
        match result {
            Err(_) => {
                let message = LAST_PANIC.lock().map(|m| m.clone()).unwrap_or_default();
                let saved = save(out, "crashes", t, &input);
                stats.crashes.push(format!("{saved}: {message}"));
            }
            Ok(outcome) => {
                if seen.insert(outcome_key(&outcome)) && corpus.len() < 4096 {
                    corpus.push(mutated);
                }
            }
        }
        if took > Duration::from_secs(1) {
            stats.slow.push(format!("{} ({took:?})", save(out, "slow", t, &input)));
        }
    }
    stats.seconds = start.elapsed().as_secs_f64();
    stats.corpus = corpus.len();
    println!("{}", serde_json::to_string(&stats)?);
    Ok(())
}

/// Limits the child's address space (a reader that allocates without bound fails there).
fn limit_memory(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc_rlimit(8 << 30);
            if setrlimit(RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[repr(C)]
struct RLimit {
    cur: u64,
    max: u64,
}

const RLIMIT_AS: i32 = 9;

fn libc_rlimit(bytes: u64) -> RLimit {
    RLimit { cur: bytes, max: bytes }
}

#[allow(unsafe_code)]
unsafe extern "C" {
    fn setrlimit(resource: i32, rlim: *const RLimit) -> i32;
}

/// The parent: runs each target in children until its time is used, restarting a child
/// that dies and saving the input it died on.
fn parent(chosen: &[&'static Target], seconds: f64, seed: u64, out: &Path) -> Result<Vec<Stats>> {
    let exe = std::env::current_exe()?;
    let share = seconds / chosen.len() as f64;
    let mut all = Vec::new();
    for (k, t) in chosen.iter().enumerate() {
        let work = std::env::temp_dir().join(format!("lpl-fuzz-{}-{}", std::process::id(), t.name));
        let mut total = Stats { target: t.name.into(), ..Default::default() };
        let start = Instant::now();
        let mut restarts = 0u64;
        while start.elapsed().as_secs_f64() < share - 0.5 {
            let left = share - start.elapsed().as_secs_f64();
            let mut cmd = Command::new(&exe);
            cmd.args(["--child", t.name, "--seconds", &format!("{left:.2}")])
                .args(["--seed", &(seed + 1000 * k as u64 + restarts).to_string()])
                .arg("--work")
                .arg(&work)
                .arg("--out")
                .arg(out)
                .stdin(Stdio::null())
                .stderr(Stdio::inherit());
            limit_memory(&mut cmd);
            let output = cmd.output().with_context(|| format!("cannot run {}", exe.display()))?;
            let line = String::from_utf8_lossy(&output.stdout);
            match line.lines().rev().find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            {
                Some(v) if output.status.success() => {
                    total.executions += v["executions"].as_u64().unwrap_or(0);
                    total.corpus = total.corpus.max(v["corpus"].as_u64().unwrap_or(0) as usize);
                    for key in ["crashes", "slow"] {
                        let list = v[key].as_array().cloned().unwrap_or_default();
                        let strings = list.iter().filter_map(|s| s.as_str().map(String::from));
                        if key == "crashes" {
                            total.crashes.extend(strings);
                        } else {
                            total.slow.extend(strings);
                        }
                    }
                    break;
                }
                _ => {
                    // died mid-input: the input is still on disk
                    let input = std::fs::read(work.join(t.file)).unwrap_or_default();
                    let saved = save(out, "crashes", t, &input);
                    total.crashes.push(format!("{saved}: child died ({})", output.status));
                    restarts += 1;
                }
            }
        }
        total.seconds = start.elapsed().as_secs_f64();
        let _ = std::fs::remove_dir_all(&work);
        all.push(total);
    }
    Ok(all)
}

fn run() -> Result<bool> {
    let mut args = std::env::args().skip(1);
    let (mut seconds, mut only, mut out, mut seed) = (60.0, None, None, 1u64);
    let (mut child_target, mut work) = (None, None);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value\n{USAGE}"));
        match a.as_str() {
            "--seconds" => seconds = value()?.parse().context("--seconds: a number")?,
            "--target" => only = Some(value()?),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--seed" => seed = value()?.parse().context("--seed: an integer")?,
            "--child" => child_target = Some(value()?),
            "--work" => work = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(true);
            }
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    let out = out.unwrap_or_else(|| workspace_root().join("target/fuzz"));
    if let Some(name) = child_target {
        let work = work.context("--child needs --work")?;
        child(target(&name)?, seconds, seed, &work, &out)?;
        return Ok(true);
    }
    let chosen: Vec<&'static Target> = match &only {
        Some(name) => vec![target(name)?],
        None => TARGETS.iter().collect(),
    };
    let _ = std::fs::remove_dir_all(out.join("crashes"));
    let _ = std::fs::remove_dir_all(out.join("slow"));
    std::fs::create_dir_all(&out)?;
    eprintln!("fuzzing {} target(s) for {seconds} s in all", chosen.len());
    let stats = parent(&chosen, seconds, seed, &out)?;
    let mut table = String::from(
        "| target | executions | per second | corpus | crashes | slow (> 1 s) |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for s in &stats {
        table += &format!(
            "| {} | {} | {:.0} | {} | {} | {} |\n",
            s.target,
            s.executions,
            s.executions as f64 / s.seconds.max(1e-9),
            s.corpus,
            s.crashes.len(),
            s.slow.len()
        );
    }
    print!("{table}");
    for s in &stats {
        for c in s.crashes.iter().chain(&s.slow) {
            println!("{}: {c}", s.target);
        }
    }
    let mut f = std::fs::File::create(out.join("report.json"))?;
    writeln!(f, "{}", serde_json::to_string_pretty(&stats)?)?;
    Ok(stats.iter().all(|s| s.crashes.is_empty()))
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("crashes found: inputs in the crashes/ folder");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

//! `examples/own-project`, a Cargo project outside lpl's workspace that depends on
//! `lpl-loss`, `lpl-autoencoder` and `lpl-schedulers` by path, built and run from a clean copy
//! exactly as README.md ("Use a single crate in your project") tells a user: nothing in the
//! environment but `LIBTORCH` (and the toolchain's own PATH/HOME) while building, and
//! nothing at all but PATH when running (its build.rs gives the binary an rpath to libtorch).
//! It prints the loss of one batch before and after one AdamW step of its own model.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "target" {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if src.is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// `loss before <x> after <y>` -> (x, y).
fn parse_losses(stdout: &str) -> (f64, f64) {
    let line = stdout.lines().find(|l| l.starts_with("loss before ")).unwrap_or_else(|| {
        panic!("no `loss before ... after ...` line in: {stdout}");
    });
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!((words[0], words[1], words[3]), ("loss", "before", "after"), "{line}");
    (words[2].parse().unwrap(), words[4].parse().unwrap())
}

#[test]
fn own_project_builds_and_trains_outside_the_workspace() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // the libtorch this workspace builds with: the user's LIBTORCH, else (.cargo/config.toml)
    // the `.libtorch` link that `cargo xtask setup` makes
    let libtorch =
        std::env::var_os("LIBTORCH").map_or_else(|| repo.join(".libtorch"), PathBuf::from);
    assert!(
        libtorch.join("lib").is_dir(),
        "{} has no lib/: `cargo xtask setup` (run by `cargo xtask test`) links it",
        libtorch.display()
    );
    let dir = std::env::temp_dir().join(format!("lpl-own-project-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&repo.join("examples/own-project"), &dir);
    // the path dependencies point at this checkout, as a user's would point at theirs
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let crates = format!("{}/", repo.join("crates").display());
    std::fs::write(&manifest, text.replace("../../crates/", &crates)).unwrap();

    let mut build = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    build.current_dir(&dir).env_clear().args(["build", "--quiet"]).env("LIBTORCH", &libtorch);
    for var in ["PATH", "HOME", "CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN"] {
        if let Some(v) = std::env::var_os(var) {
            build.env(var, v);
        }
    }
    let out = build.output().unwrap();
    assert!(out.status.success(), "build failed:\n{}", String::from_utf8_lossy(&out.stderr));

    // run with nothing but PATH: no LD_LIBRARY_PATH, no LIBTORCH
    let run = Command::new(dir.join("target/debug/own-project"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    let (before, after) = parse_losses(&stdout);
    assert!(before.is_finite() && after.is_finite(), "{stdout}");
    assert!(before > 0.0 && after > 0.0, "{stdout}");
    assert!(after < before, "one AdamW step lowers the loss of the same batch: {stdout}");
    // the dependency versions are the committed lock file's (the workspace's), not newer
    let lock = std::fs::read_to_string(dir.join("Cargo.lock")).unwrap();
    let ours = std::fs::read_to_string(repo.join("Cargo.lock")).unwrap();
    for krate in ["tch", "torch-sys", "safetensors", "serde"] {
        assert_eq!(
            lpl_torch_build::locked_version(&lock, krate),
            lpl_torch_build::locked_version(&ours, krate),
            "{krate}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

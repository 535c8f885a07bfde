//! `lpl doctor` succeeds with no LD_LIBRARY_PATH and reports the libtorch tch requires; the
//! binary finds libtorch through its own rpath and really links libtorch_cuda.

use std::path::Path;
use std::process::Command;

const LPL: &str = env!("CARGO_BIN_EXE_lpl");

#[test]
fn doctor_reports_required_libtorch_without_ld_library_path() {
    let out = Command::new(LPL)
        .arg("doctor")
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("LIBTORCH")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "doctor failed:\n{stdout}\n{stderr}");
    let line = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key).map(str::trim))
            .unwrap_or_else(|| panic!("no `{key}` line in:\n{stdout}"))
    };
    let version = line("libtorch ");
    assert!(version == "2.11.0" || version.starts_with("2.11.0+"), "version {version}");
    assert_eq!(line("tch "), "0.24.0");
    let lib = Path::new(line("libtorch path"));
    assert!(lib.join("libtorch_cpu.so").exists(), "{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        assert_eq!(line("libtorch_cuda"), "linked");
    }
    // CI builds with Gloo's headers, and with NCCL's when libtorch is a CUDA build (cargo
    // xtask setup installs both)
    let backends = if lib.join("libtorch_cuda.so").exists() { "gloo, nccl" } else { "gloo" };
    assert_eq!(line("distributed"), backends);
    let threads: i32 = line("CPU threads").parse().unwrap();
    assert!(threads >= 1);
}

/// The dynamic section of the binary: a RUNPATH/RPATH to libtorch's lib directory, and
/// libtorch_cuda.so as NEEDED whenever that libtorch ships it.
#[test]
fn binary_has_rpath_and_links_libtorch_cuda() {
    let out =
        Command::new("readelf").args(["-d", LPL]).output().expect("readelf (binutils) is needed");
    let dynamic = String::from_utf8_lossy(&out.stdout);
    let rpath = dynamic
        .lines()
        .find(|l| l.contains("(RUNPATH)") || l.contains("(RPATH)"))
        .unwrap_or_else(|| panic!("no RPATH/RUNPATH in:\n{dynamic}"));
    let lib_dir = rpath.split('[').nth(1).and_then(|r| r.split(']').next()).unwrap();
    assert!(
        Path::new(lib_dir).join("libtorch_cpu.so").exists(),
        "rpath {lib_dir} holds no libtorch"
    );
    let needed_cuda = dynamic.contains("Shared library: [libtorch_cuda.so]");
    assert_eq!(needed_cuda, Path::new(lib_dir).join("libtorch_cuda.so").exists(), "{dynamic}");
}

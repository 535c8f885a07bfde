//! `lpl verify DIR`: every `.safetensors` file under DIR checked against the SHA-256 lpl
//! recorded when writing it; one changed byte is named and fails the command, an intact
//! tree passes, files without a digest are listed as such.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::process::Command;

use tch::{Device, Kind, Tensor};

#[test]
fn verify_names_a_damaged_shard() {
    let dir = std::env::temp_dir().join(format!("lpl-verify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("cache")).unwrap();
    for name in
        ["cache/shard-00000.safetensors", "cache/shard-00001.safetensors", "ckpt.safetensors"]
    {
        let t = Tensor::arange(4096, (Kind::Float, Device::Cpu)).view([64, 64]);
        lpl_tensor_io::save(&[("latents".to_string(), t)], &BTreeMap::new(), &dir.join(name))
            .unwrap();
    }
    // a file written elsewhere (by tch: no digest)
    let zeros = Tensor::zeros([3], (Kind::Float, Device::Cpu));
    Tensor::write_safetensors(&[("x", &zeros)], dir.join("foreign.safetensors")).unwrap();
    let verify =
        || Command::new(env!("CARGO_BIN_EXE_lpl")).arg("verify").arg(&dir).output().unwrap();
    let ok = verify();
    let text = String::from_utf8_lossy(&ok.stdout).to_string();
    assert!(ok.status.success(), "{text}{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(text.lines().filter(|l| l.starts_with("ok ")).count(), 3, "{text}");
    assert!(text.contains("no digest") && text.contains("foreign.safetensors"), "{text}");
    // one byte of one shard's data changed
    let shard = dir.join("cache/shard-00001.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x04;
    std::fs::write(&shard, bytes).unwrap();
    let bad = verify();
    let text = String::from_utf8_lossy(&bad.stdout).to_string();
    assert!(!bad.status.success());
    let damaged: Vec<&str> = text.lines().filter(|l| l.starts_with("DAMAGED")).collect();
    assert_eq!(damaged.len(), 1, "{text}");
    assert!(damaged[0].contains("shard-00001.safetensors"), "{text}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("1 of 4 file(s) damaged"));
    std::fs::remove_dir_all(dir).unwrap();
}

//! `lpl model-info` reports the published parameter count of DiT-B/2 and rejects unknown
//! presets by listing the known ones.

use std::process::Command;

#[test]
fn dit_b_2_summary() {
    let out = Command::new(env!("CARGO_BIN_EXE_lpl"))
        .args(["model-info", "--preset", "dit-b-2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // Peebles & Xie: DiT-B/2 has 130M parameters (ours, without learned sigma: 130.30M)
    assert!(text.contains("130.30M") && text.contains("256 tokens"), "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_lpl"))
        .args(["model-info", "--preset", "dit-q-2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("dit-xl-2"));
}

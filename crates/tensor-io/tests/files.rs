//! Round trips through safetensors with metadata, the .pth reader against torch.save
//! output, and the checks of `load_into`.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lpl_tensor_io::{TensorIoError, load_into, read_metadata, read_tensors, save};
use tch::{Device, Kind, Tensor, nn};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("lpl-tensor-io-{name}-{}", std::process::id()))
}

#[test]
fn pth_reader_matches_torch_save() {
    let ours = read_tensors(&fixture("state_dict.pth")).unwrap();
    let expected = read_tensors(&fixture("expected.safetensors")).unwrap();
    assert_eq!(ours.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
    for (k, v) in &expected {
        assert_eq!(ours[k].kind(), v.kind(), "{k}");
        assert_eq!(ours[k].size(), v.size(), "{k}");
        assert!(ours[k].equal(v), "{k}");
    }
}

#[test]
fn safetensors_round_trip_keeps_dtypes_and_metadata() {
    let dir = scratch("roundtrip");
    let path = dir.join("ckpt.safetensors");
    let tensors: Vec<(String, Tensor)> =
        read_tensors(&fixture("expected.safetensors")).unwrap().into_iter().collect();
    let meta = BTreeMap::from([
        ("config".to_string(), "{\"a\": 1}".to_string()),
        ("step".to_string(), "12".to_string()),
    ]);
    save(&tensors, &meta, &path).unwrap();
    // the given metadata, plus the SHA-256 of the tensors (64 hex digits)
    let mut stored = read_metadata(&path).unwrap();
    let digest = stored.remove(lpl_tensor_io::DIGEST_KEY).unwrap();
    assert_eq!(stored, meta);
    assert!(digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()), "{digest}");
    let back = read_tensors(&path).unwrap();
    for (k, v) in &tensors {
        assert!(back[k].equal(v) && back[k].kind() == v.kind(), "{k}");
    }
    // any changed byte of the tensors is found, naming the file; the unchanged copy and a
    // file written without a digest (by PyTorch, here the fixture) read as before
    let bytes = std::fs::read(&path).unwrap();
    for at in [bytes.len() - 1, bytes.len() / 2 + 37] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x01;
        let copy = dir.join("damaged.safetensors");
        std::fs::write(&copy, &damaged).unwrap();
        let err = read_tensors(&copy).unwrap_err();
        assert!(matches!(err, lpl_tensor_io::TensorIoError::Damaged { .. }), "byte {at}: {err}");
        assert!(err.to_string().contains("damaged.safetensors"), "{err}");
        std::fs::remove_file(&copy).unwrap();
    }
    assert!(lpl_tensor_io::verify(&fixture("expected.safetensors")).is_ok());
    let leftovers: Vec<_> =
        std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn load_into_checks_names_and_shapes() {
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = vs.root().zeros("a", &[2, 2]);
    let ok = BTreeMap::from([("a".to_string(), Tensor::ones([2, 2], (Kind::Half, Device::Cpu)))]);
    load_into(&vs, &ok, Path::new("ok.safetensors")).unwrap();
    assert_eq!(vs.variables()["a"].kind(), Kind::Float, "converted to the variable's dtype");
    let wrong = BTreeMap::from([("a".to_string(), Tensor::ones([3], (Kind::Float, Device::Cpu)))]);
    let err = load_into(&vs, &wrong, Path::new("w.safetensors")).unwrap_err();
    assert!(matches!(err, TensorIoError::ShapeMismatch { .. }));
    assert_eq!(err.to_string(), "w.safetensors: tensor `a` has shape [3], expected [2, 2]");
    let err = load_into(&vs, &BTreeMap::new(), Path::new("m.safetensors")).unwrap_err();
    assert_eq!(err.to_string(), "m.safetensors: missing tensor `a` (expected shape [2, 2])");
    let corrupt = scratch("corrupt.safetensors");
    std::fs::write(&corrupt, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}").unwrap();
    assert!(matches!(read_tensors(&corrupt), Err(TensorIoError::Format { .. })));
    let truncated = scratch("truncated.pth");
    std::fs::write(&truncated, &std::fs::read(fixture("state_dict.pth")).unwrap()[..500]).unwrap();
    assert!(read_tensors(&truncated).unwrap_err().to_string().contains("truncated.pth"));
    std::fs::remove_file(corrupt).unwrap();
    std::fs::remove_file(truncated).unwrap();
}

/// `.npz` archives as NumPy writes them (`np.savez`, stored, and `np.savez_compressed`,
/// deflated; `fixtures/make_npz_fixtures.py`) read with their dtypes, shapes and values; what
/// we write reads back identically (and NumPy reads it: the stored layout of `np.savez`,
/// CRC-32 included); damaged archives are errors naming the file and member.
#[test]
fn npz_archives_round_trip_and_read_numpy_files() {
    use lpl_tensor_io::npz::{read_npz, write_npz};
    let expected_images = Tensor::arange(96, (Kind::Uint8, tch::Device::Cpu)).view([2, 4, 4, 3]);
    for name in ["adm_layout.npz", "compressed.npz"] {
        let a = read_npz(&fixture(name)).unwrap();
        assert_eq!(a.keys().collect::<Vec<_>>(), ["arr_0", "arr_1", "mu", "sigma"], "{name}");
        assert!(a["arr_0"].equal(&expected_images), "{name}: arr_0");
        assert_eq!(Vec::<i64>::try_from(&a["arr_1"]).unwrap(), [3, 7]);
        assert_eq!(a["mu"].kind(), Kind::Double);
        assert_eq!(Vec::<f64>::try_from(&a["mu"]).unwrap(), [-1.0, -0.5, 0.0, 0.5, 1.0]);
        assert_eq!(a["sigma"].size(), [5, 5]);
        assert_eq!(f64::try_from(a["sigma"].sum(Kind::Double)).unwrap(), 10.0 + 25.0 * 0.25);
    }
    let ours = scratch("ours.npz");
    let a = read_npz(&fixture("adm_layout.npz")).unwrap();
    let arrays: Vec<(&str, &Tensor)> = a.iter().map(|(k, v)| (k.as_str(), v)).collect();
    write_npz(&ours, &arrays).unwrap();
    let b = read_npz(&ours).unwrap();
    for (k, v) in &a {
        assert!(v.equal(&b[k]), "{k}");
    }
    // np.savez's member bytes are ours exactly (header padding, dtype strings, data)
    let theirs = std::fs::read(fixture("adm_layout.npz")).unwrap();
    let written = std::fs::read(&ours).unwrap();
    let member = |zip: &[u8]| {
        zip.windows(6).position(|w| w == b"\x93NUMPY").map(|i| zip[i..i + 128].to_vec())
    };
    assert_eq!(member(&theirs), member(&written), "arr_0's .npy header and first bytes");
    // damage
    let truncated = scratch("truncated.npz");
    std::fs::write(&truncated, &theirs[..theirs.len() / 2]).unwrap();
    let msg = read_npz(&truncated).unwrap_err().to_string();
    assert!(msg.contains("truncated.npz") && msg.contains("not a zip archive"), "{msg}");
    let mut lying = theirs.clone();
    let at = lying.windows(5).position(|w| w == b"(2, 4").unwrap();
    lying[at + 1] = b'9'; // shape (9, 4, 4, 3): more elements than bytes
    let lying_path = scratch("lying.npz");
    std::fs::write(&lying_path, &lying).unwrap();
    let msg = read_npz(&lying_path).unwrap_err().to_string();
    assert!(
        msg.contains("lying.npz") && msg.contains("`arr_0.npy`") && msg.contains("(9, 4, 4, 3)"),
        "{msg}"
    );
}

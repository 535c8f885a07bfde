//! Fashion-MNIST through the IDX reader (failing, naming the asset, when the dataset is absent:
//! `cargo xtask test` installs it where it can) and IDX error handling on crafted files.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::io::Write;

use lpl_data::{DataError, FashionMnist, Split, read_idx};
use tch::Kind;

fn available() {
    lpl_test_assets::Asset::FashionMnist.require();
}

#[test]
fn splits_have_the_published_sizes_and_balanced_classes() {
    available();
    for (split, n) in [(Split::Train, 60_000), (Split::Test, 10_000)] {
        let data = FashionMnist::load(None, split).unwrap();
        assert_eq!(data.images.size(), vec![n, 1, 28, 28]);
        assert_eq!(data.images.kind(), Kind::Uint8);
        let counts = Vec::<i64>::try_from(data.labels.bincount(None::<tch::Tensor>, 10)).unwrap();
        assert!(counts.iter().all(|&c| c == n / 10), "{counts:?}");
    }
}

#[test]
fn pixels_equal_the_idx_contents() {
    available();
    let dir = FashionMnist::locate(None).unwrap();
    let raw = read_idx(&dir.join("t10k-images-idx3-ubyte.gz")).unwrap();
    let data = FashionMnist::load(None, Split::Test).unwrap();
    let index = 1234usize;
    let from_file: Vec<u8> = raw.data[index * 784..(index + 1) * 784].to_vec();
    let loaded = Vec::<u8>::try_from(data.images.get(index as i64).flatten(0, -1)).unwrap();
    assert_eq!(loaded, from_file);
    // the whole split's pixel sum equals the file's
    let file_sum: i64 = raw.data.iter().map(|&b| b as i64).sum();
    assert_eq!(i64::try_from(data.images.to_kind(Kind::Int64).sum(Kind::Int64)).unwrap(), file_sum);
    // first test label of Fashion-MNIST is 9 (ankle boot)
    assert_eq!(i64::try_from(data.labels.get(0)).unwrap(), 9);
}

#[test]
fn idx_errors_name_the_file() {
    let dir = std::env::temp_dir().join(format!("lpl-idx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let truncated = dir.join("truncated-idx3-ubyte");
    let mut f = std::fs::File::create(&truncated).unwrap();
    f.write_all(&[0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2, 1, 2, 3]).unwrap();
    drop(f);
    let err = read_idx(&truncated).unwrap_err();
    assert!(matches!(err, DataError::Format { .. }));
    let msg = err.to_string();
    assert!(msg.contains("truncated-idx3-ubyte") && msg.contains("need 8 bytes"), "{msg}");
    let bad = dir.join("bad");
    std::fs::write(&bad, b"hello world").unwrap();
    assert!(read_idx(&bad).unwrap_err().to_string().contains("bad magic"));
    let missing = FashionMnist::locate(Some(&dir)).unwrap_err().to_string();
    assert!(missing.contains("apt-get install dataset-fashion-mnist"), "{missing}");
    std::fs::remove_dir_all(dir).unwrap();
}

//! The hostile-file corpus (`tests/fixtures/hostile/`, written by
//! `tests/fixtures/make_hostile_corpus.py`): every reader of files that come from other
//! people (PyTorch zip state dicts, safetensors, IDX, PNG, latent-cache manifests and shards,
//! run configs, checkpoint metadata) meets pickles that import `os.system`, zips with `../`
//! entries, storages smaller than their tensors, memo and nesting bombs, lying headers,
//! decompression bombs, manifests pointing outside their directory, NaN and negative
//! counts. Each must give an error that names the file and says what is wrong (the
//! expected text is asserted): no panic, no hang (each case < 10 s), no allocation beyond
//! the corpus's size class (peak RSS grows < 256 MB over the whole corpus), nothing
//! executed (the pickles' marker file never appears) and nothing outside the given
//! directory opened. Valid controls beside them load, so each error is for its own reason.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lpl::data::{ImagePipeline, LatentCache, read_idx};
use lpl::trainer::run_checkpoint;
use lpl::trainer::run_config::RunConfig;

/// The file the pickles would create if anything ran them.
const MARKER: &str = "/tmp/lpl-hostile-pickle-executed";

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile").join(name)
}

/// Which reader a case goes through.
#[derive(Clone, Copy, Debug)]
enum Reader {
    Tensors,
    Idx,
    Image,
    Cache,
    Config,
    Checkpoint,
}

fn read(reader: Reader, path: &Path) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    match reader {
        Reader::Tensors => lpl::tensor_io::read_tensors(path).map(drop).map_err(|x| e(&x)),
        Reader::Idx => read_idx(path).map(drop).map_err(|x| e(&x)),
        Reader::Image => lpl::data::folder::decode_image(path, &ImagePipeline::keep_size(3))
            .map(drop)
            // decode_image reports the reason; its callers name the file (as the folder
            // reader's skip list does)
            .map_err(|x| format!("{}: {x}", path.display())),
        Reader::Cache => LatentCache::open(path).map(drop).map_err(|x| e(&x)),
        Reader::Config => RunConfig::from_file(path).map(drop).map_err(|x| e(&x)),
        Reader::Checkpoint => run_checkpoint::read_state(path).map(drop).map_err(|x| e(&x)),
    }
}

/// (file, reader, texts the error must contain besides the file's name).
const CASES: &[(&str, Reader, &[&str])] = &[
    // PyTorch zip state dicts
    ("pickle_os_system.pth", Reader::Tensors, &["`posix.system`", "nothing was executed"]),
    ("pickle_builtins_eval.pth", Reader::Tensors, &["`__builtin__.eval`", "refused"]),
    ("pickle_stack_global.pth", Reader::Tensors, &["`posix.system`", "refused"]),
    ("pickle_call_inside_dict.pth", Reader::Tensors, &["`posix.system`", "refused"]),
    ("zip_parent_entry.pth", Reader::Tensors, &["`../escape/", "climbs out of the archive"]),
    ("zip_absolute_entry.pth", Reader::Tensors, &["`/tmp/abs/", "is absolute"]),
    ("zip_truncated.pth", Reader::Tensors, &["neither a zip archive nor a legacy"]),
    ("not_a_zip.pth", Reader::Tensors, &["neither a zip archive nor a legacy"]),
    ("storage_smaller_than_tensor.pth", Reader::Tensors, &["`w`", "reaches past the end"]),
    ("legacy_truncated.pth", Reader::Tensors, &["storage", "runs past the end of the file"]),
    ("legacy_huge_storage.pth", Reader::Tensors, &["storage", "elements"]),
    ("legacy_bad_protocol.pth", Reader::Tensors, &["legacy protocol version"]),
    ("storage_stride_zero_bomb.pth", Reader::Tensors, &["`w`", "more elements than its storage"]),
    ("storage_offset_past_end.pth", Reader::Tensors, &["`w`", "reaches past the end"]),
    ("storage_negative_stride.pth", Reader::Tensors, &["`w`", "negative size, stride or offset"]),
    ("storage_missing_entry.pth", Reader::Tensors, &["missing zip entry archive/data/7"]),
    ("pickle_nesting_bomb.pth", Reader::Tensors, &["nest deeper than 64 levels"]),
    ("pickle_memo_bomb.pth", Reader::Tensors, &["memo copies more than"]),
    ("pickle_unknown_opcode.pth", Reader::Tensors, &["unsupported pickle opcode 0xff"]),
    ("pickle_not_a_dict.pth", Reader::Tensors, &["not a dict of tensors"]),
    ("pickle_truncated.pth", Reader::Tensors, &["truncated pickle"]),
    // safetensors
    ("header_absurd_size.safetensors", Reader::Tensors, &["header too large"]),
    ("header_longer_than_file.safetensors", Reader::Tensors, &["invalid header length"]),
    ("header_not_json.safetensors", Reader::Tensors, &["invalid JSON in header"]),
    ("offsets_overlapping.safetensors", Reader::Tensors, &["invalid offset for tensor `b`"]),
    (
        "offsets_out_of_range.safetensors",
        Reader::Tensors,
        &["incomplete metadata, file not fully covered"],
    ),
    (
        "shape_larger_than_data.safetensors",
        Reader::Tensors,
        &["invalid shape, data type, or offset for tensor"],
    ),
    ("digest_mismatch.safetensors", Reader::Tensors, &["damaged"]),
    // IDX
    ("huge_dims-idx3-ubyte", Reader::Idx, &["promise more data than the file can hold"]),
    ("zero_dim-idx3-ubyte", Reader::Idx, &["include 0: an empty array"]),
    ("lying_gzip-idx1-ubyte.gz", Reader::Idx, &["promise more data", "of gzip"]),
    ("trailing_data-idx1-ubyte", Reader::Idx, &["need 4 bytes of data, the file has more"]),
    ("not_gzip-idx1-ubyte.gz", Reader::Idx, &["corrupt gzip stream"]),
    ("no_dims-idx1-ubyte", Reader::Idx, &["no dimensions"]),
    ("float_type-idx1-ubyte", Reader::Idx, &["IDX type 0x0d is not unsigned byte"]),
    // PNG
    ("decompression_bomb.png", Reader::Image, &["limit"]),
    ("allocation_bomb.png", Reader::Image, &["limit"]),
    ("truncated.png", Reader::Image, &["unexpected end of file"]),
    ("not_an_image.png", Reader::Image, &["Invalid PNG signature"]),
    // latent caches
    ("cache_shard_outside", Reader::Cache, &["`../outside.safetensors` is not a file name inside"]),
    ("cache_shard_absolute", Reader::Cache, &["`/etc/passwd` is not a file name inside"]),
    ("cache_shape_mismatch", Reader::Cache, &["shard-00000.safetensors", "the manifest says"]),
    ("cache_negative_count", Reader::Cache, &["manifest.json", "has count -5"]),
    ("cache_count_overflow", Reader::Cache, &["manifest.json", "has count 4611686018427387904"]),
    ("cache_total_mismatch", Reader::Cache, &["shards hold 2 samples, the manifest says 7"]),
    ("cache_damaged_shard", Reader::Cache, &["shard-00000.safetensors", "damaged", "rebuild"]),
    ("cache_manifest_not_json", Reader::Cache, &["manifest.json", "line 1"]),
    ("cache_manifest_wrong_type", Reader::Cache, &["manifest.json", "invalid type"]),
    // run configs
    ("config_wrong_type.toml", Reader::Config, &["steps", "invalid type"]),
    ("config_nan_lr.toml", Reader::Config, &["optim.lr", "must be positive"]),
    ("config_inf_lr.toml", Reader::Config, &["optim.lr", "must be positive"]),
    ("config_negative_steps.toml", Reader::Config, &["steps", "invalid value"]),
    ("config_zero_batch.toml", Reader::Config, &["train.batch_size", "must be >= 1"]),
    ("config_huge_steps.toml", Reader::Config, &["steps", "line 18"]),
    ("config_unknown_field.toml", Reader::Config, &["unknown field `bacth_size`"]),
    ("config_nan_ema.toml", Reader::Config, &["ema.decay", "must be in [0, 1), got NaN"]),
    ("config_not_toml.toml", Reader::Config, &["line 1"]),
    ("config_not_utf8.toml", Reader::Config, &["UTF-8"]),
    // checkpoint metadata
    ("checkpoint_no_metadata.safetensors", Reader::Checkpoint, &["metadata `lpl.kind` missing"]),
    ("checkpoint_negative_step.safetensors", Reader::Checkpoint, &["`lpl.step` is not a number"]),
    ("checkpoint_bad_cursor.safetensors", Reader::Checkpoint, &["bad cursor `zero`"]),
    ("checkpoint_huge_step.safetensors", Reader::Checkpoint, &["`lpl.step` is not a number"]),
];

/// Peak resident set of this process (VmHWM), bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn every_hostile_file_gives_a_clear_error_and_nothing_else() {
    let _ = std::fs::remove_file(MARKER);
    let before = peak_rss();
    let mut failures = Vec::new();
    for &(name, reader, expected) in CASES {
        let path = corpus(name);
        assert!(path.exists(), "{} is missing: run make_hostile_corpus.py", path.display());
        let start = Instant::now();
        let outcome = std::panic::catch_unwind(|| read(reader, &path));
        let took = start.elapsed();
        let problem = match outcome {
            Err(_) => Some("panicked".to_string()),
            Ok(Ok(())) => Some("was accepted".to_string()),
            Ok(Err(msg)) => {
                let names_file = msg.contains(name);
                let missing: Vec<_> = expected.iter().filter(|t| !msg.contains(**t)).collect();
                (!names_file || !missing.is_empty())
                    .then(|| format!("error does not name the file or lacks {missing:?}: {msg}"))
            }
        };
        if took > Duration::from_secs(10) {
            failures.push(format!("{name}: took {took:?}"));
        }
        if let Some(p) = problem {
            failures.push(format!("{name} ({reader:?}): {p}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
    assert!(!Path::new(MARKER).exists(), "a pickle ran code: {MARKER} exists");
    let grown = peak_rss().saturating_sub(before);
    assert!(grown < 256 << 20, "peak RSS grew by {} MB over the corpus", grown >> 20);
}

#[test]
fn valid_controls_beside_the_hostile_files_load() {
    let tensors = lpl::tensor_io::read_tensors(&corpus("valid_state_dict.pth")).unwrap();
    let w = &tensors["w"];
    assert_eq!(w.size(), [2, 2]);
    assert_eq!(Vec::<f32>::try_from(w.flatten(0, -1)).unwrap(), [1.0, 2.0, 3.0, 4.0]);
    let cache = LatentCache::open(&corpus("cache_valid")).unwrap();
    assert_eq!(cache.manifest.count, 2);
    RunConfig::from_file(&corpus("config_valid.toml")).unwrap();
}

#[test]
fn every_corpus_file_has_a_case() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    let controls = ["valid_state_dict.pth", "cache_valid", "config_valid.toml"];
    let uncovered: Vec<_> = names
        .iter()
        .filter(|n| !controls.contains(&n.as_str()) && !CASES.iter().any(|c| c.0 == *n))
        .collect();
    assert!(uncovered.is_empty(), "corpus files without a case: {uncovered:?}");
}

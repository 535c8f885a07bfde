//! The readers under fuzz, each with its seed inputs and how one input is fed to it (written
//! to a file, since every reader takes a path, as users give them).

use std::path::{Path, PathBuf};

use lpl::data::{ImagePipeline, LatentCache, read_idx};
use lpl::trainer::run_checkpoint;
use lpl::trainer::run_config::RunConfig;

/// One fuzz target.
pub struct Target {
    /// Its name (`--target`).
    pub name: &'static str,
    /// The input's file name inside the work directory (the extension picks the reader).
    pub file: &'static str,
    /// Token-level mutations apply (text formats).
    pub text: bool,
    /// The seed inputs.
    pub seeds: fn(&Path) -> Vec<Vec<u8>>,
    /// Feeds the input at `path`; `dir` is the work directory.
    pub run: fn(&Path, &Path) -> Result<(), String>,
    /// Turns a mutated input into the bytes written (e.g. wraps a pickle into a zip).
    pub wrap: fn(Vec<u8>) -> Vec<u8>,
}

fn identity(v: Vec<u8>) -> Vec<u8> {
    v
}

/// Files under `dir` (not recursive) whose names satisfy `keep`.
fn files(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(&keep))
        .collect();
    paths.sort();
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn hostile(root: &Path) -> PathBuf {
    root.join("tests/fixtures/hostile")
}

/// The members of a stored zip archive, in order (walking local headers; enough for the
/// archives torch.save and the corpus script write).
pub fn zip_members(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let u16_at = |i: usize| bytes.get(i..i + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |i: usize| {
        bytes.get(i..i + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    while u32_at(at) == Some(0x0403_4b50) {
        let (Some(size), Some(name_len), Some(extra_len)) =
            (u32_at(at + 18), u16_at(at + 26), u16_at(at + 28))
        else {
            break;
        };
        let name_at = at + 30;
        let data_at = name_at + name_len + extra_len;
        let (Some(name), Some(data)) =
            (bytes.get(name_at..name_at + name_len), bytes.get(data_at..data_at + size))
        else {
            break;
        };
        out.push((String::from_utf8_lossy(name).to_string(), data.to_vec()));
        at = data_at + size;
    }
    out
}

/// A stored (uncompressed) zip archive of `members` (CRCs left 0: our reader does not check
/// them, so mutations of the contents reach the parser behind it).
pub fn zip(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in members {
        let offset = out.len() as u32;
        let header = |sig: u32, central: bool| {
            let mut h = Vec::new();
            h.extend(sig.to_le_bytes());
            if central {
                h.extend(20u16.to_le_bytes()); // made by
            }
            h.extend(20u16.to_le_bytes()); // version needed
            h.extend([0u8; 4]); // flags, method (stored)
            h.extend([0u8; 4]); // time, date
            h.extend([0u8; 4]); // crc
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((name.len() as u16).to_le_bytes());
            h.extend(0u16.to_le_bytes()); // extra
            if central {
                h.extend([0u8; 6]); // comment length, disk, internal attributes
                h.extend(0u32.to_le_bytes()); // external attributes
                h.extend(offset.to_le_bytes());
            }
            h.extend(name.as_bytes());
            h
        };
        out.extend(header(0x0403_4b50, false));
        out.extend(data);
        central.extend(header(0x0201_4b50, true));
    }
    let cd_offset = out.len() as u32;
    let cd_size = central.len() as u32;
    out.extend(central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend((members.len() as u16).to_le_bytes());
    out.extend((members.len() as u16).to_le_bytes());
    out.extend(cd_size.to_le_bytes());
    out.extend(cd_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

/// The storages the pickle target's archive carries beside each mutated `data.pkl`: those
/// of the valid seed state dict (keys `0`).
fn with_storages(pkl: Vec<u8>) -> Vec<u8> {
    let storage: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|f| f.to_le_bytes()).collect();
    zip(&[
        ("archive/data.pkl".to_string(), pkl),
        ("archive/version".to_string(), b"3\n".to_vec()),
        ("archive/data/0".to_string(), storage),
    ])
}

fn pth_seeds(root: &Path) -> Vec<Vec<u8>> {
    let mut seeds = files(&hostile(root), |n| n.ends_with(".pth"));
    seeds.extend(files(&root.join("crates/tensor-io/tests/fixtures"), |n| n.ends_with(".pth")));
    seeds
}

fn pickle_seeds(root: &Path) -> Vec<Vec<u8>> {
    pth_seeds(root)
        .iter()
        .flat_map(|z| zip_members(z))
        .filter(|(name, _)| name.ends_with("data.pkl"))
        .map(|(_, data)| data)
        .collect()
}

fn read_tensors(path: &Path, _: &Path) -> Result<(), String> {
    lpl::tensor_io::read_tensors(path).map(drop).map_err(|e| e.to_string())
}

fn safetensors_seeds(root: &Path) -> Vec<Vec<u8>> {
    let mut seeds = files(&hostile(root), |n| n.ends_with(".safetensors"));
    seeds.extend(files(&root.join("crates/tensor-io/tests/fixtures"), |n| {
        n.ends_with(".safetensors")
    }));
    seeds.extend(files(&hostile(root).join("cache_valid"), |n| n.ends_with(".safetensors")));
    seeds
}

fn checkpoint(path: &Path, _: &Path) -> Result<(), String> {
    run_checkpoint::read_state(path).map(drop).map_err(|e| e.to_string())?;
    run_checkpoint::load(path).map(drop).map_err(|e| e.to_string())
}

fn idx_seeds(root: &Path) -> Vec<Vec<u8>> {
    let mut seeds = files(&hostile(root), |n| n.contains("-idx"));
    let mut valid = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 3];
    valid.extend(0..18u8);
    seeds.push(valid);
    seeds
}

fn idx(path: &Path, _: &Path) -> Result<(), String> {
    read_idx(path).map(drop).map_err(|e| e.to_string())
}

fn png_seeds(root: &Path) -> Vec<Vec<u8>> {
    let mut seeds = files(&hostile(root), |n| n.ends_with(".png"));
    seeds.extend(
        files(&root.join("docs/ablation-default"), |n| n.ends_with(".png")).into_iter().take(2),
    );
    seeds
}

fn png(path: &Path, _: &Path) -> Result<(), String> {
    lpl::data::folder::decode_image(path, &ImagePipeline::keep_size(3)).map(drop)
}

fn manifest_seeds(root: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(hostile(root)) else { return Vec::new() };
    let mut dirs: Vec<PathBuf> =
        entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    dirs.iter().filter_map(|d| std::fs::read(d.join("manifest.json")).ok()).collect()
}

/// Opens the cache directory holding the mutated manifest beside the valid seed shard.
fn manifest(_: &Path, dir: &Path) -> Result<(), String> {
    LatentCache::open(dir).map(drop).map_err(|e| e.to_string())
}

fn config_seeds(root: &Path) -> Vec<Vec<u8>> {
    let mut seeds = files(&hostile(root), |n| n.ends_with(".toml"));
    seeds.extend(files(&root.join("configs"), |n| n.starts_with("train") || n.starts_with("ae")));
    seeds
}

fn run_config(path: &Path, _: &Path) -> Result<(), String> {
    RunConfig::from_file(path).map(drop).map_err(|e| e.to_string())
}

fn npz_seeds(root: &Path) -> Vec<Vec<u8>> {
    files(&root.join("crates/tensor-io/tests/fixtures"), |n| n.ends_with(".npz"))
}

fn npz(path: &Path, _: &Path) -> Result<(), String> {
    lpl::tensor_io::npz::read_npz(path).map(drop).map_err(|e| e.to_string())
}

fn ablation_seeds(root: &Path) -> Vec<Vec<u8>> {
    files(&root.join("configs"), |n| n.starts_with("ablate"))
}

fn ablation_config(path: &Path, _: &Path) -> Result<(), String> {
    lpl::ablation::AblationConfig::from_file(path).map(drop).map_err(|e| e.to_string())
}

/// Every target, in the order `cargo xtask fuzz` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "pth",
        file: "input.pth",
        text: false,
        seeds: pth_seeds,
        run: read_tensors,
        wrap: identity,
    },
    Target {
        name: "pickle",
        file: "input.pth",
        text: false,
        seeds: pickle_seeds,
        run: read_tensors,
        wrap: with_storages,
    },
    Target {
        name: "safetensors",
        file: "input.safetensors",
        text: false,
        seeds: safetensors_seeds,
        run: read_tensors,
        wrap: identity,
    },
    Target {
        name: "checkpoint",
        file: "input.safetensors",
        text: false,
        seeds: safetensors_seeds,
        run: checkpoint,
        wrap: identity,
    },
    Target {
        name: "npz",
        file: "input.npz",
        text: false,
        seeds: npz_seeds,
        run: npz,
        wrap: identity,
    },
    Target {
        name: "idx",
        file: "input-idx3-ubyte",
        text: false,
        seeds: idx_seeds,
        run: idx,
        wrap: identity,
    },
    Target {
        name: "png",
        file: "input.png",
        text: false,
        seeds: png_seeds,
        run: png,
        wrap: identity,
    },
    Target {
        name: "manifest",
        file: "manifest.json",
        text: true,
        seeds: manifest_seeds,
        run: manifest,
        wrap: identity,
    },
    Target {
        name: "run_config",
        file: "input.toml",
        text: true,
        seeds: config_seeds,
        run: run_config,
        wrap: identity,
    },
    Target {
        name: "ablation_config",
        file: "input.toml",
        text: true,
        seeds: ablation_seeds,
        run: ablation_config,
        wrap: identity,
    },
];

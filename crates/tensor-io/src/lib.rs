//! # lpl-tensor-io
//!
//! Tensor files, the same way everywhere in lpl:
//! - [`read_tensors`]: `.safetensors`, or a PyTorch `.pth` / `.pt` / `.bin` zip state dict
//!   read by [`pth`] without executing any pickle code;
//! - [`load_into`]: copy named tensors into a `VarStore`, checking every name and shape and
//!   naming the first offending key (with expected and found shapes) in the error;
//! - [`save`]: safetensors with string metadata (run config, codec, step), written
//!   atomically (temporary file, fsync, rename), so a crash never leaves half a checkpoint;
//! - [`read_metadata`]: the metadata of a safetensors file without reading its tensors.
//!
//! ```
//! use std::collections::BTreeMap;
//! use tch::{nn, Device, Kind, Tensor};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! let _w = vs.root().zeros("weight", &[2, 3]);
//! let path = std::env::temp_dir().join(format!("lpl-tensor-io-doc-{}.safetensors", std::process::id()));
//! let tensors = vec![("weight".to_string(), Tensor::ones([2, 3], (Kind::Float, Device::Cpu)))];
//! let meta = BTreeMap::from([("step".to_string(), "7".to_string())]);
//! lpl_tensor_io::save(&tensors, &meta, &path)?;
//! assert_eq!(lpl_tensor_io::read_metadata(&path)?["step"], "7");
//! lpl_tensor_io::load_file(&vs, &path)?;
//! assert_eq!(f64::try_from(vs.variables()["weight"].sum(Kind::Float))?, 6.0);
//! # std::fs::remove_file(&path)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod npz;
pub mod pth;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use tch::nn::VarStore;
use tch::{Kind, Tensor};

/// What can go wrong reading, checking or writing tensor files.
#[derive(Debug, thiserror::Error)]
pub enum TensorIoError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not in a format we read (or is damaged).
    #[error("{}: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A weights file lacks a tensor the model needs.
    #[error("{}: missing tensor `{key}` (expected shape {expected:?})", file.display())]
    MissingTensor {
        /// The weights file.
        file: PathBuf,
        /// The state-dict key.
        key: String,
        /// The shape the model needs.
        expected: Vec<i64>,
    },
    /// A tensor in a weights file has the wrong shape.
    #[error("{}: tensor `{key}` has shape {found:?}, expected {expected:?}", file.display())]
    ShapeMismatch {
        /// The weights file.
        file: PathBuf,
        /// The state-dict key.
        key: String,
        /// The shape the model needs.
        expected: Vec<i64>,
        /// The shape in the file.
        found: Vec<i64>,
    },
    /// A weights file holds a tensor the model does not have.
    #[error("{}: unexpected tensor `{key}` (not part of this model)", file.display())]
    UnexpectedTensor {
        /// The weights file.
        file: PathBuf,
        /// The state-dict key.
        key: String,
    },
    /// The file's tensors do not hash to the digest recorded when it was written: its bytes
    /// changed after writing (a flipped bit, a partial copy).
    #[error(
        "{}: damaged: its tensors' SHA-256 is {found}, the file recorded {expected} when it was written",
        path.display()
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// The recorded digest.
        expected: String,
        /// The digest of what is there now.
        found: String,
    },
    /// A libtorch error, as libtorch reported it.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// An operation that cannot proceed on these values (says what and why).
    #[error("{0}")]
    Compute(String),
}

/// `Result` with [`TensorIoError`].
pub type Result<T, E = TensorIoError> = std::result::Result<T, E>;

fn format_error(path: &Path, message: impl std::fmt::Display) -> TensorIoError {
    TensorIoError::Format { path: path.to_path_buf(), message: message.to_string() }
}

/// Named tensors of one file, as stored (the file's dtype), on the CPU.
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    if !path.is_file() {
        return Err(TensorIoError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    match path.extension().and_then(|e| e.to_str()).unwrap_or_default() {
        "safetensors" => {
            verify(path)?;
            Ok(Tensor::read_safetensors(path)
                .map_err(|e| format_error(path, e))?
                .into_iter()
                .collect())
        }
        "pth" | "pt" | "bin" | "ckpt" => pth::read(path),
        other => Err(format_error(
            path,
            format!("unknown weights format `.{other}` (expected .safetensors, .pth, .pt or .bin)"),
        )),
    }
}

/// The metadata key of the content digest [`save`] records.
pub const DIGEST_KEY: &str = "lpl.sha256";

/// SHA-256 over the tensors in name order: each name, its dtype, shape and bytes.
fn content_digest<'a>(
    tensors: impl IntoIterator<Item = (&'a str, String, Vec<usize>, &'a [u8])>,
) -> String {
    use sha2::Digest as _;
    let mut sorted: Vec<_> = tensors.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut hasher = sha2::Sha256::new();
    for (name, dtype, shape, data) in sorted {
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update(dtype.as_bytes());
        hasher.update((shape.len() as u64).to_le_bytes());
        for d in shape {
            hasher.update((d as u64).to_le_bytes());
        }
        hasher.update((data.len() as u64).to_le_bytes());
        hasher.update(data);
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a safetensors file against the content digest recorded in its metadata when
/// [`save`] wrote it (files without one, written elsewhere, pass unchecked). Reads the
/// whole file.
pub fn verify(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path)
        .map_err(|e| TensorIoError::Io { path: path.to_path_buf(), source: e })?;
    verify_bytes(path, &bytes)
}

/// [`verify`] of a file's bytes already in memory (or memory-mapped); `path` names it in
/// errors.
pub fn verify_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| format_error(path, e))?;
    let Some(expected) = meta.metadata().as_ref().and_then(|m| m.get(DIGEST_KEY)).cloned() else {
        return Ok(());
    };
    let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| format_error(path, e))?;
    let tensors = file.tensors();
    let found = content_digest(tensors.iter().map(|(name, view)| {
        (name.as_str(), format!("{:?}", view.dtype()), view.shape().to_vec(), view.data())
    }));
    if found != expected {
        return Err(TensorIoError::Damaged { path: path.to_path_buf(), expected, found });
    }
    Ok(())
}

/// Copies `tensors` into the variables of `vs`, converting each to the variable's dtype and
/// device. Every variable must be present with its exact shape, and every tensor must belong
/// to a variable; the first offender (in key order) is reported, naming `file`.
pub fn load_into(vs: &VarStore, tensors: &BTreeMap<String, Tensor>, file: &Path) -> Result<()> {
    let variables: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let file = file.to_path_buf();
    for (key, var) in &variables {
        let src = tensors.get(key).ok_or_else(|| TensorIoError::MissingTensor {
            file: file.clone(),
            key: key.clone(),
            expected: var.size(),
        })?;
        if src.size() != var.size() {
            return Err(TensorIoError::ShapeMismatch {
                file: file.clone(),
                key: key.clone(),
                expected: var.size(),
                found: src.size(),
            });
        }
    }
    if let Some(key) = tensors.keys().find(|k| !variables.contains_key(*k)) {
        return Err(TensorIoError::UnexpectedTensor { file, key: key.clone() });
    }
    tch::no_grad(|| -> Result<()> {
        for (key, var) in &variables {
            let mut var = var.shallow_clone();
            var.f_copy_(&tensors[key].f_to_kind(var.kind())?.f_to_device(var.device())?)?;
        }
        Ok(())
    })
}

/// [`read_tensors`] then [`load_into`].
pub fn load_file(vs: &VarStore, path: &Path) -> Result<()> {
    let tensors = read_tensors(path)?;
    load_into(vs, &tensors, path)
}

/// A tensor's bytes in safetensors' layout (contiguous, little endian, on the CPU).
struct Bytes {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &Bytes {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn to_bytes(name: &str, t: &Tensor, path: &Path) -> Result<Bytes> {
    use safetensors::Dtype;
    let (dtype, size) = match t.kind() {
        Kind::Float => (Dtype::F32, 4),
        Kind::Half => (Dtype::F16, 2),
        Kind::BFloat16 => (Dtype::BF16, 2),
        Kind::Double => (Dtype::F64, 8),
        Kind::Int64 => (Dtype::I64, 8),
        Kind::Int => (Dtype::I32, 4),
        Kind::Int16 => (Dtype::I16, 2),
        Kind::Int8 => (Dtype::I8, 1),
        Kind::Uint8 => (Dtype::U8, 1),
        Kind::Bool => (Dtype::BOOL, 1),
        other => return Err(format_error(path, format!("`{name}`: cannot store dtype {other:?}"))),
    };
    let t = t.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
    let numel = t.numel();
    let mut data = vec![0u8; numel * size];
    t.f_copy_data_u8(&mut data, numel)?;
    Ok(Bytes { dtype, shape: t.size().iter().map(|&d| d as usize).collect(), data })
}

/// Writes `tensors` with string `metadata` as safetensors at `path`, atomically: the bytes
/// go to `<path>.tmp-<pid>`, are fsynced, then renamed over `path`. The metadata also
/// records the SHA-256 of the tensors ([`DIGEST_KEY`]), which [`read_tensors`] checks.
pub fn save(
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
    path: &Path,
) -> Result<()> {
    let bytes: Vec<(String, Bytes)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), to_bytes(n, t, path)?)))
        .collect::<Result<_>>()?;
    let views: Vec<(&str, &Bytes)> = bytes.iter().map(|(n, b)| (n.as_str(), b)).collect();
    let mut meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    let digest =
        content_digest(bytes.iter().map(|(n, b)| {
            (n.as_str(), format!("{:?}", b.dtype), b.shape.clone(), b.data.as_slice())
        }));
    meta.insert(DIGEST_KEY.to_string(), digest);
    let buffer = safetensors::serialize(views, Some(meta)).map_err(|e| format_error(path, e))?;
    write_atomically(path, &buffer)
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| TensorIoError::Io { path: path.to_path_buf(), source };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let tmp = path.with_file_name(format!(
        "{}.tmp-{}",
        path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::File::open(parent)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Removes the temporary files [`write_atomically`] left in `dir` when a process was killed
/// mid-write (`NAME.tmp-PID` whose PID is not a running process; on systems without
/// `/proc`, any PID but ours). Returns the files removed. The complete files beside them
/// are untouched: the rename that publishes a file never happened for these.
pub fn remove_stale_temporaries(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let proc_fs = Path::new("/proc/self").exists();
    let mut removed = Vec::new();
    for path in entries.flatten().map(|e| e.path()) {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let Some((_, pid)) = name.rsplit_once(".tmp-") else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        let alive = if proc_fs {
            Path::new("/proc").join(pid.to_string()).exists()
        } else {
            pid == std::process::id()
        };
        if !alive && path.is_file() && std::fs::remove_file(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

/// A fingerprint of named tensors: FNV-1a (64 bit) over their sorted names, dtypes, shapes
/// and bytes, as 16 hex digits. Equal weights give equal fingerprints on any device.
pub fn fingerprint(tensors: &[(String, Tensor)]) -> Result<String> {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash = (hash ^ *b as u64).wrapping_mul(PRIME);
        }
    };
    let mut sorted: Vec<&(String, Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in sorted {
        feed(name.as_bytes());
        feed(format!("{:?}{:?}", t.kind(), t.size()).as_bytes());
        let bytes = to_bytes(name, t, Path::new("<fingerprint>"))?;
        feed(&bytes.data);
    }
    Ok(format!("{hash:016x}"))
}

/// The string metadata of a safetensors file (empty when it has none).
pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    let io = |source| TensorIoError::Io { path: path.to_path_buf(), source };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut len = [0u8; 8];
    std::io::Read::read_exact(&mut file, &mut len).map_err(io)?;
    let n = u64::from_le_bytes(len) as usize;
    if n > 100_000_000 {
        return Err(format_error(path, format!("header of {n} bytes: not a safetensors file")));
    }
    let mut header = vec![0u8; n];
    std::io::Read::read_exact(&mut file, &mut header).map_err(io)?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| format_error(path, format!("bad header: {e}")))?;
    let Some(meta) = header.get("__metadata__").and_then(|m| m.as_object()) else {
        return Ok(BTreeMap::new());
    };
    meta.iter()
        .map(|(k, v)| match v.as_str() {
            Some(s) => Ok((k.clone(), s.to_string())),
            None => Err(format_error(path, format!("metadata `{k}` is not a string"))),
        })
        .collect()
}

//! IDX files (LeCun's MNIST format, also Fashion-MNIST), raw or gzipped.
//!
//! Layout: two zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions,
//! then each dimension as a big-endian u32, then the data in row-major order.

use std::io::Read;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::error::{DataError, Result};

/// An IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions, e.g. `[60000, 28, 28]`.
    pub dims: Vec<usize>,
    /// The values, row-major, `dims.iter().product()` of them.
    pub data: Vec<u8>,
}

impl IdxArray {
    /// The array as a u8 tensor of shape `dims`.
    pub fn to_tensor(&self) -> Result<Tensor> {
        let dims: Vec<i64> = self.dims.iter().map(|&d| d as i64).collect();
        Ok(Tensor::f_from_data_size(&self.data, &dims, Kind::Uint8)?)
    }
}

fn format(path: &Path, message: impl Into<String>) -> DataError {
    DataError::Format { path: path.to_path_buf(), message: message.into() }
}

/// Largest expansion factor of a deflate stream (each 258-byte match costs at least 2 bits):
/// a gzipped IDX file whose header promises more data than this times its size is lying.
const DEFLATE_MAX_RATIO: u64 = 1032;

/// Reads an IDX file of unsigned bytes; gzip is detected from the content, not the name.
///
/// Hostile files fail with an error naming the file, before anything large is allocated: a
/// zero or overflowing dimension, a header promising more data than the file holds (or, for
/// gzip, more than its compressed size can expand to), trailing or missing data.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let io = |source| DataError::Io { path: path.to_path_buf(), source };
    let raw = std::fs::read(path).map_err(io)?;
    let gzipped = raw.starts_with(&[0x1f, 0x8b]);
    let mut reader: Box<dyn Read> =
        if gzipped { Box::new(flate2::read::GzDecoder::new(&raw[..])) } else { Box::new(&raw[..]) };
    let corrupt = |e: std::io::Error| format(path, format!("corrupt gzip stream: {e}"));
    let mut magic = [0u8; 4];
    if let Err(e) = reader.read_exact(&mut magic) {
        return Err(if e.kind() == std::io::ErrorKind::UnexpectedEof {
            format(path, "not an IDX file (bad magic number)")
        } else {
            corrupt(e)
        });
    }
    if magic[0] != 0 || magic[1] != 0 {
        return Err(format(path, "not an IDX file (bad magic number)"));
    }
    if magic[2] != 0x08 {
        return Err(format(
            path,
            format!("IDX type 0x{:02x} is not unsigned byte (0x08)", magic[2]),
        ));
    }
    let ndim = magic[3] as usize;
    if ndim == 0 {
        return Err(format(path, "IDX header has no dimensions"));
    }
    let mut header = vec![0u8; 4 * ndim];
    reader.read_exact(&mut header).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => format(path, "truncated IDX header"),
        _ => corrupt(e),
    })?;
    let dims: Vec<usize> = header
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    if dims.contains(&0) {
        return Err(format(path, format!("IDX dimensions {dims:?} include 0: an empty array")));
    }
    // a raw file's shortfall is reported below, with the sizes; a gzipped one's is refused
    // here, before decompressing what its header promises
    let available =
        if gzipped { (raw.len() as u64).saturating_mul(DEFLATE_MAX_RATIO) } else { u64::MAX };
    let expected = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
    let Some(expected) = expected.filter(|&n| n <= available) else {
        return Err(format(
            path,
            format!(
                "IDX dimensions {dims:?} promise more data than the file can hold ({} bytes{})",
                raw.len(),
                if gzipped { " of gzip" } else { "" }
            ),
        ));
    };
    let mut data = Vec::new();
    reader.take(expected + 1).read_to_end(&mut data).map_err(corrupt)?;
    let found = data.len() as u64;
    if found > expected {
        return Err(format(
            path,
            format!("IDX dimensions {dims:?} need {expected} bytes of data, the file has more"),
        ));
    }
    if found < expected {
        return Err(format(
            path,
            format!(
                "IDX dimensions {dims:?} need {expected} bytes of data, the file has {found} (truncated?)"
            ),
        ));
    }
    Ok(IdxArray { dims, data })
}

/// Which part of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// The training split.
    Train,
    /// The test split.
    Test,
}

/// Images with class labels, all in memory.
#[derive(Debug)]
pub struct LabeledImages {
    /// `(N, C, H, W)` u8.
    pub images: Tensor,
    /// `(N,)` i64 in `[0, num_classes)`.
    pub labels: Tensor,
    /// Number of classes.
    pub num_classes: i64,
}

/// Where the Debian package `dataset-fashion-mnist` installs the four IDX files.
pub const FASHION_MNIST_SYSTEM_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Fashion-MNIST (Xiao et al. 2017): 60,000 + 10,000 grey 28x28 images of 10 classes.
pub struct FashionMnist;

impl FashionMnist {
    /// The directory with the IDX files: `dir` if given, else the system location.
    pub fn locate(dir: Option<&Path>) -> Result<PathBuf> {
        let dir = dir.map_or_else(|| PathBuf::from(FASHION_MNIST_SYSTEM_DIR), Path::to_path_buf);
        let probe = idx_file(&dir, "train-images-idx3-ubyte");
        if probe.is_some() {
            return Ok(dir);
        }
        Err(DataError::NotFound(format!(
            "Fashion-MNIST not found in {}: install the Debian package (apt-get install dataset-fashion-mnist) \
             or download train/t10k images and labels (*-idx?-ubyte.gz) from the Fashion-MNIST repository \
             into a directory and pass it",
            dir.display()
        )))
    }

    /// The four IDX files (train and test images and labels), for provenance records.
    pub fn files(dir: Option<&Path>) -> Result<Vec<PathBuf>> {
        let dir = Self::locate(dir)?;
        [
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ]
        .into_iter()
        .map(|stem| {
            idx_file(&dir, stem)
                .ok_or_else(|| DataError::NotFound(format!("{}: no {stem}[.gz]", dir.display())))
        })
        .collect()
    }

    /// Loads one split: images `(N, 1, 28, 28)` u8, labels `(N,)` i64.
    pub fn load(dir: Option<&Path>, split: Split) -> Result<LabeledImages> {
        let dir = Self::locate(dir)?;
        let prefix = match split {
            Split::Train => "train",
            Split::Test => "t10k",
        };
        let find = |stem: String| {
            idx_file(&dir, &stem)
                .ok_or_else(|| DataError::NotFound(format!("{}: no {stem}[.gz]", dir.display())))
        };
        let images_path = find(format!("{prefix}-images-idx3-ubyte"))?;
        let labels_path = find(format!("{prefix}-labels-idx1-ubyte"))?;
        let images = read_idx(&images_path)?;
        let labels = read_idx(&labels_path)?;
        if images.dims.len() != 3 || labels.dims.len() != 1 || images.dims[0] != labels.dims[0] {
            return Err(format(
                &labels_path,
                format!("{:?} labels for images of dimensions {:?}", labels.dims, images.dims),
            ));
        }
        if let Some(bad) = labels.data.iter().find(|&&l| l >= 10) {
            return Err(format(&labels_path, format!("label {bad} outside 0..10")));
        }
        Ok(LabeledImages {
            images: images.to_tensor()?.f_unsqueeze(1)?,
            labels: labels.to_tensor()?.f_to_kind(Kind::Int64)?,
            num_classes: 10,
        })
    }
}

fn idx_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.gz"), stem.to_string()].into_iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

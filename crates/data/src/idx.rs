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

/// Reads an IDX file of unsigned bytes; gzip is detected from the content, not the name.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let io = |source| DataError::Io { path: path.to_path_buf(), source };
    let raw = std::fs::read(path).map_err(io)?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| format(path, format!("corrupt gzip stream: {e}")))?;
        out
    } else {
        raw
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(format(path, "not an IDX file (bad magic number)"));
    }
    if bytes[2] != 0x08 {
        return Err(format(
            path,
            format!("IDX type 0x{:02x} is not unsigned byte (0x08)", bytes[2]),
        ));
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(format(path, "truncated IDX header"));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| {
            u32::from_be_bytes([
                bytes[4 + 4 * i],
                bytes[5 + 4 * i],
                bytes[6 + 4 * i],
                bytes[7 + 4 * i],
            ]) as usize
        })
        .collect();
    let expected: usize = dims.iter().product();
    let found = bytes.len() - header;
    if found != expected {
        return Err(format(
            path,
            format!(
                "IDX dimensions {dims:?} need {expected} bytes of data, the file has {found} (truncated?)"
            ),
        ));
    }
    Ok(IdxArray { dims, data: bytes[header..].to_vec() })
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

//! Image folders, flat or one sub-folder per class: reading (PNG, JPEG, WebP; alpha
//! composited onto white; sorted by name; decoded in parallel and preprocessed by an
//! [`ImagePipeline`]; undecodable files skipped and counted up to a tolerance) and writing
//! 8-bit PNGs named by index (`000000.png`, ...).

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use tch::{Kind, Tensor};

use crate::error::{DataError, Result};
use crate::preprocess::{ImagePipeline, Pixels, ResizeMode};

const EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];

/// Images read from a folder.
#[derive(Debug)]
pub struct FolderImages {
    /// `(N, C, H, W)` u8.
    pub images: Tensor,
    /// `(N,)` i64 class indices when the folder has one sub-folder per class.
    pub labels: Option<Tensor>,
    /// Class names (sub-folder names, sorted), index = label; empty for a flat folder.
    pub classes: Vec<String>,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
    /// Files that could not be decoded, with the reason (skipped, not fatal).
    pub skipped: Vec<(PathBuf, String)>,
}

/// How to read a folder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadOptions {
    /// Channels, size and resizing.
    pub pipeline: ImagePipeline,
    /// Largest tolerated fraction of undecodable files; above it reading fails (the error
    /// lists the first of them). Default 0.01.
    pub max_skipped_fraction: f64,
}

impl ReadOptions {
    /// `channels` channels at the decoded size, at most 1% undecodable files.
    pub fn new(channels: u32) -> Self {
        Self { pipeline: ImagePipeline::keep_size(channels), max_skipped_fraction: 0.01 }
    }

    /// Resized to `size x size` with `mode`.
    pub fn resized(mut self, size: u32, mode: ResizeMode) -> Self {
        self.pipeline.size = Some(size);
        self.pipeline.resize = mode;
        self
    }

    /// With another skip tolerance.
    pub fn max_skipped(mut self, fraction: f64) -> Self {
        self.max_skipped_fraction = fraction;
        self
    }
}

fn is_image(p: &Path) -> bool {
    p.is_file()
        && p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|source| DataError::Io { path: dir.to_path_buf(), source })?;
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    Ok(paths)
}

/// The image files of `dir` (by extension), sorted by name.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(sorted_entries(dir)?.into_iter().filter(|p| is_image(p)).collect())
}

/// The files of an image folder with their labels: when `dir` has sub-folders holding
/// images, each such sub-folder is a class (sorted by name, torchvision's `ImageFolder`
/// convention) and files directly in `dir` are ignored; otherwise the folder is flat and
/// unlabelled.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFolder {
    /// Files in reading order with their class index (`None` for a flat folder).
    pub entries: Vec<(PathBuf, Option<i64>)>,
    /// Class names, index = label.
    pub classes: Vec<String>,
}

impl ImageFolder {
    /// Lists `dir`.
    pub fn scan(dir: &Path) -> Result<Self> {
        let mut entries = Vec::new();
        let mut classes = Vec::new();
        for sub in sorted_entries(dir)?.into_iter().filter(|p| p.is_dir()) {
            let files = image_files(&sub)?;
            if files.is_empty() {
                continue;
            }
            let label = classes.len() as i64;
            classes
                .push(sub.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default());
            entries.extend(files.into_iter().map(|f| (f, Some(label))));
        }
        if classes.is_empty() {
            entries = image_files(dir)?.into_iter().map(|f| (f, None)).collect();
        }
        if entries.is_empty() {
            return Err(DataError::NotFound(format!(
                "{} holds no image (.png, .jpg, .jpeg, .webp), directly or in class sub-folders",
                dir.display()
            )));
        }
        Ok(Self { entries, classes })
    }
}

/// Largest width or height of an image we decode (a decompression bomb declares far more).
pub const MAX_IMAGE_SIDE: u32 = 16_384;

/// Most bytes the decoder may allocate for one image.
pub const MAX_IMAGE_ALLOC: u64 = 512 << 20;

/// Decodes one image file through `pipeline`. The format is guessed from the content; an
/// image wider or taller than [`MAX_IMAGE_SIDE`] or needing more than [`MAX_IMAGE_ALLOC`] bytes
/// is refused from its header, before its pixels are decoded.
pub fn decode_image(path: &Path, pipeline: &ImagePipeline) -> std::result::Result<Pixels, String> {
    let mut reader = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| e.to_string())?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_ALLOC);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| e.to_string())?;
    pipeline.apply(&img.to_rgba8()).map_err(|e| e.to_string())
}

/// What [`decode_files`] returns.
#[derive(Debug)]
pub struct Decoded {
    /// `(N, C, H, W)` u8.
    pub images: Tensor,
    /// For each image, its index into the files given.
    pub kept: Vec<usize>,
    /// Undecodable files with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Decodes `files` on the rayon pool (order kept) through `options.pipeline`. Undecodable
/// files are skipped and listed; more than `options.max_skipped_fraction` of them is an
/// error; images of different sizes (without resizing) are an error naming the first that
/// differs. Returns `(N, C, H, W)` u8 and the index into `files` of each image kept.
pub fn decode_files(files: &[PathBuf], options: &ReadOptions) -> Result<Decoded> {
    let decoded: Vec<std::result::Result<Pixels, String>> =
        files.par_iter().map(|p| decode_image(p, &options.pipeline)).collect();
    let mut kept = Vec::new();
    let mut skipped = Vec::new();
    let mut data = Vec::new();
    let mut size: Option<(u32, u32)> = None;
    for (i, result) in decoded.into_iter().enumerate() {
        match result {
            Ok(px) => {
                if let Some((w0, h0)) = size
                    && (px.width, px.height) != (w0, h0)
                {
                    return Err(DataError::Format {
                        path: files[i].clone(),
                        message: format!(
                            "image is {}x{}, the first image is {w0}x{h0} (set a size to resize)",
                            px.width, px.height
                        ),
                    });
                }
                size = Some((px.width, px.height));
                data.extend(px.data);
                kept.push(i);
            }
            Err(e) => skipped.push((files[i].clone(), e)),
        }
    }
    if !skipped.is_empty() {
        let fraction = skipped.len() as f64 / files.len().max(1) as f64;
        tracing::warn!(
            "skipped {} of {} image files (first: {})",
            skipped.len(),
            files.len(),
            skipped[0].0.display()
        );
        if fraction > options.max_skipped_fraction {
            return Err(DataError::Invalid(format!(
                "{} of {} image files could not be decoded ({:.1}%, more than the {:.1}% allowed); first: {}: {}",
                skipped.len(),
                files.len(),
                100.0 * fraction,
                100.0 * options.max_skipped_fraction,
                skipped[0].0.display(),
                skipped[0].1
            )));
        }
    }
    let Some((w, h)) = size else {
        return Err(DataError::NotFound(format!(
            "none of the {} image files is readable",
            files.len()
        )));
    };
    let images = Tensor::f_from_data_size(
        &data,
        &[kept.len() as i64, h as i64, w as i64, options.pipeline.channels as i64],
        Kind::Uint8,
    )?
    .f_permute([0, 3, 1, 2])?
    .f_contiguous()?;
    Ok(Decoded { images, kept, skipped })
}

/// Reads an image folder (flat or one sub-folder per class, see [`ImageFolder`]).
pub fn read_folder(dir: &Path, options: &ReadOptions) -> Result<FolderImages> {
    let folder = ImageFolder::scan(dir)?;
    let files: Vec<PathBuf> = folder.entries.iter().map(|(p, _)| p.clone()).collect();
    let Decoded { images, kept, skipped } = decode_files(&files, options)?;
    let labels = if folder.classes.is_empty() {
        None
    } else {
        let l: Vec<i64> = kept.iter().map(|&i| folder.entries[i].1.unwrap_or(0)).collect();
        Some(Tensor::from_slice(&l))
    };
    Ok(FolderImages {
        images,
        labels,
        classes: folder.classes,
        files: kept.iter().map(|&i| files[i].clone()).collect(),
        skipped,
    })
}

/// Writes one `(C, H, W)` image in `[0, 1]` (clamped) as an 8-bit PNG at `path`.
pub fn write_png(image: &Tensor, path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = dir.join(format!(".partial-{name}"));
    write_pngs_named(&image.unsqueeze(0), std::slice::from_ref(&tmp))?;
    std::fs::rename(&tmp, path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })
}

/// Writes `(N, C, H, W)` images in `[0, 1]` (any float dtype; clamped) as 8-bit PNGs
/// `<dir>/<start + i>.png` with six-digit names.
pub fn write_pngs(images: &Tensor, dir: &Path, start: usize) -> Result<Vec<PathBuf>> {
    let n = images.size()[0] as usize;
    let paths: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("{:06}.png", start + i))).collect();
    write_pngs_named(images, &paths)?;
    Ok(paths)
}

fn write_pngs_named(images: &Tensor, paths: &[PathBuf]) -> Result<()> {
    for dir in paths.iter().filter_map(|p| p.parent()) {
        std::fs::create_dir_all(dir)
            .map_err(|source| DataError::Io { path: dir.to_path_buf(), source })?;
    }
    let (n, c, h, w) = images.size4()?;
    let bytes = (images.f_to_kind(Kind::Float)?.f_clamp(0.0, 1.0)? * 255.0)
        .f_round()?
        .f_to_kind(Kind::Uint8)?
        .f_permute([0, 2, 3, 1])?
        .f_contiguous()?
        .f_to_device(tch::Device::Cpu)?;
    let flat = Vec::<u8>::try_from(bytes.f_flatten(0, -1)?)?;
    let per = (h * w * c) as usize;
    for (i, path) in paths.iter().enumerate().take(n as usize) {
        let path = path.clone();
        let pixels = flat[i * per..(i + 1) * per].to_vec();
        let result = match c {
            1 => image::GrayImage::from_raw(w as u32, h as u32, pixels).map(|img| img.save(&path)),
            3 => image::RgbImage::from_raw(w as u32, h as u32, pixels).map(|img| img.save(&path)),
            _ => return Err(DataError::Invalid(format!("cannot write {c}-channel images as PNG"))),
        };
        match result {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                return Err(DataError::Io { path, source: std::io::Error::other(e.to_string()) });
            }
            None => return Err(DataError::Invalid("image buffer size mismatch".to_string())),
        }
    }
    Ok(())
}

//! Flat image folders: reading (PNG, JPEG, WebP; alpha composited onto white; sorted by file
//! name) and writing 8-bit PNGs named by index (`000000.png`, ...).

use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::error::{DataError, Result};

const EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];

/// Images read from a folder.
#[derive(Debug)]
pub struct FolderImages {
    /// `(N, C, H, W)` u8.
    pub images: Tensor,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
    /// Files that could not be decoded, with the reason (skipped, not fatal).
    pub skipped: Vec<(PathBuf, String)>,
}

/// The image files of `dir` (by extension), sorted by name.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|source| DataError::Io { path: dir.to_path_buf(), source })?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Decodes one image to `channels` (1: luma, 3: RGB) 8-bit values, alpha composited onto
/// white; returns `(height, width, row-major HWC bytes)`.
pub fn decode_image(
    path: &Path,
    channels: i64,
) -> std::result::Result<(u32, u32, Vec<u8>), String> {
    let img = image::open(path).map_err(|e| e.to_string())?;
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = Vec::with_capacity((w * h) as usize * channels as usize);
    for p in rgba.pixels() {
        let a = p[3] as f32 / 255.0;
        let over_white = |c: u8| (c as f32 * a + 255.0 * (1.0 - a)).round() as u8;
        let (r, g, b) = (over_white(p[0]), over_white(p[1]), over_white(p[2]));
        if channels == 1 {
            out.push((0.299 * r as f32 + 0.587 * g as f32 + 0.114 * b as f32).round() as u8);
        } else {
            out.extend([r, g, b]);
        }
    }
    Ok((h, w, out))
}

/// Reads every image of `dir` as `channels`-channel u8; all must have the size of the first
/// readable one (an error names the first that differs); undecodable files are skipped and
/// listed.
pub fn read_folder(dir: &Path, channels: i64) -> Result<FolderImages> {
    if channels != 1 && channels != 3 {
        return Err(DataError::Invalid(format!(
            "images must have 1 or 3 channels, not {channels}"
        )));
    }
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    let mut data = Vec::new();
    let mut size: Option<(u32, u32)> = None;
    for path in image_files(dir)? {
        match decode_image(&path, channels) {
            Ok((h, w, bytes)) => {
                if let Some((h0, w0)) = size
                    && (h, w) != (h0, w0)
                {
                    return Err(DataError::Format {
                        path,
                        message: format!("image is {w}x{h}, the folder's first image is {w0}x{h0}"),
                    });
                }
                size = Some((h, w));
                data.extend(bytes);
                files.push(path);
            }
            Err(e) => skipped.push((path, e)),
        }
    }
    let Some((h, w)) = size else {
        return Err(DataError::NotFound(format!("{} holds no readable image", dir.display())));
    };
    let n = files.len() as i64;
    let images = Tensor::f_from_data_size(&data, &[n, h as i64, w as i64, channels], Kind::Uint8)?
        .f_permute([0, 3, 1, 2])?
        .f_contiguous()?;
    Ok(FolderImages { images, files, skipped })
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

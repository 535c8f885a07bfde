//! Preprocessing: decoded pixels ([`Pixels`], interleaved 8-bit) are composited, resized and
//! cropped before they become tensors; in-memory image tensors are padded, flipped and
//! brought to `[0, 1]` (the [`lpl_autoencoder::LatentCodec`] then maps that to the
//! autoencoder's input range).
//!
//! Resampling follows the conventions people compare against: `area` is PIL's `BOX` /
//! OpenCV's `INTER_AREA` (each output pixel averages the input rectangle it covers,
//! fractional edges weighted), `bicubic` is Keys' cubic with a = -0.5 (PIL's `BICUBIC`,
//! antialiased when shrinking), and [`ResizeMode::AdmCenterCrop`] is guided-diffusion's
//! `center_crop_arr` used by ADM, DiT and the LPL paper for ImageNet.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{DataError, Result};

/// An 8-bit image, row-major, channels interleaved (`height * width * channels` bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pixels {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// 1 (grey) or 3 (RGB).
    pub channels: u32,
    /// `height * width * channels` values.
    pub data: Vec<u8>,
}

/// How decoded images are brought to `size x size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    /// ADM's center crop: halve with a box filter while the short side is at least twice the
    /// target, resize bicubically so the short side equals it, crop the center.
    #[default]
    AdmCenterCrop,
    /// Resize the whole image to the square by area averaging (aspect ratio not kept).
    Area,
    /// Resize the whole image to the square bicubically (aspect ratio not kept).
    Bicubic,
}

/// What happens to each image between decoding and the tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePipeline {
    /// 1 (luma, ITU-R 601) or 3 (RGB); alpha is always composited onto white.
    pub channels: u32,
    /// Square output size; `None` keeps the decoded size (all images must then agree).
    pub size: Option<u32>,
    /// How to reach `size`.
    #[serde(default)]
    pub resize: ResizeMode,
}

impl ImagePipeline {
    /// Keep the size, `channels` channels.
    pub fn keep_size(channels: u32) -> Self {
        Self { channels, size: None, resize: ResizeMode::AdmCenterCrop }
    }

    /// Decoded RGBA pixels composited onto white, converted to the channel count, resized.
    pub fn apply(&self, rgba: &image::RgbaImage) -> Result<Pixels> {
        if self.channels != 1 && self.channels != 3 {
            return Err(DataError::Invalid(format!(
                "images must have 1 or 3 channels, not {}",
                self.channels
            )));
        }
        let pixels = over_white(rgba, self.channels);
        match self.size {
            None => Ok(pixels),
            Some(0) => Err(DataError::Invalid("image size must be >= 1".into())),
            Some(size) => Ok(match self.resize {
                ResizeMode::AdmCenterCrop => adm_center_crop(&pixels, size),
                ResizeMode::Area => resize_area(&pixels, size, size),
                ResizeMode::Bicubic => resize_bicubic(&pixels, size, size),
            }),
        }
    }
}

/// Composites RGBA onto white and converts to 1 (luma `0.299 R + 0.587 G + 0.114 B`) or 3
/// channels.
pub fn over_white(rgba: &image::RgbaImage, channels: u32) -> Pixels {
    let (width, height) = rgba.dimensions();
    let mut data = Vec::with_capacity((width * height * channels) as usize);
    for p in rgba.pixels() {
        let a = p[3] as f32 / 255.0;
        let blend = |c: u8| c as f32 * a + 255.0 * (1.0 - a);
        let (r, g, b) = (blend(p[0]), blend(p[1]), blend(p[2]));
        if channels == 1 {
            data.push((0.299 * r + 0.587 * g + 0.114 * b).round() as u8);
        } else {
            data.extend([r.round() as u8, g.round() as u8, b.round() as u8]);
        }
    }
    Pixels { width, height, channels, data }
}

/// Separable resampling: `weights[o]` = (first input index, weights) for output `o`.
type Taps = Vec<(usize, Vec<f32>)>;

/// Area (box) weights from `n_in` to `n_out` samples: each output covers `n_in / n_out`
/// inputs, partially covered inputs weighted by the covered length.
fn area_taps(n_in: u32, n_out: u32) -> Taps {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| {
            let (lo, hi) = (o as f64 * scale, (o as f64 + 1.0) * scale);
            let first = lo.floor() as usize;
            let last = (hi.ceil() as usize).min(n_in as usize);
            let w: Vec<f32> = (first..last)
                .map(|i| ((hi.min(i as f64 + 1.0) - lo.max(i as f64)) / scale) as f32)
                .collect();
            (first, w)
        })
        .collect()
}

/// Keys' cubic kernel, a = -0.5.
fn cubic(x: f64) -> f64 {
    let (a, x) = (-0.5, x.abs());
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// Bicubic weights as PIL computes them: the kernel is stretched by the shrink factor
/// (antialiasing), taps are clipped to the image and renormalised.
fn bicubic_taps(n_in: u32, n_out: u32) -> Taps {
    let scale = n_in as f64 / n_out as f64;
    let support = 2.0 * scale.max(1.0);
    let stretch = scale.max(1.0);
    (0..n_out)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            let first = ((center - support + 0.5).floor().max(0.0)) as usize;
            let last = ((center + support + 0.5).floor() as usize).min(n_in as usize);
            let mut w: Vec<f64> =
                (first..last).map(|i| cubic((i as f64 - center + 0.5) / stretch)).collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            (first, w.into_iter().map(|v| v as f32).collect())
        })
        .collect()
}

/// Applies horizontal then vertical taps, rounding to 8 bits at the end.
fn resample(src: &Pixels, width: u32, height: u32, horizontal: &Taps, vertical: &Taps) -> Pixels {
    let c = src.channels as usize;
    let (sw, sh) = (src.width as usize, src.height as usize);
    let mut rows = vec![0f32; sh * width as usize * c];
    for y in 0..sh {
        for (x, (first, w)) in horizontal.iter().enumerate() {
            for ch in 0..c {
                let mut acc = 0f32;
                for (k, wk) in w.iter().enumerate() {
                    acc += wk * src.data[(y * sw + first + k) * c + ch] as f32;
                }
                rows[(y * width as usize + x) * c + ch] = acc;
            }
        }
    }
    let mut data = vec![0u8; height as usize * width as usize * c];
    for (y, (first, w)) in vertical.iter().enumerate() {
        for x in 0..width as usize {
            for ch in 0..c {
                let mut acc = 0f32;
                for (k, wk) in w.iter().enumerate() {
                    acc += wk * rows[((first + k) * width as usize + x) * c + ch];
                }
                data[(y * width as usize + x) * c + ch] = acc.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    Pixels { width, height, channels: src.channels, data }
}

/// Area resampling to `width x height`.
pub fn resize_area(src: &Pixels, width: u32, height: u32) -> Pixels {
    resample(src, width, height, &area_taps(src.width, width), &area_taps(src.height, height))
}

/// Bicubic resampling (a = -0.5, antialiased when shrinking) to `width x height`.
pub fn resize_bicubic(src: &Pixels, width: u32, height: u32) -> Pixels {
    resample(src, width, height, &bicubic_taps(src.width, width), &bicubic_taps(src.height, height))
}

/// The `size x size` window at (`left`, `top`).
pub fn crop(src: &Pixels, left: u32, top: u32, size: u32) -> Pixels {
    let c = src.channels as usize;
    let mut data = Vec::with_capacity((size * size) as usize * c);
    for y in top..top + size {
        let start = ((y * src.width + left) as usize) * c;
        data.extend_from_slice(&src.data[start..start + size as usize * c]);
    }
    Pixels { width: size, height: size, channels: src.channels, data }
}

/// guided-diffusion's `center_crop_arr`: box-halve while `min(w, h) >= 2 * size`, bicubic
/// resize so the short side is `size` (the long side rounded), then crop the center.
pub fn adm_center_crop(src: &Pixels, size: u32) -> Pixels {
    let mut img = src.clone();
    while img.width.min(img.height) >= 2 * size {
        img = resize_area(&img, img.width / 2, img.height / 2);
    }
    let scale = size as f64 / img.width.min(img.height) as f64;
    let (w, h) = (
        ((img.width as f64 * scale).round() as u32).max(size),
        ((img.height as f64 * scale).round() as u32).max(size),
    );
    if (w, h) != (img.width, img.height) {
        img = resize_bicubic(&img, w, h);
    }
    crop(&img, (w - size) / 2, (h - size) / 2, size)
}

/// Zero-pads `(N, C, H, W)` images symmetrically to `size x size` (Fashion-MNIST 28 -> 32;
/// its background is 0).
pub fn pad_to(images: &Tensor, size: i64) -> Result<Tensor> {
    let (_, _, h, w) = images.size4()?;
    if h > size || w > size {
        return Err(DataError::Invalid(format!("cannot pad {h}x{w} images to {size}x{size}")));
    }
    let (top, left) = ((size - h) / 2, (size - w) / 2);
    Ok(images.f_constant_pad_nd([left, size - w - left, top, size - h - top])?)
}

/// u8 images to f32 in `[0, 1]`.
pub fn to_unit_range(images: &Tensor) -> Result<Tensor> {
    Ok(images.f_to_kind(Kind::Float)? / 255.0)
}

/// Deterministic coin flips for random horizontal flipping: whether sample `index` of epoch
/// `epoch` is flipped under `seed` (the same answer on every call, so resumed runs agree).
pub fn flip_coin(seed: u64, epoch: u64, index: i64) -> bool {
    // SplitMix64 finaliser over the three inputs: cheap, stateless, well mixed.
    let mut z = seed
        ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (index as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) & 1 == 1
}

/// Flips the images of `(N, C, H, W)` `images` whose entry in `flip` is true, left-right.
pub fn flip_where(images: &Tensor, flip: &[bool]) -> Result<Tensor> {
    let n = images.size()[0];
    if flip.len() as i64 != n {
        return Err(DataError::Invalid(format!("{} flip flags for {n} images", flip.len())));
    }
    let mask = Tensor::from_slice(flip).to_device(images.device()).view([n, 1, 1, 1]);
    Ok(images.f_flip([3])?.f_where_self(&mask, images)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> Pixels {
        let data = (0..h).flat_map(|y| (0..w).map(move |x| (x * 7 + y * 3) as u8)).collect();
        Pixels { width: w, height: h, channels: 1, data }
    }

    #[test]
    fn area_halving_averages_two_by_two_blocks() {
        let src = gradient(4, 4);
        let out = resize_area(&src, 2, 2);
        let block = |x: usize, y: usize| {
            let v = |xx: usize, yy: usize| src.data[yy * 4 + xx] as f32;
            ((v(x, y) + v(x + 1, y) + v(x, y + 1) + v(x + 1, y + 1)) / 4.0).round() as u8
        };
        assert_eq!(out.data, vec![block(0, 0), block(2, 0), block(0, 2), block(2, 2)]);
    }

    #[test]
    fn resampling_keeps_constant_images_constant() {
        let src = Pixels { width: 37, height: 23, channels: 3, data: vec![200; 37 * 23 * 3] };
        for out in [
            resize_area(&src, 16, 9),
            resize_bicubic(&src, 16, 9),
            resize_bicubic(&src, 80, 50),
            adm_center_crop(&src, 8),
        ] {
            assert!(out.data.iter().all(|&v| v == 200), "{:?}", &out.data[..6]);
        }
    }

    #[test]
    fn adm_crop_takes_the_center_of_the_long_side() {
        // 300x100: one box halving (100 >= 2 * 32 -> 150x50), bicubic to 96x32, center 32x32.
        // Black, white over x in 80..220 (26..70 after scaling), black: the crop (32..64) is white,
        // and it would not be if the crop were taken from either end.
        let (w, h) = (300u32, 100u32);
        let data = (0..h)
            .flat_map(|_| (0..w).map(|x| if (80..220).contains(&x) { 255 } else { 0 }))
            .collect();
        let out = adm_center_crop(&Pixels { width: w, height: h, channels: 1, data }, 32);
        assert_eq!((out.width, out.height, out.data.len()), (32, 32, 1024));
        assert!(out.data.iter().all(|&v| v == 255), "{:?}", &out.data[..32]);
    }

    #[test]
    fn flip_coins_are_balanced_and_deterministic() {
        let heads = (0..10_000).filter(|&i| flip_coin(3, 1, i)).count();
        assert!((4_800..5_200).contains(&heads), "{heads}");
        assert_eq!(flip_coin(3, 1, 17), flip_coin(3, 1, 17));
        let same_other_epoch =
            (0..1000).filter(|&i| flip_coin(3, 1, i) == flip_coin(3, 2, i)).count();
        assert!((400..600).contains(&same_other_epoch), "{same_other_epoch}");
    }
}

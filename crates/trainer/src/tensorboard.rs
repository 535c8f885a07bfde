//! TensorBoard event files beside `metrics.jsonl` (`[log] tensorboard = true`): every
//! metrics line as scalars (nested values as `eval/fd`, per-layer lists as
//! `lpl_masked_fraction/0`, ...), and the sample grids as images. `tensorboard --logdir
//! <output_dir>/tensorboard` shows them.
//!
//! The format is TensorBoard's: TFRecord framing (length, masked CRC-32C of the length,
//! the `Event` protobuf, its masked CRC-32C) of `Event { wall_time, step, file_version |
//! summary { value { tag, simple_value | image } } }`. It is small enough to write here
//! (the maintained Rust crates for it pull in a protobuf toolchain); the bytes are checked
//! against records written by TensorBoard's own writer (tests/fixtures).

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError};
use crate::training_hooks::{Hook, StepEnd};

/// CRC-32C (Castagnoli), bitwise.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

/// TFRecord's masked CRC.
fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xA282_EAD8)
}

/// Protobuf wire encoding of the few fields needed.
#[derive(Default)]
struct Proto(Vec<u8>);

impl Proto {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire));
    }
    fn uint(&mut self, field: u32, v: i64) {
        if v != 0 {
            self.key(field, 0);
            self.varint(v as u64);
        }
    }
    fn double(&mut self, field: u32, v: f64) {
        if v != 0.0 {
            self.key(field, 1);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
    }
    fn float(&mut self, field: u32, v: f32) {
        if v != 0.0 {
            self.key(field, 5);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
    }
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
}

/// One value of a summary.
pub enum SummaryValue<'a> {
    /// A scalar.
    Scalar(f32),
    /// An encoded image (PNG) and its height, width and channels.
    Image {
        /// The PNG bytes.
        png: &'a [u8],
        /// Height in pixels.
        height: i64,
        /// Width in pixels.
        width: i64,
        /// 1 (grey), 3 (RGB) or 4 (RGBA).
        channels: i64,
    },
}

/// The `Event` protobuf of a header (`file_version`) or a summary at `step`.
pub fn encode_event(wall_time: f64, step: i64, values: &[(&str, SummaryValue<'_>)]) -> Vec<u8> {
    let mut event = Proto::default();
    event.double(1, wall_time);
    event.uint(2, step);
    if values.is_empty() {
        event.bytes(3, b"brain.Event:2");
        return event.0;
    }
    let mut summary = Proto::default();
    for (tag, value) in values {
        let mut v = Proto::default();
        v.bytes(1, tag.as_bytes());
        match value {
            SummaryValue::Scalar(x) => v.float(2, *x),
            SummaryValue::Image { png, height, width, channels } => {
                let mut image = Proto::default();
                image.uint(1, *height);
                image.uint(2, *width);
                image.uint(3, *channels);
                image.bytes(4, png);
                v.bytes(4, &image.0);
            }
        }
        summary.bytes(1, &v.0);
    }
    event.bytes(5, &summary.0);
    event.0
}

/// `data` as one TFRecord.
pub fn frame_record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// An event file, appended and flushed record by record.
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl EventWriter {
    /// A new `events.out.tfevents.<seconds>.<host>.<pid>` in `dir` (created), with its
    /// header event.
    pub fn create(dir: &Path) -> Result<Self> {
        let io = |e| TrainError::Io { path: dir.to_path_buf(), source: e };
        std::fs::create_dir_all(dir).map_err(io)?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let name = format!("events.out.tfevents.{}.{host}.{}", now() as u64, std::process::id());
        let path = dir.join(name);
        let file =
            File::create(&path).map_err(|e| TrainError::Io { path: path.clone(), source: e })?;
        let mut w = Self { file, path };
        w.write(now(), 0, &[])?;
        Ok(w)
    }

    /// Appends one event (`values` empty: the header).
    pub fn write(
        &mut self,
        wall_time: f64,
        step: i64,
        values: &[(&str, SummaryValue<'_>)],
    ) -> Result<()> {
        let record = frame_record(&encode_event(wall_time, step, values));
        self.file
            .write_all(&record)
            .and_then(|()| self.file.flush())
            .map_err(|e| TrainError::Io { path: self.path.clone(), source: e })
    }
}

/// The numbers of a `metrics.jsonl` line as (tag, value), nested keys joined by `/` and
/// list elements by their index; `step` itself and non-numbers are left out.
pub fn scalars(line: &serde_json::Value) -> Vec<(String, f32)> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, f32)>) {
        let join =
            |k: &str| if prefix.is_empty() { k.to_string() } else { format!("{prefix}/{k}") };
        match v {
            serde_json::Value::Number(n) => {
                if let Some(x) = n.as_f64() {
                    out.push((prefix.to_string(), x as f32));
                }
            }
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    if !(prefix.is_empty() && k == "step") {
                        walk(&join(k), v, out);
                    }
                }
            }
            serde_json::Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(&join(&i.to_string()), v, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", line, &mut out);
    out
}

/// The [`Hook`] that writes a run's metrics and grids to `<output_dir>/tensorboard`.
pub struct TensorBoardLogger {
    writer: EventWriter,
}

impl TensorBoardLogger {
    /// A new event file in `dir`.
    pub fn create(dir: &Path) -> Result<Self> {
        Ok(Self { writer: EventWriter::create(dir)? })
    }
}

impl Hook for TensorBoardLogger {
    fn after_step(&mut self, end: &StepEnd<'_>, lines: &[serde_json::Value]) -> Result<()> {
        let step = end.step as i64;
        for line in lines {
            let values = scalars(line);
            let values: Vec<(&str, SummaryValue<'_>)> =
                values.iter().map(|(t, v)| (t.as_str(), SummaryValue::Scalar(*v))).collect();
            if !values.is_empty() {
                self.writer.write(now(), step, &values)?;
            }
        }
        if let Some(grid) = end.grid {
            let png = std::fs::read(grid)
                .map_err(|e| TrainError::Io { path: grid.to_path_buf(), source: e })?;
            let (width, height) = image_size(&png).unwrap_or((0, 0));
            let channels = png_channels(&png).unwrap_or(3);
            let image = SummaryValue::Image { png: &png, height, width, channels };
            self.writer.write(now(), step, &[("samples", image)])?;
        }
        Ok(())
    }
}

/// Width and height from a PNG's IHDR.
fn image_size(png: &[u8]) -> Option<(i64, i64)> {
    let w = u32::from_be_bytes(png.get(16..20)?.try_into().ok()?);
    let h = u32::from_be_bytes(png.get(20..24)?.try_into().ok()?);
    Some((i64::from(w), i64::from(h)))
}

/// Channels from a PNG's IHDR colour type.
fn png_channels(png: &[u8]) -> Option<i64> {
    Some(match png.get(25)? {
        0 => 1,
        2 => 3,
        4 => 2,
        6 => 4,
        _ => 3,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        // the CRC-32C check value of "123456789" (RFC 3720, B.4)
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn nested_metrics_become_tags() {
        let line = serde_json::json!({"step": 4, "loss": 0.5, "eval": {"fd": 12.0, "metric": "FD"}, "lpl_masked_fraction": [0.1, 0.2]});
        let mut s = scalars(&line);
        s.sort_by(|a, b| a.0.cmp(&b.0));
        let tags: Vec<&str> = s.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(tags, ["eval/fd", "loss", "lpl_masked_fraction/0", "lpl_masked_fraction/1"]);
    }
}

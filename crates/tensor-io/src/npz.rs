//! NumPy arrays: `.npy` files inside `.npz` archives, the format ADM's evaluator and DiT's
//! `sample_ddp.py` exchange samples in (`arr_0`: uint8 `(N, H, W, 3)`; reference batches add
//! `mu` and `sigma`). Written stored (as `np.savez`), read stored or deflated (as
//! `np.savez_compressed` writes them); little-endian, C order; dtypes `u1`, `i1`, `i4`, `i8`,
//! `f4`, `f8`, `b1`. No pickled (object) arrays: they are refused, never run.
//!
//! Hostile archives are refused with an error naming the file and the member: sizes past the
//! end of the file, a deflated member promising more than deflate can expand to, shapes
//! whose element count does not match the data, Fortran order, zip64.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use tch::{Kind, Tensor};

use crate::{Result, TensorIoError, write_atomically};

fn bad(path: &Path, what: impl std::fmt::Display) -> TensorIoError {
    TensorIoError::Format {
        path: path.to_path_buf(),
        message: format!("not a readable .npz: {what}"),
    }
}

fn descr(kind: Kind) -> Option<(&'static str, usize)> {
    Some(match kind {
        Kind::Uint8 => ("|u1", 1),
        Kind::Int8 => ("|i1", 1),
        Kind::Bool => ("|b1", 1),
        Kind::Int => ("<i4", 4),
        Kind::Int64 => ("<i8", 8),
        Kind::Float => ("<f4", 4),
        Kind::Double => ("<f8", 8),
        _ => return None,
    })
}

fn kind_of(descr: &str) -> Option<(Kind, usize)> {
    Some(match descr {
        "|u1" | "<u1" | "u1" => (Kind::Uint8, 1),
        "|i1" | "<i1" | "i1" => (Kind::Int8, 1),
        "|b1" | "<b1" | "b1" => (Kind::Bool, 1),
        "<i4" => (Kind::Int, 4),
        "<i8" => (Kind::Int64, 8),
        "<f4" => (Kind::Float, 4),
        "<f8" => (Kind::Double, 8),
        _ => return None,
    })
}

/// One array as `.npy` bytes (format version 1.0).
pub fn npy_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let (descr, elem) = descr(t.kind()).ok_or_else(|| {
        TensorIoError::Compute(format!("no .npy dtype for a {:?} tensor", t.kind()))
    })?;
    let t = t.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
    let shape: Vec<String> = t.size().iter().map(|d| d.to_string()).collect();
    let shape = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // magic (6) + version (2) + length (2) + header + '\n', padded to 64 bytes
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    let numel = t.numel();
    let mut data = vec![0u8; numel * elem];
    if numel > 0 {
        t.f_copy_data_u8(&mut data, numel)?;
    }
    out.extend(data);
    Ok(out)
}

/// Parses `.npy` bytes; `what` names the member in errors.
fn parse_npy(path: &Path, what: &str, bytes: &[u8]) -> Result<Tensor> {
    let err = |m: String| bad(path, format!("`{what}`: {m}"));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(err("not a .npy array (bad magic)".into()));
    }
    let (len, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => {
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(err(format!(".npy format version {v} is not supported"))),
    };
    let header = bytes
        .get(start..start.saturating_add(len))
        .ok_or_else(|| err("truncated header".into()))?;
    let header = String::from_utf8_lossy(header);
    let field = |key: &str| -> Option<String> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest.to_string())
    };
    let descr = field("descr")
        .and_then(|v| v.strip_prefix('\'').and_then(|v| v.split('\'').next().map(String::from)))
        .ok_or_else(|| err("no 'descr' in the header".into()))?;
    let (kind, elem) = kind_of(&descr).ok_or_else(|| {
        err(format!("dtype '{descr}' is not supported (object arrays never are)"))
    })?;
    if field("fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err(err("Fortran order is not supported".into()));
    }
    let shape = field("shape")
        .and_then(|v| v.strip_prefix('(').and_then(|v| v.split(')').next().map(String::from)))
        .ok_or_else(|| err("no 'shape' in the header".into()))?;
    let dims: Vec<i64> = shape
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse::<i64>().map_err(|_| err(format!("shape ({shape}) is not integers"))))
        .collect::<Result<_>>()?;
    let data = &bytes[start + len..];
    let numel =
        dims.iter().try_fold(1u64, |n, &d| u64::try_from(d).ok().and_then(|d| n.checked_mul(d)));
    match numel.and_then(|n| n.checked_mul(elem as u64)) {
        Some(need) if need == data.len() as u64 => {}
        _ => {
            return Err(err(format!(
                "shape ({shape}) of {descr} needs other than the {} data bytes present",
                data.len()
            )));
        }
    }
    Ok(Tensor::f_from_data_size(data, &dims, kind)?)
}

/// Writes `arrays` as an `.npz` (stored members `<name>.npy`, as `np.savez`), atomically.
pub fn write_npz(path: &Path, arrays: &[(&str, &Tensor)]) -> Result<()> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, t) in arrays {
        let data = npy_bytes(t)?;
        let member = format!("{name}.npy");
        if data.len() > u32::MAX as usize || out.len() > u32::MAX as usize {
            return Err(TensorIoError::Compute(format!(
                "{}: `{member}` needs zip64 (over 4 GiB), which is not written",
                path.display()
            )));
        }
        let mut crc = flate2::Crc::new();
        crc.update(&data);
        let offset = out.len() as u32;
        let header = |central: bool| {
            let mut h = Vec::new();
            h.extend(if central { 0x0201_4b50u32 } else { 0x0403_4b50 }.to_le_bytes());
            if central {
                h.extend(20u16.to_le_bytes());
            }
            h.extend(20u16.to_le_bytes());
            h.extend([0u8; 4]); // flags, method: stored
            h.extend([0u8, 0, 0x21, 0]); // 1980-01-01 00:00
            h.extend(crc.sum().to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((member.len() as u16).to_le_bytes());
            h.extend(0u16.to_le_bytes());
            if central {
                h.extend([0u8; 6]); // comment length, disk, internal attributes
                h.extend(0u32.to_le_bytes());
                h.extend(offset.to_le_bytes());
            }
            h.extend(member.as_bytes());
            h
        };
        out.extend(header(false));
        out.extend(&data);
        central.extend(header(true));
    }
    let (cd_offset, cd_size) = (out.len() as u32, central.len() as u32);
    out.extend(central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    for _ in 0..2 {
        out.extend((arrays.len() as u16).to_le_bytes());
    }
    out.extend(cd_size.to_le_bytes());
    out.extend(cd_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    write_atomically(path, &out)
}

/// Largest expansion of a deflate stream (see lpl-data's IDX reader).
const DEFLATE_MAX_RATIO: u64 = 1032;

/// Every array of an `.npz`, by name (without `.npy`).
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let bytes = std::fs::read(path)
        .map_err(|source| TensorIoError::Io { path: path.to_path_buf(), source })?;
    let u16_at = |i: usize| bytes.get(i..i + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |i: usize| {
        bytes.get(i..i + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let start = bytes.len().saturating_sub(65_557);
    let eocd = (start..bytes.len().saturating_sub(21))
        .rev()
        .find(|&i| u32_at(i) == Some(0x0605_4b50))
        .ok_or_else(|| bad(path, "not a zip archive"))?;
    let count = u16_at(eocd + 10).ok_or_else(|| bad(path, "truncated"))?;
    let mut at = u32_at(eocd + 16).ok_or_else(|| bad(path, "truncated"))?;
    if count == 0xFFFF || at == 0xFFFF_FFFF {
        return Err(bad(path, "zip64 archives (over 4 GiB) are not supported"));
    }
    let mut out = BTreeMap::new();
    for _ in 0..count {
        let field = |v: Option<usize>| v.ok_or_else(|| bad(path, "truncated central directory"));
        if field(u32_at(at))? != 0x0201_4b50 {
            return Err(bad(path, "damaged central directory"));
        }
        let method = field(u16_at(at + 10))?;
        let (packed, size) = (field(u32_at(at + 20))?, field(u32_at(at + 24))?);
        let (name_len, extra, comment) =
            (field(u16_at(at + 28))?, field(u16_at(at + 30))?, field(u16_at(at + 32))?);
        let local = field(u32_at(at + 42))?;
        let name = bytes
            .get(at + 46..at + 46 + name_len)
            .map(|n| String::from_utf8_lossy(n).to_string())
            .ok_or_else(|| bad(path, "truncated member name"))?;
        at += 46 + name_len + extra + comment;
        let data_at = local + 30 + field(u16_at(local + 26))? + field(u16_at(local + 28))?;
        let raw = bytes
            .get(data_at..data_at.saturating_add(packed))
            .ok_or_else(|| bad(path, format!("`{name}` reaches past the end of the file")))?;
        let data = match method {
            0 => raw.to_vec(),
            8 => {
                if size as u64 > (packed as u64).saturating_mul(DEFLATE_MAX_RATIO) {
                    return Err(bad(path, format!("`{name}` promises more than deflate can hold")));
                }
                let mut data = Vec::with_capacity(size);
                flate2::read::DeflateDecoder::new(raw)
                    .take(size as u64 + 1)
                    .read_to_end(&mut data)
                    .map_err(|e| bad(path, format!("`{name}`: corrupt deflate stream: {e}")))?;
                data
            }
            m => return Err(bad(path, format!("`{name}`: compression method {m} unsupported"))),
        };
        if data.len() != size {
            return Err(bad(path, format!("`{name}` holds {} bytes, not {size}", data.len())));
        }
        let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        out.insert(key, parse_npy(path, &name, &data)?);
    }
    Ok(out)
}

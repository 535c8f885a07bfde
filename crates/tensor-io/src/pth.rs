//! Reading PyTorch `.pth` / `.pt` / `.bin` state dicts (`torch.save` zip archives) without
//! executing any pickle code: a small interpreter for the pickle opcodes a state dict uses,
//! which only ever builds plain values, `OrderedDict`s and tensors
//! (`torch._utils._rebuild_tensor_v2`); any other callable stays an inert value.
//! Storages are read from the (uncompressed) zip entries `<archive>/data/<key>`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use tch::{Kind, Tensor};

use crate::{Result, TensorIoError};

fn bad(path: &Path, what: impl std::fmt::Display) -> TensorIoError {
    TensorIoError::Format {
        path: path.to_path_buf(),
        message: format!("not a readable PyTorch zip state dict: {what}"),
    }
}

/// One zip entry's location in the file.
struct Entry {
    offset: usize,
    size: usize,
}

fn u16_at(b: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize)
}

fn u32_at(b: &[u8], at: usize) -> Option<usize> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize)
}

/// The stored (uncompressed) entries of a zip archive, by name.
fn zip_entries(bytes: &[u8]) -> Option<HashMap<String, Entry>> {
    let start = bytes.len().saturating_sub(65_557);
    let eocd = (start..bytes.len().saturating_sub(21))
        .rev()
        .find(|&i| u32_at(bytes, i) == Some(0x0605_4b50))?;
    let count = u16_at(bytes, eocd + 10)?;
    let mut at = u32_at(bytes, eocd + 16)?;
    let mut entries = HashMap::new();
    for _ in 0..count {
        if u32_at(bytes, at)? != 0x0201_4b50 {
            return None;
        }
        let method = u16_at(bytes, at + 10)?;
        let size = u32_at(bytes, at + 24)?;
        let (name_len, extra_len, comment_len) =
            (u16_at(bytes, at + 28)?, u16_at(bytes, at + 30)?, u16_at(bytes, at + 32)?);
        let local = u32_at(bytes, at + 42)?;
        let name = String::from_utf8_lossy(bytes.get(at + 46..at + 46 + name_len)?).to_string();
        at += 46 + name_len + extra_len + comment_len;
        if method != 0 || size == 0xFFFF_FFFF || local == 0xFFFF_FFFF {
            return None; // compressed or zip64: torch.save writes neither for state dicts < 4 GB
        }
        let data = local + 30 + u16_at(bytes, local + 26)? + u16_at(bytes, local + 28)?;
        entries.insert(name, Entry { offset: data, size });
    }
    Some(entries)
}

/// A tensor described by `_rebuild_tensor_v2`.
#[derive(Clone, Debug)]
struct TensorSpec {
    storage_type: String,
    key: String,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

/// The values a state-dict pickle can build.
#[derive(Clone, Debug)]
enum Value {
    None,
    /// A bool or float: read past, never needed by a state dict.
    Scalar,
    Int(i64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    Persistent(Box<Value>),
    /// A callable applied to arguments that we do not interpret.
    Opaque,
    Tensor(TensorSpec),
    Mark,
}

fn ints(v: &Value) -> Option<Vec<i64>> {
    match v {
        Value::Tuple(items) | Value::List(items) => {
            items.iter().map(|i| if let Value::Int(n) = i { Some(*n) } else { None }).collect()
        }
        _ => None,
    }
}

fn reduce(callable: Value, args: Value) -> Value {
    match (&callable, &args) {
        (Value::Global(m, n), _) if m == "collections" && n == "OrderedDict" => {
            Value::Dict(Vec::new())
        }
        (Value::Global(m, n), Value::Tuple(a))
            if m == "torch._utils" && n == "_rebuild_tensor_v2" =>
        {
            let spec = (|| {
                let Value::Persistent(pid) = a.first()? else { return None };
                let Value::Tuple(pid) = pid.as_ref() else { return None };
                let Value::Global(_, storage_type) = pid.get(1)? else { return None };
                let Value::Str(key) = pid.get(2)? else { return None };
                let Value::Int(offset) = a.get(1)? else { return None };
                Some(TensorSpec {
                    storage_type: storage_type.clone(),
                    key: key.clone(),
                    offset: *offset,
                    size: ints(a.get(2)?)?,
                    stride: ints(a.get(3)?)?,
                })
            })();
            spec.map_or(Value::Opaque, Value::Tensor)
        }
        _ => Value::Opaque,
    }
}

/// Runs the pickle program and returns the top-level value.
fn unpickle(p: &[u8]) -> std::result::Result<Value, String> {
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: HashMap<usize, Value> = HashMap::new();
    let mut i = 0usize;
    let take = |i: &mut usize, n: usize| -> std::result::Result<&[u8], String> {
        let s = p.get(*i..*i + n).ok_or("truncated pickle")?;
        *i += n;
        Ok(s)
    };
    let pop_mark = |stack: &mut Vec<Value>| -> std::result::Result<Vec<Value>, String> {
        let at = stack.iter().rposition(|v| matches!(v, Value::Mark)).ok_or("MARK missing")?;
        let items = stack.split_off(at + 1);
        stack.pop();
        Ok(items)
    };
    loop {
        let op = *take(&mut i, 1)?.first().ok_or("empty")?;
        match op {
            0x80 => {
                take(&mut i, 1)?;
            }
            0x95 => {
                take(&mut i, 8)?; // FRAME
            }
            b'.' => return stack.pop().ok_or_else(|| "empty stack at STOP".to_string()),
            b'(' => stack.push(Value::Mark),
            b'N' => stack.push(Value::None),
            0x88 | 0x89 => stack.push(Value::Scalar),
            b'K' => stack.push(Value::Int(take(&mut i, 1)?[0] as i64)),
            b'M' => {
                let b = take(&mut i, 2)?;
                stack.push(Value::Int(u16::from_le_bytes([b[0], b[1]]) as i64));
            }
            b'J' => {
                let b = take(&mut i, 4)?;
                stack.push(Value::Int(i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64));
            }
            0x8a => {
                let n = take(&mut i, 1)?[0] as usize;
                let b = take(&mut i, n)?;
                let mut v: i64 = 0;
                for (k, byte) in b.iter().enumerate().take(8) {
                    v |= (*byte as i64) << (8 * k);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(Value::Int(v));
            }
            b'G' => {
                take(&mut i, 8)?;
                stack.push(Value::Scalar);
            }
            b'X' | 0x8c => {
                let n = if op == b'X' {
                    let b = take(&mut i, 4)?;
                    u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
                } else {
                    take(&mut i, 1)?[0] as usize
                };
                stack.push(Value::Str(String::from_utf8_lossy(take(&mut i, n)?).to_string()));
            }
            b'c' => {
                let line = |i: &mut usize| -> std::result::Result<String, String> {
                    let end =
                        p[*i..].iter().position(|&c| c == b'\n').ok_or("GLOBAL without newline")?;
                    let s = String::from_utf8_lossy(&p[*i..*i + end]).to_string();
                    *i += end + 1;
                    Ok(s)
                };
                let module = line(&mut i)?;
                let name = line(&mut i)?;
                stack.push(Value::Global(module, name));
            }
            b')' => stack.push(Value::Tuple(Vec::new())),
            b']' => stack.push(Value::List(Vec::new())),
            b'}' => stack.push(Value::Dict(Vec::new())),
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let items = stack.split_off(stack.len().checked_sub(n).ok_or("stack underflow")?);
                stack.push(Value::Tuple(items));
            }
            b'q' => {
                let k = take(&mut i, 1)?[0] as usize;
                memo.insert(k, stack.last().cloned().ok_or("PUT on empty stack")?);
            }
            b'r' => {
                let b = take(&mut i, 4)?;
                let k = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
                memo.insert(k, stack.last().cloned().ok_or("PUT on empty stack")?);
            }
            b'h' | b'j' => {
                let k = if op == b'h' {
                    take(&mut i, 1)?[0] as usize
                } else {
                    let b = take(&mut i, 4)?;
                    u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
                };
                stack.push(memo.get(&k).cloned().ok_or("GET of unknown memo key")?);
            }
            b'Q' => {
                let pid = stack.pop().ok_or("stack underflow")?;
                stack.push(Value::Persistent(Box::new(pid)));
            }
            b'R' => {
                let args = stack.pop().ok_or("stack underflow")?;
                let callable = stack.pop().ok_or("stack underflow")?;
                stack.push(reduce(callable, args));
            }
            b'b' => {
                stack.pop().ok_or("stack underflow")?; // BUILD state (e.g. `_metadata`): ignored
            }
            b'a' | b'e' => {
                let items = if op == b'a' {
                    vec![stack.pop().ok_or("stack underflow")?]
                } else {
                    pop_mark(&mut stack)?
                };
                if let Some(Value::List(list)) = stack.last_mut() {
                    list.extend(items);
                }
            }
            b's' | b'u' => {
                let items = if op == b's' {
                    let v = stack.pop().ok_or("stack underflow")?;
                    let k = stack.pop().ok_or("stack underflow")?;
                    vec![k, v]
                } else {
                    pop_mark(&mut stack)?
                };
                if let Some(Value::Dict(dict)) = stack.last_mut() {
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        dict.push((k, v));
                    }
                }
            }
            other => return Err(format!("unsupported pickle opcode 0x{other:02x}")),
        }
    }
}

fn storage_kind(storage_type: &str) -> Option<(Kind, usize)> {
    Some(match storage_type {
        "HalfStorage" => (Kind::Half, 2),
        "BFloat16Storage" => (Kind::BFloat16, 2),
        "FloatStorage" => (Kind::Float, 4),
        "DoubleStorage" => (Kind::Double, 8),
        "LongStorage" => (Kind::Int64, 8),
        "IntStorage" => (Kind::Int, 4),
        "ShortStorage" => (Kind::Int16, 2),
        "CharStorage" => (Kind::Int8, 1),
        "ByteStorage" => (Kind::Uint8, 1),
        "BoolStorage" => (Kind::Bool, 1),
        _ => return None,
    })
}

/// Reads every tensor of a `torch.save` zip state dict.
pub fn read(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let bytes = std::fs::read(path)
        .map_err(|source| TensorIoError::Io { path: path.to_path_buf(), source })?;
    let entries = zip_entries(&bytes)
        .ok_or_else(|| bad(path, "not a zip archive (legacy torch.save format?)"))?;
    let pkl = entries
        .keys()
        .find(|k| k.ends_with("/data.pkl") || *k == "data.pkl")
        .cloned()
        .ok_or_else(|| bad(path, "no data.pkl"))?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let entry = |name: &str| -> Result<&[u8]> {
        let e = entries.get(name).ok_or_else(|| bad(path, format!("missing zip entry {name}")))?;
        bytes
            .get(e.offset..e.offset + e.size)
            .ok_or_else(|| bad(path, format!("truncated zip entry {name}")))
    };
    let root = unpickle(entry(&pkl)?).map_err(|e| bad(path, e))?;
    let Value::Dict(items) = root else {
        return Err(bad(path, "the pickled object is not a dict of tensors"));
    };
    let mut out = BTreeMap::new();
    for (key, value) in items {
        let (Value::Str(key), Value::Tensor(spec)) = (key, value) else { continue };
        let (kind, elem) = storage_kind(&spec.storage_type).ok_or_else(|| {
            bad(path, format!("`{key}`: unsupported storage {}", spec.storage_type))
        })?;
        let data = entry(&format!("{prefix}data/{}", spec.key))?;
        let storage = Tensor::f_from_data_size(data, &[(data.len() / elem) as i64], kind)?;
        let tensor = storage.f_as_strided(&spec.size, &spec.stride, spec.offset)?.f_contiguous()?;
        out.insert(key, tensor);
    }
    Ok(out)
}

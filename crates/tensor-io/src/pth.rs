//! Reading PyTorch `.pth` / `.pt` / `.bin` state dicts (`torch.save` zip archives, and the
//! legacy format of files written before torch 1.6) without
//! executing any pickle code: a small interpreter for the pickle opcodes a state dict uses,
//! which only ever builds plain values, `OrderedDict`s and tensors
//! (`torch._utils._rebuild_tensor_v2`).
//! Storages are read from the (uncompressed) zip entries `<archive>/data/<key>`, or, in a
//! legacy file, from the records after the pickles.
//!
//! Hostile files are refused with an error naming the file and what is wrong, and nothing is
//! ever executed:
//! - a pickle that names any global outside [`ALLOWED_GLOBALS`] (`os.system`,
//!   `builtins.eval`, ...), as `torch.load(weights_only=True)` refuses them;
//! - values nested deeper than [`MAX_DEPTH`] levels, or memo references that would copy more
//!   values than [`VALUE_NODES_PER_BYTE`] per byte of pickle (a "billion laughs" pickle);
//! - zip entry names that are absolute or contain `..`, entries past the end of the file;
//! - tensors whose shape, strides and offset reach past their storage, negative sizes or
//!   strides, and views larger than their storage beyond [`OVERLAP_BUDGET_ELEMENTS`] in all
//!   (a stride-0 "expansion bomb"): what a file makes us allocate is bounded by its bytes
//!   plus that budget.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use tch::{Kind, Tensor};

use crate::{Result, TensorIoError};

fn bad(path: &Path, what: impl std::fmt::Display) -> TensorIoError {
    TensorIoError::Format {
        path: path.to_path_buf(),
        message: format!("not a readable PyTorch state dict: {what}"),
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

/// Whether a zip entry name is absolute or has a `..` component (never in `torch.save`'s
/// archives; refused so that no name can point outside the archive).
fn unsafe_entry_name(name: &str) -> bool {
    name.starts_with('/') || name.starts_with('\\') || name.split(['/', '\\']).any(|c| c == "..")
}

/// The stored (uncompressed) entries of a zip archive, by name; `Ok(None)` when the bytes are
/// not a zip archive we can read, `Err` for an archive we refuse.
fn zip_entries(bytes: &[u8]) -> std::result::Result<Option<HashMap<String, Entry>>, String> {
    let start = bytes.len().saturating_sub(65_557);
    let Some(eocd) = (start..bytes.len().saturating_sub(21))
        .rev()
        .find(|&i| u32_at(bytes, i) == Some(0x0605_4b50))
    else {
        return Ok(None);
    };
    central_directory(bytes, eocd)
}

fn central_directory(
    bytes: &[u8],
    eocd: usize,
) -> std::result::Result<Option<HashMap<String, Entry>>, String> {
    let none = || -> std::result::Result<Option<HashMap<String, Entry>>, String> { Ok(None) };
    let (Some(count), Some(mut at)) = (u16_at(bytes, eocd + 10), u32_at(bytes, eocd + 16)) else {
        return none();
    };
    let mut entries = HashMap::new();
    for _ in 0..count {
        macro_rules! get {
            ($e:expr) => {
                match $e {
                    Some(v) => v,
                    None => return none(),
                }
            };
        }
        if get!(u32_at(bytes, at)) != 0x0201_4b50 {
            return none();
        }
        let method = get!(u16_at(bytes, at + 10));
        let size = get!(u32_at(bytes, at + 24));
        let (name_len, extra_len, comment_len) = (
            get!(u16_at(bytes, at + 28)),
            get!(u16_at(bytes, at + 30)),
            get!(u16_at(bytes, at + 32)),
        );
        let local = get!(u32_at(bytes, at + 42));
        let name =
            String::from_utf8_lossy(get!(bytes.get(at + 46..at + 46 + name_len))).to_string();
        at += 46 + name_len + extra_len + comment_len;
        if unsafe_entry_name(&name) {
            return Err(format!(
                "zip entry name `{name}` is absolute or climbs out of the archive (`..`)"
            ));
        }
        if method != 0 || size == 0xFFFF_FFFF || local == 0xFFFF_FFFF {
            return none(); // compressed or zip64: torch.save writes neither for state dicts < 4 GB
        }
        let data = local + 30 + get!(u16_at(bytes, local + 26)) + get!(u16_at(bytes, local + 28));
        entries.insert(name, Entry { offset: data, size });
    }
    Ok(Some(entries))
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
        // a saved `nn.Parameter`: its data
        (Value::Global(m, n), Value::Tuple(a))
            if m == "torch._utils" && n.starts_with("_rebuild_parameter") =>
        {
            match a.first() {
                Some(tensor @ Value::Tensor(_)) => tensor.clone(),
                _ => Value::Opaque,
            }
        }
        _ => Value::Opaque,
    }
}

/// Globals a state-dict pickle may name: those `torch.load(weights_only=True)` accepts for
/// tensors, containers and metadata (plus `argparse.Namespace`, which training checkpoints
/// such as SiT's carry as `args`: read as an inert value). Nothing named is ever called.
pub const ALLOWED_GLOBALS: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch", "HalfStorage"),
    ("torch", "BFloat16Storage"),
    ("torch", "FloatStorage"),
    ("torch", "DoubleStorage"),
    ("torch", "LongStorage"),
    ("torch", "IntStorage"),
    ("torch", "ShortStorage"),
    ("torch", "CharStorage"),
    ("torch", "ByteStorage"),
    ("torch", "BoolStorage"),
    ("torch", "float16"),
    ("torch", "bfloat16"),
    ("torch", "float32"),
    ("torch", "float64"),
    ("torch", "int64"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("_codecs", "encode"),
    ("argparse", "Namespace"),
];

/// Deepest nesting of values a state dict may have (they nest 3 or 4 levels).
pub const MAX_DEPTH: usize = 64;

/// Values the memo (`BINPUT`, `BINGET`) may copy per byte of pickle, beyond
/// [`MIN_VALUE_NODES`]: a state dict memoizes each value once, right after the opcodes that
/// built it, so its copies stay proportional to its size; a "billion laughs" pickle's grow
/// exponentially.
pub const VALUE_NODES_PER_BYTE: usize = 8;

/// Values the memo may copy in any pickle, however small.
pub const MIN_VALUE_NODES: usize = 1 << 16;

/// Values in `v` (itself included), counting at most `limit`.
fn nodes(v: &Value, limit: usize) -> usize {
    let mut count = 0;
    let mut todo = vec![v];
    while let Some(v) = todo.pop() {
        count += 1;
        if count >= limit {
            return count;
        }
        match v {
            Value::Tuple(items) | Value::List(items) => todo.extend(items.iter()),
            Value::Dict(items) => todo.extend(items.iter().flat_map(|(k, v)| [k, v])),
            Value::Persistent(inner) => todo.push(inner),
            _ => {}
        }
    }
    count
}

/// Runs the pickle program and returns the top-level value. Every value on the stack and in
/// the memo carries its nesting depth, so depth is checked in O(1) per opcode.
fn unpickle(p: &[u8]) -> std::result::Result<Value, String> {
    unpickle_prefix(p).map(|(v, _)| v)
}

/// [`unpickle`] of the pickle at the start of `p`, which may go on past its STOP (legacy
/// files hold several pickles in a row); returns the value and the bytes it took.
fn unpickle_prefix(p: &[u8]) -> std::result::Result<(Value, usize), String> {
    let mut stack: Vec<(Value, usize)> = Vec::new();
    let mut memo: HashMap<usize, (Value, usize)> = HashMap::new();
    let mut copied = 0usize;
    let budget = MIN_VALUE_NODES.max(VALUE_NODES_PER_BYTE.saturating_mul(p.len()));
    let mut i = 0usize;
    let take = |i: &mut usize, n: usize| -> std::result::Result<&[u8], String> {
        let s = i.checked_add(n).and_then(|end| p.get(*i..end)).ok_or("truncated pickle")?;
        *i += n;
        Ok(s)
    };
    let pop = |stack: &mut Vec<(Value, usize)>| stack.pop().ok_or("stack underflow".to_string());
    let pop_mark =
        |stack: &mut Vec<(Value, usize)>| -> std::result::Result<Vec<(Value, usize)>, String> {
            let at =
                stack.iter().rposition(|v| matches!(v.0, Value::Mark)).ok_or("MARK missing")?;
            let items = stack.split_off(at + 1);
            stack.pop();
            Ok(items)
        };
    // a container of `items`: one level deeper than the deepest of them
    let nest = |items: &[(Value, usize)]| -> std::result::Result<usize, String> {
        let depth = 1 + items.iter().map(|v| v.1).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(format!("values nest deeper than {MAX_DEPTH} levels (a recursion bomb?)"));
        }
        Ok(depth)
    };
    let unzip = |items: Vec<(Value, usize)>| items.into_iter().map(|v| v.0).collect::<Vec<_>>();
    loop {
        let op = *take(&mut i, 1)?.first().ok_or("empty")?;
        match op {
            0x80 => {
                take(&mut i, 1)?;
            }
            0x95 => {
                take(&mut i, 8)?; // FRAME
            }
            b'.' => {
                return pop(&mut stack).map(|v| (v.0, i)).map_err(|_| "empty stack at STOP".into());
            }
            b'(' => stack.push((Value::Mark, 0)),
            b'N' => stack.push((Value::None, 0)),
            0x88 | 0x89 => stack.push((Value::Scalar, 0)),
            b'K' => stack.push((Value::Int(take(&mut i, 1)?[0] as i64), 0)),
            b'M' => {
                let b = take(&mut i, 2)?;
                stack.push((Value::Int(u16::from_le_bytes([b[0], b[1]]) as i64), 0));
            }
            b'J' => {
                let b = take(&mut i, 4)?;
                stack.push((Value::Int(i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64), 0));
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
                stack.push((Value::Int(v), 0));
            }
            b'G' => {
                take(&mut i, 8)?;
                stack.push((Value::Scalar, 0));
            }
            b'X' | 0x8c => {
                let n = if op == b'X' {
                    let b = take(&mut i, 4)?;
                    u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
                } else {
                    take(&mut i, 1)?[0] as usize
                };
                stack.push((Value::Str(String::from_utf8_lossy(take(&mut i, n)?).to_string()), 0));
            }
            b'c' | 0x93 => {
                let (module, name) = if op == b'c' {
                    let line = |i: &mut usize| -> std::result::Result<String, String> {
                        let end = p[*i..]
                            .iter()
                            .position(|&c| c == b'\n')
                            .ok_or("truncated pickle (GLOBAL without newline)")?;
                        let s = String::from_utf8_lossy(&p[*i..*i + end]).to_string();
                        *i += end + 1;
                        Ok(s)
                    };
                    let module = line(&mut i)?;
                    (module, line(&mut i)?)
                } else {
                    // STACK_GLOBAL: module and name are the two strings below
                    let (Value::Str(name), Value::Str(module)) =
                        (pop(&mut stack)?.0, pop(&mut stack)?.0)
                    else {
                        return Err("STACK_GLOBAL without two strings".into());
                    };
                    (module, name)
                };
                if !ALLOWED_GLOBALS.iter().any(|(m, n)| *m == module && *n == name) {
                    return Err(format!(
                        "the pickle names `{module}.{name}`, which is not part of a tensor state dict: \
                         refused (nothing was executed)"
                    ));
                }
                stack.push((Value::Global(module, name), 0));
            }
            b')' => stack.push((Value::Tuple(Vec::new()), 1)),
            b']' => stack.push((Value::List(Vec::new()), 1)),
            b'}' => stack.push((Value::Dict(Vec::new()), 1)),
            b't' => {
                let items = pop_mark(&mut stack)?;
                let depth = nest(&items)?;
                stack.push((Value::Tuple(unzip(items)), depth));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let items = stack.split_off(stack.len().checked_sub(n).ok_or("stack underflow")?);
                let depth = nest(&items)?;
                stack.push((Value::Tuple(unzip(items)), depth));
            }
            b'q' | b'r' | 0x94 => {
                let k = if op == 0x94 {
                    memo.len() // MEMOIZE (protocol 4): the next index
                } else if op == b'q' {
                    take(&mut i, 1)?[0] as usize
                } else {
                    let b = take(&mut i, 4)?;
                    u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
                };
                let value = stack.last().ok_or("PUT on empty stack")?;
                copied += nodes(&value.0, budget + 1);
                if copied > budget {
                    return Err(format!(
                        "memo copies more than {budget} values for a {}-byte pickle (a \"billion laughs\" pickle?)",
                        p.len()
                    ));
                }
                memo.insert(k, value.clone());
            }
            b'h' | b'j' => {
                let k = if op == b'h' {
                    take(&mut i, 1)?[0] as usize
                } else {
                    let b = take(&mut i, 4)?;
                    u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
                };
                let value = memo.get(&k).ok_or("GET of unknown memo key")?;
                copied += nodes(&value.0, budget + 1);
                if copied > budget {
                    return Err(format!(
                        "memo copies more than {budget} values for a {}-byte pickle (a \"billion laughs\" pickle?)",
                        p.len()
                    ));
                }
                stack.push(value.clone());
            }
            b'Q' => {
                let pid = pop(&mut stack)?;
                let depth = nest(std::slice::from_ref(&pid))?;
                stack.push((Value::Persistent(Box::new(pid.0)), depth));
            }
            b'R' => {
                let args = pop(&mut stack)?;
                let callable = pop(&mut stack)?;
                stack.push((reduce(callable.0, args.0), 1));
            }
            b'b' => {
                pop(&mut stack)?; // BUILD state (e.g. `_metadata`): ignored
            }
            b'a' | b'e' | b's' | b'u' => {
                let items = match op {
                    b'a' => vec![pop(&mut stack)?],
                    b's' => {
                        let v = pop(&mut stack)?;
                        let k = pop(&mut stack)?;
                        vec![k, v]
                    }
                    _ => pop_mark(&mut stack)?,
                };
                let depth = nest(&items)?;
                let Some((target, target_depth)) = stack.last_mut() else {
                    return Err("stack underflow".into());
                };
                *target_depth = (*target_depth).max(depth);
                match (op, target) {
                    (b'a' | b'e', Value::List(list)) => list.extend(unzip(items)),
                    (b's' | b'u', Value::Dict(dict)) => {
                        let mut it = unzip(items).into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            dict.push((k, v));
                        }
                    }
                    _ => {} // appends to a value we do not interpret
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

/// Elements that views larger than their storage (expanded or overlapping tensors, which
/// `torch.save` keeps as they are) may add up to in one file: 64 Mi elements (256 MB of
/// f32). A view up to its storage's size costs nothing against it (the file holds its
/// bytes); beyond, reading is bounded by this, however small the file (a stride-0
/// "expansion bomb" of 2^40 elements is refused).
pub const OVERLAP_BUDGET_ELEMENTS: i64 = 1 << 26;

/// Checks that a tensor's view lies inside its storage of `elements` elements, and that a
/// view larger than its storage fits in what is left of `budget` (which it then uses up).
fn check_view(
    spec: &TensorSpec,
    elements: i64,
    budget: &mut i64,
) -> std::result::Result<(), String> {
    let storage = format!("its storage `data/{}` holds {elements} elements", spec.key);
    if spec.size.len() != spec.stride.len() {
        return Err(format!("shape {:?} and strides {:?} differ in rank", spec.size, spec.stride));
    }
    if spec.offset < 0 || spec.size.iter().chain(&spec.stride).any(|&d| d < 0) {
        return Err(format!(
            "negative size, stride or offset (shape {:?}, strides {:?}, offset {})",
            spec.size, spec.stride, spec.offset
        ));
    }
    let numel = spec.size.iter().try_fold(1i64, |n, &d| n.checked_mul(d));
    let Some(numel) = numel.filter(|&n| n <= elements.max(0) || n <= *budget) else {
        return Err(format!(
            "shape {:?} has more elements than {storage}, beyond the {OVERLAP_BUDGET_ELEMENTS} \
             elements a file's overlapping views may add up to",
            spec.size
        ));
    };
    if numel > elements {
        *budget -= numel;
    }
    if numel == 0 {
        return Ok(());
    }
    let last = spec.size.iter().zip(&spec.stride).try_fold(spec.offset, |end, (&d, &s)| {
        (d - 1).checked_mul(s).and_then(|reach| end.checked_add(reach))
    });
    match last {
        Some(last) if last < elements => Ok(()),
        _ => Err(format!(
            "shape {:?} with strides {:?} at offset {} reaches past the end: {storage}",
            spec.size, spec.stride, spec.offset
        )),
    }
}

/// The first pickle of a legacy (pre-1.6, non-zip) `torch.save` file: protocol 2, the magic
/// number `0x1950a86a20f9469cfc6c` as a 10-byte `LONG1`, STOP.
const LEGACY_MAGIC: [u8; 15] =
    [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.'];

/// Reads every tensor of a `torch.save` state dict: a zip archive (torch >= 1.6), or the
/// legacy format older files such as pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`
/// use (`_use_new_zipfile_serialization=False`): pickles in a row (magic number, protocol
/// version 1001, system info, the object, the list of storage keys), then each storage as
/// its element count (u64, little-endian) and its bytes.
pub fn read(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let bytes = std::fs::read(path)
        .map_err(|source| TensorIoError::Io { path: path.to_path_buf(), source })?;
    if bytes.starts_with(&LEGACY_MAGIC) {
        return read_legacy(path, &bytes);
    }
    let entries = zip_entries(&bytes).map_err(|e| bad(path, e))?.ok_or_else(|| {
        bad(path, "neither a zip archive nor a legacy torch.save file (no magic number)")
    })?;
    let pkl = entries
        .keys()
        .find(|k| k.ends_with("/data.pkl") || *k == "data.pkl")
        .cloned()
        .ok_or_else(|| bad(path, "no data.pkl"))?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let entry = |name: &str| -> Result<&[u8]> {
        let e = entries.get(name).ok_or_else(|| bad(path, format!("missing zip entry {name}")))?;
        e.offset
            .checked_add(e.size)
            .and_then(|end| bytes.get(e.offset..end))
            .ok_or_else(|| bad(path, format!("truncated zip entry {name}")))
    };
    let root = unpickle(entry(&pkl)?).map_err(|e| bad(path, e))?;
    tensors_of(path, bytes.len(), root, |key| entry(&format!("{prefix}data/{key}")))
}

/// The tensors of a legacy `torch.save` file (see [`read`]).
fn read_legacy(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, Tensor>> {
    let mut at = LEGACY_MAGIC.len();
    let mut next = |what: &str| -> Result<Value> {
        let rest = bytes.get(at..).unwrap_or_default();
        let (value, used) = unpickle_prefix(rest).map_err(|e| bad(path, format!("{what}: {e}")))?;
        at += used;
        Ok(value)
    };
    match next("protocol version")? {
        Value::Int(1001) => {}
        other => return Err(bad(path, format!("legacy protocol version {other:?}, not 1001"))),
    }
    next("system info")?;
    let root = next("the saved object")?;
    let Value::List(keys) = next("storage keys")? else {
        return Err(bad(path, "the legacy storage key list is not a list"));
    };
    // the element size of each storage, from the tensors that view it
    let mut elem_of = HashMap::new();
    if let Value::Dict(items) = &root {
        for (_, value) in items {
            if let Value::Tensor(spec) = value
                && let Some((_, elem)) = storage_kind(&spec.storage_type)
            {
                elem_of.insert(spec.key.clone(), elem);
            }
        }
    }
    let mut storages: HashMap<String, &[u8]> = HashMap::new();
    for key in keys {
        let Value::Str(key) = key else {
            return Err(bad(path, "a legacy storage key is not a string"));
        };
        let elem = *elem_of
            .get(&key)
            .ok_or_else(|| bad(path, format!("storage `{key}` is viewed by no tensor")))?;
        let count = bytes
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .ok_or_else(|| bad(path, format!("storage `{key}`: truncated size")))?;
        let len = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(elem))
            .filter(|&len| len <= bytes.len())
            .ok_or_else(|| bad(path, format!("storage `{key}`: {count} elements")))?;
        let data = bytes
            .get(at + 8..at + 8 + len)
            .ok_or_else(|| bad(path, format!("storage `{key}` runs past the end of the file")))?;
        storages.insert(key, data);
        at += 8 + len;
    }
    tensors_of(path, bytes.len(), root, |key| {
        storages.get(key).copied().ok_or_else(|| bad(path, format!("missing storage `{key}`")))
    })
}

/// The tensors of an unpickled state dict `root` read from a file of `file_len` bytes, their
/// storages' bytes from `data_of`.
fn tensors_of<'b>(
    path: &Path,
    file_len: usize,
    root: Value,
    data_of: impl Fn(&str) -> Result<&'b [u8]>,
) -> Result<BTreeMap<String, Tensor>> {
    let Value::Dict(items) = root else {
        return Err(bad(path, "the pickled object is not a dict of tensors"));
    };
    let mut out = BTreeMap::new();
    let mut budget = OVERLAP_BUDGET_ELEMENTS;
    // each storage is read once, whatever number of tensors view it; a view that is not
    // contiguous is copied, and those copies draw on `copies` (the overlap budget plus the
    // file's size), so many views of one large storage cannot multiply its size
    let mut storages: HashMap<(String, usize), Tensor> = HashMap::new();
    let mut copies = OVERLAP_BUDGET_ELEMENTS.saturating_add(file_len as i64);
    for (key, value) in items {
        let (Value::Str(key), Value::Tensor(spec)) = (key, value) else { continue };
        let (kind, elem) = storage_kind(&spec.storage_type).ok_or_else(|| {
            bad(path, format!("`{key}`: unsupported storage {}", spec.storage_type))
        })?;
        let data = data_of(&spec.key)?;
        let elements = (data.len() / elem) as i64;
        check_view(&spec, elements, &mut budget).map_err(|e| bad(path, format!("`{key}`: {e}")))?;
        let storage = match storages.get(&(spec.key.clone(), elem)) {
            Some(s) if s.kind() == kind => s.shallow_clone(),
            _ => {
                let s = Tensor::f_from_data_size(data, &[elements], kind)?;
                storages.insert((spec.key.clone(), elem), s.shallow_clone());
                s
            }
        };
        let view = storage.f_as_strided(&spec.size, &spec.stride, spec.offset)?;
        if !view.is_contiguous() {
            copies -= view.numel() as i64;
            if copies < 0 {
                return Err(bad(
                    path,
                    format!(
                        "`{key}`: copying its view would exceed what the file's views may copy in all ({OVERLAP_BUDGET_ELEMENTS} elements plus the file's size)"
                    ),
                ));
            }
        }
        out.insert(key, view.f_contiguous()?);
    }
    Ok(out)
}

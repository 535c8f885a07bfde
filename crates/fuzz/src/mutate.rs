//! Byte- and text-level mutations of seed inputs, driven by a small deterministic generator
//! (the same seed gives the same sequence of inputs).

/// xorshift64*: fast, deterministic, good enough to pick mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is mapped to a fixed non-zero state).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Values at the edges of integer ranges, where parsers overflow or mis-size.
const INTERESTING_U64: [u64; 12] = [
    0,
    1,
    0x7F,
    0x80,
    0xFF,
    0xFFFF,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    1 << 40,
    i64::MAX as u64,
    u64::MAX,
];

/// Replacements for numbers and values in text formats (TOML, JSON).
const INTERESTING_TEXT: [&str; 16] = [
    "nan",
    "inf",
    "-inf",
    "-1",
    "0",
    "1e309",
    "-0.0",
    "18446744073709551616",
    "-9223372036854775809",
    "99999999999",
    "\"x\"",
    "[]",
    "{}",
    "true",
    "\"../../etc/passwd\"",
    "\"/\"",
];

/// Largest input produced (bigger inputs only slow the loop down).
pub const MAX_LEN: usize = 1 << 20;

/// One mutated copy of `base`; `others` are used for splicing; `text` adds token-level
/// mutations for text formats.
pub fn mutate(base: &[u8], others: &[Vec<u8>], rng: &mut Rng, text: bool) -> Vec<u8> {
    let mut v = base.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let kinds = if text { 10 } else { 8 };
        match rng.below(kinds) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = [0u8, 0xFF, 0x7F, 0x80, b'.', b'(', b'\n'][rng.below(7)];
            }
            2 => {
                let at = rng.below(v.len() + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(at..at, bytes);
            }
            3 if !v.is_empty() => {
                let at = rng.below(v.len());
                let n = 1 + rng.below((v.len() - at).min(64));
                v.drain(at..at + n);
            }
            4 if !v.is_empty() => {
                let at = rng.below(v.len());
                let n = 1 + rng.below((v.len() - at).min(256));
                let chunk = v[at..at + n].to_vec();
                let to = rng.below(v.len() + 1);
                v.splice(to..to, chunk);
            }
            5 if v.len() >= 8 => {
                let value = INTERESTING_U64[rng.below(INTERESTING_U64.len())];
                let width = [1usize, 2, 4, 8][rng.below(4)];
                let at = rng.below(v.len() - width + 1);
                let bytes =
                    if rng.below(2) == 0 { value.to_le_bytes() } else { value.to_be_bytes() };
                let src = if rng.below(2) == 0 { &bytes[..width] } else { &bytes[8 - width..] };
                v[at..at + width].copy_from_slice(src);
            }
            6 if !v.is_empty() => {
                let keep = rng.below(v.len());
                v.truncate(keep);
            }
            7 if !others.is_empty() => {
                let other = &others[rng.below(others.len())];
                let cut = rng.below(v.len() + 1);
                let from = rng.below(other.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            8 => replace_token(&mut v, rng),
            9 => edit_line(&mut v, rng),
            _ => {}
        }
    }
    v.truncate(MAX_LEN);
    v
}

/// Replaces a run of digits or letters with an interesting value.
fn replace_token(v: &mut Vec<u8>, rng: &mut Rng) {
    let starts: Vec<usize> = (0..v.len())
        .filter(|&i| v[i].is_ascii_alphanumeric() && (i == 0 || !v[i - 1].is_ascii_alphanumeric()))
        .collect();
    if starts.is_empty() {
        return;
    }
    let at = starts[rng.below(starts.len())];
    let end =
        (at..v.len()).find(|&i| !(v[i].is_ascii_alphanumeric() || v[i] == b'.')).unwrap_or(v.len());
    let with = INTERESTING_TEXT[rng.below(INTERESTING_TEXT.len())].as_bytes().to_vec();
    v.splice(at..end, with);
}

/// Deletes or duplicates a line.
fn edit_line(v: &mut Vec<u8>, rng: &mut Rng) {
    let mut bounds = vec![0];
    bounds.extend(v.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i + 1));
    if bounds.len() < 2 {
        return;
    }
    let k = rng.below(bounds.len() - 1);
    let (a, b) = (bounds[k], bounds[k + 1]);
    if rng.below(2) == 0 {
        v.drain(a..b);
    } else {
        let line = v[a..b].to_vec();
        v.splice(b..b, line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_are_deterministic_and_bounded() {
        let seed = b"[train]\nsteps = 10\nlr = 1e-3\n".to_vec();
        let run = |s| {
            let mut rng = Rng::new(s);
            (0..200)
                .map(|_| mutate(&seed, std::slice::from_ref(&seed), &mut rng, true))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        assert!(run(7).iter().all(|m| m.len() <= MAX_LEN));
        assert!(run(7).iter().filter(|m| **m != seed).count() > 150, "most inputs change");
    }
}

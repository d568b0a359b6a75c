//! Input generation: stacked byte and text mutations of valid corpus items, and a reader that turns arbitrary
//! bytes into structured values (sizes, interesting floats), so every input is a byte string that can be saved
//! and replayed.

use pilip::rng::Rng;

/// Numbers that break parsers and arithmetic: signs, zeros, limits, non-finite spellings, overflows.
pub const NUMBER_TOKENS: &[&str] = &[
    "0", "-0", "1", "-1", "2", "3", "0.5", "1e-300", "-1e-300", "1e308", "-1e308", "1e309", "nan", "NaN", "-nan",
    "inf", "-inf", "Infinity", "9223372036854775807", "9223372036854775808", "-9223372036854775808",
    "18446744073709551616", "4294967296", "99999999999999999999999", "0x10", "1_000", "+5", "1e", ".", "-", "",
];

/// Text fragments of the formats under test, spliced in at random places.
pub const TEXT_TOKENS: &[&str] = &[
    "\n", "\r\n", " ", "\t", "\"", "'", "=", ":", ",", "[", "]", "{", "}", "#", "\\", "\0", "é", "\u{feff}",
    "Properties=", "species:S:1:pos:R:3", ":R:3", ":S:1", ":I:1", ":L:1", ":R:0", ":R:-1", ":R:99999999",
    "Lattice=\"", "pbc=\"T T T\"", "pbc=\"F F\"", "energy=", "stress=\"", "forces:R:3", "Cu", "H", "Xx", "[data]",
    "[model]", "[training]", "[loss]", "= [", "= {", "= \"", "true", "false",
];

/// Reads structured values from a byte string, giving zeros once it is exhausted (so every byte string is a
/// valid case).
pub struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data, pos: 0 }
    }
    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    /// 0..n (0 for n = 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            self.u32() as usize % n
        }
    }
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f64 {
        self.u32() as f64 / 2_147_483_648.0 - 1.0
    }
    /// Mostly ordinary values of magnitude `scale`, sometimes an extreme or non-finite one.
    pub fn float(&mut self, scale: f64) -> f64 {
        match self.u8() {
            0 => f64::NAN,
            1 => f64::INFINITY,
            2 => f64::NEG_INFINITY,
            3 => f64::MAX,
            4 => f64::MIN_POSITIVE,
            5 => -0.0,
            6 => 1e15 * self.unit(),
            7 => 1e-12 * self.unit(),
            _ => scale * self.unit(),
        }
    }
}

/// Applies 1–8 random byte-level mutations to `data`; `others` are splice partners.
pub fn mutate_bytes(rng: &mut Rng, data: &mut Vec<u8>, others: &[&[u8]]) {
    for _ in 0..1 + rng.below(8) {
        let n = data.len();
        match rng.below(9) {
            0 if n > 0 => {
                let i = rng.below(n);
                data[i] ^= 1 << rng.below(8);
            }
            1 if n > 0 => {
                let i = rng.below(n);
                data[i] = [0u8, 0xff, 0x7f, 0x80, 0x01, b'0', b'9', b'-', b'.'][rng.below(9)];
            }
            2 => {
                let i = rng.below(n + 1);
                let k = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..k).map(|_| rng.next_u64() as u8).collect();
                data.splice(i..i, bytes);
            }
            3 if n > 0 => {
                let i = rng.below(n);
                let k = 1 + rng.below((n - i).min(64));
                data.drain(i..i + k);
            }
            4 if n > 0 => {
                let i = rng.below(n);
                let k = 1 + rng.below((n - i).min(256));
                let copy = data[i..i + k].to_vec();
                let at = rng.below(n + 1);
                data.splice(at..at, copy);
            }
            5 if n > 0 => data.truncate(rng.below(n)),
            6 if !others.is_empty() => {
                let other = others[rng.below(others.len())];
                let i = rng.below(n + 1);
                let a = rng.below(other.len() + 1);
                let b = (a + rng.below(512)).min(other.len());
                data.truncate(i);
                data.extend_from_slice(&other[a..b]);
            }
            7 if n >= 4 => {
                // An interesting little-endian integer (length fields of binary formats).
                let i = rng.below(n - 3);
                let v: u32 = [0, 1, 0x7f, 0xff, 0xffff, 0x7fff_ffff, 0xffff_ffff, 0x8000_0000][rng.below(8)];
                data[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            _ => {}
        }
    }
}

/// Applies 1–6 token-level mutations to text: numbers replaced by extreme spellings, tokens of the format
/// inserted, whole lines deleted, duplicated or swapped.
pub fn mutate_text(rng: &mut Rng, text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for _ in 0..1 + rng.below(6) {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let li = rng.below(lines.len());
        match rng.below(6) {
            0 | 1 => lines[li] = replace_number(rng, &lines[li]),
            2 => {
                let line = &mut lines[li];
                let mut at = rng.below(line.len() + 1);
                while !line.is_char_boundary(at) {
                    at -= 1;
                }
                line.insert_str(at, TEXT_TOKENS[rng.below(TEXT_TOKENS.len())]);
            }
            3 => {
                lines.remove(li);
            }
            4 => {
                let copy = lines[li].clone();
                lines.insert(rng.below(lines.len() + 1), copy);
            }
            _ => {
                let lj = rng.below(lines.len());
                lines.swap(li, lj);
            }
        }
    }
    let mut out = lines.join("\n");
    if rng.below(2) == 0 {
        out.push('\n');
    }
    out
}

/// Replaces one number-like token of `line` by an extreme spelling.
fn replace_number(rng: &mut Rng, line: &str) -> String {
    let is_num = |c: char| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E');
    let starts: Vec<usize> = line
        .char_indices()
        .filter(|&(i, c)| c.is_ascii_digit() && (i == 0 || !line[..i].ends_with(|p: char| is_num(p))))
        .map(|(i, _)| i)
        .collect();
    let token = NUMBER_TOKENS[rng.below(NUMBER_TOKENS.len())];
    if starts.is_empty() {
        return format!("{line}{token}");
    }
    let s = starts[rng.below(starts.len())];
    let e = line[s..].find(|c: char| !is_num(c)).map_or(line.len(), |k| s + k);
    format!("{}{}{}", &line[..s], token, &line[e..])
}

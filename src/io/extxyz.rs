//! Extended XYZ reader and writer following ASE's conventions.
//!
//! Comment line: `key=value` pairs (values may be quoted), `Lattice="ax ay az bx by bz cx cy cz"` (rows are
//! lattice vectors), `Properties=name:type:ncols:…` (type S, R, I or L), `pbc="T T F"` (defaults to `T T T` when
//! a lattice is given, else `F F F`). Labels are read from configurable keys; stress may have 9 values or 6 in
//! Voigt order xx yy zz yz xz xy.

use crate::elements;
use crate::error::{Error, Result};
use crate::frame::{Frame, Mat3};
use std::fmt::Write as _;
use std::path::Path;

/// Which keys hold the reference labels.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LabelKeys {
    /// Per-frame key of the total energy (eV).
    pub energy: String,
    /// Per-atom column of the forces (eV/Å).
    pub forces: String,
    /// Per-frame key of the stress (eV/Å³, 9 or 6 Voigt values, ASE sign).
    pub stress: String,
}

impl Default for LabelKeys {
    fn default() -> Self {
        LabelKeys { energy: "energy".into(), forces: "forces".into(), stress: "stress".into() }
    }
}

/// Reads all frames of a file.
pub fn read_file(path: &Path, keys: &LabelKeys) -> Result<Vec<Frame>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let frames = parse(&text, &path.display().to_string(), keys)?;
    check_keys_used(&frames, &text, &path.display().to_string(), keys)?;
    Ok(frames)
}

/// Reads structures without requiring any label (for force checks and timing); labels under the default
/// keys are kept if present.
pub fn read_structures(path: &Path) -> Result<Vec<Frame>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse(&text, &path.display().to_string(), &LabelKeys::default())
}

/// A configured label key that appears in no frame is almost always a typo (`energy` vs `REF_energy`):
/// say so and list the keys that do appear. Only the energy key is required to exist somewhere.
fn check_keys_used(frames: &[Frame], text: &str, file: &str, keys: &LabelKeys) -> Result<()> {
    if frames.is_empty() || frames.iter().any(|f| f.energy.is_some()) {
        return Ok(());
    }
    let first_comment = text.lines().nth(1).unwrap_or("");
    let present: Vec<String> =
        tokenize(first_comment).unwrap_or_default().into_iter().map(|(k, _)| k).collect();
    Err(Error::Parse {
        file: file.into(),
        line: 2,
        msg: format!(
            "energy key '{}' not found in any frame; keys on the first comment line: [{}] \
             (set data.keys.energy to the right name)",
            keys.energy,
            present.join(", ")
        ),
    })
}

/// Parses extended XYZ text; `file` is used in error messages only.
pub fn parse(text: &str, file: &str, keys: &LabelKeys) -> Result<Vec<Frame>> {
    let lines: Vec<&str> = text.lines().collect();
    let mut frames = Vec::new();
    let mut i = 0;
    let err = |line: usize, msg: String| Error::Parse { file: file.to_string(), line: line + 1, msg };
    while i < lines.len() {
        if lines[i].trim().is_empty() {
            i += 1;
            continue;
        }
        let n: usize = lines[i]
            .trim()
            .parse()
            .map_err(|_| err(i, format!("expected the number of atoms, found '{}'", lines[i].trim())))?;
        if i + 1 >= lines.len() {
            return Err(err(i, "file ends before the comment line".into()));
        }
        let frame = parse_frame(&lines, i, n, keys).map_err(|(l, m)| err(l, m))?;
        frames.push(frame);
        i += 2 + n;
    }
    Ok(frames)
}

type LineErr = (usize, String);

struct Column {
    name: String,
    kind: char,
    ncols: usize,
}

fn parse_frame(lines: &[&str], start: usize, n: usize, keys: &LabelKeys) -> std::result::Result<Frame, LineErr> {
    let cl = start + 1;
    let pairs = tokenize(lines[cl]).map_err(|m| (cl, m))?;
    let mut frame = Frame::default();
    let mut columns = vec![
        Column { name: "species".into(), kind: 'S', ncols: 1 },
        Column { name: "pos".into(), kind: 'R', ncols: 3 },
    ];
    let mut pbc: Option<[bool; 3]> = None;
    let mut stress_vals: Option<Vec<f64>> = None;
    for (k, v) in pairs {
        if k == "Lattice" {
            let vals = parse_floats(&v).map_err(|m| (cl, format!("Lattice: {m}")))?;
            if vals.len() != 9 {
                return Err((cl, format!("Lattice must have 9 numbers, found {}", vals.len())));
            }
            frame.cell = Some([[vals[0], vals[1], vals[2]], [vals[3], vals[4], vals[5]], [vals[6], vals[7], vals[8]]]);
        } else if k == "Properties" {
            columns = parse_properties(&v).map_err(|m| (cl, m))?;
        } else if k == "pbc" {
            let p: Vec<&str> = v.split_whitespace().collect();
            if p.len() != 3 {
                return Err((cl, format!("pbc must have 3 values (T/F), found '{v}'")));
            }
            let mut b = [false; 3];
            for (a, s) in p.iter().enumerate() {
                b[a] = parse_bool(s).ok_or_else(|| (cl, format!("pbc: expected T or F, found '{s}'")))?;
            }
            pbc = Some(b);
        } else if k == keys.energy {
            let e: f64 = v
                .trim()
                .parse()
                .ok()
                .filter(|e: &f64| e.is_finite())
                .ok_or_else(|| (cl, format!("{k}: expected a finite number, found '{v}'")))?;
            frame.energy = Some(e);
        } else if k == keys.stress {
            let vals = parse_floats(&v).map_err(|m| (cl, format!("{k}: {m}")))?;
            if vals.len() != 9 && vals.len() != 6 {
                return Err((cl, format!("{k}: expected 9 or 6 (Voigt) numbers, found {}", vals.len())));
            }
            stress_vals = Some(vals);
        } else {
            frame.info.push((k, v));
        }
    }
    frame.pbc = pbc.unwrap_or(if frame.cell.is_some() { [true; 3] } else { [false; 3] });
    if frame.pbc.iter().any(|&p| p) && frame.cell.is_none() {
        return Err((cl, "pbc is true along an axis but no Lattice is given".into()));
    }
    if let Some(s) = stress_vals {
        frame.stress = Some(if s.len() == 9 {
            [[s[0], s[1], s[2]], [s[3], s[4], s[5]], [s[6], s[7], s[8]]]
        } else {
            voigt_to_matrix(&[s[0], s[1], s[2], s[3], s[4], s[5]])
        });
    }
    if columns.first().map(|c| c.name.as_str()) != Some("species") || !columns.iter().any(|c| c.name == "pos") {
        return Err((cl, "Properties must start with species:S:1 and contain pos:R:3".into()));
    }
    let width = columns
        .iter()
        .try_fold(0usize, |w, c| w.checked_add(c.ncols))
        .ok_or_else(|| (cl, "Properties: the column counts add up to more than any line can hold".to_string()))?;
    let has_forces = columns.iter().any(|c| c.name == keys.forces);
    // Sized by the lines that exist, not by the count line, which may claim anything.
    let available = n.min(lines.len().saturating_sub(start + 2));
    let mut forces = Vec::with_capacity(if has_forces { available } else { 0 });
    frame.positions.reserve(available);
    frame.numbers.reserve(available);
    for a in 0..n {
        let li = start + 2 + a;
        if li >= lines.len() {
            return Err((
                li.min(lines.len()),
                format!("expected {n} atom lines after the comment line, the file ends after {a}"),
            ));
        }
        let toks: Vec<&str> = lines[li].split_whitespace().collect();
        if toks.len() != width {
            return Err((li, format!("expected {width} columns (from Properties), found {}", toks.len())));
        }
        let mut col = 0;
        for c in &columns {
            let t = &toks[col..col + c.ncols];
            match c.name.as_str() {
                "species" => {
                    let z = elements::atomic_number(t[0])
                        .or_else(|| t[0].parse::<u32>().ok().filter(|z| elements::symbol(*z).is_some()))
                        .ok_or_else(|| (li, format!("unknown element '{}'", t[0])))?;
                    frame.numbers.push(z);
                }
                "pos" => frame.positions.push(vec3(t).map_err(|m| (li, format!("pos: {m}")))?),
                name if name == keys.forces => forces.push(vec3(t).map_err(|m| (li, format!("{name}: {m}")))?),
                _ => {
                    if c.kind == 'R' {
                        for x in t {
                            x.parse::<f64>().map_err(|_| (li, format!("{}: expected a number, found '{x}'", c.name)))?;
                        }
                    }
                }
            }
            col += c.ncols;
        }
    }
    if has_forces {
        frame.forces = Some(forces);
    }
    // A following line that is neither blank nor an atom count means the count was too small.
    let next = start + 2 + n;
    if next < lines.len() && !lines[next].trim().is_empty() && lines[next].trim().parse::<usize>().is_err() {
        return Err((next, format!("expected {n} atoms (from the count line) but found more atom lines")));
    }
    Ok(frame)
}

fn vec3(t: &[&str]) -> std::result::Result<[f64; 3], String> {
    let mut v = [0.0f64; 3];
    for (k, s) in t.iter().enumerate().take(3) {
        v[k] = s.parse().map_err(|_| format!("expected a number, found '{s}'"))?;
        if !v[k].is_finite() {
            return Err(format!("expected a finite number, found '{s}'"));
        }
    }
    Ok(v)
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "T" | "True" | "true" | "1" => Some(true),
        "F" | "False" | "false" | "0" => Some(false),
        _ => None,
    }
}

/// Whitespace-separated finite numbers (a NaN or infinite cell or label is an error in the file, not data).
fn parse_floats(v: &str) -> std::result::Result<Vec<f64>, String> {
    v.split_whitespace()
        .map(|s| s.parse::<f64>().ok().filter(|x| x.is_finite()).ok_or_else(|| format!("expected a finite number, found '{s}'")))
        .collect()
}

fn parse_properties(v: &str) -> std::result::Result<Vec<Column>, String> {
    let parts: Vec<&str> = v.split(':').collect();
    if parts.len() % 3 != 0 {
        return Err(format!("Properties must be name:type:ncols triples, found '{v}'"));
    }
    parts
        .chunks(3)
        .map(|p| {
            let kind = match p[1] {
                "S" | "R" | "I" | "L" => p[1].chars().next().unwrap_or('S'),
                other => return Err(format!("Properties: column '{}' has unknown type '{other}' (expected S, R, I or L)", p[0])),
            };
            let ncols: usize = p[2].parse().map_err(|_| format!("Properties: bad column count '{}' for '{}'", p[2], p[0]))?;
            let expect = match p[0] {
                "species" => Some((1, 'S')),
                "pos" => Some((3, 'R')),
                _ => None,
            };
            if let Some((nc, k)) = expect {
                if nc != ncols || k != kind {
                    return Err(format!("Properties: '{}' must be {}:{}:{}, found {}:{}:{}", p[0], p[0], k, nc, p[0], kind, ncols));
                }
            }
            Ok(Column { name: p[0].to_string(), kind, ncols })
        })
        .collect()
}

/// Splits a comment line into key/value pairs; quoted values keep their spaces. A bare key means `T`.
fn tokenize(line: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        let ks = i;
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            i += 1;
        }
        let key: String = chars[ks..i].iter().collect();
        if i >= chars.len() || chars[i] != '=' {
            out.push((key, "T".into()));
            continue;
        }
        i += 1; // '='
        let value = if i < chars.len() && (chars[i] == '"' || chars[i] == '{') {
            let close = if chars[i] == '"' { '"' } else { '}' };
            i += 1;
            let vs = i;
            while i < chars.len() && chars[i] != close {
                i += 1;
            }
            if i >= chars.len() {
                return Err(format!("unterminated quoted value for key '{key}'"));
            }
            let v: String = chars[vs..i].iter().collect();
            i += 1;
            v
        } else {
            let vs = i;
            while i < chars.len() && !chars[i].is_whitespace() {
                i += 1;
            }
            chars[vs..i].iter().collect()
        };
        out.push((key, value));
    }
    Ok(out)
}

/// Voigt (xx yy zz yz xz xy) to a symmetric 3×3 matrix.
pub fn voigt_to_matrix(v: &[f64; 6]) -> Mat3 {
    [[v[0], v[5], v[4]], [v[5], v[1], v[3]], [v[4], v[3], v[2]]]
}

/// Writes frames in ASE's extended XYZ dialect (labels under the given keys).
pub fn write_file(path: &Path, frames: &[Frame], keys: &LabelKeys) -> Result<()> {
    super::write_atomically(path, to_string(frames, keys).as_bytes())
}

/// Extended XYZ text of `frames` (labels under `keys`).
pub fn to_string(frames: &[Frame], keys: &LabelKeys) -> String {
    let mut s = String::new();
    for f in frames {
        let _ = writeln!(s, "{}", f.len());
        let mut props = String::from("species:S:1:pos:R:3");
        if f.forces.is_some() {
            let _ = write!(props, ":{}:R:3", keys.forces);
        }
        if let Some(c) = &f.cell {
            let _ = write!(s, "Lattice=\"{}\" ", c.iter().flatten().map(|x| format!("{x:?}")).collect::<Vec<_>>().join(" "));
        }
        let _ = write!(s, "Properties={props}");
        if let Some(e) = f.energy {
            let _ = write!(s, " {}={e:?}", keys.energy);
        }
        if let Some(st) = &f.stress {
            let _ = write!(s, " {}=\"{}\"", keys.stress, st.iter().flatten().map(|x| format!("{x:?}")).collect::<Vec<_>>().join(" "));
        }
        for (k, v) in &f.info {
            if v.contains(char::is_whitespace) {
                let _ = write!(s, " {k}=\"{v}\"");
            } else {
                let _ = write!(s, " {k}={v}");
            }
        }
        let b = |p: bool| if p { "T" } else { "F" };
        let _ = writeln!(s, " pbc=\"{} {} {}\"", b(f.pbc[0]), b(f.pbc[1]), b(f.pbc[2]));
        for a in 0..f.len() {
            let p = f.positions[a];
            let _ = write!(s, "{} {:?} {:?} {:?}", elements::symbol(f.numbers[a]).unwrap_or("X"), p[0], p[1], p[2]);
            if let Some(fr) = &f.forces {
                let _ = write!(s, " {:?} {:?} {:?}", fr[a][0], fr[a][1], fr[a][2]);
            }
            s.push('\n');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "2\nLattice=\"4 0 0 0 4 0 0.5 0 4\" Properties=species:S:1:pos:R:3:REF_forces:R:3 REF_energy=-1.5 stress=\"1 2 3 4 5 6\" config_type=\"bulk a\" pbc=\"T T F\"\nCu 0 0 0 0.1 0.2 0.3\nH 1 1 1 -0.1 -0.2 -0.3\n";

    fn keys() -> LabelKeys {
        LabelKeys { energy: "REF_energy".into(), forces: "REF_forces".into(), stress: "stress".into() }
    }

    #[test]
    fn reads_ase_conventions_and_round_trips() {
        let f = parse(GOOD, "t.xyz", &keys()).unwrap();
        assert_eq!(f.len(), 1);
        let fr = &f[0];
        assert_eq!(fr.numbers, vec![29, 1]);
        assert_eq!(fr.energy, Some(-1.5));
        assert_eq!(fr.pbc, [true, true, false]);
        assert_eq!(fr.cell.unwrap()[2], [0.5, 0.0, 4.0]);
        assert_eq!(fr.forces.as_ref().unwrap()[1], [-0.1, -0.2, -0.3]);
        // Voigt xx yy zz yz xz xy
        let s = fr.stress.unwrap();
        assert_eq!((s[0][0], s[1][1], s[2][2], s[1][2], s[0][2], s[0][1]), (1.0, 2.0, 3.0, 4.0, 5.0, 6.0));
        assert_eq!(fr.info, vec![("config_type".to_string(), "bulk a".to_string())]);
        let again = parse(&to_string(&f, &keys()), "w.xyz", &keys()).unwrap();
        assert_eq!(again, f);
    }

    fn err_of(text: &str) -> String {
        parse(text, "bad.xyz", &keys()).unwrap_err().to_string()
    }

    #[test]
    fn malformed_inputs_name_file_line_and_expectation() {
        let missing_col = GOOD.replace("H 1 1 1 -0.1 -0.2 -0.3", "H 1 1 1 -0.1 -0.2");
        assert_eq!(err_of(&missing_col), "bad.xyz:4: expected 7 columns (from Properties), found 6");
        let bad_number = GOOD.replace("H 1 1 1", "H 1 x 1");
        assert_eq!(err_of(&bad_number), "bad.xyz:4: pos: expected a number, found 'x'");
        let too_few = GOOD.replacen("2\n", "3\n", 1);
        assert!(err_of(&too_few).starts_with("bad.xyz:5: expected 3 atom lines"), "{}", err_of(&too_few));
        let too_many = GOOD.replacen("2\n", "1\n", 1);
        assert_eq!(err_of(&too_many), "bad.xyz:4: expected 1 atoms (from the count line) but found more atom lines");
        let bad_count = GOOD.replacen("2\n", "two\n", 1);
        assert_eq!(err_of(&bad_count), "bad.xyz:1: expected the number of atoms, found 'two'");
        let bad_elem = GOOD.replace("H 1 1 1", "Qq 1 1 1");
        assert_eq!(err_of(&bad_elem), "bad.xyz:4: unknown element 'Qq'");
        let bad_type = GOOD.replace("REF_forces:R:3", "REF_forces:X:3");
        assert!(err_of(&bad_type).contains("unknown type 'X'"));
        let bad_lattice = GOOD.replace("Lattice=\"4 0 0 0 4 0 0.5 0 4\"", "Lattice=\"4 0 0 0 4 0\"");
        assert_eq!(err_of(&bad_lattice), "bad.xyz:2: Lattice must have 9 numbers, found 6");
    }

    #[test]
    fn unknown_energy_key_lists_present_keys() {
        let dir = std::env::temp_dir().join(format!("pilip_xyz_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("k.xyz");
        std::fs::write(&p, GOOD).unwrap();
        let e = read_file(&p, &LabelKeys::default()).unwrap_err().to_string();
        assert!(e.contains("energy key 'energy' not found in any frame"), "{e}");
        assert!(e.contains("REF_energy"), "{e}");
        assert!(read_file(&p, &keys()).is_ok());
    }
}

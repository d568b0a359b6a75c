//! Loading and splitting the data named in the `[data]` config section.

use crate::config::{DataConfig, Split};
use crate::error::{Error, Result};
use crate::frame::Frame;
use crate::io::extxyz;
use crate::rng::Rng;

/// The three sets of a run.
#[derive(Clone, Debug, Default)]
pub struct Splits {
    /// Training structures (force labels possibly dropped, `train_forces_fraction`).
    pub train: Vec<Frame>,
    /// Validation structures (early stopping, schedule, `best.ckpt`); never empty.
    pub valid: Vec<Frame>,
    /// Held-out test structures; empty when the config asks for no test set.
    pub test: Vec<Frame>,
    /// Indices of `train` into the main file.
    pub train_idx: Vec<usize>,
    /// Indices of `valid` into the main file (empty for a separate file).
    pub valid_idx: Vec<usize>,
    /// Indices of `test` into the main file (empty for a separate file).
    pub test_idx: Vec<usize>,
}

/// Reads the data files and splits them as configured.
pub fn load(cfg: &DataConfig) -> Result<Splits> {
    let all = extxyz::read_file(&cfg.file, &cfg.keys)?;
    if all.is_empty() {
        return Err(Error::invalid(format!("{}: no structures found", cfg.file.display())));
    }
    let n = all.len();
    let separate_valid = cfg.valid_file.is_some();
    let separate_test = cfg.test_file.is_some();
    // A fraction of 0 asks for none (only meaningful for the test set: validation is required below);
    // any other fraction gives at least one structure.
    let count = |explicit: usize, frac: f64, separate: bool| {
        if separate {
            0
        } else if explicit > 0 {
            explicit
        } else if frac == 0.0 {
            0
        } else {
            ((n as f64) * frac).round().max(1.0) as usize
        }
    };
    let n_valid = count(cfg.n_valid, cfg.valid_fraction, separate_valid);
    let n_test = count(cfg.n_test, cfg.test_fraction, separate_test);
    let n_train = if cfg.n_train > 0 { cfg.n_train } else { n.saturating_sub(n_valid + n_test) };
    if n_train == 0 || n_train + n_valid + n_test > n {
        return Err(Error::Config(format!(
            "data: {} has {n} structures but the split asks for {n_train} train + {n_valid} valid + {n_test} test",
            cfg.file.display()
        )));
    }
    let mut order: Vec<usize> = (0..n).collect();
    // "contiguous" keeps file order: train first, validation right after, test at the end (a later block).
    if cfg.split == Split::Random {
        Rng::new(cfg.split_seed).shuffle(&mut order);
    }
    let (train_idx, valid_idx, test_idx) =
        (order[..n_train].to_vec(), order[n_train..n_train + n_valid].to_vec(), order[n - n_test..].to_vec());
    let pick = |idx: &[usize]| idx.iter().map(|&i| all[i].clone()).collect::<Vec<_>>();
    let mut s = Splits {
        train: pick(&train_idx),
        valid: pick(&valid_idx),
        test: pick(&test_idx),
        train_idx,
        valid_idx,
        test_idx,
    };
    if let Some(p) = &cfg.valid_file {
        s.valid = extxyz::read_file(p, &cfg.keys)?;
    }
    if let Some(p) = &cfg.test_file {
        s.test = extxyz::read_file(p, &cfg.keys)?;
    }
    if s.valid.is_empty() {
        return Err(Error::Config(
            "data: the validation set is empty; set data.n_valid or data.valid_fraction > 0, or data.valid_file \
             (validation drives early stopping and best.ckpt)"
                .into(),
        ));
    }
    if cfg.train_forces_fraction < 1.0 {
        // keep forces on a seeded subset of the training structures
        let keep = (s.train.len() as f64 * cfg.train_forces_fraction).round() as usize;
        let mut idx: Vec<usize> = (0..s.train.len()).collect();
        Rng::new(cfg.split_seed ^ 0x5eed).shuffle(&mut idx);
        for &i in &idx[keep..] {
            s.train[i].forces = None;
        }
    }
    Ok(s)
}

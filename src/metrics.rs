//! Error metrics of a model against reference labels (energies per atom, force components, stress).

use crate::frame::Frame;
use crate::model::{Environments, Model};
use std::borrow::Borrow;
use crate::prediction::Prediction;
use rayon::prelude::*;
use serde::Serialize;

/// Errors in the units users read: meV/atom, meV per structure, meV/Å, meV/Å³. `None` where no label exists.
#[allow(non_snake_case)] // the JSON keys users script against spell Å as A
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Metrics {
    /// Structures compared.
    pub n_structures: usize,
    /// Energy MAE per atom, meV/atom.
    pub energy_mae_mev_per_atom: Option<f64>,
    /// Energy RMSE per atom, meV/atom.
    pub energy_rmse_mev_per_atom: Option<f64>,
    /// Energy MAE per structure, meV.
    pub energy_mae_mev: Option<f64>,
    /// Energy RMSE per structure, meV.
    pub energy_rmse_mev: Option<f64>,
    /// Force-component MAE, meV/Å.
    pub forces_mae_mev_per_A: Option<f64>,
    /// Force-component RMSE, meV/Å.
    pub forces_rmse_mev_per_A: Option<f64>,
    /// Stress-component MAE, meV/Å³.
    pub stress_mae_mev_per_A3: Option<f64>,
    /// Stress-component RMSE, meV/Å³.
    pub stress_rmse_mev_per_A3: Option<f64>,
    /// Pearson correlation of predicted and reference force components (how much force "shape" is learnt).
    pub forces_correlation: Option<f64>,
    /// Force-component RMSE (meV/Å) per element symbol: where the error comes from.
    pub forces_rmse_mev_per_A_by_element: std::collections::BTreeMap<String, f64>,
}

#[derive(Default)]
struct Acc {
    n: usize,
    abs: f64,
    sq: f64,
}
impl Acc {
    fn add(&mut self, d: f64) {
        self.n += 1;
        self.abs += d.abs();
        self.sq += d * d;
    }
    fn mae(&self) -> Option<f64> {
        (self.n > 0).then(|| 1000.0 * self.abs / self.n as f64)
    }
    fn rmse(&self) -> Option<f64> {
        (self.n > 0).then(|| 1000.0 * (self.sq / self.n as f64).sqrt())
    }
}

/// Predictions for all frames, in parallel over groups of structures whose atoms go through the networks
/// together ([`Model::predict_batch`]).
pub fn predict_all(model: &Model, frames: &[Frame]) -> crate::error::Result<Vec<Prediction>> {
    predict_in_groups(model, frames.len(), |ids| ids.map(|i| model.frame_environments(&frames[i])).collect())
}

/// Structures per group of [`predict_in_groups`].
const PREDICTION_GROUP: usize = 8;

/// Predictions for structures `0..n`, in parallel over groups of [`PREDICTION_GROUP`] whose environments
/// `environments(ids)` supplies (built, or kept from an earlier call as the trainer's validation does).
pub fn predict_in_groups<E: Borrow<Environments>>(
    model: &Model,
    n: usize,
    environments: impl Fn(std::ops::Range<usize>) -> crate::error::Result<Vec<E>> + Sync,
) -> crate::error::Result<Vec<Prediction>> {
    let starts: Vec<usize> = (0..n).step_by(PREDICTION_GROUP).collect();
    let groups: Vec<Vec<Prediction>> = starts
        .par_iter()
        .map(|&start| {
            let envs = environments(start..(start + PREDICTION_GROUP).min(n))?;
            Ok(model.predict_batch(&envs.iter().map(|e| e.borrow()).collect::<Vec<_>>()))
        })
        .collect::<crate::error::Result<_>>()?;
    Ok(groups.into_iter().flatten().collect())
}

/// Predictions of any predictor (e.g. an exported model through the runtime) for all frames, in parallel.
pub fn predict_all_with(
    frames: &[Frame],
    predict: impl Fn(&Frame) -> crate::error::Result<Prediction> + Sync + Send,
) -> crate::error::Result<Vec<Prediction>> {
    frames.par_iter().map(predict).collect()
}

/// Errors of `preds` against the labels of `frames` (same order).
pub fn compute(frames: &[Frame], preds: &[Prediction]) -> Metrics {
    compute_pairs(frames.iter().zip(preds))
}

/// [`compute`] over pairs of a structure and its prediction.
fn compute_pairs<'a>(pairs: impl Iterator<Item = (&'a Frame, &'a Prediction)>) -> Metrics {
    let mut n_structures = 0;
    let (mut ea, mut es, mut fa, mut sa) = (Acc::default(), Acc::default(), Acc::default(), Acc::default());
    let (mut sx, mut sy, mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let mut by_element: std::collections::BTreeMap<u32, Acc> = Default::default();
    for (f, p) in pairs {
        n_structures += 1;
        if let Some(e) = f.energy {
            ea.add((p.energy - e) / f.len() as f64);
            es.add(p.energy - e);
        }
        if let Some(fr) = &f.forces {
            for ((a, b), z) in fr.iter().zip(&p.forces).zip(&f.numbers) {
                for k in 0..3 {
                    fa.add(b[k] - a[k]);
                    by_element.entry(*z).or_default().add(b[k] - a[k]);
                    sx += a[k];
                    sy += b[k];
                    sxx += a[k] * a[k];
                    syy += b[k] * b[k];
                    sxy += a[k] * b[k];
                }
            }
        }
        if let (Some(s), Some(ps)) = (&f.stress, &p.stress) {
            for a in 0..3 {
                for b in 0..3 {
                    sa.add(ps[a][b] - s[a][b]);
                }
            }
        }
    }
    let corr = (fa.n > 1).then(|| {
        let n = fa.n as f64;
        let cov = sxy / n - sx * sy / (n * n);
        let vx = sxx / n - sx * sx / (n * n);
        let vy = syy / n - sy * sy / (n * n);
        if vx > 0.0 && vy > 0.0 { cov / (vx * vy).sqrt() } else { 0.0 }
    });
    Metrics {
        n_structures,
        energy_mae_mev_per_atom: ea.mae(),
        energy_rmse_mev_per_atom: ea.rmse(),
        energy_mae_mev: es.mae(),
        energy_rmse_mev: es.rmse(),
        forces_mae_mev_per_A: fa.mae(),
        forces_rmse_mev_per_A: fa.rmse(),
        stress_mae_mev_per_A3: sa.mae(),
        stress_rmse_mev_per_A3: sa.rmse(),
        forces_correlation: corr,
        forces_rmse_mev_per_A_by_element: by_element
            .iter()
            .filter_map(|(z, acc)| Some((crate::elements::symbol(*z)?.to_string(), acc.rmse()?)))
            .collect(),
    }
}

/// The metrics of one group of structures of [`compute_by`].
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Group {
    /// The value of the grouping key these structures share (`(none)`: structures without the key).
    pub value: String,
    /// The errors of the group's structures alone.
    #[serde(flatten)]
    pub metrics: Metrics,
    /// The group's share of the summed absolute force-component error of all structures (0–1): where the error
    /// comes from, as opposed to how large it is per component.
    pub forces_abs_error_share: Option<f64>,
}

/// The metrics of each group of structures that share the value of the per-frame key `key` of the extended XYZ
/// comment line (e.g. `config_type`; a repeated key counts by its last value, as ASE reads it), sorted by value;
/// structures without the key form the group `(none)`. An error names the keys the structures do have when none
/// has `key` (a misspelt key would otherwise give one group of everything).
pub fn compute_by(frames: &[Frame], preds: &[Prediction], key: &str) -> Result<Vec<Group>, String> {
    let value_of = |f: &Frame| f.info.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    if !frames.iter().any(|f| value_of(f).is_some()) {
        let keys: std::collections::BTreeSet<&str> = frames.iter().flat_map(|f| f.info.iter().map(|(k, _)| k.as_str())).collect();
        let present = if keys.is_empty() { "none".to_string() } else { keys.into_iter().collect::<Vec<_>>().join(", ") };
        return Err(format!("no structure has the key '{key}' (per-structure keys present: {present})"));
    }
    let mut members: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
    for (i, f) in frames.iter().enumerate().take(preds.len()) {
        members.entry(value_of(f).unwrap_or_else(|| "(none)".into())).or_default().push(i);
    }
    let abs_error = |of: &[usize], m: &Metrics| {
        let components: usize = of.iter().filter_map(|&i| frames[i].forces.as_ref()).map(|v| 3 * v.len()).sum();
        m.forces_mae_mev_per_A.map(|mae| mae * components as f64)
    };
    let groups: Vec<(String, Metrics, Option<f64>)> = members
        .into_iter()
        .map(|(value, of)| {
            let metrics = compute_pairs(of.iter().map(|&i| (&frames[i], &preds[i])));
            let summed = abs_error(&of, &metrics);
            (value, metrics, summed)
        })
        .collect();
    let total: f64 = groups.iter().filter_map(|g| g.2).sum();
    Ok(groups
        .into_iter()
        .map(|(value, metrics, summed)| Group { value, metrics, forces_abs_error_share: summed.filter(|_| total > 0.0).map(|a| a / total) })
        .collect())
}

/// The text table of [`compute_by`]'s groups (`pilip eval --by KEY`): one row per group, errors in meV/atom and
/// meV/Å ("–" where the group has no such label), and the group's share of the summed absolute force error.
pub fn group_table(key: &str, groups: &[Group]) -> String {
    let cell = |x: Option<f64>, digits: usize| x.map_or("–".to_string(), |v| format!("{v:.digits$}"));
    let width = groups.iter().map(|g| g.value.chars().count()).max().unwrap_or(0).max(key.chars().count()).max(5);
    let mut out = format!(
        "by {key}:\n{:<width$} {:>10} {:>14} {:>14} {:>13} {:>13} {:>9}\n",
        "group", "structures", "E MAE meV/at", "E RMSE meV/at", "F MAE meV/Å", "F RMSE meV/Å", "F share"
    );
    for g in groups {
        let m = &g.metrics;
        let share = g.forces_abs_error_share.map_or("–".to_string(), |s| format!("{:.1} %", 100.0 * s));
        out += &format!(
            "{:<width$} {:>10} {:>14} {:>14} {:>13} {:>13} {:>9}\n",
            g.value,
            m.n_structures,
            cell(m.energy_mae_mev_per_atom, 3),
            cell(m.energy_rmse_mev_per_atom, 3),
            cell(m.forces_mae_mev_per_A, 2),
            cell(m.forces_rmse_mev_per_A, 2),
            share
        );
    }
    out
}

impl Metrics {
    /// One human line with units.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let (Some(m), Some(r)) = (self.energy_mae_mev_per_atom, self.energy_rmse_mev_per_atom) {
            parts.push(format!("E MAE {m:.3} RMSE {r:.3} meV/atom"));
        }
        if let (Some(m), Some(r)) = (self.forces_mae_mev_per_A, self.forces_rmse_mev_per_A) {
            parts.push(format!("F MAE {m:.2} RMSE {r:.2} meV/Å"));
        }
        if let (Some(m), Some(r)) = (self.stress_mae_mev_per_A3, self.stress_rmse_mev_per_A3) {
            parts.push(format!("S MAE {m:.3} RMSE {r:.3} meV/Å³"));
        }
        parts.join(" | ")
    }

    /// The force RMSE per element as one human line (`F RMSE by element: C 12.47, H 6.62 meV/Å`), where the
    /// structures have more than one element: which atoms carry the error.
    pub fn by_element_line(&self) -> Option<String> {
        let by = &self.forces_rmse_mev_per_A_by_element;
        (by.len() > 1).then(|| {
            let parts: Vec<String> = by.iter().map(|(z, r)| format!("{z} {r:.2}")).collect();
            format!("F RMSE by element: {} meV/Å", parts.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per-element force errors: an error of 3 meV/Å on every component of the carbon and 0.3 on one of the
    /// hydrogen's three give RMSEs of 3 and sqrt(0.09/3); one element alone prints no per-element line.
    #[test]
    fn force_errors_per_element() {
        let reference = vec![[0.1, -0.2, 0.3], [0.0, 0.5, -0.5]];
        let frame = Frame { numbers: vec![6, 1], positions: vec![[0.0; 3], [1.1, 0.0, 0.0]], forces: Some(reference.clone()), ..Default::default() };
        let mut forces = reference;
        forces[0].iter_mut().for_each(|f| *f += 0.003);
        forces[1][2] -= 0.0003;
        let pred = Prediction { energy: 0.0, atomic_energies: vec![0.0; 2], forces, virial: [[0.0; 3]; 3], stress: None };
        let m = compute(std::slice::from_ref(&frame), std::slice::from_ref(&pred));
        let by = &m.forces_rmse_mev_per_A_by_element;
        assert!((by["C"] - 3.0).abs() < 1e-9 && (by["H"] - (0.09f64 / 3.0).sqrt()).abs() < 1e-9, "{by:?}");
        assert_eq!(m.by_element_line().as_deref(), Some("F RMSE by element: C 3.00, H 0.17 meV/Å"));
        let carbon = Frame { numbers: vec![6, 6], ..frame };
        assert_eq!(compute(&[carbon], &[pred]).by_element_line(), None);
    }

    /// Groups by a per-structure key: each group's metrics are those of its structures alone, the force-error
    /// shares add up to one in proportion to each group's summed |ΔF|, structures without the key form
    /// `(none)`, and a key no structure has is an error that lists the keys present.
    #[test]
    fn metrics_by_group() {
        let frame = |e: f64, f: f64, tag: Option<&str>| Frame {
            numbers: vec![1, 1],
            positions: vec![[0.0; 3], [0.8, 0.0, 0.0]],
            energy: Some(e),
            forces: Some(vec![[f, 0.0, 0.0], [-f, 0.0, 0.0]]),
            info: tag.map(|t| vec![("config_type".to_string(), t.to_string())]).unwrap_or_default(),
            ..Default::default()
        };
        let frames = [frame(-1.0, 0.5, Some("bulk")), frame(-2.0, 0.1, Some("melt")), frame(-3.0, 0.2, Some("melt")), frame(-4.0, 0.0, None)];
        // predictions off by 0.002 eV/atom and 0.001 eV/Å per component (bulk, no key), 0.01 and 0.004 (melt)
        let preds: Vec<Prediction> = frames
            .iter()
            .map(|f| {
                let melt = f.info.iter().any(|(_, v)| v == "melt");
                let (de, df) = if melt { (0.01, 0.004) } else { (0.002, 0.001) };
                let forces = f.forces.as_ref().unwrap().iter().map(|v| [v[0] + df, v[1] + df, v[2] - df]).collect();
                Prediction { energy: f.energy.unwrap() + 2.0 * de, atomic_energies: vec![0.0; 2], forces, virial: [[0.0; 3]; 3], stress: None }
            })
            .collect();
        let groups = compute_by(&frames, &preds, "config_type").unwrap();
        let values: Vec<&str> = groups.iter().map(|g| g.value.as_str()).collect();
        assert_eq!(values, ["(none)", "bulk", "melt"]);
        let melt = &groups[2].metrics;
        assert_eq!(melt.n_structures, 2);
        assert!((melt.energy_mae_mev_per_atom.unwrap() - 10.0).abs() < 1e-9 && (melt.forces_mae_mev_per_A.unwrap() - 4.0).abs() < 1e-9);
        assert_eq!(melt, &compute(&frames[1..3], &preds[1..3]));
        // summed |ΔF|: 6 components × 1 meV/Å for bulk and for (none), 12 × 4 for melt
        let shares: Vec<f64> = groups.iter().map(|g| g.forces_abs_error_share.unwrap()).collect();
        for (s, want) in shares.iter().zip([6.0 / 60.0, 6.0 / 60.0, 48.0 / 60.0]) {
            assert!((s - want).abs() < 1e-12, "{shares:?}");
        }
        let err = compute_by(&frames, &preds, "config_typ").unwrap_err();
        assert!(err.contains("'config_typ'") && err.contains("config_type"), "{err}");
    }
}

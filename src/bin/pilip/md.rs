//! NVE molecular dynamics for the stability check (`pilip md-stability`): velocity Verlet from a Maxwell–
//! Boltzmann start, watching bond lengths (molecules) or the energy drift (periodic systems).
//!
//! This is the robustness experiment of the PIWSL paper: a potential trained on few structures often runs into
//! unphysical regions; the time until that happens, and the energy drift before, measure how usable it is.

use pilip::error::{Error, Result};
use pilip::frame::{Frame, Vec3};
use pilip::prediction::Prediction;
use pilip::rng::Rng;

use pilip::units::{EV_PER_AMU, KB};

#[derive(Clone, Debug, serde::Serialize)]
pub struct MdOptions {
    pub temperature: f64,
    /// fs
    pub timestep: f64,
    /// ps
    pub time: f64,
    pub seeds: usize,
    /// Å: a molecule is unstable once any bond length deviates more than this from its starting value.
    pub bond_tolerance: f64,
    /// eV/atom: a periodic system is unstable once |E(t) − E(0)| per atom exceeds this.
    pub drift_threshold: f64,
    /// Record the energy every this many fs.
    pub record_every: f64,
}

/// Result of one trajectory.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SeedResult {
    pub seed: u64,
    /// ps until the first instability, or the full simulated time.
    pub stable_time: f64,
    pub completed: bool,
    /// What ended the run early.
    pub failure: Option<String>,
    /// (E(end) − E(0)) per atom, eV, at the end of the stable part.
    pub energy_drift_per_atom: f64,
    /// Least-squares slope of the total energy per atom over the stable part, eV/atom/ps.
    pub drift_rate_per_atom_ps: f64,
    pub max_bond_deviation: Option<f64>,
    pub mean_temperature: f64,
    /// (t in ps, (E(t) − E(0)) per atom in eV)
    pub energy_trace: Vec<(f64, f64)>,
}

/// Bonded pairs of a molecule: closer than 1.25 × the sum of covalent radii.
pub fn bonds(frame: &Frame) -> Vec<(usize, usize, f64)> {
    let mut out = Vec::new();
    for i in 0..frame.len() {
        for j in i + 1..frame.len() {
            let r = distance(&frame.positions[i], &frame.positions[j]);
            if r < bond_cutoff(frame, i, j) {
                out.push((i, j, r));
            }
        }
    }
    out
}

fn bond_cutoff(frame: &Frame, i: usize, j: usize) -> f64 {
    1.25 * (pilip::elements::covalent_radius(frame.numbers[i]) + pilip::elements::covalent_radius(frame.numbers[j]))
}

/// What became of a stretched bond i–j: if one of its atoms is now bonded to an atom it was not bonded to at the
/// start, the atoms rearranged (a proton transfer, for instance from a hydroxyl to a neighbouring carbonyl oxygen)
/// rather than fell apart. Said in the failure message, because the two call for different remedies: a
/// rearrangement is a wrong barrier where the data stop, a fragment a potential that lets the molecule go.
fn new_partner(x: &Frame, start: &[(usize, usize, f64)], i: usize, j: usize) -> Option<String> {
    let bonded_at_start = |a: usize, b: usize| start.iter().any(|&(p, q, _)| (p, q) == (a.min(b), a.max(b)));
    let name = |a: usize| pilip::elements::symbol(x.numbers[a]).unwrap_or("?");
    [(j, i), (i, j)].into_iter().find_map(|(moved, left)| {
        (0..x.len())
            .filter(|&k| k != moved && k != left && !bonded_at_start(moved, k))
            .map(|k| (k, distance(&x.positions[moved], &x.positions[k])))
            .filter(|&(k, r)| r < bond_cutoff(x, moved, k))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(k, r)| format!("{} {moved} now bonded to {} {k} instead of {} {left}, {r:.2} Å: a rearrangement, not a fragment", name(moved), name(k), name(left)))
    })
}

fn distance(a: &Vec3, b: &Vec3) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

/// Runs `options.seeds` NVE trajectories of `frame` with forces from `predict`.
pub fn run(frame: &Frame, options: &MdOptions, predict: &(dyn Fn(&Frame) -> Result<Prediction> + Sync)) -> Result<Vec<SeedResult>> {
    let masses: Vec<f64> = frame
        .numbers
        .iter()
        .map(|&z| pilip::elements::mass(z).ok_or_else(|| Error::invalid(format!("no atomic mass known for Z = {z}"))))
        .collect::<Result<_>>()?;
    if !(options.timestep > 0.0 && options.time > 0.0 && options.temperature >= 0.0) {
        return Err(Error::invalid("--timestep and --time-ps must be > 0 and --temperature ≥ 0"));
    }
    let periodic = frame.is_fully_periodic();
    let bond_list = if periodic { Vec::new() } else { bonds(frame) };
    (0..options.seeds as u64).map(|seed| trajectory(frame, &masses, &bond_list, options, seed, predict)).collect()
}

fn trajectory(
    frame: &Frame,
    masses: &[f64],
    bond_list: &[(usize, usize, f64)],
    o: &MdOptions,
    seed: u64,
    predict: &(dyn Fn(&Frame) -> Result<Prediction> + Sync),
) -> Result<SeedResult> {
    let n = frame.len();
    let mut rng = Rng::new(1000 + seed);
    // Maxwell–Boltzmann velocities (Å/fs), centre-of-mass motion removed, rescaled to exactly T (3N − 3 dof).
    let mut v: Vec<Vec3> = masses.iter().map(|m| {
        let s = (KB * o.temperature / m * EV_PER_AMU).sqrt();
        [s * rng.normal(), s * rng.normal(), s * rng.normal()]
    }).collect();
    let mtot: f64 = masses.iter().sum();
    let vcm: Vec3 = std::array::from_fn(|a| v.iter().zip(masses).map(|(vi, m)| m * vi[a]).sum::<f64>() / mtot);
    v.iter_mut().for_each(|vi| (0..3).for_each(|a| vi[a] -= vcm[a]));
    let kinetic = |v: &[Vec3]| -> f64 {
        v.iter().zip(masses).map(|(vi, m)| 0.5 * m * (vi[0] * vi[0] + vi[1] * vi[1] + vi[2] * vi[2])).sum::<f64>() / EV_PER_AMU
    };
    let dof = (3 * n).saturating_sub(3).max(1) as f64;
    let k0 = kinetic(&v);
    if k0 > 0.0 {
        let scale = (0.5 * dof * KB * o.temperature / k0).sqrt();
        v.iter_mut().for_each(|vi| vi.iter_mut().for_each(|x| *x *= scale));
    }
    let mut x = frame.clone();
    let mut p = predict(&x)?;
    let e0 = p.energy + kinetic(&v);
    let dt = o.timestep;
    let steps = (o.time * 1000.0 / dt).round() as usize;
    let record = ((o.record_every / dt).round() as usize).max(1);
    let mut trace = vec![(0.0, 0.0)];
    let (mut t_sum, mut t_count) = (0.0, 0usize);
    let mut max_bond_dev: f64 = 0.0;
    let mut failure = None;
    let mut stable_steps = steps;
    for step in 1..=steps {
        for i in 0..n {
            let a = EV_PER_AMU / masses[i];
            for c in 0..3 {
                v[i][c] += 0.5 * dt * a * p.forces[i][c];
                x.positions[i][c] += dt * v[i][c];
            }
        }
        p = match predict(&x) {
            Ok(p) => p,
            Err(e) => {
                failure = Some(format!("the model failed at {:.3} ps: {e}", step as f64 * dt / 1000.0));
                stable_steps = step - 1;
                break;
            }
        };
        for i in 0..n {
            let a = EV_PER_AMU / masses[i];
            for c in 0..3 {
                v[i][c] += 0.5 * dt * a * p.forces[i][c];
            }
        }
        let kin = kinetic(&v);
        let de = (p.energy + kin - e0) / n as f64;
        t_sum += 2.0 * kin / (dof * KB);
        t_count += 1;
        if step % record == 0 {
            trace.push((step as f64 * dt / 1000.0, de));
        }
        let mut broken = None;
        for &(i, j, r0) in bond_list {
            let r = distance(&x.positions[i], &x.positions[j]);
            let dev = (r - r0).abs();
            max_bond_dev = max_bond_dev.max(dev);
            if dev > o.bond_tolerance && broken.is_none() {
                let how = if r > r0 { "stretched" } else { "compressed" };
                let rearranged = if r > r0 { new_partner(&x, bond_list, i, j) } else { None };
                let rearranged = rearranged.map(|t| format!(" ({t})")).unwrap_or_default();
                broken = Some(format!("bond {i}-{j} {how} from {r0:.2} to {r:.2} Å{rearranged}"));
            }
        }
        if bond_list.is_empty() && (!de.is_finite() || de.abs() > o.drift_threshold) {
            broken = Some(format!("energy drift {de:.3e} eV/atom exceeds {} eV/atom", o.drift_threshold));
        }
        if !de.is_finite() && broken.is_none() {
            broken = Some("the energy is not finite".into());
        }
        if let Some(why) = broken {
            failure = Some(format!("{why} at {:.3} ps", step as f64 * dt / 1000.0));
            stable_steps = step;
            trace.push((step as f64 * dt / 1000.0, de));
            break;
        }
    }
    let (slope, last) = drift_fit(&trace);
    Ok(SeedResult {
        seed,
        stable_time: stable_steps as f64 * dt / 1000.0,
        completed: failure.is_none(),
        failure,
        energy_drift_per_atom: last,
        drift_rate_per_atom_ps: slope,
        max_bond_deviation: (!bond_list.is_empty()).then_some(max_bond_dev),
        mean_temperature: if t_count > 0 { t_sum / t_count as f64 } else { o.temperature },
        energy_trace: trace,
    })
}

/// Least-squares slope of (t, ΔE) and the last ΔE.
fn drift_fit(trace: &[(f64, f64)]) -> (f64, f64) {
    let n = trace.len() as f64;
    let last = trace.last().map_or(0.0, |p| p.1);
    if trace.len() < 2 {
        return (0.0, last);
    }
    let (mt, me) = (trace.iter().map(|p| p.0).sum::<f64>() / n, trace.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = trace.iter().map(|p| (p.0 - mt).powi(2)).sum();
    let sxy: f64 = trace.iter().map(|p| (p.0 - mt) * (p.1 - me)).sum();
    (if sxx > 0.0 { sxy / sxx } else { 0.0 }, last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_bonds_of_ethanol() {
        let pos = vec![
            [-0.0014, 0.5727, 0.0], [1.2155, -0.3297, 0.0], [-1.1678, -0.2269, 0.0], [-0.0456, 1.2168, 0.8834],
            [-0.0456, 1.2168, -0.8834], [2.1432, 0.2520, 0.0], [1.2012, -0.9640, 0.8880], [1.2012, -0.9640, -0.8880],
            [-1.9547, 0.3327, 0.0],
        ];
        let f = Frame { positions: pos, numbers: vec![6, 6, 8, 1, 1, 1, 1, 1, 1], ..Default::default() };
        let b = bonds(&f);
        // C–C, C–O, O–H and five C–H
        assert_eq!(b.len(), 8, "{b:?}");
        assert!(b.iter().all(|&(i, j, _)| !(f.numbers[i] == 1 && f.numbers[j] == 1)));
    }

    #[test]
    fn a_stretched_bond_names_the_new_partner_of_a_transferred_atom() {
        // O–H···O: the hydroxyl O (0), its H (1), the acceptor O (2) 2.5 Å away.
        let start = Frame { positions: vec![[0.0; 3], [0.97, 0.0, 0.0], [2.5, 0.0, 0.0]], numbers: vec![8, 1, 8], ..Default::default() };
        let b = bonds(&start);
        assert_eq!(b.len(), 1, "only O–H is bonded at the start: {b:?}");
        let mut moved = start.clone();
        moved.positions[1] = [1.52, 0.0, 0.0];
        let t = new_partner(&moved, &b, 0, 1).expect("H is 0.98 Å from the acceptor O");
        assert!(t.starts_with("H 1 now bonded to O 2 instead of O 0, 0.98 Å"), "{t}");
        // The same H pulled away from both oxygens: a fragment, no partner.
        moved.positions[1] = [1.0, 1.6, 0.0];
        assert_eq!(new_partner(&moved, &b, 0, 1), None);
    }

    #[test]
    fn harmonic_dimer_conserves_energy() {
        // Two atoms on a spring (k = 10 eV/Å²): velocity Verlet conserves the energy to O(dt²).
        let f = Frame { positions: vec![[0.0; 3], [1.0, 0.0, 0.0]], numbers: vec![6, 6], ..Default::default() };
        let spring = |fr: &Frame| -> Result<Prediction> {
            let d: Vec3 = std::array::from_fn(|a| fr.positions[1][a] - fr.positions[0][a]);
            let r = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
            let g = 10.0 * (r - 1.0);
            let f1: Vec3 = std::array::from_fn(|a| -g * d[a] / r);
            Ok(Prediction {
                energy: 5.0 * (r - 1.0).powi(2),
                atomic_energies: vec![0.0; 2],
                forces: vec![[-f1[0], -f1[1], -f1[2]], f1],
                virial: [[0.0; 3]; 3],
                stress: None,
            })
        };
        let o = MdOptions { temperature: 300.0, timestep: 0.5, time: 1.0, seeds: 2, bond_tolerance: 0.5, drift_threshold: 0.01, record_every: 1.0 };
        for r in run(&f, &o, &spring).unwrap() {
            assert!(r.completed, "{r:?}");
            assert!(r.energy_drift_per_atom.abs() < 1e-4, "{r:?}");
            assert!(r.max_bond_deviation.unwrap() < 0.5);
        }
    }
}

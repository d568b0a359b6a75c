//! Physics battery for the model: finite-difference forces and stress, invariances, smoothness at the cutoff.
mod common;
use common::*;
use pilip::frame::{Frame, Vec3};

fn energy(m: &pilip::model::Model, f: &Frame) -> f64 {
    m.predict_frame(f).unwrap().energy
}

fn check_fd_forces(m: &pilip::model::Model, f: &Frame) {
    let p = m.predict_frame(f).unwrap();
    let h = 1e-5;
    let fmax = p.forces.iter().flatten().fold(0.0f64, |a, b| a.max(b.abs()));
    assert!(fmax > 0.05, "forces too small to test: {fmax}");
    for i in 0..f.len() {
        for a in 0..3 {
            let mut fp = f.clone();
            fp.positions[i][a] += h;
            let mut fm = f.clone();
            fm.positions[i][a] -= h;
            let fd = -(energy(m, &fp) - energy(m, &fm)) / (2.0 * h);
            assert!((fd - p.forces[i][a]).abs() < 1e-6 * (1.0 + fmax), "atom {i} axis {a}: fd {fd} analytic {}", p.forces[i][a]);
        }
    }
    let e_sum: f64 = p.atomic_energies.iter().sum();
    assert!((e_sum - p.energy).abs() < 1e-10);
}

#[test]
fn forces_match_finite_differences_on_a_molecule() {
    let f = molecule();
    for m in [random_model(vec![1, 6, 8], 4.0, &[f.clone()], 5), random_bispectrum_model(vec![1, 6, 8], 4.0, &[f.clone()], 5)] {
        check_molecule_forces(&m, &f);
    }
}

fn check_molecule_forces(m: &pilip::model::Model, f: &Frame) {
    let m = m.clone();
    check_fd_forces(&m, f);
    // a molecule has no net force
    let p = m.predict_frame(f).unwrap();
    for a in 0..3 {
        assert!(p.forces.iter().map(|x| x[a]).sum::<f64>().abs() < 1e-10);
    }
}

#[test]
fn forces_and_stress_match_finite_differences_on_a_small_triclinic_cell() {
    let f = triclinic_cell();
    for m in [random_model(vec![13, 29], 4.5, &[f.clone()], 7), random_bispectrum_model(vec![13, 29], 4.5, &[f.clone()], 7)] {
        check_cell_forces_and_stress(&m, &f);
    }
}

fn check_cell_forces_and_stress(m: &pilip::model::Model, f: &Frame) {
    let (m, f) = (m.clone(), f.clone());
    // the cell is smaller than twice the cutoff: atoms see images of themselves
    let env = m.frame_environments(&f).unwrap();
    assert!(env.neighbors().of(0).iter().any(|n| n.j == 0));
    check_fd_forces(&m, &f);
    // stress = (1/V) dE/d(strain), strain applied to cell and positions
    let p = m.predict_frame(&f).unwrap();
    let s = p.stress.unwrap();
    let v = f.volume().unwrap();
    let h = 1e-6;
    let strained = |a: usize, b: usize, t: f64| pilip::frame::strained(&f, a, b, t);
    let smax = s.iter().flatten().fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(smax > 1e-3, "stress too small to test: {smax}");
    for a in 0..3 {
        for b in 0..3 {
            let fd = (energy(&m, &strained(a, b, h)) - energy(&m, &strained(a, b, -h))) / (2.0 * h) / v;
            assert!((fd - s[a][b]).abs() < 1e-7 * (1.0 + smax), "stress {a}{b}: fd {fd} analytic {}", s[a][b]);
        }
    }
    // virial is symmetric for a rotation-invariant energy
    for a in 0..3 {
        for b in 0..3 {
            assert!((p.virial[a][b] - p.virial[b][a]).abs() < 1e-10);
        }
    }
}

#[test]
fn invariant_under_rotation_translation_permutation_and_periodic_images() {
    let (mol, cellf) = (molecule(), triclinic_cell());
    check_invariances(&random_model(vec![1, 6, 8], 4.0, &[mol.clone()], 9), &random_model(vec![13, 29], 4.5, &[cellf.clone()], 4));
    check_invariances(
        &random_bispectrum_model(vec![1, 6, 8], 4.0, &[mol.clone()], 9),
        &random_bispectrum_model(vec![13, 29], 4.5, &[cellf], 4),
    );
}

/// Rotation, translation and permutation of a molecule (model `m`), lattice shifts and a supercell of a cell
/// (model `mp`).
fn check_invariances(m: &pilip::model::Model, mp: &pilip::model::Model) {
    let mol = molecule();
    let p0 = m.predict_frame(&mol).unwrap();
    let rot = rotation([0.3, -0.5, 0.8], 1.1);
    let mut g = mol.clone();
    g.positions = mol.positions.iter().map(|x| { let r = apply(&rot, x); [r[0] + 3.0, r[1] - 1.7, r[2] + 0.4] }).collect();
    let p1 = m.predict_frame(&g).unwrap();
    assert!((p0.energy - p1.energy).abs() < 1e-10 * p0.energy.abs());
    for i in 0..mol.len() {
        let fr = apply(&rot, &p0.forces[i]);
        for a in 0..3 {
            assert!((fr[a] - p1.forces[i][a]).abs() < 1e-9, "rotated force");
        }
    }
    // permutation: reverse the atom order
    let mut perm = mol.clone();
    perm.positions.reverse();
    perm.numbers.reverse();
    let p2 = m.predict_frame(&perm).unwrap();
    assert!((p0.energy - p2.energy).abs() < 1e-10 * p0.energy.abs());
    let n = mol.len();
    for i in 0..n {
        assert!((p0.atomic_energies[i] - p2.atomic_energies[n - 1 - i]).abs() < 1e-10);
        for a in 0..3 {
            assert!((p0.forces[i][a] - p2.forces[n - 1 - i][a]).abs() < 1e-10);
        }
    }

    // periodic: shifting an atom by a lattice vector, or using a 2x supercell, changes nothing
    let cellf = triclinic_cell();
    let q0 = mp.predict_frame(&cellf).unwrap();
    let c = cellf.cell.unwrap();
    let mut shifted = cellf.clone();
    for a in 0..3 {
        shifted.positions[2][a] += c[0][a] - 2.0 * c[2][a];
    }
    let q1 = mp.predict_frame(&shifted).unwrap();
    assert!((q0.energy - q1.energy).abs() < 1e-10 * q0.energy.abs());
    for a in 0..3 {
        assert!((q0.forces[2][a] - q1.forces[2][a]).abs() < 1e-10);
    }
    let mut sup = cellf.clone();
    sup.cell = Some([[2.0 * c[0][0], 2.0 * c[0][1], 2.0 * c[0][2]], c[1], c[2]]);
    sup.positions = cellf.positions.iter().chain(cellf.positions.iter()).enumerate()
        .map(|(k, x)| if k < cellf.len() { *x } else { [x[0] + c[0][0], x[1] + c[0][1], x[2] + c[0][2]] }).collect();
    sup.numbers = cellf.numbers.iter().chain(cellf.numbers.iter()).copied().collect();
    let q2 = mp.predict_frame(&sup).unwrap();
    assert!((q2.energy - 2.0 * q0.energy).abs() < 1e-9 * q0.energy.abs());
    let (s0, s2) = (q0.stress.unwrap(), q2.stress.unwrap());
    for a in 0..3 {
        for b in 0..3 {
            assert!((s0[a][b] - s2[a][b]).abs() < 1e-10);
        }
    }
}

#[test]
fn energy_and_forces_are_continuous_when_a_neighbour_crosses_the_cutoff() {
    let rc = 3.0;
    let mut f = molecule();
    f.positions.truncate(3);
    f.numbers.truncate(3);
    let m = random_model(vec![1, 6, 8], rc, &[f.clone()], 3);
    // a hydrogen on a line away from atom 0, moved across the cutoff of atom 0 (and of no other atom)
    let place = |d: f64| {
        let mut g = f.clone();
        g.positions.push([-d, 0.0, 0.0]);
        g.numbers.push(1);
        g
    };
    let at = |d: f64| m.predict_frame(&place(d)).unwrap();
    let far = at(rc + 1.0);
    let (inside, outside) = (at(rc - 1e-4), at(rc + 1e-4));
    assert!((inside.energy - outside.energy).abs() < 1e-9, "energy jump {}", inside.energy - outside.energy);
    assert!((outside.energy - far.energy).abs() < 1e-12);
    for i in 0..4 {
        for a in 0..3 {
            // C² cutoff: force ~ (Δr)², here ≤ 1e-8 · O(1)
            assert!((inside.forces[i][a] - outside.forces[i][a]).abs() < 1e-6);
        }
    }
    // and the approach is smooth: second differences of E along the path stay small near r_c
    let e: Vec<f64> = (0..7).map(|k| at(rc - 0.03 + 0.01 * k as f64).energy).collect();
    let curv: Vec<f64> = (1..6).map(|k| (e[k + 1] - 2.0 * e[k] + e[k - 1]) / 1e-4).collect();
    assert!(curv.iter().all(|c| c.abs() < 1e-2), "curvature near the cutoff {curv:?}");
}

#[test]
fn benchmark_curvature_probes_measure_the_hessian() {
    // directional_curvature = ΔᵀHΔ/|Δ|² up to O(|Δ|): compare with a central second difference of the energy
    let f = molecule();
    let m = random_model(vec![1, 6, 8], 4.0, &[f.clone()], 5);
    let mut rng = pilip::rng::Rng::new(3);
    let d: Vec<[f64; 3]> = (0..f.len()).map(|_| [0, 1, 2].map(|_| 1e-5 * (2.0 * rng.uniform() - 1.0))).collect();
    let shifted = |s: f64| {
        let mut g = f.clone();
        for (x, y) in g.positions.iter_mut().zip(&d) {
            for a in 0..3 {
                x[a] += s * y[a];
            }
        }
        energy(&m, &g)
    };
    let d2: f64 = d.iter().flatten().map(|x| x * x).sum();
    let exact = (shifted(1.0) - 2.0 * shifted(0.0) + shifted(-1.0)) / d2;
    let probe = pilip::train::curvature::directional_curvature(&m, &f, &d).unwrap();
    assert!(exact.abs() > 0.1, "curvature too small to test: {exact}");
    assert!((probe - exact).abs() < 0.01 * exact.abs(), "probe {probe} vs second difference {exact}");

    // thermal estimate ⟨F²⟩/k_BT: forces of ±1 and ±2 eV/Å give ⟨F²⟩ = 2.5 eV²/Å²
    let mut g = f.clone();
    g.forces = Some((0..f.len()).map(|i| if i % 2 == 0 { [1.0, -1.0, 1.0] } else { [2.0, 2.0, -2.0] }).collect());
    g.positions.truncate(2);
    g.numbers.truncate(2);
    g.forces.as_mut().unwrap().truncate(2);
    let kt = 8.617_333_262e-5 * 500.0;
    let k = pilip::train::curvature::thermal_curvature(&[g], 500.0);
    assert!((k - 2.5 / kt).abs() < 1e-9 * k, "{k}");
}

/// The repulsive prior's forces and stress are −∂E/∂r and ∂E/∂ε like the learned part's, on a molecule and on a
/// cell whose pairs reach into the switch and the full-strength region.
#[test]
fn forces_and_stress_with_the_repulsive_prior_match_finite_differences() {
    let mol = molecule();
    let mut m = random_model(vec![1, 6, 8], 4.0, &[mol.clone()], 5);
    m.repulsion = Some(pilip::repulsion::Repulsion::fit(&m.species, &[], m.cutoff(), 1.6, 1.1).unwrap());
    let without = random_model(vec![1, 6, 8], 4.0, &[mol.clone()], 5);
    assert!(energy(&m, &mol) - energy(&without, &mol) > 0.5, "the molecule reaches into the prior");
    check_molecule_forces(&m, &mol);
    let cell = triclinic_cell();
    let mut mp = random_model(vec![13, 29], 4.5, &[cell.clone()], 7);
    mp.repulsion = repulsive_cell_model().repulsion;
    check_cell_forces_and_stress(&mp, &cell);
}

#[test]
fn network_input_tangents_match_finite_differences_of_the_inputs() {
    // the preconditioner's tangents are the exact directional derivative of the networks' standardised inputs
    // (dropped components and the bispectrum's four-body inputs included, periodic images too)
    let cases = [(dropped_inputs_molecule_model(), molecule()), (compressed_bispectrum_cell_model(), triclinic_cell())];
    for (m, f) in &cases {
        let mut rng = pilip::rng::Rng::new(11);
        let u: Vec<Vec3> = f.positions.iter().map(|_| [rng.normal(), rng.normal(), rng.normal()]).collect();
        let (x, t) = m.network_inputs_and_tangents(std::slice::from_ref(f), std::slice::from_ref(&u)).unwrap();
        assert_eq!(x, m.network_inputs(std::slice::from_ref(f)).unwrap(), "the one-pass inputs differ");
        let shifted = |s: f64| {
            let mut g = f.clone();
            g.positions.iter_mut().zip(&u).for_each(|(p, d)| (0..3).for_each(|k| p[k] += s * d[k]));
            m.network_inputs(&[g]).unwrap()
        };
        let h = 1e-5;
        let (plus, minus) = (shifted(h), shifted(-h));
        let mut largest = 0.0f64;
        for s in 0..t.len() {
            assert_eq!(t[s].len(), plus[s].len(), "species {s}");
            assert!(!t[s].is_empty(), "species {s} has no atoms in the test frame");
            for ((a, p), q) in t[s].iter().zip(&plus[s]).zip(&minus[s]) {
                let fd = (p - q) / (2.0 * h);
                assert!((a - fd).abs() < 1e-5 * (1.0 + fd.abs()), "species {s}: tangent {a} vs finite difference {fd}");
                largest = largest.max(a.abs());
            }
        }
        assert!(largest > 1e-2, "tangents all near zero ({largest}): the test would not see an error");
    }
    // one displacement per atom, or a clear error
    let (m, f) = &cases[0];
    let err = m.network_inputs_and_tangents(std::slice::from_ref(f), &[vec![[0.0; 3]]]).unwrap_err();
    assert!(err.to_string().contains("displacements"), "{err}");
}

//! Loss gradients against finite differences in the parameters, and end-to-end training behaviour.
mod common;
use common::*;
use pilip::config::{Config, Penalty, PiwslVariant, Schedule};
use pilip::descriptor::four_body::ThreeBody;
use pilip::frame::Frame;
use pilip::rng::Rng;
use pilip::train::loss::{LossTerms, Weights};
use pilip::train::{batch_loss_and_grad, TrainOptions};
use std::path::{Path, PathBuf};

/// A structure and a copy truncated to `n_small` atoms (a batch of two sizes), with random energy and force
/// labels, and stress labels when `with_stress`.
fn labelled_pair(full: Frame, n_small: usize, with_stress: bool, seed: u64) -> Vec<Frame> {
    let mut rng = Rng::new(seed);
    let mut small = full.clone();
    small.positions.truncate(n_small);
    small.numbers.truncate(n_small);
    let mut out = vec![full, small];
    for f in out.iter_mut() {
        f.energy = Some(-3.0 * f.len() as f64 + rng.normal());
        f.forces = Some((0..f.len()).map(|_| [rng.normal(), rng.normal(), rng.normal()]).collect());
        if with_stress {
            let s = [0; 6].map(|_| 0.05 * rng.normal());
            f.stress = Some(pilip::io::extxyz::voigt_to_matrix(&s));
        }
    }
    out
}

fn labelled_molecules() -> Vec<Frame> {
    labelled_pair(molecule(), 5, false, 21)
}

fn labelled_cells() -> Vec<Frame> {
    labelled_pair(triclinic_cell(), 4, true, 22)
}

fn check_term(term: &str, frames: &[Frame], species: Vec<u32>, cutoff: f64, order: u32) {
    check_term_with(term, frames, species, cutoff, order, Penalty::Mse);
}

/// `penalty` is the energy's and the forces' (`loss.energy_loss`, `loss.forces_loss`).
fn check_term_with(term: &str, frames: &[Frame], species: Vec<u32>, cutoff: f64, order: u32, penalty: Penalty) {
    check_term_on(&random_model(species, cutoff, frames, 17), term, frames, order, penalty);
}

fn check_term_on(model: &pilip::model::Model, term: &str, frames: &[Frame], order: u32, penalty: Penalty) {
    check_term_variant(model, term, frames, order, penalty, PiwslVariant::Pilip);
}

fn check_term_variant(model: &pilip::model::Model, term: &str, frames: &[Frame], order: u32, penalty: Penalty, variant: PiwslVariant) {
    let model = model.clone();
    let mut cfg = Config::default();
    cfg.loss.piwsl_variant = variant;
    cfg.loss.energy_loss = penalty;
    cfg.loss.huber_delta = 0.05;
    cfg.loss.forces_loss = penalty;
    cfg.loss.forces_huber_delta = 0.05;
    cfg.loss.energy_weight = 0.0;
    cfg.loss.forces_weight = 0.0;
    cfg.loss.pitc_order = order;
    cfg.loss.epsilon = 0.05;
    match term {
        "energy" => cfg.loss.energy_weight = 1.0,
        "forces" => cfg.loss.forces_weight = 1.0,
        "stress" => cfg.loss.stress_weight = 1.0,
        "pitc" => cfg.loss.pitc_weight = 1.0,
        "pisc" => cfg.loss.pisc_weight = 1.0,
        "weak" => cfg.loss.weak_label_weight = 1.0,
        "score" => {
            cfg.loss.score_matching_weight = 1.0;
            cfg.data.temperature = Some(500.0);
        }
        "fep" => {
            cfg.loss.fep_weight = 1.0;
            cfg.data.temperature = Some(500.0);
        }
        "conf_temperature" => {
            cfg.loss.configurational_temperature_weight = 1.0;
            cfg.data.temperature = Some(500.0);
        }
        _ => unreachable!(),
    }
    let w = Weights::at_epoch(&cfg.loss, cfg.data.temperature, 0);
    let refs: Vec<&Frame> = frames.iter().collect();
    let ids: Vec<usize> = (0..frames.len()).collect();
    let seed = cfg.training.seed;
    let (loss, grad) = batch_loss_and_grad(&model, &refs, &ids, &cfg.loss, seed, &w, 3, true, None).unwrap();
    let value = loss.get(term).unwrap();
    assert!(value != 0.0, "{term}: loss is zero");
    assert_eq!(loss.total(), value, "{term}: other terms must be off");
    if penalty == Penalty::Huber {
        // some errors must lie beyond the threshold, or the check below would only see the squared branch
        let mut squared = cfg.loss.clone();
        (squared.energy_loss, squared.forces_loss) = (Penalty::Mse, Penalty::Mse);
        let mse = batch_loss_and_grad(&model, &refs, &ids, &squared, seed, &w, 3, false, None).unwrap().0.total();
        assert!(value < 0.9 * mse, "{term}: Huber {value} vs squared {mse}");
    }
    let gnorm = grad.iter().map(|g| g * g).sum::<f64>().sqrt();
    assert!(gnorm > 0.0);
    let mut rng = Rng::new(5);
    let p0 = model.params();
    let h = 1e-5;
    let mut checked = 0;
    // random parameters plus the largest-gradient ones
    let mut idx: Vec<usize> = (0..25).map(|_| rng.below(p0.len())).collect();
    let mut by_size: Vec<usize> = (0..p0.len()).collect();
    by_size.sort_by(|a, b| grad[*b].abs().partial_cmp(&grad[*a].abs()).unwrap());
    idx.extend_from_slice(&by_size[..10]);
    // and the tail of the vector: a trained bispectrum compression W sits after the networks
    let tail = p0.len().min(400);
    idx.extend((0..10).map(|_| p0.len() - 1 - rng.below(tail)));
    for q in idx {
        let eval = |delta: f64| {
            let mut m = model.clone();
            let mut p = p0.clone();
            p[q] += delta;
            m.set_params(&p);
            batch_loss_and_grad(&m, &refs, &ids, &cfg.loss, seed, &w, 3, false, None).unwrap().0.get(term).unwrap()
        };
        let fd = (eval(h) - eval(-h)) / (2.0 * h);
        let tol = 1e-6 * gnorm.max(1e-3) + 1e-5 * fd.abs();
        assert!((fd - grad[q]).abs() < tol, "{term} (order {order}) param {q}: fd {fd:e} analytic {:e}", grad[q]);
        checked += 1;
    }
    assert_eq!(checked, 45);
}

#[test]
fn every_loss_term_has_the_right_parameter_gradient() {
    let mols = labelled_molecules();
    for term in ["energy", "forces", "pitc", "pisc", "weak", "score", "fep", "conf_temperature"] {
        check_term(term, &mols, vec![1, 6, 8], 4.0, 1);
    }
    check_term("pitc", &mols, vec![1, 6, 8], 4.0, 2);
    check_term_with("energy", &mols, vec![1, 6, 8], 4.0, 1, Penalty::Huber);
    check_term_with("forces", &mols, vec![1, 6, 8], 4.0, 1, Penalty::Huber);
    let cells = labelled_cells();
    for term in ["stress", "forces", "pitc", "pisc", "score", "fep", "conf_temperature"] {
        check_term(term, &cells, vec![13, 29], 4.5, 1);
    }
    // the bispectrum family: the tangent goes through the four-body invariants too
    let bs_mol = random_bispectrum_model(vec![1, 6, 8], 4.0, &mols, 17);
    for term in ["energy", "forces"] {
        check_term_on(&bs_mol, term, &mols, 1, Penalty::Mse);
    }
    check_term_on(&random_bispectrum_model(vec![13, 29], 4.5, &cells, 17), "stress", &cells, 1, Penalty::Mse);
    // with the compressed three-body invariants, W also enters through them
    let compressed = random_bispectrum_model_with(vec![1, 6, 8], 4.0, &mols, 17, ThreeBody::Compressed);
    for term in ["energy", "forces"] {
        check_term_on(&compressed, term, &mols, 1, Penalty::Mse);
    }
    check_term_on(&random_bispectrum_model_with(vec![13, 29], 4.5, &cells, 17, ThreeBody::Compressed), "stress", &cells, 1, Penalty::Mse);
    // the paper code's displacement variants (the final one gives PITC its own configuration)
    let model = random_model(vec![1, 6, 8], 4.0, &mols, 17);
    for variant in [PiwslVariant::PaperV1, PiwslVariant::PaperFinal] {
        for (term, order) in [("pitc", 1), ("pitc", 2), ("pisc", 1)] {
            check_term_variant(&model, term, &mols, order, Penalty::Mse, variant);
        }
    }
}

/// The networks run on a batch's atoms of each element together, cut into pieces of at most 32 atoms: the
/// batch's gradient and predictions must be those of its structures one by one, also when a piece mixes
/// configurations with and without a tangent.
#[test]
fn a_batch_is_the_sum_of_its_structures() {
    use pilip::model::Primitive;
    let mut frames = Vec::new();
    for k in 0..6 {
        let mut f = molecule(); // 8 atoms: 4 H, 2 C, 2 O each; 24 H in the batch
        f.positions.iter_mut().enumerate().for_each(|(i, p)| p[k % 3] += 0.05 * (i as f64 - 3.0) * k as f64);
        frames.push(f);
    }
    // a 2×2×2 supercell of the triclinic cell, its atoms moved a little: 32 Cu and 8 Al in one structure
    let small = triclinic_cell();
    let cell = small.cell.unwrap();
    let mut big = Frame { cell: Some(cell.map(|v| v.map(|x| 2.0 * x))), ..small.clone() };
    big.positions.clear();
    big.numbers.clear();
    let mut jitter = Rng::new(9);
    for shift in (0..8).map(|k| [k & 1, (k >> 1) & 1, k >> 2].map(|b| b as f64)) {
        for (p, &z) in small.positions.iter().zip(&small.numbers) {
            big.positions.push([0, 1, 2].map(|a| p[a] + (0..3).map(|b| shift[b] * cell[b][a]).sum::<f64>() + 0.05 * jitter.normal()));
            big.numbers.push(z);
        }
    }
    let mut rng = Rng::new(4);
    for (model, frames) in [
        (random_model(vec![1, 6, 8], 4.0, &frames, 3), &frames),
        (random_bispectrum_model(vec![1, 6, 8], 4.0, &frames, 3), &frames),
        (random_model(vec![13, 29], 4.5, &[big.clone()], 3), &vec![big.clone(), triclinic_cell()]),
        (random_bispectrum_model(vec![13, 29], 4.5, &[big.clone()], 3), &vec![big.clone(), triclinic_cell()]),
        (random_bispectrum_model_with(vec![1, 6, 8], 4.0, &frames, 3, ThreeBody::Compressed), &frames),
    ] {
        let envs: Vec<_> = frames.iter().map(|f| model.frame_environments(f).unwrap()).collect();
        let disps: Vec<Vec<[f64; 3]>> = frames.iter().map(|f| (0..f.len()).map(|_| [0; 3].map(|_| rng.normal())).collect()).collect();
        let strain = [[0.1, 0.02, 0.0], [0.02, -0.05, 0.01], [0.0, 0.01, 0.03]];
        let primitives: Vec<Primitive> = envs
            .iter()
            .enumerate()
            .map(|(k, env)| match k % 3 {
                0 => Primitive::at(env, 0.7, Some(&disps[k]), None),
                1 => Primitive::at(env, -1.3, None, None),
                _ => Primitive::at(env, 0.4, Some(&disps[k]), env.volume.map(|_| &strain)),
            })
            .collect();
        let mut batch = vec![0.0; model.n_params()];
        model.accumulate_param_grad(&primitives, &mut batch);
        let mut one_by_one = vec![0.0; model.n_params()];
        for p in &primitives {
            model.accumulate_param_grad(std::slice::from_ref(p), &mut one_by_one);
        }
        let scale = batch.iter().fold(0.0f64, |a, g| a.max(g.abs()));
        assert!(scale > 1e-3);
        assert!(max_abs_diff(batch.iter().copied(), one_by_one.iter().copied()) < 1e-10 * scale, "{:?}", model.family());
        let together = model.predict_batch(&envs.iter().collect::<Vec<_>>());
        for (env, got) in envs.iter().zip(&together) {
            assert_same_prediction(got, &model.predict(env), 1e-10, "batch vs one");
        }
        // the gradient after a prediction at the same structures reuses its network inputs and first-layer
        // products; for another list of configurations (here the same in reverse order) they are ignored
        let (_, forward) = model.predict_batch_keeping(&envs.iter().collect::<Vec<_>>());
        let mut reused = vec![0.0; model.n_params()];
        model.accumulate_param_grad_after(&primitives, &mut reused, &forward);
        assert!(max_abs_diff(batch.iter().copied(), reused.iter().copied()) < 1e-12 * scale, "reused first layer");
        let reversed: Vec<Primitive> = primitives.iter().rev().map(|p| Primitive { ..*p }).collect();
        let mut other = vec![0.0; model.n_params()];
        model.accumulate_param_grad_after(&reversed, &mut other, &forward);
        assert!(max_abs_diff(batch.iter().copied(), other.iter().copied()) < 1e-10 * scale, "other configurations");
        // training.precision = "f32": the networks' passes in single precision give the same gradient and
        // training predictions to f32 rounding, and are not the f64 path in disguise
        let mut single = model.clone();
        single.set_training_precision(true);
        let mut g32 = vec![0.0; model.n_params()];
        single.accumulate_param_grad(&primitives, &mut g32);
        let diff = max_abs_diff(batch.iter().copied(), g32.iter().copied());
        assert!(diff > 0.0 && diff < 1e-4 * scale, "f32 gradient: {diff:e} against {scale:e}");
        let (_, forward32) = single.predict_batch_keeping(&envs.iter().collect::<Vec<_>>());
        let mut reused32 = vec![0.0; model.n_params()];
        single.accumulate_param_grad_after(&primitives, &mut reused32, &forward32);
        assert!(max_abs_diff(g32.iter().copied(), reused32.iter().copied()) < 1e-6 * scale, "f32, reused first layer");
        for (p32, p64) in single.predict_batch(&envs.iter().collect::<Vec<_>>()).iter().zip(&together) {
            assert_same_prediction(p32, p64, 1e-5, "f32 vs f64");
        }
    }
}

/// Training keeps the structures' environments from one epoch to the next: a step from kept environments is bit
/// for bit a step from fresh ones, also for a model with a trained compression after its parameters changed (the
/// kept four-body invariants are recomputed from the kept density), and in f32 training, where the power
/// spectrum's environments also keep the atoms' f32 network inputs.
#[test]
fn kept_environments_give_the_same_step_also_after_the_compression_changed() {
    use pilip::train::env_cache::EnvCache;
    let (frames, cfg, w) = energy_and_forces_step();
    let refs: Vec<&Frame> = frames.iter().collect();
    let ids: Vec<usize> = (0..frames.len()).collect();
    let mut kept_bytes = Vec::new();
    for (k, f32) in [(0, false), (1, false), (2, false), (0, true), (1, true)] {
        let mut model = match k {
            0 => random_model(vec![1, 6, 8], 4.0, &frames, 5),
            1 => random_bispectrum_model(vec![1, 6, 8], 4.0, &frames, 5),
            _ => random_bispectrum_model_with(vec![1, 6, 8], 4.0, &frames, 5, ThreeBody::Compressed),
        };
        model.set_training_precision(f32);
        let cache = EnvCache::new(frames.len());
        let params = model.params();
        for pass in ["filling", "kept", "kept, parameters changed"] {
            if pass == "kept, parameters changed" {
                // every parameter moves, the compression W (the last ones of a trained bispectrum model) too
                let moved: Vec<f64> = params.iter().enumerate().map(|(i, p)| p * 1.05 + 1e-3 * ((i % 7) as f64 - 3.0)).collect();
                model.set_params(&moved);
            }
            let fresh = batch_loss_and_grad(&model, &refs, &ids, &cfg.loss, 1, &w, 0, true, None).unwrap();
            let got = batch_loss_and_grad(&model, &refs, &ids, &cfg.loss, 1, &w, 0, true, Some(&cache)).unwrap();
            assert!(got.0.total() > 0.0 && got.0.total() == fresh.0.total(), "{pass}: loss {} vs {}", got.0.total(), fresh.0.total());
            assert_eq!(got.1, fresh.1, "{pass}: gradient");
            assert_eq!(cache.len(), frames.len(), "{pass}: structures kept");
        }
        kept_bytes.push(cache.bytes());
        // the kept inputs give the passes the bits of the gather they replace
        let plain: Vec<_> = frames.iter().map(|f| model.frame_environments(f).unwrap()).collect();
        let mut kept = plain.clone();
        kept.iter_mut().for_each(|e| model.keep_network_inputs(e));
        let (a, b) = (model.predict_batch_keeping(&plain.iter().collect::<Vec<_>>()).0, model.predict_batch_keeping(&kept.iter().collect::<Vec<_>>()).0);
        for (a, b) in a.iter().zip(&b) {
            assert!(a.energy == b.energy && a.forces == b.forces, "kept inputs: {} vs {}", a.energy, b.energy);
        }
        assert_eq!(model.energies_batch(&plain.iter().collect::<Vec<_>>()), model.energies_batch(&kept.iter().collect::<Vec<_>>()));
    }
    // the f32 inputs are kept with the power spectrum's fixed descriptors, not with a trained compression's
    assert!(kept_bytes[3] > kept_bytes[0] && kept_bytes[4] == kept_bytes[1], "{kept_bytes:?}");
}

/// The labelled molecules with an energy-and-forces loss (weights 1) at epoch 0: the batch of the step tests.
fn energy_and_forces_step() -> (Vec<Frame>, Config, Weights) {
    let mut cfg = Config::default();
    cfg.loss.energy_weight = 1.0;
    cfg.loss.forces_weight = 1.0;
    let w = Weights::at_epoch(&cfg.loss, None, 0);
    (labelled_molecules(), cfg, w)
}

/// A model whose networks leave out the components that barely vary (`model.drop_features_below`) predicts,
/// and takes a training step, like the same model reading every component with zero first-layer rows for the
/// left-out ones, in both training precisions: a power-spectrum model, and a bispectrum model with a trained
/// compression, which leaves out power-spectrum components only (its four-body ones move with W) and whose
/// gradient to W is the full model's.
#[test]
fn a_network_without_its_flat_inputs_is_the_full_network_with_zero_rows_for_them() {
    use pilip::model::AtomicModel;
    use pilip::nn::Mlp;
    let (frames, cfg, w) = energy_and_forces_step();
    let refs: Vec<&Frame> = frames.iter().collect();
    let ids: Vec<usize> = (0..frames.len()).collect();
    let bispectrum = with_dropped_inputs(random_bispectrum_model(vec![1, 6, 8], 4.0, &frames, 9), &frames);
    for mut cut in [dropped_inputs_model(vec![1, 6, 8], 4.0, &frames, 9), bispectrum] {
        // the same model reading every component, with zero first-layer rows for the dropped ones
        let mut full = cut.clone();
        let (AtomicModel::PowerSpectrum(m) | AtomicModel::Bispectrum(m)) = &mut full.atomic;
        m.networks = (0..m.networks.len()).map(|s| m.full_input_network(s).into_owned()).collect();
        let inputs = std::mem::take(&mut m.inputs);
        let n_features = m.feature_mean[0].len();
        let kept: usize = inputs.iter().map(Vec::len).sum();
        assert!(inputs.len() == 3 && kept > n_features && kept < 3 * n_features * 9 / 10, "{kept} of 3 × {n_features} kept");
        if let Some(b) = &m.four_body {
            // the four-body components (the last ones) are kept whatever their spread
            let n_moving = pilip::descriptor::Descriptor::with_optional_four_body(&m.descriptor, &cut.species, Some(b)).unwrap().four_body().unwrap().n_features();
            assert!(inputs.iter().all(|ids| ids[ids.len() - n_moving..].iter().zip(n_features - n_moving..).all(|(&f, g)| f as usize == g)));
        }
        for f in &frames {
            let (a, b) = (cut.predict_frame(f).unwrap(), full.predict_frame(f).unwrap());
            assert!((a.energy - b.energy).abs() < 1e-12 * b.energy.abs().max(1.0), "{} vs {}", a.energy, b.energy);
            let forces_diff = a.forces.iter().flatten().zip(b.forces.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
            assert!(forces_diff < 1e-12, "forces differ by {forces_diff}");
        }
        // the training step: the full model's loss, and its gradient without the dropped rows (then W's)
        for (f32, tol) in [(false, 1e-11), (true, 1e-5)] {
            cut.set_training_precision(f32);
            full.set_training_precision(f32);
            let (loss_cut, grad_cut) = batch_loss_and_grad(&cut, &refs, &ids, &cfg.loss, 1, &w, 0, true, None).unwrap();
            let (loss_full, grad_full) = batch_loss_and_grad(&full, &refs, &ids, &cfg.loss, 1, &w, 0, true, None).unwrap();
            assert!((loss_cut.total() - loss_full.total()).abs() < tol * loss_full.total(), "f32 {f32}: loss");
            let (AtomicModel::PowerSpectrum(m) | AtomicModel::Bispectrum(m)) = &full.atomic;
            let mut want = Vec::new();
            let mut offset = 0;
            for (net, ids) in m.networks.iter().zip(&inputs) {
                let g = Mlp { sizes: net.sizes.clone(), params: grad_full[offset..offset + net.n_params()].to_vec() };
                want.extend(g.with_input_rows(ids.iter().map(|&f| f as usize)).params);
                offset += net.n_params();
            }
            assert_eq!(grad_full.len() - offset, m.four_body.as_ref().map_or(0, |b| b.compression.len()));
            want.extend(&grad_full[offset..]);
            let scale = want.iter().fold(0.0f64, |a, g| a.max(g.abs()));
            assert_eq!(grad_cut.len(), want.len());
            for (k, (a, b)) in grad_cut.iter().zip(&want).enumerate() {
                assert!((a - b).abs() < tol * scale, "f32 {f32}: gradient {k}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn score_matching_term_averages_to_half_the_squared_force_minus_kt_times_the_laplacian() {
    let mols = labelled_molecules();
    let frame = &mols[0];
    let model = random_model(vec![1, 6, 8], 4.0, &mols, 17);
    let mut cfg = Config::default();
    (cfg.loss.energy_weight, cfg.loss.forces_weight, cfg.loss.score_matching_weight) = (0.0, 0.0, 1.0);
    cfg.loss.epsilon = 0.001; // the second difference's error is O(ε²): 5 % at 0.01 Å for this rough random model
    cfg.data.temperature = Some(500.0);
    let w = Weights::at_epoch(&cfg.loss, cfg.data.temperature, 0);
    // the Laplacian by central differences of the forces, one coordinate at a time
    let (h, n) = (1e-4, frame.len());
    let mut laplacian = 0.0;
    for i in 0..n {
        for a in 0..3 {
            let force_at = |t: f64| {
                let mut f = frame.clone();
                f.positions[i][a] += t;
                model.predict_frame(&f).unwrap().forces[i][a]
            };
            laplacian -= (force_at(h) - force_at(-h)) / (2.0 * h);
        }
    }
    let p = model.predict_frame(frame).unwrap();
    let grad_sq: f64 = p.forces.iter().flatten().map(|f| f * f).sum();
    let kt = pilip::units::KB * 500.0;
    let expected = (0.5 * grad_sq - kt * laplacian) / (3.0 * n as f64);
    // one random probe per step: the mean over steps converges to the expectation
    let samples: Vec<f64> = (0..3000)
        .map(|step| batch_loss_and_grad(&model, &[frame], &[0], &cfg.loss, 1, &w, step, false, None).unwrap().0.score)
        .collect();
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    let sd = (samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (samples.len() - 1) as f64).sqrt();
    let stderr = sd / (samples.len() as f64).sqrt();
    assert!(sd > 0.0, "the probe must vary between steps");
    assert!((mean - expected).abs() < 4.0 * stderr + 1e-6 * expected.abs(), "mean {mean} vs {expected} (stderr {stderr})");
    assert!((kt * laplacian).abs() > 10.0 * stderr * 3.0 * n as f64, "the test must resolve the Laplacian term");
}

#[test]
fn pitc_residual_is_per_structure() {
    // The PITC loss of a batch equals the mean of the single-structure losses: no cross-structure sums.
    let mols = labelled_molecules();
    let model = random_model(vec![1, 6, 8], 4.0, &mols, 2);
    let mut cfg = Config::default();
    cfg.loss.energy_weight = 0.0;
    cfg.loss.forces_weight = 0.0;
    cfg.loss.pitc_weight = 1.0;
    cfg.loss.pisc_weight = 1.0;
    let w = Weights::at_epoch(&cfg.loss, cfg.data.temperature, 0);
    let loss = |frames: &[&Frame], ids: &[usize]| batch_loss_and_grad(&model, frames, ids, &cfg.loss, cfg.training.seed, &w, 0, false, None).unwrap().0;
    let both = loss(&[&mols[0], &mols[1]], &[0, 1]);
    let (a, b) = (loss(&[&mols[0]], &[0]), loss(&[&mols[1]], &[1]));
    for term in ["pitc", "pisc"] {
        let [x, y, z] = [&both, &a, &b].map(|l: &LossTerms| l.get(term).unwrap());
        assert!((x - 0.5 * (y + z)).abs() < 1e-14 * x.abs().max(1e-30), "{term}");
        assert!(y > 0.0 && z > 0.0);
    }
}

fn example_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/ethanol_300.extxyz")
}

fn small_config(run_dir: &Path) -> Config {
    let mut cfg = Config::default();
    cfg.data.file = example_data();
    cfg.data.keys.energy = "REF_energy".into();
    cfg.data.keys.forces = "REF_forces".into();
    cfg.data.n_train = 100;
    cfg.data.n_valid = 40;
    cfg.data.n_test = 40;
    cfg.descriptor.n_radial = 6;
    cfg.descriptor.l_max = 3;
    cfg.model.hidden = vec![32, 32];
    cfg.loss.energy_weight = 20.0;
    cfg.training.max_epochs = 40;
    cfg.training.schedule = Schedule::Cosine;
    cfg.training.batch_size = 8;
    cfg.training.patience = 1000;
    cfg.output.run_dir = run_dir.to_path_buf();
    cfg
}

/// The lines of `metrics.jsonl` without the wall-clock field, for exact comparisons between runs.
fn metrics_without_timing(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("time_s");
            v
        })
        .collect()
}


#[test]
fn short_training_reduces_validation_force_rmse_five_fold() {
    let dir = tmpdir("train5x");
    let cfg = small_config(&dir);
    let splits = pilip::dataset::load(&cfg.data).unwrap();
    let all: Vec<&Frame> = splits.train.iter().chain(&splits.valid).collect();
    let init = pilip::train::initial_model(&cfg, &splits.train, &all).unwrap();
    let p = pilip::metrics::predict_all(&init, &splits.valid).unwrap();
    let before = pilip::metrics::compute(&splits.valid, &p).forces_rmse_mev_per_A.unwrap();
    let s = train_quietly(&cfg);
    let after = s.valid.forces_rmse_mev_per_A.unwrap();
    assert!(after * 5.0 < before, "force RMSE {before:.1} → {after:.1} meV/Å");
    assert!(s.finished && dir.join("checkpoints/best.ckpt").exists() && dir.join("config.resolved.toml").exists());
    let lines = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap().lines().count();
    assert_eq!(lines, 40);
}

/// `[domain_guard]`: the run's `best.ckpt` carries a guard fitted to its training structures, which leaves their
/// energies exactly as the networks give them and raises the energy of a structure far from them (an ethanol
/// hydrogen moved 0.6 Å further from the first heavy atom); the log says so.
#[test]
fn a_guarded_run_fits_its_guard_to_the_training_structures() {
    let dir = tmpdir("train_guard");
    let mut cfg = small_config(&dir);
    cfg.training.max_epochs = 3;
    cfg.domain_guard.strength = 0.002;
    train_quietly(&cfg);
    let guarded = pilip::train::checkpoint::Checkpoint::load(&dir.join("checkpoints/best.ckpt")).unwrap().model;
    let mut plain = guarded.clone();
    plain.fit_domain_guard(&[], 0, 0, 1.0, 0.0).unwrap();
    let splits = pilip::dataset::load(&cfg.data).unwrap();
    for f in splits.train.iter().take(20) {
        assert_eq!(guarded.predict_frame(f).unwrap().energy, plain.predict_frame(f).unwrap().energy);
    }
    let mut far = splits.train[0].clone();
    let h = far.numbers.iter().position(|&z| z == 1).unwrap();
    let c = far.numbers.iter().position(|&z| z != 1).unwrap();
    let bond: Vec<f64> = (0..3).map(|a| far.positions[h][a] - far.positions[c][a]).collect();
    let length = bond.iter().map(|x| x * x).sum::<f64>().sqrt();
    far.positions[h].iter_mut().zip(&bond).for_each(|(x, b)| *x += 0.6 * b / length);
    let penalty = guarded.predict_frame(&far).unwrap().energy - plain.predict_frame(&far).unwrap().energy;
    assert!(penalty > 1e-3, "guard penalty {penalty} eV");
    let log = std::fs::read_to_string(dir.join("train.log")).unwrap();
    assert!(log.contains("domain guard fitted to the 100 training structures"), "{log}");
}

#[test]
fn energy_only_training_with_pitc_learns_correlated_forces() {
    let dir = tmpdir("eonly");
    let mut cfg = small_config(&dir);
    cfg.data.train_forces_fraction = 0.0;
    cfg.loss.forces_weight = 0.0;
    cfg.loss.pitc_weight = 1.0;
    cfg.loss.pitc_order = 2;
    cfg.loss.epsilon = 0.03;
    cfg.data.n_train = 200;
    cfg.training.max_epochs = 30;
    cfg.training.early_stopping_metric = pilip::config::StoppingMetric::ValEnergyRmse;
    let s = train_quietly(&cfg);
    let corr = s.valid.forces_correlation.unwrap();
    assert!(corr > 0.6, "force correlation {corr:.3}");
}

#[test]
fn resume_reproduces_the_uninterrupted_run() {
    // the cosine schedule never updates its "best" (+∞), which must survive the JSON checkpoint
    for schedule in [Schedule::Plateau, Schedule::Cosine] {
        resume_reproduces_the_uninterrupted_run_with(schedule);
    }
}

fn resume_reproduces_the_uninterrupted_run_with(schedule: Schedule) {
    let (da, db) = (tmpdir(&format!("resume_a_{schedule:?}")), tmpdir(&format!("resume_b_{schedule:?}")));
    let mut ca = small_config(&da);
    // 100 structures in batches of 8 are 13 steps per epoch: min_steps raises max_epochs from 2 to 4, and
    // weight_decay_atoms = 45 and weight_decay_params = 1e-3 make the decay (45 + 1e-3 × n_params) / (100 × 9 atoms),
    // for the uninterrupted run and the resumed one alike
    ca.training.max_epochs = 2;
    ca.training.min_steps = 4 * 13;
    (ca.training.lr_small_sets, ca.training.lr_small_sets_below_atoms) = (2e-3, 901); // 900 atoms: a small set's rate
    ca.training.weight_decay_atoms = 45.0;
    ca.training.weight_decay_params = 1e-3;
    ca.training.ema_decay = 0.9;
    ca.training.schedule = schedule;
    ca.loss.pitc_weight = 0.5;
    ca.loss.pisc_weight = 0.1;
    let mut cb = ca.clone();
    cb.output.run_dir = db.clone();
    train_quietly(&ca);
    let first = pilip::train::train(&cb, &TrainOptions { quiet: true, stop_after: Some(2), ..Default::default() }).unwrap();
    assert!(!first.finished);
    assert_eq!(first.epochs_done, 2);
    // a second start without --resume is refused; a changed config is refused
    let e = pilip::train::train(&cb, &TrainOptions { quiet: true, ..Default::default() }).unwrap_err().to_string();
    assert!(e.contains("already holds a run"), "{e}");
    let last = db.join("checkpoints/last.ckpt");
    let mut changed = cb.clone();
    changed.loss.pitc_weight = 0.6;
    let e = pilip::train::train(&changed, &TrainOptions { quiet: true, resume: Some(last.clone()), ..Default::default() })
        .unwrap_err()
        .to_string();
    assert!(e.contains("loss.pitc_weight"), "{e}");
    let second = pilip::train::train(&cb, &TrainOptions { quiet: true, resume: Some(last), ..Default::default() }).unwrap();
    assert!(second.finished);
    let (a, b) = (metrics_without_timing(&da), metrics_without_timing(&db));
    assert_eq!(a.len(), 4);
    assert_eq!(a, b);
    let resolved = std::fs::read_to_string(db.join("config.resolved.toml")).unwrap();
    assert!(resolved.contains("max_epochs = 4") && resolved.contains("patience = 2000"), "{resolved}");
    let log = std::fs::read_to_string(da.join("train.log")).unwrap();
    let n_params: usize = log.split(" parameters |").next().and_then(|s| s.rsplit("| ").next()).unwrap().parse().unwrap();
    let decay = 45.0 / 900.0 + 1e-3 * n_params as f64 / 900.0;
    assert!(decay > 0.07, "{n_params} parameters: the parameter term is too small to test");
    assert!(resolved.contains(&format!("weight_decay = {decay}\n")), "{decay}: {resolved}");
    assert!(resolved.contains("weight_decay_atoms = 0.0") && resolved.contains("weight_decay_params = 0.0"), "{resolved}");
    assert!(log.contains("training.min_steps = 52: 100 training structures make 13 steps per epoch, so max_epochs 2 → 4"), "{log}");
    assert!(log.contains("training.lr_small_sets = 0.002: fewer than 901 atoms in the training structures (900), so lr 0.003 → 0.002"), "{log}");
    assert!(resolved.contains("\nlr = 0.002\n") && resolved.contains("lr_small_sets = 0.002"), "{resolved}");
    let metrics = std::fs::read_to_string(da.join("metrics.jsonl")).unwrap();
    assert!(metrics.lines().next().is_some_and(|l| l.contains("\"lr\":0.002")), "{metrics}");
    // at the threshold itself the set is not small: it keeps lr
    let de = tmpdir(&format!("resume_e_{schedule:?}"));
    let mut ce = ca.clone();
    (ce.output.run_dir, ce.training.lr_small_sets_below_atoms) = (de.clone(), 900);
    pilip::train::train(&ce, &TrainOptions { quiet: true, stop_after: Some(1), ..Default::default() }).unwrap();
    let (log_e, metrics_e) = (std::fs::read_to_string(de.join("train.log")).unwrap(), std::fs::read_to_string(de.join("metrics.jsonl")).unwrap());
    assert!(!log_e.contains("lr_small_sets") && metrics_e.contains("\"lr\":0.003"), "{log_e}\n{metrics_e}");
    assert!(log.contains("training.weight_decay_atoms = 45: with 900 atoms in the training structures, weight_decay 0 → 0.0500"), "{log}");
    let note = format!("training.weight_decay_params = 0.001: {n_params} trained parameters and 900 atoms in the training structures, weight_decay 0.05 → {decay:.4}");
    assert!(log.contains(&note), "{note}\n{log}");
    // the same run with the decay written out as weight_decay; without any decay it differs
    let dc = tmpdir(&format!("resume_c_{schedule:?}"));
    let mut cc = ca.clone();
    cc.output.run_dir = dc.clone();
    (cc.training.weight_decay, cc.training.weight_decay_atoms, cc.training.weight_decay_params) = (decay, 0.0, 0.0);
    train_quietly(&cc);
    assert_eq!(metrics_without_timing(&dc), a);
    let dd = tmpdir(&format!("resume_d_{schedule:?}"));
    cc.output.run_dir = dd.clone();
    cc.training.weight_decay = 0.0;
    train_quietly(&cc);
    assert_ne!(metrics_without_timing(&dd), a);
}

#[test]
fn the_first_layer_preconditioner_changes_the_path_not_the_model() {
    // the same 40-epoch run on 100 ethanol structures with the preconditioner (the default) and without: the log
    // names its directions, the two runs differ, and what it trains is an ordinary model — the checkpoint predicts
    // exactly what the run's test pass reported (the optimiser's coordinates never reach the model). Whether it
    // fits sooner is a benchmark (docs/benchmarks.md, session 49): on this small model and set it does not.
    let (da, db) = (tmpdir("precondition_on"), tmpdir("precondition_off"));
    let mut ca = small_config(&da);
    ca.training.precondition_tangents_min_atoms = 0; // the tangents' share at any size (here 900 atoms)
    let mut cb = ca.clone();
    cb.output.run_dir = db.clone();
    cb.training.precondition_variance = 0.0;
    let a = train_quietly(&ca);
    train_quietly(&cb);
    let log = std::fs::read_to_string(da.join("train.log")).unwrap();
    assert!(log.contains("first-layer preconditioner: [") && log.contains("scaled to variance 0.1"), "{log}");
    assert!(!std::fs::read_to_string(db.join("train.log")).unwrap().contains("preconditioner"));
    assert_ne!(metrics_without_timing(&da), metrics_without_timing(&db));
    let best = pilip::train::checkpoint::Checkpoint::load(&da.join("checkpoints/best.ckpt")).unwrap().model;
    let test = pilip::io::extxyz::read_file(&da.join("test.extxyz"), &ca.data.keys).unwrap();
    let m = pilip::metrics::compute(&test, &pilip::metrics::predict_all(&best, &test).unwrap());
    let reported = a.test.unwrap();
    assert!(m.forces_mae_mev_per_A.is_some());
    assert_eq!(m.forces_mae_mev_per_A, reported.forces_mae_mev_per_A);
    assert_eq!(m.energy_mae_mev, reported.energy_mae_mev);
    // below precondition_tangents_min_atoms the run takes the inputs' covariance alone and scales only the
    // directions above precondition_variance_small_sets: the log says so, the resolved config has β = 0 and
    // c = 1, and the run is the one with those two settings written out, not the one with the tangents
    let (dc, dd) = (tmpdir("precondition_small_set"), tmpdir("precondition_inputs_only"));
    let mut cc = ca.clone();
    cc.output.run_dir = dc.clone();
    cc.training.precondition_tangents_min_atoms = 1000;
    let mut cd = ca.clone();
    cd.output.run_dir = dd.clone();
    cd.training.precondition_tangents = 0.0;
    cd.training.precondition_variance = 1.0;
    train_quietly(&cc);
    train_quietly(&cd);
    let log = std::fs::read_to_string(dc.join("train.log")).unwrap();
    let note = "training.precondition_tangents_min_atoms = 1000: 900 atoms in the training structures, so precondition_tangents 0.5 → 0";
    let variance = "training.precondition_variance_small_sets = 1: fewer than 1000 atoms in the training structures, so precondition_variance 0.1 → 1";
    assert!(log.contains(note) && log.contains(variance) && log.contains("(tangents' share 0)"), "{log}");
    assert!(log.contains("scaled to variance 1 "), "{log}");
    let resolved = std::fs::read_to_string(dc.join("config.resolved.toml")).unwrap();
    assert!(resolved.contains("precondition_tangents = 0.0\n") && resolved.contains("precondition_variance = 1.0\n"), "{resolved}");
    assert_eq!(metrics_without_timing(&dc), metrics_without_timing(&dd));
    assert_ne!(metrics_without_timing(&dc), metrics_without_timing(&da));
}

#[test]
fn a_time_budget_chooses_the_epoch_count_before_training() {
    // a budget far too small for one epoch: one epoch, chosen before training, and that run is exactly the run of
    // max_epochs = 1 without a budget (the timed rehearsal leaves the model and optimiser state untouched)
    let (da, db) = (tmpdir("budget_a"), tmpdir("budget_b"));
    let mut ca = small_config(&da);
    ca.training.max_epochs = 50;
    ca.training.max_minutes = 1e-4;
    ca.training.schedule = Schedule::Cosine;
    ca.training.ema_decay = 0.9;
    let a = train_quietly(&ca);
    assert!(a.finished && a.epochs_done == 1, "{} epochs", a.epochs_done);
    let log = std::fs::read_to_string(da.join("train.log")).unwrap();
    assert!(log.contains("training.max_minutes = 0.0001: an epoch takes") && log.contains("max_epochs 50 → 1"), "{log}");
    assert!(std::fs::read_to_string(da.join("config.resolved.toml")).unwrap().contains("max_epochs = 1\n"));
    assert!(!da.join("checkpoints/rehearsal.ckpt").exists());
    let mut cb = ca.clone();
    cb.output.run_dir = db.clone();
    (cb.training.max_epochs, cb.training.max_minutes) = (1, 0.0);
    train_quietly(&cb);
    assert_eq!(metrics_without_timing(&da), metrics_without_timing(&db));

    // a generous budget never raises max_epochs; a resumed run keeps the count its start chose, even when the
    // config's max_epochs (the cap) was raised since
    let dc = tmpdir("budget_c");
    let mut cc = small_config(&dc);
    (cc.training.max_epochs, cc.training.max_minutes) = (3, 1000.0);
    let first = pilip::train::train(&cc, &TrainOptions { quiet: true, stop_after: Some(1), ..Default::default() }).unwrap();
    assert_eq!((first.epochs_done, first.finished), (1, false));
    assert!(std::fs::read_to_string(dc.join("train.log")).unwrap().contains("max_epochs 3 → 3"));
    cc.training.max_epochs = 5;
    let resume = Some(dc.join("checkpoints/last.ckpt"));
    let spent_first = budget_of(&dc);
    let second = pilip::train::train(&cc, &TrainOptions { quiet: true, resume, ..Default::default() }).unwrap();
    assert_eq!((second.epochs_done, second.finished), (3, true));
    // the budget's clock goes on from the checkpoint's; the test pass's reserve and the cap on replanning are the
    // start's (max_epochs 3, not the 5 set since)
    let spent_second = budget_of(&dc);
    assert!(spent_first.spent_s > 0.0 && spent_second.spent_s > spent_first.spent_s, "{spent_first:?} {spent_second:?}");
    assert!(spent_first.reserve_s > 0.0 && spent_second.reserve_s == spent_first.reserve_s);
    assert_eq!((spent_first.cap_epochs, spent_second.cap_epochs), (3, 3));
}

/// The budget's clock in a run's `last.ckpt`.
fn budget_of(run: &std::path::Path) -> pilip::train::budget::BudgetState {
    let ck = pilip::train::checkpoint::Checkpoint::load(&run.join("checkpoints/last.ckpt")).unwrap();
    ck.state.and_then(|s| s.budget).expect("a budgeted run's checkpoint has the budget's clock")
}

/// Trains `cfg` quietly into `dir` (its `output.run_dir` replaced) with `opts`.
fn train_in(cfg: &Config, dir: &Path, opts: TrainOptions) {
    let mut c = cfg.clone();
    c.output.run_dir = dir.to_path_buf();
    pilip::train::train(&c, &TrainOptions { quiet: true, ..opts }).unwrap();
}

/// A whole run of `cfg` into its own run directory, without progress output.
fn train_quietly(cfg: &Config) -> pilip::train::TrainSummary {
    pilip::train::train(cfg, &TrainOptions { quiet: true, ..Default::default() }).unwrap()
}

/// The compression W of a checkpoint's bispectrum model, and whether it is still trained.
fn compression_of(checkpoint: &Path) -> (bool, Vec<f64>) {
    let model = serde_json::to_value(pilip::train::checkpoint::Checkpoint::load(checkpoint).unwrap().model).unwrap();
    let w = model["four_body"]["compression"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    (model["four_body"]["trainable"].as_bool().unwrap(), w)
}

/// `bispectrum.trained_fraction = 0.5` over 4 epochs: W moves in epochs 1–2 and is kept from epoch 3 on (the log
/// says so, the optimiser's state and the EMA lose its parameters, the weight decay still counts them), unlike
/// a run that trains it throughout; a run stopped before or after the freeze resumes bit for bit.
#[test]
fn a_compression_trained_for_part_of_the_run_is_kept_after_it_and_resumes_exactly() {
    let [whole, part, two, one] = ["whole", "part", "two", "one"].map(|name| tmpdir(&format!("trained_fraction_{name}")));
    let mut cfg = small_config(&whole);
    cfg.data.n_train = 40;
    cfg.model.family = pilip::family::Family::Bispectrum;
    cfg.bispectrum.channels = 3;
    (cfg.training.max_epochs, cfg.training.ema_decay, cfg.training.weight_decay_params) = (4, 0.9, 1e-3);
    cfg.training.precondition_variance = 0.01;
    train_in(&cfg, &whole, TrainOptions::default());
    cfg.bispectrum.trained_fraction = 0.5;
    train_in(&cfg, &part, TrainOptions::default());
    train_in(&cfg, &two, TrainOptions { stop_after: Some(2), ..Default::default() });
    let start = {
        let splits = pilip::dataset::load(&cfg.data).unwrap();
        let all: Vec<&Frame> = splits.train.iter().chain(&splits.valid).chain(&splits.test).collect();
        serde_json::to_value(pilip::train::initial_model(&cfg, &splits.train, &all).unwrap()).unwrap()["four_body"]["compression"].clone()
    };
    let (w_start, (trained_whole, w_whole), (trained_two, w_two), (trained_part, w_part)) = (
        start.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect::<Vec<_>>(),
        compression_of(&whole.join("checkpoints/last.ckpt")),
        compression_of(&two.join("checkpoints/last.ckpt")),
        compression_of(&part.join("checkpoints/last.ckpt")),
    );
    assert!(trained_whole && !trained_two && !trained_part);
    assert!(max_abs_diff(w_start.iter().copied(), w_two.iter().copied()) > 1e-4, "W moved in the first two epochs");
    assert_eq!(w_part, w_two, "W is kept from epoch 3 on");
    assert!(max_abs_diff(w_whole.iter().copied(), w_two.iter().copied()) > 1e-5, "trained throughout, W moves on");
    let log = std::fs::read_to_string(part.join("train.log")).unwrap();
    let line = format!("bispectrum.trained_fraction = 0.5: the compression ({} parameters) is kept from epoch 3 of 4 on", w_part.len());
    assert!(log.contains(&line), "{line}\n{log}");
    let ck = pilip::train::checkpoint::Checkpoint::load(&part.join("checkpoints/last.ckpt")).unwrap();
    let st = ck.state.unwrap();
    assert_eq!((st.optimizer.m.len(), st.ema.as_ref().unwrap().len()), (ck.model.n_params(), ck.model.n_params()));
    assert_eq!(st.frozen_compression_params, w_part.len());
    let (a, b) = (metrics_without_timing(&whole), metrics_without_timing(&part));
    assert_eq!(a[..2], b[..2]);
    assert_ne!(a[2..], b[2..]);
    let resolved = |d: &Path| std::fs::read_to_string(d.join("config.resolved.toml")).unwrap().replace(d.to_str().unwrap(), "RUN_DIR");
    // resumed after the freeze (epoch 2's checkpoint holds it) and before it, with the same weight decay
    train_in(&cfg, &two, TrainOptions { resume: Some(two.join("checkpoints/last.ckpt")), ..Default::default() });
    assert_eq!(metrics_without_timing(&two), b);
    assert_eq!(resolved(&two), resolved(&part));
    train_in(&cfg, &one, TrainOptions { stop_after: Some(1), ..Default::default() });
    train_in(&cfg, &one, TrainOptions { resume: Some(one.join("checkpoints/last.ckpt")), ..Default::default() });
    assert_eq!(metrics_without_timing(&one), b);
    assert_eq!(compression_of(&one.join("checkpoints/last.ckpt")).1, w_part);
    // fine-tuning (with the anchor) from a start whose W is still trained freezes it the same way and resumes
    // exactly; from a start whose W was kept, W stays kept
    let [tuned, tuned_resumed, tuned_kept] = ["tuned", "tuned_resumed", "tuned_kept"].map(|name| tmpdir(&format!("trained_fraction_{name}")));
    let mut tune = cfg.clone();
    (tune.model.init, tune.loss.anchor_weight) = (Some(whole.join("checkpoints/best.ckpt")), 0.1);
    train_in(&tune, &tuned, TrainOptions::default());
    train_in(&tune, &tuned_resumed, TrainOptions { stop_after: Some(3), ..Default::default() });
    train_in(&tune, &tuned_resumed, TrainOptions { resume: Some(tuned_resumed.join("checkpoints/last.ckpt")), ..Default::default() });
    assert_eq!(metrics_without_timing(&tuned), metrics_without_timing(&tuned_resumed));
    assert!(std::fs::read_to_string(tuned.join("train.log")).unwrap().contains("is kept from epoch 3 of 4 on"));
    tune.model.init = Some(part.join("checkpoints/best.ckpt"));
    train_in(&tune, &tuned_kept, TrainOptions::default());
    assert!(resolved(&tuned_kept).contains("trainable = false"), "{}", resolved(&tuned_kept));
    assert_eq!(compression_of(&tuned_kept.join("checkpoints/last.ckpt")), (false, w_part.clone()));
}

/// `model.bispectrum_max_elements`: ethanol's three elements train the power spectrum under a limit of two (the
/// log and `config.resolved.toml` say so, and a resumed run resolves the same family) and the bispectrum family
/// under a limit of three; fine-tuning keeps the start model's family whatever the limit.
#[test]
fn the_bispectrum_family_gives_way_to_the_power_spectrum_above_its_element_limit() {
    use pilip::family::Family;
    let [two, three, tuned] = ["two", "three", "tuned"].map(|name| tmpdir(&format!("max_elements_{name}")));
    let mut cfg = small_config(&two);
    cfg.data.n_train = 40;
    cfg.model.family = Family::Bispectrum;
    cfg.bispectrum.channels = 3;
    cfg.training.max_epochs = 2;
    let family_of = |dir: &Path| pilip::train::checkpoint::Checkpoint::load(&dir.join("checkpoints/last.ckpt")).unwrap().model.family();
    cfg.model.bispectrum_max_elements = 2;
    train_in(&cfg, &two, TrainOptions { stop_after: Some(1), ..Default::default() });
    train_in(&cfg, &two, TrainOptions { resume: Some(two.join("checkpoints/last.ckpt")), ..Default::default() });
    assert_eq!(family_of(&two), Family::PowerSpectrum);
    assert_eq!(metrics_without_timing(&two).len(), 2);
    let log = std::fs::read_to_string(two.join("train.log")).unwrap();
    let line = "model.bispectrum_max_elements = 2: the training structures hold 3 elements (H, C, O), so family \"bispectrum\" → \"power_spectrum\"";
    assert!(log.contains(line), "{line}\n{log}");
    let resolved = std::fs::read_to_string(two.join("config.resolved.toml")).unwrap();
    assert!(resolved.contains("family = \"power_spectrum\""), "{resolved}");
    cfg.model.bispectrum_max_elements = 3;
    train_in(&cfg, &three, TrainOptions::default());
    assert_eq!(family_of(&three), Family::Bispectrum);
    assert!(!std::fs::read_to_string(three.join("train.log")).unwrap().contains("bispectrum_max_elements"));
    let mut tune = cfg.clone();
    (tune.model.init, tune.model.bispectrum_max_elements) = (Some(three.join("checkpoints/best.ckpt")), 2);
    train_in(&tune, &tuned, TrainOptions::default());
    assert_eq!(family_of(&tuned), Family::Bispectrum);
}

#[test]
fn training_is_deterministic_for_any_thread_count() {
    let mut runs = Vec::new();
    for threads in [1, 2] {
        let dir = tmpdir(&format!("threads{threads}"));
        let mut cfg = small_config(&dir);
        cfg.training.max_epochs = 2;
        cfg.training.threads = threads;
        cfg.loss.pitc_weight = 0.5;
        train_quietly(&cfg);
        runs.push(metrics_without_timing(&dir));
    }
    assert_eq!(runs[0].len(), 2);
    assert_eq!(runs[0], runs[1]);
}

#[test]
fn checkpoints_without_a_model_family_load_as_power_spectrum_models() {
    // Checkpoints written before model families existed have no "family" key.
    let mols = labelled_molecules();
    let model = random_model(vec![1, 6, 8], 4.0, &mols, 9);
    let mut json = serde_json::to_value(&model).unwrap();
    assert_eq!(json["family"], "power_spectrum");
    json.as_object_mut().unwrap().remove("family");
    let old: pilip::model::Model = serde_json::from_value(json).unwrap();
    assert_eq!(old.family(), pilip::family::Family::PowerSpectrum);
    let (a, b) = (model.predict_frame(&mols[0]).unwrap(), old.predict_frame(&mols[0]).unwrap());
    assert_eq!((a.energy, a.forces), (b.energy, b.forces));
    let mut json = serde_json::to_value(&model).unwrap();
    json["family"] = "ace".into();
    let e = serde_json::from_value::<pilip::model::Model>(json).unwrap_err().to_string();
    assert!(e.contains("ace") && e.contains("power_spectrum"), "{e}");
}

/// A model with per-element radial widths is saved (checkpoint format 3) and read back with them: the same
/// predictions, which the same networks without the widths do not give.
#[test]
fn checkpoints_keep_per_element_radial_widths() {
    use pilip::train::checkpoint::Checkpoint;
    let mols = labelled_molecules();
    let spec = pilip::descriptor::DescriptorSpec { radial_width_by_element: [("C".to_string(), 0.5)].into(), ..spec(4.0) };
    let model = pilip::model::Model::power_spectrum(spec, vec![1, 6, 8], &[16, 12], 9).unwrap();
    let ck = Checkpoint::new(&Config::default(), &model, None);
    assert_eq!(ck.format_version, 3);
    let path = tmpdir("ck-widths").join("m.ckpt");
    ck.save(&path).unwrap();
    let read = Checkpoint::load(&path).unwrap().model;
    let (a, b) = (model.predict_frame(&mols[0]).unwrap(), read.predict_frame(&mols[0]).unwrap());
    assert_eq!((a.energy, a.forces), (b.energy, b.forces));
    let mut json = serde_json::to_value(&model).unwrap();
    json["descriptor"].as_object_mut().unwrap().remove("radial_width_by_element").unwrap();
    let plain: pilip::model::Model = serde_json::from_value(json).unwrap();
    let c = plain.predict_frame(&mols[0]).unwrap();
    assert!((a.energy - c.energy).abs() > 1e-6 * (1.0 + a.energy.abs()), "{} vs {}", a.energy, c.energy);
}

#[test]
fn a_split_may_have_no_test_set_but_needs_validation() {
    let mut cfg = Config::default();
    cfg.data.file = example_data();
    cfg.data.keys.energy = "REF_energy".into();
    cfg.data.keys.forces = "REF_forces".into();
    cfg.data.test_fraction = 0.0;
    let s = pilip::dataset::load(&cfg.data).unwrap();
    assert!(s.test.is_empty() && s.test_idx.is_empty());
    assert_eq!((s.train.len(), s.valid.len()), (270, 30));
    cfg.data.test_fraction = 0.001; // any other fraction holds out at least one structure
    assert_eq!(pilip::dataset::load(&cfg.data).unwrap().test.len(), 1);
    cfg.data.valid_fraction = 0.0;
    let e = pilip::dataset::load(&cfg.data).unwrap_err().to_string();
    assert!(e.contains("validation set is empty") && e.contains("data.n_valid"), "{e}");
}

#[test]
fn anchor_term_gradient_matches_finite_differences() {
    let mut rng = Rng::new(4);
    let params: Vec<f64> = (0..7).map(|_| rng.normal()).collect();
    let anchor: Vec<f64> = (0..7).map(|_| rng.normal()).collect();
    let mut g = vec![0.0; 7];
    let loss = pilip::train::loss::anchor_term(&params, &anchor, 0.3, &mut g);
    let expected = 0.3 * params.iter().zip(&anchor).map(|(p, a)| (p - a) * (p - a)).sum::<f64>() / 7.0;
    assert!((loss - expected).abs() < 1e-15);
    for k in 0..7 {
        let (mut up, mut down) = (params.clone(), params.clone());
        up[k] += 1e-6;
        down[k] -= 1e-6;
        let f = |p: &[f64]| pilip::train::loss::anchor_term(p, &anchor, 0.3, &mut vec![0.0; 7]);
        let fd = (f(&up) - f(&down)) / 2e-6;
        assert!((g[k] - fd).abs() < 1e-8, "component {k}: {} vs {fd}", g[k]);
    }
}

#[test]
fn fine_tuning_starts_from_the_checkpoint_with_refitted_offsets_and_the_anchor_holds_it() {
    // A base model trained with forces, then continued on energies only, with energies shifted by a constant
    // per atom (another level of theory): the start keeps the base's networks and architecture (even when the
    // config asks for another), refits the offsets so the mean energy error is 0, and a strong anchor keeps the
    // parameters where they were while a run without it moves them.
    let base_dir = tmpdir("finetune-base");
    let base_cfg = small_config(&base_dir);
    train_quietly(&base_cfg);
    let base = pilip::train::checkpoint::Checkpoint::load(&base_dir.join("checkpoints/best.ckpt")).unwrap();

    let shifted = tmpdir("finetune-data").join("shifted.extxyz");
    let mut frames = pilip::io::extxyz::read_file(&example_data(), &base_cfg.data.keys).unwrap();
    for f in &mut frames {
        f.energy = f.energy.map(|e| e + 0.37 * f.len() as f64 - 12.0);
        f.forces = None;
    }
    pilip::io::extxyz::write_file(&shifted, &frames, &base_cfg.data.keys).unwrap();
    let fine_tune = |name: &str, anchor: f64| {
        let dir = tmpdir(name);
        let mut cfg = small_config(&dir);
        cfg.data.file = shifted.clone();
        cfg.model.init = Some(base_dir.join("checkpoints/best.ckpt"));
        cfg.model.hidden = vec![5]; // taken from the checkpoint instead
        cfg.loss.forces_weight = 0.0;
        cfg.loss.anchor_weight = anchor;
        cfg.training.max_epochs = 5;
        cfg.training.early_stopping_metric = pilip::config::StoppingMetric::ValEnergyRmse;
        (dir, cfg)
    };
    let (dir, cfg) = fine_tune("finetune-free", 0.0);
    let splits = pilip::dataset::load(&cfg.data).unwrap();
    let all: Vec<&Frame> = splits.train.iter().chain(&splits.valid).collect();
    let start = pilip::train::initial_model(&cfg, &splits.train, &all).unwrap();
    assert_eq!(start.params(), base.model.params());
    let p = pilip::metrics::predict_all(&start, &splits.train).unwrap();
    let mean_error: f64 = splits.train.iter().zip(&p).map(|(f, p)| p.energy - f.energy.unwrap()).sum::<f64>() / p.len() as f64;
    assert!(mean_error.abs() < 1e-4, "mean energy error after the refit (the shift was −8.7 eV): {mean_error} eV");

    let distance = |dir: &Path| {
        let ck = pilip::train::checkpoint::Checkpoint::load(&dir.join("checkpoints/last.ckpt")).unwrap();
        assert_eq!(ck.config.model.hidden, base.config.model.hidden, "architecture from the checkpoint");
        ck.model.params().iter().zip(base.model.params()).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt()
    };
    train_quietly(&cfg);
    let free = distance(&dir);
    let (dir, cfg) = fine_tune("finetune-anchored", 1e6);
    train_quietly(&cfg);
    let anchored = distance(&dir);
    assert!(anchored < 0.01 * free, "anchored {anchored} vs free {free}");

    // model.frozen_layers = 1: the first layer of every network stays bit for bit, the rest moves.
    // weight_decay_params counts only the trained parameters.
    let (dir, mut cfg) = fine_tune("finetune-frozen", 0.0);
    cfg.model.frozen_layers = 1;
    cfg.training.weight_decay_params = 1e-3;
    train_quietly(&cfg);
    let tuned = pilip::train::checkpoint::Checkpoint::load(&dir.join("checkpoints/last.ckpt")).unwrap().model;
    let networks = |m: &pilip::model::Model| match &m.atomic {
        pilip::model::AtomicModel::PowerSpectrum(p) | pilip::model::AtomicModel::Bispectrum(p) => p.networks.clone(),
    };
    let mut moved_above = 0.0;
    for (got, want) in networks(&tuned).iter().zip(networks(&base.model)) {
        let first = want.sizes[0] * want.sizes[1] + want.sizes[1];
        assert!(got.params[..first] == want.params[..first], "the first layer must stay as it was");
        moved_above += got.params[first..].iter().zip(&want.params[first..]).map(|(a, b)| (a - b).abs()).sum::<f64>();
    }
    assert!(moved_above > 1e-3, "the layers above are trained: {moved_above}");
    let frozen: usize = networks(&base.model).iter().map(|n| n.sizes[0] * n.sizes[1] + n.sizes[1]).sum();
    let log = std::fs::read_to_string(dir.join("train.log")).unwrap();
    let note = format!("training.weight_decay_params = 0.001: {} trained parameters", base.model.n_params() - frozen);
    assert!(frozen > 0 && log.contains(&note), "{note}\n{log}");
    // as many frozen layers as the networks have leaves nothing to train: refused with the depth
    let (_, mut cfg) = fine_tune("finetune-frozen-all", 0.0);
    cfg.model.frozen_layers = 3;
    let e = pilip::train::train(&cfg, &TrainOptions { quiet: true, ..Default::default() }).unwrap_err().to_string();
    assert!(e.contains("model.frozen_layers = 3") && e.contains("3 layers"), "{e}");

    // Species the checkpoint does not know are refused by name.
    let (_, mut cfg) = fine_tune("finetune-species", 0.0);
    cfg.data.file = root_data("cu_50.extxyz");
    cfg.data.keys = Default::default();
    (cfg.data.n_train, cfg.data.n_valid, cfg.data.n_test) = (20, 10, 10);
    let e = pilip::train::train(&cfg, &TrainOptions { quiet: true, ..Default::default() }).unwrap_err().to_string();
    assert!(e.contains("model.init") && e.contains("but the data also has Cu"), "{e}");
}

/// The example data with energies of another "level of theory": `base`'s own energies plus offsets and a smooth
/// invariant term it does not have (0.05 × the radius of gyration squared), so that what a Δ correction must learn
/// is known; no forces. Written to a file in a fresh directory `name`.
fn other_level_of_theory(base: &pilip::model::Model, cfg: &Config, name: &str) -> PathBuf {
    let path = tmpdir(name).join("other.extxyz");
    let mut frames = pilip::io::extxyz::read_file(&example_data(), &cfg.data.keys).unwrap();
    for f in &mut frames {
        let n = f.len() as f64;
        let centre: Vec<f64> = (0..3).map(|c| f.positions.iter().map(|p| p[c]).sum::<f64>() / n).collect();
        let spread: f64 = f.positions.iter().map(|p| (0..3).map(|c| (p[c] - centre[c]).powi(2)).sum::<f64>()).sum::<f64>() / n;
        let e = base.predict_frame(f).unwrap().energy;
        f.energy = Some(e + 0.37 * n - 12.0 + 0.05 * spread);
        f.forces = None;
    }
    pilip::io::extxyz::write_file(&path, &frames, &cfg.data.keys).unwrap();
    path
}

#[test]
fn delta_learning_trains_only_the_correction_and_resumes_exactly() {
    let base_dir = tmpdir("delta-base");
    let mut base_cfg = small_config(&base_dir);
    base_cfg.training.max_epochs = 10;
    train_quietly(&base_cfg);
    let base = pilip::train::checkpoint::Checkpoint::load(&base_dir.join("checkpoints/best.ckpt")).unwrap();

    let other = other_level_of_theory(&base.model, &base_cfg, "delta-data");
    let delta_config = |name: &str| {
        let dir = tmpdir(name);
        let mut cfg = small_config(&dir);
        cfg.data.file = other.clone();
        cfg.model.base = Some(base_dir.join("checkpoints/best.ckpt"));
        cfg.model.hidden = vec![8, 8];
        cfg.descriptor.n_radial = 4; // taken from the base instead
        cfg.loss.forces_weight = 0.0;
        cfg.training.max_epochs = 20;
        cfg.training.weight_decay = 0.01; // must not touch the frozen base either
        cfg.training.optimizer = pilip::config::Optimizer::AdamW;
        cfg.training.early_stopping_metric = pilip::config::StoppingMetric::ValEnergyRmse;
        (dir, cfg)
    };
    let (dir, cfg) = delta_config("delta-a");
    let splits = pilip::dataset::load(&cfg.data).unwrap();
    let all: Vec<&Frame> = splits.train.iter().chain(&splits.valid).collect();
    let start = pilip::train::initial_model(&cfg, &splits.train, &all).unwrap();
    let (_, trainable) = pilip::model::Model::with_correction(base.model.clone(), &[8, 8], cfg.training.seed).unwrap();
    assert_eq!(trainable.len(), start.n_params());
    let rmse = |m: &pilip::model::Model| {
        let p = pilip::metrics::predict_all(m, &splits.valid).unwrap();
        pilip::metrics::compute(&splits.valid, &p).energy_rmse_mev_per_atom.unwrap()
    };
    train_quietly(&cfg);
    let trained = pilip::train::checkpoint::Checkpoint::load(&dir.join("checkpoints/last.ckpt")).unwrap();
    assert_eq!(trained.config.descriptor, base.config.descriptor, "descriptor from the base");
    assert_eq!(trained.config.model.hidden, vec![8, 8], "hidden stays the correction's");
    let (p0, p1) = (start.params(), trained.model.params());
    let frozen_moved = p0.iter().zip(&p1).zip(&trainable).filter(|((a, b), &t)| !t && a != b).count();
    let trained_moved = p0.iter().zip(&p1).zip(&trainable).filter(|((a, b), &t)| t && a != b).count();
    assert_eq!(frozen_moved, 0, "the base and the zero blocks stay exactly as they were");
    assert!(trained_moved > trainable.iter().filter(|&&t| t).count() / 2, "the correction is trained");
    let (before, after) = (rmse(&start), rmse(&trained.model));
    assert!(after < 0.2 * before, "validation energy RMSE {before} → {after} meV/atom");

    // an interrupted Δ run resumes to the same result (the frozen set is rebuilt from model.base)
    let (dir_b, cfg_b) = delta_config("delta-b");
    pilip::train::train(&cfg_b, &TrainOptions { quiet: true, stop_after: Some(8), ..Default::default() }).unwrap();
    let resume = Some(dir_b.join("checkpoints/last.ckpt"));
    pilip::train::train(&cfg_b, &TrainOptions { quiet: true, resume, ..Default::default() }).unwrap();
    assert_eq!(metrics_without_timing(&dir), metrics_without_timing(&dir_b));

    // a correction of another depth, and fine-tuning and Δ at once, are refused by name
    let (_, mut cfg) = delta_config("delta-depth");
    cfg.model.hidden = vec![8];
    let e = pilip::train::train(&cfg, &TrainOptions { quiet: true, ..Default::default() }).unwrap_err().to_string();
    assert!(e.contains("model.hidden") && e.contains("as many hidden layers"), "{e}");
    let (_, mut cfg) = delta_config("delta-both");
    cfg.model.init = cfg.model.base.clone();
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("model.init") && e.contains("model.base"), "{e}");
}

/// An exported model serves as `model.base` (and `model.init`) like its checkpoint: read back from its graph it
/// predicts what the checkpoint does; as a Δ base, its input statistics are refitted to the new data with the
/// base's hidden units rewritten to compute the same function (so with the correction zeroed the start model's
/// forces are the base's), the base stays frozen and the correction learns.
#[test]
fn an_exported_model_is_a_base_and_a_start_like_its_checkpoint() {
    let base_dir = tmpdir("onnx-base");
    let mut base_cfg = small_config(&base_dir);
    base_cfg.training.max_epochs = 10;
    train_quietly(&base_cfg);
    let base = pilip::train::checkpoint::Checkpoint::load(&base_dir.join("checkpoints/best.ckpt")).unwrap();
    let onnx = base_dir.join("base.onnx");
    let frames = pilip::io::extxyz::read_file(&example_data(), &base_cfg.data.keys).unwrap();
    pilip::export::export(&base.model, pilip::onnx::metadata::Dtype::F64, &onnx, &frames[..2]).unwrap();
    let read = pilip::train::model_from_onnx(&onnx).unwrap();
    let max_force_diff = |a: &pilip::model::Model, b: &pilip::model::Model, f: &Frame| {
        let (pa, pb) = (a.predict_frame(f).unwrap(), b.predict_frame(f).unwrap());
        max_abs_diff(pa.forces.iter().flatten().copied(), pb.forces.iter().flatten().copied())
    };
    for f in &frames[..5] {
        let (e_read, e_base) = (read.predict_frame(f).unwrap().energy, base.model.predict_frame(f).unwrap().energy);
        assert!((e_read - e_base).abs() < 1e-9 * e_base.abs(), "{e_read} vs {e_base}");
        assert!(max_force_diff(&read, &base.model, f) < 1e-9);
    }

    // Δ from the exported base on data of another level of theory
    let other = other_level_of_theory(&base.model, &base_cfg, "onnx-delta-data");
    let dir = tmpdir("onnx-delta");
    let mut cfg = small_config(&dir);
    cfg.data.file = other;
    cfg.model.base = Some(onnx.clone());
    cfg.model.hidden = vec![8, 8];
    cfg.loss.forces_weight = 0.0;
    cfg.training.max_epochs = 20;
    cfg.training.early_stopping_metric = pilip::config::StoppingMetric::ValEnergyRmse;
    let splits = pilip::dataset::load(&cfg.data).unwrap();
    let all: Vec<&Frame> = splits.train.iter().chain(&splits.valid).collect();
    let start = pilip::train::initial_model(&cfg, &splits.train, &all).unwrap();
    let (_, trainable) = pilip::model::Model::with_correction(read.clone(), &[8, 8], cfg.training.seed).unwrap();
    let mut base_only = start.clone();
    let zeroed: Vec<f64> = start.params().iter().zip(&trainable).map(|(&p, &t)| if t { 0.0 } else { p }).collect();
    base_only.set_params(&zeroed);
    for f in &frames[..5] {
        let d = max_force_diff(&base_only, &base.model, f);
        assert!(d < 1e-8, "the restandardised base differs from the checkpoint by {d} eV/Å");
    }
    train_quietly(&cfg);
    let trained = pilip::train::checkpoint::Checkpoint::load(&dir.join("checkpoints/last.ckpt")).unwrap();
    let frozen_moved = start.params().iter().zip(&trained.model.params()).zip(&trainable).filter(|((a, b), &t)| !t && a != b).count();
    assert_eq!(frozen_moved, 0, "the exported base stays frozen");
    let rmse = |m: &pilip::model::Model| {
        let p = pilip::metrics::predict_all(m, &splits.valid).unwrap();
        pilip::metrics::compute(&splits.valid, &p).energy_rmse_mev_per_atom.unwrap()
    };
    let (before, after) = (rmse(&start), rmse(&trained.model));
    assert!(after < 0.2 * before, "validation energy RMSE {before} → {after} meV/atom");
    assert_eq!(trained.config.descriptor, base.config.descriptor, "descriptor from the exported base");

    // fine-tuning from the exported file, anchored to its (restandardised) start
    let ft_dir = tmpdir("onnx-init");
    let mut ft = small_config(&ft_dir);
    ft.model.init = Some(onnx);
    ft.loss.anchor_weight = 1.0;
    ft.training.max_epochs = 2;
    train_quietly(&ft);
    let tuned = pilip::train::checkpoint::Checkpoint::load(&ft_dir.join("checkpoints/last.ckpt")).unwrap();
    assert_eq!(tuned.config.model.hidden, base.config.model.hidden, "hidden from the exported model");
}

fn root_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data").join(name)
}

#[test]
fn every_example_training_config_loads_with_the_overrides_its_comments_use() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 5, "{n} configs");
    // the energy-only workflow's Δ and fine-tuning steps (docs/energy-only.md)
    let eo = dir.join("energy_only.toml");
    for set in [
        vec!["model.base=\"runs/base/checkpoints/best.ckpt\"", "model.hidden=[8, 8]"],
        vec!["model.init=\"runs/base/checkpoints/best.ckpt\"", "loss.anchor_weight=1.0"],
        vec!["data.temperature=500.0", "loss.score_matching_weight=1e-3"],
    ] {
        let overrides: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        Config::load(&eo, &overrides).unwrap_or_else(|e| panic!("{set:?}: {e}"));
    }
    let e = Config::load(&eo, &["loss.score_matching_weight=1e-3".to_string()]).unwrap_err().to_string();
    assert!(e.contains("data.temperature"), "{e}");
}

/// The default prior (`[repulsion] kind = "zbl"`, switched off from each element pair's shortest training
/// distance on) leaves training bit for bit as it is without one, and makes the energy rise steeply when an atom
/// is pushed into its neighbour, far below anything the data sampled.
#[test]
fn the_default_repulsion_leaves_training_untouched_and_stops_a_collapse() {
    let run = |kind: pilip::config::RepulsionKind, name: &str| {
        let dir = tmpdir(name);
        let mut cfg = small_config(&dir);
        cfg.training.max_epochs = 3;
        cfg.repulsion.kind = kind;
        train_quietly(&cfg);
        let model = pilip::train::checkpoint::Checkpoint::load(&dir.join("checkpoints/last.ckpt")).unwrap().model;
        (metrics_without_timing(&dir), model)
    };
    let (with_metrics, with) = run(pilip::config::RepulsionKind::Zbl, "zbl");
    let (without_metrics, without) = run(pilip::config::RepulsionKind::None, "no-zbl");
    assert_eq!(with_metrics, without_metrics);
    assert_eq!(with.params(), without.params());
    assert!(without.repulsion.is_none());
    let rep = with.repulsion.clone().unwrap();
    assert_eq!(rep.pairs.len(), 6, "H, C, O: six element pairs");
    let ch = rep.pairs.iter().find(|p| p.z == [1, 6]).unwrap();
    assert!(ch.r_outer > 0.75 && ch.r_outer < 1.0, "0.9 × the shortest C–H of the data: {}", ch.r_outer);

    // push a hydrogen into its carbon along the bond
    let frame = pilip::io::extxyz::read_file(&example_data(), &small_config(Path::new(".")).data.keys).unwrap().remove(0);
    let c = frame.numbers.iter().position(|&z| z == 6).unwrap();
    let distance = |j: usize| pilip::frame::norm(&std::array::from_fn(|a| frame.positions[j][a] - frame.positions[c][a]));
    let h = (0..frame.len()).filter(|&j| frame.numbers[j] == 1).min_by(|&a, &b| distance(a).total_cmp(&distance(b))).unwrap();
    let at = |r: f64| {
        let mut f = frame.clone();
        for a in 0..3 {
            f.positions[h][a] = frame.positions[c][a] + (frame.positions[h][a] - frame.positions[c][a]) * r / distance(h);
        }
        f
    };
    let e_eq = with.predict_frame(&frame).unwrap().energy;
    let mut last = f64::NEG_INFINITY;
    for k in 0..=20 {
        let r = ch.r_inner - k as f64 * (ch.r_inner - 0.2) / 20.0;
        let (e_with, e_without) = (with.predict_frame(&at(r)).unwrap().energy, without.predict_frame(&at(r)).unwrap().energy);
        assert!(e_with > e_eq && e_with > last, "r = {r:.2} Å: E − E_eq = {} eV", e_with - e_eq);
        assert!(e_with > e_without, "the prior only adds");
        last = e_with;
    }
    assert!(last - e_eq > 20.0, "C–H at 0.2 Å is {} eV above equilibrium", last - e_eq);
}

/// `training.optimizer = "muon"`: a run stopped and resumed ends where the uninterrupted one ends (Muon's
/// momentum is in the checkpoint, and the compression's freeze shortens it with Adam's moments); the checkpoint
/// holds the momentum of the networks' hidden and first layers only; and the run learns.
#[test]
fn muon_steps_the_network_matrices_learns_and_resumes_exactly() {
    let [adamw, muon, two] = ["adamw", "muon", "two"].map(|name| tmpdir(&format!("muon_{name}")));
    let mut cfg = small_config(&adamw);
    cfg.data.n_train = 60;
    cfg.model.family = pilip::family::Family::Bispectrum;
    cfg.bispectrum.channels = 3;
    cfg.bispectrum.trained_fraction = 0.5;
    (cfg.training.max_epochs, cfg.training.ema_decay, cfg.training.weight_decay) = (12, 0.9, 0.01);
    cfg.training.precondition_variance = 0.01;
    train_in(&cfg, &adamw, TrainOptions::default());
    cfg.training.optimizer = pilip::config::Optimizer::Muon;
    train_in(&cfg, &muon, TrainOptions::default());
    train_in(&cfg, &two, TrainOptions { stop_after: Some(3), ..Default::default() });
    let ck = pilip::train::checkpoint::Checkpoint::load(&two.join("checkpoints/last.ckpt")).unwrap();
    let momentum = ck.state.unwrap().muon.unwrap().momentum;
    assert_eq!(momentum.len(), ck.model.n_params());
    // the networks' matrices that Muon steps: [inputs][32] and [32][32] per element, never the [32][1] output
    // layer or a bias
    let moved = momentum.iter().filter(|&&m| m != 0.0).count();
    let m = serde_json::to_value(&ck.model).unwrap();
    let networks = m["networks"].as_array().map_or(0, |n| n.len());
    assert!(networks > 0, "{}", m.as_object().unwrap().keys().cloned().collect::<Vec<_>>().join(","));
    let inputs: usize = m["networks"].as_array().unwrap().iter().map(|n| n["sizes"][0].as_u64().unwrap() as usize).sum();
    assert_eq!(moved, 32 * inputs + networks * 32 * 32);
    train_in(&cfg, &two, TrainOptions { resume: Some(two.join("checkpoints/last.ckpt")), ..Default::default() });
    let (a, b) = (metrics_without_timing(&muon), metrics_without_timing(&two));
    assert_eq!(a.len(), 12);
    assert_eq!(a, b);
    // it learns, and takes its own path: Muon's steps have a root mean square of 0.2 × lr per weight where
    // Adam's first ones have lr, so in twelve epochs it is behind (on rMD17 it is ahead from a few hundred on)
    let forces = |d: &Path| metrics_without_timing(d).iter().map(|m| m["val"]["forces_mae_mev_per_A"].as_f64().unwrap()).collect::<Vec<_>>();
    let (f_adamw, f_muon) = (forces(&adamw), forces(&muon));
    assert!(f_muon[11] < 0.5 * f_muon[0], "validation force MAE: {f_muon:?}");
    assert!((f_muon[11] - f_adamw[11]).abs() > 1.0, "{f_muon:?} {f_adamw:?}");
    let resolved = std::fs::read_to_string(muon.join("config.resolved.toml")).unwrap();
    assert!(resolved.contains("optimizer = \"muon\"") && resolved.contains("muon_momentum = 0.95"), "{resolved}");
    // below muon_min_atoms (60 structures of 9 atoms) the run is the AdamW run, and says so
    let small = tmpdir("muon_small");
    cfg.training.muon_min_atoms = 541;
    train_in(&cfg, &small, TrainOptions::default());
    assert_eq!(metrics_without_timing(&small), metrics_without_timing(&adamw));
    let log = std::fs::read_to_string(small.join("train.log")).unwrap();
    assert!(log.contains("training.muon_min_atoms = 541: fewer atoms in the training structures (540), so optimizer \"muon\" → \"adamw\""), "{log}");
    assert!(pilip::train::checkpoint::Checkpoint::load(&small.join("checkpoints/last.ckpt")).unwrap().state.unwrap().muon.is_none());
    cfg.training.muon_min_atoms = 540;
    let at = tmpdir("muon_at_threshold");
    train_in(&cfg, &at, TrainOptions { stop_after: Some(1), ..Default::default() });
    assert!(!std::fs::read_to_string(at.join("train.log")).unwrap().contains("muon_min_atoms"));
}

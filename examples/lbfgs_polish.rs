//! A research tool with two uses (`docs/benchmarks.md`, session 45).
//!
//! 1. Does a full-batch L-BFGS phase after Adam lower the test error faster than more Adam epochs? Loads
//!    RUN/checkpoints/best.ckpt (without its domain guard) and the run's data split, minimises the loss of all
//!    training structures (the loss `pilip train` uses, without weight decay) by L-BFGS with a backtracking line
//!    search, and prints validation and test errors as it goes. (Measured on ethanol: no; Adam kept.)
//! 2. `--diagnose`: the test structures with the largest force errors, with the run's domain guard and without it,
//!    and each one's guard penalty.
//!
//! ```text
//! cargo run --release --example lbfgs_polish -- RUN_DIR [--minutes 6] [--history 20] [--eval-every 25] [--f64]
//! cargo run --release --example lbfgs_polish -- RUN_DIR --diagnose
//! ```

use pilip::train::checkpoint::Checkpoint;
use pilip::train::env_cache::EnvCache;
use pilip::train::loss::Weights;
use pilip::train::batch_loss_and_grad;
use pilip::{dataset, metrics, Frame, Model};
use std::error::Error;

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

struct Objective<'a> {
    train: &'a [Frame],
    cache: EnvCache,
    cfg: &'a pilip::Config,
    evals: usize,
}

impl Objective<'_> {
    /// Mean loss per mini-batch of 16 over the whole training set, and its gradient.
    fn eval(&mut self, model: &Model) -> Res<(f64, Vec<f64>)> {
        self.evals += 1;
        let w = Weights::at_epoch(&self.cfg.loss, self.cfg.data.temperature, 10_000);
        let ids: Vec<usize> = (0..self.train.len()).collect();
        let mut f = 0.0;
        let mut g = vec![0.0; model.n_params()];
        let chunks: Vec<&[usize]> = ids.chunks(16).collect();
        for c in &chunks {
            let frames: Vec<&Frame> = c.iter().map(|&i| &self.train[i]).collect();
            let (l, gb) = batch_loss_and_grad(model, &frames, c, &self.cfg.loss, self.cfg.training.seed, &w, 0, true, Some(&self.cache))?;
            f += l.total();
            g.iter_mut().zip(&gb).for_each(|(a, b)| *a += b);
        }
        let n = chunks.len() as f64;
        g.iter_mut().for_each(|x| *x /= n);
        Ok((f / n, g))
    }
}

fn report(tag: &str, model: &Model, splits: &dataset::Splits, started: std::time::Instant) -> Res<()> {
    let mut m = model.clone();
    m.set_training_precision(false);
    let v = metrics::compute(&splits.valid, &metrics::predict_all(&m, &splits.valid)?);
    let t = metrics::compute(&splits.test, &metrics::predict_all(&m, &splits.test)?);
    let f = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.3}"));
    println!(
        "{tag} | {:.0} s | valid E {} F {} | test E {} meV F {} meV/Å",
        started.elapsed().as_secs_f64(),
        f(v.energy_mae_mev),
        f(v.forces_mae_mev_per_A),
        f(t.energy_mae_mev),
        f(t.forces_mae_mev_per_A)
    );
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let run = args.first().ok_or("usage: lbfgs_polish RUN_DIR [--minutes M] [--history m] [--eval-every k] [--f64] [--diagnose]")?;
    let mut minutes = 6.0;
    let mut history = 20usize;
    let mut eval_every = 25usize;
    let mut f64_mode = false;
    let mut diagnosis = false;
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--minutes" => minutes = it.next().ok_or("--minutes needs a value")?.parse()?,
            "--history" => history = it.next().ok_or("--history needs a value")?.parse()?,
            "--eval-every" => eval_every = it.next().ok_or("--eval-every needs a value")?.parse()?,
            "--f64" => f64_mode = true,
            "--diagnose" => diagnosis = true,
            _ => return Err(format!("unknown option {a}").into()),
        }
    }
    let ck = Checkpoint::load(&std::path::Path::new(run).join("checkpoints/best.ckpt"))?;
    let cfg = ck.config.clone();
    let splits = dataset::load(&cfg.data)?;
    if diagnosis {
        return diagnose(&ck.model, &splits);
    }
    let mut model = without_guard(&ck.model)?;
    model.set_training_precision(!f64_mode && cfg.training.precision == pilip::config::Precision::F32);
    let started = std::time::Instant::now();
    report("start", &model, &splits, started)?;
    let mut obj = Objective { train: &splits.train, cache: EnvCache::new(splits.train.len()), cfg: &cfg, evals: 0 };
    let mut x = model.params();
    let (mut f, mut g) = obj.eval(&model)?;
    println!("start loss {f:.6e} |g| {:.3e}", dot(&g, &g).sqrt());
    let mut s_hist: Vec<Vec<f64>> = Vec::new();
    let mut y_hist: Vec<Vec<f64>> = Vec::new();
    let mut iter = 0usize;
    while started.elapsed().as_secs_f64() < minutes * 60.0 {
        iter += 1;
        // two-loop recursion: d = −H g
        let mut q = g.clone();
        let mut alpha = vec![0.0; s_hist.len()];
        for i in (0..s_hist.len()).rev() {
            let rho = 1.0 / dot(&y_hist[i], &s_hist[i]);
            alpha[i] = rho * dot(&s_hist[i], &q);
            q.iter_mut().zip(&y_hist[i]).for_each(|(a, b)| *a -= alpha[i] * b);
        }
        let gamma = match (s_hist.last(), y_hist.last()) {
            (Some(s), Some(y)) => dot(s, y) / dot(y, y),
            _ => 1e-3 / g.iter().map(|v| v.abs()).sum::<f64>().max(1e-12),
        };
        q.iter_mut().for_each(|v| *v *= gamma);
        for i in 0..s_hist.len() {
            let rho = 1.0 / dot(&y_hist[i], &s_hist[i]);
            let beta = rho * dot(&y_hist[i], &q);
            q.iter_mut().zip(&s_hist[i]).for_each(|(a, b)| *a += (alpha[i] - beta) * b);
        }
        let d: Vec<f64> = q.iter().map(|v| -v).collect();
        let slope = dot(&g, &d);
        if slope >= 0.0 {
            println!("iter {iter}: not a descent direction; history cleared");
            s_hist.clear();
            y_hist.clear();
            continue;
        }
        let mut t = 1.0;
        let mut accepted = None;
        for _ in 0..12 {
            let xt: Vec<f64> = x.iter().zip(&d).map(|(a, b)| a + t * b).collect();
            model.set_params(&xt);
            let (ft, gt) = obj.eval(&model)?;
            if ft.is_finite() && ft <= f + 1e-4 * t * slope {
                accepted = Some((xt, ft, gt));
                break;
            }
            t *= 0.3;
        }
        let Some((xn, fnew, gnew)) = accepted else {
            model.set_params(&x);
            if s_hist.is_empty() {
                println!("iter {iter}: line search failed along steepest descent; stopping");
                break;
            }
            println!("iter {iter}: line search failed; history cleared");
            s_hist.clear();
            y_hist.clear();
            continue;
        };
        let s: Vec<f64> = xn.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = gnew.iter().zip(&g).map(|(a, b)| a - b).collect();
        if dot(&s, &y) > 1e-12 * dot(&y, &y).sqrt() * dot(&s, &s).sqrt() {
            s_hist.push(s);
            y_hist.push(y);
            if s_hist.len() > history {
                s_hist.remove(0);
                y_hist.remove(0);
            }
        }
        x = xn;
        f = fnew;
        g = gnew;
        if iter.is_multiple_of(eval_every) {
            println!("iter {iter} evals {} loss {f:.6e} step {t:.2e} |g| {:.3e}", obj.evals, dot(&g, &g).sqrt());
            report(&format!("iter {iter}"), &model, &splits, started)?;
        }
    }
    model.set_params(&x);
    println!("end: {iter} iterations, {} loss evaluations, loss {f:.6e}", obj.evals);
    report("end", &model, &splits, started)?;
    Ok(())
}

/// `model`'s networks without its domain guard (a fit of strength 0 removes it).
fn without_guard(model: &Model) -> Res<Model> {
    let mut bare = model.clone();
    bare.fit_domain_guard(&[], 0, 0, 0.0, 0.0)?;
    Ok(bare)
}

/// The test structures with the largest force errors, with the model's domain guard and without it.
fn diagnose(model: &Model, splits: &dataset::Splits) -> Res<()> {
    let mut m = model.clone();
    m.set_training_precision(false);
    let bare = without_guard(&m)?;
    let (pa, pb) = (metrics::predict_all(&m, &splits.test)?, metrics::predict_all(&bare, &splits.test)?);
    // per test structure: force MAE (meV/Å) of each model
    let mae = |p: &[pilip::Prediction]| -> Res<Vec<f64>> {
        splits.test.iter().zip(p).enumerate().map(|(i, (f, p))| {
            let r = f.forces.as_ref().ok_or_else(|| format!("test structure {i} has no reference forces"))?;
            let sum: f64 = r.iter().zip(&p.forces).map(|(a, b)| (0..3).map(|k| (a[k] - b[k]).abs()).sum::<f64>()).sum();
            Ok(sum / (3 * r.len()) as f64 * 1e3)
        }).collect()
    };
    let (a, b) = (mae(&pa)?, mae(&pb)?);
    let mut idx: Vec<usize> = (0..a.len()).collect();
    idx.sort_by(|&i, &j| a[j].total_cmp(&a[i]));
    let strength = m.domain_guard().map_or(0.0, |g| g.strength);
    let onset = m.domain_guard().map_or(0.0, |g| g.onset);
    for &i in idx.iter().take(8) {
        let pen = pa[i].energy - pb[i].energy;
        println!(
            "test structure {i}: F MAE {:.2} meV/Å with the guard, {:.2} without; penalty {:.4} eV (one atom: score {:.1} × the training maximum)",
            a[i], b[i], pen, onset + (pen / strength.max(1e-300)).sqrt()
        );
    }
    let n_pen = pa.iter().zip(&pb).filter(|(x, y)| x.energy != y.energy).count();
    println!("{n_pen} of {} test structures have a penalty", pa.len());
    println!("mean: {:.3} with, {:.3} without", a.iter().sum::<f64>() / a.len() as f64, b.iter().sum::<f64>() / b.len() as f64);
    Ok(())
}

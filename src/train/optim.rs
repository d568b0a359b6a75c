//! Adam / AdamW, gradient clipping, learning-rate schedules and the weight EMA — all with serialisable state so
//! a resumed run continues bit-for-bit.

use crate::config::Schedule as ScheduleKind;
use crate::linalg::Isa;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Adam's moment estimates and step count. The moments are kept in f32 (the step itself runs in f64): they are
/// statistics of the gradient, which the f32 training passes compute to f32 precision anyway, and a step streams
/// them with the parameters, the gradient and the EMA, so halving them cuts the pass's bytes by a fifth (the pass
/// is bound by memory: 8 % of a uracil step). Checkpoints of the f64 moments of earlier versions load rounded.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Adam {
    /// First moments.
    pub m: Vec<f32>,
    /// Second moments.
    pub v: Vec<f32>,
    /// Steps taken.
    pub t: u64,
    /// AdamW (decoupled weight decay) rather than L2 in the gradient.
    pub decoupled: bool,
    /// Weight-decay coefficient.
    pub weight_decay: f64,
}

impl Adam {
    /// Zero moments for `n` parameters.
    pub fn new(n: usize, decoupled: bool, weight_decay: f64) -> Self {
        Adam { m: vec![0.0; n], v: vec![0.0; n], t: 0, decoupled, weight_decay }
    }

    /// Keeps the moments of the first `n` parameters only (the others left the parameter vector).
    pub fn truncate(&mut self, n: usize) {
        self.m.truncate(n);
        self.v.truncate(n);
    }

    /// One update of `params` with gradient `grad_scale · grad` (the clip's factor, [`clip_factor`]) and learning
    /// rate `lr`; with `trainable`, the parameters marked `false` are left exactly as they are (also by weight
    /// decay); with `ema = (average, decay)`, the moving average of the new parameters is updated in the same
    /// pass. Element-wise, so it is shared among the pool's threads in fixed chunks with the same result for any
    /// number of threads, and one pass over the parameters instead of a scaling, the step and the average apart.
    pub fn step(&mut self, params: &mut [f64], grad: &[f64], grad_scale: f64, lr: f64, trainable: Option<&[bool]>, ema: Option<(&mut [f64], f64)>) {
        self.t += 1;
        let (ema, decay) = match ema {
            Some((e, d)) => (Some(e), d),
            None => (None, 0.0),
        };
        let k = AdamStep {
            inv_c1: 1.0 / (1.0 - B1.powi(self.t.min(1 << 30) as i32)),
            inv_c2: 1.0 / (1.0 - B2.powi(self.t.min(1 << 30) as i32)),
            lr,
            wd: self.weight_decay,
            grad_scale,
            decay,
        };
        let isa = Isa::detect();
        let decoupled = self.decoupled;
        let mut ema_chunks: Vec<Option<&mut [f64]>> = match ema {
            Some(e) => e.chunks_mut(ELEMENTWISE_CHUNK).map(Some).collect(),
            None => Vec::new(),
        };
        ema_chunks.resize_with(params.len().div_ceil(ELEMENTWISE_CHUNK), || None);
        let chunks = params.par_chunks_mut(ELEMENTWISE_CHUNK).zip(self.m.par_chunks_mut(ELEMENTWISE_CHUNK)).zip(self.v.par_chunks_mut(ELEMENTWISE_CHUNK));
        chunks.zip(grad.par_chunks(ELEMENTWISE_CHUNK)).zip(ema_chunks).enumerate().for_each(|(c, ((((p, m), v), g), e))| {
            let t = trainable.map(|t| &t[c * ELEMENTWISE_CHUNK..c * ELEMENTWISE_CHUNK + p.len()]);
            let moments = Moments { m, v };
            match (isa, decoupled) {
                (Isa::Portable, false) => adam_chunk::<false>(p, moments, g, t, e, &k),
                (Isa::Portable, true) => adam_chunk::<true>(p, moments, g, t, e, &k),
                // SAFETY (both arms): `Isa::detect` found AVX2 and FMA on this CPU.
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx2Fma, false) => unsafe { adam_chunk_avx2::<false>(p, moments, g, t, e, &k) },
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx2Fma, true) => unsafe { adam_chunk_avx2::<true>(p, moments, g, t, e, &k) },
            }
        });
    }
}

const B1: f64 = 0.9;
const B2: f64 = 0.999;
const EPS: f64 = 1e-8;

/// What one Adam step needs besides the arrays: inverse bias corrections, rate, weight decay, the gradient's
/// clip factor and the EMA's decay.
struct AdamStep {
    inv_c1: f64,
    inv_c2: f64,
    lr: f64,
    wd: f64,
    grad_scale: f64,
    decay: f64,
}

/// One chunk's first and second moments.
struct Moments<'a> {
    m: &'a mut [f32],
    v: &'a mut [f32],
}

/// Adam (AdamW when `DECOUPLED`) on one chunk, then the EMA `ema` of the new parameters if given; parameters
/// with `trainable[i] = false` keep their value and moments. Written with selects instead of branches so that it
/// vectorises, and with one f32 square root and division per parameter (the scalar loop with three f64 divisions
/// was a fifth of a training step; the f64 square root and division still 8 % of a uracil step).
#[inline(always)]
fn adam_chunk<const DECOUPLED: bool>(p: &mut [f64], moments: Moments<'_>, g: &[f64], trainable: Option<&[bool]>, ema: Option<&mut [f64]>, k: &AdamStep) {
    let Moments { m, v } = moments;
    let update = |p: f64, m: f32, v: f32, g: f64| {
        let g = g * k.grad_scale;
        let g = if DECOUPLED { g } else { g + k.wd * p };
        let m = B1 * m as f64 + (1.0 - B1) * g;
        // capped to f32's range, as it is stored
        let v = (B2 * v as f64 + (1.0 - B2) * g * g).min(f32::MAX as f64);
        // 1/(√v̂ + ε) in f32: the square root and the division bound this pass in f64 (four lanes each), and a
        // step needs no more than f32's precision; v̂ is capped to f32's range
        let r = 1.0f32 / (((v * k.inv_c2).min(f32::MAX as f64) as f32).sqrt() + EPS as f32);
        let upd = (m * k.inv_c1) * r as f64;
        let p = if DECOUPLED { p - k.lr * k.wd * p } else { p };
        (p - k.lr * upd, m as f32, v as f32)
    };
    let n = p.len().min(m.len()).min(v.len()).min(g.len());
    match trainable {
        None => {
            for i in 0..n {
                (p[i], m[i], v[i]) = update(p[i], m[i], v[i], g[i]);
            }
        }
        Some(t) => {
            for i in 0..n.min(t.len()) {
                let (pn, mn, vn) = update(p[i], m[i], v[i], g[i]);
                (p[i], m[i], v[i]) = if t[i] { (pn, mn, vn) } else { (p[i], m[i], v[i]) };
            }
        }
    }
    if let Some(e) = ema {
        for (e, p) in e.iter_mut().zip(&p[..n]) {
            *e = k.decay * *e + (1.0 - k.decay) * p;
        }
    }
}

/// [`adam_chunk`] compiled for AVX2 (no FMA contraction: the same bits as the portable code).
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn adam_chunk_avx2<const DECOUPLED: bool>(p: &mut [f64], moments: Moments<'_>, g: &[f64], trainable: Option<&[bool]>, ema: Option<&mut [f64]>, k: &AdamStep) {
    adam_chunk::<DECOUPLED>(p, moments, g, trainable, ema, k)
}

/// Parameters per task of the element-wise passes over all parameters (the gradient's norm, the fused optimiser
/// step, the sum of a batch's runs' gradients).
pub(super) const ELEMENTWISE_CHUNK: usize = 1 << 14;

/// The Euclidean norm of `grad`: sums of squares per fixed chunk on the pool's threads, added in chunk order
/// (the same result for any number of threads).
pub fn grad_norm(grad: &[f64]) -> f64 {
    let partial: Vec<f64> = grad
        .par_chunks(ELEMENTWISE_CHUNK)
        .map(|chunk| {
            // eight partial sums in a fixed order: a loop that vectorises
            let mut partial = [0.0f64; 8];
            let blocks = chunk.chunks_exact(8);
            let tail: f64 = blocks.remainder().iter().map(|g| g * g).sum();
            for block in blocks {
                for (p, g) in partial.iter_mut().zip(block) {
                    *p += g * g;
                }
            }
            partial.iter().sum::<f64>() + tail
        })
        .collect();
    partial.iter().sum::<f64>().sqrt()
}

/// The factor that brings a gradient of norm `norm` to at most `max_norm` (0 = no clipping): 1 or
/// `max_norm / norm`, for [`Adam::step`].
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm {
        max_norm / norm
    } else {
        1.0
    }
}

/// Learning-rate schedule state.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Schedule {
    /// Which schedule.
    pub kind: ScheduleKind,
    /// Initial rate.
    pub lr0: f64,
    /// Floor.
    pub lr_min: f64,
    /// Rate of the next epoch.
    pub lr: f64,
    /// Plateau: epochs without improvement before a reduction.
    pub patience: usize,
    /// Plateau: factor of a reduction.
    pub factor: f64,
    /// Plateau: best metric so far (+∞ before the first epoch).
    #[serde(with = "crate::io::non_finite")]
    pub best: f64,
    /// Plateau: epochs since the last improvement.
    pub bad_epochs: usize,
    /// Cosine: length of the decay.
    pub max_epochs: usize,
}

impl Schedule {
    /// A schedule starting at `lr0`.
    pub fn new(kind: ScheduleKind, lr0: f64, lr_min: f64, patience: usize, factor: f64, max_epochs: usize) -> Self {
        Schedule { kind, lr0, lr_min, lr: lr0, patience, factor, best: f64::INFINITY, bad_epochs: 0, max_epochs }
    }

    /// The cosine or linear rate of (0-based) epoch `epoch`.
    fn decayed(&self, epoch: usize) -> f64 {
        let t = (epoch as f64 / self.max_epochs.max(1) as f64).min(1.0);
        match self.kind {
            ScheduleKind::Linear => self.lr_min + (self.lr0 - self.lr_min) * (1.0 - t),
            _ => self.lr_min + 0.5 * (self.lr0 - self.lr_min) * (1.0 + (std::f64::consts::PI * t).cos()),
        }
    }

    /// Ends the decay after `max_epochs` epochs instead, `epochs_done` of them done: the next epoch's cosine or
    /// linear rate is that of the new schedule (a step as large as the change, small where a budget replans).
    pub fn set_horizon(&mut self, max_epochs: usize, epochs_done: usize) {
        self.max_epochs = max_epochs;
        if matches!(self.kind, ScheduleKind::Cosine | ScheduleKind::Linear) {
            self.lr = self.decayed(epochs_done);
        }
    }

    /// Called after each epoch with the validation metric; sets the rate for the next epoch.
    pub fn end_epoch(&mut self, epoch: usize, metric: f64) {
        match self.kind {
            ScheduleKind::Cosine | ScheduleKind::Linear => self.lr = self.decayed(epoch + 1),
            ScheduleKind::Plateau => {
                if metric < self.best * (1.0 - 1e-4) {
                    self.best = metric;
                    self.bad_epochs = 0;
                } else {
                    self.bad_epochs += 1;
                    if self.bad_epochs > self.patience {
                        self.lr = (self.lr * self.factor).max(self.lr_min);
                        self.bad_epochs = 0;
                    }
                }
            }
            ScheduleKind::Constant => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cosine_schedule_given_a_new_horizon_continues_on_the_new_curve() {
        let mut long = Schedule::new(ScheduleKind::Cosine, 1e-3, 1e-5, 0, 0.5, 100);
        (0..40).for_each(|e| long.end_epoch(e, 1.0));
        let mut short = Schedule::new(ScheduleKind::Cosine, 1e-3, 1e-5, 0, 0.5, 80);
        (0..40).for_each(|e| short.end_epoch(e, 1.0));
        assert!(long.lr > short.lr);
        long.set_horizon(80, 40);
        assert_eq!(long.lr, short.lr);
        for e in 40..80 {
            long.end_epoch(e, 1.0);
            short.end_epoch(e, 1.0);
            assert_eq!(long.lr, short.lr);
        }
        assert_eq!(long.lr, 1e-5);
    }

    /// The AVX2 variant of the Adam step gives the portable code's bits, with and without a mask, weight decay
    /// and the EMA (so a run is reproducible across machines).
    #[test]
    fn adam_variants_agree_bit_for_bit() {
        let mut rng = crate::rng::Rng::new(8);
        let n = 1003;
        let start: Vec<Vec<f64>> = (0..5).map(|_| (0..n).map(|_| rng.normal()).collect()).collect();
        let m0: Vec<f32> = start[1].iter().map(|&x| x as f32).collect();
        let v0: Vec<f32> = start[2].iter().map(|x| (x * x) as f32).collect();
        let mask: Vec<bool> = (0..n).map(|i| i % 3 != 0).collect();
        let k = AdamStep { inv_c1: 1.7, inv_c2: 3.1, lr: 1e-3, wd: 0.01, grad_scale: 0.7, decay: 0.99 };
        for t in [None, Some(&mask[..])] {
            type Step<'a> = &'a dyn Fn(&mut [f64], Moments<'_>, &[f64], &mut [f64]);
            let run = |f: Step| {
                let (mut p, mut m, mut v, mut e) = (start[0].clone(), m0.clone(), v0.clone(), start[4].clone());
                f(&mut p, Moments { m: &mut m, v: &mut v }, &start[3], &mut e);
                (p, m, v, e)
            };
            for decoupled in [false, true] {
                let portable = run(&|p, mv, g, e| if decoupled { adam_chunk::<true>(p, mv, g, t, Some(e), &k) } else { adam_chunk::<false>(p, mv, g, t, Some(e), &k) });
                assert_ne!(portable.0, start[0]);
                assert_ne!(portable.3, start[4]);
                #[cfg(target_arch = "x86_64")]
                {
                    // SAFETY: the AVX2 variant runs only where the CPU has AVX2.
                    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                        let got = run(&|p, mv, g, e| unsafe {
                            if decoupled { adam_chunk_avx2::<true>(p, mv, g, t, Some(e), &k) } else { adam_chunk_avx2::<false>(p, mv, g, t, Some(e), &k) }
                        });
                        assert_eq!(got, portable);
                    }
                }
            }
        }
    }

    /// The fused step is the separate passes it replaces: the gradient scaled first, Adam, then the EMA of the
    /// new parameters; and the norm of a vector longer than a chunk is the plain one.
    #[test]
    fn the_fused_step_is_scale_then_adam_then_average() {
        let mut rng = crate::rng::Rng::new(3);
        let n = 2 * ELEMENTWISE_CHUNK + 77;
        let p0: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let g: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let e0: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let norm = grad_norm(&g);
        let plain = g.iter().map(|g| g * g).sum::<f64>().sqrt();
        assert!((norm - plain).abs() < 1e-12 * plain, "{norm} {plain}");
        let s = clip_factor(norm, 10.0);
        assert!((s - 10.0 / plain).abs() < 1e-12 && clip_factor(norm, 0.0) == 1.0 && clip_factor(norm, 2.0 * norm) == 1.0);
        let (mut fused, mut ema) = (p0.clone(), e0.clone());
        let mut a = Adam::new(n, true, 0.01);
        a.step(&mut fused, &g, s, 1e-3, None, Some((&mut ema, 0.9)));
        let (mut apart, scaled) = (p0.clone(), g.iter().map(|g| g * s).collect::<Vec<_>>());
        let mut b = Adam::new(n, true, 0.01);
        b.step(&mut apart, &scaled, 1.0, 1e-3, None, None);
        assert_eq!(fused, apart);
        assert_eq!((a.m, a.v), (b.m, b.v));
        assert!(ema.iter().zip(&e0).zip(&apart).all(|((e, e0), p)| *e == 0.9 * e0 + (1.0 - 0.9) * p));
    }

    /// The moments are kept in f32: a checkpoint's moments read back exactly, and the f64 moments of checkpoints
    /// of earlier versions load rounded.
    #[test]
    fn moments_round_trip_and_older_f64_moments_load() {
        let mut a = Adam::new(3, true, 0.01);
        let mut p = vec![0.3, -1.0, 2.0];
        a.step(&mut p, &[0.1234567, -3.3e-7, 12.5], 1.0, 1e-3, None, None);
        let back: Adam = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back, a);
        let old = r#"{"m":[0.012345678901234567,-3.3e-8],"v":[1.5241578753238836e-5,1e-300],"t":7,"decoupled":true,"weight_decay":0.0}"#;
        let old: Adam = serde_json::from_str(old).unwrap();
        assert_eq!((old.m, old.v, old.t), (vec![0.012345678901234567f64 as f32, -3.3e-8f64 as f32], vec![1.5241578753238836e-5f64 as f32, 0.0], 7));
    }

    #[test]
    fn adam_minimises_a_quadratic_and_schedules_decay() {
        let mut p = vec![3.0, -2.0];
        let mut opt = Adam::new(2, true, 0.0);
        for _ in 0..2000 {
            let g = vec![2.0 * p[0], 8.0 * p[1]];
            opt.step(&mut p, &g, 1.0, 0.01, None, None);
        }
        assert!(p[0].abs() < 1e-3 && p[1].abs() < 1e-3, "{p:?}");
        let mut s = Schedule::new(ScheduleKind::Plateau, 1.0, 0.01, 2, 0.5, 100);
        for e in 0..4 {
            s.end_epoch(e, 1.0);
        }
        assert_eq!(s.lr, 0.5);
        let mut c = Schedule::new(ScheduleKind::Cosine, 1.0, 0.0, 0, 0.0, 10);
        c.end_epoch(4, 0.0);
        assert!((c.lr - 0.5).abs() < 1e-12);
        c.end_epoch(1, 0.0);
        assert!((c.lr - (0.5 + 0.5 * (0.2 * std::f64::consts::PI).cos())).abs() < 1e-12);
        // linear: from 1 to 0.1 over 10 epochs, so epoch 3 runs at 1 − 0.9 · 3/10; a new horizon of 20 epochs
        // after 3 moves the next rate onto the longer line
        let mut l = Schedule::new(ScheduleKind::Linear, 1.0, 0.1, 0, 0.0, 10);
        l.end_epoch(2, 0.0);
        assert!((l.lr - 0.73).abs() < 1e-12, "{}", l.lr);
        l.set_horizon(20, 3);
        assert!((l.lr - 0.865).abs() < 1e-12, "{}", l.lr);
        l.end_epoch(40, 0.0);
        assert!((l.lr - 0.1).abs() < 1e-12);
        assert_eq!(grad_norm(&[3.0, 4.0]), 5.0);
        assert!((clip_factor(5.0, 1.0) - 0.2).abs() < 1e-15);
    }
}

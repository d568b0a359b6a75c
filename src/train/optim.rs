//! Adam / AdamW, gradient clipping, learning-rate schedules and the weight EMA — all with serialisable state so
//! a resumed run continues bit-for-bit.

use crate::config::Schedule as ScheduleKind;
use crate::linalg::Isa;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Adam's moment estimates and step count.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Adam {
    /// First moments.
    pub m: Vec<f64>,
    /// Second moments.
    pub v: Vec<f64>,
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

    /// One update of `params` with gradient `grad` and learning rate `lr`; with `trainable`, the parameters
    /// marked `false` are left exactly as they are (also by weight decay). Element-wise, so it is shared among
    /// the pool's threads in fixed chunks with the same result for any number of threads.
    pub fn step(&mut self, params: &mut [f64], grad: &[f64], lr: f64, trainable: Option<&[bool]>) {
        self.t += 1;
        let k = AdamStep {
            inv_c1: 1.0 / (1.0 - B1.powi(self.t.min(1 << 30) as i32)),
            inv_c2: 1.0 / (1.0 - B2.powi(self.t.min(1 << 30) as i32)),
            lr,
            wd: self.weight_decay,
        };
        let isa = Isa::detect();
        let chunks = params.par_chunks_mut(ELEMENTWISE_CHUNK).zip(self.m.par_chunks_mut(ELEMENTWISE_CHUNK)).zip(self.v.par_chunks_mut(ELEMENTWISE_CHUNK));
        chunks.zip(grad.par_chunks(ELEMENTWISE_CHUNK)).enumerate().for_each(|(c, (((p, m), v), g))| {
            let t = trainable.map(|t| &t[c * ELEMENTWISE_CHUNK..c * ELEMENTWISE_CHUNK + p.len()]);
            match (isa, self.decoupled) {
                (Isa::Portable, false) => adam_chunk::<false>(p, m, v, g, t, &k),
                (Isa::Portable, true) => adam_chunk::<true>(p, m, v, g, t, &k),
                // SAFETY (both arms): `Isa::detect` found AVX2 and FMA on this CPU.
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx2Fma, false) => unsafe { adam_chunk_avx2::<false>(p, m, v, g, t, &k) },
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx2Fma, true) => unsafe { adam_chunk_avx2::<true>(p, m, v, g, t, &k) },
            }
        });
    }
}

const B1: f64 = 0.9;
const B2: f64 = 0.999;
const EPS: f64 = 1e-8;

/// What one Adam step needs besides the arrays: inverse bias corrections, rate, weight decay.
struct AdamStep {
    inv_c1: f64,
    inv_c2: f64,
    lr: f64,
    wd: f64,
}

/// Adam (AdamW when `DECOUPLED`) on one chunk; parameters with `trainable[i] = false` keep their value and
/// moments. Written with selects instead of branches so that it vectorises, and with one division per parameter
/// (the scalar loop with three was a fifth of a training step).
#[inline(always)]
fn adam_chunk<const DECOUPLED: bool>(p: &mut [f64], m: &mut [f64], v: &mut [f64], g: &[f64], trainable: Option<&[bool]>, k: &AdamStep) {
    let update = |p: f64, m: f64, v: f64, g: f64| {
        let g = if DECOUPLED { g } else { g + k.wd * p };
        let m = B1 * m + (1.0 - B1) * g;
        let v = B2 * v + (1.0 - B2) * g * g;
        let upd = (m * k.inv_c1) / ((v * k.inv_c2).sqrt() + EPS);
        let p = if DECOUPLED { p - k.lr * k.wd * p } else { p };
        (p - k.lr * upd, m, v)
    };
    match trainable {
        None => {
            for i in 0..p.len().min(m.len()).min(v.len()).min(g.len()) {
                (p[i], m[i], v[i]) = update(p[i], m[i], v[i], g[i]);
            }
        }
        Some(t) => {
            for i in 0..p.len().min(m.len()).min(v.len()).min(g.len()).min(t.len()) {
                let (pn, mn, vn) = update(p[i], m[i], v[i], g[i]);
                (p[i], m[i], v[i]) = if t[i] { (pn, mn, vn) } else { (p[i], m[i], v[i]) };
            }
        }
    }
}

/// [`adam_chunk`] compiled for AVX2 (no FMA contraction: the same bits as the portable code).
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn adam_chunk_avx2<const DECOUPLED: bool>(p: &mut [f64], m: &mut [f64], v: &mut [f64], g: &[f64], trainable: Option<&[bool]>, k: &AdamStep) {
    adam_chunk::<DECOUPLED>(p, m, v, g, trainable, k)
}

/// Parameters per task of the element-wise passes over all parameters (optimiser step, EMA).
const ELEMENTWISE_CHUNK: usize = 1 << 14;

/// Scales `grad` so that its Euclidean norm is at most `max_norm` (0 = no clipping); returns the original norm.
pub fn clip_grad_norm(grad: &mut [f64], max_norm: f64) -> f64 {
    // eight partial sums in a fixed order: the same result every time, and a loop that vectorises
    let mut partial = [0.0f64; 8];
    let blocks = grad.chunks_exact(8);
    let tail: f64 = blocks.remainder().iter().map(|g| g * g).sum();
    for block in blocks {
        for (p, g) in partial.iter_mut().zip(block) {
            *p += g * g;
        }
    }
    let norm = (partial.iter().sum::<f64>() + tail).sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let s = max_norm / norm;
        grad.iter_mut().for_each(|g| *g *= s);
    }
    norm
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

    /// The cosine rate of (0-based) epoch `epoch`.
    fn cosine(&self, epoch: usize) -> f64 {
        let t = (epoch as f64 / self.max_epochs.max(1) as f64).min(1.0);
        self.lr_min + 0.5 * (self.lr0 - self.lr_min) * (1.0 + (std::f64::consts::PI * t).cos())
    }

    /// Ends the decay after `max_epochs` epochs instead, `epochs_done` of them done: the next epoch's cosine rate
    /// is that of the new schedule (a step as large as the change, small where a budget replans).
    pub fn set_horizon(&mut self, max_epochs: usize, epochs_done: usize) {
        self.max_epochs = max_epochs;
        if self.kind == ScheduleKind::Cosine {
            self.lr = self.cosine(epochs_done);
        }
    }

    /// Called after each epoch with the validation metric; sets the rate for the next epoch.
    pub fn end_epoch(&mut self, epoch: usize, metric: f64) {
        match self.kind {
            ScheduleKind::Cosine => self.lr = self.cosine(epoch + 1),
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

/// Exponential moving average of the parameters.
pub fn ema_update(ema: &mut [f64], params: &[f64], decay: f64) {
    ema.par_chunks_mut(ELEMENTWISE_CHUNK).zip(params.par_chunks(ELEMENTWISE_CHUNK)).for_each(|(e, p)| {
        for (e, p) in e.iter_mut().zip(p) {
            *e = decay * *e + (1.0 - decay) * p;
        }
    });
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

    /// The AVX2 variant of the Adam step gives the portable code's bits, with and without a mask
    /// and weight decay (so a run is reproducible across machines).
    #[test]
    fn adam_variants_agree_bit_for_bit() {
        let mut rng = crate::rng::Rng::new(8);
        let n = 1003;
        let start: Vec<Vec<f64>> = (0..4).map(|_| (0..n).map(|_| rng.normal()).collect()).collect();
        let v0: Vec<f64> = start[2].iter().map(|x| x * x).collect();
        let mask: Vec<bool> = (0..n).map(|i| i % 3 != 0).collect();
        let k = AdamStep { inv_c1: 1.7, inv_c2: 3.1, lr: 1e-3, wd: 0.01 };
        for t in [None, Some(&mask[..])] {
            type Step<'a> = &'a dyn Fn(&mut [f64], &mut [f64], &mut [f64], &[f64]);
            let run = |f: Step| {
                let (mut p, mut m, mut v) = (start[0].clone(), start[1].clone(), v0.clone());
                f(&mut p, &mut m, &mut v, &start[3]);
                (p, m, v)
            };
            for decoupled in [false, true] {
                let portable = run(&|p, m, v, g| if decoupled { adam_chunk::<true>(p, m, v, g, t, &k) } else { adam_chunk::<false>(p, m, v, g, t, &k) });
                assert_ne!(portable.0, start[0]);
                #[cfg(target_arch = "x86_64")]
                {
                    // SAFETY: the AVX2 variant runs only where the CPU has AVX2.
                    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                        let got = run(&|p, m, v, g| unsafe {
                            if decoupled { adam_chunk_avx2::<true>(p, m, v, g, t, &k) } else { adam_chunk_avx2::<false>(p, m, v, g, t, &k) }
                        });
                        assert_eq!(got, portable);
                    }
                }
            }
        }
    }
    #[test]
    fn adam_minimises_a_quadratic_and_schedules_decay() {
        let mut p = vec![3.0, -2.0];
        let mut opt = Adam::new(2, true, 0.0);
        for _ in 0..2000 {
            let g = vec![2.0 * p[0], 8.0 * p[1]];
            opt.step(&mut p, &g, 0.01, None);
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
        let mut g = vec![3.0, 4.0];
        assert_eq!(clip_grad_norm(&mut g, 1.0), 5.0);
        assert!((g[0] - 0.6).abs() < 1e-12);
    }
}

//! `training.max_minutes`: a wall-time budget for a run. The epoch count is chosen before the first epoch from a
//! timed rehearsal ([`epochs_within_budget`]) and lowered during the run when the epochs turn out slower than
//! the rehearsal said ([`Budget::replan`]): the speed of a shared machine can change by 2× within a run.

use super::checkpoint::{Checkpoint, TrainState};
use super::{batches_per_epoch, run_epoch, CHECKPOINT_INTERVAL_S};
use crate::config::Config;
use crate::dataset::Splits;
use crate::error::Result;
use crate::frame::Frame;
use crate::metrics;
use crate::model::Model;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::Path;
use std::time::Instant;

/// What a timed rehearsal of the training loop runs on: the run's start (left untouched) and its data.
pub(super) struct Rehearsal<'a> {
    pub(super) model: &'a Model,
    pub(super) st: &'a TrainState,
    pub(super) splits: &'a Splits,
    pub(super) cfg: &'a Config,
    pub(super) anchor: Option<&'a [f64]>,
    pub(super) trainable: Option<&'a [bool]>,
    pub(super) last: &'a Path,
}

/// Optimiser steps timed by the rehearsal (after a few untimed ones that warm the caches and allocator).
const REHEARSAL_STEPS: usize = 24;

/// Structures of a split predicted to time it (scaled to the whole split).
const REHEARSAL_STRUCTURES: usize = 50;

/// The number of epochs (≥ 1, ≤ `max_epochs`) that fits the budget of a run that began at `started`, the
/// seconds to keep back for the final test pass, and a line for the log. Times, on copies of the model and
/// optimiser state, a few optimiser steps, the validation pass, a checkpoint and the final test pass; the
/// estimate is this machine's speed now, so the count differs between machines and loads (the log line and
/// `config.resolved.toml` record it), and [`Budget::replan`] lowers it if the machine slows down.
pub(super) fn epochs_within_budget(r: &Rehearsal, started: Instant) -> Result<(usize, f64, String)> {
    let t = &r.cfg.training;
    let bs = t.batch_size.min(r.splits.train.len()).max(1);
    let steps_per_epoch = batches_per_epoch(r.splits.train.len(), t.batch_size);
    let (mut model, mut st) = (r.model.clone(), r.st.clone());
    let mut steps = |n: usize| -> Result<f64> {
        let clock = Instant::now();
        let frames = &r.splits.train[..(n * bs).min(r.splits.train.len())];
        run_epoch(&mut model, &mut st, frames, r.cfg, r.anchor, r.trainable, None, r.last)?;
        Ok(clock.elapsed().as_secs_f64() / batches_per_epoch(frames.len(), t.batch_size).max(1) as f64)
    };
    steps(3)?;
    let per_step = steps(REHEARSAL_STEPS.min(steps_per_epoch))?;
    let timed_predictions = |frames: &[Frame]| -> Result<f64> {
        let n = frames.len().min(REHEARSAL_STRUCTURES);
        let clock = Instant::now();
        metrics::predict_all(&model, &frames[..n])?;
        Ok(clock.elapsed().as_secs_f64() * frames.len() as f64 / n.max(1) as f64)
    };
    let (valid, test) = (timed_predictions(&r.splits.valid)?, timed_predictions(&r.splits.test)?);
    let clock = Instant::now();
    let scratch = r.last.with_file_name("rehearsal.ckpt");
    Checkpoint::new(r.cfg, &model, Some(st.clone())).save(&scratch)?;
    let _ = std::fs::remove_file(&scratch);
    let checkpoint = clock.elapsed().as_secs_f64();
    // checkpoints are written at most every CHECKPOINT_INTERVAL_S, so a short epoch carries part of one
    let epoch = per_step * steps_per_epoch as f64 + valid;
    let per_epoch = epoch + checkpoint * (epoch / CHECKPOINT_INTERVAL_S).min(1.0);
    let left = t.max_minutes * 60.0 - started.elapsed().as_secs_f64() - test;
    let epochs = ((left / per_epoch).floor().max(1.0) as usize).min(t.max_epochs.max(1));
    let note = format!(
        "training.max_minutes = {}: an epoch takes ~{per_epoch:.2} s here ({steps_per_epoch} steps of {:.1} ms, validation {valid:.2} s, a checkpoint {checkpoint:.2} s), so max_epochs {} → {epochs}",
        t.max_minutes,
        per_step * 1e3,
        t.max_epochs
    );
    Ok((epochs, test, note))
}

/// What a checkpoint keeps of a budgeted run, so that a resumed run counts the time already spent.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct BudgetState {
    /// Seconds of the budget spent when the checkpoint was written (set-up and epochs of every invocation).
    pub spent_s: f64,
    /// Seconds kept back for the final test pass (the rehearsal's estimate).
    pub reserve_s: f64,
}

/// Seconds of recent epochs averaged by [`Budget::replan`]: two checkpoint intervals, so that the window holds
/// as many checkpoint writes whenever it is looked at and smooths a few slow epochs, yet follows a machine that
/// slows down within a couple of minutes.
const RECENT_SECONDS: f64 = 2.0 * super::CHECKPOINT_INTERVAL_S;

/// Epochs timed in this invocation before [`Budget::replan`] trusts them (the first ones warm caches).
const MIN_TIMED_EPOCHS: usize = 5;

/// Overrun tolerated before the plan is lowered, and the margin it is then lowered by, as fractions of the
/// budget: the hysteresis keeps a run on a steady machine at its first count and a slowing one from lowering
/// it epoch by epoch.
const TOLERANCE: f64 = 0.01;

/// A running budget: its clock, what a resumed checkpoint had spent, and the durations of recent epochs.
pub(super) struct Budget {
    seconds: f64,
    reserve_s: f64,
    spent_before: f64,
    started: Instant,
    recent: VecDeque<f64>,
    timed: usize,
}

impl Budget {
    /// The budget of `cfg` (`None` without one), counting from `started` plus what `resumed` had spent;
    /// `reserve_s` is kept back for the final test pass.
    pub(super) fn new(cfg: &Config, started: Instant, resumed: Option<&BudgetState>, reserve_s: f64) -> Option<Self> {
        let minutes = cfg.training.max_minutes;
        (minutes > 0.0).then(|| Budget {
            seconds: minutes * 60.0,
            reserve_s: resumed.map_or(reserve_s, |b| b.reserve_s),
            spent_before: resumed.map_or(0.0, |b| b.spent_s),
            started,
            recent: VecDeque::new(),
            timed: 0,
        })
    }

    /// Records the wall time of one epoch (training, validation and checkpoints).
    pub(super) fn record_epoch(&mut self, seconds: f64) {
        self.recent.push_back(seconds);
        while self.recent.iter().skip(1).sum::<f64>() >= RECENT_SECONDS {
            self.recent.pop_front();
        }
        self.timed += 1;
    }

    /// What a checkpoint keeps.
    pub(super) fn state(&self) -> BudgetState {
        BudgetState { spent_s: self.spent_before + self.started.elapsed().as_secs_f64(), reserve_s: self.reserve_s }
    }

    /// The lowered epoch count (≥ `epochs_done`) when the recent epochs say that `planned` ones would overrun
    /// the budget by more than [`TOLERANCE`]; `None` while the plan fits. Never raises the plan: a faster machine
    /// finishes early rather than changing a schedule it is keeping.
    pub(super) fn replan(&self, epochs_done: usize, planned: usize) -> Option<usize> {
        if self.timed < MIN_TIMED_EPOCHS || planned <= epochs_done {
            return None;
        }
        let per_epoch = self.recent.iter().sum::<f64>() / self.recent.len() as f64;
        let left = self.seconds - self.state().spent_s - self.reserve_s;
        let needed = (planned - epochs_done) as f64 * per_epoch;
        if needed <= left + TOLERANCE * self.seconds {
            return None;
        }
        let fit = ((left - TOLERANCE * self.seconds) / per_epoch).floor().max(0.0) as usize;
        Some(epochs_done + fit.min(planned - epochs_done - 1))
    }

    /// The seconds an epoch takes now (the recent mean), for the log.
    pub(super) fn seconds_per_epoch(&self) -> f64 {
        self.recent.iter().sum::<f64>() / self.recent.len().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-minute budget with `spent` seconds already spent and `durations` recorded.
    fn budget(spent: f64, reserve: f64, durations: &[f64]) -> Budget {
        let mut b = Budget {
            seconds: 60.0,
            reserve_s: reserve,
            spent_before: spent,
            started: Instant::now(),
            recent: VecDeque::new(),
            timed: 0,
        };
        durations.iter().for_each(|&d| b.record_epoch(d));
        b
    }

    #[test]
    fn a_plan_that_overruns_is_lowered_to_what_fits_with_a_margin() {
        // 30 s left, epochs of 2 s: 20 more would take 40 s; (30 − 0.6) / 2 = 14.7 → 14 more
        assert_eq!(budget(30.0, 0.0, &[2.0; 5]).replan(10, 30), Some(24));
        // the test pass's reserve comes off the time left: (30 − 10 − 0.6) / 2 = 9.7 → 9 more
        assert_eq!(budget(30.0, 10.0, &[2.0; 5]).replan(10, 30), Some(19));
        // the last two minutes count, not the first epochs: 120 epochs of 1 s after 5 of 10 s
        let mixed: Vec<f64> = [10.0; 5].into_iter().chain([1.0; 120]).collect();
        assert_eq!(budget(30.0, 0.0, &mixed).replan(10, 50), Some(10 + 29));
        // one minute of 1 s epochs after 10 s ones: the window holds 6 of 10 s and 60 of 1 s, 120 s / 66 epochs,
        // so (60 − 0.6) · 66 / 120 = 32.7 → 32 more
        let recent: Vec<f64> = [10.0; 10].into_iter().chain([1.0; 60]).collect();
        assert_eq!(budget(0.0, 0.0, &recent).replan(10, 200), Some(10 + 32));
        // no time left: the run ends now
        assert_eq!(budget(59.0, 0.0, &[2.0; 5]).replan(10, 30), Some(10));
    }

    #[test]
    fn a_plan_that_fits_or_is_barely_over_or_is_not_yet_measured_is_kept() {
        assert_eq!(budget(30.0, 0.0, &[1.0; 5]).replan(10, 40), None); // exactly 30 s
        assert_eq!(budget(30.0, 0.0, &[1.01; 5]).replan(10, 40), None); // 30.3 s: within the 0.6 s tolerance
        assert_eq!(budget(30.0, 0.0, &[2.0; 4]).replan(10, 30), None); // four epochs timed: not trusted yet
        assert_eq!(budget(30.0, 0.0, &[2.0; 5]).replan(30, 30), None); // nothing left to plan
        // never raised, however fast the epochs
        assert_eq!(budget(0.0, 0.0, &[0.001; 5]).replan(10, 30), None);
    }

    #[test]
    fn the_state_adds_this_invocations_time_to_what_a_checkpoint_had_spent() {
        let b = budget(12.5, 3.0, &[]);
        let st = b.state();
        assert!(st.spent_s >= 12.5 && st.spent_s < 13.5, "{}", st.spent_s);
        assert_eq!(st.reserve_s, 3.0);
    }
}

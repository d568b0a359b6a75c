//! `training.max_minutes`: a wall-time budget for a run. The epoch count is chosen before the first epoch from a
//! timed rehearsal ([`epochs_within_budget`]) and changed during the run when the epochs turn out slower or
//! faster than the rehearsal said ([`Budget::replan`]): the speed of a shared machine can change by 2× within a
//! run, for minutes at a time.

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
    pub(super) precondition: Option<&'a super::FirstLayerPreconditioner>,
    pub(super) last: &'a Path,
    pub(super) cache: &'a super::EnvCache,
}

/// Optimiser steps timed by the rehearsal (after as many untimed ones that warm the caches and allocator).
const REHEARSAL_STEPS: usize = 24;

/// Structures of a split predicted to time it (scaled to the whole split).
const REHEARSAL_STRUCTURES: usize = 50;

/// The number of epochs (≥ 1, ≤ `max_epochs`) that fits the budget of a run that began at `started`, the
/// seconds to keep back for the final test pass, and a line for the log. Times, on copies of the model and
/// optimiser state, a few optimiser steps, the validation pass, a checkpoint and the final test pass; the
/// estimate is this machine's speed now, so the count differs between machines and loads (the log line and
/// `config.resolved.toml` record it), and [`Budget::replan`] follows the speed the epochs then show.
pub(super) fn epochs_within_budget(r: &Rehearsal, started: Instant) -> Result<(usize, f64, String)> {
    let t = &r.cfg.training;
    let bs = t.batch_size.min(r.splits.train.len()).max(1);
    let steps_per_epoch = batches_per_epoch(r.splits.train.len(), t.batch_size);
    let (mut model, mut st) = (r.model.clone(), r.st.clone());
    let mut steps = |n: usize| -> Result<f64> {
        let clock = Instant::now();
        let frames = &r.splits.train[..(n * bs).min(r.splits.train.len())];
        run_epoch(&mut model, &mut st, frames, r.cache, r.cfg, r.anchor, r.trainable, r.precondition, None, r.last)?;
        Ok(clock.elapsed().as_secs_f64() / batches_per_epoch(frames.len(), t.batch_size).max(1) as f64)
    };
    // the same structures twice: the first pass fills the environment cache (as the first epoch will), the
    // second is timed as the later epochs will run
    steps(REHEARSAL_STEPS.min(steps_per_epoch))?;
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
    /// The most epochs a replan may set (`training.max_epochs` before the budget lowered it; 0: never raised).
    #[serde(default)]
    pub cap_epochs: usize,
}

/// Seconds of recent epochs averaged by [`Budget::replan`]: two checkpoint intervals, so that the window holds
/// as many checkpoint writes whenever it is looked at and smooths a few slow epochs, yet follows a change of
/// the machine's speed within a couple of minutes.
const RECENT_SECONDS: f64 = 2.0 * super::CHECKPOINT_INTERVAL_S;

/// A plan is lowered when it would overrun the budget by more than this fraction of it, raised when it would
/// end earlier by more than [`RAISE_SLACK`], and then set to end this fraction before the budget's end: the
/// band between keeps a run on a steady machine at its count and a drifting one from replanning every epoch.
const MARGIN: f64 = 0.01;

/// See [`MARGIN`].
const RAISE_SLACK: f64 = 0.03;

/// A running budget: its clock, what a resumed checkpoint had spent, and the durations of recent epochs.
pub(super) struct Budget {
    seconds: f64,
    reserve_s: f64,
    cap: usize,
    spent_before: f64,
    started: Instant,
    recent: VecDeque<f64>,
    timed_s: f64,
    timed_epochs: usize,
}

impl Budget {
    /// The budget of `cfg` (`None` without one), counting from `started` plus what `resumed` had spent;
    /// `reserve_s` is kept back for the final test pass and `cap` epochs are the most a replan may set (both
    /// taken from `resumed` when resuming).
    pub(super) fn new(cfg: &Config, started: Instant, resumed: Option<&BudgetState>, reserve_s: f64, cap: usize) -> Option<Self> {
        let minutes = cfg.training.max_minutes;
        (minutes > 0.0).then(|| Budget {
            seconds: minutes * 60.0,
            reserve_s: resumed.map_or(reserve_s, |b| b.reserve_s),
            cap: resumed.map_or(cap, |b| b.cap_epochs),
            spent_before: resumed.map_or(0.0, |b| b.spent_s),
            started,
            recent: VecDeque::new(),
            timed_s: 0.0,
            timed_epochs: 0,
        })
    }

    /// Records the wall time of one epoch (training, validation and checkpoints).
    pub(super) fn record_epoch(&mut self, seconds: f64) {
        self.recent.push_back(seconds);
        while self.recent.iter().skip(1).sum::<f64>() >= RECENT_SECONDS {
            self.recent.pop_front();
        }
        self.timed_s += seconds;
        self.timed_epochs += 1;
    }

    /// Forgets the epochs timed so far: the step itself changed (`bispectrum.trained_fraction` froze the
    /// compression), so only epochs from now on say how long the rest will take.
    pub(super) fn step_changed(&mut self) {
        self.recent.clear();
        (self.timed_s, self.timed_epochs) = (0.0, 0);
    }

    /// What a checkpoint keeps.
    pub(super) fn state(&self) -> BudgetState {
        BudgetState { spent_s: self.spent_before + self.started.elapsed().as_secs_f64(), reserve_s: self.reserve_s, cap_epochs: self.cap }
    }

    /// A new epoch count (≥ `epochs_done`, ≤ the cap) when the recent epochs say that `planned` ones would end
    /// more than [`MARGIN`] after the budget, or when both the recent epochs and all of this invocation's say
    /// they would end more than [`RAISE_SLACK`] before it; `None` while the plan fits, and before this
    /// invocation has timed [`RECENT_SECONDS`] of epochs (a quarter of a shorter budget). Lowering follows a
    /// slowdown within the window; raising also asks the long mean, so that a window that is a few per cent
    /// faster by chance does not undo the last lowering (a salicylic acid run went 627 ↔ 653 seven times when
    /// both followed the window).
    pub(super) fn replan(&self, epochs_done: usize, planned: usize) -> Option<usize> {
        if self.timed_s < RECENT_SECONDS.min(self.seconds / 4.0) || planned <= epochs_done {
            return None;
        }
        let recent = self.seconds_per_epoch();
        let cautious = recent.max(self.timed_s / self.timed_epochs.max(1) as f64);
        let left = self.seconds - self.state().spent_s - self.reserve_s;
        let needed = |per_epoch: f64| (planned - epochs_done) as f64 * per_epoch;
        let over = needed(recent) > left + MARGIN * self.seconds;
        let under = needed(cautious) < left - RAISE_SLACK * self.seconds && planned < self.cap;
        if !(over || under) {
            return None;
        }
        let per_epoch = if over { recent } else { cautious };
        let fit = ((left - MARGIN * self.seconds) / per_epoch).floor().max(0.0) as usize;
        let epochs = (epochs_done + fit).min(self.cap.max(planned)).max(epochs_done);
        (epochs != planned).then_some(epochs)
    }

    /// The seconds an epoch takes now (the recent mean).
    pub(super) fn seconds_per_epoch(&self) -> f64 {
        self.recent.iter().sum::<f64>() / self.recent.len().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-minute budget capped at 1000 epochs with `spent` seconds already spent and `durations` recorded.
    fn budget(spent: f64, reserve: f64, durations: &[f64]) -> Budget {
        let mut b = Budget {
            seconds: 60.0,
            reserve_s: reserve,
            cap: 1000,
            spent_before: spent,
            started: Instant::now(),
            recent: VecDeque::new(),
            timed_s: 0.0,
            timed_epochs: 0,
        };
        durations.iter().for_each(|&d| b.record_epoch(d));
        b
    }

    #[test]
    fn a_plan_that_overruns_is_lowered_to_what_fits_with_a_margin() {
        // 30 s left, epochs of 2 s: 20 more would take 40 s; (30 − 0.6) / 2 = 14.7 → 14 more
        assert_eq!(budget(30.0, 0.0, &[2.0; 8]).replan(10, 30), Some(24));
        // the test pass's reserve comes off the time left: (30 − 10 − 0.6) / 2 = 9.7 → 9 more
        assert_eq!(budget(30.0, 10.0, &[2.0; 8]).replan(10, 30), Some(19));
        // no time left: the run ends now
        assert_eq!(budget(59.0, 0.0, &[2.0; 8]).replan(10, 30), Some(10));
        // the last two minutes count, not the first epochs: 120 epochs of 1 s after 5 of 10 s
        let mixed: Vec<f64> = [10.0; 5].into_iter().chain([1.0; 120]).collect();
        assert_eq!(budget(30.0, 0.0, &mixed).replan(10, 50), Some(10 + 29));
        // one minute of 1 s epochs after 10 s ones: the window holds 6 of 10 s and 60 of 1 s, 120 s / 66 epochs,
        // so (60 − 0.6) · 66 / 120 = 32.7 → 32 more
        let recent: Vec<f64> = [10.0; 10].into_iter().chain([1.0; 60]).collect();
        assert_eq!(budget(0.0, 0.0, &recent).replan(10, 200), Some(10 + 32));
    }

    #[test]
    fn a_plan_that_ends_well_before_the_budget_is_raised_up_to_the_cap() {
        // 30 s left, epochs of 1 s, 10 planned: (30 − 0.6) / 1 → 29 more
        assert_eq!(budget(30.0, 0.0, &[1.0; 16]).replan(10, 20), Some(39));
        // not beyond the configured max_epochs
        let mut capped = budget(30.0, 0.0, &[1.0; 16]);
        capped.cap = 25;
        assert_eq!(capped.replan(10, 20), Some(25));
        capped.cap = 20;
        assert_eq!(capped.replan(10, 20), None);
        // a window faster than the invocation's mean raises by the mean: 60 epochs of 2 s, then two minutes of
        // 1 s ones (window 1 s, mean 240 s / 180 = 1.33 s): (30 − 0.6) / 1.33 = 22.05 → 22 more
        let sped_up: Vec<f64> = [2.0; 60].into_iter().chain([1.0; 120]).collect();
        assert_eq!(budget(30.0, 0.0, &sped_up).replan(10, 20), Some(32));
        // and only when the mean, too, ends early: 22 more take 22 s by the window, 29.3 s by the mean (> 28.2)
        assert_eq!(budget(30.0, 0.0, &sped_up).replan(10, 32), None);
        // a slowdown lowers by the window alone: 60 of 1 s, then two minutes of 2 s (mean 1.33 s); 20 more would
        // take 40 s: (30 − 0.6) / 2 = 14.7 → 14 more
        let slowed: Vec<f64> = [1.0; 60].into_iter().chain([2.0; 60]).collect();
        assert_eq!(budget(30.0, 0.0, &slowed).replan(10, 30), Some(24));
    }

    #[test]
    fn a_plan_within_the_band_or_not_yet_measured_is_kept() {
        assert_eq!(budget(30.0, 0.0, &[1.0; 16]).replan(10, 40), None); // exactly 30 s
        assert_eq!(budget(30.0, 0.0, &[1.01; 16]).replan(10, 40), None); // 30.3 s: within the 0.6 s margin
        assert_eq!(budget(30.0, 0.0, &[1.0; 16]).replan(10, 39), None); // 1 s early: within the 1.8 s slack
        assert_eq!(budget(30.0, 0.0, &[2.0; 7]).replan(10, 30), None); // 14 s timed: under a quarter of the budget
        assert_eq!(budget(30.0, 0.0, &[2.0; 8]).replan(30, 30), None); // nothing left to plan
    }

    #[test]
    fn the_state_adds_this_invocations_time_to_what_a_checkpoint_had_spent() {
        let st = budget(12.5, 3.0, &[]).state();
        assert!(st.spent_s >= 12.5 && st.spent_s < 13.5, "{}", st.spent_s);
        assert_eq!((st.reserve_s, st.cap_epochs), (3.0, 1000));
    }
}

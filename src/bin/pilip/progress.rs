//! The training progress bar of `pilip train` (indicatif): the whole run's mini-batches with rate and time
//! left, the log lines printed above it. Hidden when stderr is not a terminal; the log lines then go to stdout.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pilip::train::Progress;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct Bar {
    bar: ProgressBar,
    max_epochs: AtomicUsize,
    shown_epoch: AtomicUsize,
}

impl Bar {
    pub fn new() -> Arc<dyn Progress> {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        // The template is a constant; it parses.
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix:>15} [{bar:30}] {pos}/{len} batches | {elapsed} elapsed, ≤ {eta} left",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Arc::new(Bar { bar, max_epochs: AtomicUsize::new(0), shown_epoch: AtomicUsize::new(usize::MAX) })
    }
}

impl Progress for Bar {
    fn line(&self, text: &str) {
        if self.bar.is_hidden() {
            println!("{text}");
        } else {
            self.bar.println(text);
        }
    }

    fn start(&self, first_epoch: usize, max_epochs: usize, batches: usize) {
        self.max_epochs.store(max_epochs, Ordering::Relaxed);
        // The time left is for the epoch budget: early stopping may end the run sooner (hence "≤").
        self.bar.set_length((max_epochs.saturating_sub(first_epoch) * batches) as u64);
        self.bar.set_position(0);
        self.bar.reset_eta();
    }

    fn batch(&self, epoch: usize) {
        if self.shown_epoch.swap(epoch, Ordering::Relaxed) != epoch {
            self.bar.set_prefix(format!("epoch {}/{}", epoch + 1, self.max_epochs.load(Ordering::Relaxed)));
        }
        self.bar.inc(1);
    }

    fn end(&self) {
        self.bar.finish_and_clear();
    }
}

//! Progress on a terminal for a run by hand (`--once` with stdout and stderr terminals): an
//! indicatif bar on stderr with the messages finished of those tried, the recipients sent,
//! deferred and bounced so far, the rate and the ETA. Nothing at all otherwise: under cron or
//! systemd (no terminal), with output redirected, in `--interval` mode, with `--list`.
//!
//! The recorder thread reports each durable batch ([`Progress::recorded`]); the run loop adds
//! each pass's messages ([`Progress::add_messages`]) and clears the bar before the summary line.
//!
//! Owns: whether progress is shown and how it looks.
//! Must not: count anything the summary relies on (the recorder's `Summary` does).

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar, or nothing; cheap to clone (the recorders of every pass share it).
#[derive(Debug, Clone, Default)]
pub struct Progress {
    bar: Option<ProgressBar>,
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    sent: AtomicUsize,
    deferred: AtomicUsize,
    bounced: AtomicUsize,
}

impl Progress {
    /// Shown when `wanted` (a `--once` run) and both stdout and stderr are terminals.
    pub fn new(wanted: bool) -> Progress {
        let show = wanted && std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        if !show {
            return Progress::default();
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} messages, {msg} ({per_sec}, ETA {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message("0 sent, 0 deferred, 0 bounced");
        bar.enable_steady_tick(Duration::from_millis(200));
        // Log lines (stderr too) are written with the bar hidden, then it is drawn again.
        let hide = bar.clone();
        maildir_core::logging::set_write_around(Box::new(move |f| hide.suspend(f)));
        Progress {
            bar: Some(bar),
            counts: Arc::default(),
        }
    }

    /// True when a bar is drawn.
    #[cfg(test)]
    pub fn shown(&self) -> bool {
        self.bar.is_some()
    }

    /// A pass starts with `n` messages.
    pub fn add_messages(&self, n: usize) {
        if let Some(b) = &self.bar {
            b.inc_length(n as u64);
        }
    }

    /// A batch was recorded: `messages` finished (every recipient has its outcome for this
    /// run), with these recipient outcomes.
    pub fn recorded(&self, messages: usize, sent: usize, deferred: usize, bounced: usize) {
        let Some(b) = &self.bar else {
            return;
        };
        let c = &self.counts;
        let sent = c.sent.fetch_add(sent, Ordering::Relaxed) + sent;
        let deferred = c.deferred.fetch_add(deferred, Ordering::Relaxed) + deferred;
        let bounced = c.bounced.fetch_add(bounced, Ordering::Relaxed) + bounced;
        b.set_message(format!(
            "{sent} sent, {deferred} deferred, {bounced} bounced"
        ));
        b.inc(messages as u64);
    }

    /// The run is over: the bar goes, leaving the terminal to the summary line.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under `cargo test` stdout is captured (not a terminal): nothing is shown, and every call
    /// is harmless.
    #[test]
    fn not_a_terminal_shows_nothing() {
        let p = Progress::new(true);
        assert!(!p.shown());
        p.add_messages(3);
        p.recorded(1, 2, 0, 0);
        p.finish();
        assert!(!Progress::new(false).shown());
    }
}

//! The recorder: makes per-recipient outcomes durable, then acts on them, on a thread of its own.
//!
//! Owns: the recorder thread and its batches (work arrives over a channel and is handled in
//! batches: one `syncfs` for all state files of a batch and one fsync per directory, never one
//! fsync per message), recording each delivered recipient as soon as its `250` arrives
//! ([`Progress`], so a crash later in the message's attempt never sends to it again), and the
//! types the rest of the relay hands it. What an attempt's results mean (delivered / deferred
//! with backoff / bounced, expiry after the queue lifetime, DSN due, flags) is decided purely in
//! [`decide`]; [`apply`] carries those decisions out (DSNs durable in the Maildir before the
//! message they report on moves, state files, moves from `new/` to `cur/`, fsyncs). A message's
//! state file is removed only after its move into `cur/` and the fsyncs of `new/` and `cur/`
//! succeeded; a message whose move fails keeps (or gets) a state file with every recipient final,
//! so it is never sent again, and the move is retried on the next run.
//! Must not: talk to the network.
//!
//! Finished messages go to `cur/<id>:2,<flags>`: `P` when every recipient was delivered, `T`
//! when every recipient bounced, `PT` for a mix.

mod apply;
mod decide;

use std::collections::{HashMap, HashSet};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use maildir_core::Maildir;

use crate::queue::Message;
use crate::state::{MsgState, RcptState, StateDir};

/// Log target of the delivery log (one line per recipient outcome, expiry and bounce): an audit
/// target for the logging thread, which never drops its records (`maildir_core::logging`).
pub const AUDIT: &str = "smtp_relay::audit";

/// The result of one attempt for one recipient.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Delivered, Deferred or Bounced.
    pub state: RcptState,
    /// The reply (`250 2.0.0 ok`) or the reason in words.
    pub text: String,
    /// Enhanced status code to report.
    pub status: String,
    /// The text is an SMTP reply from `remote`.
    pub smtp: bool,
    /// Host name that answered.
    pub remote: Option<String>,
    /// That host offered DSN (RFC 3461): a delivered recipient's success notification is its
    /// job from there on, not ours.
    pub dsn: bool,
}

/// A message whose recipients tried in this run all have a result.
#[derive(Debug)]
pub struct Finished {
    pub msg: Message,
    /// Per envelope recipient; `None` for those not tried (already final).
    pub results: Vec<Option<Attempt>>,
}

/// The recipients of a message delivered so far in this run, sent while others of the same
/// message still wait for an outcome: recorded at once, so a crash before the message's attempt
/// ends never sends to them again.
#[derive(Debug)]
pub struct Progress {
    /// File name in `new/`.
    pub name: String,
    /// The state read at the start of the run.
    pub base: MsgState,
    /// Every recipient delivered in this run so far: (index, reply).
    pub delivered: Vec<(usize, String)>,
}

/// What the recorder is sent.
#[derive(Debug)]
pub enum Work {
    /// Some recipients delivered; others still under way.
    Progress(Progress),
    /// Every recipient tried in this run has a result.
    Finished(Finished),
}

/// Counts of the run, per recipient.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub delivered: usize,
    pub deferred: usize,
    pub bounced: usize,
    pub messages_done: usize,
    pub dsns: usize,
}

/// Settings the recorder needs.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    pub reporting_mta: String,
    pub queue_lifetime: Duration,
    /// A delay warning DSN once a message is this old; `None`: never.
    pub delay_warning: Option<Duration>,
    /// The terminal's progress bar (nothing when not shown).
    pub progress: crate::progress::Progress,
}

/// Most messages handled in one durable batch.
const BATCH: usize = 2048;

/// Starts the recorder thread. Drop every `Sender` to let it finish; join for the summary.
pub fn spawn(
    md: Maildir,
    states: StateDir,
    cfg: RecorderConfig,
) -> std::io::Result<(Sender<Work>, JoinHandle<Summary>)> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let h = std::thread::Builder::new()
        .name("recorder".into())
        .spawn(move || run(md, states, cfg, rx))?;
    Ok((tx, h))
}

fn run(md: Maildir, states: StateDir, cfg: RecorderConfig, rx: Receiver<Work>) -> Summary {
    let mut sum = Summary::default();
    // Messages whose state file this recorder wrote (progress records): removed once moved.
    let mut recorded = HashSet::new();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        let mut finished = Vec::new();
        let mut progress = HashMap::new();
        for w in batch {
            match w {
                Work::Finished(f) => finished.push(f),
                // A later report of the same message holds everything the earlier one did.
                Work::Progress(p) => {
                    progress.insert(p.name.clone(), p);
                }
            }
        }
        // A message finished in this batch: its final record supersedes its progress.
        for f in &finished {
            progress.remove(&f.msg.name);
        }
        record_progress(&states, progress, &mut recorded);
        if !finished.is_empty() {
            let (n, before) = (finished.len(), sum);
            apply::apply(&md, &states, &cfg, finished, &mut recorded, &mut sum);
            cfg.progress.recorded(
                n,
                sum.delivered - before.delivered,
                sum.deferred - before.deferred,
                sum.bounced - before.bounced,
            );
        }
    }
    sum
}

/// Writes the delivered recipients of messages still under way, one durable batch.
fn record_progress(
    states: &StateDir,
    progress: HashMap<String, Progress>,
    recorded: &mut HashSet<String>,
) {
    if progress.is_empty() {
        return;
    }
    let store: Vec<(String, MsgState)> = progress
        .into_values()
        .map(|p| {
            let mut st = p.base;
            for (i, text) in p.delivered {
                if let Some(slot) = st.rcpts.get_mut(i) {
                    *slot = (RcptState::Delivered, text);
                }
            }
            (p.name, st)
        })
        .collect();
    for (name, e) in states.store_batch(&store) {
        log::error!("{name}: cannot record delivered recipients: {e}");
    }
    recorded.extend(store.into_iter().map(|(name, _)| name));
}

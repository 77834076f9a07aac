//! The recorder: makes per-recipient outcomes durable, then acts on them, on a thread of its own.
//!
//! Owns: turning attempt results into state (delivered / deferred with backoff / bounced, expiry
//! after the queue lifetime), recording each delivered recipient as soon as its `250` arrives
//! ([`Progress`], so a crash later in the message's attempt never sends to it again), queueing
//! DSNs into the Maildir (durable before the message they report on moves), and moving finished
//! messages from `new/` to `cur/`. Work arrives over a channel and is handled in batches: one
//! `syncfs` for all state files of a batch and one fsync per directory, never one fsync per
//! message. A message's state file is removed only after its move into `cur/` and the fsyncs of
//! `new/` and `cur/` succeeded; a message whose move fails keeps (or gets) a state file with every
//! recipient final, so it is never sent again, and the move is retried on the next run.
//! Must not: talk to the network.
//!
//! Finished messages go to `cur/<id>:2,<flags>`: `P` when every recipient was delivered, `T`
//! when every recipient bounced, `PT` for a mix.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom, Write};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use maildir_core::{Durability, Envelope, ForwardPath, Maildir, ReversePath};

use crate::dsn;
use crate::queue::Message;
use crate::state::{MsgState, RcptState, StateDir, backoff, epoch_secs, fsync_dir};

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
            apply(&md, &states, &cfg, finished, &mut recorded, &mut sum);
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

struct Plan {
    name: String,
    state: crate::state::MsgState,
    failed: Vec<(usize, dsn::Failed)>,
    dsn: Option<usize>,
}

fn apply(
    md: &Maildir,
    states: &StateDir,
    cfg: &RecorderConfig,
    batch: Vec<Finished>,
    recorded: &mut HashSet<String>,
    sum: &mut Summary,
) {
    let now = SystemTime::now();
    let mut plans = Vec::with_capacity(batch.len());
    let mut dsns = Vec::new();
    for f in &batch {
        let m = &f.msg;
        let mut st = m.state.clone();
        st.attempts += 1;
        let age = now.duration_since(m.arrival).unwrap_or_default();
        let expired = age >= cfg.queue_lifetime;
        let mut failed = Vec::new();
        for (i, r) in f.results.iter().enumerate() {
            let Some(a) = r else { continue };
            let rcpt = m.rcpts[i]
                .mailbox()
                .map(ToString::to_string)
                .unwrap_or_else(|| "postmaster".into());
            let mut a = a.clone();
            if a.state == RcptState::Deferred && expired {
                a.state = RcptState::Bounced;
                a.text = format!(
                    "message expired after {} s in the queue; last error: {}",
                    age.as_secs(),
                    a.text
                );
                a.status = "4.4.7".into();
                a.smtp = false;
                log::info!(target: AUDIT, "{}: to={}, status=expired ({})", m.name, m.rcpts[i], a.text);
            }
            st.rcpts[i] = (a.state, a.text.clone());
            match a.state {
                RcptState::Bounced => failed.push((
                    i,
                    dsn::Failed {
                        rcpt,
                        status: a.status.clone(),
                        smtp_reply: a.smtp.then(|| a.text.clone()),
                        remote: a.remote.clone(),
                        reason: a.text.clone(),
                    },
                )),
                RcptState::Deferred => st.error = a.text.clone(),
                _ => {}
            }
        }
        let mut dsn_idx = None;
        if !failed.is_empty() {
            if let ReversePath::Mailbox(sender) = &m.sender {
                let list: Vec<dsn::Failed> = failed.iter().map(|(_, f)| f.clone()).collect();
                match make_dsn(md, cfg, m, &sender.to_string(), &list, now) {
                    Ok(d) => {
                        dsn_idx = Some(dsns.len());
                        dsns.push(d);
                    }
                    Err(e) => {
                        log::error!("{}: cannot write bounce: {e}; will retry", m.name);
                        revert(&mut st, &failed, &e);
                        failed.clear();
                    }
                }
            } else {
                log::info!(
                    "{}: sender is <>, no bounce for {} recipient(s)",
                    m.name,
                    failed.len()
                );
            }
        }
        plans.push(Plan {
            name: m.name.clone(),
            state: st,
            failed,
            dsn: dsn_idx,
        });
    }
    // DSNs are durable before anything they report on changes.
    let results = if dsns.is_empty() {
        Vec::new()
    } else {
        md.commit_batch(dsns, Durability::Fsync)
    };
    for p in &mut plans {
        if let Some(i) = p.dsn {
            match results.get(i) {
                Some(Ok(d)) => {
                    sum.dsns += 1;
                    log::info!(target: AUDIT, "{}: sender non-delivery notification: {}", p.name, d.id);
                }
                Some(Err(e)) => {
                    log::error!("{}: cannot queue bounce: {e}; will retry", p.name);
                    let e = e.to_string();
                    let failed = std::mem::take(&mut p.failed);
                    revert(&mut p.state, &failed, &e);
                }
                None => {}
            }
        }
    }
    let mut store = Vec::new();
    let mut moves = Vec::new();
    for (p, f) in plans.into_iter().zip(&batch) {
        for (i, r) in f.results.iter().enumerate() {
            if r.is_some() {
                match p.state.rcpts[i].0 {
                    RcptState::Delivered => sum.delivered += 1,
                    RcptState::Bounced => sum.bounced += 1,
                    _ => sum.deferred += 1,
                }
            }
        }
        if p.state.rcpts.iter().all(|r| r.0.is_final()) {
            let any_sent = p.state.rcpts.iter().any(|r| r.0 == RcptState::Delivered);
            let any_bounced = p.state.rcpts.iter().any(|r| r.0 == RcptState::Bounced);
            let flags = match (any_sent, any_bounced) {
                (true, true) => "PT",
                (true, false) => "P",
                _ => "T",
            };
            let had_state = f.msg.has_state_file || recorded.contains(&p.name);
            moves.push((p.name, flags, had_state, p.state));
        } else {
            let mut st = p.state;
            st.next = epoch_secs(now) + backoff(st.attempts).as_secs();
            store.push((p.name, st));
        }
    }
    let mut moved = Vec::new();
    for (name, flags, had_state, mut st) in moves {
        match md.move_to_cur(&name, flags) {
            Ok(_) => moved.push((name, had_state)),
            Err(e) => {
                // Every recipient is final: the record says so, so no run sends this message
                // again; the move is retried on the next run.
                log::error!(
                    "{name}: cannot move to cur/: {e}; every recipient is final and recorded, \
                     so it is not sent again; the move is retried on the next run"
                );
                st.error = format!("cannot move to cur/: {e}");
                st.next = 0;
                store.push((name, st));
            }
        }
    }
    for (name, e) in states.store_batch(&store) {
        log::error!("{name}: cannot record state: {e}");
    }
    if moved.is_empty() {
        return;
    }
    sum.messages_done += moved.len();
    // A state file goes only once the move is durable: before that, a crash could bring the
    // message back into `new/` without the record of who already has it.
    let mut durable = true;
    for dir in [md.new_dir(), md.cur_dir()] {
        if let Err(e) = fsync_dir(dir) {
            log::error!("{e}; keeping the state files of the messages moved");
            durable = false;
        }
    }
    if !durable {
        return;
    }
    let mut removed = false;
    for (name, had_state) in &moved {
        if *had_state {
            states.remove(name);
            recorded.remove(name);
            removed = true;
        }
    }
    if removed && let Err(e) = states.sync_dir() {
        log::error!("{e}");
    }
}

/// A bounce that could not be queued: its recipients stay deferred.
fn revert(st: &mut crate::state::MsgState, failed: &[(usize, dsn::Failed)], why: &str) {
    for (i, _) in failed {
        st.rcpts[*i].0 = RcptState::Deferred;
    }
    st.error = format!("cannot queue bounce: {why}");
}

fn make_dsn(
    md: &Maildir,
    cfg: &RecorderConfig,
    m: &Message,
    sender: &str,
    failed: &[dsn::Failed],
    now: SystemTime,
) -> Result<maildir_core::Delivery, String> {
    let mut file =
        File::open(&m.path).map_err(|e| format!("cannot open {}: {e}", m.path.display()))?;
    file.seek(SeekFrom::Start(m.body_offset))
        .map_err(|e| format!("cannot seek {}: {e}", m.path.display()))?;
    let original = BufReader::new(file);
    let rcpt = ForwardPath::parse(&format!("<{sender}>"))
        .map_err(|e| format!("bad sender {sender}: {e}"))?;
    let env = Envelope {
        sender: ReversePath::Null,
        recipients: vec![rcpt],
    };
    let mut d = md.deliver().map_err(|e| e.to_string())?;
    let res = env.write_to(&mut d).and_then(|_| {
        let report = dsn::Report {
            reporting_mta: &cfg.reporting_mta,
            queue_id: &m.name,
            sender,
            arrival: m.arrival,
            now,
            message_id: &dsn::message_id(&m.name, &cfg.reporting_mta, now, fastrand::u64(..)),
        };
        dsn::write(&mut d, &report, failed, original)
    });
    res.and_then(|_| d.flush())
        .map_err(|e| format!("cannot write bounce: {e}"))?;
    Ok(d)
}

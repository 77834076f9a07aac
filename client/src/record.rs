//! The recorder: makes per-recipient outcomes durable, then acts on them, on a thread of its own.
//!
//! Owns: turning attempt results into state (delivered / deferred with backoff / bounced, expiry
//! after the queue lifetime), queueing DSNs into the Maildir (durable before the message they
//! report on moves), and moving finished messages from `new/` to `cur/`. Work arrives over a
//! channel and is handled in batches: one `syncfs` for all state files of a batch and one fsync
//! per directory, never one fsync per message. Must not: talk to the network.
//!
//! Finished messages go to `cur/<id>:2,<flags>`: `P` when every recipient was delivered, `T`
//! when every recipient bounced, `PT` for a mix.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom, Write};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use maildir_core::{Durability, Envelope, ForwardPath, Maildir, ReversePath};

use crate::dsn;
use crate::queue::Message;
use crate::state::{RcptState, StateDir, backoff, epoch_secs, fsync_dir};

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
) -> std::io::Result<(Sender<Finished>, JoinHandle<Summary>)> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let h = std::thread::Builder::new()
        .name("recorder".into())
        .spawn(move || run(md, states, cfg, rx))?;
    Ok((tx, h))
}

fn run(md: Maildir, states: StateDir, cfg: RecorderConfig, rx: Receiver<Finished>) -> Summary {
    let mut sum = Summary::default();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        apply(&md, &states, &cfg, batch, &mut sum);
    }
    sum
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
                log::info!("{}: to={}, status=expired ({})", m.name, m.rcpts[i], a.text);
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
                    log::info!("{}: sender non-delivery notification: {}", p.name, d.id);
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
            moves.push((p.name, flags, f.msg.state.attempts > 0));
        } else {
            let mut st = p.state;
            st.next = epoch_secs(now) + backoff(st.attempts).as_secs();
            store.push((p.name, st));
        }
    }
    for (name, e) in states.store_batch(&store) {
        log::error!("{name}: cannot record state: {e}");
    }
    for (name, flags, had_state) in &moves {
        match md.move_to_cur(name, flags) {
            Ok(_) => sum.messages_done += 1,
            Err(e) => log::error!("{name}: {e}"),
        }
        if *had_state {
            states.remove(name);
        }
    }
    if !moves.is_empty() {
        for dir in [md.new_dir(), md.cur_dir()] {
            if let Err(e) = fsync_dir(dir) {
                log::error!("{e}");
            }
        }
        if moves.iter().any(|m| m.2)
            && let Err(e) = states.sync_dir()
        {
            log::error!("{e}");
        }
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
        };
        dsn::write(&mut d, &report, failed, original)
    });
    res.and_then(|_| d.flush())
        .map_err(|e| format!("cannot write bounce: {e}"))?;
    Ok(d)
}

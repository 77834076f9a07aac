//! Carrying out the recorder's decisions for a batch of finished messages.
//!
//! Owns: the I/O of a batch of [`Decision`]s: writing the DSNs and committing them to the
//! Maildir (durable before the message they report on changes; a DSN that cannot be written or
//! queued leaves its recipients deferred), storing the state of messages to retry, moving
//! finished messages from `new/` to `cur/`, the fsyncs of `new/` and `cur/`, removing state files
//! only after those succeeded, the run's counts and the delivery log lines.
//! Must not: decide which recipient is delivered, deferred, bounced or expired, or when to retry
//! (that is [`super::decide`]); talk to the network.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom, Write};
use std::time::SystemTime;

use maildir_core::{Durability, Envelope, ForwardPath, Maildir, ReversePath};

use super::decide::{Decision, Msg, Outcome, Rules, decide, outcome};
use super::{AUDIT, Finished, RecorderConfig, Summary};
use crate::dsn;
use crate::queue::Message;
use crate::state::{RcptState, StateDir, fsync_dir};

pub(super) fn apply(
    md: &Maildir,
    states: &StateDir,
    cfg: &RecorderConfig,
    batch: Vec<Finished>,
    recorded: &mut HashSet<String>,
    sum: &mut Summary,
) {
    let now = SystemTime::now();
    let rules = Rules {
        lifetime: cfg.queue_lifetime,
        delay_warning: cfg.delay_warning,
    };
    let mut plans: Vec<(Decision, Option<usize>)> = Vec::with_capacity(batch.len());
    let mut dsns = Vec::new();
    for f in &batch {
        let m = &f.msg;
        let facts = Msg {
            sender: &m.sender,
            rcpts: &m.rcpts,
            rcpt_dsn: &m.rcpt_dsn,
            arrival: m.arrival,
        };
        let mut d = decide(&m.state, &facts, &f.results, now, &rules);
        for (i, why) in &d.expired {
            if let Some(rcpt) = m.rcpts.get(*i) {
                log::info!(target: AUDIT, "{}: to={}, status=expired ({})", m.name, rcpt, why);
            }
        }
        let mut dsn_idx = None;
        match &d.dsn_to {
            Some(sender) => match make_dsn(md, cfg, m, sender, &d.reports, now) {
                Ok(w) => {
                    dsn_idx = Some(dsns.len());
                    dsns.push(w);
                }
                Err(e) => {
                    log::error!("{}: cannot write bounce: {e}; will retry", m.name);
                    d.dsn_failed(&e);
                }
            },
            None if !d.bounced.is_empty() && matches!(m.sender, ReversePath::Null) => log::info!(
                "{}: sender is <>, no bounce for {} recipient(s)",
                m.name,
                d.bounced.len()
            ),
            None => {}
        }
        // Bounced recipients the DSN leaves out: their NOTIFY said so (RFC 3461 §4.1).
        if !matches!(m.sender, ReversePath::Null) {
            for &i in &d.bounced {
                if !d.reports.iter().any(|(r, _)| *r == i)
                    && let Some(rcpt) = m.rcpts.get(i)
                {
                    log::info!(target: AUDIT, "{}: to={}, no bounce: NOTIFY={}", m.name, rcpt,
                        m.rcpt_dsn(i).notify.map(|n| n.to_string()).unwrap_or_default());
                }
            }
        }
        plans.push((d, dsn_idx));
    }
    // DSNs are durable before anything they report on changes.
    let results = if dsns.is_empty() {
        Vec::new()
    } else {
        md.commit_batch(dsns, Durability::Fsync)
    };
    for ((d, dsn_idx), f) in plans.iter_mut().zip(&batch) {
        let name = &f.msg.name;
        match dsn_idx.and_then(|i| results.get(i)) {
            Some(Ok(w)) => {
                sum.dsns += 1;
                let kind = dsn_kind(&d.reports);
                log::info!(target: AUDIT, "{}: sender {kind} notification: {}", name, w.id);
            }
            Some(Err(e)) => {
                log::error!("{}: cannot queue DSN: {e}; will retry", name);
                d.dsn_failed(&e.to_string());
            }
            None => {}
        }
    }
    let mut store = Vec::new();
    let mut moves = Vec::new();
    for ((d, _), f) in plans.into_iter().zip(&batch) {
        let name = f.msg.name.clone();
        for (i, r) in f.results.iter().enumerate() {
            if r.is_some() {
                match d.state.rcpts.get(i).map(|r| r.0) {
                    Some(RcptState::Delivered) => sum.delivered += 1,
                    Some(RcptState::Bounced) => sum.bounced += 1,
                    _ => sum.deferred += 1,
                }
            }
        }
        let mut st = d.state;
        match outcome(&st, now) {
            Outcome::Finish(flags) => {
                let had_state = f.msg.has_state_file || recorded.contains(&name);
                moves.push((name, flags, had_state, st));
            }
            Outcome::Retry(next) => {
                st.next = next;
                store.push((name, st));
            }
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

fn make_dsn(
    md: &Maildir,
    cfg: &RecorderConfig,
    m: &Message,
    sender: &str,
    reports: &[(usize, dsn::Recipient)],
    now: SystemTime,
) -> Result<maildir_core::Delivery, String> {
    let rcpts: Vec<dsn::Recipient> = reports.iter().map(|(_, f)| f.clone()).collect();
    let mut file =
        File::open(&m.path).map_err(|e| format!("cannot open {}: {e}", m.path.display()))?;
    file.seek(SeekFrom::Start(m.body_offset))
        .map_err(|e| format!("cannot seek {}: {e}", m.path.display()))?;
    let original = BufReader::new(file);
    let rcpt = ForwardPath::parse(&format!("<{sender}>"))
        .map_err(|e| format!("bad sender {sender}: {e}"))?;
    let env = Envelope::new(ReversePath::Null, vec![rcpt]);
    let mut d = md.deliver().map_err(|e| e.to_string())?;
    let res = env.write_to(&mut d).and_then(|_| {
        let report = dsn::Report {
            reporting_mta: &cfg.reporting_mta,
            queue_id: &m.name,
            sender,
            arrival: m.arrival,
            now,
            message_id: &dsn::message_id(&m.name, &cfg.reporting_mta, now, fastrand::u64(..)),
            envid: m.envid.as_ref().map(|e| e.as_str()),
            retry_until: m.arrival + cfg.queue_lifetime,
        };
        dsn::write(&mut d, &report, &rcpts, original)
    });
    res.and_then(|_| d.flush())
        .map_err(|e| format!("cannot write bounce: {e}"))?;
    Ok(d)
}

/// The words of the delivery log for a DSN (Postfix's): by the gravest action it reports.
fn dsn_kind(reports: &[(usize, dsn::Recipient)]) -> &'static str {
    let has = |a: dsn::Action| reports.iter().any(|(_, r)| r.action == a);
    if has(dsn::Action::Failed) {
        "non-delivery"
    } else if has(dsn::Action::Delayed) {
        "delay"
    } else {
        "delivery status"
    }
}

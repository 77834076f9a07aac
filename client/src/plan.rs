//! The delivery plan of one run: which recipients of which message go to which MX addresses,
//! and the tally of results that hands each message to the recorder once all its recipients
//! tried in this run have one, and each delivered recipient at once while others of its message
//! are still under way (so a crash meanwhile never sends to it again).
//!
//! Owns: grouping recipients by domain (case-insensitive) and by route (domains with the same MX
//! addresses share jobs, and jobs are queued per address, so domains sharing an MX host share
//! its session), turning DNS failures into immediate results, and the per-message tally.
//! Must not: do I/O other than handing finished messages to the recorder's channel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use crossbeam_channel::Sender;
use maildir_core::ForwardPath;

use crate::mx::{Resolution, Target};
use crate::queue::Message;
use crate::record::{Attempt, Finished, Progress, Work};
use crate::state::RcptState;

/// Recipients of one message that travel together along one route.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// Index into the tally's messages.
    pub msg: usize,
    /// Envelope recipient indexes.
    pub rcpts: Vec<usize>,
    /// Addresses to try in order.
    pub route: Arc<Vec<Target>>,
    /// The address being tried.
    pub pos: usize,
}

/// The domain key of a recipient (`None` for a bare `<postmaster>`, which has no route).
pub fn domain_of(r: &ForwardPath) -> Option<String> {
    r.mailbox().map(|m| m.domain().normalized())
}

/// Results of this run, per message; hands complete messages to the recorder.
pub struct Tally {
    msgs: Vec<Option<Message>>,
    results: Vec<Vec<Option<Attempt>>>,
    open: Vec<usize>,
    tx: Sender<Work>,
}

impl Tally {
    /// Index of a message, for jobs.
    pub fn message(&self, i: usize) -> Option<&Message> {
        self.msgs.get(i).and_then(Option::as_ref)
    }

    /// Records one recipient's result; sends the message on when it was the last one open.
    pub fn record(&mut self, msg: usize, rcpt: usize, a: Attempt) {
        let (Some(slot), Some(open)) = (
            self.results.get_mut(msg).and_then(|r| r.get_mut(rcpt)),
            self.open.get_mut(msg),
        ) else {
            return;
        };
        if slot.is_some() {
            return;
        }
        let delivered = a.state == RcptState::Delivered;
        *slot = Some(a);
        *open -= 1;
        if *open == 0 {
            if let Some(m) = self.msgs[msg].take() {
                let results = std::mem::take(&mut self.results[msg]);
                self.send(Work::Finished(Finished { msg: m, results }));
            }
        } else if delivered && let Some(m) = &self.msgs[msg] {
            let delivered = self.results[msg]
                .iter()
                .enumerate()
                .filter_map(|(i, r)| match r {
                    Some(a) if a.state == RcptState::Delivered => Some((i, a.text.clone())),
                    _ => None,
                })
                .collect();
            let p = Progress {
                name: m.name.clone(),
                base: m.state.clone(),
                delivered,
            };
            self.send(Work::Progress(p));
        }
    }

    fn send(&self, w: Work) {
        if self.tx.send(w).is_err() {
            log::error!("recorder is gone; results of this run are lost and will be retried");
        }
    }
}

/// Builds the jobs for the due messages and records DNS failures at once.
pub fn build(
    msgs: Vec<Message>,
    dns: &HashMap<String, Resolution>,
    tx: Sender<Work>,
    now: SystemTime,
) -> (Tally, Vec<JobSpec>) {
    let n = msgs.len();
    let mut tally = Tally {
        results: msgs.iter().map(|m| vec![None; m.rcpts.len()]).collect(),
        open: msgs.iter().map(|m| m.open_rcpts().len()).collect(),
        msgs: msgs.into_iter().map(Some).collect(),
        tx,
    };
    // Every recipient already final (a crash after recording, before the move): finish now.
    for i in 0..n {
        if tally.open[i] == 0
            && let Some(m) = tally.msgs[i].take()
        {
            let results = std::mem::take(&mut tally.results[i]);
            tally.send(Work::Finished(Finished { msg: m, results }));
        }
    }
    let mut routes: HashMap<Vec<Target>, Arc<Vec<Target>>> = HashMap::new();
    let mut jobs = Vec::new();
    let mut immediate = Vec::new();
    for i in 0..n {
        let Some(m) = tally.message(i) else { continue };
        let mut by_route: Vec<(Arc<Vec<Target>>, Vec<usize>)> = Vec::new();
        for r in m.open_rcpts() {
            let res = match domain_of(&m.rcpts[r]) {
                Some(d) => dns
                    .get(&d)
                    .cloned()
                    .unwrap_or_else(|| Resolution::Temporary(format!("{d} was not resolved"))),
                None => Resolution::Permanent {
                    status: "5.1.3",
                    text: "<postmaster> without a domain cannot be relayed".into(),
                },
            };
            match res {
                Resolution::Targets(t) => {
                    let route = routes
                        .entry(t.clone())
                        .or_insert_with(|| Arc::new(t))
                        .clone();
                    match by_route.iter_mut().find(|(rt, _)| Arc::ptr_eq(rt, &route)) {
                        Some((_, v)) => v.push(r),
                        None => by_route.push((route, vec![r])),
                    }
                }
                Resolution::Permanent { status, text } => immediate.push((
                    i,
                    r,
                    Attempt {
                        state: RcptState::Bounced,
                        text,
                        status: status.into(),
                        smtp: false,
                        remote: None,
                    },
                )),
                Resolution::Temporary(text) => immediate.push((
                    i,
                    r,
                    Attempt {
                        state: RcptState::Deferred,
                        text,
                        status: "4.4.3".into(),
                        smtp: false,
                        remote: None,
                    },
                )),
            }
        }
        for (route, rcpts) in by_route {
            jobs.push(JobSpec {
                msg: i,
                rcpts,
                route,
                pos: 0,
            });
        }
    }
    for (i, r, a) in immediate {
        if let Some(m) = tally.message(i) {
            let delay = now
                .duration_since(m.arrival)
                .unwrap_or_default()
                .as_secs_f64();
            log::info!(
                target: crate::record::AUDIT,
                "{}: to={}, relay=none, delay={delay:.2}, status={} ({})",
                m.name,
                m.rcpts[r],
                a.state.word(),
                a.text
            );
        }
        tally.record(i, r, a);
    }
    (tally, jobs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MsgState;
    use maildir_core::ReversePath;

    fn message(rcpts: &[&str]) -> Message {
        Message {
            name: "m1".into(),
            path: "/nonexistent/m1".into(),
            sender: ReversePath::parse("<s@a.test>").unwrap(),
            rcpts: rcpts
                .iter()
                .map(|r| ForwardPath::parse(r).unwrap())
                .collect(),
            body_offset: 0,
            body_len: 0,
            eight_bit: false,
            arrival: SystemTime::UNIX_EPOCH,
            state: MsgState::parse("", rcpts.len()),
            has_state_file: false,
        }
    }

    fn attempt(state: RcptState, text: &str) -> Attempt {
        Attempt {
            state,
            text: text.into(),
            status: "2.0.0".into(),
            smtp: true,
            remote: Some("mx.test".into()),
        }
    }

    #[test]
    fn delivered_recipients_go_to_the_recorder_before_the_message_ends() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let m = message(&["<a@x.test>", "<b@y.test>", "<c@z.test>"]);
        let targets = |ip: [u8; 4]| {
            Resolution::Targets(vec![Target {
                host: "mx".into(),
                addr: std::net::SocketAddr::from((ip, 25)),
            }])
        };
        let dns: HashMap<String, Resolution> = [
            ("x.test".to_string(), targets([127, 0, 0, 2])),
            ("y.test".to_string(), targets([127, 0, 0, 3])),
            ("z.test".to_string(), targets([127, 0, 0, 4])),
        ]
        .into_iter()
        .collect();
        let (mut tally, _) = build(vec![m], &dns, tx, SystemTime::UNIX_EPOCH);
        assert!(rx.try_recv().is_err(), "nothing before a result");
        // A deferral alone is not recorded early.
        tally.record(0, 1, attempt(RcptState::Deferred, "451 later"));
        assert!(rx.try_recv().is_err());
        tally.record(0, 0, attempt(RcptState::Delivered, "250 ok"));
        match rx.try_recv() {
            Ok(Work::Progress(p)) => {
                assert_eq!(p.name, "m1");
                assert_eq!(p.delivered, vec![(0, "250 ok".to_string())]);
            }
            other => panic!("{other:?}"),
        }
        // The last one: the whole message, with every result.
        tally.record(0, 2, attempt(RcptState::Delivered, "250 fine"));
        match rx.try_recv() {
            Ok(Work::Finished(f)) => {
                let states: Vec<_> = f
                    .results
                    .iter()
                    .map(|r| r.as_ref().map(|a| a.state))
                    .collect();
                assert_eq!(
                    states,
                    vec![
                        Some(RcptState::Delivered),
                        Some(RcptState::Deferred),
                        Some(RcptState::Delivered)
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(rx.try_recv().is_err());
    }
}

//! The delivery plan of one run: which recipients of which message go to which MX addresses,
//! and the tally of results that hands each message to the recorder once all its recipients
//! tried in this run have one, and each delivered recipient at once while others of its message
//! are still under way (so a crash meanwhile never sends to it again).
//!
//! Owns: grouping recipients by domain (case-insensitive) and by route (domains with the same MX
//! addresses share jobs, and jobs are queued per address, so domains sharing an MX host share
//! its session), where a job goes when a connection ends without finishing it and how far it
//! travels in one run (MX addresses tried, sessions that answered, reconnects to the same
//! host: [`JobSpec`]), turning DNS failures into immediate results, and the per-message tally.
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

/// Most MX addresses tried for one job in one run (Postfix: `smtp_mx_address_limit = 5`).
/// Addresses past it are not tried; what is left is deferred.
pub const MX_ADDRESS_LIMIT: usize = 5;

/// Most sessions that answered a transaction of one job in one run before it is deferred
/// (Postfix: `smtp_mx_session_limit = 2`). Connections that fail, or end before the server
/// answered anything of the job, do not count.
pub const MX_SESSION_LIMIT: u8 = 2;

/// Most times one job goes back to the same address on a new connection because the server
/// closed (421 or a plain close) after accepting other messages on that connection.
pub const RECONNECT_LIMIT: u8 = 3;

/// Where a job goes after its connection ended before finishing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A new connection to the same address.
    Same,
    /// The next MX address.
    Address,
    /// Nowhere in this run: defer.
    Defer,
}

/// Recipients of one message that travel together along one route.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// Index into the tally's messages.
    pub msg: usize,
    /// Envelope recipient indexes.
    pub rcpts: Vec<usize>,
    /// Addresses to try in order (at most [`MX_ADDRESS_LIMIT`]).
    pub route: Arc<Vec<Target>>,
    /// The address being tried.
    pub pos: usize,
    /// Sessions that answered a transaction of this job and did not take it.
    pub sessions: u8,
    /// New connections to the same address after a close mid-batch.
    pub reconnects: u8,
}

impl JobSpec {
    /// The address being tried.
    pub fn target(&self) -> &Target {
        &self.route[self.pos]
    }

    /// Moves to the next MX address if the limits allow; false when the job must be deferred.
    pub fn next_address(&mut self) -> bool {
        if self.pos + 1 >= self.route.len().min(MX_ADDRESS_LIMIT)
            || self.sessions >= MX_SESSION_LIMIT
        {
            return false;
        }
        self.pos += 1;
        self.reconnects = 0;
        true
    }

    /// Counts a session at the current address that answered a transaction of this job.
    pub fn answered(&mut self) {
        self.sessions = self.sessions.saturating_add(1);
    }

    /// Where this job goes after its connection ended without finishing it. `progress`: the
    /// server took or refused other jobs on that connection (then it closed, answered 421 or
    /// broke the protocol: a per-connection limit, so the same host again, a bounded number
    /// of times); `stalled`: it ended by a timeout (no second chance for that host). Otherwise,
    /// or past the reconnect limit: the next address, within the limits; else defer.
    pub fn after_close(&mut self, progress: bool, stalled: bool) -> Next {
        if progress && !stalled && self.reconnect() {
            Next::Same
        } else if self.next_address() {
            Next::Address
        } else {
            Next::Defer
        }
    }

    /// Goes back to the same address on a new connection if the limit allows.
    pub fn reconnect(&mut self) -> bool {
        if self.reconnects >= RECONNECT_LIMIT {
            return false;
        }
        self.reconnects += 1;
        true
    }
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

    /// True when recipient `rcpt` of message `msg` has a result in this run already.
    pub fn has_result(&self, msg: usize, rcpt: usize) -> bool {
        self.results
            .get(msg)
            .and_then(|r| r.get(rcpt))
            .is_some_and(Option::is_some)
    }

    /// Stopping: sends every message that has a result for some recipient to the recorder, the
    /// others (`None`) keeping their state; messages with no result at all are left untouched.
    pub fn flush_tried(&mut self) {
        for i in 0..self.msgs.len() {
            if !self.results[i].iter().any(Option::is_some) {
                continue;
            }
            if let Some(m) = self.msgs[i].take() {
                let results = std::mem::take(&mut self.results[i]);
                self.send(Work::Finished(Finished { msg: m, results }));
            }
        }
        for m in &mut self.msgs {
            *m = None;
        }
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
                Resolution::Targets(mut t) => {
                    t.truncate(MX_ADDRESS_LIMIT);
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
                        dsn: false,
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
                        dsn: false,
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
                sessions: 0,
                reconnects: 0,
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

    fn job(hosts: usize) -> JobSpec {
        let route = (0..hosts)
            .map(|i| Target {
                host: format!("mx{i}.test"),
                addr: format!("127.0.0.{}:25", i + 2).parse().unwrap(),
                transport: false,
            })
            .collect();
        JobSpec {
            msg: 0,
            rcpts: vec![0],
            route: Arc::new(route),
            pos: 0,
            sessions: 0,
            reconnects: 0,
        }
    }

    #[test]
    fn at_most_five_addresses() {
        let mut j = job(7);
        let mut tried = vec![j.target().host.clone()];
        while j.next_address() {
            tried.push(j.target().host.clone());
        }
        assert_eq!(
            tried,
            ["mx0.test", "mx1.test", "mx2.test", "mx3.test", "mx4.test"]
        );
        let mut j = job(1);
        assert!(!j.next_address());
    }

    #[test]
    fn at_most_two_sessions_that_answered() {
        let mut j = job(4);
        j.answered();
        assert!(j.next_address());
        j.answered();
        assert!(!j.next_address(), "two sessions answered: deferred");
        assert_eq!(j.pos, 1);
    }

    #[test]
    fn after_a_close() {
        // Refused, 421 greeting, closed before anything: the next address, then deferral.
        let mut j = job(2);
        assert_eq!(j.after_close(false, false), Next::Address);
        assert_eq!(j.after_close(false, false), Next::Defer);
        // Closed after other jobs: the same address three times, then the next one.
        let mut j = job(2);
        for _ in 0..3 {
            assert_eq!(j.after_close(true, false), Next::Same);
        }
        assert_eq!(j.after_close(true, false), Next::Address);
        assert_eq!(j.pos, 1);
        assert_eq!(j.after_close(true, false), Next::Same);
        // A stall after other jobs: never the same host again.
        let mut j = job(1);
        assert_eq!(j.after_close(true, true), Next::Defer);
    }

    #[test]
    fn reconnects_are_bounded_per_address() {
        let mut j = job(2);
        assert!(j.reconnect() && j.reconnect() && j.reconnect());
        assert!(!j.reconnect());
        assert!(j.next_address());
        assert!(j.reconnect(), "a new address starts a new count");
    }

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
            ret: None,
            envid: None,
            rcpt_dsn: Vec::new(),
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
            dsn: false,
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
                transport: false,
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

//! The relay's retry, bounce and expiry rules, pure.
//!
//! Owns: turning one message's attempt results into a typed [`Decision`] (the new per-recipient
//! state, deferred recipients bounced with 4.4.7 once the queue lifetime has passed, which
//! recipients bounce and whether a DSN is due and to whom), undoing the bounces of a DSN that
//! could not be queued ([`Decision::dsn_failed`]), and what becomes of the message afterwards
//! ([`outcome`]: `cur/` with the flags `P`, `T` or `PT`, or a retry after the backoff).
//! Must not: touch files, the network or the clock (`now` is passed in), or log.

use std::time::{Duration, SystemTime};

use maildir_core::{ForwardPath, ReversePath};

use super::Attempt;
use crate::dsn;
use crate::state::{MsgState, RcptState, backoff, epoch_secs};

/// What one finished attempt of a message comes to, before anything is written.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The message's new state: one more attempt, each tried recipient's result.
    pub state: MsgState,
    /// Recipients that bounced in this attempt, by envelope index, with what the DSN says.
    pub bounced: Vec<(usize, dsn::Failed)>,
    /// Where the DSN for [`Decision::bounced`] goes: the envelope sender; `None` when nothing
    /// bounced or the sender is `<>` (no bounce for a bounce).
    pub dsn_to: Option<String>,
    /// Deferred recipients bounced because the message expired: (index, reason), for the log.
    pub expired: Vec<(usize, String)>,
}

/// What the message itself comes to once its state is final for this attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every recipient is final: move to `cur/` with these flags.
    Finish(&'static str),
    /// Some recipient is still to be tried: not before this time (seconds since the epoch).
    Retry(u64),
}

/// Decides one attempt: `state` is the message's state before it, `results` one entry per
/// envelope recipient (`None` for those not tried), `arrival` when it was queued.
pub fn decide(
    state: &MsgState,
    sender: &ReversePath,
    rcpts: &[ForwardPath],
    arrival: SystemTime,
    results: &[Option<Attempt>],
    now: SystemTime,
    lifetime: Duration,
) -> Decision {
    let mut st = state.clone();
    st.attempts += 1;
    let age = now.duration_since(arrival).unwrap_or_default();
    let expired_now = age >= lifetime;
    let mut bounced = Vec::new();
    let mut expired = Vec::new();
    for (i, r) in results.iter().enumerate() {
        let Some(a) = r else { continue };
        let (Some(fwd), Some(slot)) = (rcpts.get(i), st.rcpts.get_mut(i)) else {
            continue;
        };
        let rcpt = fwd
            .mailbox()
            .map(ToString::to_string)
            .unwrap_or_else(|| "postmaster".into());
        let mut a = a.clone();
        if a.state == RcptState::Deferred && expired_now {
            a.state = RcptState::Bounced;
            a.text = format!(
                "message expired after {} s in the queue; last error: {}",
                age.as_secs(),
                a.text
            );
            a.status = "4.4.7".into();
            a.smtp = false;
            expired.push((i, a.text.clone()));
        }
        *slot = (a.state, a.text.clone());
        match a.state {
            RcptState::Bounced => bounced.push((
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
    let dsn_to = match sender {
        ReversePath::Mailbox(s) if !bounced.is_empty() => Some(s.to_string()),
        _ => None,
    };
    Decision {
        state: st,
        bounced,
        dsn_to,
        expired,
    }
}

impl Decision {
    /// The DSN could not be written or queued: its recipients stay deferred, to bounce on a
    /// later run.
    pub fn dsn_failed(&mut self, why: &str) {
        for (i, _) in std::mem::take(&mut self.bounced) {
            if let Some(r) = self.state.rcpts.get_mut(i) {
                r.0 = RcptState::Deferred;
            }
        }
        self.state.error = format!("cannot queue bounce: {why}");
    }
}

/// What becomes of a message in `state` after an attempt that ended at `now`.
pub fn outcome(state: &MsgState, now: SystemTime) -> Outcome {
    if state.rcpts.iter().all(|r| r.0.is_final()) {
        let any_sent = state.rcpts.iter().any(|r| r.0 == RcptState::Delivered);
        let any_bounced = state.rcpts.iter().any(|r| r.0 == RcptState::Bounced);
        Outcome::Finish(match (any_sent, any_bounced) {
            (true, true) => "PT",
            (true, false) => "P",
            _ => "T",
        })
    } else {
        Outcome::Retry(epoch_secs(now) + backoff(state.attempts).as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const LIFETIME: Duration = Duration::from_secs(5 * 86400);

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn rcpts(list: &[&str]) -> Vec<ForwardPath> {
        list.iter()
            .map(|r| ForwardPath::parse(r).expect("test address"))
            .collect()
    }

    fn sender(s: &str) -> ReversePath {
        ReversePath::parse(s).expect("test sender")
    }

    fn fresh(n: usize) -> MsgState {
        MsgState {
            rcpts: vec![(RcptState::Pending, String::new()); n],
            ..MsgState::default()
        }
    }

    fn attempt(state: RcptState, text: &str, status: &str, smtp: bool) -> Option<Attempt> {
        Some(Attempt {
            state,
            text: text.into(),
            status: status.into(),
            smtp,
            remote: smtp.then(|| "mx.test".into()),
        })
    }

    fn delivered() -> Option<Attempt> {
        attempt(RcptState::Delivered, "250 2.0.0 ok", "2.0.0", true)
    }

    fn deferred() -> Option<Attempt> {
        attempt(RcptState::Deferred, "451 4.3.0 try later", "4.3.0", true)
    }

    fn bounced() -> Option<Attempt> {
        attempt(RcptState::Bounced, "550 5.1.1 no such user", "5.1.1", true)
    }

    /// [`decide`] for a message from `<s@a.test>` queued at `t(1000)`.
    fn run(base: &MsgState, to: &[&str], results: &[Option<Attempt>], now: SystemTime) -> Decision {
        let (from, arrival) = (sender("<s@a.test>"), t(1000));
        decide(base, &from, &rcpts(to), arrival, results, now, LIFETIME)
    }

    fn states(d: &Decision) -> Vec<RcptState> {
        d.state.rcpts.iter().map(|r| r.0).collect()
    }

    #[test]
    fn every_recipient_delivered_finishes_with_p() {
        let d = run(
            &fresh(2),
            &["<x@b.test>", "<y@b.test>"],
            &[delivered(), delivered()],
            t(1010),
        );
        assert_eq!(d.state.attempts, 1);
        assert_eq!(states(&d), [RcptState::Delivered; 2]);
        assert_eq!(d.state.rcpts[0].1, "250 2.0.0 ok");
        assert!(d.bounced.is_empty() && d.expired.is_empty());
        assert_eq!(d.dsn_to, None);
        assert_eq!(outcome(&d.state, t(1010)), Outcome::Finish("P"));
    }

    #[test]
    fn mixed_outcomes() {
        let d = run(
            &fresh(3),
            &["<x@b.test>", "<y@b.test>", "<z@b.test>"],
            &[delivered(), bounced(), deferred()],
            t(1010),
        );
        assert_eq!(
            states(&d),
            [
                RcptState::Delivered,
                RcptState::Bounced,
                RcptState::Deferred
            ]
        );
        // The last temporary error is the message's error.
        assert_eq!(d.state.error, "451 4.3.0 try later");
        assert_eq!(d.dsn_to.as_deref(), Some("s@a.test"));
        assert_eq!(d.bounced.len(), 1);
        let (i, f) = &d.bounced[0];
        assert_eq!(*i, 1);
        assert_eq!(f.rcpt, "y@b.test");
        assert_eq!(f.status, "5.1.1");
        assert_eq!(f.smtp_reply.as_deref(), Some("550 5.1.1 no such user"));
        assert_eq!(f.remote.as_deref(), Some("mx.test"));
        // One recipient is still deferred: retry after the first backoff.
        assert_eq!(outcome(&d.state, t(1010)), Outcome::Retry(1010 + 300));
        // Delivered and bounced, nothing left: PT; only bounced: T.
        let mut st = d.state.clone();
        st.rcpts[2].0 = RcptState::Delivered;
        assert_eq!(outcome(&st, t(0)), Outcome::Finish("PT"));
        st.rcpts[0].0 = RcptState::Bounced;
        st.rcpts[2].0 = RcptState::Bounced;
        assert_eq!(outcome(&st, t(0)), Outcome::Finish("T"));
    }

    #[test]
    fn recipients_not_tried_keep_their_state() {
        let mut base = fresh(2);
        base.attempts = 3;
        base.rcpts[0] = (RcptState::Delivered, "250 earlier".into());
        let d = run(
            &base,
            &["<x@b.test>", "<y@b.test>"],
            &[None, delivered()],
            t(1010),
        );
        assert_eq!(d.state.attempts, 4);
        assert_eq!(
            d.state.rcpts[0],
            (RcptState::Delivered, "250 earlier".into())
        );
        assert_eq!(outcome(&d.state, t(1010)), Outcome::Finish("P"));
    }

    #[test]
    fn expiry_at_the_boundary() {
        let arrival = t(1_000_000);
        let run = |now: SystemTime| {
            decide(
                &fresh(2),
                &sender("<s@a.test>"),
                &rcpts(&["<x@b.test>", "<y@b.test>"]),
                arrival,
                &[deferred(), delivered()],
                now,
                LIFETIME,
            )
        };
        // One second short of the lifetime: still deferred.
        let d = run(arrival + LIFETIME - Duration::from_secs(1));
        assert_eq!(states(&d), [RcptState::Deferred, RcptState::Delivered]);
        assert!(d.expired.is_empty() && d.bounced.is_empty());
        assert_eq!(d.dsn_to, None);
        // At the lifetime exactly: the deferred recipient bounces with 4.4.7.
        let d = run(arrival + LIFETIME);
        assert_eq!(states(&d), [RcptState::Bounced, RcptState::Delivered]);
        assert_eq!(d.expired.len(), 1);
        assert_eq!(d.expired[0].0, 0);
        let (i, f) = &d.bounced[0];
        assert_eq!(*i, 0);
        assert_eq!(f.status, "4.4.7");
        assert_eq!(f.smtp_reply, None, "an expiry is not an SMTP reply");
        assert_eq!(
            f.reason,
            "message expired after 432000 s in the queue; last error: 451 4.3.0 try later"
        );
        assert_eq!(d.state.rcpts[0].1, f.reason);
        assert_eq!(d.dsn_to.as_deref(), Some("s@a.test"));
        assert_eq!(outcome(&d.state, t(0)), Outcome::Finish("PT"));
    }

    #[test]
    fn expiry_bounces_only_deferred_recipients() {
        let arrival = t(1000);
        let now = arrival + LIFETIME * 2;
        let d = decide(
            &fresh(2),
            &sender("<s@a.test>"),
            &rcpts(&["<x@b.test>", "<y@b.test>"]),
            arrival,
            &[delivered(), bounced()],
            now,
            LIFETIME,
        );
        assert!(d.expired.is_empty());
        assert_eq!(d.bounced[0].1.status, "5.1.1");
        // A clock set before the arrival counts as age zero, never as expired.
        let d = decide(
            &fresh(1),
            &sender("<s@a.test>"),
            &rcpts(&["<x@b.test>"]),
            arrival,
            &[deferred()],
            t(0),
            LIFETIME,
        );
        assert_eq!(states(&d), [RcptState::Deferred]);
    }

    #[test]
    fn no_dsn_for_the_null_sender() {
        let d = decide(
            &fresh(1),
            &sender("<>"),
            &rcpts(&["<x@b.test>"]),
            t(1000),
            &[bounced()],
            t(1010),
            LIFETIME,
        );
        assert_eq!(states(&d), [RcptState::Bounced]);
        assert_eq!(d.bounced.len(), 1);
        assert_eq!(d.dsn_to, None);
        assert_eq!(outcome(&d.state, t(1010)), Outcome::Finish("T"));
    }

    #[test]
    fn postmaster_recipient_is_named_in_the_dsn() {
        let d = run(&fresh(1), &["<postmaster>"], &[bounced()], t(1010));
        assert_eq!(d.bounced[0].1.rcpt, "postmaster");
    }

    #[test]
    fn a_dsn_that_cannot_be_queued_defers_its_recipients() {
        let mut d = run(
            &fresh(2),
            &["<x@b.test>", "<y@b.test>"],
            &[delivered(), bounced()],
            t(1010),
        );
        assert_eq!(outcome(&d.state, t(1010)), Outcome::Finish("PT"));
        d.dsn_failed("disk full");
        assert!(d.bounced.is_empty());
        assert_eq!(states(&d), [RcptState::Delivered, RcptState::Deferred]);
        assert_eq!(d.state.error, "cannot queue bounce: disk full");
        assert_eq!(outcome(&d.state, t(1010)), Outcome::Retry(1010 + 300));
    }

    #[test]
    fn backoff_grows_with_attempts_up_to_its_cap() {
        let mut base = fresh(1);
        let mut waits = Vec::new();
        for _ in 0..6 {
            let d = run(&base, &["<x@b.test>"], &[deferred()], t(2000));
            let Outcome::Retry(next) = outcome(&d.state, t(2000)) else {
                panic!("{d:?}")
            };
            waits.push(next - 2000);
            base = d.state;
        }
        assert_eq!(base.attempts, 6);
        assert_eq!(waits, [300, 600, 1200, 2400, 4000, 4000]);
    }
}

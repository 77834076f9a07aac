//! The relay's retry, bounce, expiry and DSN rules, pure.
//!
//! Owns: turning one message's attempt results into a typed [`Decision`] (the new per-recipient
//! state, deferred recipients bounced with 4.4.7 once the queue lifetime has passed, which
//! recipients bounce, and what the DSN to the sender reports, honouring each recipient's NOTIFY,
//! RFC 3461 §4.1), undoing what a DSN that could not be queued stood for
//! ([`Decision::dsn_failed`]), and what becomes of the message afterwards ([`outcome`]: `cur/`
//! with the flags `P`, `T` or `PT`, or a retry after the backoff).
//! Must not: touch files, the network or the clock (`now` is passed in), or log.
//!
//! The DSN reports, per recipient (NOTIFY unspecified means FAILURE,DELAY):
//! - `failed`: bounced or expired in this attempt, unless NOTIFY is NEVER or lacks FAILURE;
//! - `relayed`: delivered in this attempt to a host that does not offer DSN, when NOTIFY has
//!   SUCCESS (a host that offers DSN got NOTIFY passed on: the success notice is its job);
//! - `delayed`: once per message (recorded as `warned` in the relay state), at the first attempt
//!   that ends `delay_warning` or more after the arrival with recipients still deferred, for
//!   those whose NOTIFY has DELAY or is unspecified.
//!
//! Never a DSN for the null sender.

use std::time::{Duration, SystemTime};

use maildir_core::{ForwardPath, Notify, RcptParams, ReversePath};

use super::Attempt;
use crate::dsn;
use crate::state::{MsgState, RcptState, backoff, epoch_secs};

/// What [`decide`] needs to know about the message.
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    /// The envelope sender.
    pub sender: &'a ReversePath,
    /// The envelope recipients.
    pub rcpts: &'a [ForwardPath],
    /// Their DSN parameters (shorter when the last gave none).
    pub rcpt_dsn: &'a [RcptParams],
    /// When it was queued.
    pub arrival: SystemTime,
}

/// The relay's settings [`decide`] applies.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Deferred recipients bounce (4.4.7) once the message is this old.
    pub lifetime: Duration,
    /// A delay warning once the message is this old; `None`: never.
    pub delay_warning: Option<Duration>,
}

/// What one finished attempt of a message comes to, before anything is written.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The message's new state: one more attempt, each tried recipient's result.
    pub state: MsgState,
    /// Recipients that bounced in this attempt (envelope indexes), reported or not.
    pub bounced: Vec<usize>,
    /// What the DSN reports, by envelope index: failed, delayed and relayed recipients.
    pub reports: Vec<(usize, dsn::Recipient)>,
    /// Where the DSN for [`Decision::reports`] goes: the envelope sender; `None` when there is
    /// nothing to report or the sender is `<>` (no DSN for a DSN).
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

/// RFC 3461 §4.1: a failure DSN unless NOTIFY was given without FAILURE (NOTIFY unspecified
/// means FAILURE and DELAY; this relay sends both).
fn wants_failure(n: Option<Notify>) -> bool {
    n.is_none_or(|n| n.failure())
}

/// A success DSN only when NOTIFY names SUCCESS.
fn wants_success(n: Option<Notify>) -> bool {
    n.is_some_and(|n| n.success())
}

/// A delay warning unless NOTIFY was given without DELAY.
fn wants_delay(n: Option<Notify>) -> bool {
    n.is_none_or(|n| n.delay())
}

/// Decides one attempt: `state` is the message's state before it, `results` one entry per
/// envelope recipient (`None` for those not tried).
pub fn decide(
    state: &MsgState,
    msg: &Msg<'_>,
    results: &[Option<Attempt>],
    now: SystemTime,
    rules: &Rules,
) -> Decision {
    let mut st = state.clone();
    st.attempts += 1;
    let age = now.duration_since(msg.arrival).unwrap_or_default();
    let expired_now = age >= rules.lifetime;
    let notify = |i: usize| msg.rcpt_dsn.get(i).and_then(|d| d.notify);
    let report = |i: usize, action: dsn::Action, a: &Attempt| dsn::Recipient {
        action,
        rcpt: rcpt_name(msg.rcpts, i),
        orcpt: msg
            .rcpt_dsn
            .get(i)
            .and_then(|d| d.orcpt.as_ref())
            .map(|o| o.to_string()),
        status: a.status.clone(),
        smtp_reply: a.smtp.then(|| a.text.clone()),
        remote: a.remote.clone(),
        reason: a.text.clone(),
    };
    let mut bounced = Vec::new();
    let mut reports = Vec::new();
    let mut expired = Vec::new();
    let mut tried: Vec<Option<Attempt>> = vec![None; msg.rcpts.len()];
    for (i, r) in results.iter().enumerate() {
        let Some(a) = r else { continue };
        let Some(slot) = st.rcpts.get_mut(i).filter(|_| i < msg.rcpts.len()) else {
            continue;
        };
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
            RcptState::Bounced => {
                bounced.push(i);
                if wants_failure(notify(i)) {
                    reports.push((i, report(i, dsn::Action::Failed, &a)));
                }
            }
            RcptState::Delivered if !a.dsn && wants_success(notify(i)) => {
                reports.push((i, report(i, dsn::Action::Relayed, &a)));
            }
            RcptState::Deferred => st.error = a.text.clone(),
            _ => {}
        }
        tried[i] = Some(a);
    }
    let null_sender = !matches!(msg.sender, ReversePath::Mailbox(_));
    let warning_due = rules.delay_warning.is_some_and(|after| age >= after)
        && !st.warned
        && !expired_now
        && !null_sender;
    if warning_due {
        let mut delayed = Vec::new();
        for (i, (state, text)) in st.rcpts.iter().enumerate() {
            if *state != RcptState::Deferred || i >= msg.rcpts.len() || !wants_delay(notify(i)) {
                continue;
            }
            // Tried in this attempt: its reply; deferred earlier and not tried now: the last
            // error recorded for it.
            let a = tried[i].clone().unwrap_or_else(|| Attempt {
                state: RcptState::Deferred,
                status: enhanced_status(text).unwrap_or("4.0.0").to_owned(),
                text: text.clone(),
                smtp: false,
                remote: None,
                dsn: false,
            });
            delayed.push((i, report(i, dsn::Action::Delayed, &a)));
        }
        if !delayed.is_empty() {
            st.warned = true;
            reports.extend(delayed);
        }
    }
    let dsn_to = match msg.sender {
        ReversePath::Mailbox(s) if !reports.is_empty() => Some(s.to_string()),
        _ => None,
    };
    Decision {
        state: st,
        bounced,
        reports,
        dsn_to,
        expired,
    }
}

/// The recipient as a DSN names it: the address without brackets (`postmaster` for the
/// domain-less postmaster).
fn rcpt_name(rcpts: &[ForwardPath], i: usize) -> String {
    rcpts
        .get(i)
        .and_then(|f| f.mailbox().map(ToString::to_string))
        .unwrap_or_else(|| "postmaster".into())
}

/// The enhanced status code (`4.3.0`) of a reply text such as `451 4.3.0 try later`.
fn enhanced_status(text: &str) -> Option<&str> {
    let word = text.split_whitespace().nth(1)?;
    let mut parts = word.split('.');
    let ok = parts.next().is_some_and(|c| c == "4" || c == "5")
        && parts.clone().count() == 2
        && parts.all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    ok.then_some(word)
}

impl Decision {
    /// The DSN could not be written or queued: its failed recipients stay deferred (to bounce on
    /// a later run), a delay warning is due again; a "relayed" notice is lost (the recipients
    /// are delivered either way).
    pub fn dsn_failed(&mut self, why: &str) {
        for (i, r) in std::mem::take(&mut self.reports) {
            match r.action {
                dsn::Action::Failed => {
                    if let Some(r) = self.state.rcpts.get_mut(i) {
                        r.0 = RcptState::Deferred;
                    }
                    self.bounced.retain(|&b| b != i);
                }
                dsn::Action::Delayed => self.state.warned = false,
                dsn::Action::Relayed => {}
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
            dsn: false,
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

    const RULES: Rules = Rules {
        lifetime: LIFETIME,
        delay_warning: None,
    };

    /// [`decide`] with [`RULES`].
    fn decide_with(
        base: &MsgState,
        from: &str,
        to: &[&str],
        rcpt_dsn: &[RcptParams],
        arrival: SystemTime,
        results: &[Option<Attempt>],
        now: SystemTime,
    ) -> Decision {
        let (from, to) = (sender(from), rcpts(to));
        let msg = Msg {
            sender: &from,
            rcpts: &to,
            rcpt_dsn,
            arrival,
        };
        decide(base, &msg, results, now, &RULES)
    }

    /// [`decide`] for a message from `<s@a.test>` queued at `t(1000)`.
    fn run(base: &MsgState, to: &[&str], results: &[Option<Attempt>], now: SystemTime) -> Decision {
        decide_with(base, "<s@a.test>", to, &[], t(1000), results, now)
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
        assert!(d.bounced.is_empty() && d.reports.is_empty() && d.expired.is_empty());
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
        assert_eq!(d.bounced, [1]);
        assert_eq!(d.reports.len(), 1);
        let (i, f) = &d.reports[0];
        assert_eq!(f.action, dsn::Action::Failed);
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
            decide_with(
                &fresh(2),
                "<s@a.test>",
                &["<x@b.test>", "<y@b.test>"],
                &[],
                arrival,
                &[deferred(), delivered()],
                now,
            )
        };
        // One second short of the lifetime: still deferred.
        let d = run(arrival + LIFETIME - Duration::from_secs(1));
        assert_eq!(states(&d), [RcptState::Deferred, RcptState::Delivered]);
        assert!(d.expired.is_empty() && d.bounced.is_empty() && d.reports.is_empty());
        assert_eq!(d.dsn_to, None);
        // At the lifetime exactly: the deferred recipient bounces with 4.4.7.
        let d = run(arrival + LIFETIME);
        assert_eq!(states(&d), [RcptState::Bounced, RcptState::Delivered]);
        assert_eq!(d.expired.len(), 1);
        assert_eq!(d.expired[0].0, 0);
        let (i, f) = &d.reports[0];
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
        let d = decide_with(
            &fresh(2),
            "<s@a.test>",
            &["<x@b.test>", "<y@b.test>"],
            &[],
            arrival,
            &[delivered(), bounced()],
            now,
        );
        assert!(d.expired.is_empty());
        assert_eq!(d.reports[0].1.status, "5.1.1");
        // A clock set before the arrival counts as age zero, never as expired.
        let d = decide_with(
            &fresh(1),
            "<s@a.test>",
            &["<x@b.test>"],
            &[],
            arrival,
            &[deferred()],
            t(0),
        );
        assert_eq!(states(&d), [RcptState::Deferred]);
    }

    #[test]
    fn no_dsn_for_the_null_sender() {
        let d = decide_with(
            &fresh(1),
            "<>",
            &["<x@b.test>"],
            &[],
            t(1000),
            &[bounced()],
            t(1010),
        );
        assert_eq!(states(&d), [RcptState::Bounced]);
        assert_eq!(d.bounced, [0]);
        assert_eq!(d.dsn_to, None);
        assert_eq!(outcome(&d.state, t(1010)), Outcome::Finish("T"));
    }

    #[test]
    fn postmaster_recipient_is_named_in_the_dsn() {
        let d = run(&fresh(1), &["<postmaster>"], &[bounced()], t(1010));
        assert_eq!(d.reports[0].1.rcpt, "postmaster");
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
        assert!(d.bounced.is_empty() && d.reports.is_empty());
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

    fn notify(v: &str) -> RcptParams {
        RcptParams {
            notify: Notify::parse(v).ok(),
            orcpt: None,
        }
    }

    fn kinds(d: &Decision) -> Vec<(usize, dsn::Action)> {
        d.reports.iter().map(|(i, r)| (*i, r.action)).collect()
    }

    /// Issue 15: NOTIFY=NEVER (or a NOTIFY without FAILURE) bounces without a DSN; the others
    /// of the message are reported as usual.
    #[test]
    fn notify_never_bounces_without_a_dsn() {
        let to = ["<x@b.test>", "<y@b.test>", "<z@b.test>"];
        let dsn = [
            notify("NEVER"),
            notify("SUCCESS,DELAY"),
            RcptParams::default(),
        ];
        let results = [bounced(), bounced(), bounced()];
        let d = decide_with(
            &fresh(3),
            "<s@a.test>",
            &to,
            &dsn,
            t(1000),
            &results,
            t(1010),
        );
        assert_eq!(states(&d), [RcptState::Bounced; 3]);
        assert_eq!(d.bounced, [0, 1, 2]);
        assert_eq!(kinds(&d), [(2, dsn::Action::Failed)]);
        assert_eq!(d.dsn_to.as_deref(), Some("s@a.test"));
        // Only NEVER recipients: no DSN at all, the message still finishes.
        let d = decide_with(
            &fresh(1),
            "<s@a.test>",
            &to[..1],
            &dsn[..1],
            t(1000),
            &[bounced()],
            t(1010),
        );
        assert!(d.reports.is_empty());
        assert_eq!(d.dsn_to, None);
        assert_eq!(outcome(&d.state, t(1010)), Outcome::Finish("T"));
        // An expiry honours NOTIFY too.
        let d = decide_with(
            &fresh(1),
            "<s@a.test>",
            &to[..1],
            &dsn[..1],
            t(1000),
            &[deferred()],
            t(1000) + LIFETIME,
        );
        assert_eq!(states(&d), [RcptState::Bounced]);
        assert_eq!(d.dsn_to, None);
    }

    /// NOTIFY=SUCCESS with a next hop that does not offer DSN: a "relayed" DSN; with a next hop
    /// that offers DSN, nothing from us (NOTIFY was passed on).
    #[test]
    fn notify_success_relayed_only_without_dsn_at_the_next_hop() {
        let to = ["<x@b.test>", "<y@b.test>"];
        let mut dsn = [notify("SUCCESS,FAILURE"), notify("FAILURE")];
        dsn[0].orcpt = maildir_core::Orcpt::parse("rfc822;x+40b.test").ok();
        let d = decide_with(
            &fresh(2),
            "<s@a.test>",
            &to,
            &dsn,
            t(1000),
            &[delivered(), delivered()],
            t(1010),
        );
        assert_eq!(kinds(&d), [(0, dsn::Action::Relayed)]);
        let r = &d.reports[0].1;
        assert_eq!(r.status, "2.0.0");
        assert_eq!(r.smtp_reply.as_deref(), Some("250 2.0.0 ok"));
        assert_eq!(r.orcpt.as_deref(), Some("rfc822;x+40b.test"));
        assert_eq!(d.dsn_to.as_deref(), Some("s@a.test"));
        assert_eq!(outcome(&d.state, t(1010)), Outcome::Finish("P"));
        let mut via_dsn = delivered();
        if let Some(a) = via_dsn.as_mut() {
            a.dsn = true;
        }
        let d = decide_with(
            &fresh(2),
            "<s@a.test>",
            &to,
            &dsn,
            t(1000),
            &[via_dsn, delivered()],
            t(1010),
        );
        assert!(d.reports.is_empty() && d.dsn_to.is_none(), "{d:?}");
        // No NOTIFY (the default): no success DSN either.
        let d = run(&fresh(1), &to[..1], &[delivered()], t(1010));
        assert!(d.reports.is_empty());
        // A lost "relayed" DSN changes nothing for the delivered recipient.
        let mut d = decide_with(
            &fresh(1),
            "<s@a.test>",
            &to[..1],
            &dsn[..1],
            t(1000),
            &[delivered()],
            t(1010),
        );
        d.dsn_failed("disk full");
        assert_eq!(states(&d), [RcptState::Delivered]);
    }

    /// A delay warning: due at the first attempt that ends `delay_warning` after the arrival
    /// (not a second before), once per message (recorded in the state), for recipients whose
    /// NOTIFY has DELAY or is unspecified; never to the null sender.
    #[test]
    fn delay_warning_exactly_once_after_the_threshold() {
        let rules = Rules {
            lifetime: LIFETIME,
            delay_warning: Some(Duration::from_secs(4 * 3600)),
        };
        let (from, to) = (
            sender("<s@a.test>"),
            rcpts(&["<x@b.test>", "<y@b.test>", "<z@b.test>", "<w@b.test>"]),
        );
        let dsn = [
            RcptParams::default(),
            notify("FAILURE"),
            notify("DELAY"),
            RcptParams::default(),
        ];
        let arrival = t(1_000_000);
        let msg = Msg {
            sender: &from,
            rcpts: &to,
            rcpt_dsn: &dsn,
            arrival,
        };
        let results = [deferred(), deferred(), deferred(), delivered()];
        let at = |secs: u64| arrival + Duration::from_secs(secs);
        // One second short: nothing.
        let d = decide(&fresh(4), &msg, &results, at(4 * 3600 - 1), &rules);
        assert!(d.reports.is_empty() && !d.state.warned, "{d:?}");
        assert_eq!(d.dsn_to, None);
        // At the threshold: delayed for x (default) and z (DELAY), not y (FAILURE only).
        let d = decide(&fresh(4), &msg, &results, at(4 * 3600), &rules);
        assert_eq!(
            kinds(&d),
            [(0, dsn::Action::Delayed), (2, dsn::Action::Delayed)]
        );
        assert_eq!(d.reports[0].1.status, "4.3.0");
        assert_eq!(
            d.reports[0].1.smtp_reply.as_deref(),
            Some("451 4.3.0 try later")
        );
        assert!(d.state.warned);
        assert_eq!(d.dsn_to.as_deref(), Some("s@a.test"));
        assert_eq!(
            outcome(&d.state, at(4 * 3600)),
            Outcome::Retry(1_000_000 + 4 * 3600 + 300)
        );
        // The next attempt (state read back from its file): no second warning.
        let again = MsgState::parse(&d.state.render(), 4);
        assert!(again.warned);
        let d2 = decide(&again, &msg, &results, at(5 * 3600), &rules);
        assert!(d2.reports.is_empty() && d2.dsn_to.is_none(), "{d2:?}");
        // A recipient deferred earlier and not tried now is still reported, from its record.
        let mut base = fresh(4);
        base.rcpts[0] = (RcptState::Deferred, "451 4.7.1 greylisted".into());
        let d = decide(
            &base,
            &msg,
            &[None, None, None, delivered()],
            at(4 * 3600),
            &rules,
        );
        assert_eq!(kinds(&d), [(0, dsn::Action::Delayed)]);
        assert_eq!(d.reports[0].1.status, "4.7.1");
        // A warning that could not be queued is due again.
        let mut d = decide(&fresh(4), &msg, &results, at(4 * 3600), &rules);
        d.dsn_failed("disk full");
        assert!(!d.state.warned);
        // Off: never. The null sender: never.
        let off = Rules {
            delay_warning: None,
            ..rules
        };
        assert!(
            decide(&fresh(4), &msg, &results, at(86400), &off)
                .reports
                .is_empty()
        );
        let null = sender("<>");
        let msg = Msg {
            sender: &null,
            ..msg
        };
        let d = decide(&fresh(4), &msg, &results, at(86400), &rules);
        assert!(d.reports.is_empty() && d.dsn_to.is_none() && !d.state.warned);
    }

    #[test]
    fn enhanced_status_of_a_reply_text() {
        assert_eq!(enhanced_status("451 4.3.0 later"), Some("4.3.0"));
        assert_eq!(enhanced_status("421 4.4.2 timeout"), Some("4.4.2"));
        assert_eq!(enhanced_status("451 try later"), None);
        assert_eq!(enhanced_status("connection refused"), None);
        assert_eq!(enhanced_status(""), None);
    }
}

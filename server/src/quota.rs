//! The mailbox quota as the session sees it: [`Quota`] answers "can this user take a message
//! of this size under `--mailbox-quota`?" from the usage counts [`Mailboxes`] keeps in memory
//! (a look-up, no I/O, so the reactor thread can ask on every RCPT and at the end of every
//! message).
//!
//! The rule is Dovecot's with its default `quota_grace` (10 %): a user under quota takes a
//! message that brings it at most [`GRACE_PERCENT`] % of the quota over it (so the last
//! message that fills a mailbox is not refused for a few octets); a user at or over quota
//! takes nothing. A message further over is refused, never stored in part.
//!
//! The counts are made at start for every user, raised by the group commit after each local
//! delivery, and recounted from the Maildirs every [`USAGE_RECOUNT`] by a thread of its own, so
//! that what a reader (Dovecot) expunges frees the quota within that delay.
//!
//! Owns: the quota rule ([`fits`], with its grace) and the recount thread. Must not: touch a
//! socket or the session.

use std::sync::Arc;
use std::time::SystemTime;

use maildir_core::local::{Mailboxes, USAGE_RECOUNT};

use proto::smtp::server::policy::QuotaView;

/// How far over its quota the message that fills a mailbox may take it, in percent of the
/// quota (Dovecot's default `quota_grace`).
pub const GRACE_PERCENT: u64 = 10;

/// `--mailbox-quota` over the usage counts of the users' Maildirs.
#[derive(Debug)]
pub struct Quota {
    mailboxes: Arc<Mailboxes>,
    limit: u64,
}

impl Quota {
    /// Counts the usage of every user in `users` now, and starts the recount thread (which ends
    /// when the returned quota is dropped).
    pub fn start<'a>(
        mailboxes: Arc<Mailboxes>,
        limit: u64,
        users: impl Iterator<Item = &'a str>,
    ) -> Result<Arc<Quota>, String> {
        let now = SystemTime::now();
        for u in users {
            mailboxes.usage(u, now).map_err(|e| e.to_string())?;
        }
        let quota = Arc::new(Quota { mailboxes, limit });
        // The thread ends once the quota is gone (replaced by a reload, and the sessions that
        // held it finished).
        let weak = Arc::downgrade(&quota);
        std::thread::Builder::new()
            .name("quota-recount".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(USAGE_RECOUNT);
                    let Some(q) = weak.upgrade() else {
                        return;
                    };
                    let now = SystemTime::now();
                    for u in q.mailboxes.counted_users() {
                        if let Err(e) = q.mailboxes.usage(&u, now) {
                            log::warn!("cannot count the usage of {u}: {e}");
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the quota thread: {e}"))?;
        Ok(quota)
    }
}

impl QuotaView for Quota {
    fn fits(&self, user: &str, size: u64) -> bool {
        fits(
            self.mailboxes.cached_usage(user).unwrap_or(0),
            size,
            self.limit,
        )
    }
}

/// True when a user holding `used` octets may take `size` more under quota `limit`: under
/// quota now, and at most [`GRACE_PERCENT`] % of `limit` over it after.
pub fn fits(used: u64, size: u64, limit: u64) -> bool {
    let grace = limit / 100 * GRACE_PERCENT + limit % 100 * GRACE_PERCENT / 100;
    used < limit && used.saturating_add(size) <= limit.saturating_add(grace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_quota_with_a_tenth_of_grace() {
        assert!(fits(0, 0, 5000));
        assert!(fits(4999, 0, 5000));
        assert!(!fits(5000, 0, 5000), "at quota: nothing more");
        assert!(!fits(6000, 0, 5000));
        assert!(fits(4000, 1500, 5000), "5,500: the grace");
        assert!(!fits(4000, 1501, 5000));
        assert!(!fits(0, 6000, 5000), "an empty mailbox is no exception");
        assert!(fits(0, 5500, 5000));
        assert!(!fits(0, 1, 0), "a zero quota takes nothing");
        assert!(fits(u64::MAX - 1, 1, u64::MAX), "no overflow");
    }
}

//! The mailbox quota as the session sees it: [`Quota`] answers "is this user at or over
//! `--mailbox-quota`?" from the usage counts [`Mailboxes`] keeps in memory (a look-up, no I/O,
//! so the reactor thread can ask on every RCPT).
//!
//! The counts are made at start for every user, raised by the group commit after each local
//! delivery, and recounted from the Maildirs every [`USAGE_RECOUNT`] by a thread of its own, so
//! that what a reader (Dovecot) expunges frees the quota within that delay.
//!
//! Owns: the recount thread. Must not: touch a socket or the session.

use std::sync::Arc;
use std::time::SystemTime;

use maildir_core::local::{Mailboxes, USAGE_RECOUNT};

use proto::smtp::server::policy::QuotaView;

/// `--mailbox-quota` over the usage counts of the users' Maildirs.
#[derive(Debug)]
pub struct Quota {
    mailboxes: Arc<Mailboxes>,
    limit: u64,
}

impl Quota {
    /// Counts the usage of every user in `users` now, and starts the recount thread.
    pub fn start<'a>(
        mailboxes: Arc<Mailboxes>,
        limit: u64,
        users: impl Iterator<Item = &'a str>,
    ) -> Result<Arc<Quota>, String> {
        let now = SystemTime::now();
        for u in users {
            mailboxes.usage(u, now).map_err(|e| e.to_string())?;
        }
        let m = Arc::clone(&mailboxes);
        std::thread::Builder::new()
            .name("quota-recount".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(USAGE_RECOUNT);
                    let now = SystemTime::now();
                    for u in m.counted_users() {
                        if let Err(e) = m.usage(&u, now) {
                            log::warn!("cannot count the usage of {u}: {e}");
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the quota thread: {e}"))?;
        Ok(Arc::new(Quota { mailboxes, limit }))
    }
}

impl QuotaView for Quota {
    fn over_quota(&self, user: &str) -> bool {
        self.mailboxes
            .cached_usage(user)
            .is_some_and(|used| used >= self.limit)
    }
}

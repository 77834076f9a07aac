//! Local recipients: the session's view of who is here and who is over quota, apart from any
//! file. [`LocalPolicy`] holds the checked [`Directory`] (users, aliases, local domains,
//! delimiter) and a [`QuotaView`] (a memory look-up the server keeps current); the session
//! asks [`LocalPolicy::decide`] on every RCPT (with the `SIZE=` the client declared on MAIL)
//! and [`LocalPolicy::over_quota`] at the end of the message (with its real size).
//!
//! Reload (SIGHUP, the operator issue) builds a new `LocalPolicy` and hands new sessions an
//! `Arc` of it; sessions under way keep the one they started with.
//!
//! Pure: no socket, file or clock.

use std::fmt;
use std::sync::Arc;

use maildir_core::directory::{
    DeliveryPlan, Directory, LocalCopy, LocalDelivery, LocalRecipient, Route, lookup_key,
};
use maildir_core::{ForwardPath, Mailbox, ReversePath};

/// How full the users' Maildirs are, as the server last counted: a look-up, no I/O.
pub trait QuotaView: Send + Sync + fmt::Debug {
    /// True when `user` may take a message of `size` octets: it holds less than its quota,
    /// and the message takes it no further than the quota and its grace. `size` 0 asks "is
    /// `user` under quota?" (a RCPT without `SIZE=`).
    fn fits(&self, user: &str, size: u64) -> bool;
}

/// The local-delivery policy every session of a server shares.
#[derive(Debug, Clone)]
pub struct LocalPolicy {
    /// Users, aliases, local domains, delimiter.
    pub directory: Arc<Directory>,
    /// Quota look-ups; `None`: no quota.
    pub quota: Option<Arc<dyn QuotaView>>,
    /// The spool may become the first user's copy (the relay queue and the mailboxes are on
    /// one file system, so a rename moves it).
    pub spool_is_copy: bool,
}

/// What the policy says of one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// One of our domains, someone is there: accept (from any client).
    Local(LocalRecipient),
    /// Not one of our domains: the relay rules apply.
    Remote,
    /// One of our domains, nobody there: `550 5.1.1`.
    Unknown,
    /// One of the users it reaches is at or over quota, or would be taken past it by the
    /// declared size: `452 4.2.2`. (An alias is refused whole: one reply per RCPT.)
    OverQuota,
}

impl LocalPolicy {
    /// Routes `to`, then checks the quota of every user it reaches for a message of `size`
    /// octets (the `SIZE=` declared on MAIL, 0 without one).
    pub fn decide(&self, to: &ForwardPath, size: u64) -> Decision {
        match self.directory.resolve(to) {
            Route::Local(r) => {
                let full = self
                    .quota
                    .as_ref()
                    .is_some_and(|q| r.users.iter().any(|u| !q.fits(&u.name, size)));
                if full {
                    Decision::OverQuota
                } else {
                    Decision::Local(r)
                }
            }
            Route::Remote => Decision::Remote,
            Route::Unknown => Decision::Unknown,
        }
    }

    /// True when `sender` is one of `user`'s addresses, so that a client logged in as `user`
    /// may send from it: `user@<local domain>` (with a tag: `user+tag@`), or an alias whose
    /// expansion reaches `user`. A user known only to LDAP owns `user@<local domain>`.
    pub fn owns(&self, user: &str, sender: &Mailbox) -> bool {
        let d = &self.directory;
        match d.resolve(&ForwardPath::Mailbox(sender.clone())) {
            Route::Local(r) => r.users.iter().any(|u| u.name == user),
            Route::Unknown => lookup_key(sender.local_part()) == user,
            Route::Remote => false,
        }
    }

    /// The copies of `local` whose user cannot take a message of `size` octets (the end of
    /// DATA or BDAT: the real size, whatever was declared).
    pub fn over_quota<'a>(&self, local: &'a LocalDelivery, size: u64) -> Vec<&'a LocalCopy> {
        match &self.quota {
            Some(q) => local
                .copies
                .iter()
                .filter(|c| !q.fits(&c.user, size))
                .collect(),
            None => Vec::new(),
        }
    }
}

/// What a transaction with local recipients comes to: the queue envelope's recipients (the
/// remote ones as accepted, then each address an alias forwards to, once) and the local
/// delivery (one copy per user; `content_at` is the caller's to fill in).
pub fn plan(
    sender: &ReversePath,
    locals: &[LocalRecipient],
    remote: &[ForwardPath],
) -> (Vec<ForwardPath>, LocalDelivery) {
    let plan = DeliveryPlan::new(locals);
    let mut recipients = remote.to_vec();
    for m in plan.forward {
        let f = ForwardPath::Mailbox(m);
        let key = f.to_string().to_lowercase();
        if !recipients
            .iter()
            .any(|r| r.to_string().to_lowercase() == key)
        {
            recipients.push(f);
        }
    }
    let local = LocalDelivery {
        sender: sender.clone(),
        copies: plan.copies,
        queue: !recipients.is_empty(),
        content_at: 0,
        spool_is_copy: false,
    };
    (recipients, local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use maildir_core::aliases::Aliases;
    use maildir_core::users::Users;

    /// `self.0` is full; everyone else has room for 1,000 octets.
    #[derive(Debug)]
    struct Full(&'static str);

    impl QuotaView for Full {
        fn fits(&self, user: &str, size: u64) -> bool {
            user != self.0 && size <= 1000
        }
    }

    fn policy(quota: Option<Arc<dyn QuotaView>>) -> LocalPolicy {
        let users = Users::parse("alice:*::::\nbob:*::::\n").unwrap();
        let aliases = Aliases::parse("postmaster: alice\nteam: alice, bob\n").unwrap();
        let dir = Directory::new(users, aliases, &["example.test".into()], Some('+')).unwrap();
        LocalPolicy {
            directory: Arc::new(dir),
            quota,
            spool_is_copy: false,
        }
    }

    fn fp(s: &str) -> ForwardPath {
        ForwardPath::parse(s).unwrap()
    }

    #[test]
    fn local_remote_unknown_and_quota() {
        let p = policy(None);
        assert!(
            matches!(p.decide(&fp("<Alice+x@Example.Test>"), 0), Decision::Local(r) if r.users[0].name == "alice")
        );
        assert_eq!(p.decide(&fp("<x@far.test>"), 0), Decision::Remote);
        assert_eq!(p.decide(&fp("<nobody@example.test>"), 0), Decision::Unknown);
        assert!(matches!(
            p.decide(&fp("<postmaster>"), 0),
            Decision::Local(_)
        ));
        let p = policy(Some(Arc::new(Full("bob"))));
        assert_eq!(p.decide(&fp("<bob@example.test>"), 0), Decision::OverQuota);
        assert_eq!(p.decide(&fp("<team@example.test>"), 0), Decision::OverQuota);
        assert!(matches!(
            p.decide(&fp("<alice@example.test>"), 0),
            Decision::Local(_)
        ));
        // The declared size counts: alice has room for 1,000 octets.
        assert!(matches!(
            p.decide(&fp("<alice@example.test>"), 1000),
            Decision::Local(_)
        ));
        assert_eq!(
            p.decide(&fp("<alice@example.test>"), 1001),
            Decision::OverQuota
        );
        assert_eq!(p.decide(&fp("<x@far.test>"), 5000), Decision::Remote);
    }

    #[test]
    fn over_quota_names_the_copies_that_do_not_fit() {
        let p = policy(Some(Arc::new(Full("bob"))));
        let locals: Vec<LocalRecipient> = ["<alice@example.test>", "<team@example.test>"]
            .iter()
            .map(|a| match p.directory.resolve(&fp(a)) {
                Route::Local(r) => r,
                other => panic!("{other:?}"),
            })
            .collect();
        let sender = ReversePath::Null;
        let (_, l) = plan(&sender, &locals, &[]);
        let users = |size| -> Vec<String> {
            p.over_quota(&l, size)
                .iter()
                .map(|c| c.user.clone())
                .collect()
        };
        assert_eq!(users(10), ["bob"]);
        assert_eq!(users(1001), ["alice", "bob"]);
        assert!(policy(None).over_quota(&l, u64::MAX).is_empty());
    }

    #[test]
    fn plan_keeps_remote_and_forwards_once_and_one_copy_per_user() {
        let users = Users::parse("alice:*::::\nbob:*::::\n").unwrap();
        let aliases =
            Aliases::parse("postmaster: alice\nsales: bob, Partner@far.test\nteam: alice, bob\n")
                .unwrap();
        let dir = Directory::new(users, aliases, &["example.test".into()], Some('+')).unwrap();
        let local = |a: &str| match dir.resolve(&fp(a)) {
            Route::Local(r) => r,
            other => panic!("{other:?}"),
        };
        let locals = [local("<team@example.test>"), local("<sales@example.test>")];
        let remote = [fp("<partner@FAR.test>"), fp("<you@far.test>")];
        let sender = ReversePath::parse("<s@far.test>").unwrap();
        let (rcpts, l) = plan(&sender, &locals, &remote);
        assert_eq!(
            rcpts,
            remote.to_vec(),
            "the forward is the remote one already there"
        );
        assert!(l.queue);
        let users: Vec<&str> = l.copies.iter().map(|c| c.user.as_str()).collect();
        assert_eq!(users, ["alice", "bob"]);
        assert_eq!(l.copies[1].original_to, "team@example.test");
        let (rcpts, l) = plan(&sender, &locals[..1], &[]);
        assert!(rcpts.is_empty() && !l.queue);
        let (rcpts, _) = plan(&sender, &locals[1..], &[]);
        assert_eq!(rcpts.len(), 1);
        assert_eq!(rcpts[0].to_string().to_lowercase(), "<partner@far.test>");
    }
}

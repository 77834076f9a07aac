//! maildir-core: the ground `smtpd` and `smtp-relay` stand on.
//!
//! # Layout
//! - [`address`]: RFC 5321 mailbox, reverse-path and forward-path syntax (with SMTPUTF8).
//! - [`envelope`]: the `Return-Path` / `X-Original-To` block at the head of each queued file.
//! - [`maildir`]: Maildir layout, unique names, atomic durable delivery and batch commit.
//! - [`commit`]: the group-commit threads (parallel data flushes, one directory fsync per
//!   batch) behind `Maildir::commit_batch` and smtpd's committer.
//! - [`users`], [`aliases`], [`directory`]: the users and aliases files and recipient routing
//!   for local delivery (pure: the protocol session calls them).
//! - [`local`]: local delivery into per-user Maildirs, and the quota count.
//! - [`maildrop`]: a user's Maildir as POP3 sees it (listing, unique ids, seen, removal).
//! - [`date`]: RFC 5322 date text for trace headers and reports.
//! - [`logging`]: the logging thread that keeps `log` calls off the reactors' path.
//! - [`metrics`]: lock-free counters and histograms, read by other threads while a reactor
//!   bumps them.
//!
//! Nothing here speaks SMTP or touches a socket; `users`, `aliases` and `directory` touch no
//! file or clock either.

#![warn(missing_docs)]

pub mod address;
pub mod aliases;
pub mod commit;
pub mod date;
pub mod directory;
pub mod envelope;
pub mod job_queue;
pub mod local;
pub mod logging;
pub mod maildir;
pub mod maildrop;
pub mod metrics;
pub mod users;

pub use address::{AddressError, Domain, ForwardPath, Mailbox, ReversePath};
pub use envelope::{
    Envelope, EnvelopeError, EnvelopeReader, Notify, Orcpt, ParamError, RcptParams, Ret, XText,
};
pub use maildir::{Delivered, Delivery, Durability, Maildir, MaildirError, NewEntry};

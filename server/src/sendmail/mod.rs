//! `sendmail`, the submission program other software on the host calls (cron, git send-email,
//! `mail`, PHP's `mail()`): a message on stdin, queued durably in smtpd's queue Maildir
//! through smtpd's own session machine and queue-file writer, with no network and no smtpd
//! running; smtp-relay sends it on.
//!
//! # Layout
//! - [`args`]: the Postfix-compatible command line.
//! - [`message`]: the header section (`-t` recipients, Bcc removed, missing From, Date,
//!   Message-ID added) and the lines into DATA.
//! - [`queue`]: where the queue is (`SMTPD_MAILDIR`, `-C FILE`) and the setgid group.
//! - [`submit`]: the session driven for a plain submission or for `-bs`.
//! - [`exit`]: the sysexits.h codes.
//! - [`run`]: the program itself, from arguments to exit code.

pub mod args;
pub mod exit;
pub mod message;
pub mod queue;
pub mod run;
pub mod submit;

//! POP3 on smtpd's reactor (issue 13): users read and delete the mail local delivery put in
//! their Maildirs, with any mail client.
//!
//! - [`conns`]: the POP3 listeners and connections the reactor drives (sessions, maildrop
//!   work, RETR/TOP streaming, the one-session-per-maildrop lock, STLS, timers, shutdown).
//!   Passwords are checked by the login pool SMTP AUTH uses ([`crate::auth`]), with the same
//!   lockout.
//! - [`maildrops`]: the thread that lists maildrops at login and removes deleted messages at
//!   QUIT (many files: not on the reactor thread).
//!
//! The protocol is `proto::pop3` (pure); the maildrop's files are
//! `maildir_core::maildrop`. Must not: speak SMTP or deliver mail.

pub mod conns;
pub mod maildrops;

pub use conns::{ConnView, Ctx, Pop3, Pop3Settings, owns_conn, owns_token};

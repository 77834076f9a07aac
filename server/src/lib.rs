//! smtpd: an SMTP server that accepts mail on one mio reactor thread and stores it durably in a
//! Maildir.
//!
//! # Layout
//! - [`config`]: command line → `validate()` → one [`config::Config`] holding every setting
//!   (limits, thread counts, buffer sizes, trusted networks as CIDR).
//! - [`load`]: the command line with its `--config` TOML file, validated, and every file it
//!   names read (users, aliases, certificate): start-up, `--check-config` and reload agree.
//! - The protocol itself (command parser, reply catalogue, DATA decoder, session) is the `proto`
//!   crate (`proto::smtp::server`): pure, it cannot import mio, rustls, files or the clock.
//! - [`reactor`]: the mio event loop: sockets (through `net::Transport`, plain TCP or TLS,
//!   with handshakes on `net::handshake` threads), timers, limits, signals; hands the
//!   session's queue-file actions to `store`.
//! - [`store`]: the session's `Begin`/`Write`/`Commit`/`Abort` on the Maildir and the group
//!   commit, and the failure classes (`452 4.3.1` full, `451 4.3.0` otherwise).
//! - [`commit`]: smtpd's user of `maildir_core::commit::GroupCommit`, the only place that
//!   waits on fsync (a message becomes durable there, before its `250`).
//! - [`stats`]: the server's counters and the per-connection log lines, from the sessions'
//!   typed events and counts.
//! - [`metrics`]: the Prometheus endpoint (`--metrics`): the counters of `stats` under their
//!   exported names, read by the exporter's thread.
//! - [`tls`]: the server side of TLS: loading the certificate and key for STARTTLS and
//!   implicit TLS, starting it on a transport, and what the session records of it
//!   (`proto::smtp::server::session::TlsInfo`).
//! - [`control`]: the control socket (`smtpctl`): its clients, bounded output, trace
//!   subscribers, and the wire protocol ([`control::wire`]); requests are carried out in the
//!   reactor. [`trace`]: the live transaction stream fed from the sessions.
//! - [`smtpctl`]: the `smtpctl` command (show, monitor, trace, pause/resume, log level,
//!   reload, and the `top` console).
//! - [`accounts`]: reading the users and aliases files into the recipient directory (local
//!   delivery); the one place they are read, so a reload calls it again.
//! - [`password`]: `{ARGON2ID}` hashes (`smtpd hash-password`) and password verification.
//! - [`auth`]: logins (SMTP AUTH, POP3): the pool that verifies them off the reactor
//!   (users file or LDAP), the failure delay and the lockout (bans, kept in a file).
//! - [`sendmail`]: the `sendmail` program: a message on stdin queued through the same
//!   session and queue-file writer as smtpd, without a network or a running smtpd.
//! - [`systemd`]: socket activation (`LISTEN_FDS`) and readiness (`READY=1`, `STOPPING=1`).
//! - [`privileges`]: `--user`/`--group`: root given up after binding, before serving.
//! - [`quota`]: the mailbox quota look-up the sessions ask (`proto`'s `QuotaView`) over the
//!   usage counts, and their periodic recount.
//! - [`pop3`]: POP3 listeners and connections on the same reactor (`proto::pop3` sessions,
//!   `maildir_core::maildrop`); their logins go through [`auth`] like SMTP AUTH's.
//!
//! Invariants: `250` after DATA is sent only once the message is durable in `new/`. Every
//! public item is documented (`missing_docs`).

#![warn(missing_docs)]

pub mod accounts;
pub mod auth;
pub mod commit;
pub mod config;
pub mod control;
pub mod listeners;
pub mod load;
pub mod metrics;
pub mod password;
pub mod pop3;
pub mod privileges;
pub mod quota;
pub mod reactor;
pub mod sendmail;
pub mod smtpctl;
pub mod stats;
pub mod store;
pub mod systemd;
pub mod tls;
pub mod trace;

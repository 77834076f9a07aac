//! smtpd: an SMTP server that accepts mail on one mio reactor thread and stores it durably in a
//! Maildir.
//!
//! # Layout
//! - [`config`]: command line → `validate()` → one [`config::Config`] holding every setting
//!   (limits, thread counts, buffer sizes, trusted networks as CIDR).
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
//! - [`tls`]: the server side of TLS: loading the certificate and key for STARTTLS and
//!   implicit TLS, starting it on a transport, and what the session records of it
//!   (`proto::smtp::server::session::TlsInfo`).
//!
//! Invariants: `250` after DATA is sent only once the message is durable in `new/`. Every
//! public item is documented (`missing_docs`).

#![warn(missing_docs)]

pub mod commit;
pub mod config;
pub mod reactor;
pub mod stats;
pub mod store;
pub mod tls;

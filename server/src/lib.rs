//! smtpd: an SMTP server that accepts mail on one mio reactor thread and stores it durably in a
//! Maildir.
//!
//! # Layout
//! - [`config`]: command line → `validate()` → one [`config::Config`] holding every setting
//!   (limits, thread counts, buffer sizes, trusted networks as CIDR).
//! - [`command`]: one command line in, a typed [`command::Command`] or its refusal out.
//! - [`reply`]: reply codes with their enhanced status codes, as typed constants.
//! - [`data`]: the DATA decoder (end of data, dot-unstuffing, line ends, size) and the
//!   `Received:` hop counter (loop detection).
//! - [`session`]: the pure SMTP session state machine (sans-io; time passed in).
//! - [`reactor`]: the mio event loop: sockets (through `net::Transport`, plain TCP or TLS,
//!   with handshakes on `net::handshake` threads), timers, limits, signals; hands the
//!   session's queue-file actions to `store`.
//! - [`store`]: the session's `Begin`/`Write`/`Commit`/`Abort` on the Maildir and the group
//!   commit, and the failure classes (`452 4.3.1` full, `451 4.3.0` otherwise).
//! - [`commit`]: smtpd's user of `maildir_core::commit::GroupCommit`, the only place that
//!   waits on fsync (a message becomes durable there, before its `250`).
//! - [`tls`]: the server side of TLS: loading the certificate and key for STARTTLS and
//!   implicit TLS, starting it on a transport, and what the session records of it
//!   ([`tls::TlsInfo`]).
//! - [`accounts`]: reading the users and aliases files into the recipient directory.
//! - [`password`]: `{ARGON2ID}` hashes (`smtpd hash-password`) and password verification.
//!
//! Invariants: `command`, `reply`, `data` and `session` never touch a socket, a file or the
//! clock; `250` after DATA is sent only once the message is durable in `new/`. Every public
//! item is documented (`missing_docs`).

#![warn(missing_docs)]

pub mod accounts;
pub mod command;
pub mod commit;
pub mod config;
pub mod data;
pub mod password;
pub mod policy;
pub mod quota;
pub mod reactor;
pub mod reply;
pub mod session;
pub mod store;
pub mod tls;

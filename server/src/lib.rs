//! smtpd: an SMTP server that accepts mail on one mio reactor thread and stores it durably in a
//! Maildir.
//!
//! # Layout
//! - [`config`]: command line and validated settings (trusted networks as CIDR).
//! - [`command`]: one command line in, a typed [`command::Command`] or its refusal out.
//! - [`reply`]: reply codes with their enhanced status codes, as typed constants.
//! - [`data`]: the DATA decoder (end of data, dot-unstuffing, line ends, size) and the
//!   `Received:` hop counter (loop detection).
//! - [`session`]: the pure SMTP session state machine (sans-io; time passed in).
//! - [`reactor`]: the mio event loop that moves bytes (through `net::Transport`, plain TCP or
//!   TLS, with handshakes on `net::handshake` threads) and runs the session's actions.
//! - [`commit`]: the group-commit thread, the only place that waits on fsync.
//! - [`tls`]: the server side of TLS: loading the certificate and key for STARTTLS and
//!   implicit TLS, starting it on a transport, and what the session records of it
//!   ([`tls::TlsInfo`]).
//!
//! Invariants: `command`, `reply`, `data` and `session` never touch a socket, a file or the
//! clock; `250` after DATA is sent only once the message is durable in `new/`.

pub mod command;
pub mod commit;
pub mod config;
pub mod data;
pub mod reactor;
pub mod reply;
pub mod session;
pub mod tls;

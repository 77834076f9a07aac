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
//! - [`transport`]: the byte transport between socket and session (plain TCP; TLS slots in here).
//! - [`reactor`]: the mio event loop that moves bytes and runs the session's actions.
//! - [`commit`]: the group-commit thread, the only place that waits on fsync.
//! - [`handshake`]: the threads that run TLS handshakes off the reactor.
//! - [`tls`]: loading the certificate and key for STARTTLS and implicit TLS.
//! - [`accounts`]: reading the users and aliases files into the recipient directory.
//! - [`password`]: `{ARGON2ID}` hashes (`smtpd hash-password`) and password verification.
//!
//! Invariants: `command`, `reply`, `data` and `session` never touch a socket, a file or the
//! clock; `250` after DATA is sent only once the message is durable in `new/`.

pub mod accounts;
pub mod command;
pub mod commit;
pub mod config;
pub mod data;
pub mod handshake;
pub mod password;
pub mod reactor;
pub mod reply;
pub mod session;
pub mod tls;
pub mod transport;

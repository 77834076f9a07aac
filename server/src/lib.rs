//! smtpd: an SMTP server that accepts mail on one mio reactor thread and stores it durably in a
//! Maildir.
//!
//! # Layout
//! - [`config`]: command line and validated settings (trusted networks as CIDR).
//! - The protocol itself (command parser, reply catalogue, DATA decoder, session) is the `proto`
//!   crate (`proto::smtp::server`): pure, it cannot import mio, rustls or this crate.
//! - [`transport`]: the byte transport between socket and session (plain TCP; TLS slots in here).
//! - [`reactor`]: the mio event loop that moves bytes and runs the session's actions.
//! - [`stats`]: the server's counters and the per-connection log lines, from the sessions'
//!   typed events and counts.
//! - [`commit`]: the group-commit thread, the only place that waits on fsync.
//! - [`handshake`]: the threads that run TLS handshakes off the reactor.
//! - [`tls`]: loading the certificate and key for STARTTLS and implicit TLS.
//!
//! Invariants: `250` after DATA is sent only once the message is durable in `new/`.

pub mod commit;
pub mod config;
pub mod handshake;
pub mod reactor;
pub mod stats;
pub mod tls;
pub mod transport;

//! Pure protocol machines (sans-io): bytes and events in, bytes and actions out, time passed in.
//!
//! Layout:
//! - [`smtp::server`]: what smtpd speaks: [`smtp::server::command`] (command-line parser),
//!   [`smtp::server::reply`] (the reply catalogue), [`smtp::server::data`] (DATA and BDAT
//!   decoding), [`smtp::server::policy`] (local recipients: directory and quota look-ups),
//!   [`smtp::server::session`] (the server state machine).
//! - [`smtp::client`]: what smtp-relay speaks: [`smtp::client::reply`] (reply parser),
//!   [`smtp::client::body`] (DATA and BDAT encoding), [`smtp::client::session`] (the client
//!   state machine).
//! - [`smtp::line_ends`]: the CR LF normaliser both sides use for BDAT.
//! - [`pop3`]: what smtpd's POP3 listeners speak: [`pop3::command`], [`pop3::reply`],
//!   [`pop3::multiline`] (dot-stuffed RETR/TOP from the message file, chunk by chunk) and
//!   [`pop3::session`].
//! - [`sasl`]: SASL `PLAIN` and `LOGIN` messages (SMTP AUTH, POP3 AUTH) and the [`sasl::Secret`]
//!   password type.
//!
//! Owns: protocol state, parsing, reply text and typed reports (events, counts). Must not: touch
//! a socket, a file, the clock or the log. This crate depends on std, maildir-core (addresses,
//! envelope, date format), memchr (byte search) and base64 (SASL) only, so the machines cannot
//! import mio, rustls, the log or the binaries' code; `std::fs`, `std::net` and Unix sockets, processes,
//! environment variables, the console, threads and `Instant::now()`/`SystemTime::now()` are
//! refused by clippy (`proto/clippy.toml`, run with `-D warnings` in CI; only tests may read
//! the clock). Time comes in as a `now` argument.

//! # One vocabulary for every session
//!
//! Both SMTP sessions (and the POP3 one to come) are driven through the same names, after
//! quinn-proto, so a reactor can hold `enum Session { Smtp(..), Pop3(..) }` and drive each arm
//! with the same calls. Inputs are `handle_*`, outputs are `poll_*`; time comes in as `now`.
//! - `handle_input(bytes, now)`: bytes from the peer.
//! - `poll_output() -> &[u8]` and `output_written(n, ..)`: bytes to send, and how many were sent
//!   (the client passes `now`: its reply deadlines start when a command is written).
//! - `poll_action() -> Option<Action>`: work the driver must do for the session (server: queue
//!   file begin/write/commit/abort, STARTTLS; client: STARTTLS, send a body, per-job results,
//!   closed). An action that needs an answer names the `handle_*` call that brings it.
//! - `poll_timeout() -> Option<Instant>` and `handle_timeout(now)`: the next deadline, and that
//!   it passed.
//! - `handle_eof(..)`: the peer closed (or the connection broke).
//! - `handle_tls_started(now)`: the transport now speaks TLS; the session starts over (RFC 3207).
//! - `is_closed()`: nothing more will be read; close once the output is sent.
//! - `poll_event() -> Option<Event>` and `counts() -> &Counts` (server): typed reports of what
//!   happened (connect, transaction begin/commit/failure, recipients, TLS, timeout, close) and
//!   running counters, for logs and metrics. Events are apart from actions: an action is work
//!   the driver must do; an event needs nothing done, and dropping one loses only its report.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod pop3;
pub mod sasl;
pub mod smtp;

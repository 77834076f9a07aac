//! Pure protocol machines (sans-io): bytes and events in, bytes and actions out, time passed in.
//!
//! Layout:
//! - [`smtp::server`]: what smtpd speaks: [`smtp::server::command`] (command-line parser),
//!   [`smtp::server::reply`] (the reply catalogue), [`smtp::server::data`] (DATA decoding),
//!   [`smtp::server::session`] (the server state machine).
//! - [`smtp::client`]: what smtp-relay speaks: [`smtp::client::reply`] (reply parser),
//!   [`smtp::client::body`] (DATA encoding), [`smtp::client::session`] (the client state machine).
//!
//! Owns: protocol state, parsing and reply text. Must not: touch a socket, a file or the clock.
//! This crate depends on std and maildir-core only, so the machines cannot import mio, rustls,
//! or the queue's file code; `std::fs`, `std::net` sockets and `Instant::now()` are kept out by
//! review (time comes in as a `now` argument).

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod smtp;

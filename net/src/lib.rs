//! net: the I/O both binaries (smtpd, smtp-relay) and the listeners to come share, so each
//! exists once.
//!
//! # Layout
//! - [`transport`]: the byte transport under a session: plain TCP or TLS over one
//!   `rustls::Connection` (server or client), non-blocking.
//! - [`handshake`]: the thread pool that runs TLS handshakes off a reactor thread.
//! - [`listen`]: a non-blocking listening socket with a deep backlog.
//! - [`exporter`]: the `/metrics` HTTP endpoint (Prometheus text format) on a thread of its
//!   own.
//! - [`io`]: "would block" and "interrupted", and a retry on the latter.
//! - [`ConnRef`]: a connection named across threads (slab key and generation).
//!
//! Owns sockets and rustls connections. Must not: speak SMTP (or any mail protocol), decide
//! policy (which configuration, which certificate is acceptable, what a failure means), or
//! touch the Maildir.

pub mod exporter;
pub mod handshake;
pub mod io;
pub mod transport;

use std::net::SocketAddr;

use mio::net::TcpListener;

pub use transport::{Handshake, Transport};

/// A connection, named so that a reused slab slot is not confused with its previous owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRef {
    /// Slab key.
    pub key: usize,
    /// Generation of the connection that held the key.
    pub generation: u64,
}

/// A non-blocking listening socket with a backlog of `backlog` pending connections (the
/// kernel caps it at `net.core.somaxconn`), `SO_REUSEADDR` set, IPv6 sockets IPv6 only.
pub fn listen(addr: SocketAddr, backlog: i32) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    socket.set_nonblocking(true)?;
    Ok(TcpListener::from_std(socket.into()))
}

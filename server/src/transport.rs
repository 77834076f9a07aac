//! The byte transport under a session: what the reactor reads client bytes from and writes
//! replies to. Today a plain TCP stream; a TLS layer (rustls, driven sans-io) becomes another
//! variant here, between the socket and the session, without the session knowing.
//!
//! Non-blocking only: every call returns `WouldBlock` rather than wait. No protocol logic.

use std::io::{self, Read, Write};

use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

/// A connection's byte transport.
#[derive(Debug)]
pub enum Transport {
    /// Plain TCP.
    Plain(TcpStream),
}

impl Transport {
    /// Reads decrypted (or plain) client bytes into `buf`; `Ok(0)` is end of input.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
        }
    }

    /// Writes reply bytes; returns how many were taken.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
        }
    }

    /// Registers the underlying socket for readiness events.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        let interest = Interest::READABLE | Interest::WRITABLE;
        match self {
            Transport::Plain(s) => s.register(registry, token, interest),
        }
    }

    /// Removes the socket from the poll.
    pub fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.deregister(registry),
        }
    }
}

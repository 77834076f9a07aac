//! The byte transport under a session: what the reactor reads client bytes from and writes
//! replies to. Plain TCP, or TLS with rustls driven sans-io (as rustls's `tlsserver-mio`
//! example does): records move between the socket and the `ServerConnection`, plaintext moves
//! between the connection and the session, and the session never knows which it is.
//!
//! Non-blocking only: every call returns `WouldBlock` rather than wait. No protocol logic.

use std::io::{self, Read, Write};
use std::sync::Arc;

use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use proto::smtp::server::session::TlsInfo;
use rustls::{ServerConfig, ServerConnection};

/// Most plaintext rustls buffers for sending before `write` takes less (backpressure).
const TLS_SEND_BUFFER: usize = 64 * 1024;

/// Raw TLS input buffered while the handshake is processed elsewhere.
const RAW_INPUT_MAX: usize = 64 * 1024;

/// Where the TLS connection is.
#[derive(Debug)]
enum Tls {
    /// Plain TCP.
    Off,
    /// TLS; the connection is here.
    Home(Box<ServerConnection>),
    /// TLS; the connection is lent to a handshake thread.
    Away,
}

/// A connection's byte transport: a TCP stream, with a rustls server connection on top once
/// TLS has started. While the handshake runs, its records are collected here and processed
/// by [`crate::handshake`] threads (see [`Transport::take_handshake`]), so the expensive
/// crypto never runs on the reactor; once established, records are decrypted here.
#[derive(Debug)]
pub struct Transport {
    tcp: TcpStream,
    tls: Tls,
    /// TLS records read but not yet given to the connection.
    raw_in: Vec<u8>,
    /// TLS records produced by a handshake thread, not yet sent.
    raw_out: Vec<u8>,
    /// The peer closed the TCP stream.
    eof: bool,
}

impl Transport {
    /// A plain TCP transport.
    pub fn plain(tcp: TcpStream) -> Transport {
        Transport {
            tcp,
            tls: Tls::Off,
            raw_in: Vec::new(),
            raw_out: Vec::new(),
            eof: false,
        }
    }

    /// Starts TLS (after `220 Ready to start TLS`, or at once on an implicit TLS listener).
    /// Anything the client sent in plaintext and we did not read yet is taken as TLS records.
    pub fn start_tls(&mut self, config: &Arc<ServerConfig>) -> io::Result<()> {
        if matches!(self.tls, Tls::Off) {
            let mut tls = ServerConnection::new(config.clone()).map_err(io::Error::other)?;
            tls.set_buffer_limit(Some(TLS_SEND_BUFFER));
            self.tls = Tls::Home(Box::new(tls));
        }
        Ok(())
    }

    /// True once TLS has started (handshake under way or done).
    pub fn is_tls(&self) -> bool {
        !matches!(self.tls, Tls::Off)
    }

    /// True while a TLS handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        match &self.tls {
            Tls::Off => false,
            Tls::Home(t) => t.is_handshaking(),
            Tls::Away => true,
        }
    }

    /// Handshake records waiting to be processed, with the connection to process them: the
    /// caller sends them to a handshake thread and returns the result to
    /// [`Transport::handshake_done`].
    pub fn take_handshake(&mut self) -> Option<(Box<ServerConnection>, Vec<u8>)> {
        let handshaking = matches!(&self.tls, Tls::Home(t) if t.is_handshaking());
        if !handshaking || self.raw_in.is_empty() {
            return None;
        }
        let Tls::Home(tls) = std::mem::replace(&mut self.tls, Tls::Away) else {
            return None;
        };
        Some((tls, std::mem::take(&mut self.raw_in)))
    }

    /// A handshake thread processed records: the connection comes home with records to send.
    pub fn handshake_done(
        &mut self,
        tls: Box<ServerConnection>,
        output: &[u8],
        error: Option<String>,
    ) -> io::Result<()> {
        self.tls = Tls::Home(tls);
        self.raw_out.extend_from_slice(output);
        match error {
            None => Ok(()),
            Some(e) => {
                let _ = self.flush();
                Err(io::Error::new(io::ErrorKind::InvalidData, e))
            }
        }
    }

    /// Version and cipher of an established TLS session.
    pub fn tls_info(&self) -> Option<TlsInfo> {
        let Tls::Home(tls) = &self.tls else {
            return None;
        };
        let version = match tls.protocol_version()? {
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_owned(),
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_owned(),
            other => format!("{other:?}"),
        };
        let suite = tls.negotiated_cipher_suite()?;
        Some(TlsInfo {
            version,
            cipher: format!("{:?}", suite.suite()),
        })
    }

    /// Reads client bytes into `buf`; `Ok(0)` is end of input. During a TLS handshake this
    /// only collects records (`WouldBlock`): see [`Transport::take_handshake`].
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.tls {
            Tls::Off => self.tcp.read(buf),
            Tls::Away => {
                self.read_raw()?;
                Err(io::ErrorKind::WouldBlock.into())
            }
            Tls::Home(t) if t.is_handshaking() => {
                self.read_raw()?;
                if self.raw_in.is_empty() && self.eof {
                    return Ok(0);
                }
                Err(io::ErrorKind::WouldBlock.into())
            }
            Tls::Home(_) => self.read_established(buf),
        }
    }

    /// Collects TLS records from the socket until it would block (bounded).
    fn read_raw(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        while !self.eof && self.raw_in.len() < RAW_INPUT_MAX {
            match self.tcp.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.raw_in.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn read_established(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Tls::Home(tls) = &mut self.tls else {
                return Err(io::ErrorKind::WouldBlock.into());
            };
            // Plaintext already decrypted comes first.
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n), // 0: close_notify received
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if !self.raw_in.is_empty() {
                let mut rest = &self.raw_in[..];
                let used = match tls.read_tls(&mut rest) {
                    Ok(_) => self.raw_in.len() - rest.len(),
                    Err(e) => return Err(e),
                };
                self.raw_in.drain(..used);
            } else if self.eof {
                return Ok(0);
            } else {
                match tls.read_tls(&mut self.tcp) {
                    Ok(0) => self.eof = true,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.flush()?;
                        return Err(e);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            if let Err(e) = tls.process_new_packets() {
                // Send the alert, if any, then fail this connection only.
                let _ = self.flush();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            self.flush()?;
        }
    }

    /// Writes reply bytes; returns how many were taken (`WouldBlock` until TLS is established).
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let tls = match &mut self.tls {
            Tls::Off => return self.tcp.write(buf),
            Tls::Home(t) if !t.is_handshaking() => t,
            _ => return Err(io::ErrorKind::WouldBlock.into()),
        };
        let n = tls.writer().write(buf)?;
        self.flush()?;
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// Sends TLS records waiting (handshake messages, encrypted replies).
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.raw_out.is_empty() {
            match self.tcp.write(&self.raw_out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.raw_out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let Tls::Home(tls) = &mut self.tls else {
            return Ok(());
        };
        while tls.wants_write() {
            match tls.write_tls(&mut self.tcp) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// True when bytes the transport owns still wait for the socket.
    pub fn has_unsent(&self) -> bool {
        !self.raw_out.is_empty() || matches!(&self.tls, Tls::Home(t) if t.wants_write())
    }

    /// Registers the underlying socket for readiness events.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        let interest = Interest::READABLE | Interest::WRITABLE;
        self.tcp.register(registry, token, interest)
    }

    /// Removes the socket from the poll.
    pub fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.tcp.deregister(registry)
    }
}

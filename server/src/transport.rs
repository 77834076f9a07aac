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
use rustls::{ServerConfig, ServerConnection};

/// Most plaintext rustls buffers for sending before `write` takes less (backpressure).
const TLS_SEND_BUFFER: usize = 64 * 1024;

/// What the session records of a TLS connection (for the trace header and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// Protocol version, e.g. `TLSv1.3`.
    pub version: String,
    /// Cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
}

/// A connection's byte transport: a TCP stream, with a rustls server connection on top once
/// TLS has started.
#[derive(Debug)]
pub struct Transport {
    tcp: TcpStream,
    tls: Option<Box<ServerConnection>>,
    /// The peer closed the TCP stream (TLS may still hold decrypted bytes).
    eof: bool,
}

impl Transport {
    /// A plain TCP transport.
    pub fn plain(tcp: TcpStream) -> Transport {
        Transport {
            tcp,
            tls: None,
            eof: false,
        }
    }

    /// Starts TLS (after `220 Ready to start TLS`, or at once on an implicit TLS listener).
    /// Anything the client sent in plaintext and we did not read yet is taken as TLS records.
    pub fn start_tls(&mut self, config: &Arc<ServerConfig>) -> io::Result<()> {
        if self.tls.is_none() {
            let mut tls = ServerConnection::new(config.clone()).map_err(io::Error::other)?;
            tls.set_buffer_limit(Some(TLS_SEND_BUFFER));
            self.tls = Some(Box::new(tls));
        }
        Ok(())
    }

    /// True once TLS has started (handshake under way or done).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// True while a TLS handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// Version and cipher of an established TLS session.
    pub fn tls_info(&self) -> Option<TlsInfo> {
        let tls = self.tls.as_ref()?;
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

    /// Reads client bytes into `buf`; `Ok(0)` is end of input.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.tls.is_none() {
            return self.tcp.read(buf);
        }
        loop {
            let Some(tls) = self.tls.as_mut() else {
                return Ok(0);
            };
            // Plaintext already decrypted comes first.
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n), // 0: close_notify received
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if self.eof {
                return Ok(0);
            }
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
            if let Err(e) = tls.process_new_packets() {
                // Send the alert, if any, then fail this connection only.
                let _ = self.flush();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // Handshake replies go out as soon as they exist.
            self.flush()?;
        }
    }

    /// Writes reply bytes; returns how many were taken.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_mut() else {
            return self.tcp.write(buf);
        };
        let n = tls.writer().write(buf)?;
        self.flush()?;
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// Sends TLS records waiting in the connection (handshake messages, encrypted replies).
    pub fn flush(&mut self) -> io::Result<()> {
        let Some(tls) = self.tls.as_mut() else {
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
        self.tls.as_ref().is_some_and(|t| t.wants_write())
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

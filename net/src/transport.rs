//! The byte transport under a session, for both sides: what a reactor reads the peer's bytes
//! from and writes its own to. Plain TCP, or TLS with rustls driven sans-io (as rustls's
//! `tlsserver-mio` example does): records move between the socket and the
//! `rustls::Connection` (server or client), plaintext moves between the connection and the
//! session, and the session never knows which it is.
//!
//! Owns: the socket, the rustls connection, TLS records read but not yet processed and
//! records produced by a handshake thread but not yet sent, and the names of the negotiated
//! protocol version and cipher suite. Two handshake modes: [`Handshake::Offload`] (smtpd:
//! records are collected here and processed by [`crate::handshake`] threads, so the expensive
//! crypto never runs on the reactor) and [`Handshake::Inline`] (smtp-relay: the handshake
//! advances in [`Transport::read`] and [`Transport::flush`]).
//!
//! Must not: block (every call returns `WouldBlock` rather than wait), speak a mail protocol,
//! or decide TLS policy (configurations and certificate checks belong to the binaries).

use std::io::{self, Read, Write};

use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::Connection;

use crate::io::{retry, would_block};

/// Most plaintext rustls buffers for sending before `write` takes less (backpressure).
const TLS_SEND_BUFFER: usize = 64 * 1024;

/// Raw TLS input buffered while the handshake is processed elsewhere.
const RAW_INPUT_MAX: usize = 64 * 1024;

/// Where the expensive part of the TLS handshake runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Elsewhere: [`Transport::read`] only collects records (`WouldBlock`), the caller takes
    /// them with [`Transport::take_handshake`] and returns the result to
    /// [`Transport::handshake_done`]; writes wait (`WouldBlock`) until TLS is established.
    Offload,
    /// Here, in [`Transport::read`] and [`Transport::flush`]; plaintext written meanwhile is
    /// held by rustls until the handshake is done.
    Inline,
}

/// Where the TLS connection is.
#[derive(Debug)]
enum Tls {
    /// Plain TCP.
    Off,
    /// TLS; the connection is here.
    Home(Box<Connection>),
    /// TLS; the connection is lent to a handshake thread.
    Away,
}

/// A connection's byte transport: a TCP stream, with a rustls connection on top once TLS has
/// started.
#[derive(Debug)]
pub struct Transport {
    tcp: TcpStream,
    tls: Tls,
    handshake: Handshake,
    /// TLS records read but not yet given to the connection.
    raw_in: Vec<u8>,
    /// TLS records produced by a handshake thread, not yet sent.
    raw_out: Vec<u8>,
    /// The peer closed the TCP stream (TLS may still hold decrypted bytes).
    eof: bool,
}

impl Transport {
    /// A plain TCP transport.
    pub fn plain(tcp: TcpStream) -> Transport {
        Transport {
            tcp,
            tls: Tls::Off,
            handshake: Handshake::Inline,
            raw_in: Vec::new(),
            raw_out: Vec::new(),
            eof: false,
        }
    }

    /// The socket (for connect errors and addresses).
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Starts TLS over `tls`, a new server or client connection (after `220` to STARTTLS, or
    /// at once for implicit TLS). Anything the peer sent in plaintext and we did not read yet
    /// is taken as TLS records; a client's hello goes out with the next [`Transport::flush`].
    /// Does nothing if TLS has already started.
    pub fn start_tls(&mut self, tls: impl Into<Connection>, handshake: Handshake) {
        if matches!(self.tls, Tls::Off) {
            let mut tls = tls.into();
            tls.set_buffer_limit(Some(TLS_SEND_BUFFER));
            self.tls = Tls::Home(Box::new(tls));
            self.handshake = handshake;
        }
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

    /// The TLS connection, once started and while it is not lent to a handshake thread.
    pub fn tls(&self) -> Option<&Connection> {
        match &self.tls {
            Tls::Home(t) => Some(t),
            _ => None,
        }
    }

    /// Handshake records waiting to be processed, with the connection to process them
    /// ([`Handshake::Offload`] only): the caller sends them to a handshake thread and returns
    /// the result to [`Transport::handshake_done`].
    pub fn take_handshake(&mut self) -> Option<(Box<Connection>, Vec<u8>)> {
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
    /// An error (`InvalidData`) fails this connection; its alert, if any, is sent first.
    pub fn handshake_done(
        &mut self,
        tls: Box<Connection>,
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

    /// The negotiated protocol version, e.g. `TLSv1.3`.
    pub fn protocol_version(&self) -> Option<String> {
        self.tls().and_then(version_name)
    }

    /// The negotiated cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub fn cipher_suite(&self) -> Option<String> {
        self.tls().and_then(cipher_name)
    }

    /// Reads the peer's bytes into `buf`; `Ok(0)` is end of input (TCP end, or close_notify).
    /// With [`Handshake::Offload`], during the handshake this only collects records
    /// (`WouldBlock`): see [`Transport::take_handshake`]. A TLS error is `InvalidData`, after
    /// its alert has been sent.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.tls {
            Tls::Off => self.tcp.read(buf),
            Tls::Away => {
                self.read_raw()?;
                Err(io::ErrorKind::WouldBlock.into())
            }
            Tls::Home(t) if self.handshake == Handshake::Offload && t.is_handshaking() => {
                self.read_raw()?;
                if self.raw_in.is_empty() && self.eof {
                    return Ok(0);
                }
                Err(io::ErrorKind::WouldBlock.into())
            }
            Tls::Home(_) => self.read_tls(buf),
        }
    }

    /// Collects TLS records from the socket until it would block (bounded).
    fn read_raw(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        while !self.eof && self.raw_in.len() < RAW_INPUT_MAX {
            match retry(|| self.tcp.read(&mut chunk))? {
                Some(0) => self.eof = true,
                Some(n) => self.raw_in.extend_from_slice(&chunk[..n]),
                None => return Ok(()),
            }
        }
        Ok(())
    }

    /// Decrypts: plaintext already there first, then records collected earlier, then the
    /// socket. Handshake messages and alerts go out as soon as they exist.
    fn read_tls(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Tls::Home(tls) = &mut self.tls else {
                return Err(io::ErrorKind::WouldBlock.into());
            };
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n), // 0: close_notify received
                Err(e) if would_block(&e) => {}
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
                match retry(|| tls.read_tls(&mut self.tcp))? {
                    Some(0) => self.eof = true,
                    Some(_) => {}
                    None => {
                        self.flush()?;
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
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

    /// Writes the session's bytes; returns how many were taken (`WouldBlock` when rustls's
    /// send buffer is full, and with [`Handshake::Offload`] until TLS is established).
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let tls = match &mut self.tls {
            Tls::Off => return self.tcp.write(buf),
            Tls::Home(t) if self.handshake == Handshake::Inline || !t.is_handshaking() => t,
            _ => return Err(io::ErrorKind::WouldBlock.into()),
        };
        let n = tls.writer().write(buf)?;
        self.flush()?;
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// Sends TLS records waiting (handshake messages, encrypted session bytes, alerts).
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.raw_out.is_empty() {
            match retry(|| self.tcp.write(&self.raw_out))? {
                Some(0) => return Err(io::ErrorKind::WriteZero.into()),
                Some(n) => {
                    self.raw_out.drain(..n);
                }
                None => return Ok(()),
            }
        }
        let Tls::Home(tls) = &mut self.tls else {
            return Ok(());
        };
        while tls.wants_write() {
            match retry(|| tls.write_tls(&mut self.tcp))? {
                Some(0) => return Err(io::ErrorKind::WriteZero.into()),
                Some(_) => {}
                None => return Ok(()),
            }
        }
        Ok(())
    }

    /// True when bytes the transport owns still wait for the socket.
    pub fn has_unsent(&self) -> bool {
        !self.raw_out.is_empty() || matches!(&self.tls, Tls::Home(t) if t.wants_write())
    }

    /// Sends close_notify if TLS is established (best effort: the connection is ending).
    pub fn close_notify(&mut self) {
        if let Tls::Home(tls) = &mut self.tls
            && !tls.is_handshaking()
        {
            tls.send_close_notify();
            let _ = self.flush();
        }
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

/// `TLSv1.2`, `TLSv1.3`, or rustls's name for another version.
fn version_name(tls: &Connection) -> Option<String> {
    Some(match tls.protocol_version()? {
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_owned(),
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_owned(),
        other => format!("{other:?}"),
    })
}

/// rustls's name for the negotiated cipher suite.
fn cipher_name(tls: &Connection) -> Option<String> {
    Some(format!("{:?}", tls.negotiated_cipher_suite()?.suite()))
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use mio::net::TcpListener;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

    use super::*;
    use crate::handshake::{self, Job};
    use crate::{ConnRef, listen};

    /// A connected pair of plain transports: (accepted side, connecting side).
    fn pair() -> (Transport, Transport) {
        let listener: TcpListener = listen("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).unwrap();
        let server = eventually("accept", || listener.accept().ok().map(|(s, _)| s));
        (Transport::plain(server), Transport::plain(client))
    }

    /// Polls `f` until it gives a value (the sockets are non-blocking), at most 5 s.
    fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Some(v) = f() {
                return v;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("timed out waiting for {what}");
    }

    /// Reads until `want` bytes arrived (or end of input).
    fn read_all(t: &mut Transport, want: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        eventually("input", || match t.read(&mut buf) {
            Ok(0) => Some(()),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                (got.len() >= want).then_some(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("read: {e}"),
        });
        got
    }

    /// Reads until end of input; true if it came (false on an error).
    fn reads_eof(t: &mut Transport) -> bool {
        let mut buf = [0u8; 1024];
        eventually("end of input", || match t.read(&mut buf) {
            Ok(0) => Some(true),
            Ok(_) => None,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(_) => Some(false),
        })
    }

    #[test]
    fn plain_bytes_go_both_ways_and_eof_reads_zero() {
        let (mut server, mut client) = pair();
        assert!(!server.is_tls() && !server.is_handshaking());
        assert_eq!(client.write(b"EHLO x\r\n").unwrap(), 8);
        assert_eq!(read_all(&mut server, 8), b"EHLO x\r\n");
        assert_eq!(server.write(b"250 ok\r\n").unwrap(), 8);
        assert_eq!(read_all(&mut client, 8), b"250 ok\r\n");
        assert!(!client.has_unsent());
        assert_eq!(client.protocol_version(), None);
        client.close_notify(); // nothing to do in plaintext
        drop(client);
        assert!(reads_eof(&mut server));
    }

    /// A self-signed certificate for `localhost` made with the `openssl` CLI, or None (with a
    /// `SKIPPED:` line) where it is not installed and peers are not required.
    fn certificate(dir: &Path) -> Option<(PathBuf, PathBuf)> {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .args([
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost",
            ])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(out) if out.status.success() => Some((cert, key)),
            Ok(out) => panic!("openssl req: {}", String::from_utf8_lossy(&out.stderr)),
            Err(e) => {
                let required = std::env::var_os("CI").is_some()
                    || std::env::var_os("REQUIRE_PEERS").is_some_and(|v| v != "0");
                assert!(!required, "openssl is required: {e}");
                eprintln!("SKIPPED: openssl is not installed ({e})");
                None
            }
        }
    }

    /// Server and client configurations: the client trusts the server's certificate.
    fn configs(cert: &Path, key: &Path) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(chain[0].clone()).unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// A connected pair with TLS started: (server, offloaded; client, inline, expecting the
    /// server to be `name`). None when the certificate cannot be made (see [`certificate`]).
    fn tls_pair(name: &str) -> Option<(Transport, Transport)> {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = certificate(dir.path())?;
        let (server_config, client_config) = configs(&cert, &key);
        let (mut server, mut client) = pair();
        server.start_tls(
            ServerConnection::new(server_config).unwrap(),
            Handshake::Offload,
        );
        let name = ServerName::try_from(name.to_owned()).unwrap();
        client.start_tls(
            ClientConnection::new(client_config, name).unwrap(),
            Handshake::Inline,
        );
        Some((server, client))
    }

    /// One turn of the server side as smtpd drives it: collect records, process them as a
    /// handshake thread would, send the result.
    fn server_turn(server: &mut Transport, buf: &mut [u8]) -> io::Result<usize> {
        let r = server.read(buf);
        if let Some((tls, input)) = server.take_handshake() {
            let conn = ConnRef {
                key: 0,
                generation: 1,
            };
            let done = handshake::process(Job { conn, tls, input });
            assert_eq!(done.conn, conn);
            server.handshake_done(done.tls, &done.output, done.error)?;
            server.flush()?;
        }
        r
    }

    #[test]
    fn tls_offloaded_server_and_inline_client_exchange_bytes_and_close_notify() {
        let Some((mut server, mut client)) = tls_pair("localhost") else {
            return;
        };
        assert!(server.is_tls() && server.is_handshaking() && client.is_handshaking());
        // Offloaded: nothing is written before the handshake is done. Inline: rustls holds
        // the plaintext until then.
        assert_eq!(
            server.write(b"220 x\r\n").unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert_eq!(client.write(b"EHLO x\r\n").unwrap(), 8);
        let mut buf = [0u8; 1024];
        let mut got = Vec::new();
        eventually("the handshake and the client's bytes", || {
            client.flush().unwrap();
            match client.read(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => panic!("client read: {other:?}"),
            }
            match server_turn(&mut server, &mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("server read: {e}"),
            }
            (got.len() >= 8).then_some(())
        });
        assert_eq!(got, b"EHLO x\r\n");
        assert!(!server.is_handshaking() && !client.is_handshaking());
        assert_eq!(server.protocol_version().as_deref(), Some("TLSv1.3"));
        assert_eq!(client.protocol_version().as_deref(), Some("TLSv1.3"));
        assert!(
            server
                .cipher_suite()
                .is_some_and(|c| c.starts_with("TLS13_"))
        );
        assert_eq!(server.cipher_suite(), client.cipher_suite());

        assert_eq!(server.write(b"250 ok\r\n").unwrap(), 8);
        assert_eq!(read_all(&mut client, 8), b"250 ok\r\n");

        // close_notify reads as end of input, before the TCP stream ends.
        client.close_notify();
        assert!(reads_eof(&mut server));
    }

    #[test]
    fn a_failed_handshake_is_invalid_data_after_the_alert() {
        // The certificate is for `localhost`: the client refuses it and sends an alert.
        let Some((mut server, mut client)) = tls_pair("elsewhere.example") else {
            return;
        };
        let mut buf = [0u8; 1024];
        let err = eventually("the client to refuse the certificate", || {
            client.flush().unwrap();
            match client.read(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Some(e),
                Ok(n) => panic!("client read {n} bytes"),
            }
            match server_turn(&mut server, &mut buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => panic!("server read: {other:?}"),
            }
            None
        });
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // The server's handshake thread gets the alert: a failed handshake, not a clean end.
        let server_err = eventually("the alert at the server", || {
            match server_turn(&mut server, &mut buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                other => Some(other),
            }
        });
        assert_eq!(server_err.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}

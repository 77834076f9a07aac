//! TLS for the relay: rustls client configurations per policy, and the byte transport under a
//! session (plain TCP, or TLS with rustls's `ClientConnection` driven sans-io, as smtpd's
//! `transport.rs` does on the server side).
//!
//! Owns: the trust anchors (bundled Mozilla roots from `webpki-roots`, plus `--tls-ca`), the two
//! configurations (`lax`: the certificate is not checked, as in Postfix's `may`/`encrypt`;
//! `strict`: chain and host name checked, `verify`), the server name sent and checked, the
//! Postfix-style trust word for the log (Untrusted / Trusted / Verified), and moving records
//! between the socket and the connection. Non-blocking only: every call returns `WouldBlock`
//! rather than wait. Must not: speak SMTP or decide policy.

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore,
    SignatureScheme,
};

/// Most plaintext rustls buffers for sending before `write` takes less (backpressure).
const TLS_SEND_BUFFER: usize = 64 * 1024;

/// The client configurations of a run, built once (sessions are resumed across connections).
pub struct TlsContext {
    /// The certificate is not checked (handshake signatures still are).
    pub lax: Arc<ClientConfig>,
    /// Chain to a trusted root and host name checked.
    pub strict: Arc<ClientConfig>,
    verifier: Arc<WebPkiServerVerifier>,
}

impl TlsContext {
    /// Builds both configurations; `ca` adds PEM certificates to the bundled roots.
    pub fn new(ca: Option<&Path>) -> Result<TlsContext, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = ca {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| format!("cannot read --tls-ca {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "--tls-ca {}: no PEM certificate in the file",
                    path.display()
                ));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("--tls-ca {}: {e}", path.display()))?;
            }
        }
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| format!("cannot build the certificate verifier: {e}"))?;
        let strict = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_webpki_verifier(verifier.clone())
            .with_no_client_auth();
        let lax = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS configuration: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked { provider }))
            .with_no_client_auth();
        Ok(TlsContext {
            lax: Arc::new(lax),
            strict: Arc::new(strict),
            verifier,
        })
    }

    /// Postfix's word for an established connection: `Verified` (chain and name checked
    /// during the handshake), `Trusted` (the chain is valid, the name was not required to
    /// match), `Untrusted` (not checked, and the chain does not verify), `Anonymous`.
    pub fn trust(&self, conn: &ClientConnection, name: &ServerName<'_>, strict: bool) -> &str {
        if strict {
            return "Verified";
        }
        let Some((ee, rest)) = conn.peer_certificates().and_then(|c| c.split_first()) else {
            return "Anonymous";
        };
        match self
            .verifier
            .verify_server_cert(ee, rest, name, &[], UnixTime::now())
        {
            Ok(_) => "Trusted",
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => "Trusted",
            Err(_) => "Untrusted",
        }
    }
}

/// The name to send in SNI and check the certificate against: the MX host name (or the
/// smarthost's), an IP address for address literals.
pub fn server_name(host: &str, ip: IpAddr) -> ServerName<'static> {
    // An address literal is the address connected to (`mx::resolve` made it from the literal).
    if host.starts_with('[') {
        return ServerName::IpAddress(ip.into());
    }
    ServerName::try_from(host.to_owned()).unwrap_or(ServerName::IpAddress(ip.into()))
}

/// Accepts any certificate (opportunistic TLS protects against passive listeners only) but
/// still checks that the server holds the certificate's key.
#[derive(Debug)]
struct Unchecked {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Version and cipher of an established connection, e.g. `TLSv1.3 with cipher
/// TLS13_AES_256_GCM_SHA384`.
pub fn describe(conn: &ClientConnection) -> String {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
        Some(other) => format!("{other:?}"),
        None => "unknown version".to_owned(),
    };
    match conn.negotiated_cipher_suite() {
        Some(s) => format!("{version} with cipher {:?}", s.suite()),
        None => version,
    }
}

/// A connection's byte transport: a TCP stream, with a rustls client connection on top once
/// TLS has started.
#[derive(Debug)]
pub struct Transport {
    /// The socket (registered with the poll by the reactor).
    pub tcp: TcpStream,
    tls: Option<Box<ClientConnection>>,
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

    /// Starts the TLS handshake (after `220` to STARTTLS, or at once for implicit TLS). The
    /// ClientHello goes out with the next `flush`.
    pub fn start_tls(
        &mut self,
        config: &Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<()> {
        if self.tls.is_none() {
            let mut tls = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
            tls.set_buffer_limit(Some(TLS_SEND_BUFFER));
            self.tls = Some(Box::new(tls));
        }
        Ok(())
    }

    /// True while a TLS handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// The TLS connection, once started.
    pub fn tls(&self) -> Option<&ClientConnection> {
        self.tls.as_deref()
    }

    /// Reads server bytes into `buf`; `Ok(0)` is end of input.
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
            // Handshake messages go out as soon as they exist.
            self.flush()?;
        }
    }

    /// Writes command bytes; returns how many were taken.
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

    /// Sends TLS records waiting in the connection (handshake messages, encrypted commands).
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

    /// Sends close_notify if TLS is up (best effort: the connection is ending anyway).
    pub fn close_notify(&mut self) {
        if let Some(tls) = self.tls.as_mut()
            && !tls.is_handshaking()
        {
            tls.send_close_notify();
            let _ = self.flush();
        }
    }
}

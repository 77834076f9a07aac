//! TLS for the relay: rustls client configurations per policy, and starting TLS on a
//! connection's `net::Transport` (which moves the records, for smtpd too).
//!
//! Owns: the trust anchors (bundled Mozilla roots from `webpki-roots`, plus `--tls-ca`), the two
//! configurations (`lax`: the certificate is not checked, as in Postfix's `may`/`encrypt`;
//! `strict`: chain and host name checked, `verify`), the server name sent and checked, the
//! Postfix-style trust word for the log (Untrusted / Trusted / Verified). Must not: move TLS
//! records (that is `net::Transport`), speak SMTP, or decide which policy a host gets.

use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use net::{Handshake, Transport};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, CommonState, DigitallySignedStruct,
    RootCertStore, SignatureScheme,
};

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
    pub fn trust(&self, conn: &CommonState, name: &ServerName<'_>, strict: bool) -> &str {
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

/// Starts client TLS on `transport` (after `220` to STARTTLS, or at once for implicit TLS),
/// the handshake run inline by the transport; the ClientHello goes out with the next `flush`.
pub fn start(
    transport: &mut Transport,
    config: &Arc<ClientConfig>,
    name: ServerName<'static>,
) -> io::Result<()> {
    if !transport.is_tls() {
        let tls = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
        transport.start_tls(tls, Handshake::Inline);
    }
    Ok(())
}

/// Version and cipher of an established connection, e.g. `TLSv1.3 with cipher
/// TLS13_AES_256_GCM_SHA384`.
pub fn describe(transport: &Transport) -> String {
    let version = transport
        .protocol_version()
        .unwrap_or_else(|| "unknown version".to_owned());
    match transport.cipher_suite() {
        Some(s) => format!("{version} with cipher {s}"),
        None => version,
    }
}

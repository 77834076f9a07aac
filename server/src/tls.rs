//! The server side of TLS: loads the certificate chain and private key (PEM) into a rustls
//! configuration, starts TLS on a connection's `net::Transport`, and turns what the transport
//! negotiated into the [`TlsInfo`] the session records.
//!
//! Loading is start-up only: errors name the file and what is wrong with it, so `smtpd` can say
//! one clear line and exit. Must not: move TLS records (that is `net::Transport`) or speak SMTP.

use std::io;
use std::path::Path;
use std::sync::Arc;

use net::{Handshake, Transport};
use proto::smtp::server::session::TlsInfo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

/// Builds the rustls server configuration from a PEM certificate chain and a PEM private key.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read TLS certificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad TLS certificate {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read TLS private key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("TLS certificate and key do not fit together: {e}"))?;
    Ok(Arc::new(config))
}

/// Starts server TLS on `transport` (after `220 Ready to start TLS`, or at once on an implicit
/// TLS listener), its handshake to be processed on the handshake threads. Anything the client
/// sent in plaintext and we did not read yet is taken as TLS records.
pub fn start(transport: &mut Transport, config: &Arc<ServerConfig>) -> io::Result<()> {
    if !transport.is_tls() {
        let tls = ServerConnection::new(config.clone()).map_err(io::Error::other)?;
        transport.start_tls(tls, Handshake::Offload);
    }
    Ok(())
}

/// Version and cipher of an established TLS session.
pub fn info(transport: &Transport) -> Option<TlsInfo> {
    Some(TlsInfo {
        version: transport.protocol_version()?,
        cipher: transport.cipher_suite()?,
    })
}

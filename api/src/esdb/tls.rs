//! TLS for the endpoint: a rustls acceptor in front of the listener.
//!
//! tonic's own TLS option builds its rustls config from the process-wide crypto
//! provider, which this binary does not have (two providers are compiled in, and the
//! official EventStoreDB client installs its own the first time it connects, panicking
//! if one is there already). So the config here names its provider, and the handshakes
//! run beside the accept loop, each bounded in time, a few at once.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::TcpListenerStream;

use super::tcp::QuickAckStream;
use super::TlsIdentity;

/// Longest a client may take over its TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait to be accepted.
pub const TLS_HANDSHAKES_MAX_IN_FLIGHT: usize = 64;

/// The certificate and key did not make a server config.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate chain: {0}")]
    Certificate(String),
    #[error("cannot read the private key: {0}")]
    Key(String),
    #[error("the certificate and key do not make a TLS config: {0}")]
    Config(#[from] rustls::Error),
}

fn acceptor(identity: &TlsIdentity) -> Result<TlsAcceptor, TlsError> {
    let certificates = CertificateDer::pem_slice_iter(&identity.certificate_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    if certificates.is_empty() {
        return Err(TlsError::Certificate("no certificate in the PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&identity.key_pem)
        .map_err(|e| TlsError::Key(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certificates, key)?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Checks that the certificate and key make a TLS config, before serving.
pub fn check(identity: &TlsIdentity) -> Result<(), TlsError> {
    acceptor(identity).map(|_| ())
}

/// The listener's connections after their handshakes; failed handshakes are dropped.
pub fn incoming(
    listener: TcpListener,
    identity: &TlsIdentity,
) -> Result<impl Stream<Item = Result<TlsStream<QuickAckStream>, std::io::Error>>, TlsError> {
    let acceptor = acceptor(identity)?;
    Ok(TcpListenerStream::new(listener)
        .map(move |accepted| {
            let acceptor = acceptor.clone();
            async move {
                let tcp = QuickAckStream::new(accepted?)?;
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(handshake) => handshake,
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "TLS handshake timed out",
                    )),
                }
            }
        })
        .buffer_unordered(TLS_HANDSHAKES_MAX_IN_FLIGHT)
        .filter_map(|connection| async move {
            match connection {
                Ok(stream) => Some(Ok(stream)),
                Err(error) => {
                    tracing::debug!(%error, "a gRPC connection failed before TLS was set up");
                    None
                }
            }
        }))
}

//! An EventStoreDB-compatible gRPC endpoint on the engine's log, so the official
//! EventStoreDB clients (and the tools built on them) can read the commerce log, follow
//! it live and keep integration streams beside it. It speaks the streams subset of the
//! protocol (`event_store.client.streams.Streams`, with `ServerFeatures` for the
//! clients' connection handshake); the guide is `docs/esdb-compat.md`.
//!
//! - [`service`]: the gRPC services, messages in and out;
//! - [`append`]: expected revisions, deletes and tombstones, who may write what;
//! - [`read`]: stream and `$all` reads, and subscriptions;
//! - [`state`]: tombstones and stream metadata, both kept in the log itself;
//! - [`codec`]: event bytes to the log's JSON and back;
//! - [`cli`]: the flags of `commerce serve`, starting and stopping;
//! - [`tcp`]: the connections' socket options (no Nagle, no delayed ACKs);
//! - [`tls`]: the TLS acceptor;
//! - [`auth`]: users and roles; [`filter`]: `$all` filters; [`errors`]: the
//!   protocol's errors.
//!
//! Off unless `commerce serve --grpc-listen ADDR` asks for it.

// tonic's service methods answer `Result<_, tonic::Status>`, a large error type; the
// helpers here return the same so `?` carries a protocol error straight to the reply.
// Boxing it would cost an allocation per error and a conversion at every call.
#![allow(clippy::result_large_err)]

pub mod append;
pub mod auth;
pub mod cli;
pub mod codec;
pub mod errors;
pub mod filter;
pub mod proto;
pub mod read;
pub mod service;
pub mod state;
pub mod streams_rules;
pub mod tcp;
pub mod tls;

use std::future::Future;
use std::sync::Arc;

use eventstore::EventStore;
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

pub use auth::{Role, UserEntry, Users};
pub use cli::{EsdbArgs, EsdbServer};

use proto::event_store::client::server_features::server_features_server::ServerFeaturesServer;
use proto::streams::streams_server::StreamsServer;
use service::{ServerFeaturesService, StreamsService};

/// Largest message the endpoint decodes, in bytes: one event at the size limit, with
/// room for its envelope.
pub const MESSAGE_MAX_BYTES: usize = 4 << 20;
/// The port EventStoreDB listens on, and so the one clients assume.
pub const DEFAULT_PORT: u16 = 2113;

/// A PEM certificate chain and its private key.
#[derive(Clone)]
pub struct TlsIdentity {
    pub certificate_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// How the endpoint runs.
#[derive(Clone)]
pub struct EsdbConfig {
    pub users: Users,
    /// Serve TLS with this identity; plain HTTP/2 (`tls=false`) without.
    pub tls: Option<TlsIdentity>,
}

/// Serves the endpoint on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn EventStore>,
    config: EsdbConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (stopping_tx, stopping) = watch::channel(false);
    let streams = StreamsService::new(store, Arc::new(config.users), stopping);
    let shutdown = async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
    };
    let router = Server::builder()
        .add_service(
            StreamsServer::new(streams)
                .max_decoding_message_size(MESSAGE_MAX_BYTES)
                .max_encoding_message_size(MESSAGE_MAX_BYTES),
        )
        .add_service(ServerFeaturesServer::new(ServerFeaturesService));
    match config.tls {
        Some(identity) => {
            let incoming = tls::incoming(listener, &identity)?;
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await?;
        }
        None => {
            let incoming = TcpListenerStream::new(listener)
                .map(|accepted| accepted.and_then(tcp::QuickAckStream::new));
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await?;
        }
    }
    Ok(())
}

/// Why the endpoint could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

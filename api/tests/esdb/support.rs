//! The engine with its gRPC endpoint on random ports, and official clients for the
//! configured users.

use std::sync::Arc;
use std::time::Duration;

use api::esdb::{EsdbConfig, EsdbServer, UserEntry, Users};
use esdb::{Client, ClientSettings, EventData, ReadStreamOptions, ResolvedEvent, StreamPosition};
use eventstore::EventStore;
use tokio::net::TcpListener;

use crate::http_support::{spawn_app, TestApp};

pub const ADMIN: (&str, &str) = ("ops", "ops-password");
pub const AUDITOR: (&str, &str) = ("audit", "audit-password");
/// An integrator writes the streams of its own category, `acme-…`.
pub const INTEGRATOR: (&str, &str) = ("acme", "acme-password");

/// How long a test waits for a subscription's next event.
pub const SUBSCRIPTION_WAIT: Duration = Duration::from_secs(20);

pub struct EsdbApp {
    pub http: TestApp,
    // Held: dropping it stops the endpoint.
    _esdb: EsdbServer,
    pub port: u16,
}

pub fn users() -> Users {
    let entries: Vec<UserEntry> = [
        format!("{}:{}:admin", ADMIN.0, ADMIN.1),
        format!("{}:{}:auditor", AUDITOR.0, AUDITOR.1),
        format!("{}:{}:integrator", INTEGRATOR.0, INTEGRATOR.1),
    ]
    .iter()
    .map(|entry| entry.parse().expect("a valid user"))
    .collect();
    Users::new(entries).expect("distinct users")
}

pub async fn spawn() -> EsdbApp {
    spawn_with(|config| config).await
}

pub async fn spawn_with(configure: impl FnOnce(EsdbConfig) -> EsdbConfig) -> EsdbApp {
    let http = spawn_app().await;
    let store: Arc<dyn EventStore> = Arc::new(http.store.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let port = listener.local_addr().expect("an address").port();
    let config = configure(EsdbConfig {
        users: users(),
        tls: None,
    });
    let esdb = EsdbServer::spawn(listener, store, config).expect("the endpoint starts");
    EsdbApp {
        http,
        _esdb: esdb,
        port,
    }
}

impl EsdbApp {
    pub fn store(&self) -> &eventstore::PostgresStore {
        &self.http.store
    }

    pub fn client_as(&self, (user, password): (&str, &str)) -> Client {
        let settings: ClientSettings =
            format!("esdb://{user}:{password}@127.0.0.1:{}?tls=false", self.port)
                .parse()
                .expect("a connection string");
        Client::new(settings).expect("a client")
    }

    pub fn admin(&self) -> Client {
        self.client_as(ADMIN)
    }

    pub fn anonymous(&self) -> Client {
        let settings: ClientSettings = format!("esdb://127.0.0.1:{}?tls=false", self.port)
            .parse()
            .expect("a connection string");
        Client::new(settings).expect("a client")
    }

    pub async fn head(&self) -> u64 {
        self.store().head().await.expect("the head")
    }
}

/// A JSON event of `event_type` with `data`.
pub fn json_event(event_type: &str, data: serde_json::Value) -> EventData {
    EventData::json(event_type, &data).expect("JSON data")
}

/// Every event a read returns.
pub async fn read_all_of(stream: &mut esdb::ReadStream) -> esdb::Result<Vec<ResolvedEvent>> {
    let mut events = Vec::new();
    while let Some(event) = stream.next().await? {
        events.push(event);
    }
    Ok(events)
}

/// Reads a whole stream forwards.
pub async fn read_stream(client: &Client, stream: &str) -> esdb::Result<Vec<ResolvedEvent>> {
    let options = ReadStreamOptions::default()
        .forwards()
        .position(StreamPosition::Start);
    let mut read = client.read_stream(stream, &options).await?;
    read_all_of(&mut read).await
}

/// The revisions of read events.
pub fn revisions(events: &[ResolvedEvent]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e.get_original_event().revision)
        .collect()
}

//! TLS with a configured certificate: the official client connects with `tls=true`.

use std::path::Path;
use std::process::Command;

use api::esdb::TlsIdentity;
use esdb::{AppendToStreamOptions, Client, ClientSettings};
use serde_json::json;
use uuid::Uuid;

use crate::support::{json_event, read_stream, spawn_with, ADMIN};

/// A self-signed certificate for localhost, made by the `openssl` command.
fn self_signed(dir: &Path) -> TlsIdentity {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("the openssl command runs");
    assert!(status.success(), "openssl made a certificate");
    TlsIdentity {
        certificate_pem: std::fs::read(cert).expect("the certificate"),
        key_pem: std::fs::read(key).expect("the key"),
    }
}

#[tokio::test]
async fn the_endpoint_serves_tls_with_a_configured_certificate() {
    let dir = std::env::temp_dir().join(format!("esdb-tls-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    let identity = self_signed(&dir);
    let app = spawn_with(|mut config| {
        config.tls = Some(identity);
        config
    })
    .await;
    let settings: ClientSettings = format!(
        "esdb://{}:{}@localhost:{}?tls=true&tlsVerifyCert=false",
        ADMIN.0, ADMIN.1, app.port
    )
    .parse()
    .expect("a connection string");
    let client = Client::new(settings).expect("a client");
    client
        .append_to_stream(
            "integration-tls",
            &AppendToStreamOptions::default(),
            json_event("Secured", json!({"over": "tls"})),
        )
        .await
        .expect("an append over TLS");
    let events = read_stream(&client, "integration-tls")
        .await
        .expect("a read over TLS");
    assert_eq!(events.len(), 1);

    // Plain HTTP/2 gets no answer from a TLS endpoint.
    let plain = app.admin();
    let refused = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        read_stream(&plain, "integration-tls"),
    )
    .await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "a plain client is not served"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

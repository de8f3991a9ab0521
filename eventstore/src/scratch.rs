//! Throwaway databases for tests and benchmarks.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::types::StoreError;

/// A throwaway database with a unique name, for one test or one benchmark run,
/// dropped (with any connections still open) when this value is dropped.
pub struct ScratchDatabase {
    pub name: String,
    pub url: String,
    admin: tokio_postgres::Config,
}

impl ScratchDatabase {
    /// Creates an empty database named `{prefix}_...` on the server of `admin_url`.
    pub async fn create(admin_url: &str, prefix: &str) -> Result<Self, StoreError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let admin: tokio_postgres::Config =
            admin_url.parse().map_err(|e| StoreError::InvalidRequest {
                field: "DATABASE_URL",
                reason: format!("{e}"),
            })?;
        let name = format!(
            "{prefix}_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let (client, connection) = admin
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| StoreError::Unavailable(format!("test server at {admin_url}: {e}")))?;
        let driver = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(|e| StoreError::Database(e.to_string()))?;
        drop(client);
        let _ = driver.await;
        let mut config = admin.clone();
        config.dbname(&name);
        let url = config_to_url(&config, &name);
        Ok(ScratchDatabase { name, url, admin })
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        // Drop may run inside an async runtime, so the blocking client works on a
        // thread of its own. Best effort: a leftover database harms no other test.
        let admin = self.admin.clone();
        let name = self.name.clone();
        let dropper = std::thread::spawn(move || {
            let config: postgres::Config = postgres::Config::from(admin);
            if let Ok(mut client) = config.connect(postgres::NoTls) {
                let _ =
                    client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        });
        let _ = dropper.join();
    }
}

/// Rebuilds a URL for `config` pointing at database `name` (host, port and user are
/// taken from the admin URL).
fn config_to_url(config: &tokio_postgres::Config, name: &str) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string().replace('/', "%2F"),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    let password = config
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    format!("postgres://{user}{password}@{host}:{port}/{name}")
}

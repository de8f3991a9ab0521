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
        let name = format!(
            "{prefix}_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let admin = admin_config(admin_url)?;
        run_on_server(&admin, admin_url, &format!("CREATE DATABASE {name}")).await?;
        let url = database_url(&admin, &name);
        Ok(ScratchDatabase { name, url, admin })
    }
}

/// Creates an empty database `name` on the server of `admin_url`, dropping one of
/// that name first (with any connections still open), and returns its URL. For
/// databases that outlive the process, like the demo's; `name` must be a plain SQL
/// identifier.
pub async fn recreate_database(admin_url: &str, name: &str) -> Result<String, StoreError> {
    let plain = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !plain {
        return Err(StoreError::InvalidRequest {
            field: "database",
            reason: format!("{name:?} is not a plain database name (a-z, 0-9, _; at most 63)"),
        });
    }
    let admin = admin_config(admin_url)?;
    run_on_server(
        &admin,
        admin_url,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .await?;
    run_on_server(&admin, admin_url, &format!("CREATE DATABASE {name}")).await?;
    Ok(database_url(&admin, name))
}

fn admin_config(admin_url: &str) -> Result<tokio_postgres::Config, StoreError> {
    admin_url.parse().map_err(|e| StoreError::InvalidRequest {
        field: "DATABASE_URL",
        reason: format!("{e}"),
    })
}

async fn run_on_server(
    admin: &tokio_postgres::Config,
    admin_url: &str,
    statement: &str,
) -> Result<(), StoreError> {
    let (client, connection) = admin
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| StoreError::Unavailable(format!("server at {admin_url}: {e}")))?;
    let driver = tokio::spawn(connection);
    client
        .batch_execute(statement)
        .await
        .map_err(|e| StoreError::Database(e.to_string()))?;
    drop(client);
    let _ = driver.await;
    Ok(())
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
fn database_url(config: &tokio_postgres::Config, name: &str) -> String {
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

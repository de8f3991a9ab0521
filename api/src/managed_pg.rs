//! A PostgreSQL server that `commerce serve` runs for itself when no `DATABASE_URL`
//! is given, so a newcomer needs no database set-up: it finds the server's binaries,
//! creates a cluster in the data directory on first start, starts it listening only
//! on a Unix socket in that directory (no TCP port), and stops it on exit.
//!
//! PostgreSQL refuses to run as root. When `commerce` runs as root, `initdb` and
//! `pg_ctl` run as the `postgres` system user (`runuser -u postgres --`), which owns
//! the cluster's folders.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use tokio::process::Command;

/// The cluster's folder inside the data directory.
const CLUSTER_DIR: &str = "postgres";
/// The folder of the server's Unix socket (and nothing else).
const SOCKET_DIR: &str = "run";
const LOG_FILE: &str = "postgres.log";
/// Names the socket file (`.s.PGSQL.5432`); no TCP port is opened.
const SOCKET_PORT: u16 = 5432;
/// The database the engine uses inside the cluster.
pub const DATABASE: &str = "commerce";
/// How long `pg_ctl` may take to start or stop the server, in seconds.
const PG_CTL_TIMEOUT_SECS: u64 = 60;
/// The system user that runs the server when we are root.
const POSTGRES_USER: &str = "postgres";
/// What to tell someone without PostgreSQL, in one line.
pub const INSTALL_HINT: &str = "PostgreSQL's server is not installed (no initdb/pg_ctl on PATH, in `pg_config --bindir` or /usr/lib/postgresql/*/bin): install it with `apt-get install postgresql`, or set DATABASE_URL to a running server";

#[derive(Debug, thiserror::Error)]
pub enum ManagedPgError {
    #[error("{INSTALL_HINT}")]
    NotInstalled,
    #[error("running as root needs the `postgres` system user (PostgreSQL refuses to run as root): `apt-get install postgresql` creates it")]
    NoPostgresUser,
    #[error("the postgres user cannot write to {0}: choose a --data-dir it can reach (a folder under /root is private; /var/lib/commerce works)")]
    Unreachable(PathBuf),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{command} failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("the server does not accept connections: {0}")]
    Connect(String),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> ManagedPgError {
    let what = what.into();
    move |source| ManagedPgError::Io { what, source }
}

/// A running server that this process manages.
pub struct ManagedPostgres {
    bindir: PathBuf,
    cluster: PathBuf,
    socket_dir: PathBuf,
    as_postgres: bool,
}

/// The default data directory: `/var/lib/commerce` for root (the `postgres` user
/// cannot enter `/root`), else `$XDG_DATA_HOME/commerce` or
/// `~/.local/share/commerce`, else `./.commerce-data`.
pub fn default_data_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/commerce");
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("commerce");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".local/share/commerce");
    }
    PathBuf::from(".commerce-data")
}

/// The folder holding `initdb`, `pg_ctl` and `postgres`: from `PATH`, then
/// `pg_config --bindir`, then the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bindir() -> Option<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(dir) = std::env::split_paths(&path).find(|d| has_server(d)) {
            return Some(dir);
        }
    }
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

impl ManagedPostgres {
    /// Creates the cluster in `data_dir` if there is none, starts the server if it is
    /// not running (a server left by a process that died is reused), and makes sure
    /// the engine's database exists.
    pub async fn start(data_dir: &Path) -> Result<Self, ManagedPgError> {
        let bindir = find_bindir().ok_or(ManagedPgError::NotInstalled)?;
        let as_postgres = nix::unistd::geteuid().is_root();
        let postgres_user = if as_postgres {
            Some(
                nix::unistd::User::from_name(POSTGRES_USER)
                    .ok()
                    .flatten()
                    .ok_or(ManagedPgError::NoPostgresUser)?,
            )
        } else {
            None
        };
        let data_dir = std::path::absolute(data_dir)
            .map_err(io_error(format!("cannot resolve {}", data_dir.display())))?;
        let cluster = data_dir.join(CLUSTER_DIR);
        let socket_dir = data_dir.join(SOCKET_DIR);
        let log = data_dir.join(LOG_FILE);
        for dir in [&data_dir, &cluster, &socket_dir] {
            std::fs::create_dir_all(dir)
                .map_err(io_error(format!("cannot create {}", dir.display())))?;
        }
        // The socket folder is the only way in (trust authentication), so only its
        // owner (and root) may enter it.
        set_mode(&socket_dir, 0o700)?;
        set_mode(&cluster, 0o700)?;
        if !log.exists() {
            std::fs::write(&log, b"")
                .map_err(io_error(format!("cannot create {}", log.display())))?;
        }
        if let Some(user) = &postgres_user {
            for path in [&cluster, &socket_dir, &log] {
                nix::unistd::chown(path.as_path(), Some(user.uid), Some(user.gid)).map_err(
                    |e| ManagedPgError::Io {
                        what: format!("cannot hand {} to the postgres user", path.display()),
                        source: e.into(),
                    },
                )?;
            }
        }
        let server = ManagedPostgres {
            bindir,
            cluster,
            socket_dir,
            as_postgres,
        };
        if as_postgres {
            let reachable = server
                .run("test", &["-w".as_ref(), server.cluster.as_os_str()], false)
                .await;
            if reachable.is_err() {
                return Err(ManagedPgError::Unreachable(data_dir));
            }
        }
        if !server.cluster.join("PG_VERSION").exists() {
            server.init().await?;
        }
        if !server.running().await {
            tracing::info!(cluster = %server.cluster.display(), "starting PostgreSQL");
            server
                .pg_ctl(&[
                    "-D".as_ref(),
                    server.cluster.as_os_str(),
                    "-l".as_ref(),
                    log.as_os_str(),
                    "-w".as_ref(),
                    "-t".as_ref(),
                    PG_CTL_TIMEOUT_SECS.to_string().as_ref(),
                    "start".as_ref(),
                ])
                .await?;
        }
        server.create_database().await?;
        Ok(server)
    }

    /// A connection string for the engine's database over the private socket.
    pub fn database_url(&self) -> String {
        self.url_for(DATABASE)
    }

    fn url_for(&self, database: &str) -> String {
        format!(
            "host={} port={SOCKET_PORT} user={POSTGRES_USER} dbname={database}",
            quote_conninfo(&self.socket_dir.to_string_lossy())
        )
    }

    /// Stops the server (fast shutdown: open sessions end, nothing half-written,
    /// since every transaction is atomic).
    pub async fn stop(self) -> Result<(), ManagedPgError> {
        tracing::info!(cluster = %self.cluster.display(), "stopping PostgreSQL");
        self.pg_ctl(&[
            "-D".as_ref(),
            self.cluster.as_os_str(),
            "-m".as_ref(),
            "fast".as_ref(),
            "-w".as_ref(),
            "-t".as_ref(),
            PG_CTL_TIMEOUT_SECS.to_string().as_ref(),
            "stop".as_ref(),
        ])
        .await
        .map(drop)
    }

    /// Stops the server the way a crash or a power cut would (`-m immediate`: no
    /// checkpoint, sessions cut mid-transaction; the next start replays the WAL).
    /// For fault tests; [`ManagedPostgres::start`] on the same folder brings it back.
    pub async fn stop_immediately(&self) -> Result<(), ManagedPgError> {
        tracing::warn!(cluster = %self.cluster.display(), "stopping PostgreSQL immediately");
        self.pg_ctl(&[
            "-D".as_ref(),
            self.cluster.as_os_str(),
            "-m".as_ref(),
            "immediate".as_ref(),
            "-w".as_ref(),
            "-t".as_ref(),
            PG_CTL_TIMEOUT_SECS.to_string().as_ref(),
            "stop".as_ref(),
        ])
        .await
        .map(drop)
    }

    async fn init(&self) -> Result<(), ManagedPgError> {
        eprintln!(
            "commerce: creating a PostgreSQL cluster in {}",
            self.cluster.display()
        );
        let initdb = self.bindir.join("initdb");
        self.run(
            &initdb.to_string_lossy(),
            &[
                "-D".as_ref(),
                self.cluster.as_os_str(),
                "-U".as_ref(),
                POSTGRES_USER.as_ref(),
                "--auth=trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--no-locale".as_ref(),
            ],
            true,
        )
        .await?;
        // No TCP at all; the socket lives in our private folder.
        let settings = format!(
            "\n# commerce: managed server, reachable only through its socket folder\n\
             listen_addresses = ''\n\
             port = {SOCKET_PORT}\n\
             unix_socket_directories = '{}'\n\
             unix_socket_permissions = 0700\n\
             max_connections = 100\n",
            self.socket_dir.to_string_lossy().replace('\'', "''")
        );
        let conf = self.cluster.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)
            .map_err(io_error(format!("cannot read {}", conf.display())))?;
        text.push_str(&settings);
        std::fs::write(&conf, text).map_err(io_error(format!("cannot write {}", conf.display())))
    }

    async fn running(&self) -> bool {
        let pg_ctl = self.bindir.join("pg_ctl");
        let args: [&std::ffi::OsStr; 3] =
            ["-D".as_ref(), self.cluster.as_os_str(), "status".as_ref()];
        // A stopped server is the usual answer here, not a failure worth a warning.
        self.run(&pg_ctl.to_string_lossy(), &args, false)
            .await
            .is_ok()
    }

    async fn create_database(&self) -> Result<(), ManagedPgError> {
        let config: tokio_postgres::Config = self
            .url_for("postgres")
            .parse()
            .map_err(|e: tokio_postgres::Error| ManagedPgError::Connect(e.to_string()))?;
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| ManagedPgError::Connect(e.to_string()))?;
        let driver = tokio::spawn(connection);
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&DATABASE])
            .await
            .map_err(|e| ManagedPgError::Connect(e.to_string()))?
            .is_some();
        if !exists {
            client
                .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
                .await
                .map_err(|e| ManagedPgError::Connect(e.to_string()))?;
        }
        drop(client);
        let _ = driver.await;
        Ok(())
    }

    async fn pg_ctl(&self, args: &[&std::ffi::OsStr]) -> Result<Output, ManagedPgError> {
        let pg_ctl = self.bindir.join("pg_ctl");
        self.run(&pg_ctl.to_string_lossy(), args, true).await
    }

    /// Runs a program, as the `postgres` user when we are root. `log_failure` says
    /// whether a failure is worth reporting (a `status` probe's is not).
    async fn run(
        &self,
        program: &str,
        args: &[&std::ffi::OsStr],
        log_failure: bool,
    ) -> Result<Output, ManagedPgError> {
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", POSTGRES_USER, "--", program]);
            c
        } else {
            Command::new(program)
        };
        command.args(args).stdin(std::process::Stdio::null());
        // pg_ctl's server inherits our working directory; the postgres user may not
        // be allowed into the caller's.
        command.current_dir("/");
        let shown = format!(
            "{program} {}",
            args.last()
                .map_or(std::borrow::Cow::Borrowed(""), |a| a.to_string_lossy())
        );
        let output = tokio::time::timeout(
            Duration::from_secs(PG_CTL_TIMEOUT_SECS + 10),
            command.output(),
        )
        .await
        .map_err(|_| ManagedPgError::Command {
            command: shown.clone(),
            stderr: "timed out".into(),
        })?
        .map_err(io_error(format!("cannot run {program}")))?;
        if output.status.success() {
            return Ok(output);
        }
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if log_failure {
            tracing::warn!(command = %shown, %stderr, "PostgreSQL command failed");
        }
        Err(ManagedPgError::Command {
            command: shown,
            stderr,
        })
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ManagedPgError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_error(
        format!("cannot set the mode of {}", path.display()),
    ))
}

/// Quotes a value for a libpq key-value connection string.
fn quote_conninfo(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_quote_paths() {
        assert_eq!(quote_conninfo("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(quote_conninfo("/tmp/it's"), "'/tmp/it\\'s'");
        let config: tokio_postgres::Config = format!(
            "host={} port=5432 user=postgres dbname=commerce",
            quote_conninfo("/tmp/a b")
        )
        .parse()
        .unwrap();
        assert_eq!(config.get_dbname(), Some("commerce"));
    }
}

//! The `commerce` binary itself: `token`, and `serve` on a given database or on the
//! managed local PostgreSQL, stopped with SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api::http::{Authenticator, Role};
use eventstore::testing::test_database;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::SECRET;

const BIN: &str = env!("CARGO_BIN_EXE_commerce");
/// How long the binary may take to start (the managed server's initdb included).
const START_TIMEOUT: Duration = Duration::from_secs(90);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

fn secret() -> String {
    String::from_utf8(SECRET.to_vec()).unwrap()
}

#[test]
fn token_mints_what_the_server_verifies() {
    let out = Command::new(BIN)
        .args([
            "token",
            "--role",
            "auditor",
            "--sub",
            "carol",
            "--ttl-secs",
            "60",
        ])
        .env("COMMERCE_JWT_SECRET", secret())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let principal = Authenticator::new(Some(SECRET), None)
        .unwrap()
        .verify(token.trim())
        .unwrap();
    assert_eq!(
        (principal.sub.as_str(), principal.role),
        ("carol", Role::Auditor)
    );

    let short = Command::new(BIN)
        .args(["token", "--role", "admin", "--sub", "x"])
        .env("COMMERCE_JWT_SECRET", "too short")
        .output()
        .unwrap();
    assert!(!short.status.success());
}

/// A `commerce serve` child and the address it printed.
struct Served {
    child: Child,
    base: String,
}

fn serve(command: &mut Command) -> Served {
    let mut child = command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("COMMERCE_JWT_SECRET", secret())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(address) = line.strip_prefix("commerce: serving ") {
                let _ = tx.send(address.to_owned());
            }
        }
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(base) => Served { child, base },
        Err(_) => {
            let _ = child.kill();
            panic!("commerce serve did not start");
        }
    }
}

/// SIGTERM, then the exit status (within a bound).
fn terminate(mut served: Served) -> std::process::ExitStatus {
    kill(Pid::from_raw(served.child.id() as i32), Signal::SIGTERM).unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = served.child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > STOP_TIMEOUT {
            let _ = served.child.kill();
            panic!("commerce serve did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn get_ok(url: String) -> serde_json::Value {
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn serve_uses_database_url_and_stops_on_sigterm() {
    let db = test_database().await.unwrap();
    let served = serve(Command::new(BIN).env("DATABASE_URL", &db.url));
    let ready = get_ok(format!("{}/ready", served.base)).await;
    assert_eq!(ready["status"], "ready");
    assert!(terminate(served).success());
}

#[tokio::test]
async fn serve_without_database_url_runs_and_stops_its_own_postgres() {
    if api::managed_pg::find_bindir().is_none() {
        eprintln!("skipped: no PostgreSQL server binaries on this machine");
        return;
    }
    let data_dir = std::env::temp_dir().join(format!("commerce-managed-{}", uuid::Uuid::new_v4()));
    let served = serve(
        Command::new(BIN)
            .env_remove("DATABASE_URL")
            .env("COMMERCE_DATA_DIR", &data_dir)
            .current_dir(std::env::temp_dir()),
    );
    let ready = get_ok(format!("{}/ready", served.base)).await;
    assert_eq!(ready["status"], "ready");
    assert!(data_dir.join("postgres/PG_VERSION").exists());
    // Only a Unix socket, in the data directory.
    let conf = std::fs::read_to_string(data_dir.join("postgres/postgresql.conf")).unwrap();
    assert!(conf.contains("listen_addresses = ''"));
    assert!(terminate(served).success());
    assert!(
        !data_dir.join("postgres/postmaster.pid").exists(),
        "the managed server is still running"
    );
    let _ = std::fs::remove_dir_all(&data_dir);
}

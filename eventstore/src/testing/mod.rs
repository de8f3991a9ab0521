//! Test support shared by every crate's tests: a fresh PostgreSQL database per test,
//! and the conformance suite that every [`crate::EventStore`] must pass.

use crate::scratch::ScratchDatabase;
use crate::types::StoreError;

/// The server the project's scripts start (`scripts/pg.sh`).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5433/postgres";

/// The admin URL tests create their databases from: `DATABASE_URL` or the default.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

/// A database of its own for one test on the test server.
pub async fn test_database() -> Result<ScratchDatabase, StoreError> {
    ScratchDatabase::create(&admin_url(), "test").await
}

pub mod conformance;

//! The errors of the read side, each one something a caller can act on.

use eventstore::StoreError;

use crate::Projection;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProjectionError {
    #[error("unknown projection {0:?} (known: catalog, inventory, carts, orders, sales)")]
    UnknownProjection(String),
    /// Another process is rebuilding this projection right now.
    #[error("a rebuild of {0} is already running")]
    RebuildInProgress(Projection),
    /// An event the projection cannot apply: the projection stops there.
    #[error("projection {projection} cannot apply the event at position {position}: {reason}")]
    Poison {
        projection: Projection,
        position: u64,
        reason: String,
    },
    #[error("invalid {field}: {reason}")]
    InvalidQuery { field: &'static str, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// PostgreSQL could not be reached or the connection broke; retrying is safe.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// PostgreSQL cancelled the query: it ran past the session's statement timeout
    /// (or was cancelled by an operator). The same query will do so again.
    #[error("query cancelled: {0}")]
    Cancelled(String),
    #[error("database error: {0}")]
    Database(String),
}

impl ProjectionError {
    /// True for errors worth retrying as they are.
    pub fn is_transient(&self) -> bool {
        match self {
            ProjectionError::Unavailable(_) => true,
            ProjectionError::Store(e) => e.is_transient(),
            ProjectionError::UnknownProjection(_)
            | ProjectionError::RebuildInProgress(_)
            | ProjectionError::Poison { .. }
            | ProjectionError::InvalidQuery { .. }
            | ProjectionError::Cancelled(_)
            | ProjectionError::Database(_) => false,
        }
    }
}

/// SQLSTATEs after which the same work may succeed when tried again: serialization
/// failures, deadlocks, and the server shutting down or refusing connections.
const TRANSIENT_SQLSTATES: &[&str] = &["40001", "40P01", "57P01", "57P02", "57P03", "53300"];

/// SQLSTATE of a statement cancelled by its timeout or by a cancel request.
const QUERY_CANCELED: &str = "57014";

/// Maps a driver error: no SQLSTATE means the connection itself failed.
pub(crate) fn db_error(e: tokio_postgres::Error) -> ProjectionError {
    match e.as_db_error() {
        Some(db) if TRANSIENT_SQLSTATES.contains(&db.code().code()) => {
            ProjectionError::Unavailable(format!("{} ({})", db.message(), db.code().code()))
        }
        Some(db) if db.code().code() == QUERY_CANCELED => {
            ProjectionError::Cancelled(db.message().to_owned())
        }
        Some(db) => ProjectionError::Database(format!("{} ({})", db.message(), db.code().code())),
        None => ProjectionError::Unavailable(e.to_string()),
    }
}

pub(crate) fn pool_error(e: deadpool_postgres::PoolError) -> ProjectionError {
    ProjectionError::Unavailable(e.to_string())
}

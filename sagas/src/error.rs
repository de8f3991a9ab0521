//! The one error type of the crate. A step that fails with any of these fails its
//! batch: the runner starts again from its checkpoint, and the step's command ids make
//! the re-run harmless.

use commands::CommandError;
use domain::DecodeError;
use eventstore::StoreError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SagaError {
    #[error("command: {0}")]
    Command(#[from] CommandError),
    #[error("event store: {0}")]
    Store(#[from] StoreError),
    #[error("saga database: {0}")]
    Database(String),
    #[error("event {position} cannot be read: {source}")]
    Decode {
        position: u64,
        #[source]
        source: DecodeError,
    },
    /// A step did not finish within `SagaConfig::step_timeout`.
    #[error("step {step} did not finish within {timeout_ms} ms")]
    Timeout { step: &'static str, timeout_ms: u64 },
    /// Another runner moved the checkpoint: this one lost its lease.
    #[error("the checkpoint moved under the runner (another runner took over)")]
    LeaseLost,
    /// A crash injected by a simulation at `point`.
    #[error("simulated crash at {point}")]
    Crashed { point: &'static str },
}

//! The protocol's errors: a gRPC status plus the `exception` header that EventStoreDB
//! servers send and the official clients read (`stream-deleted` makes a client report
//! a deleted stream; access-denied and not-authenticated are told by the status code).

use eventstore::StoreError;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

fn with_exception(code: Code, message: impl Into<String>, exception: &'static str) -> Status {
    let mut status = Status::new(code, message);
    status
        .metadata_mut()
        .insert("exception", MetadataValue::from_static(exception));
    status
}

pub fn access_denied(message: impl Into<String>) -> Status {
    with_exception(Code::PermissionDenied, message, "access-denied")
}

pub fn not_authenticated(message: impl Into<String>) -> Status {
    with_exception(Code::Unauthenticated, message, "not-authenticated")
}

pub fn invalid_argument(message: impl Into<String>) -> Status {
    with_exception(Code::InvalidArgument, message, "invalid-argument")
}

pub fn stream_deleted(stream: &str) -> Status {
    let mut status = with_exception(
        Code::FailedPrecondition,
        format!("Event stream '{stream}' is deleted."),
        "stream-deleted",
    );
    if let Ok(name) = MetadataValue::try_from(stream) {
        status.metadata_mut().insert("stream-name", name);
    }
    status
}

pub fn maximum_append_size_exceeded(max_bytes: usize) -> Status {
    let mut status = with_exception(
        Code::InvalidArgument,
        format!("an event or append is larger than {max_bytes} bytes"),
        "maximum-append-size-exceeded",
    );
    status
        .metadata_mut()
        .insert("maximum-append-size", MetadataValue::from(max_bytes as u64));
    status
}

/// A wrong expected revision where the protocol has no reply message for it (Delete,
/// Tombstone): a status, with the revisions in headers as EventStoreDB sends them.
pub fn wrong_expected_version(stream: &str, expected: String, actual: String) -> Status {
    let mut status = with_exception(
        Code::FailedPrecondition,
        format!("Append failed due to WrongExpectedVersion. Stream: {stream}, Expected version: {expected}, Actual version: {actual}"),
        "wrong-expected-version",
    );
    for (key, value) in [
        ("stream-name", stream.to_owned()),
        ("expected-version", expected),
        ("actual-version", actual),
    ] {
        if let Ok(value) = MetadataValue::try_from(value.as_str()) {
            status.metadata_mut().insert(key, value);
        }
    }
    status
}

/// Maps a store error that the calling code did not handle itself.
pub fn from_store(error: StoreError) -> Status {
    match error {
        StoreError::InvalidRequest { field, reason } => {
            invalid_argument(format!("invalid {field}: {reason}"))
        }
        StoreError::DuplicateEventId { event_id } => invalid_argument(format!(
            "event id {event_id} is already in the log with other content"
        )),
        StoreError::CommandIdReused { .. } => {
            invalid_argument("these event ids were already appended with other events")
        }
        StoreError::Unavailable(reason) => Status::unavailable(reason),
        StoreError::Overloaded(reason) => Status::resource_exhausted(reason),
        // The endpoint's appends carry no guard keys; mapped for completeness.
        e @ (StoreError::WrongExpectedVersion { .. }
        | StoreError::StreamMoved { .. }
        | StoreError::AlreadyAnswered { .. }) => Status::failed_precondition(e.to_string()),
        StoreError::Database(reason) | StoreError::Corrupt(reason) => {
            tracing::error!(error = %reason, "event store failure behind the esdb endpoint");
            Status::internal("the event store failed")
        }
    }
}

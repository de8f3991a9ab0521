//! Time travel for auditors: any aggregate's state as it was at a moment or after a
//! version of its stream, replayed from the stored events with the domain's own
//! `evolve`, together with the events that led there. The HTTP route
//! (`/v1/audit/aggregates/{stream_id}`) and `commerce audit aggregate` share it.
//!
//! The aggregate type comes from the stream's category. Every aggregate type is one
//! name in the [`aggregates!`] invocation below.

use chrono::{DateTime, Utc};
use domain::{Aggregate, DecodeError, DomainEvent};
use eventstore::{category_of, Direction, EventStore, RecordedEvent, StoreError};
use serde::Serialize;
use serde_json::Value;

/// Most events an answer lists; a longer history is still replayed in full, and the
/// answer lists its last events and says how many it left out.
pub const AGGREGATE_EVENTS_MAX: usize = 10_000;
/// Events read from the store per page while replaying.
const REPLAY_PAGE_EVENTS: usize = 1_000;

/// Which state of the stream to replay to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// Every event.
    Latest,
    /// The events up to and including this version (0: none).
    Version(u64),
    /// The events recorded at or before this moment.
    Time(DateTime<Utc>),
}

/// An aggregate's state as of a moment, and the events that led there.
#[derive(Debug, Clone, Serialize)]
pub struct AggregateAsOf {
    pub stream_id: String,
    /// The aggregate type (the stream's category).
    pub aggregate: &'static str,
    /// The version of the state: how many of the stream's events it folds (0: the
    /// aggregate did not exist yet).
    pub version: u64,
    /// The stream's version now.
    pub stream_version: u64,
    /// The moment asked for, if one was.
    pub at: Option<DateTime<Utc>>,
    /// When the last event folded was recorded.
    pub last_recorded_at: Option<DateTime<Utc>>,
    /// The aggregate's state in its serde form (the form snapshots use).
    pub state: Value,
    /// The events folded, in version order (the last [`AGGREGATE_EVENTS_MAX`]).
    pub events: Vec<RecordedEvent>,
    /// Events folded but not listed (the earliest ones).
    pub events_omitted: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TimeTravelError {
    #[error("stream {stream_id:?} is not an aggregate's: its category must be one of {known}")]
    UnknownAggregate { stream_id: String, known: String },
    #[error("stream {0:?} does not exist")]
    NoStream(String),
    #[error("stream {stream_id:?} has {stream_version} events; version {asked} is past its end")]
    VersionPastEnd {
        stream_id: String,
        stream_version: u64,
        asked: u64,
    },
    #[error("event {version} of stream {stream_id:?} cannot be decoded: {source}")]
    Undecodable {
        stream_id: String,
        version: u64,
        source: DecodeError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Declares the aggregate types time travel knows: [`AGGREGATE_TYPES`] and the
/// dispatch on a stream's category. Adding an aggregate is adding its name here.
macro_rules! aggregates {
    ($($aggregate:ty),+ $(,)?) => {
        /// The stream categories of the aggregates time travel replays.
        pub const AGGREGATE_TYPES: &[&str] = &[$(<$aggregate as Aggregate>::CATEGORY),+];

        /// The state of the aggregate in `stream_id` as of `as_of`.
        pub async fn aggregate_as_of(
            store: &dyn EventStore,
            stream_id: &str,
            as_of: AsOf,
        ) -> Result<AggregateAsOf, TimeTravelError> {
            let category = category_of(stream_id);
            $(
                if category == <$aggregate as Aggregate>::CATEGORY {
                    return replay::<$aggregate>(store, stream_id, as_of).await;
                }
            )+
            Err(TimeTravelError::UnknownAggregate {
                stream_id: stream_id.to_owned(),
                known: AGGREGATE_TYPES.join(", "),
            })
        }
    };
}

aggregates!(
    domain::Product,
    domain::Inventory,
    domain::Cart,
    domain::Order,
    domain::Payment,
    domain::Checkout,
);

/// Reads the stream forward page by page and folds each event until `as_of` is
/// passed. Only the last [`AGGREGATE_EVENTS_MAX`] events are kept for the answer.
async fn replay<A>(
    store: &dyn EventStore,
    stream_id: &str,
    as_of: AsOf,
) -> Result<AggregateAsOf, TimeTravelError>
where
    A: Aggregate + Serialize,
{
    let stream_version = store.stream_version(stream_id).await?;
    if stream_version == 0 {
        return Err(TimeTravelError::NoStream(stream_id.to_owned()));
    }
    if let AsOf::Version(asked) = as_of {
        if asked > stream_version {
            return Err(TimeTravelError::VersionPastEnd {
                stream_id: stream_id.to_owned(),
                stream_version,
                asked,
            });
        }
    }
    let mut state = A::default();
    let mut version = 0u64;
    let mut kept: std::collections::VecDeque<RecordedEvent> = std::collections::VecDeque::new();
    let mut omitted = 0u64;
    let mut last_recorded_at = None;
    'pages: while version < stream_version {
        let page = store
            .read_stream(
                stream_id,
                version + 1,
                Direction::Forward,
                REPLAY_PAGE_EVENTS,
            )
            .await?;
        if page.is_empty() {
            break;
        }
        for recorded in page {
            let included = match as_of {
                AsOf::Latest => true,
                AsOf::Version(upto) => recorded.version <= upto,
                AsOf::Time(at) => recorded.recorded_at <= at,
            };
            if !included {
                break 'pages;
            }
            if recorded.version != version + 1 {
                return Err(StoreError::Corrupt(format!(
                    "stream {stream_id} jumps from version {version} to {}",
                    recorded.version
                ))
                .into());
            }
            let event = A::Event::from_stored(
                &recorded.event_type,
                recorded.schema_version,
                recorded.data.clone(),
            )
            .map_err(|source| TimeTravelError::Undecodable {
                stream_id: stream_id.to_owned(),
                version: recorded.version,
                source,
            })?;
            state = state.evolve(&event);
            version = recorded.version;
            last_recorded_at = Some(recorded.recorded_at);
            if kept.len() == AGGREGATE_EVENTS_MAX {
                kept.pop_front();
                omitted += 1;
            }
            kept.push_back(recorded);
        }
    }
    let state = serde_json::to_value(&state).map_err(|e| {
        StoreError::Corrupt(format!("the state of {stream_id} does not serialise: {e}"))
    })?;
    Ok(AggregateAsOf {
        stream_id: stream_id.to_owned(),
        aggregate: A::CATEGORY,
        version,
        stream_version,
        at: match as_of {
            AsOf::Time(at) => Some(at),
            AsOf::Latest | AsOf::Version(_) => None,
        },
        last_recorded_at,
        state,
        events: kept.into(),
        events_omitted: omitted,
    })
}

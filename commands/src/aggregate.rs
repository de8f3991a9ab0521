//! What the pipeline needs of an aggregate beyond `decide`/`evolve`: the stream a
//! command targets, and a snapshot form of the state. Also the conversions between
//! domain events and the store's envelopes.

use domain::{
    Aggregate, Cart, CartCommand, Checkout, CheckoutCommand, DomainEvent, Inventory, Order,
    OrderCommand, Payment, PaymentCommand, Product, ProductCommand,
};
use eventstore::{CanonicalJson, EventData, NewEvent, RecordedEvent};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use crate::privacy::PERSONAL_DATA;
use crate::{CommandContext, CommandError};

pub trait StreamAggregate: Aggregate<Event: Serialize> + Serialize + DeserializeOwned {
    /// The version of the state's serde form. Bump it whenever a field of the state
    /// changes shape or meaning: snapshots of other versions are then ignored and
    /// the state is rebuilt from the log.
    const SNAPSHOT_SCHEMA: u32;

    /// The stream `command` is decided against.
    fn stream_of(command: &Self::Command) -> String;

    /// Whether `command` begins its stream (a cart's creation, an order's
    /// placement). A stream task that does not hold the stream decides such a command
    /// against the empty state instead of loading it: the append expects no stream,
    /// which checks the guess. Should the stream exist after all, the append (or, for
    /// a refusal, the version read) says so, and the round is decided again on the
    /// loaded state. A new stream's load finds nothing, at the price of a snapshot
    /// lookup and a read.
    fn begins_stream(_command: &Self::Command) -> bool {
        false
    }
}

impl StreamAggregate for Product {
    const SNAPSHOT_SCHEMA: u32 = 1;
    fn stream_of(command: &Self::Command) -> String {
        command.stream_id()
    }
    fn begins_stream(command: &Self::Command) -> bool {
        matches!(command, ProductCommand::CreateProduct { .. })
    }
}

impl StreamAggregate for Inventory {
    const SNAPSHOT_SCHEMA: u32 = 1;
    fn stream_of(command: &Self::Command) -> String {
        command.stream_id()
    }
}

impl StreamAggregate for Cart {
    const SNAPSHOT_SCHEMA: u32 = 1;
    fn stream_of(command: &Self::Command) -> String {
        command.stream_id()
    }
    fn begins_stream(command: &Self::Command) -> bool {
        matches!(command, CartCommand::CreateCart { .. })
    }
}

impl StreamAggregate for Order {
    const SNAPSHOT_SCHEMA: u32 = 1;
    fn stream_of(command: &Self::Command) -> String {
        command.stream_id()
    }
    fn begins_stream(command: &Self::Command) -> bool {
        matches!(command, OrderCommand::PlaceOrder { .. })
    }
}

impl StreamAggregate for Payment {
    const SNAPSHOT_SCHEMA: u32 = 1;
    fn stream_of(command: &Self::Command) -> String {
        command.stream_id()
    }
    fn begins_stream(command: &Self::Command) -> bool {
        matches!(
            command,
            PaymentCommand::Authorize { .. } | PaymentCommand::RecordDecline { .. }
        )
    }
}

impl StreamAggregate for Checkout {
    const SNAPSHOT_SCHEMA: u32 = 1;
    fn stream_of(command: &Self::Command) -> String {
        command.stream_id()
    }
    fn begins_stream(command: &Self::Command) -> bool {
        matches!(command, CheckoutCommand::Start { .. })
    }
}

/// The store's form of a domain event, with the command's metadata. Event ids are
/// time-ordered (v7): the store's unique index on them stays append-mostly.
///
/// The data is written as canonical JSON straight from the event, the same text
/// `to_data` gives once canonical, without building its value tree first; an event
/// the writer cannot be sure of takes the value route.
pub(crate) fn to_new_event<E: DomainEvent + Serialize>(
    event: &E,
    context: &CommandContext,
) -> NewEvent {
    // Events with personal fields are sealed as values (the privacy layer rewrites
    // their address objects), so they take the value route from the start.
    let personal = PERSONAL_DATA
        .iter()
        .any(|rule| rule.event_type == event.event_type());
    let written = if personal {
        None
    } else {
        CanonicalJson::of_variant(event).ok()
    };
    let data = match written {
        Some(text) => {
            // Every test that writes an event checks the two routes agree.
            debug_assert_eq!(
                String::from_utf8_lossy(text.as_bytes()),
                String::from_utf8_lossy(&eventstore::hash::canonical_json(&event.to_data())),
                "{} written straight differs from its value's canonical JSON",
                event.event_type()
            );
            EventData::Canonical(text)
        }
        None => EventData::Value(event.to_data()),
    };
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: event.event_type().to_owned(),
        schema_version: event.schema_version(),
        data,
        metadata: context.metadata(),
    }
}

/// The domain event in a stored envelope, upcast to its current schema version. The
/// envelope's data is moved into the event (it is left `null`), not copied.
pub(crate) fn decode<E: DomainEvent>(recorded: &mut RecordedEvent) -> Result<E, CommandError> {
    E::from_stored(
        &recorded.event_type,
        recorded.schema_version,
        std::mem::take(&mut recorded.data),
    )
    .map_err(|source| CommandError::Decode {
        stream: recorded.stream_id.clone(),
        version: recorded.version,
        source,
    })
}

//! Builders for test values and the storage round trip every replay goes through.

use std::fmt::Debug;

use chrono::{DateTime, TimeZone, Utc};
use domain::{Aggregate, Currency, DomainError, DomainEvent, Money, Quantity, Sku, WarehouseId};
use uuid::Uuid;

pub fn id<T: From<Uuid>>(n: u128) -> T {
    T::from(Uuid::from_u128(n))
}

pub fn sku(code: &str) -> Sku {
    Sku::parse(code).unwrap()
}

pub fn warehouse(code: &str) -> WarehouseId {
    WarehouseId::parse(code).unwrap()
}

pub fn qty(n: u32) -> Quantity {
    Quantity::new(n).unwrap()
}

pub fn currency(code: &str) -> Currency {
    Currency::parse(code).unwrap()
}

pub fn eur(minor: i64) -> Money {
    Money::new(minor, currency("EUR"))
}

pub fn usd(minor: i64) -> Money {
    Money::new(minor, currency("USD"))
}

/// A point in time, `secs` seconds after a fixed epoch.
pub fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
}

/// The event as a reader of the store gets it back: type, version and JSON text.
pub fn stored<E: DomainEvent + Debug>(event: &E) -> E {
    let text = serde_json::to_string(&event.to_data()).unwrap();
    let data = serde_json::from_str(&text).unwrap();
    E::from_stored(event.event_type(), event.schema_version(), data)
        .unwrap_or_else(|e| panic!("{event:?} does not decode back: {e}"))
}

/// Decides `command` and folds the events (through the storage round trip) into the
/// state.
pub fn apply<A: Aggregate>(state: A, command: &A::Command) -> Result<A, DomainError>
where
    A::Event: Debug,
{
    let events = state.decide(command)?;
    Ok(events.iter().fold(state, |s, e| s.evolve(&stored(e))))
}

/// The state after `commands`, each of which must be accepted.
pub fn given<A: Aggregate>(commands: &[A::Command]) -> A
where
    A::Event: Debug,
    A::Command: Debug,
{
    commands.iter().fold(A::default(), |state, command| {
        apply(state, command).unwrap_or_else(|e| panic!("{command:?} was refused: {e:?}"))
    })
}

/// The single event that `command` decides to.
pub fn decide_one<A: Aggregate>(state: &A, command: &A::Command) -> A::Event
where
    A::Event: Debug,
{
    let mut events = state.decide(command).unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    events.remove(0)
}

/// The error that `command` is refused with.
pub fn refusal<A: Aggregate>(state: &A, command: &A::Command) -> DomainError
where
    A::Event: Debug,
{
    match state.decide(command) {
        Ok(events) => panic!("accepted, deciding {events:?}"),
        Err(e) => e,
    }
}

//! Faults on purpose: a TCP proxy that delays, drops, resets or black-holes the
//! engine's connections to PostgreSQL and to the payment provider, and the
//! scenarios that run the engine under load through it and count what was lost or
//! duplicated (`commerce bench chaos`, and the fault tests).

pub mod proxy;
pub mod scenarios;
pub mod shop;

pub use proxy::{Fault, FaultProxy};

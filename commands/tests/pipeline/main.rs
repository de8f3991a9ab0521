//! The command side end to end: every aggregate's commands through the pipeline, on
//! PostgreSQL and on the memory store, checked against the log itself.

mod support;

mod cart;
mod concurrency;
mod idempotency;
mod inventory;
mod order;
mod payment;
mod product;
mod schema;
mod snapshots;
mod streams;

//! The EventStoreDB-compatible endpoint, spoken to by the official `eventstore` client
//! (and, for what that client never sends, by a raw gRPC client) against the real
//! server on a random port with a database of its own.

// The HTTP tests' harness, shared rather than copied: the HTTP API and its database.
#[path = "../http/support.rs"]
#[allow(dead_code)] // this binary uses only part of the harness
mod http_support;
mod support;

mod appends;
mod bad_input;
mod http_to_grpc;
mod metadata;
mod reads;
mod rules;
mod subscriptions;
mod tls;

//! The read side against a real PostgreSQL server: each read model's rows after a
//! known history, rebuilds equal to the live models, a worker killed mid-batch,
//! poison events, lease takeover, read-your-writes and the query functions. One test
//! binary keeps link time down; every test has a database of its own.

mod crash;
mod lease;
mod poison;
mod queries;
mod read_models;
mod rebuild;
mod support;

//! The HTTP API, tested as a client sees it: each test starts the real server on a
//! random port with a database of its own and talks HTTP to it.

mod audit;
mod auth;
mod bad_input;
mod binary;
mod checkouts;
mod commands;
mod demo;
mod idempotency;
mod limits;
mod operations;
mod privacy;
mod reads;
mod roles;
mod saga_crash;
mod search;
mod security;
mod support;
mod time_travel;
mod webhooks;

//! The engine's edge: the HTTP API ([`http`]), the managed local PostgreSQL that
//! `commerce serve` runs when no `DATABASE_URL` is given ([`managed_pg`]), the
//! `serve` and `token` commands ([`serve`], [`token`]). The `commerce` binary
//! (`main.rs`) parses the command line and calls these; the integration tests start
//! the same server in-process on a random port.

pub mod chaos;
pub mod demo;
pub mod esdb;
pub mod http;
pub mod managed_pg;
pub mod privacy;
pub mod saga;
pub mod serve;
pub mod time_travel;
pub mod token;

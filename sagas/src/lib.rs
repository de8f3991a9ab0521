//! Process managers of the engine: the checkout saga and its compensations.
//!
//! A checkout's own state is an event stream (`domain::Checkout`). The [`SagaRunner`]
//! follows the log from a durable checkpoint; for each event of a checkout it decides
//! the next steps purely ([`react`]), runs them against the other aggregates (through
//! `commands`) and the payment provider ([`PaymentGateway`]), and records each step's
//! outcome on the checkout stream, which is the next event it reacts to. Every command
//! id and idempotency key is derived from the checkout, so a step re-run after a crash
//! is answered with its first outcome. Deadlines (the checkout's timeout, payment
//! retries, reservation expiries) are rows in [`SagaStore`] that the [`TimerWorker`]
//! fires. On PostgreSQL one process at a time holds the runner's lease.
//!
//! The production [`PaymentGateway`] is [`psp::HttpGateway`]:
//! `HttpGateway::new(HttpGatewayConfig::new(url))?`, its timeouts, retries and
//! circuit breaker being fields of the config. The provider it talks to in development
//! and tests is the sandbox, `psp::Sandbox::start(address).await?`, whose `url()` is
//! that `url`; `commerce psp` serves the same sandbox on its own.

pub mod config;
mod dispatch;
mod error;
pub mod gateway;
pub mod psp;
pub mod react;
mod runner;
pub mod store;
pub mod testing;
mod timers;

pub use config::{Clock, ManualClock, SagaConfig, SystemClock};
pub use error::SagaError;
pub use gateway::{
    Authorization, AuthorizeRequest, GatewayError, MoneyMovement, PaymentGateway, Receipt,
};
pub use react::{react, Step};
pub use runner::{CrashSwitch, SagaRunner, SAGA_ACTOR};
pub use store::{
    MemorySagaStore, PostgresSagaStore, SagaStore, Timer, TimerAction, SAGAS_MIGRATIONS,
};
pub use timers::TimerWorker;

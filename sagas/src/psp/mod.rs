//! The payment provider: the engine's client ([`HttpGateway`], the production
//! [`crate::PaymentGateway`]), the sandbox provider it talks to in development and
//! tests ([`Sandbox`], served by `commerce psp`), the JSON both speak ([`wire`]),
//! and the signed callbacks the provider sends back ([`webhook`]).
//!
//! ```no_run
//! use sagas::psp::{HttpGateway, HttpGatewayConfig, Sandbox};
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let sandbox = Sandbox::start("127.0.0.1:0".parse()?).await?;
//! let gateway = HttpGateway::new(HttpGatewayConfig::new(sandbox.url()))?;
//! # Ok(()) }
//! ```

pub mod breaker;
mod client;
mod ledger;
pub mod sandbox;
pub mod webhook;
pub mod wire;

pub use breaker::BreakerState;
pub use client::{
    ClientBuildError, HttpGateway, HttpGatewayConfig, BACKOFF_INITIAL_MS, BACKOFF_MAX_MS,
    BREAKER_COOLDOWN_MS, BREAKER_FAILURE_THRESHOLD, CONNECT_TIMEOUT_MS, MAX_ATTEMPTS,
    REQUEST_TIMEOUT_MS,
};
pub use ledger::{TestToken, AMOUNT_MAX_MINOR, REFUNDS_MAX_PER_AUTHORIZATION};
pub use sandbox::{Sandbox, SandboxConfig, SandboxStats, WebhookTarget};
pub use webhook::{
    Recorded, VerifiedWebhook, WebhookConfig, WebhookError, WebhookInbox, WebhookVerifier,
};

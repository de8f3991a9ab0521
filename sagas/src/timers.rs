//! The timer worker: fires the saga's durable deadlines when they are due. A checkout
//! timer becomes a `FireTimer` command on the checkout (whose command id is the
//! timer's id, so firing twice records once); a reservation expiry expires the SKU's
//! due reservations. A timer row is deleted only after it fired, so a crash in
//! between fires it again, harmlessly.

use std::sync::Arc;

use commands::{CommandContext, CommandError, Commands};
use domain::{CheckoutCommand, DomainError, InventoryCommand, EXPIRE_MAX_RESERVATIONS};
use uuid::Uuid;

use crate::dispatch::SAGA_ACTOR;
use crate::{Clock, SagaConfig, SagaError, SagaStore, Timer, TimerAction};

/// Most `ExpireReservations` commands per timer: each expires up to
/// `EXPIRE_MAX_RESERVATIONS`, so one timer expires at most this many times that.
const EXPIRE_ROUNDS_MAX: u32 = 100;

pub struct TimerWorker {
    commands: Commands,
    store: Arc<dyn SagaStore>,
    clock: Arc<dyn Clock>,
    config: SagaConfig,
}

impl TimerWorker {
    pub fn new(
        commands: Commands,
        store: Arc<dyn SagaStore>,
        clock: Arc<dyn Clock>,
        config: SagaConfig,
    ) -> Self {
        TimerWorker {
            commands,
            store,
            clock,
            config,
        }
    }

    /// Fires the timers due now (up to `timer_batch_max`); returns how many fired.
    pub async fn fire_due(&self) -> Result<usize, SagaError> {
        let now = self.clock.now();
        let due = self.store.due(now, self.config.timer_batch_max).await?;
        let fired = futures::future::join_all(due.iter().map(|timer| self.fire(timer))).await;
        let mut done = Vec::with_capacity(due.len());
        let mut first_error = None;
        for (timer, outcome) in due.iter().zip(fired) {
            match outcome {
                Ok(()) => done.push(timer.id),
                Err(error) => {
                    tracing::warn!(timer = %timer.id, %error, "timer not fired; it stays due");
                    first_error.get_or_insert(error);
                }
            }
        }
        self.store.complete(&done).await?;
        match first_error {
            Some(error) if done.is_empty() => Err(error),
            _ => Ok(done.len()),
        }
    }

    /// Fires due timers until stopped, every `timer_poll`.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            match self.fire_due().await {
                Ok(n) if n == self.config.timer_batch_max => continue,
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "timer worker round failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.timer_poll) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn fire(&self, timer: &Timer) -> Result<(), SagaError> {
        let context = CommandContext {
            command_id: timer.id,
            correlation_id: timer.id,
            causation_id: None,
            actor: SAGA_ACTOR.to_owned(),
            guard: None,
        };
        match &timer.action {
            TimerAction::Checkout {
                checkout_id,
                timer: which,
            } => {
                let fired = self
                    .commands
                    .checkouts()
                    .execute(
                        CheckoutCommand::FireTimer {
                            checkout_id: *checkout_id,
                            timer: *which,
                            at: self.clock.now(),
                        },
                        &context,
                    )
                    .await;
                match fired {
                    Ok(_) => Ok(()),
                    // No such checkout: nothing to tell.
                    Err(CommandError::Rejected(DomainError::NotFound { .. })) => Ok(()),
                    Err(error) => Err(error.into()),
                }
            }
            TimerAction::ExpireReservations { sku } => {
                for round in 0..EXPIRE_ROUNDS_MAX {
                    let context = CommandContext {
                        command_id: Uuid::new_v5(&timer.id, &round.to_be_bytes()),
                        ..context.clone()
                    };
                    let expired = self
                        .commands
                        .inventory()
                        .execute(
                            InventoryCommand::ExpireReservations {
                                sku: sku.clone(),
                                now: self.clock.now(),
                            },
                            &context,
                        )
                        .await?;
                    if expired.events.len() < EXPIRE_MAX_RESERVATIONS {
                        break;
                    }
                }
                Ok(())
            }
        }
    }
}

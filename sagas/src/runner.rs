//! The saga runner: follows the log from its checkpoint, and for every event of a
//! checkout runs the steps `react` decides, recording their outcomes on the checkout
//! stream.
//!
//! A batch of the log is applied checkout by checkout: the events of one checkout in
//! log order (one step in flight per checkout), different checkouts side by side (up
//! to `concurrent_checkouts_max`). The checkpoint moves past the batch only when every
//! step of it ran and its timers are stored; a failure or a crash anywhere leaves the
//! checkpoint where it was, and the batch runs again. That is harmless because a
//! step's commands, provider calls and recorded outcome all carry ids derived from
//! the checkout and the event, and because each event is reacted to with the state
//! *as of* that event, so the re-run issues the very same steps.
//!
//! The order stream matters too: an order cancelled by the customer or staff (not by
//! the saga) is noted on its checkout, which then compensates (refund, restock).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use commands::{CommandContext, Commands};
use domain::{
    Aggregate, Checkout, CheckoutCommand, CheckoutEvent, CheckoutId, CheckoutStatus, CheckoutTimer,
    DomainEvent, Order, OrderEvent, OrderId,
};
use eventstore::{Direction, EventStore, LogFilter, RecordedEvent};
use futures::stream::{self, StreamExt, TryStreamExt};
use uuid::Uuid;

use crate::dispatch::{Dispatcher, StepResult};
use crate::{react, Clock, PaymentGateway, SagaConfig, SagaError, SagaStore, Step, Timer};

pub use crate::dispatch::SAGA_ACTOR;

/// Most events read per query when a checkout's stream is loaded.
const STREAM_PAGE_EVENTS: usize = 1_000;
/// Checkout states kept between batches, so the next event of a checkout needs no
/// read of its stream.
const STATE_CACHE_MAX: usize = 100_000;
/// What the runner reads of the log: the checkouts' events and the cancellations of
/// orders (`relevant` picks from these). The rest of a checkout's events (cart, order,
/// inventory, payment: two thirds of them) stay on the server.
const SAGA_LOG: LogFilter<'static> = LogFilter {
    categories: &[Checkout::CATEGORY],
    event_types: &[ORDER_CANCELLED],
};
const ORDER_CANCELLED: &str = "OrderCancelled";
/// Most positions one batch looks through: a long stretch without checkouts is
/// passed over in a few reads.
const SCAN_WINDOW_POSITIONS: u64 = 100_000;
/// Names the causation of a reservation run right after its placement.
const CHAINED_RESERVATION: &[u8] = b"chained:reserve-stock";

/// Decides whether the runner "crashes" at a named point (simulation only: a crash
/// drops everything in flight and leaves the checkpoint where it was).
pub type CrashSwitch = Arc<dyn Fn(&'static str) -> bool + Send + Sync>;

pub struct SagaRunner {
    store: Arc<dyn EventStore>,
    commands: Commands,
    gateway: Arc<dyn PaymentGateway>,
    saga_store: Arc<dyn SagaStore>,
    clock: Arc<dyn Clock>,
    config: SagaConfig,
    crash: Option<CrashSwitch>,
    /// Each checkout's state after the last event this runner applied.
    states: std::sync::Mutex<HashMap<CheckoutId, (u64, Checkout)>>,
}

/// What applying a checkout's events leaves for the end of the batch.
#[derive(Default)]
struct Applied {
    /// Timers to schedule.
    timers: Vec<Timer>,
    /// Timers that can no longer do anything, to forget.
    done_timers: Vec<Uuid>,
}

/// Whether the checkout's deadline would still cancel it.
fn awaits_deadline(state: &Checkout) -> bool {
    state
        .status()
        .is_some_and(CheckoutStatus::before_confirmation)
}

enum Work {
    Checkout(Box<RecordedEvent>),
    OrderCancelled {
        position: u64,
        event_id: Uuid,
        reason: String,
    },
}

impl SagaRunner {
    pub fn new(
        store: Arc<dyn EventStore>,
        commands: Commands,
        gateway: Arc<dyn PaymentGateway>,
        saga_store: Arc<dyn SagaStore>,
        clock: Arc<dyn Clock>,
        config: SagaConfig,
    ) -> Self {
        SagaRunner {
            store,
            commands,
            gateway,
            saga_store,
            clock,
            config,
            crash: None,
            states: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Simulation: crash where `crash` says so.
    pub fn with_crashes(mut self, crash: CrashSwitch) -> Self {
        self.crash = Some(crash);
        self
    }

    fn crash_point(&self, point: &'static str) -> Result<(), SagaError> {
        match &self.crash {
            Some(crash) if crash(point) => Err(SagaError::Crashed { point }),
            _ => Ok(()),
        }
    }

    /// Applies one batch of the log after the checkpoint. Returns the number of log
    /// positions it covered (0: nothing new).
    pub async fn run_batch(&self) -> Result<usize, SagaError> {
        let from = self.saga_store.checkpoint().await?;
        let (events, last) = self
            .store
            .read_all_matching(
                from,
                self.config.batch_max_events,
                &SAGA_LOG,
                SCAN_WINDOW_POSITIONS,
            )
            .await?;
        if last <= from {
            return Ok(0);
        }
        let count = usize::try_from(last - from).unwrap_or(usize::MAX);
        // Group the batch per checkout, in log order within each.
        let mut order: Vec<CheckoutId> = Vec::new();
        let mut groups: HashMap<CheckoutId, Vec<Work>> = HashMap::new();
        for event in events {
            let Some((id, work)) = relevant(event)? else {
                continue;
            };
            groups
                .entry(id)
                .or_insert_with(|| {
                    order.push(id);
                    Vec::new()
                })
                .push(work);
        }
        let jobs = order
            .into_iter()
            .filter_map(|id| groups.remove(&id).map(|w| (id, w)));
        // The first failure drops the steps still in flight, as a crash would: the
        // batch runs again from the checkpoint either way.
        let applied = stream::iter(jobs)
            .map(|(id, work)| self.apply_checkout(id, work))
            .buffer_unordered(self.config.concurrent_checkouts_max.max(1))
            .try_fold(Applied::default(), |mut all, one| async move {
                all.timers.extend(one.timers);
                all.done_timers.extend(one.done_timers);
                Ok(all)
            })
            .await?;
        self.crash_point("before-timers")?;
        // Reservations of one SKU expiring in the same second share a timer: a full
        // batch holds thousands of copies of a few.
        let mut timers = applied.timers;
        let mut seen = HashSet::with_capacity(timers.len());
        timers.retain(|timer| seen.insert(timer.id));
        self.saga_store.schedule(&timers).await?;
        // After the scheduling: a deadline scheduled and passed in the same batch
        // goes too. A crash before this leaves a timer that fires and does nothing.
        if !applied.done_timers.is_empty() {
            self.saga_store.complete(&applied.done_timers).await?;
        }
        self.crash_point("before-checkpoint")?;
        if !self.saga_store.advance(from, last).await? {
            return Err(SagaError::LeaseLost);
        }
        Ok(count)
    }

    /// Runs batches until stopped: waits for new events when idle, for the lease
    /// when another process holds it, and after a failed batch starts again from
    /// the checkpoint.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut idle_head = 0;
        loop {
            if *stop.borrow() {
                return;
            }
            let pause = match self.saga_store.try_lease().await {
                Ok(true) => match self.run_batch().await {
                    Ok(0) => {
                        let head = self.store.head().await.unwrap_or(idle_head);
                        idle_head = head;
                        tokio::select! {
                            _ = self.store.wait_for_head(head, self.config.idle_wait) => {}
                            _ = stop.changed() => {}
                        }
                        None
                    }
                    Ok(_) => None,
                    Err(error) => {
                        tracing::warn!(%error, "saga batch failed; retrying from the checkpoint");
                        self.forget_states();
                        Some(self.config.lease_retry)
                    }
                },
                Ok(false) => Some(self.config.lease_retry),
                Err(error) => {
                    tracing::warn!(%error, "cannot take the saga lease");
                    Some(self.config.lease_retry)
                }
            };
            if let Some(pause) = pause {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }

    fn forget_states(&self) {
        self.states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    /// The checkout's state as of `version`: taken from the cache when it holds
    /// exactly the version before (`remember` puts the next one back), else by reading
    /// the stream.
    async fn state_before(&self, id: CheckoutId, version: u64) -> Result<Checkout, SagaError> {
        let cached = self
            .states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        if let Some((cached, state)) = cached {
            if cached + 1 == version {
                return Ok(state);
            }
        }
        let stream_id = Checkout::stream_id(&id);
        let mut state = Checkout::default();
        let mut next = 1;
        while next < version {
            let limit = STREAM_PAGE_EVENTS.min((version - next) as usize);
            let page = self
                .store
                .read_stream(&stream_id, next, Direction::Forward, limit)
                .await?;
            if page.is_empty() {
                break;
            }
            for mut recorded in page {
                state = state.evolve(&decode::<CheckoutEvent>(&mut recorded)?);
                next = recorded.version + 1;
            }
        }
        Ok(state)
    }

    fn remember(&self, id: CheckoutId, version: u64, state: Checkout) {
        let mut states = self
            .states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let done = matches!(
            state.status(),
            Some(CheckoutStatus::Rejected | CheckoutStatus::Cancelled)
        );
        if done {
            states.remove(&id);
            return;
        }
        if states.len() >= STATE_CACHE_MAX && !states.contains_key(&id) {
            // A full cache costs a stream read later, never a wrong state.
            states.clear();
        }
        states.insert(id, (version, state));
    }

    async fn apply_checkout(&self, id: CheckoutId, work: Vec<Work>) -> Result<Applied, SagaError> {
        let mut applied = Applied::default();
        for item in work {
            match item {
                Work::Checkout(mut recorded) => {
                    let event = match decode::<CheckoutEvent>(&mut recorded) {
                        Ok(event) => event,
                        // This build cannot read the event: this checkout stays
                        // where it is (its status shows where, the log says why)
                        // rather than every other checkout stopping behind it.
                        Err(error) => {
                            tracing::error!(checkout = %id, %error, "checkout event cannot be read; checkout skipped");
                            return Ok(applied);
                        }
                    };
                    let before = self.state_before(id, recorded.version).await?;
                    let awaited_deadline = awaits_deadline(&before);
                    let state = before.evolve(&event);
                    if awaited_deadline && !awaits_deadline(&state) {
                        // Confirmed, or compensating: the deadline's row would only
                        // fire to no effect (after `checkout_timeout`, for every
                        // checkout), so it goes with this batch.
                        let deadline =
                            Timer::for_checkout(id, CheckoutTimer::Deadline, self.clock.now());
                        applied.done_timers.push(deadline.id);
                    }
                    for step in react(&state, &event) {
                        self.crash_point("before-step")?;
                        let name = step.name();
                        let places = matches!(step, Step::PlaceOrder { .. });
                        let mut result = self.run_step(step, recorded.event_id).await?;
                        if places {
                            result = self
                                .reserve_after(&state, recorded.event_id, result)
                                .await?;
                        }
                        self.crash_point("before-record")?;
                        applied
                            .timers
                            .extend(self.record(id, recorded.event_id, name, result).await?);
                    }
                    self.remember(id, recorded.version, state);
                }
                Work::OrderCancelled {
                    position,
                    event_id,
                    reason,
                } => {
                    self.crash_point("before-note")?;
                    let noted = self
                        .commands
                        .checkouts()
                        .execute(
                            CheckoutCommand::NoteOrderCancelled {
                                checkout_id: id,
                                reason,
                                at: self.clock.now(),
                            },
                            &saga_context(id, event_id, "note-order-cancelled"),
                        )
                        .await;
                    match noted {
                        Ok(_) => {}
                        // An order no checkout placed.
                        Err(commands::CommandError::Rejected(domain::DomainError::NotFound {
                            ..
                        })) => {
                            tracing::debug!(position, "order cancelled outside a checkout");
                        }
                        Err(error) => return Err(error.into()),
                    }
                }
            }
        }
        Ok(applied)
    }

    async fn run_step(&self, step: Step, causation: Uuid) -> Result<StepResult, SagaError> {
        let name = step.name();
        tokio::time::timeout(
            self.config.step_timeout,
            self.dispatcher().run(step, causation),
        )
        .await
        .map_err(|_| SagaError::Timeout {
            step: name,
            timeout_ms: self.config.step_timeout.as_millis() as u64,
        })?
    }

    /// Runs the step that a placed order calls for (reserving its lines) right
    /// after the placement, before either outcome is recorded, and returns both
    /// outcomes to be recorded in one append: a round of the runner and an append
    /// on the checkout stream less for every checkout.
    ///
    /// The next step is the one `react` decides on the state after the outcome, as
    /// the runner would on reading it from the log; it is found here by deciding the
    /// outcome on a copy of the state. Its causation derives from the event the
    /// placement reacted to, so a re-run after a crash issues the same commands. When
    /// the runner later reads the recorded placement, the reservation's outcome is on
    /// the checkout already and [`Dispatcher::run`] skips the step.
    ///
    /// Only this pair runs ahead of its record: reserving stock that is not yet
    /// recorded as placed is undone like a placement that answered late. A step that
    /// moves money waits for the record before it, so that a compensation started
    /// meanwhile knows what the provider may hold.
    async fn reserve_after(
        &self,
        state: &Checkout,
        causation: Uuid,
        mut result: StepResult,
    ) -> Result<StepResult, SagaError> {
        let mut local = state.clone();
        let mut next = Vec::new();
        for command in &result.record {
            // A refusal here is found again (and handled) when the outcome is
            // recorded; there is nothing to chain on.
            let Ok(events) = local.decide(command) else {
                return Ok(result);
            };
            for event in &events {
                local = local.evolve(event);
                next.extend(react(&local, event));
            }
        }
        let [Step::ReserveStock { .. }] = next.as_slice() else {
            return Ok(result);
        };
        self.crash_point("before-step")?;
        for step in next {
            let chained = self
                .run_step(step, Uuid::new_v5(&causation, CHAINED_RESERVATION))
                .await?;
            result.record.extend(chained.record);
            result.timers.extend(chained.timers);
        }
        Ok(result)
    }

    fn dispatcher(&self) -> Dispatcher<'_> {
        Dispatcher {
            commands: &self.commands,
            gateway: self.gateway.as_ref(),
            config: &self.config,
            now: self.clock.now(),
        }
    }

    /// Records a step's outcomes on the checkout stream. The command ids come from
    /// the event and the step, so a re-run records nothing twice.
    ///
    /// The outcomes are handed to the checkout's stream task together, in order, so
    /// it decides them in one round and writes them in one append. Each is decided
    /// on the state after the ones before it, as one at a time would be.
    async fn record(
        &self,
        id: CheckoutId,
        causation: Uuid,
        step: &'static str,
        result: StepResult,
    ) -> Result<Vec<Timer>, SagaError> {
        let checkouts = self.commands.checkouts();
        let recorded = result.record.into_iter().enumerate().map(|(n, command)| {
            let context = saga_context(id, causation, &format!("record:{step}:{n}"));
            async move { checkouts.execute(command, &context).await }
        });
        // `join_all` polls them in order, and each is queued at its first poll.
        for outcome in futures::future::join_all(recorded).await {
            outcome?;
        }
        Ok(result.timers)
    }
}

/// The context of a command the runner itself sends to a checkout: its id derives
/// from the event it reacts to and a name.
fn saga_context(id: CheckoutId, causation: Uuid, name: &str) -> CommandContext {
    CommandContext {
        command_id: Uuid::new_v5(&causation, name.as_bytes()),
        correlation_id: *id.as_uuid(),
        causation_id: Some(causation),
        actor: SAGA_ACTOR.to_owned(),
        guard: None,
    }
}

/// The domain event of `recorded`, whose data is moved out (left `null`).
fn decode<E: DomainEvent>(recorded: &mut RecordedEvent) -> Result<E, SagaError> {
    E::from_stored(
        &recorded.event_type,
        recorded.schema_version,
        std::mem::take(&mut recorded.data),
    )
    .map_err(|source| SagaError::Decode {
        position: recorded.position,
        source,
    })
}

/// The checkout an event concerns and what to do with it, if any.
fn relevant(mut event: RecordedEvent) -> Result<Option<(CheckoutId, Work)>, SagaError> {
    let category = event.category();
    if category == Checkout::CATEGORY {
        let Some(id) = event
            .stream_id
            .split_once('-')
            .and_then(|(_, id)| CheckoutId::parse(id).ok())
        else {
            return Ok(None);
        };
        return Ok(Some((id, Work::Checkout(Box::new(event)))));
    }
    if category == Order::CATEGORY && event.event_type == ORDER_CANCELLED {
        // The saga's own cancellations need no note: the checkout is compensating.
        if event.metadata.actor.as_deref() == Some(SAGA_ACTOR) {
            return Ok(None);
        }
        let Some(order_id) = event
            .stream_id
            .split_once('-')
            .and_then(|(_, id)| OrderId::parse(id).ok())
        else {
            return Ok(None);
        };
        let OrderEvent::OrderCancelled { reason, .. } = decode(&mut event)? else {
            return Ok(None);
        };
        return Ok(Some((
            Checkout::of_order(order_id),
            Work::OrderCancelled {
                position: event.position,
                event_id: event.event_id,
                reason,
            },
        )));
    }
    Ok(None)
}

//! The task of one stream: it owns the stream's state and decides the stream's
//! commands back to back, so a burst on a hot stream (10,000 reservations of one
//! flash-sale SKU) becomes a few large appends instead of a storm of conflicts.
//!
//! Each round takes the commands queued so far (at most `stream_batch_max_commands`),
//! decides each in turn against the state as the earlier ones left it, and appends
//! the events of all accepted commands as ONE append expecting the version the
//! round started from. That append is all or nothing. The alternative, one append
//! per command with expected versions v, v+1, v+2, ... in one `append_batch`, is not:
//! the store decides each append on its own, so if another process had written one
//! event to the stream, the first append would fail and the second (expecting v+1)
//! would succeed with a decision that counted on the first, e.g. a reservation
//! allocated from stock that is not there. One append per round rules that out.
//!
//! What the single append costs is the store's per-command idempotency when a round
//! holds several commands: the store keys idempotency by the append's command id.
//! So a round with one accepted command passes its command id to the store (a repeat
//! is answered from the store, across processes and restarts), and every round
//! records the command ids it wrote in the stream's `RecentCommands`, which answers
//! repeats of recent commands and is rebuilt from the events' metadata on load.
//!
//! Refusals and reads are answered only once the state they were decided against is
//! known to be current: by the round's append (its expected version held), or, for a
//! round that writes nothing, by reading the stream's version. Otherwise a process
//! holding a stale state (another node received stock) would keep refusing. That read
//! may start before the round is decided (a sold-out SKU's rounds of refusals): what
//! matters is that it starts after every command of the round was queued.
//!
//! A stream the task does not hold is loaded before its first round, unless the
//! first queued command begins the stream (`StreamAggregate::begins_stream`): that
//! round is decided on the empty state, and its append (expecting no stream) or its
//! version read confirms the guess. If the stream exists (the append's expected
//! version fails, or the store finds the command id with other events: a repeat
//! decided again on the empty state), the round is decided again on the loaded state,
//! which answers a repeat from its recent commands; that is not counted as a conflict.
//!
//! A conflict (another process wrote the stream) drops the state, reloads it and
//! decides the round again, at most `conflict_attempts_max` times. If an append of
//! several commands fails for a reason of its own (an event the store refuses), the
//! rest of the batch is appended one command at a time, so only the faulty command
//! fails.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use domain::DomainError;
use eventstore::{
    AppendRequest, AppendResult, Direction, ExpectedVersion, NewEvent, Precondition, StoreError,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::aggregate::{decode, to_new_event};
use crate::cache::{Held, IdSet, Recorded};
use crate::handler::{Counters, Job, Shared};
use crate::snapshot::Snapshot;
use crate::{CommandError, Committed, Loaded, Positions, StreamAggregate};

/// Most times a stream task yields to let a burst's commands join a round.
const STREAM_LINGER_YIELDS_MAX: usize = 16;
/// Fewest queued jobs for which a round reads its stream's version before deciding
/// (see `process_pending`). Deciding a handful of jobs takes microseconds, less than
/// starting the read; and a stream that takes turns between a load and a write (a
/// saga checking a checkout, then recording a step on it) would start a read for
/// every write, which the write then makes useless.
const EARLY_READ_MIN_JOBS: usize = 16;

pub(crate) async fn run<A: StreamAggregate>(
    shared: Arc<Shared<A>>,
    stream_id: String,
    task_id: u64,
    mut jobs: mpsc::Receiver<Job<A>>,
) {
    let held = shared.cache().take(&stream_id);
    let idle = shared.limits.stream_idle_timeout;
    let mut task = StreamTask {
        shared,
        stream_id,
        held,
        round_command_ids: IdSet::default(),
        pending: VecDeque::new(),
        decisions: Vec::new(),
        last_round_wrote: true,
        snapshot_due: false,
        snapshot_bytes: Arc::default(),
    };
    loop {
        let wait = if task.snapshot_due {
            task.shared.limits.snapshot_pause.min(idle)
        } else {
            idle
        };
        let first = match tokio::time::timeout(wait, jobs.recv()).await {
            Ok(Some(job)) => job,
            Ok(None) => break,
            Err(_) if task.snapshot_due => {
                task.snapshot_on_pause();
                continue;
            }
            Err(_) => {
                task.retire(task_id, &mut jobs).await;
                break;
            }
        };
        task.fill_batch(first, &mut jobs).await;
        task.process().await;
    }
    task.park();
}

struct StreamTask<A: StreamAggregate> {
    shared: Arc<Shared<A>>,
    stream_id: String,
    /// `None` until loaded, and after anything that made it doubtful.
    held: Option<Held<A>>,
    /// The command ids of the round being decided (kept to reuse its allocation).
    round_command_ids: IdSet,
    /// The jobs taken from the queue and not answered yet, and the decisions of the
    /// round being decided: kept between rounds to reuse their allocations (at most a
    /// round's worth, until the task retires). A hot stream's rounds hold hundreds of
    /// jobs, and buffers grown afresh each round cost more copying (and fresh pages)
    /// than the decisions themselves.
    pending: VecDeque<Job<A>>,
    decisions: Vec<(Job<A>, Decided<A::Event>)>,
    /// Whether the last round appended anything; see `process`.
    last_round_wrote: bool,
    /// A snapshot is due and waits for a pause in the stream's commands.
    snapshot_due: bool,
    /// The size of the stream's last snapshot, loaded or written (0: none yet).
    snapshot_bytes: Arc<AtomicU64>,
}

/// How one command (or read) of a round was decided.
enum Decided<E> {
    /// Its events are `round.events[first_event..][..events.len()]`.
    Accepted {
        events: Vec<E>,
        first_event: usize,
    },
    Refused(DomainError),
    /// Accepted with nothing to write, after `events_before` events of the round.
    NoEvents {
        events_before: usize,
    },
    /// A repeat of a command this stream recorded.
    Replay(Recorded),
    Load,
}

struct Round<A: StreamAggregate> {
    jobs: Vec<(Job<A>, Decided<A::Event>)>,
    events: Vec<NewEvent>,
    /// The other streams the accepted commands read, each at one version.
    preconditions: Vec<Precondition>,
    accepted: usize,
    /// The command id of the first accepted command.
    first_command_id: Option<Uuid>,
    /// The request keys the accepted commands answer ([`CommandContext::guard`]).
    guards: Vec<Uuid>,
}

impl<A: StreamAggregate> StreamTask<A> {
    /// `first` and what else is queued, up to a round's worth. While commands keep
    /// arriving, it yields a few times to let their senders run: at the start of a
    /// burst the queue fills a little after the first command, and a round that
    /// waits microseconds for them saves a whole append later. A lone command costs
    /// one yield.
    async fn fill_batch(&mut self, first: Job<A>, jobs: &mut mpsc::Receiver<Job<A>>) {
        let max = self.shared.limits.stream_batch_max_commands.max(1);
        let batch = &mut self.pending;
        debug_assert!(batch.is_empty(), "every job of the last batch was answered");
        batch.push_back(first);
        let mut yields = 0;
        loop {
            let before = batch.len();
            while batch.len() < max {
                match jobs.try_recv() {
                    Ok(job) => batch.push_back(job),
                    Err(_) => break,
                }
            }
            let arriving = yields == 0 || batch.len() > before;
            if batch.len() >= max || !arriving || yields >= STREAM_LINGER_YIELDS_MAX {
                return;
            }
            tokio::task::yield_now().await;
            yields += 1;
        }
    }

    /// Leaves the routing table, refuses new commands, and handles the ones that
    /// slipped into the queue before it closed. A sender that finds the queue closed
    /// starts a new task for the stream.
    async fn retire(&mut self, task_id: u64, jobs: &mut mpsc::Receiver<Job<A>>) {
        {
            let mut live = self.shared.live();
            if live.get(&self.stream_id).map(|s| s.task_id) == Some(task_id) {
                live.remove(&self.stream_id);
            }
        }
        jobs.close();
        while let Some(first) = jobs.recv().await {
            self.fill_batch(first, jobs).await;
            self.process().await;
        }
    }

    fn park(&mut self) {
        self.snapshot_on_pause();
        if let Some(held) = self.held.take() {
            self.shared.cache().park(self.stream_id.clone(), held);
        }
    }

    /// Decides and answers every job of `self.pending`.
    async fn process(&mut self) {
        let mut pending = std::mem::take(&mut self.pending);
        self.process_pending(&mut pending).await;
        debug_assert!(pending.is_empty(), "every job was answered");
        self.pending = pending;
    }

    async fn process_pending(&mut self, pending: &mut VecDeque<Job<A>>) {
        let shared = self.shared.clone();
        let limits = &shared.limits;
        let mut attempts = 0u32;
        let mut solo = false;
        // Whether a round was decided on a presumed new stream (at most once).
        let mut presumed = false;
        while !pending.is_empty() {
            // `presumed_new`: this round is decided on the empty state, not yet
            // confirmed (see `StreamAggregate::begins_stream`).
            let (mut held, presumed_new) = match self.held.take() {
                Some(held) => (held, false),
                None if !presumed && begins_stream(pending) => {
                    presumed = true;
                    (Held::empty(limits.recent_commands_per_stream), true)
                }
                None => match self.load().await {
                    Ok(held) => (held, false),
                    Err(e) => return fail_all(pending.drain(..), &e),
                },
            };
            let base_version = held.version;
            // A round that writes nothing is answered once a read of the stream's
            // version confirms the state it was decided on. After a round that wrote
            // nothing (a sold-out SKU refusing a burst), the next one most likely
            // writes nothing either: if it is a burst too ([`EARLY_READ_MIN_JOBS`]),
            // its read then starts before the round is decided and runs on a task of
            // its own meanwhile. It confirms the round's answers as well as a read
            // started after deciding, because every job of the round was queued
            // before it started.
            let early_read = (!self.last_round_wrote && pending.len() >= EARLY_READ_MIN_JOBS)
                .then(|| self.read_version_in_background());
            if early_read.is_some() {
                // The new task waits in this worker's next-task slot, which no other
                // worker steals: one yield lets it send the query (and the connection
                // task write it) before this task is busy deciding.
                tokio::task::yield_now().await;
            }
            let mut round = self.decide_round(&mut held, pending, solo, presumed_new);

            if round.jobs.is_empty() {
                // Only peeks, answered while deciding.
                if let Some(read) = early_read {
                    read.abort();
                }
                self.held = Some(held);
                continue;
            }
            if round.accepted == 0 {
                // Nothing to write: the answers stand if the state was current.
                let version = match early_read {
                    Some(read) => read.await.unwrap_or_else(|_| Err(self.stopped())),
                    None => {
                        self.within(shared.store.stream_version(&self.stream_id))
                            .await
                    }
                };
                match version {
                    Ok(version) if version == held.version => {
                        self.decisions = settle(&self.stream_id, round, &mut held, None);
                        self.held = Some(held);
                        self.last_round_wrote = false;
                    }
                    Ok(_) if presumed_new => {
                        // Not a new stream after all: decided again once loaded.
                        requeue(round, pending);
                    }
                    Ok(_) => {
                        attempts += 1;
                        Counters::add(&shared.counters.conflicts, 1);
                        requeue(round, pending);
                        if attempts >= limits.conflict_attempts_max {
                            return fail_all(pending.drain(..), &self.conflict(attempts));
                        }
                        // The state was not changed by the round: reading the events
                        // after it brings it up to date.
                        if let Err(e) = self.catch_up(&mut held).await {
                            return fail_all(pending.drain(..), &e);
                        }
                        self.held = Some(held);
                    }
                    Err(e) => {
                        fail_all(round.jobs.into_iter().map(|(job, _)| job), &e);
                        self.held = Some(held);
                    }
                }
                continue;
            }
            if let Some(read) = early_read {
                read.abort();
            }

            let written = round.events.len() as u64;
            let request = AppendRequest {
                stream_id: self.stream_id.clone(),
                expected: ExpectedVersion::Exact(base_version),
                events: std::mem::take(&mut round.events),
                command_id: if round.accepted == 1 {
                    round.first_command_id
                } else {
                    None
                },
                preconditions: std::mem::take(&mut round.preconditions),
                guards: std::mem::take(&mut round.guards),
            };
            let limit = shared.limits.store_call_timeout;
            let Ok(appended) = tokio::time::timeout(limit, shared.store.append(request)).await
            else {
                // The outcome is unknown; see the transient errors below.
                fail_all(round.jobs.into_iter().map(|(job, _)| job), &self.timeout());
                continue;
            };
            match appended {
                Ok(result) if result.stream_version == base_version + written => {
                    Counters::add(&shared.counters.appends, 1);
                    Counters::add(&shared.counters.appended_commands, round.accepted as u64);
                    held.version = result.stream_version;
                    self.decisions = settle(
                        &self.stream_id,
                        round,
                        &mut held,
                        Some((result, base_version)),
                    );
                    self.snapshot_if_due(&mut held);
                    self.held = Some(held);
                    self.last_round_wrote = true;
                }
                Ok(first_result) => {
                    // The store answered a repeat of the (single) command id with the
                    // first outcome and wrote nothing, so the state folded in events
                    // that are not in the log: drop it.
                    tracing::debug!(stream = %self.stream_id, "repeated command answered by the store");
                    answer_store_replay(&self.stream_id, round, first_result, pending);
                }
                // Not a new stream after all: its append expected none, or repeated a
                // command the stream holds (decided again on the empty state, its
                // events differ from the first ones: a re-run step's new time).
                // Decided again once loaded, where the repeat is found.
                Err(
                    StoreError::WrongExpectedVersion { .. } | StoreError::CommandIdReused { .. },
                ) if presumed_new => {
                    tracing::debug!(stream = %self.stream_id, "not a new stream; loading");
                    requeue(round, pending);
                }
                Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                    attempts += 1;
                    Counters::add(&shared.counters.conflicts, 1);
                    tracing::debug!(
                        stream = %self.stream_id, expected = base_version, actual, attempts,
                        "stream moved under the round; reloading"
                    );
                    requeue(round, pending);
                    if attempts >= limits.conflict_attempts_max {
                        return fail_all(pending.drain(..), &self.conflict(attempts));
                    }
                }
                Err(StoreError::StreamMoved {
                    stream_id,
                    read,
                    actual,
                }) => {
                    // A stream the round read has moved: the commands that read it
                    // fail (their callers read again and retry), the others are
                    // decided again. The state folded the round's events, so it is
                    // reloaded.
                    tracing::debug!(
                        stream = %self.stream_id, read_stream = %stream_id, read, actual,
                        "a stream the round read has moved"
                    );
                    let moved = StoreError::StreamMoved {
                        stream_id,
                        read,
                        actual,
                    };
                    answer_stream_moved(round, &moved, pending);
                }
                Err(StoreError::AlreadyAnswered { keys }) => {
                    // Requests the commands answer were answered before (a retry that
                    // reached another process first): those commands fail with their
                    // keys, the others are decided again. As for a moved stream, the
                    // state folded the round's events and is reloaded.
                    tracing::debug!(
                        stream = %self.stream_id, keys = keys.len(),
                        "a round's request keys were answered before"
                    );
                    answer_already_answered(round, &keys, pending);
                }
                Err(e) if e.is_transient() => {
                    // The outcome may be unknown. Callers retry with the same command
                    // ids; the reload then finds what was written in the tail.
                    tracing::warn!(stream = %self.stream_id, error = %e, "append failed");
                    fail_all(round.jobs.into_iter().map(|(job, _)| job), &e.into());
                }
                Err(e) if round.accepted > 1 => {
                    tracing::warn!(
                        stream = %self.stream_id, error = %e, commands = round.accepted,
                        "batched append refused; appending its commands one by one"
                    );
                    solo = true;
                    requeue(round, pending);
                }
                Err(e) => answer_store_error(round, e, pending),
            }
        }
    }

    fn timeout(&self) -> CommandError {
        timed_out(&self.stream_id, self.shared.limits.store_call_timeout)
    }

    fn stopped(&self) -> CommandError {
        CommandError::Stopped {
            stream: self.stream_id.clone(),
        }
    }

    /// The stream's version read by a task of its own (bounded by
    /// `store_call_timeout`), so the caller can go on meanwhile.
    fn read_version_in_background(&self) -> JoinHandle<Result<u64, CommandError>> {
        let shared = self.shared.clone();
        let stream_id = self.stream_id.clone();
        tokio::spawn(async move {
            let limit = shared.limits.store_call_timeout;
            bounded(limit, shared.store.stream_version(&stream_id), || {
                timed_out(&stream_id, limit)
            })
            .await
        })
    }

    /// A store call, bounded by `store_call_timeout`.
    async fn within<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, CommandError> {
        bounded(self.shared.limits.store_call_timeout, call, || {
            self.timeout()
        })
        .await
    }

    fn conflict(&self, attempts: u32) -> CommandError {
        CommandError::Conflict {
            stream: self.stream_id.clone(),
            attempts,
        }
    }

    /// Decides queued jobs in order against `held`, folding accepted events into it,
    /// until the queue is empty or the round is full. `solo` limits the round to one
    /// accepted command. `unconfirmed`: `held` is a guess (a presumed new stream), so
    /// a peek waits for the next round.
    fn decide_round(
        &mut self,
        held: &mut Held<A>,
        pending: &mut VecDeque<Job<A>>,
        solo: bool,
        unconfirmed: bool,
    ) -> Round<A> {
        let limits = &self.shared.limits;
        let mut jobs = std::mem::take(&mut self.decisions);
        jobs.clear();
        jobs.reserve(pending.len());
        let mut round = Round {
            jobs,
            events: Vec::new(),
            preconditions: Vec::new(),
            accepted: 0,
            first_command_id: None,
            guards: Vec::new(),
        };
        let command_ids = &mut self.round_command_ids;
        command_ids.clear();
        while let Some(job) = pending.pop_front() {
            let decided = match &job {
                // A peek sees what is committed: before the round's first accepted
                // command, or else in the next round.
                Job::Peek { .. } if round.accepted > 0 || unconfirmed => None,
                Job::Peek { .. } => {
                    if let Job::Peek { reply } = job {
                        let _ = reply.send(Ok(Loaded {
                            state: held.state.clone(),
                            version: held.version,
                        }));
                    }
                    continue;
                }
                Job::Load { .. } => Some(Decided::Load),
                Job::Execute {
                    command,
                    context,
                    reads,
                    ..
                } => {
                    if let Some(recorded) = held.recent.get(&context.command_id) {
                        Some(Decided::Replay(recorded))
                    } else if !command_ids.insert(context.command_id) {
                        // The same command twice in one round: the second waits for
                        // the first to be written, and is then answered as a repeat.
                        None
                    } else {
                        match held.state.decide(command) {
                            Err(e) => Some(Decided::Refused(e)),
                            Ok(events) if events.is_empty() => Some(Decided::NoEvents {
                                events_before: round.events.len(),
                            }),
                            Ok(events) => {
                                // Two commands that read one stream at different
                                // versions cannot share an append.
                                let disagrees = reads.iter().any(|read| {
                                    round.preconditions.iter().any(|p| {
                                        p.stream_id == read.stream_id && p.version != read.version
                                    })
                                });
                                let full = round.accepted > 0
                                    && (solo
                                        || disagrees
                                        || round.events.len() + events.len()
                                            > limits.stream_batch_max_events);
                                if full {
                                    None
                                } else {
                                    if round.events.capacity() == 0 {
                                        // Room for the rest of the queue deciding like
                                        // this command: a burst's append is built
                                        // without growing (and copying) the buffer.
                                        let expected =
                                            events.len().saturating_mul(pending.len() + 1);
                                        round
                                            .events
                                            .reserve(expected.min(limits.stream_batch_max_events));
                                    }
                                    let first_event = round.events.len();
                                    for event in &events {
                                        round.events.push(to_new_event(event, context));
                                        let state = std::mem::take(&mut held.state);
                                        held.state = state.evolve(event);
                                    }
                                    for read in reads {
                                        if !round.preconditions.contains(read) {
                                            round.preconditions.push(read.clone());
                                        }
                                    }
                                    round.accepted += 1;
                                    round.first_command_id.get_or_insert(context.command_id);
                                    round.guards.extend(context.guard);
                                    Some(Decided::Accepted {
                                        events,
                                        first_event,
                                    })
                                }
                            }
                        }
                    }
                }
            };
            match decided {
                Some(decided) => round.jobs.push((job, decided)),
                None => {
                    pending.push_front(job);
                    break;
                }
            }
        }
        round
    }

    /// The stream's state from its latest usable snapshot plus the events after it.
    async fn load(&self) -> Result<Held<A>, CommandError> {
        let shared = &self.shared;
        Counters::add(&shared.counters.loads, 1);
        let mut held = Held::empty(shared.limits.recent_commands_per_stream);
        match self.within(shared.snapshots.load(&self.stream_id)).await {
            Ok(Some(snapshot)) if snapshot.state_schema == A::SNAPSHOT_SCHEMA => {
                match serde_json::from_slice::<A>(&snapshot.state) {
                    Ok(state) => {
                        held.state = state;
                        held.version = snapshot.version;
                        held.snapshot_version = snapshot.version;
                        self.snapshot_bytes
                            .store(snapshot.state.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(
                        stream = %self.stream_id, error = %e,
                        "unreadable snapshot; replaying the whole stream"
                    ),
                }
            }
            Ok(Some(snapshot)) => tracing::debug!(
                stream = %self.stream_id, schema = snapshot.state_schema,
                "snapshot of another state schema; replaying the whole stream"
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!(
                stream = %self.stream_id, error = %e,
                "snapshot store failed; replaying the whole stream"
            ),
        }
        self.catch_up(&mut held).await?;
        Ok(held)
    }

    /// Folds the events after `held.version` into the state, page by page.
    async fn catch_up(&self, held: &mut Held<A>) -> Result<(), CommandError> {
        let shared = &self.shared;
        let page_size = shared.limits.load_page_events.max(1);
        loop {
            let page = self
                .within(shared.store.read_stream(
                    &self.stream_id,
                    held.version + 1,
                    Direction::Forward,
                    page_size,
                ))
                .await?;
            let read = page.len();
            for mut recorded in page {
                if recorded.version != held.version + 1 {
                    return Err(StoreError::Corrupt(format!(
                        "stream {} jumps from version {} to {}",
                        self.stream_id, held.version, recorded.version
                    ))
                    .into());
                }
                let event = decode::<A::Event>(&mut recorded)?;
                let state = std::mem::take(&mut held.state);
                held.state = state.evolve(&event);
                held.version = recorded.version;
                if let Some(command_id) = recorded.metadata.command_id {
                    held.recent
                        .note_event(command_id, recorded.position, recorded.version);
                }
            }
            Counters::add(&shared.counters.events_read, read as u64);
            if read < page_size {
                return Ok(());
            }
        }
    }

    /// Once the stream has grown by `snapshot_every_events` since its last
    /// snapshot, a snapshot is due: it is written at the next pause in the stream's
    /// commands (`Limits::snapshot_pause`), or at once when a second `every` has passed
    /// without one.
    fn snapshot_if_due(&mut self, held: &mut Held<A>) {
        if !self.snapshot_past(held, 1) {
            return;
        }
        if self.snapshot_past(held, 2) {
            self.write_snapshot(held);
        } else {
            self.snapshot_due = true;
        }
    }

    /// Whether `held` is `times` × the snapshot interval or more past its last
    /// snapshot (never, with snapshots off). The interval is `snapshot_every_events`,
    /// stretched for a large state by one more `snapshot_every_events` per
    /// `snapshot_bytes_per_interval` of its last snapshot: writing a snapshot costs
    /// in proportion to its size (copy, serialisation, compression, the write), so a
    /// state that only grows (an SKU remembers every reservation id it has used) would
    /// otherwise cost more per event the longer it lives. Replaying the extra events
    /// on a reload costs far less than the snapshots saved.
    fn snapshot_past(&self, held: &Held<A>, times: u64) -> bool {
        let limits = &self.shared.limits;
        let bytes = self.snapshot_bytes.load(Ordering::Relaxed);
        let stretch = bytes
            .checked_div(limits.snapshot_bytes_per_interval)
            .unwrap_or(0)
            .max(1);
        let every = limits.snapshot_every_events.saturating_mul(stretch);
        every > 0
            && held.version
                >= held
                    .snapshot_version
                    .saturating_add(every.saturating_mul(times))
    }

    /// The stream paused (or its task ends): writes the snapshot that was due, if
    /// the state held is still past it (a reload may have brought a newer one).
    fn snapshot_on_pause(&mut self) {
        if !std::mem::take(&mut self.snapshot_due) {
            return;
        }
        if let Some(mut held) = self.held.take() {
            if self.snapshot_past(&held, 1) {
                self.write_snapshot(&mut held);
            }
            self.held = Some(held);
        }
    }

    /// Writes a snapshot of `held` in the background: neither serialising the state
    /// nor writing it holds up the next round.
    fn write_snapshot(&mut self, held: &mut Held<A>) {
        self.snapshot_due = false;
        held.snapshot_version = held.version;
        // Serialising a long stream's state takes milliseconds (a flash-sale SKU
        // with a thousand reservations), a copy of it far less: the copy is
        // serialised on a blocking thread.
        let state = held.state.clone();
        let version = held.version;
        let stream = self.stream_id.clone();
        let shared = self.shared.clone();
        let size = self.snapshot_bytes.clone();
        tokio::spawn(async move {
            let serialised = tokio::task::spawn_blocking(move || serde_json::to_vec(&state)).await;
            let state = match serialised {
                Ok(Ok(state)) => {
                    size.store(state.len() as u64, Ordering::Relaxed);
                    state
                }
                Ok(Err(e)) => {
                    tracing::warn!(stream = %stream, error = %e, "state does not serialise");
                    return;
                }
                Err(e) => {
                    tracing::warn!(stream = %stream, error = %e, "snapshot serialisation failed");
                    return;
                }
            };
            let snapshot = Snapshot {
                stream_id: stream.clone(),
                version,
                state_schema: A::SNAPSHOT_SCHEMA,
                state,
            };
            match shared.snapshots.save(snapshot).await {
                Ok(()) => Counters::add(&shared.counters.snapshots, 1),
                Err(e) => tracing::warn!(stream = %stream, error = %e, "snapshot not written"),
            }
        });
    }
}

/// Whether the first queued job is a command that begins its stream.
fn begins_stream<A: StreamAggregate>(pending: &VecDeque<Job<A>>) -> bool {
    matches!(pending.front(), Some(Job::Execute { command, .. }) if A::begins_stream(command))
}

/// `call`, bounded by `limit`; past it, the error `timed_out` makes.
async fn bounded<T>(
    limit: std::time::Duration,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
    timed_out: impl FnOnce() -> CommandError,
) -> Result<T, CommandError> {
    match tokio::time::timeout(limit, call).await {
        Ok(outcome) => outcome.map_err(CommandError::from),
        Err(_) => Err(timed_out()),
    }
}

/// A store call on `stream_id` that took longer than `limit`.
fn timed_out(stream_id: &str, limit: std::time::Duration) -> CommandError {
    CommandError::Timeout {
        stream: stream_id.to_owned(),
        timeout_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
    }
}

/// Answers every job of a round whose state is confirmed current: `written` is the
/// append's result and the version the round started from, if it wrote anything.
/// Gives the round's emptied buffer back for the next round.
fn settle<A: StreamAggregate>(
    stream_id: &str,
    round: Round<A>,
    held: &mut Held<A>,
    written: Option<(AppendResult, u64)>,
) -> Vec<(Job<A>, Decided<A::Event>)> {
    let mut jobs = round.jobs;
    for (job, decided) in jobs.drain(..) {
        let (context, reply) = match job {
            Job::Load { reply } | Job::Peek { reply } => {
                let _ = reply.send(Ok(Loaded {
                    state: held.state.clone(),
                    version: held.version,
                }));
                continue;
            }
            Job::Execute { context, reply, .. } => (context, reply),
        };
        let outcome = match (decided, written) {
            (
                Decided::Accepted {
                    events,
                    first_event,
                },
                Some((result, base_version)),
            ) => {
                let first = first_event as u64;
                let count = events.len() as u64;
                let recorded = Recorded {
                    positions: Positions {
                        first: result.first_position + first,
                        last: result.first_position + first + count - 1,
                    },
                    stream_version: base_version + first + count,
                };
                held.recent.insert(context.command_id, recorded);
                Ok(Committed {
                    stream_id: stream_id.to_owned(),
                    events,
                    stream_version: recorded.stream_version,
                    positions: Some(recorded.positions),
                    replayed: false,
                })
            }
            (Decided::Refused(e), _) => Err(CommandError::Rejected(e)),
            (Decided::NoEvents { events_before }, written) => {
                let base = written.map_or(held.version, |(_, base)| base);
                Ok(Committed {
                    stream_id: stream_id.to_owned(),
                    events: Vec::new(),
                    stream_version: base + events_before as u64,
                    positions: None,
                    replayed: false,
                })
            }
            (Decided::Replay(recorded), _) => Ok(replayed(stream_id, recorded)),
            // Neither happens: a round with accepted commands always writes, and a
            // command is never decided as a read. Answer rather than panic.
            (Decided::Accepted { .. }, None) | (Decided::Load, _) => {
                debug_assert!(false, "impossible decision for a command");
                Err(CommandError::Stopped {
                    stream: stream_id.to_owned(),
                })
            }
        };
        let _ = reply.send(outcome);
    }
    jobs
}

fn replayed<E>(stream_id: &str, recorded: Recorded) -> Committed<E> {
    Committed {
        stream_id: stream_id.to_owned(),
        events: Vec::new(),
        stream_version: recorded.stream_version,
        positions: Some(recorded.positions),
        replayed: true,
    }
}

/// The store answered the round's single accepted command as a repeat: that command
/// gets the first outcome; the others are decided again on a reloaded state.
fn answer_store_replay<A: StreamAggregate>(
    stream_id: &str,
    round: Round<A>,
    first: AppendResult,
    pending: &mut VecDeque<Job<A>>,
) {
    let mut others = Vec::new();
    for (job, decided) in round.jobs {
        match (job, decided) {
            (Job::Execute { reply, .. }, Decided::Accepted { .. }) => {
                let recorded = Recorded {
                    positions: Positions {
                        first: first.first_position,
                        last: first.last_position,
                    },
                    stream_version: first.stream_version,
                };
                let _ = reply.send(Ok(replayed(stream_id, recorded)));
            }
            (job, _) => others.push(job),
        }
    }
    for job in others.into_iter().rev() {
        pending.push_front(job);
    }
}

/// The store refused the round's single accepted command for a reason of its own:
/// that command fails; the others are decided again on a reloaded state.
fn answer_store_error<A: StreamAggregate>(
    round: Round<A>,
    error: StoreError,
    pending: &mut VecDeque<Job<A>>,
) {
    let mut others = Vec::new();
    for (job, decided) in round.jobs {
        match (job, decided) {
            (Job::Execute { reply, .. }, Decided::Accepted { .. }) => {
                let _ = reply.send(Err(CommandError::Store(error.clone())));
            }
            (job, _) => others.push(job),
        }
    }
    for job in others.into_iter().rev() {
        pending.push_front(job);
    }
}

/// A stream the round read had moved: the accepted commands that read it fail with
/// `moved`; the round's other jobs are decided again.
fn answer_stream_moved<A: StreamAggregate>(
    round: Round<A>,
    moved: &StoreError,
    pending: &mut VecDeque<Job<A>>,
) {
    let StoreError::StreamMoved { stream_id, .. } = moved else {
        return requeue(round, pending);
    };
    let mut others = Vec::new();
    for (job, decided) in round.jobs {
        match (job, decided) {
            (Job::Execute { reads, reply, .. }, Decided::Accepted { .. })
                if reads.iter().any(|r| &r.stream_id == stream_id) =>
            {
                let _ = reply.send(Err(CommandError::Store(moved.clone())));
            }
            (job, _) => others.push(job),
        }
    }
    for job in others.into_iter().rev() {
        pending.push_front(job);
    }
}

/// Answers the round's commands whose guard is among `keys` with
/// [`StoreError::AlreadyAnswered`], and puts the others back at the front of the
/// queue, in their order.
fn answer_already_answered<A: StreamAggregate>(
    round: Round<A>,
    keys: &[Uuid],
    pending: &mut VecDeque<Job<A>>,
) {
    let mut others = Vec::new();
    for (job, decided) in round.jobs {
        match (job, decided) {
            (Job::Execute { context, reply, .. }, Decided::Accepted { .. })
                if context.guard.is_some_and(|key| keys.contains(&key)) =>
            {
                let answered = StoreError::AlreadyAnswered {
                    keys: context.guard.into_iter().collect(),
                };
                let _ = reply.send(Err(CommandError::Store(answered)));
            }
            (job, _) => others.push(job),
        }
    }
    for job in others.into_iter().rev() {
        pending.push_front(job);
    }
}

/// Puts a round's jobs back at the front of the queue, in their order.
fn requeue<A: StreamAggregate>(round: Round<A>, pending: &mut VecDeque<Job<A>>) {
    for (job, _) in round.jobs.into_iter().rev() {
        pending.push_front(job);
    }
}

fn fail_all<A: StreamAggregate>(jobs: impl IntoIterator<Item = Job<A>>, error: &CommandError) {
    for job in jobs {
        match job {
            Job::Execute { reply, .. } => {
                let _ = reply.send(Err(error.clone()));
            }
            Job::Load { reply } | Job::Peek { reply } => {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

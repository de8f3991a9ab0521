//! The entry point for the commands of one aggregate type: routes each command to
//! the task of its stream (starting one if needed) and waits for its outcome.
//!
//! Every command goes through its stream's task, not only those of hot streams.
//! One path keeps one set of rules: a process never races itself on a stream (so
//! conflicts only come from other processes), the task is the only owner of the
//! stream's state (no locks, no copies), and a cold stream simply gets a task that
//! handles one command and retires after `stream_idle_timeout`. What that costs a
//! lone command is a task start and two channel hops, microseconds next to the
//! append's commit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use eventstore::{EventStore, Precondition, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::cache::StateCache;
use crate::snapshot::SnapshotStore;
use crate::stream;
use crate::{CommandContext, CommandError, StreamAggregate};

/// Most idle streams whose state stays in memory, per aggregate type. Sized for the
/// carts filled in the minutes before their checkouts: with 4,096, the 20,000 carts of
/// `commerce bench checkout` were loaded back from the log one by one as they checked
/// out (1,063–1,111 checkouts/s against 1,177–1,206 with this bound, and the same peak
/// memory of the process, about 1.2 GB).
pub const CACHE_MAX_STREAMS: usize = 32_768;
/// Most streams with a running task, per aggregate type; past it, commands for
/// further streams are refused as overloaded.
pub const LIVE_STREAMS_MAX: usize = 65_536;
/// Most commands waiting in one stream's queue.
pub const STREAM_MAILBOX_MAX_COMMANDS: usize = 8_192;
/// Most commands one stream task decides and appends together.
pub const STREAM_BATCH_MAX_COMMANDS: usize = 2_048;
/// Most events one append of a stream task carries (the store takes up to
/// `eventstore::APPEND_MAX_EVENTS`).
pub const STREAM_BATCH_MAX_EVENTS: usize = 4_096;
/// Appends (or freshness checks) tried for one batch before giving up with
/// `CommandError::Conflict`.
pub const CONFLICT_ATTEMPTS_MAX: u32 = 5;
/// A snapshot is due once a stream has this many events past its last one (times
/// one more for each [`SNAPSHOT_BYTES_PER_INTERVAL`] of its last snapshot).
pub const SNAPSHOT_EVERY_EVENTS: u64 = 1_000;
/// Snapshot bytes that stretch a stream's snapshot interval by one more
/// `snapshot_every_events`: a 1 MB state is snapshot every 10,000 events by default.
pub const SNAPSHOT_BYTES_PER_INTERVAL: u64 = 100_000;
/// A snapshot that is due is written once its stream has had no command for this
/// long, or at once when a second `SNAPSHOT_EVERY_EVENTS` has passed without one:
/// serialising a hot stream's state in the middle of a burst takes milliseconds of a
/// core from the commands (a flash-sale SKU's thousand reservations).
pub const SNAPSHOT_PAUSE_MS: u64 = 20;
/// Command ids remembered per stream for repeats (see `RecentCommands`).
pub const RECENT_COMMANDS_PER_STREAM: usize = 1_024;
/// Events read per query when loading a stream.
pub const LOAD_PAGE_EVENTS: usize = 5_000;
/// A stream task with no command for this long parks its state and ends.
pub const STREAM_IDLE_TIMEOUT_MS: u64 = 5_000;
/// How long a command may wait for room in its stream's queue.
pub const ENQUEUE_TIMEOUT_MS: u64 = 5_000;
/// How long a stream task waits for one call to the event store or the snapshot
/// store. Each round makes at most a few such calls, so a caller's wait is bounded by
/// the rounds ahead of it; a per-command timer would cost every command a timer
/// registration for a case that this bound already covers. Short enough that a
/// command fails fast (503) when the database stops answering (a black-holed path)
/// instead of holding its client; a healthy call takes milliseconds.
pub const STORE_CALL_TIMEOUT_MS: u64 = 5_000;
/// Attempts to hand a command to its stream's task when tasks retire under it.
const SUBMIT_ATTEMPTS_MAX: u32 = 3;

/// The bounds of the command side; `Default` is the constants above. Tests shrink
/// them (a snapshot every few events, a short idle timeout).
#[derive(Debug, Clone)]
pub struct Limits {
    pub cache_max_streams: usize,
    pub live_streams_max: usize,
    pub stream_mailbox_max_commands: usize,
    pub stream_batch_max_commands: usize,
    pub stream_batch_max_events: usize,
    pub conflict_attempts_max: u32,
    pub snapshot_every_events: u64,
    /// Snapshot bytes that stretch the interval by one more `snapshot_every_events`.
    pub snapshot_bytes_per_interval: u64,
    pub snapshot_pause: Duration,
    pub recent_commands_per_stream: usize,
    pub load_page_events: usize,
    pub stream_idle_timeout: Duration,
    pub enqueue_timeout: Duration,
    pub store_call_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cache_max_streams: CACHE_MAX_STREAMS,
            live_streams_max: LIVE_STREAMS_MAX,
            stream_mailbox_max_commands: STREAM_MAILBOX_MAX_COMMANDS,
            stream_batch_max_commands: STREAM_BATCH_MAX_COMMANDS,
            stream_batch_max_events: STREAM_BATCH_MAX_EVENTS,
            conflict_attempts_max: CONFLICT_ATTEMPTS_MAX,
            snapshot_every_events: SNAPSHOT_EVERY_EVENTS,
            snapshot_bytes_per_interval: SNAPSHOT_BYTES_PER_INTERVAL,
            snapshot_pause: Duration::from_millis(SNAPSHOT_PAUSE_MS),
            recent_commands_per_stream: RECENT_COMMANDS_PER_STREAM,
            load_page_events: LOAD_PAGE_EVENTS,
            stream_idle_timeout: Duration::from_millis(STREAM_IDLE_TIMEOUT_MS),
            enqueue_timeout: Duration::from_millis(ENQUEUE_TIMEOUT_MS),
            store_call_timeout: Duration::from_millis(STORE_CALL_TIMEOUT_MS),
        }
    }
}

/// Global positions of the events a command wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Positions {
    pub first: u64,
    pub last: u64,
}

/// The outcome of an accepted command.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed<E> {
    pub stream_id: String,
    /// The events the command wrote; empty if it decided to none, and for a replay
    /// (the first outcome's events are in the log at `positions`).
    pub events: Vec<E>,
    /// The stream's version after the command.
    pub stream_version: u64,
    /// Where the events are in the log; `None` if the command decided to no events.
    /// Queries can wait for a read model to pass `last` (read your writes).
    pub positions: Option<Positions>,
    /// This command id was handled before: this is the first outcome.
    pub replayed: bool,
}

/// A stream's state as of `version`, confirmed current when it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<A> {
    pub state: A,
    pub version: u64,
}

/// Counters of one handler, for benchmarks, tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandlerStats {
    /// Appends written (one per batch of accepted commands).
    pub appends: u64,
    /// Commands whose events those appends carried.
    pub appended_commands: u64,
    /// Rounds decided again because another writer had moved the stream (a refused
    /// append, or a version check that found the state stale).
    pub conflicts: u64,
    /// Streams loaded from the store (snapshot and tail, or the whole stream).
    pub loads: u64,
    /// Events read while loading or catching up.
    pub events_read: u64,
    /// Snapshots written.
    pub snapshots: u64,
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, CommandError>>;

pub(crate) enum Job<A: StreamAggregate> {
    Execute {
        command: A::Command,
        context: CommandContext,
        /// Other streams the command was decided from, at the versions read: its
        /// append carries them as preconditions.
        reads: Vec<Precondition>,
        reply: Reply<Committed<A::Event>>,
    },
    Load {
        reply: Reply<Loaded<A>>,
    },
    Peek {
        reply: Reply<Loaded<A>>,
    },
}

#[derive(Default)]
pub(crate) struct Counters {
    pub appends: AtomicU64,
    pub appended_commands: AtomicU64,
    pub conflicts: AtomicU64,
    pub loads: AtomicU64,
    pub events_read: AtomicU64,
    pub snapshots: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A running stream task: its queue, and an id so that a retiring task removes its
/// own entry and not that of a successor.
pub(crate) struct LiveStream<A: StreamAggregate> {
    pub task_id: u64,
    pub queue: mpsc::Sender<Job<A>>,
}

pub(crate) struct Shared<A: StreamAggregate> {
    pub store: Arc<dyn EventStore>,
    pub snapshots: Arc<dyn SnapshotStore>,
    pub limits: Limits,
    pub cache: Mutex<StateCache<A>>,
    pub live: Mutex<HashMap<String, LiveStream<A>>>,
    pub next_task_id: AtomicU64,
    pub counters: Counters,
}

impl<A: StreamAggregate> Shared<A> {
    // A panic while holding these locks cannot leave them half-updated: each holder
    // does a few map operations and no awaits.
    pub fn cache(&self) -> MutexGuard<'_, StateCache<A>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn live(&self) -> MutexGuard<'_, HashMap<String, LiveStream<A>>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs the commands of aggregate type `A`. Cloning shares the tasks and the cache.
/// When the last clone is dropped, the stream tasks answer what is queued and end.
pub struct Handler<A: StreamAggregate> {
    shared: Arc<Shared<A>>,
    _owner: Arc<Owner<A>>,
}

impl<A: StreamAggregate> Clone for Handler<A> {
    fn clone(&self) -> Self {
        Handler {
            shared: self.shared.clone(),
            _owner: self._owner.clone(),
        }
    }
}

/// Dropped with the last `Handler`: the routing table holds the queues' senders,
/// so emptying it lets each stream task see its queue end once drained.
struct Owner<A: StreamAggregate> {
    shared: Arc<Shared<A>>,
}

impl<A: StreamAggregate> Drop for Owner<A> {
    fn drop(&mut self) {
        self.shared.live().clear();
    }
}

impl<A: StreamAggregate> Handler<A> {
    pub fn new(
        store: Arc<dyn EventStore>,
        snapshots: Arc<dyn SnapshotStore>,
        limits: Limits,
    ) -> Self {
        let cache = StateCache::new(limits.cache_max_streams);
        let shared = Arc::new(Shared {
            store,
            snapshots,
            limits,
            cache: Mutex::new(cache),
            live: Mutex::new(HashMap::new()),
            next_task_id: AtomicU64::new(0),
            counters: Counters::default(),
        });
        Handler {
            _owner: Arc::new(Owner {
                shared: shared.clone(),
            }),
            shared,
        }
    }

    /// Decides `command` against the current state of its stream and appends the
    /// events, with `context` in every event's metadata. A repeat of a command id
    /// gets the first outcome (`replayed`).
    pub async fn execute(
        &self,
        command: A::Command,
        context: &CommandContext,
    ) -> Result<Committed<A::Event>, CommandError> {
        self.execute_reading(command, context, Vec::new()).await
    }

    /// [`Handler::execute`] for a command decided from other streams' states (a
    /// price from the catalog): `reads` are those streams at the versions read, and
    /// the command is written only if none of them has moved since. If one has, the
    /// command fails with `StoreError::StreamMoved` and nothing is written: read
    /// again (with [`Handler::load`]) and retry.
    pub async fn execute_reading(
        &self,
        command: A::Command,
        context: &CommandContext,
        reads: Vec<Precondition>,
    ) -> Result<Committed<A::Event>, CommandError> {
        let stream_id = A::stream_of(&command);
        let context = context.clone();
        self.submit(&stream_id, |reply| Job::Execute {
            command,
            context,
            reads,
            reply,
        })
        .await
    }

    /// Executes a command decided from another stream's state (a line's price from
    /// the catalog, an order's lines from its cart) as this process holds it (a
    /// peek), with that stream at the version read as the append's precondition. If
    /// it moved since, the append writes nothing, and the stream is read from the
    /// log and the command decided again (up to [`CONFLICT_ATTEMPTS_MAX`] times). A
    /// refusal decided on the held state is decided again on the log's before it is
    /// given. So a stream this process holds current costs no read of the log.
    pub async fn execute_decided_on<R: StreamAggregate>(
        &self,
        source: &Handler<R>,
        source_stream: &str,
        context: &CommandContext,
        decide: impl Fn(&R) -> Result<A::Command, CommandError>,
    ) -> Result<Committed<A::Event>, CommandError> {
        let mut read = source.peek(source_stream).await?;
        let mut fresh = false;
        let mut attempts = 0;
        loop {
            let command = match decide(&read.state) {
                Ok(command) => command,
                Err(_) if !fresh => {
                    read = source.load(source_stream).await?;
                    fresh = true;
                    continue;
                }
                Err(refusal) => return Err(refusal),
            };
            let precondition = Precondition {
                stream_id: source_stream.to_owned(),
                version: read.version,
            };
            match self
                .execute_reading(command, context, vec![precondition])
                .await
            {
                Err(CommandError::Store(StoreError::StreamMoved { .. }))
                    if attempts + 1 < CONFLICT_ATTEMPTS_MAX =>
                {
                    attempts += 1;
                    read = source.load(source_stream).await?;
                    fresh = true;
                }
                outcome => return outcome,
            }
        }
    }

    /// The stream's current state (the empty state at version 0 for a new stream),
    /// confirmed current against the log.
    pub async fn load(&self, stream_id: &str) -> Result<Loaded<A>, CommandError> {
        self.submit(stream_id, |reply| Job::Load { reply }).await
    }

    /// The stream's state as this process last knew it to be current, without asking
    /// the log: another process may have written since. Good for what never changes
    /// once set (a cart's currency), or to decide a command whose append then names
    /// this stream at `version` as a precondition ([`Handler::execute_reading`]).
    /// A stream this process does not hold is loaded, so that is current.
    pub async fn peek(&self, stream_id: &str) -> Result<Loaded<A>, CommandError> {
        self.submit(stream_id, |reply| Job::Peek { reply }).await
    }

    pub fn stats(&self) -> HandlerStats {
        let c = &self.shared.counters;
        HandlerStats {
            appends: c.appends.load(Ordering::Relaxed),
            appended_commands: c.appended_commands.load(Ordering::Relaxed),
            conflicts: c.conflicts.load(Ordering::Relaxed),
            loads: c.loads.load(Ordering::Relaxed),
            events_read: c.events_read.load(Ordering::Relaxed),
            snapshots: c.snapshots.load(Ordering::Relaxed),
        }
    }

    /// Streams with a running task.
    pub fn live_streams(&self) -> usize {
        self.shared.live().len()
    }

    /// Idle streams whose state is cached.
    pub fn cached_streams(&self) -> usize {
        self.shared.cache().len()
    }

    async fn submit<T>(
        &self,
        stream_id: &str,
        job: impl FnOnce(Reply<T>) -> Job<A>,
    ) -> Result<T, CommandError> {
        let limits = &self.shared.limits;
        let (reply, answer) = oneshot::channel();
        let mut job = job(reply);
        for _ in 0..SUBMIT_ATTEMPTS_MAX {
            let queue = self.queue_for(stream_id)?;
            // The queue usually has room: only a full one costs a timer.
            let sent = match queue.try_send(job) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Closed(returned)) => Err(returned),
                Err(mpsc::error::TrySendError::Full(returned)) => {
                    match tokio::time::timeout(limits.enqueue_timeout, queue.send(returned)).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(mpsc::error::SendError(returned))) => Err(returned),
                        Err(_) => {
                            return Err(CommandError::Overloaded {
                                stream: stream_id.to_owned(),
                                reason: "its queue stayed full",
                            })
                        }
                    }
                }
            };
            match sent {
                Ok(()) => return self.wait(stream_id, answer).await,
                // The task retired (or died) between the lookup and the send: forget
                // it and hand the job to a new one.
                Err(returned) => {
                    job = returned;
                    self.forget_closed(stream_id);
                }
            }
        }
        Err(CommandError::Stopped {
            stream: stream_id.to_owned(),
        })
    }

    /// The stream task answers every job it takes, or drops it only by ending
    /// (`Stopped`); its store calls are bounded by `store_call_timeout`.
    async fn wait<T>(
        &self,
        stream_id: &str,
        answer: oneshot::Receiver<Result<T, CommandError>>,
    ) -> Result<T, CommandError> {
        answer.await.unwrap_or_else(|_| {
            Err(CommandError::Stopped {
                stream: stream_id.to_owned(),
            })
        })
    }

    /// The queue of the stream's task, starting the task if there is none.
    fn queue_for(&self, stream_id: &str) -> Result<mpsc::Sender<Job<A>>, CommandError> {
        let shared = &self.shared;
        let mut live = shared.live();
        if let Some(stream) = live.get(stream_id) {
            if !stream.queue.is_closed() {
                return Ok(stream.queue.clone());
            }
        }
        if live.len() >= shared.limits.live_streams_max {
            // Tasks that died without retiring leave closed queues behind.
            live.retain(|_, stream| !stream.queue.is_closed());
            if live.len() >= shared.limits.live_streams_max {
                return Err(CommandError::Overloaded {
                    stream: stream_id.to_owned(),
                    reason: "too many streams are active",
                });
            }
        }
        let (queue, jobs) = mpsc::channel(shared.limits.stream_mailbox_max_commands);
        let task_id = shared.next_task_id.fetch_add(1, Ordering::Relaxed);
        live.insert(
            stream_id.to_owned(),
            LiveStream {
                task_id,
                queue: queue.clone(),
            },
        );
        drop(live);
        tokio::spawn(stream::run(
            self.shared.clone(),
            stream_id.to_owned(),
            task_id,
            jobs,
        ));
        Ok(queue)
    }

    fn forget_closed(&self, stream_id: &str) {
        let mut live = self.shared.live();
        if live
            .get(stream_id)
            .is_some_and(|stream| stream.queue.is_closed())
        {
            live.remove(stream_id);
        }
    }
}

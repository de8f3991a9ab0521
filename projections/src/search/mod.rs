//! Product search: a read model in a tantivy index that each process keeps for
//! itself, fed by the log like any projection and rebuilt from it when missing.
//!
//! The index holds a document per product (full text, filters, facets) and one per
//! SKU's stock, and its checkpoint (last position applied, and that event's hash) in
//! the payload of each tantivy commit, so documents and checkpoint move together: a
//! crash loses or repeats nothing. At start-up an index that cannot be opened, is
//! damaged, has another schema, or whose checkpoint the log does not hold (a log
//! that was replaced) is rebuilt from position 0, with progress reported. Nothing of
//! it lives in PostgreSQL, so no lease is needed: every process applies the log to
//! its own index.
//!
//! Catch-up reads the log with the rebuild's `COPY` reader in large batches and
//! commits rarely; near the head it reads with `read_all` and commits after each
//! batch that changed a document, so a change is searchable well within a second of
//! its command. An event the index cannot apply (a product unknown to it) is skipped
//! with a warning and counted, not a reason to stop serving search.

mod collector;
mod document;
mod indexer;
mod query;
mod schema;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventstore::{EventStore, PostgresStore};
use serde::Serialize;
use tantivy::index::SegmentMeta;
use tantivy::{FutureResult, Index, IndexReader};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::decode::{Batch, Category};
use crate::ProjectionError;
use indexer::{Checkpoint, Indexer, WriterConfig};
pub use query::{
    typo_distance, FacetCount, Facets, PriceBucket, SearchHit, SearchRequest, SearchResults,
    SearchSort, Suggestion, FACET_MAX_VALUES, PRICE_BUCKET_EDGES, SEARCH_ATTRIBUTES_MAX,
    SEARCH_OFFSET_MAX, SEARCH_PAGE_DEFAULT_ITEMS, SEARCH_PAGE_MAX_ITEMS, SEARCH_QUERY_MAX_CHARS,
    SEARCH_QUERY_MAX_WORDS, SUGGEST_MAX_ITEMS,
};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SearchError {
    #[error("invalid {field}: {reason}")]
    InvalidQuery { field: &'static str, reason: String },
    /// The index is being built from the log; searches are answered once it is done.
    #[error("the search index is being built: {done} of {total} events applied")]
    Building { done: u64, total: u64 },
    #[error("search index: {0}")]
    Index(String),
    #[error(transparent)]
    Projection(#[from] ProjectionError),
}

/// How the search projection works; every batch and wait is bounded here.
#[derive(Debug, Clone)]
pub struct SearchConfig {
    /// The folder of the index (created if missing).
    pub dir: PathBuf,
    /// Memory of the index writer, split among its threads.
    pub writer_heap_bytes: usize,
    /// Indexing threads.
    pub writer_threads: usize,
    /// Threads one search spreads its segments over (1: the caller's thread only).
    pub search_threads: usize,
    /// Events per batch while catching up (read with `COPY`).
    pub catch_up_batch_max_events: usize,
    /// Events per batch near the head.
    pub live_batch_max_events: usize,
    /// Catch-up reads with `COPY` while the head is further ahead than this.
    pub catch_up_min_gap_events: u64,
    /// Commit during catch-up once this many states are held in memory.
    pub catch_up_commit_max_held: usize,
    /// Longest wait for the head to move before looking again.
    pub idle_poll_interval: Duration,
    /// A checkpoint that moved over events the index ignores is committed at most
    /// this often.
    pub idle_commit_interval: Duration,
    /// Longest pause between retries after the database failed.
    pub retry_backoff_max: Duration,
    /// How often catch-up progress is reported.
    pub progress_interval: Duration,
}

impl SearchConfig {
    pub fn new(dir: impl Into<PathBuf>) -> SearchConfig {
        SearchConfig {
            dir: dir.into(),
            writer_heap_bytes: 256 * 1024 * 1024,
            writer_threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(4),
            search_threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(4),
            catch_up_batch_max_events: crate::REBUILD_BATCH_MAX_EVENTS,
            live_batch_max_events: 1_000,
            catch_up_min_gap_events: 10_000,
            catch_up_commit_max_held: 500_000,
            idle_poll_interval: Duration::from_millis(500),
            idle_commit_interval: Duration::from_secs(5),
            retry_backoff_max: Duration::from_secs(5),
            progress_interval: Duration::from_secs(1),
        }
    }
}

/// Catch-up progress, reported every `progress_interval` while building.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SearchProgress {
    /// The last position applied.
    pub position: u64,
    /// The head the catch-up runs to.
    pub head: u64,
    /// Product documents written since the start of this catch-up (at commits: a
    /// product is written once per commit, however many events changed it).
    pub products: u64,
    /// Events applied per second since the start of this catch-up.
    pub events_per_sec: f64,
    pub done: bool,
}

/// Where the index is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SearchStatus {
    /// Caught up with the log once since start-up: searches are answered.
    pub ready: bool,
    /// The last position committed (searchable).
    pub position: u64,
    /// The head when the current catch-up began.
    pub catch_up_head: u64,
    /// Events the index could not apply since start-up.
    pub skipped_events: u64,
    /// Segments of the index searches walk.
    pub segments: usize,
    /// The segments of a build from empty are being merged into one per search
    /// thread, in the background; searches are answered meanwhile.
    pub merging: bool,
}

type ProgressFn = Arc<dyn Fn(SearchProgress) + Send + Sync>;

struct Shared {
    reader: IndexReader,
    fields: schema::Fields,
    tables: collector::SegmentTables,
    status: watch::Sender<SearchStatus>,
    skipped: AtomicU64,
}

/// The search side of one process: queries on the index, and the task that keeps it.
/// Cloning is cheap.
#[derive(Clone)]
pub struct SearchIndex {
    shared: Arc<Shared>,
}

/// The task that applies the log to the index; stop it with [`SearchTask::stop`].
pub struct SearchTask {
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl SearchTask {
    /// Stops after the current batch, committing what was applied.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

impl SearchIndex {
    /// Opens (or creates) the index and starts following the log; a missing or
    /// unusable index is rebuilt, with `progress` called while it is.
    pub async fn start(
        store: PostgresStore,
        config: SearchConfig,
        progress: Option<Arc<dyn Fn(SearchProgress) + Send + Sync>>,
    ) -> Result<(SearchIndex, SearchTask), SearchError> {
        let dir = config.dir.clone();
        let (opened, rebuilt) = tokio::task::spawn_blocking(move || indexer::open_or_create(&dir))
            .await
            .map_err(|e| SearchError::Index(e.to_string()))??;
        if let Some(reason) = &rebuilt {
            tracing::warn!(dir = %config.dir.display(), reason = %reason, "search index unusable: rebuilding it from the log");
        }
        let mut opened = opened;
        // A checkpoint the log does not hold means the log was replaced.
        if opened.checkpoint.position > 0 {
            let held = hash_at(&store, opened.checkpoint.position).await?;
            if held != Some(opened.checkpoint.hash) {
                tracing::warn!(
                    position = opened.checkpoint.position,
                    "the log does not hold the search index's checkpoint: rebuilding it"
                );
                let dir = config.dir.clone();
                let path = dir.join("meta.json");
                std::fs::remove_file(&path).map_err(|e| indexer::io_error(&path, e))?;
                let (fresh, _) = tokio::task::spawn_blocking(move || indexer::open_or_create(&dir))
                    .await
                    .map_err(|e| SearchError::Index(e.to_string()))??;
                opened = fresh;
            }
        }
        if config.search_threads > 1 {
            // Each segment of a search on a thread of its own: one search's latency,
            // not the throughput of many, is what a shopper waits for.
            opened
                .index
                .set_multithread_executor(config.search_threads)
                .map_err(indexer::tantivy_error)?;
        }
        let reader = indexer::reader(&opened.index)?;
        let fields = schema::Fields::of(&opened.index.schema()).map_err(indexer::tantivy_error)?;
        let config_writer = WriterConfig {
            heap_bytes: config.writer_heap_bytes,
            threads: config.writer_threads,
        };
        let indexer = Indexer::new(&opened, reader.clone(), config_writer)?;
        let (status, _) = watch::channel(SearchStatus {
            ready: false,
            position: opened.checkpoint.position,
            catch_up_head: 0,
            skipped_events: 0,
            segments: reader.searcher().segment_readers().len(),
            merging: false,
        });
        let shared = Arc::new(Shared {
            reader,
            fields,
            tables: collector::SegmentTables::default(),
            status,
            skipped: AtomicU64::new(0),
        });
        let (shutdown, stop) = watch::channel(false);
        let follower = Follower {
            store,
            config,
            shared: shared.clone(),
            stop,
            progress,
            index: opened.index,
            since_commit: Instant::now(),
        };
        let task = tokio::spawn(follower.run(indexer));
        Ok((SearchIndex { shared }, SearchTask { shutdown, task }))
    }

    pub fn status(&self) -> SearchStatus {
        *self.shared.status.borrow()
    }

    /// Waits until the index has committed `position` (or later), at most `timeout`.
    /// Returns whether it has.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> bool {
        let mut status = self.shared.status.subscribe();
        tokio::time::timeout(
            timeout,
            status.wait_for(|s| s.ready && s.position >= position),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }

    /// Waits until no merge of a build's segments is running, at most `timeout`.
    /// Returns whether none is.
    pub async fn wait_for_merges(&self, timeout: Duration) -> bool {
        let mut status = self.shared.status.subscribe();
        tokio::time::timeout(timeout, status.wait_for(|s| !s.merging))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn ready(&self) -> Result<(), SearchError> {
        let status = self.status();
        if status.ready {
            Ok(())
        } else {
            Err(SearchError::Building {
                done: status.position,
                total: status.catch_up_head,
            })
        }
    }

    /// Runs a search (CPU-bound: call it off the async threads, e.g. in
    /// `spawn_blocking`).
    pub fn search(&self, request: &SearchRequest) -> Result<SearchResults, SearchError> {
        self.ready()?;
        query::search(
            &self.shared.reader.searcher(),
            &self.shared.fields,
            &self.shared.tables,
            request,
        )
    }

    /// Suggestions for what the shopper has typed so far (CPU-bound, like
    /// [`search`](Self::search)).
    pub fn suggest(&self, text: &str, limit: usize) -> Result<Vec<Suggestion>, SearchError> {
        self.ready()?;
        query::suggest(
            &self.shared.reader.searcher(),
            &self.shared.fields,
            text,
            limit,
        )
    }
}

/// The hash of the event at `position`, if the log has one there.
async fn hash_at(store: &PostgresStore, position: u64) -> Result<Option<[u8; 32]>, SearchError> {
    let events = store
        .read_all(position - 1, 1, None)
        .await
        .map_err(ProjectionError::from)?;
    Ok(events
        .first()
        .filter(|e| e.position == position)
        .map(|e| e.hash))
}

struct Follower {
    store: PostgresStore,
    config: SearchConfig,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    progress: Option<ProgressFn>,
    index: Index,
    since_commit: Instant,
}

impl Follower {
    async fn run(mut self, indexer: Indexer) {
        let mut indexer = Some(indexer);
        let mut backoff = Duration::from_millis(100);
        loop {
            let current = match indexer.take() {
                Some(current) => current,
                // After a failure, start again from the last commit.
                None => match self.reopen() {
                    Ok(reopened) => reopened,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reopen the search index");
                        if self.pause(&mut backoff).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            match self.follow(current).await {
                Ok(done) => {
                    // Waiting for merges blocks: not on an async thread.
                    let _ = tokio::task::spawn_blocking(move || done.close()).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "search index interrupted, resuming from its last commit");
                    if self.pause(&mut backoff).await {
                        return;
                    }
                }
            }
        }
    }

    /// Sleeps `backoff` (doubling it up to the bound); true when told to stop.
    async fn pause(&mut self, backoff: &mut Duration) -> bool {
        let _ = tokio::time::timeout(*backoff, self.stop.wait_for(|s| *s)).await;
        *backoff = (*backoff * 2).min(self.config.retry_backoff_max);
        *self.stop.borrow()
    }

    fn reopen(&self) -> Result<Indexer, SearchError> {
        let metas = self.index.load_metas().map_err(indexer::tantivy_error)?;
        let checkpoint = match metas.payload {
            Some(payload) => serde_json::from_str::<Checkpoint>(&payload)
                .map_err(|e| SearchError::Index(format!("checkpoint: {e}")))?,
            None => Checkpoint::START,
        };
        let opened = indexer::Opened {
            index: self.index.clone(),
            checkpoint,
        };
        Indexer::new(&opened, self.shared.reader.clone(), self.writer_config())
    }

    fn writer_config(&self) -> WriterConfig {
        WriterConfig {
            heap_bytes: self.config.writer_heap_bytes,
            threads: self.config.writer_threads,
        }
    }

    fn status(&self) -> SearchStatus {
        *self.shared.status.borrow()
    }

    /// Catches up, then follows the head until stopped. An error drops the indexer
    /// and what it applied since its last commit.
    async fn follow(&mut self, mut indexer: Indexer) -> Result<Indexer, SearchError> {
        loop {
            let head = self.store.head().await.map_err(ProjectionError::from)?;
            if head < indexer.position {
                return Err(SearchError::Index(format!(
                    "the log ends at {head}, before the index's checkpoint {}",
                    indexer.position
                )));
            }
            if !self.status().ready || head - indexer.position > self.config.catch_up_min_gap_events
            {
                indexer = self.catch_up(indexer, head).await?;
                let position = indexer.position;
                self.shared.status.send_modify(|s| {
                    s.ready = true;
                    s.position = position;
                });
                continue;
            }
            if *self.stop.borrow() {
                if indexer.position > indexer.committed.position {
                    indexer = self.commit(indexer, None).await?;
                }
                return Ok(indexer);
            }
            if head == indexer.position {
                let wait = self
                    .store
                    .wait_for_head(indexer.position, self.config.idle_poll_interval);
                let mut stop = self.stop.clone();
                tokio::select! {
                    result = wait => { result.map_err(ProjectionError::from)?; }
                    _ = stop.wait_for(|s| *s) => {}
                }
                continue;
            }
            let events = self
                .store
                .read_all(indexer.position, self.config.live_batch_max_events, None)
                .await
                .map_err(ProjectionError::from)?;
            let Some(last) = events.last() else { continue };
            let hash = last.hash;
            let batch = Batch::decode(events, Category::Product | Category::Inventory);
            indexer = self.apply(indexer, Arc::new(batch)).await?;
            let idle_due = indexer.committed.position < indexer.position
                && self.since_commit.elapsed() >= self.config.idle_commit_interval;
            if indexer.changed() || idle_due {
                indexer = self.commit(indexer, Some(hash)).await?;
            }
        }
    }

    /// Reads the log up to `head` with the rebuild's COPY reader in large batches,
    /// committing when the states held grow past their bound, and at the end.
    async fn catch_up(&mut self, mut indexer: Indexer, head: u64) -> Result<Indexer, SearchError> {
        let from = indexer.position;
        self.shared.status.send_modify(|s| s.catch_up_head = head);
        tracing::info!(from, head, "search index catching up with the log");
        let (sender, mut batches) = mpsc::channel::<Arc<Batch>>(CATCH_UP_READ_AHEAD_BATCHES);
        let store = self.store.clone();
        let batch_max = self.config.catch_up_batch_max_events;
        let reader = tokio::spawn(async move {
            let client = store.connection().await.map_err(ProjectionError::from)?;
            crate::log::copy_batches(
                &client,
                from,
                head,
                batch_max,
                Category::Product | Category::Inventory,
                &[sender],
            )
            .await
        });
        let mut reader = AbortOnDrop(reader);
        let started = Instant::now();
        let mut reported = Instant::now();
        let written_before = indexer.products_written;
        indexer.set_catching_up(true);
        while let Some(batch) = batches.recv().await {
            indexer = self.apply(indexer, batch).await?;
            if indexer.held() >= self.config.catch_up_commit_max_held {
                indexer = self.commit(indexer, None).await?;
            }
            if reported.elapsed() >= self.config.progress_interval {
                reported = Instant::now();
                let products = indexer.products_written - written_before;
                self.report(indexer.position, head, products, from, started, false);
            }
            if *self.stop.borrow() {
                break;
            }
        }
        drop(batches);
        match (&mut reader.0).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(e) if e.is_cancelled() => {}
            Err(e) => return Err(SearchError::Index(e.to_string())),
        }
        if indexer.position > indexer.committed.position || indexer.changed() {
            indexer = self.commit(indexer, None).await?;
        }
        if from == 0 {
            // A build from the empty index: its segments, one per commit and writer
            // thread, are merged into one per search thread. Not after a catch-up
            // onto an index that exists, which would rewrite all of it on every
            // start. The index is complete and searchable before the merges (a
            // fifth of a build's time): they run in the background, and searches
            // meet the merged segments once they are done (`SearchStatus::merging`).
            let merges = indexer.start_balancing(self.config.search_threads)?;
            if !merges.is_empty() {
                self.shared.status.send_modify(|s| s.merging = true);
                let shared = self.shared.clone();
                tokio::task::spawn_blocking(move || shared.finish_balancing(merges));
            }
        }
        self.warm_tables().await;
        indexer.set_catching_up(false);
        let products = indexer.products_written - written_before;
        self.report(indexer.position, head, products, from, started, true);
        Ok(indexer)
    }

    fn report(
        &self,
        position: u64,
        head: u64,
        products: u64,
        from: u64,
        started: Instant,
        done: bool,
    ) {
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        let progress = SearchProgress {
            position,
            head,
            products,
            events_per_sec: (position - from) as f64 / secs,
            done,
        };
        tracing::info!(
            position,
            head,
            products,
            events_per_sec = progress.events_per_sec as u64,
            done,
            "search index catch-up"
        );
        if let Some(report) = &self.progress {
            report(progress);
        }
    }

    /// Applies a batch off the async threads.
    async fn apply(&self, mut indexer: Indexer, batch: Arc<Batch>) -> Result<Indexer, SearchError> {
        let (indexer, result) = tokio::task::spawn_blocking(move || {
            let result = indexer.apply(&batch);
            (indexer, result)
        })
        .await
        .map_err(|e| SearchError::Index(e.to_string()))?;
        let applied = result?;
        if applied.skipped > 0 {
            let skipped = self
                .shared
                .skipped
                .fetch_add(applied.skipped as u64, Ordering::Relaxed)
                + applied.skipped as u64;
            self.shared
                .status
                .send_modify(|s| s.skipped_events = skipped);
        }
        Ok(indexer)
    }

    /// Builds the collector's tables of the segments a reload brought (and drops
    /// those of segments merged away), so the first search to meet a segment does
    /// not pay for decoding it. Off the async threads; a failure is left to the
    /// search that meets the segment, which reports it.
    async fn warm_tables(&self) {
        let shared = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || shared.warm_tables()).await;
    }

    /// Commits off the async threads; `hash` is that of the event at the indexer's
    /// position, read from the log when not known.
    async fn commit(
        &mut self,
        mut indexer: Indexer,
        hash: Option<[u8; 32]>,
    ) -> Result<Indexer, SearchError> {
        let hash = match hash {
            Some(hash) => hash,
            None if indexer.position == 0 => [0; 32],
            None => hash_at(&self.store, indexer.position)
                .await?
                .ok_or_else(|| {
                    SearchError::Index(format!("the log has no event at {}", indexer.position))
                })?,
        };
        let (indexer, result) = tokio::task::spawn_blocking(move || {
            let result = indexer.commit(hash);
            (indexer, result)
        })
        .await
        .map_err(|e| SearchError::Index(e.to_string()))?;
        let checkpoint = result?;
        self.since_commit = Instant::now();
        self.shared.publish_segments();
        if self.status().ready {
            self.warm_tables().await;
        }
        self.shared
            .status
            .send_modify(|s| s.position = checkpoint.position);
        Ok(indexer)
    }
}

impl Shared {
    /// Builds the collector's tables of the segments the reader holds (blocking).
    fn warm_tables(&self) {
        let _ = self.tables.of(&self.reader.searcher(), &self.fields);
    }

    fn publish_segments(&self) {
        let segments = self.reader.searcher().segment_readers().len();
        self.status.send_modify(|s| s.segments = segments);
    }

    /// Waits for the merges of a build's segments (blocking), then lets searches
    /// see the merged segments. A merge that fails leaves its parts as they were:
    /// the index stays whole, only less compact.
    fn finish_balancing(&self, merges: Vec<FutureResult<Option<SegmentMeta>>>) {
        let started = Instant::now();
        let parts = merges.len();
        for merge in merges {
            if let Err(e) = merge.wait() {
                tracing::warn!(error = %e, "merging the search index's segments failed");
            }
        }
        if let Err(e) = self.reader.reload() {
            tracing::warn!(error = %e, "cannot reload the search index after merging");
        }
        self.warm_tables();
        self.publish_segments();
        self.status.send_modify(|s| s.merging = false);
        tracing::debug!(
            parts,
            millis = started.elapsed().as_millis() as u64,
            "search index segments merged"
        );
    }
}

/// Batches the catch-up reader may be ahead of the indexer.
const CATCH_UP_READ_AHEAD_BATCHES: usize = 1;

struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

//! Applying one batch: the read model's rows and the checkpoint move in one
//! transaction, after checking that the checkpoint is where this applier left it.
//!
//! That check is what makes a batch exactly-once. The checkpoint row is locked first
//! (`FOR UPDATE`), so two appliers of the same projection (a stale lease holder and
//! its successor, or the live runner and a rebuild's swap) serialise on it, and the
//! second one finds the checkpoint moved, rolls back and starts over from where the
//! first one left it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::{Object, Transaction};

use crate::decode::{Batch, Decoded};
use crate::error::{db_error, ProjectionError};
use crate::schema::shadow_schema;
use crate::{carts, catalog, inventory, orders, sales, Projection, READ_MODELS_SCHEMA};

/// Rows each read model keeps cached between batches, per table.
pub(crate) const ROW_CACHE_MAX_ROWS: usize = 200_000;

/// Why a read model could not apply a batch.
#[derive(Debug)]
pub(crate) enum ApplyError {
    /// The event at `position` cannot be applied: it does not decode, or it breaks
    /// an invariant of the read model (which means the log or this code is wrong).
    Poison {
        position: u64,
        reason: String,
    },
    Database(ProjectionError),
}

impl From<tokio_postgres::Error> for ApplyError {
    fn from(e: tokio_postgres::Error) -> Self {
        ApplyError::Database(db_error(e))
    }
}

/// Shorthand for a poison error at `event`.
pub(crate) fn poison(event: &Decoded, reason: impl Into<String>) -> ApplyError {
    ApplyError::Poison {
        position: event.position,
        reason: reason.into(),
    }
}

/// A read model: folds events into rows in memory and writes them in bulk.
///
/// The steps of [`ReadModel::apply`] are separate so that a rebuild can fold many
/// batches before it writes once: rows touched since the last `committed` (or
/// `forget`) stay in memory, and `write` writes each of them once, however many
/// events changed it.
#[async_trait]
pub(crate) trait ReadModel: Send + Sync {
    /// Notes the rows `events` touch, taking them from the cache where it has them.
    fn touch(&mut self, events: &[&Decoded]);

    /// Whether touched rows must be loaded before the fold.
    fn needs_load(&self) -> bool;

    /// Loads the touched rows that are neither cached nor new.
    async fn load(&mut self, tx: &Transaction<'_>) -> Result<(), ApplyError>;

    /// Folds `events` into the touched rows, in memory.
    fn fold(&mut self, events: &[&Decoded]) -> Result<(), ApplyError>;

    /// Writes every row changed since the last `committed` or `forget`. Changes
    /// nothing in memory, so a write whose transaction failed can be tried again.
    async fn write(&mut self, tx: &Transaction<'_>) -> Result<(), ApplyError>;

    /// [`ReadModel::write`] into tables that hold no rows yet (a shadow's first
    /// write), where a model may load its rows in bulk (`crate::bulk`).
    async fn write_new(&mut self, tx: &Transaction<'_>) -> Result<(), ApplyError> {
        self.write(tx).await
    }

    /// Applies `events` (ascending, only categories of this projection) within `tx`.
    /// Nothing is cached until [`ReadModel::committed`].
    async fn apply(&mut self, tx: &Transaction<'_>, events: &[&Decoded]) -> Result<(), ApplyError> {
        self.touch(events);
        self.load(tx).await?;
        self.fold(events)?;
        self.write(tx).await
    }

    /// The transaction of the last `write` committed.
    fn committed(&mut self);

    /// The last `write` did not commit, or another writer moved the checkpoint.
    fn forget(&mut self);
}

/// The read model of `projection` writing into `schema`.
pub(crate) fn read_model(projection: Projection, schema: &str) -> Box<dyn ReadModel> {
    match projection {
        Projection::Catalog => Box::new(catalog::model::CatalogModel::new(schema)),
        Projection::Inventory => Box::new(inventory::model::InventoryModel::new(schema)),
        Projection::Carts => Box::new(carts::model::CartsModel::new(schema)),
        Projection::Orders => Box::new(orders::model::OrdersModel::new(schema)),
        Projection::Sales => Box::new(sales::model::SalesModel::new(schema)),
    }
}

/// Where a checkpoint is: applied position plus the generation of the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub position: u64,
    pub generation: i32,
}

/// Which tables an applier writes and which checkpoint it moves.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// `read_models`, checkpoint in `projection_checkpoints`.
    Live { owner: String },
    /// `rebuild_<name>`, checkpoint in `projection_rebuilds`.
    Shadow,
}

/// Why a batch did not apply.
#[derive(Debug)]
pub(crate) enum BatchError {
    /// The checkpoint is not where this applier expected it: start over from there.
    Moved(Cursor),
    Poison {
        position: u64,
        reason: String,
    },
    Database(ProjectionError),
}

/// Applies batches of one projection to one target.
pub(crate) struct Applier {
    pub projection: Projection,
    model: Box<dyn ReadModel>,
    target: Target,
    rate: Rate,
    /// Fault injection for the crash tests: sleep after writing, before committing.
    pub pause_before_commit: Option<Duration>,
}

impl Applier {
    pub(crate) fn new(projection: Projection, target: Target) -> Self {
        let schema = match &target {
            Target::Live { .. } => READ_MODELS_SCHEMA.to_owned(),
            Target::Shadow => shadow_schema(projection),
        };
        Applier {
            projection,
            model: read_model(projection, &schema),
            target,
            rate: Rate::default(),
            pause_before_commit: None,
        }
    }

    /// Where the checkpoint is now (`None` when the row is missing).
    pub(crate) async fn cursor(&self, client: &Object) -> Result<Option<Cursor>, ProjectionError> {
        let row = client
            .query_opt(self.select_cursor(false), &[&self.projection.name()])
            .await
            .map_err(db_error)?;
        Ok(row.map(|row| cursor_from(&row)))
    }

    fn select_cursor(&self, for_update: bool) -> &'static str {
        match (&self.target, for_update) {
            (Target::Live { .. }, false) => {
                "SELECT position, generation FROM projection_checkpoints WHERE name = $1"
            }
            (Target::Live { .. }, true) => {
                "SELECT position, generation FROM projection_checkpoints WHERE name = $1 FOR UPDATE"
            }
            (Target::Shadow, false) => {
                "SELECT position, 0 FROM projection_rebuilds WHERE name = $1"
            }
            (Target::Shadow, true) => {
                "SELECT position, 0 FROM projection_rebuilds WHERE name = $1 FOR UPDATE"
            }
        }
    }

    /// Applies the events of `batch` after `cursor` and moves the checkpoint to
    /// `batch.last_position`, in one transaction.
    pub(crate) async fn apply_batch(
        &mut self,
        client: &mut Object,
        cursor: Cursor,
        batch: &Batch,
    ) -> Result<Cursor, BatchError> {
        debug_assert!(batch.last_position > cursor.position);
        let events = self.events_after(batch, cursor.position);
        let result = self
            .try_write(client, cursor, batch.last_position, Some(&events))
            .await;
        match &result {
            Ok(_) => {
                self.model.committed();
                self.rate.record(batch.last_position - cursor.position);
            }
            Err(_) => self.model.forget(),
        }
        result
    }

    /// Folds the events of `batch` after `after` into the model's rows in memory,
    /// without writing them: a rebuild stages many batches and writes every row once
    /// ([`Applier::write_staged`]). Rows the model has not got are loaded through
    /// `client` (only rows a former write stored: a row whose stream starts in what
    /// was staged is new). On an error, everything staged is forgotten.
    pub(crate) async fn stage(
        &mut self,
        client: &mut Object,
        batch: &Batch,
        after: u64,
    ) -> Result<(), BatchError> {
        let events = self.events_after(batch, after);
        self.model.touch(&events);
        let result = async {
            if self.model.needs_load() {
                let database = |e: tokio_postgres::Error| BatchError::Database(db_error(e));
                let tx = client.transaction().await.map_err(database)?;
                self.model.load(&tx).await.map_err(batch_error)?;
                tx.commit().await.map_err(database)?;
            }
            self.model.fold(&events).map_err(batch_error)
        }
        .await;
        if result.is_err() {
            self.model.forget();
        }
        result
    }

    /// Writes what [`Applier::stage`] folded since the last write and moves the
    /// checkpoint from `cursor` to `upto`, in one transaction. A database error
    /// keeps what was staged, so the write can be tried again; any other error
    /// forgets it.
    pub(crate) async fn write_staged(
        &mut self,
        client: &mut Object,
        cursor: Cursor,
        upto: u64,
    ) -> Result<Cursor, BatchError> {
        let result = self.try_write(client, cursor, upto, None).await;
        match &result {
            Ok(_) => {
                self.model.committed();
                self.rate.record(upto - cursor.position);
            }
            Err(BatchError::Database(_)) => {}
            Err(_) => self.model.forget(),
        }
        result
    }

    /// The events of `batch` after `after` of this projection's categories.
    fn events_after<'b>(&self, batch: &'b Batch, after: u64) -> Vec<&'b Decoded> {
        let categories = self.projection.categories();
        batch
            .events
            .iter()
            .filter(|e| e.position > after && categories.contains(e.category))
            .collect()
    }

    /// In one transaction: checks the checkpoint is at `cursor`, applies `events`
    /// (or writes the staged rows when `None`), and moves the checkpoint to `upto`.
    async fn try_write(
        &mut self,
        client: &mut Object,
        cursor: Cursor,
        upto: u64,
        events: Option<&[&Decoded]>,
    ) -> Result<Cursor, BatchError> {
        let name = self.projection.name();
        let database = |e: tokio_postgres::Error| BatchError::Database(db_error(e));
        let tx = client.transaction().await.map_err(database)?;
        if let Target::Shadow = self.target {
            // A shadow batch lost in a server crash goes with its checkpoint, and the
            // rebuild resumes before it: no need to wait for the WAL flush.
            tx.batch_execute("SET LOCAL synchronous_commit TO off")
                .await
                .map_err(database)?;
        }
        let row = tx
            .query_opt(self.select_cursor(true), &[&name])
            .await
            .map_err(database)?;
        let found = row.map(|row| cursor_from(&row));
        if found != Some(cursor) {
            // Dropping the transaction rolls it back.
            return Err(match found {
                Some(found) => BatchError::Moved(found),
                None => BatchError::Database(ProjectionError::Database(format!(
                    "the checkpoint of {name} is gone"
                ))),
            });
        }
        match events {
            Some(events) => self.model.apply(&tx, events).await,
            // Rows reach a shadow's tables only with a write that moves its checkpoint
            // past 0: at 0 they are empty.
            None if matches!(self.target, Target::Shadow) && cursor.position == 0 => {
                self.model.write_new(&tx).await
            }
            None => self.model.write(&tx).await,
        }
        .map_err(batch_error)?;
        let position = upto as i64;
        let rate = self.rate.per_sec_after(upto - cursor.position);
        match &self.target {
            Target::Live { owner } => {
                tx.execute(
                    "UPDATE projection_checkpoints SET position = $2, owner = $3, \
                     events_per_sec = $4, status = 'running', error = NULL, \
                     error_position = NULL, updated_at = now() WHERE name = $1",
                    &[&name, &position, owner, &rate],
                )
                .await
            }
            Target::Shadow => {
                tx.execute(
                    "UPDATE projection_rebuilds SET position = $2, events_per_sec = $3, \
                     updated_at = now() WHERE name = $1",
                    &[&name, &position, &rate],
                )
                .await
            }
        }
        .map_err(database)?;
        if let Some(pause) = self.pause_before_commit {
            tokio::time::sleep(pause).await;
        }
        tx.commit().await.map_err(database)?;
        Ok(Cursor {
            position: upto,
            generation: cursor.generation,
        })
    }

    /// Applies events within a transaction the caller owns, without checkpoints (the
    /// rebuild's swap catches the shadow up inside its own transaction). The rows
    /// count as written at once, so the caller must drop this applier after that
    /// transaction, whether it commits or not.
    pub(crate) async fn apply_in(
        &mut self,
        tx: &Transaction<'_>,
        batch: &Batch,
        after: u64,
    ) -> Result<(), ProjectionError> {
        let events = self.events_after(batch, after);
        let result = self.model.apply(tx, &events).await;
        self.model.committed();
        result.map_err(|e| match e {
            ApplyError::Poison { position, reason } => ProjectionError::Poison {
                projection: self.projection,
                position,
                reason,
            },
            ApplyError::Database(e) => e,
        })
    }

    /// Forgets cached rows (after the checkpoint moved elsewhere).
    pub(crate) fn forget(&mut self) {
        self.model.forget();
    }
}

fn batch_error(e: ApplyError) -> BatchError {
    match e {
        ApplyError::Poison { position, reason } => BatchError::Poison { position, reason },
        ApplyError::Database(e) => BatchError::Database(e),
    }
}

fn cursor_from(row: &tokio_postgres::Row) -> Cursor {
    let position: i64 = row.get(0);
    let generation: i32 = row.get(1);
    Cursor {
        position: position as u64,
        generation,
    }
}

/// Events per second over a sliding window of recent batches.
#[derive(Default)]
struct Rate {
    /// (when a batch committed, events it covered), oldest first.
    samples: VecDeque<(Instant, u64)>,
}

/// How far back the rate looks.
const RATE_WINDOW: Duration = Duration::from_secs(10);

impl Rate {
    fn record(&mut self, events: u64) {
        let now = Instant::now();
        self.samples.push_back((now, events));
        while let Some(&(at, _)) = self.samples.front() {
            if now.duration_since(at) <= RATE_WINDOW || self.samples.len() <= 2 {
                break;
            }
            self.samples.pop_front();
        }
    }

    /// The rate as it will be once a batch of `events` commits now.
    fn per_sec_after(&self, events: u64) -> f64 {
        let Some(first) = self.samples.front() else {
            return 0.0;
        };
        let elapsed = first.0.elapsed().as_secs_f64();
        if elapsed <= 0.0 {
            return 0.0;
        }
        let events: u64 = self.samples.iter().skip(1).map(|(_, n)| n).sum::<u64>() + events;
        events as f64 / elapsed
    }
}

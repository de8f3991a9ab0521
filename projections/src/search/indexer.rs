//! Applying the log to the index: the one writer of a process's index.
//!
//! Events are folded into states held in memory for the documents they touch since
//! the last commit (the index is the store of every other state: a document's
//! `state` field); at the end of each batch the touched documents are replaced
//! (delete by key, add), and a commit writes them together with the checkpoint (the
//! last position applied and its event's hash) in the commit's payload. A process
//! killed at any instant therefore finds the index and its checkpoint of its last
//! commit, never documents without their position or the other way round.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tantivy::collector::TopDocs;
use tantivy::index::{SegmentId, SegmentMeta};
use tantivy::merge_policy::{LogMergePolicy, NoMergePolicy};
use tantivy::query::TermQuery;
use tantivy::schema::{IndexRecordOption, Value};
use tantivy::{FutureResult, Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};
use uuid::Uuid;

use super::document::{stock_document, ProductState, StockState};
use super::schema::{self, Fields, SCHEMA_VERSION};
use super::SearchError;
use crate::cache::{FastMap, FastSet};
use crate::decode::{Batch, Decoded, ShopEvent};

/// What a commit's payload records: where in the log the index is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    pub schema: u32,
    /// The last log position applied (0: none).
    pub position: u64,
    /// The hash of the event at `position`, to tell a log that was replaced.
    #[serde(with = "hex_hash")]
    pub hash: [u8; 32],
}

impl Checkpoint {
    pub(crate) const START: Checkpoint = Checkpoint {
        schema: SCHEMA_VERSION,
        position: 0,
        hash: [0; 32],
    };
}

mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(hash: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        let text: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let mut hash = [0u8; 32];
        if text.len() != 64 {
            return Err(serde::de::Error::custom("a hash has 64 hex digits"));
        }
        for (i, byte) in hash.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                .map_err(serde::de::Error::custom)?;
        }
        Ok(hash)
    }
}

/// How the writer works.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriterConfig {
    pub heap_bytes: usize,
    pub threads: usize,
}

/// An index opened for writing, with its checkpoint.
pub(crate) struct Opened {
    pub index: Index,
    pub checkpoint: Checkpoint,
}

/// Opens the index in `dir`, or creates an empty one there when there is none or it
/// cannot be used (unreadable, damaged, another schema): then `rebuilt` says why.
pub(crate) fn open_or_create(dir: &Path) -> Result<(Opened, Option<String>), SearchError> {
    let has_index = dir.join("meta.json").exists();
    let problem = if has_index {
        match open(dir) {
            Ok(opened) => return Ok((opened, None)),
            Err(reason) => Some(reason),
        }
    } else {
        None
    };
    if dir.exists() {
        // Only what an index holds is removed: the folder may be shared with
        // nothing else, but a typo in --search-dir must not empty a home folder.
        for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
            let path = entry.map_err(|e| io_error(dir, e))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let ours = name == "meta.json"
                || name == ".managed.json"
                || name.starts_with(".tantivy")
                || name.ends_with(".idx")
                || name.ends_with(".pos")
                || name.ends_with(".term")
                || name.ends_with(".fieldnorm")
                || name.ends_with(".fast")
                || name.ends_with(".store")
                || name.ends_with(".del")
                || name.ends_with(".tmp");
            if ours && path.is_file() {
                std::fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let index = Index::create_in_dir(dir, schema::schema()).map_err(tantivy_error)?;
    schema::register_analyzer(&index);
    Ok((
        Opened {
            index,
            checkpoint: Checkpoint::START,
        },
        problem,
    ))
}

/// An existing index, if it is whole and of this schema.
fn open(dir: &Path) -> Result<Opened, String> {
    let index = Index::open_in_dir(dir).map_err(|e| format!("cannot open it: {e}"))?;
    if index.schema() != schema::schema() {
        return Err("its fields are not this version's".to_owned());
    }
    let damaged = index
        .validate_checksum()
        .map_err(|e| format!("cannot check it: {e}"))?;
    if !damaged.is_empty() {
        return Err(format!("damaged files: {damaged:?}"));
    }
    let metas = index
        .load_metas()
        .map_err(|e| format!("cannot read its commit: {e}"))?;
    let checkpoint = match metas.payload {
        None => Checkpoint::START,
        Some(payload) => serde_json::from_str::<Checkpoint>(&payload)
            .map_err(|e| format!("its checkpoint does not parse: {e}"))?,
    };
    if checkpoint.schema != SCHEMA_VERSION {
        return Err(format!(
            "it was built by schema version {}, this is {SCHEMA_VERSION}",
            checkpoint.schema
        ));
    }
    schema::register_analyzer(&index);
    Ok(Opened { index, checkpoint })
}

pub(crate) fn io_error(path: &Path, e: std::io::Error) -> SearchError {
    SearchError::Index(format!("{}: {e}", path.display()))
}

pub(crate) fn tantivy_error(e: tantivy::TantivyError) -> SearchError {
    SearchError::Index(e.to_string())
}

/// States held at a commit from which they are freed on a thread of their own.
const DROP_APART_MIN_STATES: usize = 50_000;

/// A state held since the last commit.
struct Held<T> {
    state: T,
    /// The index holds a document for it (committed, or added since): replacing it
    /// must delete that one first.
    indexed: bool,
    dirty: bool,
    /// The number of the last batch that changed it.
    touched: u64,
}

/// What an applied batch changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Applied {
    pub products: usize,
    /// Events that could not be applied (skipped, see the module documentation).
    pub skipped: usize,
}

pub(crate) struct Indexer {
    fields: Fields,
    writer: IndexWriter,
    reader: IndexReader,
    products: FastMap<Uuid, Held<ProductState>>,
    /// Stock of SKUs no product has (yet): kept in documents of their own until a
    /// product with the SKU takes it over.
    stock: FastMap<String, Held<StockState>>,
    /// The SKUs with a stock document in the index (committed or written since), so
    /// a new SKU's stock is looked up only when there is some.
    stock_documents: FastSet<String>,
    /// Stock documents a product took over: deleted at the next write.
    adopted: Vec<String>,
    /// SKU -> product, for the products held.
    owners: FastMap<String, Uuid>,
    /// Products and SKUs that no document has yet (looked up once per commit).
    missing_products: FastSet<Uuid>,
    /// Products changed and not written yet.
    unwritten: Vec<Uuid>,
    /// Batches applied so far: the clock of `Held::touched`.
    batches: u64,
    /// Where the applied events end (committed or not).
    pub position: u64,
    /// Where the last commit ends.
    pub committed: Checkpoint,
    /// Product documents written since the indexer started.
    pub products_written: u64,
}

impl Indexer {
    pub(crate) fn new(
        opened: &Opened,
        reader: IndexReader,
        config: WriterConfig,
    ) -> Result<Indexer, SearchError> {
        let writer = opened
            .index
            .writer_with_num_threads(config.threads.max(1), config.heap_bytes)
            .map_err(tantivy_error)?;
        let fields = Fields::of(&opened.index.schema()).map_err(tantivy_error)?;
        Ok(Indexer {
            stock_documents: stock_documents(&reader, fields)?,
            fields,
            writer,
            reader,
            products: FastMap::default(),
            stock: FastMap::default(),
            adopted: Vec::new(),
            owners: FastMap::default(),
            missing_products: FastSet::default(),
            unwritten: Vec::new(),
            batches: 0,
            position: opened.checkpoint.position,
            committed: opened.checkpoint,
            products_written: 0,
        })
    }

    /// States held in memory (bounded by committing).
    pub(crate) fn held(&self) -> usize {
        self.products.len() + self.stock.len()
    }

    /// Whether applied events changed a document that is not written yet.
    pub(crate) fn changed(&self) -> bool {
        !self.adopted.is_empty()
            || self.products.values().any(|h| h.dirty)
            || self.stock.values().any(|h| h.dirty)
    }

    /// Applies a batch after `self.position` to the states held, then writes the
    /// products that the batch left alone and earlier ones changed: while catching
    /// up, a product's events lie close together in the log, so it is written about
    /// once, and the index's threads work while the next batch is read. The rest
    /// are written at the next commit.
    pub(crate) fn apply(&mut self, batch: &Batch) -> Result<Applied, SearchError> {
        let mut applied = Applied::default();
        for event in &batch.events {
            if event.position <= self.position {
                continue;
            }
            match self.apply_event(event) {
                Ok(true) => applied.products += 1,
                Ok(false) => {}
                Err(reason) => {
                    applied.skipped += 1;
                    tracing::warn!(position = event.position, reason = %reason, "search index skipped an event");
                }
            }
        }
        self.position = self.position.max(batch.last_position);
        self.write_settled()?;
        self.batches += 1;
        Ok(applied)
    }

    /// Marks a held product changed by the current batch.
    fn touch(&mut self, id: Uuid) -> Result<&mut ProductState, String> {
        let held = self.products.get_mut(&id).ok_or("product not held")?;
        if !held.dirty {
            held.dirty = true;
            self.unwritten.push(id);
        }
        held.touched = self.batches;
        Ok(&mut held.state)
    }

    /// Writes the changed products the current batch did not change.
    fn write_settled(&mut self) -> Result<(), SearchError> {
        let mut waiting = Vec::new();
        for id in std::mem::take(&mut self.unwritten) {
            let Some(held) = self.products.get_mut(&id) else {
                continue;
            };
            if !held.dirty {
                continue;
            }
            if held.touched == self.batches {
                waiting.push(id);
                continue;
            }
            write_product(&mut self.writer, &self.fields, held)?;
            self.products_written += 1;
        }
        self.unwritten = waiting;
        Ok(())
    }

    /// Returns whether a product changed.
    fn apply_event(&mut self, event: &Decoded) -> Result<bool, String> {
        match &event.event {
            Ok(ShopEvent::Product { id, event: e }) => {
                let id = *id.as_uuid();
                if let Some(created) =
                    ProductState::created(id, e, event.recorded_at, event.position)
                {
                    // The first event of its stream: no document can exist yet.
                    if event.version > 1 && self.product(id)?.is_some() {
                        return Err(format!("product {id} is created twice"));
                    }
                    let mut created = created;
                    for sku in &mut created.skus {
                        sku.stock = self.adopt_stock(&sku.sku)?;
                    }
                    for sku in &created.skus {
                        self.owners.insert(sku.sku.clone(), id);
                    }
                    self.missing_products.remove(&id);
                    self.products.insert(
                        id,
                        Held {
                            state: created,
                            indexed: false,
                            dirty: false,
                            touched: self.batches,
                        },
                    );
                    self.touch(id)?;
                    return Ok(true);
                }
                if self.product(id)?.is_none() {
                    return Err(format!("product {id} does not exist"));
                }
                let added = self
                    .touch(id)?
                    .apply(e)
                    .map_err(|r| r.0)?
                    .map(str::to_owned);
                if let Some(sku) = added {
                    let stock = self.adopt_stock(&sku)?;
                    self.owners.insert(sku.clone(), id);
                    let state = self.touch(id)?;
                    if let Some(s) = state.skus.iter_mut().find(|s| s.sku == sku) {
                        s.stock = stock;
                    }
                }
                Ok(true)
            }
            Ok(ShopEvent::Inventory { sku, event: e }) => {
                let sku = sku.as_str();
                if let Some(owner) = self.owner_of(sku)? {
                    let s = self
                        .touch(owner)?
                        .skus
                        .iter_mut()
                        .find(|s| s.sku == sku)
                        .ok_or("SKU not in its product")?;
                    s.stock.apply(e);
                    return Ok(true);
                }
                if !self.stock.contains_key(sku) {
                    let (state, indexed) = match self.stock_document(sku)? {
                        Some(state) => (state, true),
                        None => (StockState::default(), false),
                    };
                    self.stock.insert(
                        sku.to_owned(),
                        Held {
                            state,
                            indexed,
                            dirty: false,
                            touched: self.batches,
                        },
                    );
                }
                let held = self.stock.get_mut(sku).ok_or("stock not held")?;
                held.state.apply(e);
                held.dirty = true;
                Ok(false)
            }
            Ok(ShopEvent::Cart { .. } | ShopEvent::Order { .. }) => Ok(false),
            Err(reason) => Err(reason.clone()),
        }
    }

    /// The product, held from now on if it exists.
    fn product(&mut self, id: Uuid) -> Result<Option<&ProductState>, String> {
        if !self.products.contains_key(&id) && !self.missing_products.contains(&id) {
            let term = Term::from_field_bytes(self.fields.product_id, id.as_bytes());
            match self.lookup::<ProductState>(term)? {
                Some(state) => self.hold(state),
                None => {
                    self.missing_products.insert(id);
                }
            }
        }
        Ok(self.products.get(&id).map(|h| &h.state))
    }

    /// Holds a product read from the index.
    fn hold(&mut self, state: ProductState) {
        let id = state.product_id;
        for sku in &state.skus {
            self.owners.insert(sku.sku.clone(), id);
        }
        self.products.insert(
            id,
            Held {
                state,
                indexed: true,
                dirty: false,
                touched: self.batches,
            },
        );
    }

    /// The stock a SKU had before a product took it in (zero if the log has none
    /// yet); its own document goes at the next write.
    fn adopt_stock(&mut self, sku: &str) -> Result<StockState, String> {
        if let Some(held) = self.stock.remove(sku) {
            if held.indexed {
                self.adopted.push(sku.to_owned());
            }
            return Ok(held.state);
        }
        match self.stock_document(sku)? {
            Some(state) => {
                self.adopted.push(sku.to_owned());
                Ok(state)
            }
            None => Ok(StockState::default()),
        }
    }

    /// The SKU's stock document in the index, if it has one.
    fn stock_document(&self, sku: &str) -> Result<Option<StockState>, String> {
        if !self.stock_documents.contains(sku) {
            return Ok(None);
        }
        self.lookup::<StockState>(Term::from_field_text(self.fields.stock_sku, sku))
    }

    /// The product a SKU belongs to, held from now on.
    fn owner_of(&mut self, sku: &str) -> Result<Option<Uuid>, String> {
        if let Some(owner) = self.owners.get(sku) {
            return Ok(Some(*owner));
        }
        if self.stock.contains_key(sku) {
            // Stock held on its own: no product had the SKU when it was looked up,
            // and one that adds it since takes the stock over.
            return Ok(None);
        }
        let term = Term::from_field_text(self.fields.sku, sku);
        let Some(state) = self.lookup::<ProductState>(term)? else {
            return Ok(None);
        };
        let id = state.product_id;
        if self.products.contains_key(&id) {
            // Held already under its id, with newer state than the committed one.
            return Ok(Some(id));
        }
        self.hold(state);
        Ok(Some(id))
    }

    /// The state in the committed document with `term`, if any.
    fn lookup<T: serde::de::DeserializeOwned>(&self, term: Term) -> Result<Option<T>, String> {
        let searcher = self.reader.searcher();
        let query = TermQuery::new(term, IndexRecordOption::Basic);
        let hits = searcher
            .search(&query, &TopDocs::with_limit(1).order_by_score())
            .map_err(|e| e.to_string())?;
        let Some((_, address)) = hits.first() else {
            return Ok(None);
        };
        let doc: TantivyDocument = searcher.doc(*address).map_err(|e| e.to_string())?;
        let bytes = doc
            .get_first(self.fields.state)
            .and_then(|v| v.as_bytes())
            .ok_or("a document without state")?;
        serde_json::from_slice(bytes)
            .map(Some)
            .map_err(|e| format!("a document's state does not parse: {e}"))
    }

    /// Replaces the documents of every state changed since the last write.
    fn write_touched(&mut self) -> Result<(), SearchError> {
        for sku in self.adopted.drain(..) {
            self.writer
                .delete_term(Term::from_field_text(self.fields.stock_sku, &sku));
            self.stock_documents.remove(&sku);
        }
        for id in std::mem::take(&mut self.unwritten) {
            let Some(held) = self.products.get_mut(&id).filter(|h| h.dirty) else {
                continue;
            };
            write_product(&mut self.writer, &self.fields, held)?;
            self.products_written += 1;
        }
        for (sku, held) in self.stock.iter_mut().filter(|(_, h)| h.dirty) {
            if held.indexed {
                self.writer
                    .delete_term(Term::from_field_text(self.fields.stock_sku, sku));
            }
            self.writer
                .add_document(stock_document(&self.fields, sku, held.state))
                .map_err(tantivy_error)?;
            self.stock_documents.insert(sku.clone());
            held.indexed = true;
            held.dirty = false;
        }
        Ok(())
    }

    /// Writes the changed documents and commits them with the checkpoint (`hash`
    /// being that of the event at `self.position`), then lets searches see them.
    pub(crate) fn commit(&mut self, hash: [u8; 32]) -> Result<Checkpoint, SearchError> {
        let started = std::time::Instant::now();
        self.write_touched()?;
        let checkpoint = Checkpoint {
            schema: SCHEMA_VERSION,
            position: self.position,
            hash,
        };
        let payload = serde_json::to_string(&checkpoint)
            .map_err(|e| SearchError::Index(format!("cannot encode the checkpoint: {e}")))?;
        let mut prepared = self.writer.prepare_commit().map_err(tantivy_error)?;
        prepared.set_payload(&payload);
        prepared.commit().map_err(tantivy_error)?;
        self.reader.reload().map_err(tantivy_error)?;
        tracing::debug!(
            position = self.position,
            held = self.held(),
            millis = started.elapsed().as_millis() as u64,
            "search index committed"
        );
        self.committed = checkpoint;
        // The index now holds every state: memory starts over. Freeing a catch-up's
        // half a million product states, each a few dozen allocations, would hold
        // up the next batch (and, after the last commit, the index's readiness):
        // large maps are dropped on a thread of their own meanwhile.
        if self.products.len() + self.stock.len() >= DROP_APART_MIN_STATES {
            let products = std::mem::take(&mut self.products);
            let stock = std::mem::take(&mut self.stock);
            let owners = std::mem::take(&mut self.owners);
            let spawned = std::thread::Builder::new()
                .name("search-free".to_owned())
                .spawn(move || drop((products, stock, owners)));
            // Without a thread, the maps were dropped here by the failed spawn.
            drop(spawned);
        } else {
            self.products.clear();
            self.stock.clear();
            self.owners.clear();
        }
        self.missing_products.clear();
        Ok(checkpoint)
    }

    /// Catching up: no merges while segments come one after another (a few large
    /// segments, one per commit and writer thread, cost searches less than merging
    /// them costs the build). Following: tantivy's default merge policy.
    pub(crate) fn set_catching_up(&self, catching_up: bool) {
        if catching_up {
            self.writer.set_merge_policy(Box::new(NoMergePolicy));
        } else {
            self.writer
                .set_merge_policy(Box::new(LogMergePolicy::default()));
        }
    }

    /// Starts merging the committed segments into `parts` of about equal size (one
    /// per search thread): a search then walks `parts` term dictionaries and sets of
    /// scorers instead of one per commit and writer thread, and its threads get equal
    /// shares. Returns the merges started, none when there are `parts` segments or
    /// fewer. They run on tantivy's merge threads while the index is searched and
    /// written; each ends by committing its merged segment in place of its parts,
    /// with the checkpoint of the last commit, and the reader sees it once reloaded.
    pub(crate) fn start_balancing(
        &mut self,
        parts: usize,
    ) -> Result<Vec<FutureResult<Option<SegmentMeta>>>, SearchError> {
        let parts = parts.max(1);
        let mut metas = self
            .writer
            .index()
            .searchable_segment_metas()
            .map_err(tantivy_error)?;
        if metas.len() <= parts {
            return Ok(Vec::new());
        }
        // Largest first, each to the lightest group so far.
        metas.sort_by_key(|meta| std::cmp::Reverse(meta.num_docs()));
        let mut groups: Vec<(u64, Vec<SegmentId>)> = vec![(0, Vec::new()); parts];
        for meta in metas {
            if let Some(lightest) = groups.iter_mut().min_by_key(|(docs, _)| *docs) {
                lightest.0 += u64::from(meta.num_docs());
                lightest.1.push(meta.id());
            }
        }
        Ok(groups
            .iter()
            .filter(|(_, ids)| ids.len() > 1)
            .map(|(_, ids)| self.writer.merge(ids))
            .collect())
    }

    /// Waits for merges to finish (at shutdown, so no merge is cut off midway).
    pub(crate) fn close(self) {
        if let Err(e) = self.writer.wait_merging_threads() {
            tracing::warn!(error = %e, "search index merges did not finish");
        }
    }
}

/// Replaces a product's document.
fn write_product(
    writer: &mut IndexWriter,
    fields: &Fields,
    held: &mut Held<ProductState>,
) -> Result<(), SearchError> {
    if held.indexed {
        let id = held.state.product_id;
        writer.delete_term(Term::from_field_bytes(fields.product_id, id.as_bytes()));
    }
    writer
        .add_document(held.state.document(fields))
        .map_err(tantivy_error)?;
    held.indexed = true;
    held.dirty = false;
    Ok(())
}

/// The SKUs with a stock document in the index.
fn stock_documents(reader: &IndexReader, fields: Fields) -> Result<FastSet<String>, SearchError> {
    let mut skus = FastSet::default();
    for segment in reader.searcher().segment_readers() {
        let inverted = segment
            .inverted_index(fields.stock_sku)
            .map_err(tantivy_error)?;
        let mut terms = inverted
            .terms()
            .stream()
            .map_err(|e| SearchError::Index(e.to_string()))?;
        while terms.advance() {
            // A term of deleted documents only costs a look-up that finds nothing.
            if let Ok(sku) = std::str::from_utf8(terms.key()) {
                skus.insert(sku.to_owned());
            }
        }
    }
    Ok(skus)
}

/// A reader that is reloaded by the writer after each commit.
pub(crate) fn reader(index: &Index) -> Result<IndexReader, SearchError> {
    index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()
        .map_err(tantivy_error)
}

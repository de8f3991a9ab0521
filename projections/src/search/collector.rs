//! One pass over a search's matches: the count, the top page in the request's
//! order, and every facet (brands, the categories below the filter, price buckets,
//! in stock).
//!
//! What a match needs is read from a [`SegmentTable`] per segment, plain arrays by
//! document decoded once from the fast fields, rather than from the bitpacked
//! columns on every match. Visibility is checked here too, against the table's
//! bitset of published products, instead of intersecting every query with the
//! visibility term's postings (nine documents in ten): a bit test per match rather
//! than a posting list walked alongside the matches.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::{Column, StrColumn};
use tantivy::fastfield::FacetReader;
use tantivy::index::SegmentId;
use tantivy::query::Weight;
use tantivy::schema::IndexRecordOption;
use tantivy::{
    DocAddress, DocId, DocSet, Score, Searcher, SegmentOrdinal, SegmentReader, Term, TERMINATED,
};

use super::query::{SearchSort, PRICE_BUCKET_EDGES};
use super::schema::{price_in, Fields};
use super::SearchError;

/// The sort key of a hit: greater first. The last part, the creation position
/// reversed, is unique, so pages never overlap or skip.
pub(crate) type SortKey = (Score, u64, u64);

/// A price a product does not have in the currency.
const NO_PRICE: u64 = u64::MAX;
/// A table row's bit of a published product (the only documents a search returns).
const PUBLISHED: u64 = 1 << 63;
/// A table row's bit of a product with a unit available.
const IN_STOCK: u64 = 1 << 62;
/// Bits of a table row below the flags.
const ROW_BITS: u32 = 62;
/// Bits of a row that hold a document's rank by creation position, when it has one.
const RANK_BITS: u32 = 31;
const RANK_MASK: u64 = (1 << RANK_BITS) - 1;

/// Where a segment's rows keep what. Below the two flags, the brand's ordinal and
/// the category's, each plus one (0: none), in as many bits as the segment's
/// ordinals need; and when they leave [`RANK_BITS`] free, in the low bits the
/// document's rank among the segment's documents by creation position, so that
/// the ties of a search, broken by creation position, need no other read (ranks
/// order the documents of a segment as their positions do; the hits a segment keeps
/// get their positions back before segments are merged).
#[derive(Debug, Clone, Copy)]
struct Layout {
    brand_shift: u32,
    brand_mask: u64,
    category_shift: u32,
    category_mask: u64,
    ranked: bool,
}

impl Layout {
    fn of(brands: u64, categories: u64) -> Layout {
        let bits = |values: u64| (u64::BITS - values.leading_zeros()).max(1);
        let (brand_bits, category_bits) = (bits(brands), bits(categories));
        let ranked = brand_bits + category_bits + RANK_BITS <= ROW_BITS;
        let (brand_bits, category_bits, low) = if ranked {
            (brand_bits, category_bits, RANK_BITS)
        } else {
            (ROW_BITS / 2, ROW_BITS / 2, 0)
        };
        Layout {
            brand_shift: low + category_bits,
            brand_mask: (1 << brand_bits) - 1,
            category_shift: low,
            category_mask: (1 << category_bits) - 1,
            ranked,
        }
    }

    fn brand(self, row: u64) -> Option<usize> {
        (((row >> self.brand_shift) & self.brand_mask) as usize).checked_sub(1)
    }

    fn category(self, row: u64) -> Option<usize> {
        (((row >> self.category_shift) & self.category_mask) as usize).checked_sub(1)
    }
}

/// What a search reads of every match in a segment, decoded once from the index
/// into plain arrays by document: one row of whether it is a published product,
/// whether it is in stock, its brand and its category (ordinals of the segment's
/// columns: a product has one brand and at most one category, see `document`) and,
/// where they leave room, its rank by creation position (see [`Layout`]), so a
/// match costs one memory access where the fast fields cost one each; its creation
/// position; and per currency asked for so far its lowest price. A segment never
/// changes (deletions are tantivy's alive bitset, applied before any collector sees
/// a match), so the table lives as long as the segment: 16 bytes a document, and 8
/// more per currency.
pub(crate) struct SegmentTable {
    rows: Vec<u64>,
    layout: Layout,
    seq: Vec<u64>,
    prices: Mutex<HashMap<u64, Arc<Vec<u64>>>>,
    price_column: Option<Column<u64>>,
}

impl SegmentTable {
    fn build(segment: &SegmentReader, fields: &Fields) -> Result<SegmentTable, SearchError> {
        let max_doc = segment.max_doc();
        let fast = segment.fast_fields();
        let mut rows = vec![0u64; max_doc as usize];
        let inverted = segment
            .inverted_index(fields.visible)
            .map_err(index_error)?;
        let term = Term::from_field_u64(fields.visible, 1);
        if let Some(mut postings) = inverted
            .read_postings(&term, IndexRecordOption::Basic)
            .map_err(index_error)?
        {
            let mut doc = postings.doc();
            while doc != TERMINATED {
                rows[doc as usize] |= PUBLISHED;
                doc = postings.advance();
            }
        }
        if let Some(column) = fast.column_opt::<u64>("in_stock").map_err(index_error)? {
            for (doc, row) in (0..max_doc).zip(rows.iter_mut()) {
                if column.first(doc) == Some(1) {
                    *row |= IN_STOCK;
                }
            }
        }
        let brands = fast.str("brand").map_err(index_error)?;
        let facets = segment.facet_reader("category").ok();
        let layout = Layout::of(
            brands.as_ref().map_or(0, |c| c.num_terms() as u64),
            facets.as_ref().map_or(0, |f| f.num_facets() as u64),
        );
        if let Some(column) = &brands {
            for (doc, row) in (0..max_doc).zip(rows.iter_mut()) {
                if let Some(ord) = column.term_ords(doc).next() {
                    *row |= ((ord + 1) & layout.brand_mask) << layout.brand_shift;
                }
            }
        }
        if let Some(facets) = &facets {
            for (doc, row) in (0..max_doc).zip(rows.iter_mut()) {
                if let Some(ord) = facets.facet_ords(doc).next() {
                    *row |= ((ord + 1) & layout.category_mask) << layout.category_shift;
                }
            }
        }
        let seq: Vec<u64> = match fast.column_opt::<u64>("seq").map_err(index_error)? {
            Some(column) => (0..max_doc)
                .map(|doc| column.first(doc).unwrap_or(0))
                .collect(),
            None => vec![0; max_doc as usize],
        };
        if layout.ranked {
            // A segment holds fewer than 2^31 documents: every rank fits.
            let mut by_position: Vec<DocId> = (0..max_doc).collect();
            by_position.sort_unstable_by_key(|&doc| seq[doc as usize]);
            for (rank, doc) in (0u64..).zip(by_position) {
                rows[doc as usize] |= rank & RANK_MASK;
            }
        }
        Ok(SegmentTable {
            rows,
            layout,
            seq,
            prices: Mutex::new(HashMap::new()),
            price_column: fast.column_opt::<u64>("price").map_err(index_error)?,
        })
    }

    /// The lowest price in `currency` by document ([`NO_PRICE`] where none).
    fn prices(&self, currency: u64) -> Arc<Vec<u64>> {
        let mut prices = self.prices.lock().unwrap_or_else(PoisonError::into_inner);
        prices
            .entry(currency)
            .or_insert_with(|| {
                let max_doc = self.rows.len() as DocId;
                Arc::new(match &self.price_column {
                    Some(column) => (0..max_doc)
                        .map(|doc| {
                            column
                                .values_for_doc(doc)
                                .find_map(|key| price_in(key, currency))
                                .unwrap_or(NO_PRICE)
                        })
                        .collect(),
                    None => vec![NO_PRICE; max_doc as usize],
                })
            })
            .clone()
    }
}

fn index_error(e: impl std::fmt::Display) -> SearchError {
    SearchError::Index(e.to_string())
}

/// The [`SegmentTable`]s of the segments searches meet: built after each commit
/// that reloads the reader (see `Follower::warm_tables`), else by the first search
/// that meets the segment.
#[derive(Default)]
pub(crate) struct SegmentTables {
    held: Mutex<HeldTables>,
}

#[derive(Default)]
struct HeldTables {
    /// The newest searcher generation seen: only its searches drop tables.
    generation: u64,
    tables: HashMap<SegmentId, Arc<SegmentTable>>,
}

impl SegmentTables {
    /// The tables of `searcher`'s segments, by segment ordinal. A missing table is
    /// built without holding the lock, so searches of other segments do not wait
    /// for it (two searches meeting a new segment at once may both build it).
    /// Tables of segments the newest searcher no longer has (merged away) are
    /// dropped; a search on an older searcher drops nothing, so it cannot throw
    /// away the tables of the segments that replaced its own.
    pub(crate) fn of(
        &self,
        searcher: &Searcher,
        fields: &Fields,
    ) -> Result<Vec<Arc<SegmentTable>>, SearchError> {
        let segments = searcher.segment_readers();
        let lock = || self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let mut found: Vec<Option<Arc<SegmentTable>>> = {
            let held = lock();
            segments
                .iter()
                .map(|segment| held.tables.get(&segment.segment_id()).cloned())
                .collect()
        };
        let mut built = Vec::new();
        for (segment, table) in segments.iter().zip(found.iter_mut()) {
            if table.is_none() {
                let fresh = Arc::new(SegmentTable::build(segment, fields)?);
                built.push((segment.segment_id(), fresh.clone()));
                *table = Some(fresh);
            }
        }
        let generation = searcher.generation().generation_id();
        let mut held = lock();
        for (id, table) in built {
            held.tables.entry(id).or_insert(table);
        }
        if generation >= held.generation {
            held.generation = generation;
            if held.tables.len() > segments.len() {
                held.tables
                    .retain(|id, _| segments.iter().any(|s| s.segment_id() == *id));
            }
        }
        Ok(found.into_iter().flatten().collect())
    }
}

/// What one search asks of its matches.
pub(crate) struct SearchCollector {
    pub sort: SearchSort,
    /// The currency of the price sort and buckets.
    pub currency: Option<u64>,
    /// Hits kept: the page's offset plus its limit.
    pub top: usize,
    /// Only products in stock match.
    pub in_stock_only: bool,
    /// Only products whose lowest price in the currency lies in this range
    /// (inclusive, minor units) match.
    pub price_range: Option<(u64, u64)>,
    /// The encoded category facet whose children are counted (empty: the root).
    pub category_root: Vec<u8>,
    /// By segment ordinal, from [`SegmentTables::of`] for the same searcher.
    pub tables: Vec<Arc<SegmentTable>>,
}

/// The matches of a search, counted.
#[derive(Default)]
pub(crate) struct Collected {
    pub total: u64,
    /// The best `top` matches, best first.
    pub top: Vec<(SortKey, DocAddress)>,
    pub brands: HashMap<String, u64>,
    pub categories: HashMap<String, u64>,
    pub buckets: [u64; PRICE_BUCKET_EDGES.len()],
    pub in_stock: u64,
}

/// Matches a segment's collector takes at a time: the table's rows of a block are
/// read in one tight loop first, so that their cache misses (the table is larger
/// than the cache, and a match's row is rarely next to the last one's) overlap
/// instead of coming one per match, in turn with the posting lists' work.
const COLLECT_BLOCK_DOCS: usize = 64;
/// A creation position not read yet.
const NO_SEQ: u64 = u64::MAX;

/// A category ordinal that is not below the counted facet.
const NOT_COUNTED: u32 = u32::MAX;

pub(crate) struct SegmentSearchCollector {
    segment: SegmentOrdinal,
    sort: SearchSort,
    in_stock_only: bool,
    price_range: Option<(u64, u64)>,
    table: Arc<SegmentTable>,
    /// The lowest price in the request's currency by document, when it has one.
    prices: Option<Arc<Vec<u64>>>,
    /// To name the brands counted.
    brand: Option<StrColumn>,
    brand_counts: Vec<u64>,
    /// The counted child of each category ordinal, or [`NOT_COUNTED`].
    category_child: Vec<u32>,
    category_names: Vec<String>,
    category_counts: Vec<u64>,
    buckets: [u64; PRICE_BUCKET_EDGES.len()],
    in_stock_count: u64,
    total: u64,
    top: TopK,
}

impl Collector for SearchCollector {
    type Fruit = Collected;
    type Child = SegmentSearchCollector;

    fn for_segment(
        &self,
        segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<SegmentSearchCollector> {
        let table = self.tables.get(segment as usize).cloned().ok_or_else(|| {
            tantivy::TantivyError::InternalError(format!("no table for segment {segment}"))
        })?;
        let brand = reader.fast_fields().str("brand")?;
        let brand_terms = brand.as_ref().map_or(0, |c| c.num_terms());
        let (category_child, category_names) = match reader.facet_reader("category") {
            Ok(facets) => children_of(&facets, &self.category_root)?,
            Err(_) => (Vec::new(), Vec::new()),
        };
        Ok(SegmentSearchCollector {
            segment,
            sort: self.sort,
            in_stock_only: self.in_stock_only,
            price_range: self.price_range,
            prices: self.currency.map(|currency| table.prices(currency)),
            table,
            brand,
            brand_counts: vec![0; brand_terms],
            category_counts: vec![0; category_names.len()],
            category_child,
            category_names,
            buckets: [0; PRICE_BUCKET_EDGES.len()],
            in_stock_count: 0,
            total: 0,
            top: TopK::new(self.top),
        })
    }

    /// tantivy's loop, with matches handed over in blocks (see
    /// [`SegmentSearchCollector::collect_block`]).
    fn collect_segment(
        &self,
        weight: &dyn Weight,
        segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<Collected> {
        let mut collector = self.for_segment(segment, reader)?;
        let alive = reader.alive_bitset();
        let is_alive = |doc: DocId| alive.is_none_or(|alive| alive.is_alive(doc));
        let mut docs = [0 as DocId; COLLECT_BLOCK_DOCS];
        let mut scores = [0.0 as Score; COLLECT_BLOCK_DOCS];
        let mut held = 0;
        if self.requires_scoring() {
            weight.for_each(reader, &mut |doc, score| {
                if is_alive(doc) {
                    docs[held] = doc;
                    scores[held] = score;
                    held += 1;
                    if held == COLLECT_BLOCK_DOCS {
                        collector.collect_block(&docs, &scores);
                        held = 0;
                    }
                }
            })?;
            collector.collect_block(&docs[..held], &scores[..held]);
        } else {
            weight.for_each_no_score(reader, &mut |block| {
                for &doc in block {
                    if is_alive(doc) {
                        docs[held] = doc;
                        held += 1;
                        if held == COLLECT_BLOCK_DOCS {
                            collector.collect_block(&docs, &[]);
                            held = 0;
                        }
                    }
                }
            })?;
            collector.collect_block(&docs[..held], &[]);
        }
        Ok(collector.harvest_counts())
    }

    fn requires_scoring(&self) -> bool {
        // Other orders never read the score: the query runs without BM25.
        self.sort == SearchSort::Relevance
    }

    fn merge_fruits(&self, fruits: Vec<Collected>) -> tantivy::Result<Collected> {
        let mut merged = Collected::default();
        for fruit in fruits {
            merged.total += fruit.total;
            merged.top.extend(fruit.top);
            for (brand, count) in fruit.brands {
                *merged.brands.entry(brand).or_default() += count;
            }
            for (category, count) in fruit.categories {
                *merged.categories.entry(category).or_default() += count;
            }
            for (total, count) in merged.buckets.iter_mut().zip(fruit.buckets) {
                *total += count;
            }
            merged.in_stock += fruit.in_stock;
        }
        merged
            .top
            .sort_by(|a, b| descending(&a.0, &b.0).then_with(|| a.1.cmp(&b.1)));
        merged.top.truncate(self.top);
        Ok(merged)
    }
}

/// For each category ordinal of a segment, the child of `root` it lies under (its
/// index in the names returned), or [`NOT_COUNTED`]: what tantivy's facet collector
/// works out, for the one facet a search counts.
fn children_of(facets: &FacetReader, root: &[u8]) -> tantivy::Result<(Vec<u32>, Vec<String>)> {
    let mut child_of = vec![NOT_COUNTED; facets.num_facets()];
    let mut names: Vec<String> = Vec::new();
    let mut terms = facets.facet_dict().stream()?;
    while terms.advance() {
        let key = terms.key();
        let below = if root.is_empty() {
            Some(key)
        } else if key.len() > root.len() && key.starts_with(root) && key[root.len()] == 0 {
            Some(&key[root.len() + 1..])
        } else {
            None
        };
        let Some(below) = below.filter(|b| !b.is_empty()) else {
            continue;
        };
        let end = below.iter().position(|&b| b == 0).unwrap_or(below.len());
        let name = String::from_utf8_lossy(&below[..end]);
        let index = match names.iter().position(|n| *n == name) {
            Some(index) => index,
            None => {
                names.push(name.into_owned());
                names.len() - 1
            }
        };
        child_of[terms.term_ord() as usize] = index as u32;
    }
    Ok((child_of, names))
}

impl SegmentCollector for SegmentSearchCollector {
    type Fruit = Collected;

    fn collect(&mut self, doc: DocId, score: Score) {
        self.collect_block(&[doc], &[score]);
    }

    fn harvest(self) -> Collected {
        self.harvest_counts()
    }
}

impl SegmentSearchCollector {
    /// Collects `docs` (ascending, at most [`COLLECT_BLOCK_DOCS`]) with their
    /// `scores` (none when not scoring). The table's rows, prices and creation
    /// positions of the whole block are read first, in tight loops of independent
    /// loads, so that their cache misses overlap.
    fn collect_block(&mut self, docs: &[DocId], scores: &[Score]) {
        let docs = &docs[..docs.len().min(COLLECT_BLOCK_DOCS)];
        let mut rows = [0u64; COLLECT_BLOCK_DOCS];
        for (row, &doc) in rows.iter_mut().zip(docs) {
            *row = self.table.rows[doc as usize];
        }
        let mut prices = [NO_PRICE; COLLECT_BLOCK_DOCS];
        if let Some(table) = &self.prices {
            for (price, &doc) in prices.iter_mut().zip(docs) {
                *price = table[doc as usize];
            }
        }
        // Ranked by relevance, scores tie often (the same term frequencies and
        // lengths) and the creation position breaks the ties; newest first reads it
        // for every match. Sorted by price, few matches need it.
        let mut seqs = [NO_SEQ; COLLECT_BLOCK_DOCS];
        if !self.table.layout.ranked
            && matches!(self.sort, SearchSort::Relevance | SearchSort::Newest)
        {
            for (seq, &doc) in seqs.iter_mut().zip(docs) {
                *seq = self.table.seq[doc as usize];
            }
        }
        for (i, &doc) in docs.iter().enumerate() {
            let score = scores.get(i).copied().unwrap_or(0.0);
            self.collect_row(doc, score, rows[i], prices[i], seqs[i]);
        }
    }

    /// One match, with its row, price and creation position ([`NO_SEQ`]: not read
    /// yet).
    fn collect_row(&mut self, doc: DocId, score: Score, row: u64, price: u64, seq: u64) {
        if row & PUBLISHED == 0 || (self.in_stock_only && row & IN_STOCK == 0) {
            return;
        }
        let price = (price != NO_PRICE).then_some(price);
        if let Some((min, max)) = self.price_range {
            if !price.is_some_and(|p| min <= p && p <= max) {
                return;
            }
        }
        self.total += 1;
        let layout = self.table.layout;
        if let Some(brand) = layout.brand(row) {
            self.brand_counts[brand] += 1;
        }
        if let Some(category) = layout.category(row) {
            let child = self.category_child[category];
            if child != NOT_COUNTED {
                self.category_counts[child as usize] += 1;
            }
        }
        if let Some(minor) = price {
            let bucket = PRICE_BUCKET_EDGES.partition_point(|&edge| edge <= minor) - 1;
            self.buckets[bucket] += 1;
        }
        if row & IN_STOCK != 0 {
            self.in_stock_count += 1;
        }
        // The creation position (or the rank by it, see `Layout`) is read only for
        // a match that may make the page.
        let tie = |collector: &Self| {
            let seq = if collector.table.layout.ranked {
                row & RANK_MASK
            } else if seq == NO_SEQ {
                collector.table.seq[doc as usize]
            } else {
                seq
            };
            u64::MAX - seq
        };
        let head = match self.sort {
            SearchSort::Relevance => (score, 0),
            // Products without a price in the currency come last either way.
            SearchSort::PriceAscending => (0.0, price.map_or(0, |p| u64::MAX - p)),
            SearchSort::PriceDescending => (0.0, price.map_or(0, |p| p + 1)),
            SearchSort::Newest => (0.0, u64::MAX - tie(self)),
        };
        if !self.top.admits(head) {
            return;
        }
        let key = match self.sort {
            SearchSort::Newest => (head.0, head.1, 0),
            _ => (head.0, head.1, tie(self)),
        };
        self.top.push(key, doc);
    }

    fn harvest_counts(self) -> Collected {
        let mut brands = HashMap::new();
        if let Some(column) = &self.brand {
            let mut name = String::new();
            for (ord, &count) in self.brand_counts.iter().enumerate() {
                if count > 0 && column.ord_to_str(ord as u64, &mut name).unwrap_or(false) {
                    brands.insert(name.clone(), count);
                }
            }
        }
        let categories = self
            .category_names
            .into_iter()
            .zip(self.category_counts)
            .filter(|(_, count)| *count > 0)
            .collect();
        let segment = self.segment;
        let (sort, seq) = (self.sort, &self.table.seq);
        // The keys kept get creation positions in place of ranks, which order only
        // the documents of one segment (the same order: the keys stay sorted).
        let global = |(score, second, tie): SortKey, doc: DocId| {
            let seq = seq[doc as usize];
            match sort {
                SearchSort::Newest => (score, seq, tie),
                _ => (score, second, u64::MAX - seq),
            }
        };
        Collected {
            total: self.total,
            top: self
                .top
                .into_sorted()
                .into_iter()
                .map(|(key, doc)| (global(key, doc), DocAddress::new(segment, doc)))
                .collect(),
            brands,
            categories,
            buckets: self.buckets,
            in_stock: self.in_stock_count,
        }
    }
}

/// Greater keys first.
pub(crate) fn descending(a: &SortKey, b: &SortKey) -> Ordering {
    b.0.total_cmp(&a.0)
        .then_with(|| b.1.cmp(&a.1))
        .then_with(|| b.2.cmp(&a.2))
}

/// The `k` greatest keys pushed: kept in a buffer of up to twice `k`, cut back to
/// the best `k` when full, below which nothing more is taken.
struct TopK {
    k: usize,
    kept: Vec<(SortKey, DocId)>,
    /// The least key kept at the last cut.
    threshold: Option<SortKey>,
}

impl TopK {
    fn new(k: usize) -> TopK {
        TopK {
            k: k.max(1),
            kept: Vec::with_capacity(2 * k.max(1)),
            threshold: None,
        }
    }

    /// Whether a key starting with `head` can still be among the best.
    fn admits(&self, head: (Score, u64)) -> bool {
        match self.threshold {
            None => true,
            Some((score, second, _)) => {
                score.total_cmp(&head.0).then_with(|| second.cmp(&head.1)) != Ordering::Greater
            }
        }
    }

    fn push(&mut self, key: SortKey, doc: DocId) {
        if let Some(threshold) = self.threshold {
            if descending(&key, &threshold) != Ordering::Less {
                return;
            }
        }
        self.kept.push((key, doc));
        if self.kept.len() == 2 * self.k {
            self.cut();
        }
    }

    fn cut(&mut self) {
        let k = self.k;
        self.kept
            .select_nth_unstable_by(k - 1, |a, b| descending(&a.0, &b.0));
        self.kept.truncate(k);
        // `select_nth_unstable_by` put the k-th greatest at `k - 1`.
        self.threshold = Some(self.kept[k - 1].0);
    }

    fn into_sorted(mut self) -> Vec<(SortKey, DocId)> {
        self.kept.sort_by(|a, b| descending(&a.0, &b.0));
        self.kept.truncate(self.k);
        self.kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_keep_ordinals_and_a_rank_while_the_ordinals_leave_room() {
        let packed = Layout::of(6, 12);
        assert!(packed.ranked);
        let row = PUBLISHED | (6 << packed.brand_shift) | (12 << packed.category_shift) | 77;
        assert_eq!(packed.brand(row), Some(5));
        assert_eq!(packed.category(row), Some(11));
        assert_eq!(row & RANK_MASK, 77);
        assert_eq!(packed.brand(PUBLISHED | 77), None);
        // A million brands and categories: no room for the rank.
        let wide = Layout::of(1 << 20, 1 << 20);
        assert!(!wide.ranked);
        let row = IN_STOCK | ((1 << 20) << wide.brand_shift) | (1 << wide.category_shift);
        assert_eq!(wide.brand(row), Some((1 << 20) - 1));
        assert_eq!(wide.category(row), Some(0));
    }

    #[test]
    fn top_k_keeps_the_greatest_keys_in_order() {
        let mut top = TopK::new(3);
        for i in 0..100u64 {
            let key = ((i % 10) as Score, i, 0);
            if top.admits((key.0, key.1)) {
                top.push(key, i as DocId);
            }
        }
        let kept: Vec<DocId> = top.into_sorted().into_iter().map(|(_, d)| d).collect();
        assert_eq!(kept, [99, 89, 79]);
    }
}

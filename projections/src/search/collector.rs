//! One pass over a search's matches: the count, the top page in the request's
//! order, and every facet (brands, the categories below the filter, price buckets,
//! in stock), reading each fast field once per match.
//!
//! Visibility is checked here, against a bitset per segment of the published
//! products ([`VisibleSets`]), instead of intersecting every query with the
//! visibility term's postings (nine documents in ten): a bit test per match rather
//! than a posting list walked alongside the matches.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::{Column, StrColumn};
use tantivy::fastfield::FacetReader;
use tantivy::index::SegmentId;
use tantivy::schema::IndexRecordOption;
use tantivy::{
    BitSet, DocAddress, DocId, DocSet, Score, Searcher, SegmentOrdinal, SegmentReader, Term,
    TERMINATED,
};

use super::query::{SearchSort, PRICE_BUCKET_EDGES};
use super::schema::{price_in, Fields};
use super::SearchError;

/// The sort key of a hit: greater first. The last part, the creation position
/// reversed, is unique, so pages never overlap or skip.
pub(crate) type SortKey = (Score, u64, u64);

/// The bitsets of the published products, one per segment, built the first time a
/// search meets the segment (a segment never changes; deletions are tantivy's
/// alive bitset, applied before any collector sees a match).
#[derive(Default)]
pub(crate) struct VisibleSets {
    sets: Mutex<HashMap<SegmentId, Arc<BitSet>>>,
}

impl VisibleSets {
    /// The sets of `searcher`'s segments, by segment ordinal. Sets of segments the
    /// searcher no longer has (merged away) are dropped.
    pub(crate) fn of(
        &self,
        searcher: &Searcher,
        fields: &Fields,
    ) -> Result<Vec<Arc<BitSet>>, SearchError> {
        let segments = searcher.segment_readers();
        let mut sets = self.sets.lock().unwrap_or_else(PoisonError::into_inner);
        let mut found = Vec::with_capacity(segments.len());
        for segment in segments {
            let set = match sets.get(&segment.segment_id()) {
                Some(set) => set.clone(),
                None => {
                    let set = Arc::new(visible_set(segment, fields)?);
                    sets.insert(segment.segment_id(), set.clone());
                    set
                }
            };
            found.push(set);
        }
        if sets.len() > segments.len() {
            sets.retain(|id, _| segments.iter().any(|s| s.segment_id() == *id));
        }
        Ok(found)
    }
}

fn visible_set(segment: &SegmentReader, fields: &Fields) -> Result<BitSet, SearchError> {
    let index_error = |e: &dyn std::fmt::Display| SearchError::Index(e.to_string());
    let mut set = BitSet::with_max_value(segment.max_doc());
    let inverted = segment
        .inverted_index(fields.visible)
        .map_err(|e| index_error(&e))?;
    let term = Term::from_field_u64(fields.visible, 1);
    if let Some(mut postings) = inverted
        .read_postings(&term, IndexRecordOption::Basic)
        .map_err(|e| index_error(&e))?
    {
        let mut doc = postings.doc();
        while doc != TERMINATED {
            set.insert(doc);
            doc = postings.advance();
        }
    }
    Ok(set)
}

/// What one search asks of its matches.
pub(crate) struct SearchCollector {
    pub sort: SearchSort,
    /// The currency of the price sort and buckets.
    pub currency: Option<u64>,
    /// Hits kept: the page's offset plus its limit.
    pub top: usize,
    /// The encoded category facet whose children are counted (empty: the root).
    pub category_root: Vec<u8>,
    /// By segment ordinal, from [`VisibleSets::of`] for the same searcher.
    pub visible: Vec<Arc<BitSet>>,
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

/// A category ordinal that is not below the counted facet.
const NOT_COUNTED: u32 = u32::MAX;

pub(crate) struct SegmentSearchCollector {
    segment: SegmentOrdinal,
    sort: SearchSort,
    currency: Option<u64>,
    visible: Arc<BitSet>,
    seq: Option<Column<u64>>,
    price: Option<Column<u64>>,
    in_stock: Option<Column<u64>>,
    brand: Option<StrColumn>,
    brand_counts: Vec<u64>,
    category: Option<FacetReader>,
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
        let visible = self.visible.get(segment as usize).cloned().ok_or_else(|| {
            tantivy::TantivyError::InternalError(format!("no visibility set for segment {segment}"))
        })?;
        let fast = reader.fast_fields();
        let brand = fast.str("brand")?;
        let brand_terms = brand.as_ref().map_or(0, |c| c.num_terms());
        let category = reader.facet_reader("category").ok();
        let (category_child, category_names) = match &category {
            Some(facets) => children_of(facets, &self.category_root)?,
            None => (Vec::new(), Vec::new()),
        };
        Ok(SegmentSearchCollector {
            segment,
            sort: self.sort,
            currency: self.currency,
            visible,
            seq: fast.column_opt::<u64>("seq")?,
            price: fast.column_opt::<u64>("price")?,
            in_stock: fast.column_opt::<u64>("in_stock")?,
            brand,
            brand_counts: vec![0; brand_terms],
            category,
            category_counts: vec![0; category_names.len()],
            category_child,
            category_names,
            buckets: [0; PRICE_BUCKET_EDGES.len()],
            in_stock_count: 0,
            total: 0,
            top: TopK::new(self.top),
        })
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

impl SegmentSearchCollector {
    fn tie(&self, doc: DocId) -> u64 {
        u64::MAX - self.seq.as_ref().and_then(|c| c.first(doc)).unwrap_or(0)
    }
}

impl SegmentCollector for SegmentSearchCollector {
    type Fruit = Collected;

    fn collect(&mut self, doc: DocId, score: Score) {
        if !self.visible.contains(doc) {
            return;
        }
        self.total += 1;
        if let Some(brand) = &self.brand {
            for ord in brand.term_ords(doc) {
                self.brand_counts[ord as usize] += 1;
            }
        }
        if let Some(category) = &self.category {
            // A product counts once under a child, however many of its paths lie there.
            let mut previous = NOT_COUNTED;
            for ord in category.facet_ords(doc) {
                let child = self.category_child[ord as usize];
                if child != NOT_COUNTED && child != previous {
                    self.category_counts[child as usize] += 1;
                }
                previous = child;
            }
        }
        let price = match (self.currency, &self.price) {
            (Some(currency), Some(price)) => price
                .values_for_doc(doc)
                .find_map(|k| price_in(k, currency)),
            _ => None,
        };
        if let Some(minor) = price {
            let bucket = PRICE_BUCKET_EDGES.partition_point(|&edge| edge <= minor) - 1;
            self.buckets[bucket] += 1;
        }
        if let Some(in_stock) = &self.in_stock {
            if in_stock.first(doc) == Some(1) {
                self.in_stock_count += 1;
            }
        }
        // The creation position is read only for a match that may make the page.
        let head = match self.sort {
            SearchSort::Relevance => (score, 0),
            // Products without a price in the currency come last either way.
            SearchSort::PriceAscending => (0.0, price.map_or(0, |p| u64::MAX - p)),
            SearchSort::PriceDescending => (0.0, price.map_or(0, |p| p + 1)),
            SearchSort::Newest => (0.0, u64::MAX - self.tie(doc)),
        };
        if !self.top.admits(head) {
            return;
        }
        let key = match self.sort {
            SearchSort::Newest => (head.0, head.1, 0),
            _ => (head.0, head.1, self.tie(doc)),
        };
        self.top.push(key, doc);
    }

    fn harvest(self) -> Collected {
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
        Collected {
            total: self.total,
            top: self
                .top
                .into_sorted()
                .into_iter()
                .map(|(key, doc)| (key, DocAddress::new(segment, doc)))
                .collect(),
            brands,
            categories,
            buckets: self.buckets,
            in_stock: self.in_stock_count,
        }
    }
}

fn descending(a: &SortKey, b: &SortKey) -> Ordering {
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

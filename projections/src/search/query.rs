//! Queries: words matched exactly (BM25), with typos (edit distance by word length)
//! and, for the last word, as a prefix; filters; facets counted over the matches;
//! a stable order for paging.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use tantivy::collector::TopDocs;
use tantivy::query::{
    AllQuery, BooleanQuery, BoostQuery, ConstScoreQuery, DfaWrapper, EmptyQuery, EnableScoring,
    Explanation, FuzzyTermQuery, Occur, Query, Scorer, TermQuery, Weight,
};
use tantivy::schema::{Field, IndexRecordOption, Value};
use tantivy::{DocAddress, DocId, DocSet, Score, Searcher, SegmentReader, TantivyDocument, Term};
use uuid::Uuid;

use super::collector::{SearchCollector, SegmentTables};
use super::document::{attribute_term, category_facet, ProductState};
use super::schema::{currency_code, words, Fields, PRICE_MAX_MINOR};
use super::SearchError;

/// Most hits per page.
pub const SEARCH_PAGE_MAX_ITEMS: usize = 100;
/// Hits per page unless the request says otherwise.
pub const SEARCH_PAGE_DEFAULT_ITEMS: usize = 20;
/// The deepest page: offset + limit may not pass this (deep pages cost a sort of
/// everything before them).
pub const SEARCH_OFFSET_MAX: usize = 10_000;
/// Longest query text, in characters.
pub const SEARCH_QUERY_MAX_CHARS: usize = 200;
/// Most words of a query that are matched (the rest are ignored).
pub const SEARCH_QUERY_MAX_WORDS: usize = 8;
/// Most attribute filters in one request.
pub const SEARCH_ATTRIBUTES_MAX: usize = 8;
/// Most suggestions.
pub const SUGGEST_MAX_ITEMS: usize = 20;
/// Most brands and categories a facet lists (the most frequent).
pub const FACET_MAX_VALUES: usize = 50;
/// Lower edges of the price buckets, in minor units of the requested currency.
pub const PRICE_BUCKET_EDGES: [u64; 8] = [0, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000];

/// The fields a word is looked for in, with their weight.
const TEXT_FIELDS: [(TextField, Score); 4] = [
    (TextField::Title, 3.0),
    (TextField::Brand, 2.0),
    (TextField::Category, 1.5),
    (TextField::Description, 1.0),
];
/// A match with a typo weighs this much of an exact one.
const TYPO_WEIGHT: Score = 0.3;
/// A word's typo or prefix neighbours in one field are matched as terms up to this
/// many; beyond, by an automaton query (see [`text_query`]).
const EXPANSION_MAX_TERMS: usize = 64;
/// A prefix match of the last word weighs this much of an exact one.
const PREFIX_WEIGHT: Score = 0.5;
/// Shorter last words are not completed (too many words start with them).
const PREFIX_MIN_CHARS: usize = 2;

#[derive(Debug, Clone, Copy)]
enum TextField {
    Title,
    Brand,
    Category,
    Description,
}

impl TextField {
    fn field(self, fields: &Fields) -> Field {
        match self {
            TextField::Title => fields.title,
            TextField::Brand => fields.brand_text,
            TextField::Category => fields.category_text,
            TextField::Description => fields.description,
        }
    }
}

/// The edit distance a word may be off by: none for short words, where one typo
/// makes another word, one up to seven characters, two beyond.
pub fn typo_distance(word: &str) -> u8 {
    match word.chars().count() {
        0..=3 => 0,
        4..=7 => 1,
        _ => 2,
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SearchSort {
    #[default]
    Relevance,
    PriceAscending,
    PriceDescending,
    Newest,
}

impl SearchSort {
    pub const NAMES: [&'static str; 4] = ["relevance", "price_asc", "price_desc", "newest"];

    pub fn parse(name: &str) -> Result<SearchSort, SearchError> {
        match name {
            "relevance" => Ok(SearchSort::Relevance),
            "price_asc" => Ok(SearchSort::PriceAscending),
            "price_desc" => Ok(SearchSort::PriceDescending),
            "newest" => Ok(SearchSort::Newest),
            _ => Err(SearchError::InvalidQuery {
                field: "sort",
                reason: format!("{name:?} is not one of {}", Self::NAMES.join(", ")),
            }),
        }
    }
}

/// A search. Build it with [`SearchRequest::new`] and the fields; [`validate`] runs
/// before every search.
///
/// [`validate`]: SearchRequest::validate
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchRequest {
    /// The shopper's words (empty: every product the filters let through).
    pub text: String,
    pub brand: Option<String>,
    /// A category path prefix: `["Shoes"]` matches `Shoes > Running` too.
    pub category: Vec<String>,
    /// The currency of the price filter, the price sort and the price facet.
    pub currency: Option<String>,
    /// Lowest price from, in minor units, inclusive.
    pub price_min: Option<u64>,
    /// Highest price from, in minor units, inclusive.
    pub price_max: Option<u64>,
    pub in_stock_only: bool,
    /// `(name, value)` pairs a SKU of the product must have.
    pub attributes: Vec<(String, String)>,
    pub sort: SearchSort,
    pub offset: usize,
    pub limit: usize,
}

impl SearchRequest {
    pub fn new(text: impl Into<String>) -> SearchRequest {
        SearchRequest {
            text: text.into(),
            limit: SEARCH_PAGE_DEFAULT_ITEMS,
            ..SearchRequest::default()
        }
    }

    /// Refuses a request that cannot be answered as asked.
    pub fn validate(&self) -> Result<(), SearchError> {
        let invalid =
            |field: &'static str, reason: String| SearchError::InvalidQuery { field, reason };
        if self.text.chars().count() > SEARCH_QUERY_MAX_CHARS {
            return Err(invalid(
                "q",
                format!("longer than {SEARCH_QUERY_MAX_CHARS} characters"),
            ));
        }
        if self.limit == 0 || self.limit > SEARCH_PAGE_MAX_ITEMS {
            return Err(invalid(
                "limit",
                format!("must be 1..={SEARCH_PAGE_MAX_ITEMS}"),
            ));
        }
        if self.offset + self.limit > SEARCH_OFFSET_MAX {
            return Err(invalid(
                "offset",
                format!("offset + limit may not pass {SEARCH_OFFSET_MAX}"),
            ));
        }
        if let Some(currency) = &self.currency {
            if currency_code(currency).is_none() {
                return Err(invalid(
                    "currency",
                    format!("{currency:?} is not three letters A-Z"),
                ));
            }
        }
        let priced = self.price_min.is_some() || self.price_max.is_some();
        let by_price = matches!(
            self.sort,
            SearchSort::PriceAscending | SearchSort::PriceDescending
        );
        if (priced || by_price) && self.currency.is_none() {
            return Err(invalid(
                "currency",
                "a price filter or sort needs a currency".to_owned(),
            ));
        }
        if let (Some(min), Some(max)) = (self.price_min, self.price_max) {
            if min > max {
                return Err(invalid(
                    "price_min",
                    format!("{min} is above price_max {max}"),
                ));
            }
        }
        for bound in [self.price_min, self.price_max].into_iter().flatten() {
            if bound > PRICE_MAX_MINOR {
                return Err(invalid(
                    "price_max",
                    format!("prices end at {PRICE_MAX_MINOR}"),
                ));
            }
        }
        if self.category.iter().any(|s| s.is_empty()) {
            return Err(invalid(
                "category",
                "a category path has no empty level".to_owned(),
            ));
        }
        if self.attributes.len() > SEARCH_ATTRIBUTES_MAX {
            return Err(invalid(
                "attribute",
                format!("at most {SEARCH_ATTRIBUTES_MAX}"),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchHit {
    pub product_id: Uuid,
    pub title: String,
    pub brand: String,
    pub category: Vec<String>,
    /// The lowest SKU price per currency, in minor units.
    pub price_from: BTreeMap<String, i64>,
    pub in_stock: bool,
    /// Relevance (BM25 with field weights); 0 when sorted by something else.
    pub score: f32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FacetCount {
    pub value: String,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PriceBucket {
    /// Inclusive, minor units.
    pub min: u64,
    /// Exclusive; `None` for the last bucket.
    pub max: Option<u64>,
    pub count: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Facets {
    /// Brands of the matches, most frequent first.
    pub brands: Vec<FacetCount>,
    /// The categories one level below the category filter (the top level without
    /// one), most frequent first.
    pub categories: Vec<FacetCount>,
    /// Matches per price bucket in the request's currency (empty without one).
    pub price_buckets: Vec<PriceBucket>,
    /// Matches with at least one unit available.
    pub in_stock: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchResults {
    /// Matches in all.
    pub total: u64,
    pub hits: Vec<SearchHit>,
    pub facets: Facets,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Suggestion {
    pub product_id: Uuid,
    pub title: String,
}

/// The query of the shopper's words, or `None` when there are none.
///
/// Typo and prefix alternatives are looked up in the term dictionaries first and
/// become plain term queries of the words the index holds (usually none or a
/// few), rather than automaton queries that mark every match of every neighbour in
/// a bitset per segment on each search. A word with more neighbours than
/// [`EXPANSION_MAX_TERMS`] in a field (a two-digit prefix of model numbers) keeps
/// the automaton query there. Either way a document matches and scores the same.
fn text_query(
    searcher: &Searcher,
    fields: &Fields,
    text: &str,
    complete_last: bool,
) -> Result<Option<Box<dyn Query>>, SearchError> {
    let mut words = words(text);
    words.truncate(SEARCH_QUERY_MAX_WORDS);
    // A last word too short to complete ("yoga m") says nothing yet.
    if complete_last
        && words.len() > 1
        && words
            .last()
            .is_some_and(|w| w.chars().count() < PREFIX_MIN_CHARS)
    {
        words.pop();
    }
    let Some(last) = words.len().checked_sub(1) else {
        return Ok(None);
    };
    let mut per_word: Vec<(Occur, Box<dyn Query>)> = Vec::with_capacity(words.len());
    for (i, word) in words.iter().enumerate() {
        let distance = typo_distance(word);
        let prefix = complete_last && i == last && word.chars().count() >= PREFIX_MIN_CHARS;
        // One automaton per word and kind, walked over every field's dictionary:
        // it depends on the word alone.
        let any_field = Term::from_field_text(fields.title, word);
        let typos = (distance > 0)
            .then(|| Neighbours::of(FuzzyTermQuery::new(any_field.clone(), distance, true)))
            .transpose()?;
        let completions = prefix
            .then(|| Neighbours::of(FuzzyTermQuery::new_prefix(any_field.clone(), 0, true)))
            .transpose()?;
        let mut alternatives: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for (text_field, weight) in TEXT_FIELDS {
            let term = Term::from_field_text(text_field.field(fields), word);
            // The word itself is a typo and a prefix of itself: an exact match
            // scores its BM25 and both bonuses, in one clause, and the word is left
            // out of the neighbours.
            let mut bonus = 0.0;
            if let Some(typos) = &typos {
                let automaton = || FuzzyTermQuery::new(term.clone(), distance, true);
                if let Some(query) =
                    typos.expanded(searcher, &term, automaton, weight * TYPO_WEIGHT)?
                {
                    alternatives.push((Occur::Should, query));
                }
                bonus += weight * TYPO_WEIGHT;
            }
            if let Some(completions) = &completions {
                let automaton = || FuzzyTermQuery::new_prefix(term.clone(), 0, true);
                if let Some(query) =
                    completions.expanded(searcher, &term, automaton, weight * PREFIX_WEIGHT)?
                {
                    alternatives.push((Occur::Should, query));
                }
                bonus += weight * PREFIX_WEIGHT;
            }
            if searcher.doc_freq(&term).map_err(index_error)? > 0 {
                let exact = TermQuery::new(term, IndexRecordOption::WithFreqs);
                let boosted = Box::new(BoostQuery::new(Box::new(exact), weight));
                let query: Box<dyn Query> = if bonus > 0.0 {
                    Box::new(Bonus {
                        query: boosted,
                        bonus,
                    })
                } else {
                    boosted
                };
                alternatives.push((Occur::Should, query));
            }
        }
        let query: Box<dyn Query> = if alternatives.is_empty() {
            // A word the index does not hold, nor anything near it: nothing matches.
            Box::new(EmptyQuery)
        } else {
            Box::new(BooleanQuery::new(alternatives))
        };
        per_word.push((Occur::Must, query));
    }
    Ok(Some(Box::new(BooleanQuery::new(per_word))))
}

/// The automaton of a word's typos or completions, built once for every field.
struct Neighbours {
    dfa: DfaWrapper,
}

impl Neighbours {
    fn of(query: FuzzyTermQuery) -> Result<Neighbours, SearchError> {
        Ok(Neighbours {
            dfa: query.automaton().map_err(index_error)?,
        })
    }

    /// The terms of `word`'s field other than `word` that the automaton accepts, as
    /// one constant-scoring query: `None` when the index holds none. Past
    /// [`EXPANSION_MAX_TERMS`] the automaton query of that field (`automaton`).
    fn expanded(
        &self,
        searcher: &Searcher,
        word: &Term,
        automaton: impl FnOnce() -> FuzzyTermQuery,
        score: Score,
    ) -> Result<Option<Box<dyn Query>>, SearchError> {
        let field = word.field();
        let mut terms = BTreeSet::new();
        for segment in searcher.segment_readers() {
            let inverted = segment.inverted_index(field).map_err(index_error)?;
            let mut stream = inverted
                .terms()
                .search(&self.dfa)
                .into_stream()
                .map_err(index_error)?;
            while stream.advance() {
                let Ok(neighbour) = std::str::from_utf8(stream.key()) else {
                    continue;
                };
                if neighbour.as_bytes() == word.serialized_value_bytes() {
                    continue;
                }
                if terms.len() == EXPANSION_MAX_TERMS && !terms.contains(neighbour) {
                    // Too many to list: the automaton itself, less the word.
                    let neighbours = BooleanQuery::new(vec![
                        (Occur::Must, Box::new(automaton()) as Box<dyn Query>),
                        (
                            Occur::MustNot,
                            Box::new(TermQuery::new(word.clone(), IndexRecordOption::Basic)),
                        ),
                    ]);
                    return Ok(Some(Box::new(ConstScoreQuery::new(
                        Box::new(neighbours),
                        score,
                    ))));
                }
                terms.insert(neighbour.to_owned());
            }
        }
        let mut queries: Vec<(Occur, Box<dyn Query>)> = terms
            .into_iter()
            .map(|neighbour| {
                let term = Term::from_field_text(field, &neighbour);
                (
                    Occur::Should,
                    Box::new(TermQuery::new(term, IndexRecordOption::Basic)) as Box<dyn Query>,
                )
            })
            .collect();
        let matched: Box<dyn Query> = match queries.len() {
            0 => return Ok(None),
            1 => queries.remove(0).1,
            _ => Box::new(BooleanQuery::new(queries)),
        };
        Ok(Some(Box::new(ConstScoreQuery::new(matched, score))))
    }
}

/// A query whose matches score `bonus` more: an exact word with the constant
/// its typo and prefix alternatives would add.
#[derive(Debug)]
struct Bonus {
    query: Box<dyn Query>,
    bonus: Score,
}

impl Clone for Bonus {
    fn clone(&self) -> Self {
        Bonus {
            query: self.query.box_clone(),
            bonus: self.bonus,
        }
    }
}

impl Query for Bonus {
    fn weight(&self, scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        let weight = self.query.weight(scoring)?;
        if !scoring.is_scoring_enabled() {
            return Ok(weight);
        }
        Ok(Box::new(BonusWeight {
            weight,
            bonus: self.bonus,
        }))
    }

    fn query_terms<'a>(&'a self, visitor: &mut dyn FnMut(&'a Term, bool)) {
        self.query.query_terms(visitor);
    }
}

struct BonusWeight {
    weight: Box<dyn Weight>,
    bonus: Score,
}

impl Weight for BonusWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        Ok(Box::new(BonusScorer {
            scorer: self.weight.scorer(reader, boost)?,
            bonus: self.bonus * boost,
        }))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        let inner = self.weight.explain(reader, doc)?;
        let mut explanation = Explanation::new("bonus", inner.value() + self.bonus);
        explanation.add_detail(inner);
        Ok(explanation)
    }
}

struct BonusScorer {
    scorer: Box<dyn Scorer>,
    bonus: Score,
}

impl DocSet for BonusScorer {
    fn advance(&mut self) -> DocId {
        self.scorer.advance()
    }
    fn seek(&mut self, target: DocId) -> DocId {
        self.scorer.seek(target)
    }
    fn doc(&self) -> DocId {
        self.scorer.doc()
    }
    fn size_hint(&self) -> u32 {
        self.scorer.size_hint()
    }
    fn cost(&self) -> u64 {
        self.scorer.cost()
    }
}

impl Scorer for BonusScorer {
    fn score(&mut self) -> Score {
        self.scorer.score() + self.bonus
    }
}

fn index_error(e: impl std::fmt::Display) -> SearchError {
    SearchError::Index(e.to_string())
}

/// A filter: matches without adding to the score.
fn filter(query: impl Query) -> (Occur, Box<dyn Query>) {
    (
        Occur::Must,
        Box::new(ConstScoreQuery::new(Box::new(query), 0.0)),
    )
}

fn term_filter(term: Term) -> (Occur, Box<dyn Query>) {
    filter(TermQuery::new(term, IndexRecordOption::Basic))
}

fn build_query(
    searcher: &Searcher,
    fields: &Fields,
    request: &SearchRequest,
) -> Result<Box<dyn Query>, SearchError> {
    // Visibility is not a clause: the collector checks it (see `collector`).
    let mut clauses = Vec::new();
    if let Some(text) = text_query(searcher, fields, &request.text, true)? {
        clauses.push((Occur::Must, text));
    }
    if let Some(brand) = &request.brand {
        clauses.push(term_filter(Term::from_field_text(fields.brand, brand)));
    }
    if !request.category.is_empty() {
        let facet = category_facet(&request.category);
        clauses.push(term_filter(Term::from_facet(fields.category, &facet)));
    }
    // The price range and in-stock filters are the collector's (see `collector`).
    for (name, value) in &request.attributes {
        clauses.push(term_filter(Term::from_field_text(
            fields.attribute,
            &attribute_term(name, value),
        )));
    }
    if clauses.is_empty() {
        // No words, no filters: every product (the visible ones, by the collector).
        return Ok(Box::new(ConstScoreQuery::new(Box::new(AllQuery), 0.0)));
    }
    Ok(Box::new(BooleanQuery::new(clauses)))
}

pub(crate) fn search(
    searcher: &Searcher,
    fields: &Fields,
    tables: &SegmentTables,
    request: &SearchRequest,
) -> Result<SearchResults, SearchError> {
    request.validate()?;
    let query = build_query(searcher, fields, request)?;
    let currency = request.currency.as_deref().and_then(currency_code);
    let sort = request.sort;
    let category_root = if request.category.is_empty() {
        Vec::new()
    } else {
        category_facet(&request.category)
            .encoded_str()
            .as_bytes()
            .to_vec()
    };
    let collector = SearchCollector {
        sort,
        currency,
        top: request.offset + request.limit,
        in_stock_only: request.in_stock_only,
        price_range: (request.price_min.is_some() || request.price_max.is_some()).then(|| {
            (
                request.price_min.unwrap_or(0),
                request.price_max.unwrap_or(PRICE_MAX_MINOR),
            )
        }),
        category_root,
        tables: tables.of(searcher, fields)?,
    };
    let collected = searcher.search(&query, &collector).map_err(index_error)?;
    let hits = collected
        .top
        .into_iter()
        .skip(request.offset)
        .map(|((score, _, _), address)| {
            let state = product_state(searcher, fields, address)?;
            Ok(SearchHit {
                product_id: state.product_id,
                price_from: state.price_from(),
                in_stock: state.in_stock(),
                title: state.title,
                brand: state.brand,
                category: state.category,
                score: if sort == SearchSort::Relevance {
                    score
                } else {
                    0.0
                },
            })
        })
        .collect::<Result<Vec<_>, SearchError>>()?;
    let counts = |counted: HashMap<String, u64>| {
        let mut counts: Vec<FacetCount> = counted
            .into_iter()
            .map(|(value, count)| FacetCount { value, count })
            .collect();
        sort_counts(&mut counts);
        counts
    };
    let price_buckets = if currency.is_some() {
        PRICE_BUCKET_EDGES
            .iter()
            .enumerate()
            .map(|(i, &min)| PriceBucket {
                min,
                max: PRICE_BUCKET_EDGES.get(i + 1).copied(),
                count: collected.buckets[i],
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(SearchResults {
        total: collected.total,
        hits,
        facets: Facets {
            brands: counts(collected.brands),
            categories: counts(collected.categories),
            price_buckets,
            in_stock: collected.in_stock,
        },
    })
}

fn sort_counts(counts: &mut Vec<FacetCount>) {
    counts.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
    counts.truncate(FACET_MAX_VALUES);
}

/// Titles of the best matches of what the shopper has typed so far: the last word
/// is completed, the others may have typos.
pub(crate) fn suggest(
    searcher: &Searcher,
    fields: &Fields,
    text: &str,
    limit: usize,
) -> Result<Vec<Suggestion>, SearchError> {
    if text.chars().count() > SEARCH_QUERY_MAX_CHARS {
        return Err(SearchError::InvalidQuery {
            field: "q",
            reason: format!("longer than {SEARCH_QUERY_MAX_CHARS} characters"),
        });
    }
    if limit == 0 || limit > SUGGEST_MAX_ITEMS {
        return Err(SearchError::InvalidQuery {
            field: "limit",
            reason: format!("must be 1..={SUGGEST_MAX_ITEMS}"),
        });
    }
    let Some(text) = text_query(searcher, fields, text, true)? else {
        return Ok(Vec::new());
    };
    let query = BooleanQuery::new(vec![
        term_filter(Term::from_field_u64(fields.visible, 1)),
        (Occur::Must, text),
    ]);
    let top = TopDocs::with_limit(limit).tweak_score(|segment: &SegmentReader| {
        let seq = segment.fast_fields().u64("seq").ok();
        move |doc: DocId, score: Score| -> (Score, u64) {
            (
                score,
                u64::MAX - seq.as_ref().and_then(|c| c.first(doc)).unwrap_or(0),
            )
        }
    });
    let hits = searcher
        .search(&query, &top)
        .map_err(|e| SearchError::Index(e.to_string()))?;
    hits.into_iter()
        .map(|(_, address)| {
            let state = product_state(searcher, fields, address)?;
            Ok(Suggestion {
                product_id: state.product_id,
                title: state.title,
            })
        })
        .collect()
}

fn product_state(
    searcher: &Searcher,
    fields: &Fields,
    address: DocAddress,
) -> Result<ProductState, SearchError> {
    let doc: TantivyDocument = searcher
        .doc(address)
        .map_err(|e| SearchError::Index(e.to_string()))?;
    let bytes = doc
        .get_first(fields.state)
        .and_then(|v| v.as_bytes())
        .ok_or_else(|| SearchError::Index("a product document without state".to_owned()))?;
    serde_json::from_slice(bytes)
        .map_err(|e| SearchError::Index(format!("a product's state does not parse: {e}")))
}

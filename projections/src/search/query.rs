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

use super::collector::{descending, SearchCollector, SegmentTables, SortKey};
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
/// many; beyond, by an automaton query (see [`plan_words`]).
const EXPANSION_MAX_TERMS: usize = 64;
/// A prefix match of the last word weighs this much of an exact one.
const PREFIX_WEIGHT: Score = 0.5;
/// Shorter last words are not completed (too many words start with them).
const PREFIX_MIN_CHARS: usize = 2;
/// Ranked by relevance, this many of the best matches by BM25 over all the text
/// are ranked again with the per-field weights (title over brand over category over
/// description) and come first in that order; the rest follow by the first score.
/// Pages within it (the first five of twenty) are ranked by field, and as the window
/// does not depend on the page, pages never overlap or skip.
const RESCORE_WINDOW: usize = 100;

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

/// A word of the query, with the neighbours its typos and (for the last word)
/// its completions reach in the index: looked up once in the term dictionaries of
/// the `text` field, which holds every word of every searchable field, so the
/// other fields' dictionaries are not walked.
struct WordPlan {
    word: String,
    /// The edit distance of its typos (0: none allowed).
    distance: u8,
    typos: Option<Expansion>,
    completions: Option<Expansion>,
}

/// The terms other than the word itself that an automaton accepts.
enum Expansion {
    /// At most [`EXPANSION_MAX_TERMS`], matched as plain terms.
    Terms(Vec<String>),
    /// More: matched by the automaton query (a two-digit prefix of model numbers).
    Automaton,
}

impl WordPlan {
    fn typo_automaton(&self, field: Field) -> FuzzyTermQuery {
        FuzzyTermQuery::new(
            Term::from_field_text(field, &self.word),
            self.distance,
            true,
        )
    }

    fn completion_automaton(&self, field: Field) -> FuzzyTermQuery {
        FuzzyTermQuery::new_prefix(Term::from_field_text(field, &self.word), 0, true)
    }
}

/// The words of `text` that are matched, each with its neighbours in the index;
/// empty when there are none.
///
/// Typo and prefix alternatives are looked up in the term dictionaries first and
/// become plain term queries of the words the index holds (usually none or a
/// few), rather than automaton queries that mark every match of every neighbour in
/// a bitset per segment on each search. A word with more neighbours than
/// [`EXPANSION_MAX_TERMS`] keeps the automaton query. Either way a document matches
/// and scores the same.
fn plan_words(
    searcher: &Searcher,
    fields: &Fields,
    text: &str,
    complete_last: bool,
) -> Result<Vec<WordPlan>, SearchError> {
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
    let last = words.len().saturating_sub(1);
    let mut plans = Vec::with_capacity(words.len());
    for (i, word) in words.into_iter().enumerate() {
        let distance = typo_distance(&word);
        let prefix = complete_last && i == last && word.chars().count() >= PREFIX_MIN_CHARS;
        let mut plan = WordPlan {
            word,
            distance,
            typos: None,
            completions: None,
        };
        if distance > 0 {
            let dfa = plan
                .typo_automaton(fields.text)
                .automaton()
                .map_err(index_error)?;
            plan.typos = Some(expand(searcher, fields.text, &plan.word, &dfa)?);
        }
        if prefix {
            let dfa = plan
                .completion_automaton(fields.text)
                .automaton()
                .map_err(index_error)?;
            plan.completions = Some(expand(searcher, fields.text, &plan.word, &dfa)?);
        }
        plans.push(plan);
    }
    Ok(plans)
}

/// The terms of `field` other than `word` that `dfa` accepts, over every segment.
fn expand(
    searcher: &Searcher,
    field: Field,
    word: &str,
    dfa: &DfaWrapper,
) -> Result<Expansion, SearchError> {
    let mut terms = BTreeSet::new();
    for segment in searcher.segment_readers() {
        let inverted = segment.inverted_index(field).map_err(index_error)?;
        let mut stream = inverted
            .terms()
            .search(dfa)
            .into_stream()
            .map_err(index_error)?;
        while stream.advance() {
            let Ok(neighbour) = std::str::from_utf8(stream.key()) else {
                continue;
            };
            if neighbour == word || terms.contains(neighbour) {
                continue;
            }
            if terms.len() == EXPANSION_MAX_TERMS {
                return Ok(Expansion::Automaton);
            }
            terms.insert(neighbour.to_owned());
        }
    }
    Ok(Expansion::Terms(terms.into_iter().collect()))
}

/// The query that finds the matches: every word, exactly or by a neighbour, in the
/// `text` field, so a word costs one posting list (and its neighbours') rather
/// than one per field. It scores by BM25 over all the text, not by field: the best
/// of its matches are ranked again by [`ranking_query`] (see [`RESCORE_WINDOW`]).
fn matching_query(
    searcher: &Searcher,
    fields: &Fields,
    plans: &[WordPlan],
) -> Result<Option<Box<dyn Query>>, SearchError> {
    words_query(searcher, plans, &[(fields.text, 1.0)])
}

/// The query that ranks: every word in each field with its weight.
fn ranking_query(
    searcher: &Searcher,
    fields: &Fields,
    plans: &[WordPlan],
) -> Result<Option<Box<dyn Query>>, SearchError> {
    let weighted = TEXT_FIELDS.map(|(field, weight)| (field.field(fields), weight));
    words_query(searcher, plans, &weighted)
}

/// Every word must match in one of `fields`: exactly (BM25 times the field's
/// weight), or by a neighbour (a constant share of that weight).
fn words_query(
    searcher: &Searcher,
    plans: &[WordPlan],
    fields: &[(Field, Score)],
) -> Result<Option<Box<dyn Query>>, SearchError> {
    if plans.is_empty() {
        return Ok(None);
    }
    let mut per_word: Vec<(Occur, Box<dyn Query>)> = Vec::with_capacity(plans.len());
    for plan in plans {
        let mut alternatives: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for &(field, weight) in fields {
            let term = Term::from_field_text(field, &plan.word);
            // The word itself is a typo and a prefix of itself: an exact match
            // scores its BM25 and both bonuses, in one clause, and the word is left
            // out of the neighbours.
            let mut bonus = 0.0;
            let before = alternatives.len();
            if let Some(typos) = &plan.typos {
                let score = weight * TYPO_WEIGHT;
                let automaton = || plan.typo_automaton(field);
                if let Some(query) = neighbours(searcher, &term, typos, automaton, score)? {
                    alternatives.push((Occur::Should, query));
                }
                bonus += score;
            }
            if let Some(completions) = &plan.completions {
                let score = weight * PREFIX_WEIGHT;
                let automaton = || plan.completion_automaton(field);
                if let Some(query) = neighbours(searcher, &term, completions, automaton, score)? {
                    alternatives.push((Occur::Should, query));
                }
                bonus += score;
            }
            // In one field without neighbours every match of the word is exact: the
            // bonus would add the same to each, and the plain term scorer lets
            // tantivy intersect posting lists directly.
            if fields.len() == 1 && alternatives.len() == before {
                bonus = 0.0;
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
        let query: Box<dyn Query> = match alternatives.len() {
            // A word the index does not hold, nor anything near it: nothing matches.
            0 => Box::new(EmptyQuery),
            1 => alternatives.remove(0).1,
            _ => Box::new(BooleanQuery::new(alternatives)),
        };
        per_word.push((Occur::Must, query));
    }
    Ok(Some(match per_word.len() {
        1 => per_word.remove(0).1,
        _ => Box::new(BooleanQuery::new(per_word)),
    }))
}

/// A word's neighbours in `word`'s field as one constant-scoring query: `None`
/// when the field holds none of them. Listed neighbours the field lacks are left
/// out (the `text` field holds the words of every field).
fn neighbours(
    searcher: &Searcher,
    word: &Term,
    expansion: &Expansion,
    automaton: impl FnOnce() -> FuzzyTermQuery,
    score: Score,
) -> Result<Option<Box<dyn Query>>, SearchError> {
    let field = word.field();
    let matched: Box<dyn Query> = match expansion {
        Expansion::Automaton => {
            // Too many to list: the automaton itself, less the word.
            Box::new(BooleanQuery::new(vec![
                (Occur::Must, Box::new(automaton()) as Box<dyn Query>),
                (
                    Occur::MustNot,
                    Box::new(TermQuery::new(word.clone(), IndexRecordOption::Basic)),
                ),
            ]))
        }
        Expansion::Terms(terms) => {
            let mut queries: Vec<(Occur, Box<dyn Query>)> = Vec::new();
            for neighbour in terms {
                let term = Term::from_field_text(field, neighbour);
                if searcher.doc_freq(&term).map_err(index_error)? > 0 {
                    let query = TermQuery::new(term, IndexRecordOption::Basic);
                    queries.push((Occur::Should, Box::new(query)));
                }
            }
            match queries.len() {
                0 => return Ok(None),
                1 => queries.remove(0).1,
                _ => Box::new(BooleanQuery::new(queries)),
            }
        }
    };
    Ok(Some(Box::new(ConstScoreQuery::new(matched, score))))
}

/// Ranks `top`'s first [`RESCORE_WINDOW`] hits (sorted by the matching query's
/// score) again by `ranking`, the per-field weights, and puts them back in that
/// order ahead of the rest. The window is the same whatever the page, so pages
/// still follow one order.
fn rescore(
    searcher: &Searcher,
    ranking: &dyn Query,
    top: &mut [(SortKey, DocAddress)],
) -> Result<(), SearchError> {
    let window = top.len().min(RESCORE_WINDOW);
    let top = &mut top[..window];
    if top.is_empty() {
        return Ok(());
    }
    let weight = ranking
        .weight(EnableScoring::enabled_from_searcher(searcher))
        .map_err(index_error)?;
    // By segment, documents ascending: each segment's scorer only moves forward.
    let mut order: Vec<usize> = (0..top.len()).collect();
    order.sort_by_key(|&i| top[i].1);
    let mut scorer: Option<(u32, Box<dyn Scorer>)> = None;
    for i in order {
        let address = top[i].1;
        let current = match &mut scorer {
            Some((segment, scorer)) if *segment == address.segment_ord => scorer,
            _ => {
                let reader = searcher.segment_reader(address.segment_ord);
                let fresh = weight.scorer(reader, 1.0).map_err(index_error)?;
                &mut scorer.insert((address.segment_ord, fresh)).1
            }
        };
        let mut doc = current.doc();
        if doc < address.doc_id {
            doc = current.seek(address.doc_id);
        }
        // Every match of the words in `text` matches them in some field; a score
        // of 0 would only put a hit last in the window.
        top[i].0 .0 = if doc == address.doc_id {
            current.score()
        } else {
            0.0
        };
    }
    top.sort_by(|a, b| descending(&a.0, &b.0).then_with(|| a.1.cmp(&b.1)));
    Ok(())
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
    plans: &[WordPlan],
) -> Result<Box<dyn Query>, SearchError> {
    // Visibility is not a clause: the collector checks it (see `collector`).
    let mut clauses = Vec::new();
    if let Some(text) = matching_query(searcher, fields, plans)? {
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
    let plans = plan_words(searcher, fields, &request.text, true)?;
    let query = build_query(searcher, fields, request, &plans)?;
    // Ranked by relevance, the best matches are ranked again by field (see
    // `rescore`): at least the window is collected, whatever the page.
    let rescored = request.sort == SearchSort::Relevance && !plans.is_empty();
    let top = request.offset + request.limit;
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
        top: if rescored {
            top.max(RESCORE_WINDOW)
        } else {
            top
        },
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
    let mut collected = searcher.search(&query, &collector).map_err(index_error)?;
    if rescored {
        if let Some(ranking) = ranking_query(searcher, fields, &plans)? {
            rescore(searcher, ranking.as_ref(), &mut collected.top)?;
        }
    }
    let hits = collected
        .top
        .into_iter()
        .skip(request.offset)
        .take(request.limit)
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
    // Few enough hits that the per-field weights rank every match.
    let plans = plan_words(searcher, fields, text, true)?;
    let Some(text) = ranking_query(searcher, fields, &plans)? else {
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

//! Product search and suggestions for shoppers, from this process's search index
//! (`projections::search`). Like reading a product, any signed-in role may search;
//! unpublished and discontinued products are never in the results.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use projections::search::{
    SearchError, SearchRequest, SearchResults, SearchSort, Suggestion, SEARCH_PAGE_DEFAULT_ITEMS,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::http::extract::QueryParams;
use crate::http::problem::{ApiError, Problem};
use crate::http::{json_response, AppState, Principal};

/// Seconds a client is told to wait while the index is being built.
const BUILDING_RETRY_AFTER_SECS: u32 = 5;
/// Suggestions unless `limit` says otherwise.
const SUGGEST_DEFAULT_ITEMS: usize = 8;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// The shopper's words; typos are forgiven (one edit in words of 4 to 7
    /// letters, two beyond) and the last word may be partial. Empty or absent:
    /// every product the filters let through.
    pub q: Option<String>,
    /// Exactly this brand.
    pub brand: Option<String>,
    /// A category path prefix, levels separated by `/`: `Shoes` or `Shoes/Running`.
    pub category: Option<String>,
    /// ISO-4217 code of the price filter, the price sort and the price facet.
    pub currency: Option<String>,
    /// Lowest "price from" in minor units, inclusive (needs `currency`).
    pub price_min: Option<u64>,
    /// Highest "price from" in minor units, inclusive (needs `currency`).
    pub price_max: Option<u64>,
    /// Only products with a unit available.
    pub in_stock: Option<bool>,
    /// SKU attributes the product must have: `size:42,colour:blue`.
    pub attributes: Option<String>,
    /// `relevance` (default), `price_asc`, `price_desc` (both need `currency`) or
    /// `newest`. Ties are broken by product age, so pages never overlap.
    pub sort: Option<String>,
    /// Hits to skip (offset + limit at most 10,000).
    pub offset: Option<usize>,
    /// Hits per page, 1..=100 (default 20).
    pub limit: Option<usize>,
}

impl SearchQuery {
    fn request(self) -> Result<SearchRequest, ApiError> {
        let category = match self.category.as_deref() {
            None => Vec::new(),
            Some(path) => path.split('/').map(str::to_owned).collect(),
        };
        let attributes = match self.attributes.as_deref() {
            None | Some("") => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|pair| {
                    pair.split_once(':')
                        .filter(|(name, _)| !name.is_empty())
                        .map(|(name, value)| (name.to_owned(), value.to_owned()))
                        .ok_or_else(|| {
                            ApiError::bad_parameter(
                                "attributes",
                                format!("{pair:?} is not name:value"),
                            )
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        let sort = match self.sort.as_deref() {
            None => SearchSort::Relevance,
            Some(name) => SearchSort::parse(name).map_err(search_error)?,
        };
        let request = SearchRequest {
            text: self.q.unwrap_or_default(),
            brand: self.brand,
            category,
            currency: self.currency,
            price_min: self.price_min,
            price_max: self.price_max,
            in_stock_only: self.in_stock.unwrap_or(false),
            attributes,
            sort,
            offset: self.offset.unwrap_or(0),
            limit: self.limit.unwrap_or(SEARCH_PAGE_DEFAULT_ITEMS),
        };
        request.validate().map_err(search_error)?;
        Ok(request)
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SuggestQuery {
    /// What the shopper has typed so far.
    pub q: String,
    /// Suggestions, 1..=20 (default 8).
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchHitView {
    pub product_id: Uuid,
    pub title: String,
    pub brand: String,
    pub category: Vec<String>,
    /// The lowest SKU price per currency, in minor units.
    pub price_from: BTreeMap<String, i64>,
    pub in_stock: bool,
    /// Relevance; 0 when sorted by something else.
    pub score: f32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FacetCountView {
    pub value: String,
    pub count: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PriceBucketView {
    /// Inclusive, minor units.
    pub min: u64,
    /// Exclusive; absent for the last bucket.
    pub max: Option<u64>,
    pub count: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FacetsView {
    /// Brands of all matches, most frequent first.
    pub brands: Vec<FacetCountView>,
    /// Categories one level below the category filter (top level without one).
    pub categories: Vec<FacetCountView>,
    /// Matches per price bucket in `currency` (empty without one).
    pub price_buckets: Vec<PriceBucketView>,
    /// Matches with a unit available.
    pub in_stock: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResponse {
    /// Matches in all.
    pub total: u64,
    pub hits: Vec<SearchHitView>,
    pub facets: FacetsView,
    /// The log position the index had applied when it answered.
    pub position: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SuggestionView {
    pub product_id: Uuid,
    pub title: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SuggestResponse {
    pub suggestions: Vec<SuggestionView>,
}

fn facet_counts(counts: Vec<projections::search::FacetCount>) -> Vec<FacetCountView> {
    counts
        .into_iter()
        .map(|f| FacetCountView {
            value: f.value,
            count: f.count,
        })
        .collect()
}

impl SearchResponse {
    fn of(results: SearchResults, position: u64) -> SearchResponse {
        SearchResponse {
            total: results.total,
            hits: results
                .hits
                .into_iter()
                .map(|h| SearchHitView {
                    product_id: h.product_id,
                    title: h.title,
                    brand: h.brand,
                    category: h.category,
                    price_from: h.price_from,
                    in_stock: h.in_stock,
                    score: h.score,
                })
                .collect(),
            facets: FacetsView {
                brands: facet_counts(results.facets.brands),
                categories: facet_counts(results.facets.categories),
                price_buckets: results
                    .facets
                    .price_buckets
                    .into_iter()
                    .map(|b| PriceBucketView {
                        min: b.min,
                        max: b.max,
                        count: b.count,
                    })
                    .collect(),
                in_stock: results.facets.in_stock,
            },
            position,
        }
    }
}

fn search_error(e: SearchError) -> ApiError {
    match e {
        SearchError::InvalidQuery { field, reason } => ApiError::bad_parameter(field, reason),
        SearchError::Building { .. } => {
            let mut error = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "search-unavailable",
                e.to_string(),
            );
            error.retry_after_secs = Some(BUILDING_RETRY_AFTER_SECS);
            error
        }
        SearchError::Index(_) | SearchError::Projection(_) => ApiError::internal(e.to_string()),
    }
}

fn search_index(state: &AppState) -> Result<projections::search::SearchIndex, ApiError> {
    state.search().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "search-unavailable",
            "this process serves no search index",
        )
    })
}

/// Runs CPU-bound search work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SearchError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("search failed: {e}")))?
        .map_err(search_error)
}

/// Full-text product search with filters, facets, sorting and paging. Any role.
#[utoipa::path(get, path = "/v1/search", tag = "search", params(SearchQuery),
    responses((status = 200, body = SearchResponse),
        (status = "default", description = "A problem: `invalid-parameter` (unknown sort, bad price range, page too large), `search-unavailable` while the index is built", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn search(
    State(state): State<AppState>,
    _principal: Principal,
    QueryParams(query): QueryParams<SearchQuery>,
) -> Result<Response, ApiError> {
    let request = query.request()?;
    let index = search_index(&state)?;
    let (results, position) = blocking(move || {
        let position = index.status().position;
        Ok((index.search(&request)?, position))
    })
    .await?;
    Ok(json_response(
        StatusCode::OK,
        &SearchResponse::of(results, position),
    ))
}

/// Search-as-you-type: titles of the best matches, the last word completed. Any role.
#[utoipa::path(get, path = "/v1/search/suggest", tag = "search", params(SuggestQuery),
    responses((status = 200, body = SuggestResponse),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn suggest(
    State(state): State<AppState>,
    _principal: Principal,
    QueryParams(query): QueryParams<SuggestQuery>,
) -> Result<Response, ApiError> {
    let index = search_index(&state)?;
    let limit = query.limit.unwrap_or(SUGGEST_DEFAULT_ITEMS);
    let suggestions: Vec<Suggestion> = blocking(move || index.suggest(&query.q, limit)).await?;
    Ok(json_response(
        StatusCode::OK,
        &SuggestResponse {
            suggestions: suggestions
                .into_iter()
                .map(|s| SuggestionView {
                    product_id: s.product_id,
                    title: s.title,
                })
                .collect(),
        },
    ))
}

//! The index's fields and its text analysis.
//!
//! Two kinds of documents share the index: one per product (searchable, `visible`
//! when published) and one per SKU with stock (`stock_sku`, never matched by a
//! search: it carries no `visible` term). Both keep their whole state in the stored
//! `state` field, so the index alone is enough to apply the next event.

use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST, INDEXED, STORED, STRING,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, LowerCaser, RemoveLongFilter, SimpleTokenizer, TextAnalyzer,
};
use tantivy::Index;

/// Bumped whenever the fields or their analysis change: an index of another version
/// is rebuilt from the log.
pub(crate) const SCHEMA_VERSION: u32 = 5;
/// The analyzer of every full-text field: words, lower-cased, accents folded.
pub(crate) const ANALYZER: &str = "shop";
/// Longer tokens are dropped (they are not words a shopper types).
const TOKEN_MAX_BYTES: usize = 40;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Fields {
    /// The product id (hyphenated UUID), for updates and look-ups.
    pub product_id: Field,
    /// The SKU code of a stock document.
    pub stock_sku: Field,
    /// `1` on published products; the only documents a search may return.
    pub visible: Field,
    pub title: Field,
    pub brand_text: Field,
    pub description: Field,
    pub category_text: Field,
    /// Every word of the four fields above: what a search matches in (one posting
    /// list per word instead of one per field); the fields themselves rank.
    pub text: Field,
    /// The exact brand, for the filter and the facet.
    pub brand: Field,
    /// The category path as a facet (`/Shoes/Running`): a term per level.
    pub category: Field,
    /// A product's SKU codes (to find the product whose stock crossed zero).
    pub sku: Field,
    /// `name=value` of every SKU attribute.
    pub attribute: Field,
    /// The lowest price per currency, encoded by [`price_key`].
    pub price: Field,
    pub in_stock: Field,
    /// The log position of the product's creation: unique, so it breaks every tie
    /// and sorts by newest.
    pub seq: Field,
    /// The state as JSON (a product's or a SKU's stock).
    pub state: Field,
}

impl Fields {
    pub(crate) fn of(schema: &Schema) -> tantivy::Result<Fields> {
        let f = |name: &str| schema.get_field(name);
        Ok(Fields {
            product_id: f("product_id")?,
            stock_sku: f("stock_sku")?,
            visible: f("visible")?,
            title: f("title")?,
            brand_text: f("brand_text")?,
            description: f("description")?,
            category_text: f("category_text")?,
            text: f("text")?,
            brand: f("brand")?,
            category: f("category")?,
            sku: f("sku")?,
            attribute: f("attribute")?,
            price: f("price")?,
            in_stock: f("in_stock")?,
            seq: f("seq")?,
            state: f("state")?,
        })
    }
}

pub(crate) fn schema() -> Schema {
    let mut builder = Schema::builder();
    // Frequencies but no positions: BM25 needs no more, and the index stays smaller.
    let text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(ANALYZER)
            .set_index_option(IndexRecordOption::WithFreqs),
    );
    // The id's 16 bytes rather than its 36 characters: every product adds a term
    // of its own to the dictionary that each commit and merge builds.
    builder.add_bytes_field("product_id", INDEXED);
    builder.add_text_field("stock_sku", STRING);
    builder.add_u64_field("visible", INDEXED);
    builder.add_text_field("title", text.clone());
    builder.add_text_field("brand_text", text.clone());
    builder.add_text_field("description", text.clone());
    builder.add_text_field("category_text", text.clone());
    builder.add_text_field("text", text);
    builder.add_text_field("brand", STRING | FAST);
    builder.add_facet_field("category", INDEXED);
    builder.add_text_field("sku", STRING);
    builder.add_text_field("attribute", STRING);
    // Columns only: the collector reads them per match; no query looks them up.
    builder.add_u64_field("price", FAST);
    builder.add_u64_field("in_stock", FAST);
    builder.add_u64_field("seq", FAST);
    builder.add_bytes_field("state", STORED);
    builder.build()
}

pub(crate) fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(TOKEN_MAX_BYTES))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

pub(crate) fn register_analyzer(index: &Index) {
    index.tokenizers().register(ANALYZER, analyzer());
}

/// The words of `text` as the index holds them.
pub(crate) fn words(text: &str) -> Vec<String> {
    let mut analyzer = analyzer();
    let mut stream = analyzer.token_stream(text);
    let mut words = Vec::new();
    while let Some(token) = stream.next() {
        words.push(token.text.clone());
    }
    words
}

/// Bits of a price key that hold the amount in minor units.
const PRICE_BITS: u32 = 48;
/// The largest amount a price key can hold; larger prices are indexed as this.
pub(crate) const PRICE_MAX_MINOR: u64 = (1 << PRICE_BITS) - 1;

/// One `u64` for a price in a currency: the currency in the high bits, the amount
/// in the low 48, so one multi-valued fast field holds every currency and a price
/// range in one currency is one range of keys.
pub(crate) fn price_key(currency: &str, minor: i64) -> Option<u64> {
    let code = currency_code(currency)?;
    let minor = u64::try_from(minor).ok()?.min(PRICE_MAX_MINOR);
    Some((code << PRICE_BITS) | minor)
}

/// The amount of a price key if it is in `currency`.
pub(crate) fn price_in(key: u64, currency: u64) -> Option<u64> {
    (key >> PRICE_BITS == currency).then_some(key & PRICE_MAX_MINOR)
}

/// A currency of three letters `A-Z` as a number below 26³.
pub(crate) fn currency_code(currency: &str) -> Option<u64> {
    let bytes = currency.as_bytes();
    if bytes.len() != 3 || !bytes.iter().all(u8::is_ascii_uppercase) {
        return None;
    }
    Some(
        bytes
            .iter()
            .fold(0u64, |code, b| code * 26 + u64::from(b - b'A')),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn price_keys_keep_currencies_apart_and_amounts_in_order() {
        let eur = currency_code("EUR").unwrap();
        let usd = currency_code("USD").unwrap();
        let a = price_key("EUR", 1_999).unwrap();
        let b = price_key("EUR", 2_000).unwrap();
        assert!(a < b);
        assert_eq!(price_in(a, eur), Some(1_999));
        assert_eq!(price_in(a, usd), None);
        assert_eq!(price_key("eur", 1), None);
        assert_eq!(price_key("EUR", -1), None);
    }

    #[test]
    fn words_are_lower_cased_and_folded() {
        assert_eq!(
            words("Café TRAIL-runner 42"),
            ["cafe", "trail", "runner", "42"]
        );
    }
}

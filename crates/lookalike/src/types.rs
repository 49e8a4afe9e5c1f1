//! The types every stage shares: products, their scores and the filters on them. This module is
//! the bottom of the library and imports nothing from it but [`crate::error`] (which imports
//! nothing), so any stage may use it.

use std::path::PathBuf;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Returns an [`Error::InvalidInput`]: every check here is of what a caller gave.
macro_rules! invalid {
    ($($message:tt)*) => {
        return Err(Error::InvalidInput(format!($($message)*)))
    };
}
use serde::{Deserialize, Serialize};

/// A part of a photo, `[x0, y0, x1, y1]` in the photo's own pixels after EXIF orientation
/// (x0 < x1, y0 < y1; the part outside the photo is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PhotoBox {
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
}

impl PhotoBox {
    /// A box from four finite numbers, left top right bottom.
    pub fn new(x0: f32, y0: f32, x1: f32, y1: f32) -> Result<Self> {
        if ![x0, y0, x1, y1].iter().all(|v| v.is_finite()) {
            invalid!("a box is four finite numbers, got {x0}, {y0}, {x1}, {y1}");
        }
        if x0 >= x1 || y0 >= y1 {
            invalid!("a box is x0,y0,x1,y1 with x0 < x1 and y0 < y1, got {x0},{y0},{x1},{y1}");
        }
        Ok(Self { x0, y0, x1, y1 })
    }

    /// The box `x0,y0,x1,y1` (commas, optionally spaces or brackets: `[10, 20, 200, 300]`).
    pub fn parse(text: &str) -> Result<Self> {
        let inner = text.trim().trim_start_matches('[').trim_end_matches(']');
        let numbers: Vec<&str> = inner.split(',').map(str::trim).collect();
        let parsed: Vec<f32> = numbers.iter().filter_map(|n| n.parse().ok()).collect();
        if numbers.len() != 4 || parsed.len() != 4 {
            invalid!("a box is four numbers x0,y0,x1,y1 in the photo's pixels, got {text:?}");
        }
        Self::new(parsed[0], parsed[1], parsed[2], parsed[3])
    }

    /// The box kept to a photo of `width` × `height` pixels, as whole pixels; invalid input when
    /// no pixel of the photo is left.
    pub fn within(&self, width: u32, height: u32) -> Result<(u32, u32, u32, u32)> {
        let (w, h) = (width as f32, height as f32);
        let (x0, y0) = (self.x0.clamp(0.0, w).floor(), self.y0.clamp(0.0, h).floor());
        let (x1, y1) = (self.x1.clamp(0.0, w).ceil(), self.y1.clamp(0.0, h).ceil());
        if x1 <= x0 || y1 <= y0 {
            invalid!(
                "the box {},{},{},{} lies outside the photo ({width}x{height} pixels)",
                self.x0,
                self.y0,
                self.x1,
                self.y1
            );
        }
        Ok((x0 as u32, y0 as u32, x1 as u32, y1 as u32))
    }
}

/// Descriptive fields of a product; everything but the image is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProductInfo {
    pub title: Option<String>,
    pub price: Option<f64>,
    pub category: Option<String>,
    pub description: Option<String>,
    /// The product's page in the shop, for links from results and the widget.
    pub url: Option<String>,
    /// The family a product belongs to (its parent product, when variants are products of their
    /// own): results show one product per group unless asked for all.
    pub group: Option<String>,
}

/// A product as a catalogue lists it: its main image, then further views in catalogue order.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogueEntry {
    pub id: String,
    pub info: ProductInfo,
    pub image_path: PathBuf,
    pub more_images: Vec<PathBuf>,
}

impl CatalogueEntry {
    /// The main image, then the further views.
    pub fn images(&self) -> impl Iterator<Item = &PathBuf> {
        std::iter::once(&self.image_path).chain(&self.more_images)
    }
}

/// A stored view of a product beyond its main image.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductImage {
    pub path: String,
    pub content_hash: String,
    pub vector: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredProduct {
    pub id: String,
    pub info: ProductInfo,
    /// The main image.
    pub image_path: String,
    pub content_hash: String,
    pub vector: Vec<f32>,
    /// Further views (back, detail, other colours), in catalogue order.
    pub more_images: Vec<ProductImage>,
}

impl StoredProduct {
    /// Paths of all images, the main one first: a product's image `n` is `image_paths()[n]`.
    pub fn image_paths(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.image_path.as_str()).chain(self.more_images.iter().map(|i| i.path.as_str()))
    }

    /// Content hashes of all images, the main one first.
    pub fn image_hashes(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.content_hash.as_str()).chain(self.more_images.iter().map(|i| i.content_hash.as_str()))
    }

    /// Vectors of all images, the main one first.
    pub fn vectors(&self) -> impl Iterator<Item = &[f32]> {
        std::iter::once(self.vector.as_slice()).chain(self.more_images.iter().map(|i| i.vector.as_slice()))
    }
}

/// The first `k` of `hits` (best first), only the first of each group when `one_per_group`.
pub fn keep_per_group(mut hits: Vec<Scored>, k: usize, one_per_group: bool) -> Vec<Scored> {
    if one_per_group {
        let mut seen = std::collections::HashSet::new();
        hits.retain(|h| h.product.info.group.as_ref().is_none_or(|g| seen.insert(g.clone())));
    }
    hits.truncate(k);
    hits
}

/// Longest product id, in bytes.
pub const MAX_ID_BYTES: usize = 512;
/// Longest title or category, in bytes.
pub const MAX_TEXT_BYTES: usize = 1024;
/// Longest description, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 64 * 1024;

/// Text that every store can keep: PostgreSQL's text cannot hold NUL, and lengths are bounded.
pub fn check_text(field: &str, value: &str, max_bytes: usize) -> Result<()> {
    if value.contains('\0') {
        invalid!("the {field} contains a NUL character");
    }
    if value.len() > max_bytes {
        invalid!("the {field} is {} bytes long (at most {max_bytes})", value.len());
    }
    Ok(())
}

/// A product id: not empty, no NUL, at most [`MAX_ID_BYTES`].
pub fn check_id(id: &str) -> Result<()> {
    if id.trim().is_empty() {
        invalid!("the product id is empty");
    }
    check_text("product id", id, MAX_ID_BYTES)
}

/// A product link: an absolute http(s) URL (or a path on the shop's own site, starting with
/// `/`), at most [`MAX_TEXT_BYTES`], without spaces, quotes or control characters. Anything else,
/// such as `javascript:`, would be a script the page and the widget run on a click.
pub fn check_url(url: &str) -> Result<()> {
    check_text("url", url, MAX_TEXT_BYTES)?;
    let lower = url.to_ascii_lowercase();
    let shaped = lower.starts_with("https://")
        || lower.starts_with("http://")
        || (url.starts_with('/') && !url.starts_with("//"));
    let clean = !url
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '<' | '>' | '\\'));
    if !(shaped && clean) {
        invalid!("the url {url:?} is not an http(s) address or a path starting with /");
    }
    Ok(())
}

/// A price: a finite number, not negative.
pub fn check_price(field: &str, price: f64) -> Result<()> {
    if !(price.is_finite() && price >= 0.0) {
        invalid!("the {field} must be a non-negative finite number, got {price}");
    }
    Ok(())
}

impl ProductInfo {
    /// The last part of the category (`Men/Tops/Tees` -> `Tees`): the kind of product it is.
    pub fn category_leaf(&self) -> Option<&str> {
        self.category
            .as_deref()
            .and_then(|c| c.rsplit('/').next())
            .map(str::trim)
    }

    /// Checks every field with [`check_text`] and [`check_price`].
    pub fn check(&self) -> Result<()> {
        for (field, value, max) in [
            ("title", &self.title, MAX_TEXT_BYTES),
            ("category", &self.category, MAX_TEXT_BYTES),
            ("group", &self.group, MAX_ID_BYTES),
            ("description", &self.description, MAX_DESCRIPTION_BYTES),
        ] {
            if let Some(value) = value {
                check_text(field, value, max)?;
            }
        }
        if let Some(price) = self.price {
            check_price("price", price)?;
        }
        if let Some(url) = &self.url {
            check_url(url)?;
        }
        Ok(())
    }
}

/// A product with its score (cosine similarity, or Euclidean distance) and the image of it that
/// matched best (0: the main image).
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub product: StoredProduct,
    pub score: f32,
    pub image: usize,
}

impl Scored {
    /// The file of the product's photo that matched (the main one if `image` names none).
    pub fn matched_path(&self) -> &str {
        self.product
            .image_paths()
            .nth(self.image)
            .unwrap_or(&self.product.image_path)
    }

    /// The vector of the product's photo that matched (the main one if `image` names none).
    pub fn matched_vector(&self) -> &[f32] {
        self.product.vectors().nth(self.image).unwrap_or(&self.product.vector)
    }
}

/// The products related to one product, by id, best first, with their cosine similarities.
pub type RelatedIds = Vec<(String, f32)>;

/// One page of the product list.
pub struct Page {
    pub total: usize,
    pub items: Vec<StoredProduct>,
    /// Every category in the catalogue, sorted.
    pub categories: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    #[default]
    Cosine,
    Euclidean,
}

impl Metric {
    /// Orders scores best first: higher similarity (cosine), shorter distance (Euclidean).
    pub fn best_first(self, a: f32, b: f32) -> std::cmp::Ordering {
        match self {
            Self::Cosine => b.total_cmp(&a),
            Self::Euclidean => a.total_cmp(&b),
        }
    }

    /// A product's score from the scores of its images against the query (or queries), each with
    /// the image's number: the mean of its two best (its one, with a single image), which ranked
    /// Luma's products better than the best alone (`lookalike eval products`: Recall@1 0.666 vs
    /// 0.642, Recall@5 0.815 vs 0.788); and the image that matched best.
    pub fn product_score(self, mut pairs: Vec<(f32, usize)>) -> (f32, usize) {
        pairs.sort_by(|a, b| self.best_first(a.0, b.0).then(a.1.cmp(&b.1)));
        let top = &pairs[..pairs.len().min(2)];
        (top.iter().map(|(s, _)| s).sum::<f32>() / top.len() as f32, pairs[0].1)
    }
}

impl FromStr for Metric {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cosine" => Ok(Self::Cosine),
            "euclidean" | "l2" => Ok(Self::Euclidean),
            _ => invalid!("unknown metric {s:?} (cosine or euclidean)"),
        }
    }
}

/// The words of a text query: letters and digits, lower-cased, at most [`Words::MAX_WORDS`] of
/// them. Punctuation and operators never reach a full-text engine, so any input is a plain
/// "any of these words" query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Words(Vec<String>);

impl Words {
    pub const MAX_WORDS: usize = 32;
    const MAX_WORD_CHARS: usize = 64;

    pub fn parse(text: &str) -> Result<Self> {
        check_text("text query", text, MAX_TEXT_BYTES)?;
        let mut words: Vec<String> = Vec::new();
        for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
            if word.chars().count() > Self::MAX_WORD_CHARS {
                invalid!("the text query has a word longer than {} letters", Self::MAX_WORD_CHARS);
            }
            let word = fold_accents(&word.to_lowercase()).into_owned();
            if !words.contains(&word) {
                words.push(word);
            }
        }
        if words.is_empty() {
            invalid!("the text query has no words to search for");
        }
        if words.len() > Self::MAX_WORDS {
            invalid!("the text query has more than {} words", Self::MAX_WORDS);
        }
        Ok(Self(words))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// Whether two categories are the same but for case, by Unicode case folding (`Épicerie` is
/// `épicerie`, `STRASSE` is `straße`): what every store means by a category filter.
pub fn same_category(a: &str, b: &str) -> bool {
    unicase::eq(a, b)
}

/// `category` case-folded: equal for two categories exactly when [`same_category`] says so. The
/// stores compare these, so that neither depends on the database's locale.
pub fn category_key(category: &str) -> String {
    unicase::UniCase::new(category).to_folded_case()
}

/// `text` without its accents (canonical decomposition, combining marks dropped: `Café` → `Cafe`),
/// as both stores index and query words, so `cafe` finds `Café` and `café` finds `Cafe`. SQLite's
/// tokenizer does the same by itself (`remove_diacritics 2`); PostgreSQL's does not.
pub fn fold_accents(text: &str) -> std::borrow::Cow<'_, str> {
    use unicode_normalization::{char::is_combining_mark, UnicodeNormalization};
    if text.is_ascii() {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(text.nfd().filter(|&c| !is_combining_mark(c)).nfc().collect())
}

#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Category match, the same but for case ([`same_category`]).
    pub category: Option<String>,
    /// When not empty, the product's category must be one of these (the same but for case).
    pub any_category: Vec<String>,
    pub min_price: Option<f64>,
    pub max_price: Option<f64>,
    /// Only the best product of each group (see [`ProductInfo::group`]).
    pub one_per_group: bool,
    /// No product of this group (a product's own variants are not "similar products").
    pub exclude_group: Option<String>,
}

impl Filter {
    /// A filter from user input: a blank category means none; the price range must not be empty;
    /// one product per group.
    pub fn new(category: Option<String>, min_price: Option<f64>, max_price: Option<f64>) -> Result<Self> {
        for (name, price) in [("minimum price", min_price), ("maximum price", max_price)] {
            if let Some(price) = price {
                check_price(name, price)?;
            }
        }
        if let (Some(lo), Some(hi)) = (min_price, max_price) {
            if lo > hi {
                invalid!("the minimum price {lo} is above the maximum price {hi}");
            }
        }
        if let Some(category) = &category {
            check_text("category", category, MAX_TEXT_BYTES)?;
        }
        Ok(Self {
            category: category.filter(|c| !c.trim().is_empty()),
            any_category: Vec::new(),
            min_price,
            max_price,
            one_per_group: true,
            exclude_group: None,
        })
    }

    /// Whether some product could fail [`Self::accepts`].
    pub fn restricts(&self) -> bool {
        self.exclude_group.is_some()
            || self.category.is_some()
            || !self.any_category.is_empty()
            || self.min_price.is_some()
            || self.max_price.is_some()
    }

    pub fn accepts(&self, p: &StoredProduct) -> bool {
        if self.exclude_group.is_some() && p.info.group == self.exclude_group {
            return false;
        }
        let is = |c: &String| p.info.category.as_deref().is_some_and(|pc| same_category(pc, c));
        if self.category.as_ref().is_some_and(|c| !is(c)) {
            return false;
        }
        if !self.any_category.is_empty() && !self.any_category.iter().any(is) {
            return false;
        }
        if self.min_price.is_none() && self.max_price.is_none() {
            return true;
        }
        // A price filter excludes products without a price.
        let Some(price) = p.info.price else {
            return false;
        };
        self.min_price.is_none_or(|m| price >= m) && self.max_price.is_none_or(|m| price <= m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_photo_box_is_four_finite_ordered_numbers_kept_to_the_photo() {
        let parsed = PhotoBox::parse("[10, 20, 200.5, 300]").unwrap();
        assert_eq!(parsed, PhotoBox::new(10.0, 20.0, 200.5, 300.0).unwrap());
        for bad in [
            "",
            "1,2,3",
            "1,2,3,4,5",
            "a,b,c,d",
            "NaN,0,1,1",
            "0,0,inf,1",
            "5,0,1,1",
            "0,5,1,5",
            "1,,2,3",
        ] {
            assert!(matches!(PhotoBox::parse(bad), Err(Error::InvalidInput(_))), "{bad:?}");
        }
        let partly_outside = PhotoBox::parse("-10,-10,50.5,20").unwrap();
        assert_eq!(partly_outside.within(40, 30).unwrap(), (0, 0, 40, 20));
        let outside = PhotoBox::parse("100,100,200,200").unwrap();
        assert!(matches!(outside.within(50, 50), Err(Error::InvalidInput(_))));
        assert_eq!(PhotoBox::parse("0,0,1,1").unwrap().within(1, 1).unwrap(), (0, 0, 1, 1));
    }

    #[test]
    fn filters_refuse_what_no_product_can_match() {
        assert!(Filter::new(None, Some(f64::NAN), None).is_err());
        assert!(Filter::new(None, None, Some(f64::INFINITY)).is_err());
        assert!(Filter::new(None, Some(-1.0), None).is_err());
        assert!(Filter::new(None, Some(5.0), Some(1.0)).is_err());
        assert!(Filter::new(Some("a\0b".into()), None, None).is_err());
        let f = Filter::new(Some("  ".into()), Some(1.0), Some(5.0)).unwrap();
        assert_eq!(f.category, None);
    }

    #[test]
    fn categories_match_by_unicode_case_folding() {
        for (a, b) in [
            ("Épicerie", "épicerie"),
            ("ÉPICERIE", "épicerie"),
            ("Gear/Bags", "gear/BAGS"),
            ("STRASSE", "straße"),
            ("ΣΊΣΥΦΟΣ", "σίσυφος"),
        ] {
            assert!(same_category(a, b), "{a} ~ {b}");
            assert_eq!(category_key(a), category_key(b), "{a} ~ {b}");
        }
        for (a, b) in [("Épicerie", "Epicerie"), ("bags", "bag")] {
            assert!(!same_category(a, b), "{a} !~ {b}");
            assert_ne!(category_key(a), category_key(b), "{a} !~ {b}");
        }
    }

    #[test]
    fn accents_are_folded_and_plain_text_is_kept_as_is() {
        assert_eq!(fold_accents("Café crème, Ærø, São Paulo"), "Cafe creme, Ærø, Sao Paulo");
        assert!(matches!(fold_accents("plain"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(Words::parse("CAFÉ Crème").unwrap().as_slice(), ["cafe", "creme"]);
    }

    #[test]
    fn text_queries_become_plain_words() {
        let words = Words::parse("Grey  HOODIE, \"pink\" OR* NEAR(x) grey").unwrap();
        assert_eq!(words.as_slice(), ["grey", "hoodie", "pink", "or", "near", "x"]);
        assert_eq!(
            Words::parse("Saia rosa-choque").unwrap().as_slice(),
            ["saia", "rosa", "choque"]
        );
        let many: String = (0..=Words::MAX_WORDS).map(|i| format!("w{i} ")).collect();
        for bad in ["", " -- ", "a\0b", &"x".repeat(65), &many] {
            assert!(Words::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn text_fields_are_checked() {
        assert!(check_id("").is_err());
        assert!(check_id(&"x".repeat(MAX_ID_BYTES + 1)).is_err());
        assert!(check_id("MH01\0").is_err());
        assert!(check_id("MH01").is_ok());
        let info = ProductInfo {
            title: Some("ok".into()),
            description: Some("bad\0".into()),
            ..Default::default()
        };
        assert!(info.check().unwrap_err().to_string().contains("description"));
        for good in ["https://shop.example/p/mh01", "http://x.y/a?b=c", "/products/mh01"] {
            assert!(check_url(good).is_ok(), "{good}");
        }
        for bad in [
            "javascript:alert(1)",
            "//evil.example/x",
            "ftp://x",
            "https://a b",
            "data:text/html,x",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}

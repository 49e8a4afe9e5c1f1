//! The types every stage shares: products, their scores and the filters on them. This module is
//! the bottom of the library and imports nothing from it, so any stage may use it.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Descriptive fields of a product; everything but the image is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProductInfo {
    pub title: Option<String>,
    pub price: Option<f64>,
    pub category: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CatalogueEntry {
    pub id: String,
    pub info: ProductInfo,
    pub image_path: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredProduct {
    pub id: String,
    pub info: ProductInfo,
    pub image_path: String,
    pub content_hash: String,
    pub vector: Vec<f32>,
}

/// A product with its score (cosine similarity, or Euclidean distance).
pub type Scored = (StoredProduct, f32);

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
}

impl FromStr for Metric {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cosine" => Ok(Self::Cosine),
            "euclidean" | "l2" => Ok(Self::Euclidean),
            _ => bail!("unknown metric {s:?} (cosine or euclidean)"),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Case-insensitive exact category match.
    pub category: Option<String>,
    /// When not empty, the product's category must be one of these (case-insensitive).
    pub any_category: Vec<String>,
    pub min_price: Option<f64>,
    pub max_price: Option<f64>,
}

impl Filter {
    /// A filter from user input: a blank category means none; the price range must not be empty.
    pub fn new(category: Option<String>, min_price: Option<f64>, max_price: Option<f64>) -> Result<Self> {
        if let (Some(lo), Some(hi)) = (min_price, max_price) {
            if lo > hi {
                bail!("the minimum price {lo} is above the maximum price {hi}");
            }
        }
        Ok(Self {
            category: category.filter(|c| !c.trim().is_empty()),
            any_category: Vec::new(),
            min_price,
            max_price,
        })
    }

    pub fn accepts(&self, p: &StoredProduct) -> bool {
        let is = |c: &String| p.info.category.as_deref().is_some_and(|pc| pc.eq_ignore_ascii_case(c));
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

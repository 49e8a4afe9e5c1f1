//! Exact nearest-neighbour search over the catalogue's vectors, in memory.
//!
//! Scores: cosine similarity in [-1, 1] (higher is closer) or Euclidean distance
//! (lower is closer) between raw pooled features. Exact search over 1280-d
//! vectors costs about one multiply-add per dimension and product, which stays
//! within milliseconds up to ~10^5 products on two cores.

use std::collections::HashMap;
use std::str::FromStr;

use anyhow::{bail, Result};
use rayon::prelude::*;
use serde::Serialize;

use crate::store::StoredProduct;

/// Below this many products a single thread is faster than splitting the scan.
const PARALLEL_THRESHOLD: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    #[default]
    Cosine,
    Euclidean,
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
    pub min_price: Option<f64>,
    pub max_price: Option<f64>,
}

impl Filter {
    pub fn accepts(&self, p: &StoredProduct) -> bool {
        if let Some(c) = &self.category {
            if !p.info.category.as_deref().is_some_and(|pc| pc.eq_ignore_ascii_case(c)) {
                return false;
            }
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

#[derive(Debug, Clone, Copy)]
pub struct Hit<'a> {
    pub product: &'a StoredProduct,
    pub score: f32,
}

/// All products of a catalogue with their vectors laid out contiguously for scanning.
pub struct VectorIndex {
    products: Vec<StoredProduct>,
    positions: HashMap<String, usize>,
    vectors: Vec<f32>,
    norms: Vec<f32>,
    dimension: usize,
}

/// Dot product with eight independent accumulators, so the compiler can keep them in SIMD lanes.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

impl VectorIndex {
    pub fn new(products: Vec<StoredProduct>) -> Result<Self> {
        let dimension = products.first().map_or(0, |p| p.vector.len());
        let mut index = Self {
            products: Vec::with_capacity(products.len()),
            positions: HashMap::with_capacity(products.len()),
            vectors: Vec::with_capacity(products.len() * dimension),
            norms: Vec::with_capacity(products.len()),
            dimension,
        };
        for p in products {
            index.upsert(p)?;
        }
        Ok(index)
    }

    /// Adds a product, or replaces the one with the same id.
    pub fn upsert(&mut self, product: StoredProduct) -> Result<()> {
        if self.products.is_empty() {
            self.dimension = product.vector.len();
        }
        if product.vector.len() != self.dimension {
            bail!(
                "product {:?} has a {}-d vector, the catalogue's are {}-d",
                product.id,
                product.vector.len(),
                self.dimension
            );
        }
        let norm = dot(&product.vector, &product.vector).sqrt();
        match self.positions.get(&product.id) {
            Some(&i) => {
                self.vectors[i * self.dimension..(i + 1) * self.dimension].copy_from_slice(&product.vector);
                self.norms[i] = norm;
                self.products[i] = product;
            }
            None => {
                self.positions.insert(product.id.clone(), self.products.len());
                self.vectors.extend_from_slice(&product.vector);
                self.norms.push(norm);
                self.products.push(product);
            }
        }
        Ok(())
    }

    /// Removes a product; the last one takes its place.
    pub fn remove(&mut self, id: &str) -> bool {
        let Some(i) = self.positions.remove(id) else {
            return false;
        };
        let last = self.products.len() - 1;
        if i != last {
            let d = self.dimension;
            self.vectors.copy_within(last * d..(last + 1) * d, i * d);
            self.positions.insert(self.products[last].id.clone(), i);
        }
        self.products.swap_remove(i);
        self.norms.swap_remove(i);
        self.vectors.truncate(last * self.dimension);
        true
    }

    pub fn len(&self) -> usize {
        self.products.len()
    }

    pub fn is_empty(&self) -> bool {
        self.products.is_empty()
    }

    pub fn dimension(&self) -> usize {
        self.dimension
    }

    pub fn products(&self) -> &[StoredProduct] {
        &self.products
    }

    pub fn find(&self, id: &str) -> Option<&StoredProduct> {
        self.positions.get(id).map(|&i| &self.products[i])
    }

    fn score(&self, i: usize, query: &[f32], query_norm: f32, metric: Metric) -> f32 {
        let v = &self.vectors[i * self.dimension..(i + 1) * self.dimension];
        let d = dot(query, v);
        match metric {
            Metric::Cosine => d / (query_norm * self.norms[i]).max(f32::MIN_POSITIVE),
            Metric::Euclidean => (query_norm * query_norm + self.norms[i] * self.norms[i] - 2.0 * d)
                .max(0.0)
                .sqrt(),
        }
    }

    /// The `k` best products for `query` that pass `filter`, best first; `exclude` drops one id.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        metric: Metric,
        filter: &Filter,
        exclude: Option<&str>,
    ) -> Result<Vec<Hit<'_>>> {
        if !self.is_empty() && query.len() != self.dimension {
            bail!(
                "query vector is {}-d, the catalogue's are {}-d",
                query.len(),
                self.dimension
            );
        }
        let query_norm = dot(query, query).sqrt();
        let candidate = |i: usize| {
            let p = &self.products[i];
            (filter.accepts(p) && exclude != Some(p.id.as_str())).then(|| (i, self.score(i, query, query_norm, metric)))
        };
        let mut scored: Vec<(usize, f32)> = if self.len() >= PARALLEL_THRESHOLD {
            (0..self.len()).into_par_iter().filter_map(candidate).collect()
        } else {
            (0..self.len()).filter_map(candidate).collect()
        };
        let better = |a: &(usize, f32), b: &(usize, f32)| {
            match metric {
                Metric::Cosine => b.1.total_cmp(&a.1),
                Metric::Euclidean => a.1.total_cmp(&b.1),
            }
            .then(a.0.cmp(&b.0))
        };
        if k < scored.len() {
            scored.select_nth_unstable_by(k, better);
            scored.truncate(k);
        }
        scored.sort_by(better);
        Ok(scored
            .into_iter()
            .map(|(i, score)| Hit {
                product: &self.products[i],
                score,
            })
            .collect())
    }

    /// Products that look like product `id` (itself excluded).
    pub fn similar(&self, id: &str, k: usize, metric: Metric, filter: &Filter) -> Result<Vec<Hit<'_>>> {
        let Some(product) = self.find(id) else {
            bail!("no product with id {id:?} in the catalogue");
        };
        self.search(&product.vector, k, metric, filter, Some(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::ProductInfo;

    fn product(id: &str, v: Vec<f32>, category: &str, price: Option<f64>) -> StoredProduct {
        StoredProduct {
            id: id.into(),
            info: ProductInfo {
                category: Some(category.into()),
                price,
                ..Default::default()
            },
            image_path: String::new(),
            content_hash: String::new(),
            vector: v,
        }
    }

    fn index() -> VectorIndex {
        VectorIndex::new(vec![
            product("a", vec![1.0, 0.0], "shoes", Some(10.0)),
            product("b", vec![2.0, 0.2], "shoes", Some(50.0)),
            product("c", vec![0.0, 1.0], "bags", None),
            product("d", vec![-1.0, 0.0], "bags", Some(5.0)),
        ])
        .unwrap()
    }

    fn ids(hits: &[Hit]) -> Vec<String> {
        hits.iter().map(|h| h.product.id.clone()).collect()
    }

    #[test]
    fn dot_handles_tails() {
        let a: Vec<f32> = (0..19).map(|i| i as f32).collect();
        assert_eq!(dot(&a, &a), (0..19).map(|i| (i * i) as f32).sum::<f32>());
    }

    #[test]
    fn cosine_ranks_by_angle_and_scores_in_range() {
        let idx = index();
        let hits = idx
            .search(&[1.0, 0.0], 4, Metric::Cosine, &Filter::default(), None)
            .unwrap();
        assert_eq!(ids(&hits), ["a", "b", "c", "d"]);
        assert!((hits[0].score - 1.0).abs() < 1e-6);
        assert!((hits[3].score + 1.0).abs() < 1e-6);
    }

    #[test]
    fn euclidean_ranks_by_distance() {
        let idx = index();
        let hits = idx
            .search(&[1.9, 0.2], 2, Metric::Euclidean, &Filter::default(), None)
            .unwrap();
        assert_eq!(ids(&hits), ["b", "a"]);
        assert!((hits[0].score - 0.1).abs() < 1e-5);
    }

    #[test]
    fn filters_and_exclusion() {
        let idx = index();
        let cat = Filter {
            category: Some("BAGS".into()),
            ..Default::default()
        };
        assert_eq!(
            ids(&idx.search(&[1.0, 0.0], 10, Metric::Cosine, &cat, None).unwrap()),
            ["c", "d"]
        );
        let price = Filter {
            min_price: Some(6.0),
            max_price: Some(20.0),
            ..Default::default()
        };
        assert_eq!(
            ids(&idx.search(&[0.0, 1.0], 10, Metric::Cosine, &price, None).unwrap()),
            ["a"]
        );
        assert_eq!(
            ids(&idx.similar("a", 1, Metric::Cosine, &Filter::default()).unwrap()),
            ["b"]
        );
        assert!(idx.similar("zz", 1, Metric::Cosine, &Filter::default()).is_err());
    }

    #[test]
    fn upsert_and_remove_keep_search_consistent() {
        let mut idx = index();
        idx.upsert(product("a", vec![0.0, -1.0], "shoes", None)).unwrap();
        assert_eq!(idx.len(), 4);
        assert!(idx.remove("b"));
        assert!(!idx.remove("b"));
        assert_eq!(idx.find("d").unwrap().vector, vec![-1.0, 0.0]);
        let hits = idx
            .search(&[0.0, -1.0], 1, Metric::Cosine, &Filter::default(), None)
            .unwrap();
        assert_eq!(ids(&hits), ["a"]);
        assert_eq!(
            ids(&idx
                .search(&[-1.0, 0.0], 1, Metric::Cosine, &Filter::default(), None)
                .unwrap()),
            ["d"]
        );
        assert!(idx.upsert(product("e", vec![1.0], "x", None)).is_err());
    }

    #[test]
    fn parallel_scan_agrees_with_sequential_top_k() {
        let n = PARALLEL_THRESHOLD + 100;
        let products = (0..n)
            .map(|i| {
                product(
                    &format!("p{i:05}"),
                    vec![(i as f32).sin(), (i as f32).cos(), 0.5],
                    "x",
                    None,
                )
            })
            .collect();
        let idx = VectorIndex::new(products).unwrap();
        let q = [0.3, -0.8, 0.5];
        let hits = idx.search(&q, 5, Metric::Cosine, &Filter::default(), None).unwrap();
        let mut all: Vec<(f32, usize)> = (0..n)
            .map(|i| (idx.score(i, &q, dot(&q, &q).sqrt(), Metric::Cosine), i))
            .collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let expected: Vec<String> = all[..5].iter().map(|(_, i)| format!("p{i:05}")).collect();
        assert_eq!(ids(&hits), expected);
    }
}

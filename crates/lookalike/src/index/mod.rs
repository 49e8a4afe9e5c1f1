//! Nearest-neighbour search over the catalogue's vectors, in memory.
//!
//! Scores: cosine similarity in [-1, 1] (higher is closer) or Euclidean distance
//! (lower is closer) between raw pooled features, always computed exactly in f32.
//!
//! A full scan of f32 vectors is bound by memory bandwidth (100k × 1280-d is 512 MB
//! read per query, ~50 ms here), so the scan reads an int8 copy (a quarter of the
//! bytes, one scale per vector) to shortlist candidates, and only the shortlist is
//! scored exactly. The shortlist is many times k, so the int8 rounding (well under
//! 1 % of a score) does not change the top k in practice; `lookalike bench search`
//! measures both the speed and the recall against the exact scan.

pub mod dedup;
pub mod related;

use std::collections::HashMap;

use anyhow::{bail, Result};
use rayon::prelude::*;

use crate::types::{Filter, Metric, StoredProduct};

/// Below this many products a single thread is faster than splitting the scan.
const PARALLEL_THRESHOLD: usize = 8192;
/// Candidates scored exactly per result asked for, and at least this many in all.
const SHORTLIST_PER_RESULT: usize = 8;
const MIN_SHORTLIST: usize = 256;

#[derive(Debug, Clone, Copy)]
pub struct Hit<'a> {
    pub product: &'a StoredProduct,
    pub score: f32,
}

/// All products of a catalogue, with an int8 copy of their vectors laid out contiguously for scanning.
pub struct VectorIndex {
    products: Vec<StoredProduct>,
    positions: HashMap<String, usize>,
    codes: Vec<i8>,
    scales: Vec<f32>,
    norms: Vec<f32>,
    dimension: usize,
}

/// Symmetric int8 quantisation with one scale per vector: `x ≈ code * scale`.
pub fn quantize(v: &[f32], codes: &mut [i8]) -> f32 {
    let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if max == 0.0 || !max.is_finite() {
        codes.fill(0);
        return 0.0;
    }
    let scale = max / 127.0;
    for (c, x) in codes.iter_mut().zip(v) {
        *c = (x / scale).round().clamp(-127.0, 127.0) as i8;
    }
    scale
}

#[inline(always)]
fn dot_i8_portable(a: &[i8], b: &[i8]) -> i32 {
    let mut acc = [0i32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: i32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += i32::from(x[i]) * i32::from(y[i]);
        }
    }
    acc.iter().sum::<i32>() + tail
}

/// The same loop compiled for AVX2, which the default x86-64 target may not assume.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
    dot_i8_portable(a, b)
}

/// Keeps the `k` best (index, score) pairs, best first; ties go to the lower index.
fn keep_best(scored: &mut Vec<(usize, f32)>, k: usize, metric: Metric) {
    let better = |a: &(usize, f32), b: &(usize, f32)| metric.best_first(a.1, b.1).then(a.0.cmp(&b.0));
    if k < scored.len() {
        scored.select_nth_unstable_by(k, better);
        scored.truncate(k);
    }
    scored.sort_by(better);
}

/// Dot product of int8 codes, exact in i32 for vectors up to ~130k dimensions.
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { dot_i8_avx2(a, b) };
    }
    dot_i8_portable(a, b)
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
            codes: Vec::with_capacity(products.len() * dimension),
            scales: Vec::with_capacity(products.len()),
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
        let i = match self.positions.get(&product.id) {
            Some(&i) => {
                self.norms[i] = norm;
                self.products[i] = product;
                i
            }
            None => {
                let i = self.products.len();
                self.positions.insert(product.id.clone(), i);
                self.codes.resize((i + 1) * self.dimension, 0);
                self.scales.push(0.0);
                self.norms.push(norm);
                self.products.push(product);
                i
            }
        };
        let d = self.dimension;
        self.scales[i] = quantize(&self.products[i].vector, &mut self.codes[i * d..(i + 1) * d]);
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
            self.codes.copy_within(last * d..(last + 1) * d, i * d);
            self.positions.insert(self.products[last].id.clone(), i);
        }
        self.products.swap_remove(i);
        self.norms.swap_remove(i);
        self.scales.swap_remove(i);
        self.codes.truncate(last * self.dimension);
        true
    }

    pub fn len(&self) -> usize {
        self.products.len()
    }

    pub fn is_empty(&self) -> bool {
        self.products.is_empty()
    }

    /// Bytes of vector data held: the f32 vectors, their int8 copy, scales and norms.
    pub fn vector_bytes(&self) -> usize {
        self.len() * (self.dimension * (4 + 1) + 8)
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
        self.score_from_dot(i, dot(query, &self.products[i].vector), query_norm, metric)
    }

    fn score_from_dot(&self, i: usize, d: f32, query_norm: f32, metric: Metric) -> f32 {
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
        let accepted = |i: usize| {
            let p = &self.products[i];
            filter.accepts(p) && exclude != Some(p.id.as_str())
        };
        let shortlist_len = (k * SHORTLIST_PER_RESULT).max(MIN_SHORTLIST);
        let candidates: Vec<usize> = if self.len() <= shortlist_len {
            (0..self.len()).filter(|&i| accepted(i)).collect()
        } else {
            let d = self.dimension;
            let mut query_codes = vec![0i8; d];
            let query_scale = quantize(query, &mut query_codes);
            let approximate = |i: usize| {
                let approx_dot =
                    dot_i8(&query_codes, &self.codes[i * d..(i + 1) * d]) as f32 * query_scale * self.scales[i];
                (i, self.score_from_dot(i, approx_dot, query_norm, metric))
            };
            let mut shortlist: Vec<(usize, f32)> = if self.len() >= PARALLEL_THRESHOLD {
                (0..self.len())
                    .into_par_iter()
                    .filter(|&i| accepted(i))
                    .map(approximate)
                    .collect()
            } else {
                (0..self.len()).filter(|&i| accepted(i)).map(approximate).collect()
            };
            keep_best(&mut shortlist, shortlist_len, metric);
            shortlist.into_iter().map(|(i, _)| i).collect()
        };
        let mut scored: Vec<(usize, f32)> = candidates
            .into_iter()
            .map(|i| (i, self.score(i, query, query_norm, metric)))
            .collect();
        keep_best(&mut scored, k, metric);
        Ok(scored
            .into_iter()
            .map(|(i, score)| Hit {
                product: &self.products[i],
                score,
            })
            .collect())
    }

    /// The reference for the shortlist: every accepted product scored exactly.
    pub fn search_exact(&self, query: &[f32], k: usize, metric: Metric, filter: &Filter) -> Vec<Hit<'_>> {
        let query_norm = dot(query, query).sqrt();
        let mut scored: Vec<(usize, f32)> = (0..self.len())
            .into_par_iter()
            .filter(|&i| filter.accepts(&self.products[i]))
            .map(|i| (i, self.score(i, query, query_norm, metric)))
            .collect();
        keep_best(&mut scored, k, metric);
        scored
            .into_iter()
            .map(|(i, score)| Hit {
                product: &self.products[i],
                score,
            })
            .collect()
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
    use crate::types::ProductInfo;

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
    fn int8_dot_matches_hand_computed_and_quantization_round_trips() {
        let a: Vec<i8> = (0..37).map(|i| (i * 7 % 255 - 127) as i8).collect();
        let b: Vec<i8> = (0..37).map(|i| (i * 13 % 255 - 127) as i8).collect();
        let expected: i32 = a.iter().zip(&b).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum();
        assert_eq!(dot_i8(&a, &b), expected);
        assert_eq!(dot_i8(&[127; 5], &[-127; 5]), -5 * 127 * 127);

        let v = [0.5, -1.0, 0.25, 0.0];
        let mut codes = [0i8; 4];
        let scale = quantize(&v, &mut codes);
        assert_eq!(codes, [64, -127, 32, 0]);
        assert!((scale - 1.0 / 127.0).abs() < 1e-9);
        assert_eq!(quantize(&[0.0; 4], &mut codes), 0.0);
    }

    #[test]
    fn shortlisted_search_agrees_with_the_exact_scan() {
        let n = PARALLEL_THRESHOLD + 100;
        let products = (0..n)
            .map(|i| {
                let x = i as f32;
                product(
                    &format!("p{i:05}"),
                    (0..24).map(|j| (x * 0.37 + j as f32).sin().max(0.0)).collect(),
                    if i % 3 == 0 { "a" } else { "b" },
                    None,
                )
            })
            .collect();
        let idx = VectorIndex::new(products).unwrap();
        let category = Filter {
            category: Some("a".into()),
            ..Filter::default()
        };
        for (q, metric, filter) in [
            (0.3f32, Metric::Cosine, Filter::default()),
            (2.1, Metric::Euclidean, Filter::default()),
            (5.7, Metric::Cosine, category),
        ] {
            let query: Vec<f32> = (0..24).map(|j| (q + j as f32).sin().max(0.0)).collect();
            let fast = idx.search(&query, 10, metric, &filter, None).unwrap();
            let exact = idx.search_exact(&query, 10, metric, &filter);
            assert_eq!(ids(&fast), ids(&exact), "{metric:?}");
            assert_eq!(fast[0].score, exact[0].score);
        }
    }
}

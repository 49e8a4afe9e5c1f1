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

pub mod ann;
pub mod kernels;
pub mod dedup;
pub mod diversity;
pub mod fusion;
pub mod related;

use std::collections::HashMap;

use anyhow::{bail, Result};
use rayon::prelude::*;

use crate::types::{Filter, Metric, StoredProduct};

pub use kernels::{dot, dot_i8, quantize};

/// Below this many products a single thread is faster than splitting the scan.
const PARALLEL_THRESHOLD: usize = 8192;
/// Candidates scored exactly per result asked for, and at least this many in all.
const SHORTLIST_PER_RESULT: usize = 8;
const MIN_SHORTLIST: usize = 256;

#[derive(Debug, Clone, Copy)]
pub struct Hit<'a> {
    pub product: &'a StoredProduct,
    pub score: f32,
    /// The product's image that matched best (0: the main image).
    pub image: usize,
}

/// All products of a catalogue with every image's vector, and an int8 copy of those vectors laid
/// out contiguously for scanning: one row per image.
pub struct VectorIndex {
    products: Vec<StoredProduct>,
    positions: HashMap<String, usize>,
    /// Each row's product and image number (0: the main image).
    rows: Vec<(u32, u16)>,
    /// Each product's rows.
    product_rows: Vec<Vec<u32>>,
    codes: Vec<i8>,
    scales: Vec<f32>,
    norms: Vec<f32>,
    dimension: usize,
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

impl VectorIndex {
    pub fn new(products: Vec<StoredProduct>) -> Result<Self> {
        let dimension = products.first().map_or(0, |p| p.vector.len());
        let images: usize = products.iter().map(|p| 1 + p.more_images.len()).sum();
        let mut index = Self {
            products: Vec::with_capacity(products.len()),
            positions: HashMap::with_capacity(products.len()),
            rows: Vec::with_capacity(images),
            product_rows: Vec::with_capacity(products.len()),
            codes: Vec::with_capacity(images * dimension),
            scales: Vec::with_capacity(images),
            norms: Vec::with_capacity(images),
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
        if let Some(bad) = product.vectors().find(|v| v.len() != self.dimension) {
            bail!(
                "product {:?} has a {}-d vector, the catalogue's are {}-d",
                product.id,
                bad.len(),
                self.dimension
            );
        }
        let p = match self.positions.get(&product.id) {
            Some(&p) => {
                self.drop_rows(p);
                self.products[p] = product;
                p
            }
            None => {
                let p = self.products.len();
                self.positions.insert(product.id.clone(), p);
                self.products.push(product);
                self.product_rows.push(Vec::new());
                p
            }
        };
        let d = self.dimension;
        for (image, vector) in self.products[p].vectors().enumerate() {
            let row = self.rows.len();
            self.rows.push((p as u32, image as u16));
            self.norms.push(dot(vector, vector).sqrt());
            self.codes.resize((row + 1) * d, 0);
            self.scales.push(quantize(vector, &mut self.codes[row * d..]));
            self.product_rows[p].push(row as u32);
        }
        Ok(())
    }

    /// Removes the rows of product `p`; the last rows take their places.
    fn drop_rows(&mut self, p: usize) {
        let mut rows = std::mem::take(&mut self.product_rows[p]);
        // Highest first, so a row moved into a freed place is never one still to be freed.
        rows.sort_unstable_by(|a, b| b.cmp(a));
        let d = self.dimension;
        for row in rows {
            let (row, last) = (row as usize, self.rows.len() - 1);
            if row != last {
                self.codes.copy_within(last * d..(last + 1) * d, row * d);
                let (owner, _) = self.rows[last];
                let moved = &mut self.product_rows[owner as usize];
                let at = moved
                    .iter()
                    .position(|&r| r as usize == last)
                    .expect("a row's owner lists it");
                moved[at] = row as u32;
            }
            self.rows.swap_remove(row);
            self.norms.swap_remove(row);
            self.scales.swap_remove(row);
            self.codes.truncate(last * d);
        }
    }

    /// Removes a product; the last one takes its place.
    pub fn remove(&mut self, id: &str) -> bool {
        let Some(p) = self.positions.remove(id) else {
            return false;
        };
        self.drop_rows(p);
        let last = self.products.len() - 1;
        if p != last {
            self.positions.insert(self.products[last].id.clone(), p);
            for &row in &self.product_rows[last] {
                self.rows[row as usize].0 = p as u32;
            }
        }
        self.products.swap_remove(p);
        self.product_rows.swap_remove(p);
        true
    }

    pub fn len(&self) -> usize {
        self.products.len()
    }

    pub fn is_empty(&self) -> bool {
        self.products.is_empty()
    }

    /// Images indexed: one row each.
    pub fn images(&self) -> usize {
        self.rows.len()
    }

    /// Bytes of vector data held: the f32 vectors, their int8 copy, scales and norms.
    pub fn vector_bytes(&self) -> usize {
        self.rows.len() * (self.dimension * (4 + 1) + 8)
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

    fn row_vector(&self, row: usize) -> &[f32] {
        let (p, image) = self.rows[row];
        let product = &self.products[p as usize];
        match image {
            0 => &product.vector,
            n => &product.more_images[n as usize - 1].vector,
        }
    }

    fn score_from_dot(&self, row: usize, d: f32, query_norm: f32, metric: Metric) -> f32 {
        match metric {
            Metric::Cosine => d / (query_norm * self.norms[row]).max(f32::MIN_POSITIVE),
            Metric::Euclidean => (query_norm * query_norm + self.norms[row] * self.norms[row] - 2.0 * d)
                .max(0.0)
                .sqrt(),
        }
    }

    /// The `k` best products for `query` that pass `filter`, best first; `exclude` drops one id.
    /// A product scores by its best-matching image.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        metric: Metric,
        filter: &Filter,
        exclude: Option<&str>,
    ) -> Result<Vec<Hit<'_>>> {
        self.search_views(&[query], k, metric, filter, exclude)
    }

    /// Like [`Self::search`] for several query images at once (the views of one product): a
    /// product scores by the best match between any query and any of its images.
    pub fn search_views(
        &self,
        queries: &[&[f32]],
        k: usize,
        metric: Metric,
        filter: &Filter,
        exclude: Option<&str>,
    ) -> Result<Vec<Hit<'_>>> {
        if let Some(q) = queries.iter().find(|q| !self.is_empty() && q.len() != self.dimension) {
            bail!(
                "query vector is {}-d, the catalogue's are {}-d",
                q.len(),
                self.dimension
            );
        }
        let accepted = |row: usize| {
            let p = &self.products[self.rows[row].0 as usize];
            filter.accepts(p) && exclude != Some(p.id.as_str())
        };
        if self.rows.len() <= (k * SHORTLIST_PER_RESULT).max(MIN_SHORTLIST) {
            let all: Vec<usize> = (0..self.products.len())
                .filter(|&p| self.product_rows[p].iter().any(|&r| accepted(r as usize)))
                .collect();
            return Ok(self.rank(all, queries, k, metric, filter));
        }
        // Every image scored on its int8 copy, best first per query.
        let d = self.dimension;
        let approximate: Vec<Vec<(usize, f32)>> = queries
            .iter()
            .map(|query| {
                let query_norm = dot(query, query).sqrt();
                let mut query_codes = vec![0i8; d];
                let query_scale = quantize(query, &mut query_codes);
                let score = |r: usize| {
                    let approx_dot =
                        dot_i8(&query_codes, &self.codes[r * d..(r + 1) * d]) as f32 * query_scale * self.scales[r];
                    (r, self.score_from_dot(r, approx_dot, query_norm, metric))
                };
                if self.rows.len() >= PARALLEL_THRESHOLD {
                    (0..self.rows.len())
                        .into_par_iter()
                        .filter(|&r| accepted(r))
                        .map(score)
                        .collect()
                } else {
                    (0..self.rows.len()).filter(|&r| accepted(r)).map(score).collect()
                }
            })
            .collect();
        // A product scores at most its best image, so once the next unexamined image of every query
        // is clearly worse than the k-th product found, no product left can enter the top k.
        let mut depth = (k * SHORTLIST_PER_RESULT).max(MIN_SHORTLIST);
        loop {
            let mut candidates = std::collections::HashSet::new();
            let mut frontier = Vec::new();
            for rows in &approximate {
                let mut top = rows.clone();
                keep_best(&mut top, depth + 1, metric);
                frontier.push(top.get(depth).map(|&(_, score)| score));
                candidates.extend(top.iter().take(depth).map(|&(r, _)| self.rows[r].0 as usize));
            }
            let hits = self.rank(candidates.into_iter().collect(), queries, k, metric, filter);
            let settled = match hits.get(k - 1) {
                None => frontier.iter().all(Option::is_none),
                Some(kth) => frontier.iter().flatten().all(|&next| {
                    // The int8 copy is off by well under 1 % of a score; leave room for it.
                    let margin = 0.02 * kth.score.abs().max(1e-3);
                    match metric {
                        Metric::Cosine => next < kth.score - margin,
                        Metric::Euclidean => next > kth.score + margin,
                    }
                }),
            };
            if settled {
                return Ok(hits);
            }
            depth *= 2;
        }
    }

    /// The reference for the shortlist: every image of every accepted product scored exactly.
    pub fn search_exact(&self, query: &[f32], k: usize, metric: Metric, filter: &Filter) -> Vec<Hit<'_>> {
        let accepted: Vec<usize> = (0..self.products.len())
            .filter(|&p| filter.accepts(&self.products[p]))
            .collect();
        self.rank(accepted, &[query], k, metric, filter)
    }

    /// The `k` best of `products`, each scored exactly by [`Metric::product_score`] against `queries`.
    fn rank(
        &self,
        products: Vec<usize>,
        queries: &[&[f32]],
        k: usize,
        metric: Metric,
        filter: &Filter,
    ) -> Vec<Hit<'_>> {
        let norms: Vec<f32> = queries.iter().map(|q| dot(q, q).sqrt()).collect();
        let scored: Vec<(usize, f32, usize)> = products
            .into_par_iter()
            .map(|p| {
                let pairs = self.product_rows[p].iter().flat_map(|&r| {
                    let r = r as usize;
                    queries.iter().zip(&norms).map(move |(q, &norm)| {
                        let score = self.score_from_dot(r, dot(q, self.row_vector(r)), norm, metric);
                        (score, self.rows[r].1 as usize)
                    })
                });
                let (score, image) = metric.product_score(pairs.collect());
                (p, score, image)
            })
            .collect();
        let image_of: HashMap<usize, usize> = scored.iter().map(|&(p, _, image)| (p, image)).collect();
        let mut ranked: Vec<(usize, f32)> = scored.into_iter().map(|(p, score, _)| (p, score)).collect();
        keep_best_per_group(&mut ranked, k, metric, filter.one_per_group.then_some(&self.products));
        ranked
            .into_iter()
            .map(|(p, score)| Hit {
                product: &self.products[p],
                score,
                image: image_of[&p],
            })
            .collect()
    }

    /// Products that look like product `id` (itself excluded), its every image a query.
    pub fn similar(&self, id: &str, k: usize, metric: Metric, filter: &Filter) -> Result<Vec<Hit<'_>>> {
        let Some(product) = self.find(id) else {
            bail!("no product with id {id:?} in the catalogue");
        };
        let views: Vec<&[f32]> = product.vectors().collect();
        self.search_views(&views, k, metric, filter, Some(id))
    }
}

/// Keeps the `k` best (product, score) pairs, best first (ties to the lower index); with
/// `groups`, only the best product of each group (products without one are their own group).
fn keep_best_per_group(scored: &mut Vec<(usize, f32)>, k: usize, metric: Metric, groups: Option<&[StoredProduct]>) {
    let Some(products) = groups else {
        keep_best(scored, k, metric);
        return;
    };
    keep_best(scored, usize::MAX, metric);
    let mut seen = std::collections::HashSet::new();
    scored.retain(|&(p, _)| match &products[p].info.group {
        Some(group) => seen.insert(group.as_str()),
        None => true,
    });
    scored.truncate(k);
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
            more_images: Vec::new(),
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

    fn with_views(mut p: StoredProduct, views: &[Vec<f32>], group: Option<&str>) -> StoredProduct {
        p.more_images = views
            .iter()
            .enumerate()
            .map(|(n, v)| crate::types::ProductImage {
                path: format!("{}-{n}.jpg", p.id),
                content_hash: String::new(),
                vector: v.clone(),
            })
            .collect();
        p.info.group = group.map(str::to_string);
        p
    }

    #[test]
    fn a_product_scores_by_its_best_view_and_names_it() {
        let idx = VectorIndex::new(vec![
            with_views(
                product("shirt", vec![1.0, 0.0, 0.0], "tops", None),
                &[vec![0.0, 0.0, 1.0]],
                None,
            ),
            product("mug", vec![0.0, 1.0, 0.0], "home", None),
        ])
        .unwrap();
        assert_eq!(idx.images(), 3);
        let hits = idx
            .search(&[0.1, 0.0, 1.0], 2, Metric::Cosine, &Filter::default(), None)
            .unwrap();
        assert_eq!(ids(&hits), ["shirt", "mug"], "one entry per product, never its views");
        assert_eq!(hits[0].image, 1, "the back view matched");
        let exact = idx.search_exact(&[0.1, 0.0, 1.0], 2, Metric::Cosine, &Filter::default());
        assert_eq!((exact[0].product.id.as_str(), exact[0].image), ("shirt", 1));
        // Every view of a product is a query for its neighbours.
        let idx = VectorIndex::new(vec![
            with_views(
                product("a", vec![1.0, 0.0, 0.0], "x", None),
                &[vec![0.0, 0.0, 1.0]],
                None,
            ),
            product("b", vec![0.0, 0.1, 1.0], "x", None),
            product("c", vec![0.7, 0.7, 0.0], "x", None),
        ])
        .unwrap();
        let similar = idx.similar("a", 1, Metric::Cosine, &Filter::default()).unwrap();
        assert_eq!(ids(&similar), ["b"], "the second view found b");
    }

    #[test]
    fn groups_show_once_and_views_follow_upserts_and_removals() {
        let red = with_views(
            product("tee-red", vec![1.0, 0.0], "tops", None),
            &[vec![0.99, 0.01]],
            Some("tee"),
        );
        let blue = with_views(product("tee-blue", vec![0.95, 0.05], "tops", None), &[], Some("tee"));
        let mut idx = VectorIndex::new(vec![red, blue, product("cap", vec![0.5, 0.5], "hats", None)]).unwrap();
        let one = Filter {
            one_per_group: true,
            ..Filter::default()
        };
        let hits = idx.search(&[1.0, 0.0], 3, Metric::Cosine, &one, None).unwrap();
        assert_eq!(ids(&hits), ["tee-red", "cap"]);
        let all = idx
            .search(&[1.0, 0.0], 3, Metric::Cosine, &Filter::default(), None)
            .unwrap();
        assert_eq!(ids(&all), ["tee-red", "tee-blue", "cap"]);
        let others = Filter {
            exclude_group: Some("tee".into()),
            ..Filter::default()
        };
        assert_eq!(
            ids(&idx.search(&[1.0, 0.0], 3, Metric::Cosine, &others, None).unwrap()),
            ["cap"]
        );
        // Replacing a product's views and removing products keep every row pointing right.
        idx.upsert(with_views(
            product("cap", vec![0.0, 1.0], "hats", None),
            &[vec![1.0, 0.0], vec![0.6, 0.4]],
            None,
        ))
        .unwrap();
        assert_eq!(idx.images(), 6);
        assert!(idx.remove("tee-red"));
        assert_eq!(idx.images(), 4);
        let hits = idx
            .search(&[1.0, 0.0], 2, Metric::Cosine, &Filter::default(), None)
            .unwrap();
        // The cap's two best views (1.0 and 0.83) average below the tee's one view (0.999).
        assert_eq!(ids(&hits), ["tee-blue", "cap"]);
        assert_eq!(hits[1].image, 1, "the cap's second image matched");
        assert!((hits[1].score - (1.0 + 0.6 / 0.52f32.sqrt()) / 2.0).abs() < 1e-5);
        assert!(idx.remove("cap"));
        assert_eq!(idx.images(), 1);
        assert_eq!(
            ids(&idx
                .search(&[1.0, 0.0], 5, Metric::Cosine, &Filter::default(), None)
                .unwrap()),
            ["tee-blue"]
        );
    }

    #[test]
    fn shortlisted_search_over_views_agrees_with_the_exact_scan() {
        let n = PARALLEL_THRESHOLD / 2 + 50;
        let vector = |x: f32| {
            (0..16)
                .map(|j| (x * 0.37 + j as f32).sin().max(0.0))
                .collect::<Vec<f32>>()
        };
        let products = (0..n)
            .map(|i| {
                let x = i as f32;
                let group = (i % 5 == 0).then(|| format!("g{}", i / 10));
                with_views(
                    product(&format!("p{i:05}"), vector(x), "a", None),
                    &[vector(x + 1000.5), vector(x + 2000.25)],
                    group.as_deref(),
                )
            })
            .collect();
        let idx = VectorIndex::new(products).unwrap();
        assert!(idx.images() >= PARALLEL_THRESHOLD, "the parallel scan runs");
        for (q, one_per_group) in [(0.3f32, false), (1500.7, true), (2333.3, false)] {
            let filter = Filter {
                one_per_group,
                ..Filter::default()
            };
            let query = vector(q);
            let fast = idx.search(&query, 10, Metric::Cosine, &filter, None).unwrap();
            let exact = idx.search_exact(&query, 10, Metric::Cosine, &filter);
            assert_eq!(ids(&fast), ids(&exact), "{q}");
            assert_eq!(
                fast.iter().map(|h| h.image).collect::<Vec<_>>(),
                exact.iter().map(|h| h.image).collect::<Vec<_>>()
            );
        }
    }
}

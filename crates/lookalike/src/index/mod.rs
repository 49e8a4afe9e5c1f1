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
//!
//! In [`SearchMode::Approximate`] a graph (HNSW over int8 codes, [`row_graph::RowGraph`]) brings the
//! candidates instead of the scan, reading a few thousand codes instead of every one; the
//! candidates are still scored exactly, so scores are exact and only a rare true neighbour the
//! walk missed is lost. The graph serves cosine searches with filters that keep a fair share of
//! the catalogue; Euclidean searches and narrow filters take the scan, which is exact.

pub(crate) mod ann;
pub mod category_vote;
pub(crate) mod dedup;
pub(crate) mod diversity;
pub(crate) mod file;
pub mod fusion;
pub(crate) mod kernels;
pub mod local_cells;
pub(crate) mod positions;
pub(crate) mod records;
pub(crate) mod related;
pub(crate) mod row_graph;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Result};
use rayon::prelude::*;

use crate::types::{Filter, Metric, StoredProduct};

use ann::GraphParams;
pub use kernels::{dot, dot_i8, quantize};
use positions::Positions;
use records::Records;
use row_graph::RowGraph;

/// Below this many products a single thread is faster than splitting the scan.
const PARALLEL_THRESHOLD: usize = 8192;
/// Candidates scored exactly per result asked for, and at least this many in all.
const SHORTLIST_PER_RESULT: usize = 8;
const MIN_SHORTLIST: usize = 256;
/// Below this share of rows passing a filter, a graph walk visits many rows it cannot answer and
/// the filtered scan is both faster and exact.
const MIN_GRAPH_ACCEPTANCE: f64 = 0.02;
/// Rows sampled to estimate a filter's acceptance.
const ACCEPTANCE_SAMPLE: usize = 1024;

/// A product's rows: inline up to four images, so that a million one-photo products need no
/// allocation each.
type ProductRows = smallvec::SmallVec<[u32; 4]>;

/// How a search finds its candidates; their scores are exact either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SearchMode {
    /// Every image's int8 code is read: the top k is the exact one.
    #[default]
    Exact,
    /// A graph walk brings `ef` candidate images per query image (more: slower, fewer misses).
    Approximate { ef: usize },
}

impl SearchMode {
    pub const DEFAULT_EF: usize = 64;
}

#[derive(Debug, Clone, Copy)]
pub struct Hit<'a> {
    pub product: &'a StoredProduct,
    pub score: f32,
    /// The product's image that matched best (0: the main image).
    pub image: usize,
}

/// All products of a catalogue with every image's vector, and an int8 copy of those vectors laid
/// out contiguously for scanning: one row per image.
///
/// Vectors live in slots, records that never move (in memory, or mapped from an index file):
/// rows move when a product is removed, slots do not, and a removed row's slot in memory is
/// reused by the next one.
pub struct VectorIndex {
    /// Without their vectors, which are in `vectors`.
    products: Vec<StoredProduct>,
    /// Built when first asked for: a search by photo needs none, and a million ids take a fifth
    /// of a second to hash.
    positions: OnceLock<Positions>,
    /// Each row's product and image number (0: the main image).
    rows: Vec<(u32, u16)>,
    row_slot: Vec<u32>,
    /// Each product's rows.
    product_rows: Vec<ProductRows>,
    vectors: Records<f32>,
    codes: Records<i8>,
    /// By slot: the int8 codes' scale, the vector's length.
    scales: Vec<f32>,
    norms: Vec<f32>,
    /// Slots in memory that no row uses.
    free_slots: Vec<u32>,
    dimension: usize,
    mode: SearchMode,
    /// In step with `rows` in approximate mode.
    graph: Option<RowGraph>,
    /// Whether products hold only what searches read (id, category, price, group), as when read
    /// from an index file; the rest is the store's.
    slim: bool,
    /// Products found with a vector that is not finite when a search scored them (a damaged index
    /// file: its vectors are not under its checksum), left out of every answer until repaired;
    /// see [`Self::take_damaged`].
    damaged: Mutex<BTreeSet<String>>,
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
        Self::with_mode(products, SearchMode::Exact)
    }

    pub fn with_mode(products: Vec<StoredProduct>, mode: SearchMode) -> Result<Self> {
        let images: usize = products.iter().map(|p| 1 + p.more_images.len()).sum();
        Self::gather(mode, images, |visit| products.into_iter().try_for_each(visit))
    }

    /// An index of the products `each` hands to the function it is given, one at a time (a store's
    /// rows as they are read, so that their vectors are never in memory twice), room made for
    /// `images` of them, searched in `mode`.
    pub fn gather(
        mode: SearchMode,
        images: usize,
        each: impl FnOnce(&mut dyn FnMut(StoredProduct) -> Result<()>) -> Result<()>,
    ) -> Result<Self> {
        let mut index = Self::empty(0, SearchMode::Exact);
        each(&mut |product| {
            index.upsert(product)?;
            // Only now is the dimension known, and with it the records' width.
            if index.len() == 1 {
                index.reserve(images);
            }
            Ok(())
        })?;
        // Built once all rows are in rather than row by row: in parallel, and a single pass.
        index.set_mode(mode)?;
        Ok(index)
    }

    fn reserve(&mut self, images: usize) {
        self.products.reserve(images);
        self.product_rows.reserve(images);
        self.rows.reserve(images);
        self.row_slot.reserve(images);
        self.vectors.reserve(images);
        self.codes.reserve(images);
        self.scales.reserve(images);
        self.norms.reserve(images);
    }

    fn empty(dimension: usize, mode: SearchMode) -> Self {
        Self {
            products: Vec::new(),
            positions: OnceLock::new(),
            rows: Vec::new(),
            row_slot: Vec::new(),
            product_rows: Vec::new(),
            vectors: Records::new(dimension),
            codes: Records::new(dimension),
            scales: Vec::new(),
            norms: Vec::new(),
            free_slots: Vec::new(),
            dimension,
            mode,
            graph: None,
            slim: false,
            damaged: Mutex::default(),
        }
    }

    pub fn mode(&self) -> SearchMode {
        self.mode
    }

    /// Switches mode, building the graph when it is first needed and dropping it when not.
    pub fn set_mode(&mut self, mode: SearchMode) -> Result<()> {
        self.mode = mode;
        match mode {
            SearchMode::Exact => self.graph = None,
            SearchMode::Approximate { .. } if self.graph.is_none() => self.build_graph()?,
            SearchMode::Approximate { .. } => {}
        }
        Ok(())
    }

    fn build_graph(&mut self) -> Result<()> {
        if matches!(self.mode, SearchMode::Approximate { .. }) {
            let rows = (0..self.rows.len()).map(|r| self.row_vector(r));
            self.graph = Some(RowGraph::build(rows, self.dimension, GraphParams::default())?);
        }
        Ok(())
    }

    /// Adds a product, or replaces the one with the same id.
    pub fn upsert(&mut self, mut product: StoredProduct) -> Result<()> {
        if self.products.is_empty() && self.dimension != product.vector.len() {
            *self = Self::empty(product.vector.len(), self.mode);
            self.build_graph()?;
        }
        if let Some(bad) = product.vectors().find(|v| v.len() != self.dimension) {
            bail!(
                "product {:?} has a {}-d vector, the catalogue's are {}-d",
                product.id,
                bad.len(),
                self.dimension
            );
        }
        if product.vectors().flatten().any(|v| !v.is_finite()) {
            bail!(
                "product {:?} has a vector with a value that is not a number",
                product.id
            );
        }
        let vectors: Vec<Vec<f32>> = std::iter::once(std::mem::take(&mut product.vector))
            .chain(
                product
                    .more_images
                    .iter_mut()
                    .map(|image| std::mem::take(&mut image.vector)),
            )
            .collect();
        let p = match self.position(&product.id) {
            Some(p) => {
                self.drop_rows(p);
                self.products[p] = product;
                p
            }
            None => {
                let p = self.products.len();
                self.products.push(product);
                let (positions, products) = self.positions_mut();
                positions.insert(products, p);
                self.product_rows.push(ProductRows::new());
                p
            }
        };
        for (image, vector) in vectors.iter().enumerate() {
            let row = self.rows.len();
            let slot = self.new_slot(vector);
            self.rows.push((p as u32, image as u16));
            self.row_slot.push(slot);
            self.product_rows[p].push(row as u32);
            if let Some(graph) = &mut self.graph {
                graph.push_row(vector)?;
            }
        }
        self.rebuild_graph_if_worn()
    }

    /// A slot holding `vector`: a free one, or a new one.
    fn new_slot(&mut self, vector: &[f32]) -> u32 {
        let slot = match self.free_slots.pop() {
            Some(slot) => slot as usize,
            None => {
                self.vectors.push();
                self.scales.push(0.0);
                self.norms.push(0.0);
                self.codes.push()
            }
        };
        self.vectors
            .get_mut(slot)
            .expect("free slots are in memory")
            .copy_from_slice(vector);
        self.scales[slot] = quantize(vector, self.codes.get_mut(slot).expect("free slots are in memory"));
        self.norms[slot] = dot(vector, vector).sqrt();
        slot as u32
    }

    fn rebuild_graph_if_worn(&mut self) -> Result<()> {
        if self.graph.as_ref().is_some_and(RowGraph::worn) {
            self.build_graph()?;
        }
        Ok(())
    }

    /// Removes the rows of product `p`; the last rows take their places.
    fn drop_rows(&mut self, p: usize) {
        let mut rows = std::mem::take(&mut self.product_rows[p]);
        // Highest first, so a row moved into a freed place is never one still to be freed.
        rows.sort_unstable_by(|a, b| b.cmp(a));
        for row in rows {
            let (row, last) = (row as usize, self.rows.len() - 1);
            let slot = self.row_slot.swap_remove(row);
            // A slot in the file stays unused until the file is written again.
            if !self.vectors.is_mapped(slot as usize) {
                self.free_slots.push(slot);
            }
            if row != last {
                let (owner, _) = self.rows[last];
                let moved = &mut self.product_rows[owner as usize];
                let at = moved
                    .iter()
                    .position(|&r| r as usize == last)
                    .expect("a row's owner lists it");
                moved[at] = row as u32;
            }
            self.rows.swap_remove(row);
            if let Some(graph) = &mut self.graph {
                graph.swap_remove_row(row);
            }
        }
    }

    /// Removes a product; the last one takes its place.
    pub fn remove(&mut self, id: &str) -> bool {
        let (positions, products) = self.positions_mut();
        let Some(p) = positions.remove(products, id) else {
            return false;
        };
        self.drop_rows(p);
        let last = self.products.len() - 1;
        if p != last {
            let (positions, products) = self.positions_mut();
            positions.moving(products, last, p);
            for &row in &self.product_rows[last] {
                self.rows[row as usize].0 = p as u32;
            }
        }
        self.products.swap_remove(p);
        self.product_rows.swap_remove(p);
        // A graph cannot be built over a damaged row (see `damaged`): searches then scan, never
        // panic under the catalogue's locks.
        if self.rebuild_graph_if_worn().is_err() {
            self.graph = None;
        }
        true
    }

    pub fn len(&self) -> usize {
        self.products.len()
    }

    /// The ids of products that searches found damaged (see `damaged`) since the last call: the
    /// holder repairs them from the store.
    pub fn take_damaged(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.damaged.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn is_empty(&self) -> bool {
        self.products.is_empty()
    }

    /// Images indexed: one row each.
    pub fn images(&self) -> usize {
        self.rows.len()
    }

    /// Bytes of vector data held in memory or mapped from a file: the f32 vectors, their int8
    /// copy, scales, norms and the graph.
    pub fn vector_bytes(&self) -> usize {
        self.rows.len() * (self.dimension * (4 + 1) + 8) + self.graph.as_ref().map_or(0, RowGraph::memory_bytes)
    }

    /// Whether products hold only what searches read (id, category, price, group): see
    /// [`Self::product_with_vectors`] and the store for the rest.
    pub fn is_slim(&self) -> bool {
        self.slim
    }

    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// The products, without their vectors (see [`Self::image_vectors`]).
    pub fn products(&self) -> &[StoredProduct] {
        &self.products
    }

    /// Product `id`, without its vectors.
    pub fn find(&self, id: &str) -> Option<&StoredProduct> {
        self.position(id).map(|p| &self.products[p])
    }

    /// The vectors of the product at `position` in [`Self::products`], main image first.
    pub fn image_vectors(&self, position: usize) -> Vec<Vec<f32>> {
        let mut rows = self.product_rows[position].clone();
        rows.sort_by_key(|&r| self.rows[r as usize].1);
        let mut buf = Vec::new();
        rows.into_iter()
            .map(|r| self.read_row_vector(r as usize, &mut buf).to_vec())
            .collect()
    }

    /// The main image's vector of the product at `position` in [`Self::products`].
    pub fn main_vector(&self, position: usize) -> &[f32] {
        let main = self.product_rows[position]
            .iter()
            .find(|&&r| self.rows[r as usize].1 == 0)
            .expect("every product has a main image");
        self.row_vector(*main as usize)
    }

    /// Product `id` with its vectors, as the store gave it (but for what a slim index leaves out).
    pub fn product_with_vectors(&self, id: &str) -> Option<StoredProduct> {
        Some(self.product_with_vectors_at(self.position(id)?))
    }

    /// The product at `p` in [`Self::products`] with its vectors.
    pub fn product_with_vectors_at(&self, p: usize) -> StoredProduct {
        let mut product = self.products[p].clone();
        let mut vectors = self.image_vectors(p).into_iter();
        product.vector = vectors.next().unwrap_or_default();
        for (image, vector) in product.more_images.iter_mut().zip(vectors) {
            image.vector = vector;
        }
        product
    }

    /// Every product with its vectors.
    pub fn products_with_vectors(&self) -> Vec<StoredProduct> {
        (0..self.products.len())
            .map(|p| self.product_with_vectors_at(p))
            .collect()
    }

    fn position(&self, id: &str) -> Option<usize> {
        self.positions
            .get_or_init(|| Positions::of(&self.products))
            .get(&self.products, id)
    }

    /// The positions, built if need be, and the products they point into.
    fn positions_mut(&mut self) -> (&mut Positions, &[StoredProduct]) {
        self.positions.get_or_init(|| Positions::of(&self.products));
        (self.positions.get_mut().expect("built just above"), &self.products)
    }

    /// For reading every row; searches read theirs with [`Self::read_row_vector`].
    fn row_vector(&self, row: usize) -> &[f32] {
        self.vectors.get(self.row_slot[row] as usize)
    }

    fn read_row_vector<'a>(&'a self, row: usize, buf: &'a mut Vec<f32>) -> &'a [f32] {
        self.vectors.read(self.row_slot[row] as usize, buf)
    }

    fn score_from_dot(&self, row: usize, d: f32, query_norm: f32, metric: Metric) -> f32 {
        let norm = self.norms[self.row_slot[row] as usize];
        match metric {
            Metric::Cosine => d / (query_norm * norm).max(f32::MIN_POSITIVE),
            Metric::Euclidean => (query_norm * query_norm + norm * norm - 2.0 * d).max(0.0).sqrt(),
        }
    }

    /// The `k` best products for `query` that pass `filter`, best first; `exclude` drops one id.
    /// A product scores by its best-matching images ([`Metric::product_score`]).
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
    /// product scores by its best matches between any query and any of its images.
    pub fn search_views(
        &self,
        queries: &[&[f32]],
        k: usize,
        metric: Metric,
        filter: &Filter,
        exclude: Option<&str>,
    ) -> Result<Vec<Hit<'_>>> {
        if let Some(q) = queries.iter().find(|q| !self.is_empty() && q.len() != self.dimension) {
            return Err(crate::error::Error::WrongModel(format!(
                "query vector is {}-d, the catalogue's are {}-d",
                q.len(),
                self.dimension
            ))
            .into());
        }
        // Every score would be NaN, and every product taken for damaged.
        if queries.iter().flat_map(|q| q.iter()).any(|v| !v.is_finite()) {
            return Err(crate::error::Error::invalid("the query vector has a value that is not a number").into());
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
        if let (SearchMode::Approximate { ef }, Some(graph), Metric::Cosine) = (self.mode, &self.graph, metric) {
            if let Some(hits) = self.walk(graph, ef, queries, k, filter, &accepted)? {
                return Ok(hits);
            }
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
                    let slot = self.row_slot[r] as usize;
                    let approx_dot =
                        dot_i8(&query_codes, self.codes.get(slot)) as f32 * query_scale * self.scales[slot];
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

    /// The `k` best by the graph's candidates, or `None` where the scan should answer: a filter
    /// too narrow for the walk, or fewer than `k` products found even on a much longer walk.
    fn walk(
        &self,
        graph: &RowGraph,
        ef: usize,
        queries: &[&[f32]],
        k: usize,
        filter: &Filter,
        accepted: &dyn Fn(usize) -> bool,
    ) -> Result<Option<Vec<Hit<'_>>>> {
        if filter.restricts() {
            let step = self.rows.len().div_ceil(ACCEPTANCE_SAMPLE);
            let sampled = self.rows.len().div_ceil(step);
            let passing = (0..self.rows.len()).step_by(step).filter(|&r| accepted(r)).count();
            if (passing as f64) < MIN_GRAPH_ACCEPTANCE * sampled as f64 {
                return Ok(None);
            }
        }
        let longest = (ef.max(k) * 16).min(self.rows.len());
        let mut ef = ef.max(k);
        loop {
            let mut products = HashSet::new();
            for query in queries {
                let rows = graph.candidates(query, ef, accepted)?;
                products.extend(rows.into_iter().map(|r| self.rows[r].0 as usize));
            }
            let hits = self.rank(products.into_iter().collect(), queries, k, Metric::Cosine, filter);
            if hits.len() >= k {
                return Ok(Some(hits));
            }
            if ef >= longest {
                return Ok(None);
            }
            ef = (ef * 4).min(longest);
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
        // `None`: a row of the product is not finite (a NaN reads as the best score of all).
        let score = |buf: &mut Vec<f32>, p: usize| {
            let mut pairs = Vec::with_capacity(self.product_rows[p].len() * queries.len());
            for &r in &self.product_rows[p] {
                let r = r as usize;
                let vector = self.read_row_vector(r, buf);
                for (q, &norm) in queries.iter().zip(&norms) {
                    let score = self.score_from_dot(r, dot(q, vector), norm, metric);
                    if !score.is_finite() {
                        return (p, None);
                    }
                    pairs.push((score, self.rows[r].1 as usize));
                }
            }
            (p, Some(metric.product_score(pairs)))
        };
        // A graph walk's few dozen candidates take less time than handing them to threads.
        let scored: Vec<(usize, Option<(f32, usize)>)> = if products.len() * queries.len() < 512 {
            let mut buf = Vec::new();
            products.into_iter().map(|p| score(&mut buf, p)).collect()
        } else {
            products.into_par_iter().map_init(Vec::new, score).collect()
        };
        let (scored, damaged): (Vec<_>, Vec<_>) = scored.into_iter().partition(|(_, s)| s.is_some());
        if !damaged.is_empty() {
            let mut held = self.damaged.lock().unwrap_or_else(|p| p.into_inner());
            held.extend(damaged.into_iter().map(|(p, _)| self.products[p].id.clone()));
        }
        let scored: Vec<(usize, f32, usize)> = scored
            .into_iter()
            .filter_map(|(p, s)| s.map(|(score, image)| (p, score, image)))
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
        let Some(p) = self.position(id) else {
            return Err(crate::error::Error::no_product(id).into());
        };
        let vectors = self.image_vectors(p);
        let views: Vec<&[f32]> = vectors.iter().map(Vec::as_slice).collect();
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
    fn a_damaged_row_is_left_out_and_reported_once() {
        let mut idx = index();
        idx.vectors.get_mut(idx.row_slot[0] as usize).unwrap()[0] = f32::NAN;
        let hits = idx
            .search(&[1.0, 0.0], 4, Metric::Cosine, &Filter::default(), None)
            .unwrap();
        assert_eq!(ids(&hits), ["b", "c", "d"], "no NaN ranks first");
        assert_eq!(idx.take_damaged().into_iter().collect::<Vec<_>>(), ["a"]);
        assert!(idx.take_damaged().is_empty());
        assert!(idx
            .search(&[f32::NAN, 0.0], 4, Metric::Cosine, &Filter::default(), None)
            .is_err());
        assert!(idx.take_damaged().is_empty(), "a bad query damages nothing");
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
        assert_eq!(idx.product_with_vectors("d").unwrap().vector, vec![-1.0, 0.0]);
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

    /// Products in 60 clusters, as image features fall: category by product number, price 0–99.
    fn clustered_products(count: usize, dimension: usize, seed: u64) -> Vec<StoredProduct> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let centres: Vec<Vec<f32>> = (0..60).map(|_| (0..dimension).map(|_| rng.f32()).collect()).collect();
        (0..count)
            .map(|i| {
                let centre = &centres[rng.usize(0..centres.len())];
                let v = centre
                    .iter()
                    .map(|c| (c + 0.5 * rng.f32()) * (1.0 + rng.f32()))
                    .collect();
                let category = ["a", "b", "c"][i % 3];
                product(&format!("p{i:05}"), v, category, Some((i % 100) as f64))
            })
            .collect()
    }

    /// Share of the exact top k that `found` holds; shared products must carry the exact score.
    fn overlap(found: &[Hit], exact: &[Hit]) -> f64 {
        for hit in found {
            if let Some(twin) = exact.iter().find(|e| e.product.id == hit.product.id) {
                assert_eq!(hit.score, twin.score, "scores stay exact");
            }
        }
        let shared = exact
            .iter()
            .filter(|e| found.iter().any(|f| f.product.id == e.product.id))
            .count();
        shared as f64 / exact.len().max(1) as f64
    }

    /// The same writes on each index: every `removed`-th product removed, and every `moved`-th
    /// from the second moved to the next of `queries` scaled by `scale`.
    fn remove_and_move(
        indexes: [&mut VectorIndex; 2],
        products: &[StoredProduct],
        queries: &[Vec<f32>],
        removed: usize,
        moved: usize,
        scale: f32,
    ) {
        for index in indexes {
            for p in products.iter().step_by(removed) {
                assert!(index.remove(&p.id));
            }
            for (p, q) in products.iter().skip(1).step_by(moved).zip(queries) {
                let vector = q.iter().map(|x| x * scale).collect();
                index.upsert(StoredProduct { vector, ..p.clone() }).unwrap();
            }
        }
    }

    #[test]
    fn approximate_search_agrees_with_exact_search_and_follows_writes() {
        let d = 48;
        let products = clustered_products(4000, d, 11);
        let queries: Vec<Vec<f32>> = clustered_products(40, d, 12).into_iter().map(|p| p.vector).collect();
        let mode = SearchMode::Approximate { ef: 64 };
        let mut approx = VectorIndex::with_mode(products.clone(), mode).unwrap();
        let mut exact = VectorIndex::new(products.clone()).unwrap();
        let one_category = Filter {
            category: Some("b".into()),
            ..Filter::default()
        };
        // About 1 % of the catalogue: the walk would find few, so the exact scan answers.
        let narrow = Filter {
            min_price: Some(42.0),
            max_price: Some(42.0),
            ..Filter::default()
        };
        let agreement = |approx: &VectorIndex, exact: &VectorIndex| {
            let mut sum = 0.0;
            for q in &queries {
                let found = approx.search(q, 10, Metric::Cosine, &Filter::default(), None).unwrap();
                assert_eq!(found.len(), 10);
                sum += overlap(
                    &found,
                    &exact.search(q, 10, Metric::Cosine, &Filter::default(), None).unwrap(),
                );
                let found = approx.search(q, 10, Metric::Cosine, &one_category, None).unwrap();
                assert!(found.iter().all(|h| one_category.accepts(h.product)));
                sum += overlap(
                    &found,
                    &exact.search(q, 10, Metric::Cosine, &one_category, None).unwrap(),
                );
                for (metric, filter) in [(Metric::Cosine, &narrow), (Metric::Euclidean, &Filter::default())] {
                    assert_eq!(
                        ids(&approx.search(q, 10, metric, filter, None).unwrap()),
                        ids(&exact.search(q, 10, metric, filter, None).unwrap()),
                        "{metric:?} takes the scan"
                    );
                }
            }
            let graph = approx.graph.as_ref().expect("approximate mode keeps a graph");
            assert_eq!(graph.rows(), approx.images());
            assert!(!graph.worn());
            let walked = approx.walk(graph, 64, &[&queries[0]], 10, &one_category, &|_| true);
            assert!(walked.unwrap().is_some(), "the graph answers, not the scan");
            sum / (2 * queries.len()) as f64
        };
        let recall = agreement(&approx, &exact);
        assert!(recall >= 0.95, "recall@10 {recall}");
        assert!(approx.vector_bytes() > exact.vector_bytes());

        // Half the products removed (enough to rebuild the graph), a tenth moved elsewhere.
        remove_and_move([&mut approx, &mut exact], &products, &queries, 2, 20, 1.5);
        let recall = agreement(&approx, &exact);
        assert!(recall >= 0.95, "recall@10 after writes {recall}");
        for (p, q) in products.iter().skip(1).step_by(20).zip(&queries) {
            let found = approx.search(q, 10, Metric::Cosine, &Filter::default(), None).unwrap();
            assert_eq!(found[0].product.id, p.id, "a moved product is found where it went");
            assert!(
                found.iter().all(|h| exact.find(&h.product.id).is_some()),
                "never a removed one"
            );
        }
        assert!(approx.upsert(product("nan", vec![f32::NAN; d], "a", None)).is_err());
    }

    #[test]
    fn an_index_file_answers_as_the_index_written_and_keeps_taking_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalogue.db.index");
        let d = 32;
        let mut products = clustered_products(3000, d, 21);
        let extra = clustered_products(600, d, 22);
        for (p, view) in products.iter_mut().step_by(5).zip(&extra) {
            p.info.group = Some(format!("g{}", p.id.len() % 7));
            *p = with_views(p.clone(), std::slice::from_ref(&view.vector), p.info.group.as_deref());
        }
        let queries: Vec<Vec<f32>> = clustered_products(30, d, 23).into_iter().map(|p| p.vector).collect();
        let mode = SearchMode::Approximate { ef: 64 };
        let written = VectorIndex::with_mode(products.clone(), mode).unwrap();
        written.write_file(&path, 42).unwrap();
        let (mut read, position) = VectorIndex::read_file(&path, mode).unwrap();
        assert_eq!(position, 42);
        assert!(read.is_slim() && read.mode() == mode && !written.is_slim());
        let category = Filter {
            category: Some("b".into()),
            min_price: Some(10.0),
            ..Filter::default()
        };
        let answers = |index: &VectorIndex| {
            let mut all = Vec::new();
            for q in &queries {
                for (metric, filter) in [
                    (Metric::Cosine, Filter::default()),
                    (Metric::Cosine, category.clone()),
                    (Metric::Euclidean, Filter::default()),
                ] {
                    let hits = index.search(q, 10, metric, &filter, None).unwrap();
                    all.push(
                        hits.iter()
                            .map(|h| (h.product.id.clone(), h.score.to_bits(), h.image))
                            .collect::<Vec<_>>(),
                    );
                }
            }
            all
        };
        assert_eq!(answers(&read), answers(&written), "the same graph, vectors and scores");
        for p in products.iter().step_by(97) {
            let held = read.product_with_vectors(&p.id).unwrap();
            assert_eq!(
                (
                    held.vectors().collect::<Vec<_>>(),
                    &held.info.category,
                    held.info.price,
                    &held.info.group
                ),
                (p.vectors().collect(), &p.info.category, p.info.price, &p.info.group)
            );
        }
        assert!(
            read.find(&products[0].id).unwrap().vector.is_empty(),
            "slim: vectors stay in the file"
        );
        // Writes on a mapped index: removed rows' slots in the file are left, new ones in memory.
        let mut exact = VectorIndex::new(products.clone()).unwrap();
        remove_and_move([&mut read, &mut exact], &products, &queries, 3, 40, 2.0);
        for (p, q) in products.iter().skip(1).step_by(40).zip(&queries) {
            let found = read.search(q, 10, Metric::Cosine, &Filter::default(), None).unwrap();
            assert_eq!(found[0].product.id, p.id, "a moved product is found where it went");
            assert!(
                found.iter().all(|h| exact.find(&h.product.id).is_some()),
                "never a removed one"
            );
            assert_eq!(
                overlap(
                    &found,
                    &exact.search(q, 10, Metric::Cosine, &Filter::default(), None).unwrap()
                ),
                1.0
            );
        }
        // Written again from the mapped index (over the file it maps) and read back in exact mode.
        read.write_file(&path, 43).unwrap();
        let (again, _) = VectorIndex::read_file(&path, SearchMode::Exact).unwrap();
        assert!(again.mode() == SearchMode::Exact && again.len() == exact.len());
        assert_eq!(answers(&again), answers(&exact));

        let empty = VectorIndex::new(Vec::new()).unwrap();
        empty.write_file(&path, 7).unwrap();
        let (read_empty, _) = VectorIndex::read_file(&path, mode).unwrap();
        assert!(read_empty.is_empty(), "an empty catalogue's file reads back");
        read.write_file(&path, 43).unwrap();

        // Damaged or cut short: refused, never answered from.
        let bytes = std::fs::read(&path).unwrap();
        let mut flipped = bytes.clone();
        flipped[200] ^= 0x40;
        for (damage, reason) in [
            (flipped, "checksum"),
            (bytes[..bytes.len() / 2].to_vec(), "past the file's end"),
            (bytes[..100].to_vec(), "ends early"),
            (b"LKGRAPH1".to_vec(), "not a lookalike index"),
        ] {
            std::fs::write(&path, damage).unwrap();
            let err = VectorIndex::read_file(&path, mode).err().expect("refused");
            assert!(format!("{err:#}").contains(reason), "{err:#}");
        }
    }
}

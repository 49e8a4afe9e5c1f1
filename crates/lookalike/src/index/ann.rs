//! Approximate nearest neighbours: an HNSW graph (Malkov & Yashunin) over vectors' directions, for
//! catalogues too big to scan. It only proposes candidates with an approximate cosine; callers
//! score them exactly.
//!
//! The graph keeps each vector as int8 codes with one scale (a quarter of the f32 bytes, walked
//! with the VNNI dot product): a search touches a few thousand scattered vectors, so bytes per
//! vector are what it waits for, and the int8 rounding only reorders candidates that the exact
//! re-score puts back in order.
//!
//! Written here rather than taken from `hnsw_rs` because `bench ann` measured that crate at less
//! than half hnswlib's queries/s at the same recall (per-point locks and reference counts on every
//! step; its `DistDot` also panics when rounding makes a vector's distance to itself negative). Here the
//! codes sit in one array, the bottom layer's links in another, and a search walks them with
//! lookalike's runtime-dispatched SIMD dot product.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

use std::io::Write;

use anyhow::{ensure, Context, Result};
use rayon::prelude::*;

use super::records::Records;
use super::{dot, dot_i8, quantize};

/// Nodes joining at once while building, at most a 1/`BATCH_SHARE` of the graph so far...
const BATCH_SHARE: usize = 64;
/// ...and at most this many.
const MAX_BATCH: usize = 1024;

/// How the graph is built: links per node (twice as many on the bottom layer) and the candidate
/// list while linking.
#[derive(Debug, Clone, Copy)]
pub struct GraphParams {
    pub connections: usize,
    pub ef_construction: usize,
    pub seed: u64,
}

impl Default for GraphParams {
    fn default() -> Self {
        Self {
            connections: 16,
            ef_construction: 200,
            seed: 1,
        }
    }
}

/// A node and its distance (1 − cosine) to the query, ordered by distance then node.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Candidate {
    distance: f32,
    node: u32,
}

impl Eq for Candidate {}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.distance
            .total_cmp(&other.distance)
            .then(self.node.cmp(&other.node))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Which nodes a search has seen: a mark per node, cleared for free by moving to the next mark.
#[derive(Default)]
struct Visited {
    marks: Vec<u32>,
    current: u32,
}

impl Visited {
    fn start(&mut self, nodes: usize) {
        if self.marks.len() < nodes {
            self.marks.resize(nodes, 0);
        }
        self.current = self.current.wrapping_add(1);
        if self.current == 0 {
            self.marks.iter_mut().for_each(|m| *m = 0);
            self.current = 1;
        }
    }

    /// Marks `node`; true the first time.
    fn first_visit(&mut self, node: u32) -> bool {
        let mark = &mut self.marks[node as usize];
        let first = *mark != self.current;
        *mark = self.current;
        first
    }
}

thread_local!(static VISITED: RefCell<Visited> = RefCell::new(Visited::default()));

/// Codes and scale of `vector`'s direction: its int8 codes with the scale divided by its length,
/// as quantising the unit vector would give, without making one.
fn encode_direction(vector: &[f32], codes: &mut [i8]) -> f32 {
    let length = dot(vector, vector).sqrt();
    let scale = quantize(vector, codes);
    if length > 0.0 {
        scale / length
    } else {
        0.0
    }
}

/// A vector as int8 codes and their scale: `value ≈ code × scale`.
#[derive(Clone, Copy)]
struct Encoded<'a> {
    codes: &'a [i8],
    scale: f32,
}

impl Encoded<'_> {
    fn dot(self, other: Encoded) -> f32 {
        dot_i8(self.codes, other.codes) as f32 * self.scale * other.scale
    }
}

/// A cursor over a file's bytes that hands out typed values (in the machine's byte order, as
/// [`HnswGraph::write_links`] writes them).
pub struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self(bytes)
    }

    /// The next `count` values; an error when the bytes run out.
    pub fn take<T: bytemuck::Pod>(&mut self, count: usize) -> Result<Vec<T>> {
        let size = count
            .checked_mul(std::mem::size_of::<T>())
            .context("a length too big")?;
        ensure!(size <= self.0.len(), "the file ends early");
        let (head, rest) = self.0.split_at(size);
        self.0 = rest;
        Ok(bytemuck::pod_collect_to_vec(head))
    }

    /// The next value.
    pub fn value<T: bytemuck::Pod>(&mut self) -> Result<T> {
        Ok(self.take(1)?[0])
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An HNSW graph of rows numbered from 0, in insertion order.
pub struct HnswGraph {
    dimension: usize,
    params: GraphParams,
    codes: Records<i8>,
    scales: Vec<f32>,
    /// Bottom-layer links, `2 × connections` slots per node; `bottom_len` says how many are used.
    bottom: Vec<u32>,
    bottom_len: Vec<u16>,
    /// Links of the layers above, for the nodes that reach them (one in `connections`):
    /// `upper[&node][layer - 1]`. A map, not a list per node: most nodes have none.
    upper: HashMap<u32, Vec<Vec<u32>>>,
    entry: Option<u32>,
    top_layer: usize,
    rng: fastrand::Rng,
}

impl HnswGraph {
    pub fn new(dimension: usize, params: GraphParams) -> Self {
        Self {
            dimension,
            params: GraphParams {
                connections: params.connections.clamp(2, 64),
                ef_construction: params.ef_construction.max(params.connections),
                ..params
            },
            codes: Records::new(dimension),
            scales: Vec::new(),
            bottom: Vec::new(),
            bottom_len: Vec::new(),
            upper: HashMap::new(),
            entry: None,
            top_layer: 0,
            rng: fastrand::Rng::with_seed(params.seed),
        }
    }

    /// The graph of `rows` (vectors of `dimension`), numbered in order, built on the threads of
    /// the current rayon pool.
    ///
    /// Nodes join in batches: each batch's neighbours are searched in parallel on the graph as it
    /// stands, then linked one node at a time. A batch's nodes cannot find each other, so a batch
    /// is kept to a small share of the graph ([`BATCH_SHARE`]), where the loss is lost in noise
    /// (the tests compare recall with one-at-a-time insertion).
    pub fn build(rows: &[&[f32]], dimension: usize, params: GraphParams) -> Result<Self> {
        let mut graph = Self::new(dimension, params);
        graph.codes.reserve(rows.len());
        let parallel = rayon::current_num_threads() > 1;
        let mut next = 0;
        while next < rows.len() {
            let batch = if parallel {
                (graph.len() / BATCH_SHARE).clamp(1, MAX_BATCH)
            } else {
                1
            };
            let batch = &rows[next..(next + batch).min(rows.len())];
            next += batch.len();
            if batch.len() == 1 {
                graph.insert(batch[0])?;
                continue;
            }
            let mut added = Vec::with_capacity(batch.len());
            for row in batch {
                added.push(graph.add_node(row)?);
            }
            let graph_ref = &graph;
            let links: Vec<Vec<Vec<u32>>> = added
                .par_iter()
                .map(|&(node, layer)| graph_ref.neighbours(node, layer))
                .collect();
            for ((node, layer), links) in added.into_iter().zip(links) {
                graph.connect(node, layer, &links);
            }
        }
        Ok(graph)
    }

    pub fn len(&self) -> usize {
        self.bottom_len.len()
    }

    fn encoded(&self, node: u32) -> Encoded<'_> {
        Encoded {
            codes: self.codes.get(node as usize),
            scale: self.scales[node as usize],
        }
    }

    /// Starts loading `node`'s codes into the cache: every line, as asking for the first ones
    /// only and leaving the rest to the hardware prefetcher measured no faster than not asking.
    #[inline]
    fn prefetch(&self, node: u32) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let codes = self.codes.get(node as usize);
            for line in (0..codes.len()).step_by(64) {
                // SAFETY: a hint about an address inside `codes`; it reads nothing.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(codes.as_ptr().add(line)) };
            }
        }
    }

    fn distance(&self, query: Encoded, node: u32) -> f32 {
        1.0 - query.dot(self.encoded(node))
    }

    fn links(&self, node: u32, layer: usize) -> &[u32] {
        if layer == 0 {
            let slots = 2 * self.params.connections;
            let start = node as usize * slots;
            &self.bottom[start..start + self.bottom_len[node as usize] as usize]
        } else {
            &self.upper[&node][layer - 1]
        }
    }

    fn set_links(&mut self, node: u32, layer: usize, links: &[u32]) {
        if layer == 0 {
            let slots = 2 * self.params.connections;
            let start = node as usize * slots;
            self.bottom[start..start + links.len()].copy_from_slice(links);
            self.bottom_len[node as usize] = links.len() as u16;
        } else {
            self.upper.get_mut(&node).expect("a node on this layer")[layer - 1] = links.to_vec();
        }
    }

    fn max_links(&self, layer: usize) -> usize {
        if layer == 0 {
            2 * self.params.connections
        } else {
            self.params.connections
        }
    }

    /// Adds the next row; its number is the previous [`Self::len`].
    pub fn insert(&mut self, vector: &[f32]) -> Result<usize> {
        let (node, layer) = self.add_node(vector)?;
        let links = self.neighbours(node, layer);
        self.connect(node, layer, &links);
        Ok(node as usize)
    }

    /// Appends `vector` as a node with its layer drawn, linked to nothing and reached by nothing.
    fn add_node(&mut self, vector: &[f32]) -> Result<(u32, usize)> {
        self.check(vector)?;
        ensure!(self.len() < u32::MAX as usize, "the graph is full");
        let node = self.len() as u32;
        // Layer of the node: geometric, 1/ln(M) per level as in the paper.
        let scale = 1.0 / (self.params.connections as f64).ln();
        let layer = ((-(self.rng.f64().max(f64::MIN_POSITIVE)).ln() * scale) as usize).min(30);
        let record = self.codes.push();
        let codes = self.codes.get_mut(record).expect("a new record is in memory");
        let scale = encode_direction(vector, codes);
        self.scales.push(scale);
        self.bottom.extend(std::iter::repeat_n(0, 2 * self.params.connections));
        self.bottom_len.push(0);
        if layer > 0 {
            self.upper.insert(node, vec![Vec::new(); layer]);
        }
        Ok((node, layer))
    }

    /// The links `node` should get on each of its layers the graph already has, bottom first.
    fn neighbours(&self, node: u32, layer: usize) -> Vec<Vec<u32>> {
        let Some(mut entry) = self.entry else {
            return Vec::new();
        };
        let vector = self.encoded(node);
        for l in (layer + 1..=self.top_layer).rev() {
            entry = self.greedy(vector, entry, l);
        }
        let mut entries = vec![entry];
        let mut links = vec![Vec::new(); layer.min(self.top_layer) + 1];
        for l in (0..=layer.min(self.top_layer)).rev() {
            let found = self.search_layer(vector, &entries, self.params.ef_construction, l, None);
            links[l] = self.select(&found, self.params.connections);
            entries = found.iter().map(|c| c.node).collect();
        }
        links
    }

    /// Gives `node` its links (from [`Self::neighbours`]) and links them back to it.
    fn connect(&mut self, node: u32, layer: usize, links: &[Vec<u32>]) {
        if self.entry.is_none() {
            self.entry = Some(node);
            self.top_layer = layer;
            return;
        }
        for (l, neighbours) in links.iter().enumerate() {
            self.set_links(node, l, neighbours);
            for &other in neighbours {
                self.link_back(other, node, l);
            }
        }
        if layer > self.top_layer {
            self.top_layer = layer;
            self.entry = Some(node);
        }
    }

    /// Adds `node` to `other`'s links on `layer`, re-selecting them when they are full.
    fn link_back(&mut self, other: u32, node: u32, layer: usize) {
        let links = self.links(other, layer);
        if links.len() < self.max_links(layer) {
            let mut grown = links.to_vec();
            grown.push(node);
            self.set_links(other, layer, &grown);
            return;
        }
        let base = self.encoded(other);
        let mut candidates: Vec<Candidate> = links
            .iter()
            .chain(std::iter::once(&node))
            .map(|&n| Candidate {
                distance: self.distance(base, n),
                node: n,
            })
            .collect();
        candidates.sort();
        let kept = self.select(&candidates, self.max_links(layer));
        self.set_links(other, layer, &kept);
    }

    /// The paper's neighbour heuristic over `candidates` (nearest first): keep one only if it is
    /// nearer the query than any already kept, so links spread over directions instead of
    /// crowding one cluster; fill up with the nearest left out.
    fn select(&self, candidates: &[Candidate], limit: usize) -> Vec<u32> {
        let mut kept: Vec<u32> = Vec::with_capacity(limit);
        let mut left_out = Vec::new();
        for c in candidates {
            if kept.len() == limit {
                break;
            }
            let v = self.encoded(c.node);
            if kept.iter().all(|&k| 1.0 - v.dot(self.encoded(k)) > c.distance) {
                kept.push(c.node);
            } else {
                left_out.push(c.node);
            }
        }
        kept.extend(left_out.into_iter().take(limit - kept.len()));
        kept
    }

    fn greedy(&self, query: Encoded, mut node: u32, layer: usize) -> u32 {
        let mut best = self.distance(query, node);
        loop {
            let mut moved = false;
            for &n in self.links(node, layer) {
                let d = self.distance(query, n);
                if d < best {
                    (best, node, moved) = (d, n, true);
                }
            }
            if !moved {
                return node;
            }
        }
    }

    /// The `ef` nodes nearest `query` reachable on `layer` from `entries`, nearest first; with
    /// `allowed`, every node is walked through but only allowed ones are kept.
    fn search_layer(
        &self,
        query: Encoded,
        entries: &[u32],
        ef: usize,
        layer: usize,
        allowed: Option<&dyn Fn(usize) -> bool>,
    ) -> Vec<Candidate> {
        VISITED.with_borrow_mut(|visited| {
            visited.start(self.len());
            let mut frontier: BinaryHeap<Reverse<Candidate>> = BinaryHeap::new();
            let mut results: BinaryHeap<Candidate> = BinaryHeap::new();
            let keep = |node: u32| allowed.is_none_or(|f| f(node as usize));
            for &e in entries {
                if visited.first_visit(e) {
                    let c = Candidate {
                        distance: self.distance(query, e),
                        node: e,
                    };
                    frontier.push(Reverse(c));
                    if keep(e) {
                        results.push(c);
                    }
                }
            }
            // With a filter, the walk may pass many refused nodes before the results fill up.
            let bound = |results: &BinaryHeap<Candidate>| {
                if results.len() < ef {
                    f32::INFINITY
                } else {
                    results.peek().map_or(f32::INFINITY, |w| w.distance)
                }
            };
            let mut fresh = Vec::with_capacity(2 * self.params.connections);
            while let Some(Reverse(current)) = frontier.pop() {
                if current.distance > bound(&results) {
                    break;
                }
                // Asked for all at once, the neighbours' codes arrive from memory together
                // instead of one cache miss after another.
                fresh.clear();
                for &n in self.links(current.node, layer) {
                    if visited.first_visit(n) {
                        self.prefetch(n);
                        fresh.push(n);
                    }
                }
                for &n in &fresh {
                    let d = self.distance(query, n);
                    if d < bound(&results) {
                        let c = Candidate { distance: d, node: n };
                        frontier.push(Reverse(c));
                        if keep(n) {
                            results.push(c);
                            if results.len() > ef {
                                results.pop();
                            }
                        }
                    }
                }
            }
            results.into_sorted_vec()
        })
    }

    /// The `k` rows nearest `query` with their cosine, best first, exploring `ef`
    /// candidates; only rows `allowed` accepts when given.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        allowed: Option<&dyn Fn(usize) -> bool>,
    ) -> Result<Vec<(usize, f32)>> {
        self.check(query)?;
        let Some(mut entry) = self.entry else {
            return Ok(Vec::new());
        };
        let mut codes = vec![0; self.dimension];
        let scale = encode_direction(query, &mut codes);
        let query = Encoded { codes: &codes, scale };
        for layer in (1..=self.top_layer).rev() {
            entry = self.greedy(query, entry, layer);
        }
        let found = self.search_layer(query, &[entry], ef.max(k), 0, allowed);
        Ok(found
            .into_iter()
            .take(k)
            .map(|c| (c.node as usize, 1.0 - c.distance))
            .collect())
    }

    /// Bytes the graph holds, in memory or mapped from a file (codes, scales and links).
    pub fn memory_bytes(&self) -> usize {
        self.codes.len() * self.dimension
            + self.scales.len() * 4
            + self.bottom.len() * 4
            + self.bottom_len.len() * 2
            + self
                .upper
                .values()
                .map(|layers| 32 + layers.iter().map(|l| 24 + 4 * l.capacity()).sum::<usize>())
                .sum::<usize>()
    }

    /// The graph but its codes as bytes in the machine's byte order, for [`Self::read`].
    pub fn write_links(&self, out: &mut impl Write) -> Result<()> {
        let header = [
            self.dimension as u64,
            self.params.connections as u64,
            self.params.ef_construction as u64,
            self.params.seed,
            self.len() as u64,
            self.top_layer as u64,
            self.entry.map_or(u64::MAX, u64::from),
        ];
        out.write_all(bytemuck::cast_slice(&header))?;
        out.write_all(bytemuck::cast_slice(&self.scales))?;
        out.write_all(bytemuck::cast_slice(&self.bottom_len))?;
        out.write_all(bytemuck::cast_slice(&self.bottom))?;
        for node in 0..self.len() as u32 {
            let layers = self.upper.get(&node).map_or(&[][..], Vec::as_slice);
            out.write_all(&[layers.len() as u8])?;
            for links in layers {
                out.write_all(bytemuck::bytes_of(&(links.len() as u16)))?;
                out.write_all(bytemuck::cast_slice(links))?;
            }
        }
        Ok(())
    }

    /// Every node's codes, in node order, as [`Self::read`] takes them back.
    pub fn write_codes(&self, out: &mut impl Write) -> Result<()> {
        for node in 0..self.len() {
            out.write_all(bytemuck::cast_slice(self.codes.get(node)))?;
        }
        Ok(())
    }

    /// A graph from [`Self::write_links`]'s bytes and its nodes' `codes`, checked so that no walk
    /// can leave it: every link and the entry name a node, every list fits its layer.
    pub fn read(bytes: &mut Bytes, codes: Records<i8>) -> Result<Self> {
        let header: Vec<u64> = bytes.take(7)?;
        let [dimension, connections, ef_construction, seed, count, top_layer, entry] = header[..] else {
            unreachable!("seven values taken");
        };
        ensure!(
            (1..=1 << 16).contains(&dimension) && (2..=64).contains(&connections) && count < u32::MAX as u64,
            "a graph header out of range"
        );
        let (d, m, n) = (dimension as usize, connections as usize, count as usize);
        let params = GraphParams {
            connections: m,
            ef_construction: ef_construction as usize,
            seed,
        };
        ensure!(
            codes.len() == n && codes.width() == d,
            "the graph's codes are not those of its nodes"
        );
        let mut graph = Self::new(d, params);
        graph.codes = codes;
        graph.scales = bytes.take(n)?;
        graph.bottom_len = bytes.take(n)?;
        graph.bottom = bytes.take(n * 2 * m)?;
        let linked = |links: &[u32]| links.iter().all(|&l| (l as u64) < count);
        ensure!(
            graph.bottom_len.iter().all(|&l| l as usize <= 2 * m) && linked(&graph.bottom),
            "bottom-layer links out of range"
        );
        for node in 0..n as u32 {
            let layers = bytes.value::<u8>()? as usize;
            ensure!(layers as u64 <= top_layer && layers <= 30, "a node above the top layer");
            let mut links_of_layers = Vec::with_capacity(layers);
            for _ in 0..layers {
                let len = bytes.value::<u16>()? as usize;
                ensure!(len <= m, "too many links on an upper layer");
                let links: Vec<u32> = bytes.take(len)?;
                ensure!(linked(&links), "upper-layer links out of range");
                links_of_layers.push(links);
            }
            if layers > 0 {
                graph.upper.insert(node, links_of_layers);
            }
        }
        graph.top_layer = top_layer as usize;
        graph.entry = match entry {
            u64::MAX => None,
            e if e < count && graph.upper.get(&(e as u32)).map_or(0, Vec::len) == graph.top_layer => Some(e as u32),
            _ => anyhow::bail!("an entry point that is not a top-layer node"),
        };
        ensure!(
            graph.entry.is_some() || n == 0,
            "a graph of nodes without an entry point"
        );
        // Later insertions draw layers on from here rather than repeating the first ones.
        graph.rng = fastrand::Rng::with_seed(seed ^ count);
        Ok(graph)
    }

    fn check(&self, vector: &[f32]) -> Result<()> {
        ensure!(
            vector.len() == self.dimension,
            "a vector of {} values for a graph of {}-d vectors",
            vector.len(),
            self.dimension
        );
        ensure!(
            vector.iter().all(|v| v.is_finite()),
            "a vector with a value that is not finite"
        );
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::index::dot;

    /// Unit vectors in clusters, like image features: 40 centres, members near them.
    pub(crate) fn clustered(count: usize, dimension: usize, seed: u64) -> Vec<f32> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let centres: Vec<f32> = (0..40 * dimension).map(|_| rng.f32()).collect();
        let mut rows = Vec::with_capacity(count * dimension);
        for _ in 0..count {
            let c = rng.usize(0..40);
            rows.extend((0..dimension).map(|j| centres[c * dimension + j] + 0.6 * rng.f32()));
        }
        crate::linalg::l2_normalise_rows(&mut rows, dimension);
        rows
    }

    fn exact(rows: &[f32], d: usize, query: &[f32], k: usize, allowed: &dyn Fn(usize) -> bool) -> Vec<usize> {
        let mut scored: Vec<(usize, f32)> = rows
            .chunks(d)
            .enumerate()
            .filter(|(i, _)| allowed(*i))
            .map(|(i, r)| (i, dot(query, r)))
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        scored.into_iter().take(k).map(|(i, _)| i).collect()
    }

    fn recall(
        graph: &HnswGraph,
        rows: &[f32],
        queries: &[f32],
        d: usize,
        allowed: Option<&dyn Fn(usize) -> bool>,
    ) -> f64 {
        let (mut hits, mut total) = (0, 0);
        for q in queries.chunks(d) {
            let truth = exact(rows, d, q, 10, &|i| allowed.is_none_or(|f| f(i)));
            // As the index uses it: every candidate of the walk re-scored exactly.
            let candidates = graph.search(q, 64, 64, allowed).unwrap();
            assert!(candidates.windows(2).all(|w| w[0].1 >= w[1].1), "best first");
            let mut rescored: Vec<(usize, f32)> = candidates
                .iter()
                .map(|&(i, _)| (i, dot(q, &rows[i * d..(i + 1) * d])))
                .collect();
            rescored.sort_by(|a, b| b.1.total_cmp(&a.1));
            hits += rescored.iter().take(10).filter(|(i, _)| truth.contains(i)).count();
            total += truth.len();
        }
        hits as f64 / total as f64
    }

    #[test]
    fn finds_what_exact_search_finds_with_and_without_filters() {
        let d = 64;
        let rows = clustered(3000, d, 1);
        let queries = clustered(100, d, 2);
        let graph = HnswGraph::build(&rows.chunks(d).collect::<Vec<_>>(), d, GraphParams::default()).unwrap();
        assert_eq!(graph.len(), 3000);
        let all = recall(&graph, &rows, &queries, d, None);
        assert!(all >= 0.95, "recall@10 {all}");
        // A filter keeping a tenth of the rows: only kept rows come back, as exact search's.
        let tenth = |i: usize| i % 10 == 3;
        let filtered = recall(&graph, &rows, &queries, d, Some(&tenth));
        assert!(filtered >= 0.9, "filtered recall@10 {filtered}");
        for q in queries.chunks(d) {
            assert!(graph
                .search(q, 10, 64, Some(&tenth))
                .unwrap()
                .iter()
                .all(|(i, _)| tenth(*i)));
        }
    }

    #[test]
    fn a_row_finds_itself_and_wrong_vectors_are_errors_not_crashes() {
        let d = 32;
        let rows = clustered(500, d, 3);
        let mut graph = HnswGraph::build(&rows.chunks(d).collect::<Vec<_>>(), d, GraphParams::default()).unwrap();
        for (i, row) in rows.chunks(d).enumerate().step_by(37) {
            let best = graph.search(row, 1, 32, None).unwrap()[0];
            assert_eq!(best.0, i);
            assert!((best.1 - 1.0).abs() < 1e-2, "{}", best.1);
        }
        assert!(graph.search(&rows[..d - 1], 5, 32, None).is_err());
        assert!(graph.insert(&vec![f32::NAN; d]).is_err());
        assert!(HnswGraph::build(&[&rows[..d + 1]], d, GraphParams::default()).is_err());
        // Duplicates and an empty graph answer too.
        assert_eq!(graph.insert(&rows[..d]).unwrap(), 500);
        assert_eq!(graph.search(&rows[..d], 2, 32, None).unwrap().len(), 2);
        let empty = HnswGraph::new(d, GraphParams::default());
        assert!(empty.search(&rows[..d], 5, 32, None).unwrap().is_empty());
    }

    #[test]
    fn a_parallel_build_finds_what_a_one_at_a_time_build_finds() {
        let d = 48;
        let rows = clustered(12_000, d, 7);
        let queries = clustered(200, d, 8);
        let built_on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| HnswGraph::build(&rows.chunks(d).collect::<Vec<_>>(), d, GraphParams::default()).unwrap())
        };
        let (one, four) = (built_on(1), built_on(4));
        assert_eq!(four.len(), 12_000);
        let (sequential, parallel) = (
            recall(&one, &rows, &queries, d, None),
            recall(&four, &rows, &queries, d, None),
        );
        assert!(
            parallel >= sequential - 0.01,
            "recall@10 {parallel} in parallel, {sequential} one at a time"
        );
        // Every node is reachable: each finds itself.
        for (i, row) in rows.chunks(d).enumerate().step_by(97) {
            assert_eq!(four.search(row, 1, 64, None).unwrap()[0].0, i);
        }
    }
}

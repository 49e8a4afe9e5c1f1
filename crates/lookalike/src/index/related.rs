//! "Similar products" for a whole catalogue in one run: the cosine top-k of every product among
//! all others, as blocked matrix products (a tile of rows against a tile of columns is one
//! `gemm`) instead of one search per product, and incrementally: after products are added,
//! changed or removed, only what they touch is computed again.
//!
//! Scores are exact f32 cosines. A row's top k is kept in a small sorted buffer whose weakest
//! score is the bar a tile's value must pass, so almost every value is rejected with one
//! comparison.

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;

use crate::linalg::{gemm, l2_normalise_rows, Strided};
use crate::types::RelatedIds;

/// Rows of one tile: their top-k buffers stay in cache while the columns stream by.
const ROW_TILE: usize = 64;
/// Columns of one tile: the `ROW_TILE × COLUMN_TILE` scores fit in L2.
const COLUMN_TILE: usize = 2048;

/// Unit-length copies of a catalogue's vectors, row-major.
pub struct UnitVectors {
    data: Vec<f32>,
    dimension: usize,
}

impl UnitVectors {
    pub fn new(vectors: &[&[f32]]) -> Self {
        let dimension = vectors.first().map_or(0, |v| v.len());
        let mut data: Vec<f32> = Vec::with_capacity(vectors.len() * dimension);
        for v in vectors {
            assert_eq!(v.len(), dimension, "vectors of one catalogue share their dimension");
            data.extend_from_slice(v);
        }
        if dimension > 0 {
            l2_normalise_rows(&mut data, dimension);
        }
        Self { data, dimension }
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dimension..(i + 1) * self.dimension]
    }

    /// Rows `indices` copied contiguously, as one `gemm` operand.
    fn gather(&self, indices: &[usize], out: &mut Vec<f32>) {
        out.clear();
        for &i in indices {
            out.extend_from_slice(self.row(i));
        }
    }
}

/// A row's best (column, cosine) pairs, best first; ties go to the lower column.
pub type Neighbours = Vec<(usize, f32)>;

/// The best `k` kept while scores stream by: ascending, so `[0]` is the bar to pass when full.
struct TopK {
    k: usize,
    kept: Vec<(f32, std::cmp::Reverse<usize>)>,
}

impl TopK {
    fn new(k: usize) -> Self {
        Self {
            k,
            kept: Vec::with_capacity(k + 1),
        }
    }

    fn seed(k: usize, known: &[(usize, f32)]) -> Self {
        let mut top = Self::new(k);
        for &(column, score) in known {
            top.offer(column, score);
        }
        top
    }

    #[inline]
    fn offer(&mut self, column: usize, score: f32) {
        let entry = (score, std::cmp::Reverse(column));
        if self.kept.len() == self.k {
            if entry.partial_cmp(&self.kept[0]) != Some(std::cmp::Ordering::Greater) {
                return;
            }
            self.kept.remove(0);
        }
        let at = self
            .kept
            .partition_point(|e| e.partial_cmp(&entry) == Some(std::cmp::Ordering::Less));
        self.kept.insert(at, entry);
    }

    fn into_best_first(self) -> Neighbours {
        self.kept.into_iter().rev().map(|(s, c)| (c.0, s)).collect()
    }
}

/// For each of `rows`, its `k` most similar among `columns` (never itself), starting from
/// `known` neighbours of that row when given (merged, so a row already computed against other
/// columns only needs the new ones). `rows` and `columns` index into `vectors`.
pub fn top_k_among(
    vectors: &UnitVectors,
    rows: &[usize],
    columns: &[usize],
    k: usize,
    known: Option<&[Neighbours]>,
) -> Vec<Neighbours> {
    let d = vectors.dimension;
    rows.par_chunks(ROW_TILE)
        .enumerate()
        .flat_map_iter(|(tile, row_ids)| {
            let mut tops: Vec<TopK> = row_ids
                .iter()
                .enumerate()
                .map(|(r, _)| match known {
                    Some(known) => TopK::seed(k, &known[tile * ROW_TILE + r]),
                    None => TopK::new(k),
                })
                .collect();
            let (mut left, mut right) = (Vec::new(), Vec::new());
            let mut scores = vec![0.0f32; ROW_TILE * COLUMN_TILE];
            vectors.gather(row_ids, &mut left);
            for column_ids in columns.chunks(COLUMN_TILE) {
                vectors.gather(column_ids, &mut right);
                let (m, n) = (row_ids.len(), column_ids.len());
                gemm(
                    Strided::rows(&left, d),
                    Strided::transposed(&right, d),
                    &mut scores[..m * n],
                    (m, d, n),
                    1.0,
                    0.0,
                );
                for (r, top) in tops.iter_mut().enumerate() {
                    let row_id = row_ids[r];
                    for (c, &score) in scores[r * n..(r + 1) * n].iter().enumerate() {
                        let column_id = column_ids[c];
                        if column_id != row_id {
                            top.offer(column_id, score);
                        }
                    }
                }
            }
            tops.into_iter().map(TopK::into_best_first).collect::<Vec<_>>()
        })
        .collect()
}

/// What an earlier run left: each product's content hash and its neighbours (by id, with scores).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Previous {
    pub k: usize,
    pub hashes: HashMap<String, String>,
    pub related: HashMap<String, RelatedIds>,
}

/// The catalogue as this run sees it: ids, content hashes and vectors, one per product.
pub struct Catalogue<'a> {
    pub ids: Vec<&'a str>,
    pub hashes: Vec<&'a str>,
    pub vectors: UnitVectors,
}

/// How much of a run was computed again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Work {
    /// Products whose neighbours were computed against the whole catalogue.
    pub full: usize,
    /// Products whose earlier neighbours only met the new and changed products.
    pub merged: usize,
    /// Products new or changed since the previous run.
    pub fresh: usize,
}

/// Every product's `k` neighbours, reusing `previous` where it still holds: products that are new
/// or changed, and products whose earlier neighbours changed or left, are computed against all;
/// the rest keep their neighbours and only meet the new and changed products.
pub fn related_products(catalogue: &Catalogue, k: usize, previous: Option<&Previous>) -> (Vec<Neighbours>, Work) {
    let n = catalogue.ids.len();
    let all: Vec<usize> = (0..n).collect();
    let Some(previous) = previous.filter(|p| p.k == k) else {
        let work = Work {
            full: n,
            merged: 0,
            fresh: n,
        };
        return (top_k_among(&catalogue.vectors, &all, &all, k, None), work);
    };
    let fresh: Vec<usize> = all
        .iter()
        .copied()
        .filter(|&i| previous.hashes.get(catalogue.ids[i]).map(String::as_str) != Some(catalogue.hashes[i]))
        .collect();
    let fresh_ids: HashSet<&str> = fresh.iter().map(|&i| catalogue.ids[i]).collect();
    let present: HashMap<&str, usize> = catalogue.ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    // A neighbour that changed or left may have been what kept a weaker one out: start again.
    let (mut full, mut merged) = (fresh.clone(), Vec::new());
    for i in all.iter().copied().filter(|i| !fresh_ids.contains(catalogue.ids[*i])) {
        let earlier = previous.related.get(catalogue.ids[i]);
        let intact = earlier.is_some_and(|list| {
            (list.len() == k || list.len() + 1 == n)
                && list
                    .iter()
                    .all(|(id, _)| present.contains_key(id.as_str()) && !fresh_ids.contains(id.as_str()))
        });
        if intact {
            merged.push(i);
        } else {
            full.push(i);
        }
    }
    let mut result = vec![Vec::new(); n];
    for (i, neighbours) in full.iter().zip(top_k_among(&catalogue.vectors, &full, &all, k, None)) {
        result[*i] = neighbours;
    }
    let known: Vec<Neighbours> = merged
        .iter()
        .map(|&i| {
            previous.related[catalogue.ids[i]]
                .iter()
                .map(|(id, score)| (present[id.as_str()], *score))
                .collect()
        })
        .collect();
    for (i, neighbours) in merged
        .iter()
        .zip(top_k_among(&catalogue.vectors, &merged, &fresh, k, Some(&known)))
    {
        result[*i] = neighbours;
    }
    let work = Work {
        full: full.len(),
        merged: merged.len(),
        fresh: fresh.len(),
    };
    (result, work)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_vectors(n: usize, d: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..n).map(|_| (0..d).map(|_| rng.f32() - 0.5).collect()).collect()
    }

    /// The reference: every pair scored one by one.
    fn brute_force(vectors: &[Vec<f32>], k: usize) -> Vec<Vec<usize>> {
        let unit = UnitVectors::new(&vectors.iter().map(Vec::as_slice).collect::<Vec<_>>());
        (0..vectors.len())
            .map(|i| {
                let mut scored: Vec<(usize, f32)> = (0..vectors.len())
                    .filter(|&j| j != i)
                    .map(|j| (j, unit.row(i).iter().zip(unit.row(j)).map(|(a, b)| a * b).sum()))
                    .collect();
                scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                scored.into_iter().take(k).map(|(j, _)| j).collect()
            })
            .collect()
    }

    #[test]
    fn tiled_products_agree_with_scoring_every_pair() {
        // More than one tile of rows and of columns, and a ragged last tile.
        let vectors = random_vectors(ROW_TILE * 2 + 5, 24, 7);
        let unit = UnitVectors::new(&vectors.iter().map(Vec::as_slice).collect::<Vec<_>>());
        let all: Vec<usize> = (0..vectors.len()).collect();
        let tiled = top_k_among(&unit, &all, &all, 5, None);
        let expected = brute_force(&vectors, 5);
        for (row, neighbours) in tiled.iter().enumerate() {
            let ids: Vec<usize> = neighbours.iter().map(|(j, _)| *j).collect();
            assert_eq!(ids, expected[row], "row {row}");
            assert!(neighbours.windows(2).all(|w| w[0].1 >= w[1].1));
        }
    }

    #[test]
    fn an_incremental_run_equals_a_full_one() {
        let mut vectors = random_vectors(300, 16, 11);
        let mut ids: Vec<String> = (0..vectors.len()).map(|i| format!("p{i:03}")).collect();
        let hash = |v: &Vec<f32>| format!("{:?}", v.iter().take(3).collect::<Vec<_>>());
        let run = |ids: &[String], vectors: &[Vec<f32>], previous: Option<&Previous>| {
            let hashes: Vec<String> = vectors.iter().map(hash).collect();
            let catalogue = Catalogue {
                ids: ids.iter().map(String::as_str).collect(),
                hashes: hashes.iter().map(String::as_str).collect(),
                vectors: UnitVectors::new(&vectors.iter().map(Vec::as_slice).collect::<Vec<_>>()),
            };
            let (neighbours, work) = related_products(&catalogue, 6, previous);
            let state = Previous {
                k: 6,
                hashes: ids.iter().cloned().zip(hashes).collect(),
                related: ids
                    .iter()
                    .zip(&neighbours)
                    .map(|(id, n)| (id.clone(), n.iter().map(|(j, s)| (ids[*j].clone(), *s)).collect()))
                    .collect(),
            };
            (state, work)
        };
        let (first, work) = run(&ids, &vectors, None);
        assert_eq!(work.full, 300);
        // Ten products added, one changed, one removed.
        vectors.extend(random_vectors(10, 16, 12));
        ids.extend((300..310).map(|i| format!("p{i:03}")));
        vectors[5] = random_vectors(1, 16, 13).remove(0);
        vectors.remove(7);
        ids.remove(7);
        let (incremental, work) = run(&ids, &vectors, Some(&first));
        let (full, _) = run(&ids, &vectors, None);
        assert_eq!(incremental, full);
        assert!(work.merged > 200, "{work:?}: most products only met the new ones");
        assert_eq!(work.full + work.merged, ids.len());
    }
}

//! A photo's last feature map kept as local features, to compare where two photos are alike
//! rather than their pooled vectors: a shopper's part of a busy photo against a packshot.
//!
//! Each cell becomes a unit vector in [`CELL_DIMENSIONS`] channels (a fixed random projection of
//! the backbone's: angles between cells survive it closely, Johnson–Lindenstrauss), weighted by
//! its strength (its length before). A catalogue photo keeps its cells in int8, one scale each
//! ([`StoredCells`], 16.6 KB for Lite's 8 × 8 cells); a query part keeps them in memory
//! ([`QueryCells`]). [`QueryCells::likeness_to`] is a strength-weighted Chamfer similarity.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::linalg::{gemm, Strided};

use super::kernels::{dot_i8, quantize};

/// Channels a cell keeps. On `eval scenes --seed 7` (400 scenes, Recall@1 / @5, README "Photos
/// from shoppers"): all 1,280 in f32 0.417 / 0.623; **256 in int8 0.420 / 0.618** (16.6 KB a
/// photo); 128 in int8 0.393 / 0.610 (8.4 KB).
pub const CELL_DIMENSIONS: usize = 256;

/// What [`StoredCells::to_bytes`] writes: stores keep it beside each photo's cells, and cells of
/// another format are made again by `index` rather than compared.
pub const CELLS_FORMAT: i32 = 1;

/// How many of a busy photo's best products [`reranked_locally`] orders again: on `eval scenes
/// --seed 7` (400 scenes, Recall@1 / @5, all channels in f32) 5 gave 0.417 / 0.573, 10 0.417 /
/// 0.610, **20 0.417 / 0.623**, 40 0.417 / 0.623; each costs the likeness of each of its photos.
pub const LOCAL_RERANK_DEPTH: usize = 20;

/// Fixes the projection: cells stored by one run compare with a query's of any later run.
const PROJECTION_SEED: u64 = 0x6c6f_6f6b_616c_696b;

/// A catalogue photo's cells as stored: per cell, its scale (f32, little-endian) then its
/// [`CELL_DIMENSIONS`] int8 codes.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCells {
    codes: Vec<i8>,
    scales: Vec<f32>,
}

/// A query part's cells: unit vectors in int8 with their scales, and each cell's strength.
#[derive(Debug, Clone)]
pub struct QueryCells {
    codes: Vec<i8>,
    scales: Vec<f32>,
    weights: Vec<f32>,
}

const CELL_BYTES: usize = 4 + CELL_DIMENSIONS;

impl StoredCells {
    /// `cells` (rows of `channels`, as [`crate::explain::FeatureMap::cells`]) made local features.
    pub fn of(cells: &[f32], channels: usize) -> Self {
        let (codes, scales, _) = unit_codes(cells, channels);
        Self { codes, scales }
    }

    /// The network's NCHW output for one image (`channels` planes) made local features.
    pub fn of_planes(planes: &[f32], channels: usize) -> Self {
        Self::of(&cells_of_planes(planes, channels), channels)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.scales.len() * CELL_BYTES);
        for (scale, codes) in self.scales.iter().zip(self.codes.chunks_exact(CELL_DIMENSIONS)) {
            bytes.extend(scale.to_le_bytes());
            bytes.extend(codes.iter().map(|&c| c as u8));
        }
        bytes
    }

    /// `None` for bytes [`Self::to_bytes`] of [`CELLS_FORMAT`] cannot have written.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(CELL_BYTES) {
            return None;
        }
        let mut cells = Self {
            codes: Vec::with_capacity(bytes.len()),
            scales: Vec::with_capacity(bytes.len() / CELL_BYTES),
        };
        for cell in bytes.chunks_exact(CELL_BYTES) {
            let scale = f32::from_le_bytes(cell[..4].try_into().expect("4 bytes"));
            if !scale.is_finite() {
                return None;
            }
            cells.scales.push(scale);
            cells.codes.extend(cell[4..].iter().map(|&b| b as i8));
        }
        Some(cells)
    }
}

impl QueryCells {
    pub fn of(cells: &[f32], channels: usize) -> Self {
        let (codes, scales, weights) = unit_codes(cells, channels);
        Self { codes, scales, weights }
    }

    /// The likeness of the most alike of `photos` (stored cells' bytes); `None` when none reads
    /// as cells of this format.
    pub fn best_likeness<'a>(&self, photos: impl IntoIterator<Item = &'a [u8]>) -> Option<f32> {
        photos
            .into_iter()
            .filter_map(StoredCells::from_bytes)
            .map(|theirs| self.likeness_to(&theirs))
            .reduce(f32::max)
    }

    /// How alike `other` is to these cells, place by place: each cell's best cosine to any of
    /// `other`'s, averaged with the cells' strengths as weights (Chamfer similarity). A query
    /// part's background cells find nothing much in any packshot, so the product's cells decide,
    /// wherever in the packshot they are.
    pub fn likeness_to(&self, other: &StoredCells) -> f32 {
        let (mut sum, mut total) = (0.0, 0.0);
        let cells = self.codes.chunks_exact(CELL_DIMENSIONS).zip(&self.scales);
        for ((cell, scale), &weight) in cells.zip(&self.weights) {
            let best = other
                .codes
                .chunks_exact(CELL_DIMENSIONS)
                .zip(&other.scales)
                .map(|(theirs, their_scale)| dot_i8(cell, theirs) as f32 * scale * their_scale)
                .fold(f32::MIN, f32::max);
            if best > f32::MIN {
                sum += weight * best;
                total += weight;
            }
        }
        if total > 0.0 {
            sum / total
        } else {
            0.0
        }
    }
}

/// `channels` planes of cells (NCHW, one image) as rows of `channels`, one per cell.
pub fn cells_of_planes(planes: &[f32], channels: usize) -> Vec<f32> {
    let area = planes.len() / channels.max(1);
    let mut cells = vec![0.0; area * channels];
    for (channel, plane) in planes.chunks_exact(area.max(1)).take(channels).enumerate() {
        for (cell, &value) in plane.iter().enumerate() {
            cells[cell * channels + channel] = value;
        }
    }
    cells
}

/// The first [`LOCAL_RERANK_DEPTH`] of `ranked` (best first) ordered again by
/// `score_and_likeness` — the key a product was ranked by for the part searched (its score,
/// raised by its category's vote and its kind's chance where the part is voted on,
/// [`crate::index::category_vote::voted_order`]) plus its most alike photo's
/// [`QueryCells::best_likeness`] to the part — the rest as they were; all as they were when one
/// of those first has no photo with cells (`None`: stored by a lookalike before them, or by
/// `index --no-local-cells`), so a product is never ranked by its vector alone beside others
/// ranked with their cells. Variants (README, "Photos from shoppers"): likeness alone, or the
/// score weighed ×0.5 or ×2, found fewer products; the plain score instead of the voted key
/// found as many in busy photos and fewer of the photographed kind (`eval kinds`).
pub fn reranked_locally<T>(ranked: Vec<T>, score_and_likeness: impl Fn(&T) -> Option<f32>) -> Vec<T> {
    let depth = ranked.len().min(LOCAL_RERANK_DEPTH);
    let Some(keys) = ranked[..depth]
        .iter()
        .map(score_and_likeness)
        .collect::<Option<Vec<f32>>>()
    else {
        return ranked;
    };
    let mut ranked = ranked;
    let rest = ranked.split_off(depth);
    let mut top: Vec<(T, f32)> = ranked.into_iter().zip(keys).collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    top.into_iter().map(|(item, _)| item).chain(rest).collect()
}

/// Each cell projected to [`CELL_DIMENSIONS`], made a unit vector and quantised: the codes, their
/// scales, and the cells' lengths before (their strengths).
fn unit_codes(cells: &[f32], channels: usize) -> (Vec<i8>, Vec<f32>, Vec<f32>) {
    let count = cells.len().checked_div(channels).unwrap_or(0);
    let cells = &cells[..count * channels];
    let mut projected = vec![0.0f32; count * CELL_DIMENSIONS];
    gemm(
        Strided::rows(cells, channels),
        Strided::rows(&projection(channels), CELL_DIMENSIONS),
        &mut projected,
        (count, channels, CELL_DIMENSIONS),
        1.0,
        0.0,
    );
    let mut codes = vec![0i8; projected.len()];
    let mut scales = Vec::with_capacity(count);
    let mut weights = Vec::with_capacity(count);
    for ((cell, projected), codes) in cells
        .chunks_exact(channels)
        .zip(projected.chunks_exact_mut(CELL_DIMENSIONS))
        .zip(codes.chunks_exact_mut(CELL_DIMENSIONS))
    {
        let strength = cell.iter().map(|x| x * x).sum::<f32>().sqrt();
        let length = projected.iter().map(|x| x * x).sum::<f32>().sqrt();
        let usable = strength.is_finite() && length.is_finite() && length > 0.0;
        if usable {
            projected.iter_mut().for_each(|x| *x /= length);
        }
        scales.push(if usable { quantize(projected, codes) } else { 0.0 });
        weights.push(if usable { strength } else { 0.0 });
    }
    (codes, scales, weights)
}

/// The `channels × CELL_DIMENSIONS` matrix of random signs every cell is projected by, made once
/// per channel count.
fn projection(channels: usize) -> Arc<Vec<f32>> {
    static MADE: OnceLock<Mutex<HashMap<usize, Arc<Vec<f32>>>>> = OnceLock::new();
    let mut made = MADE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    made.entry(channels)
        .or_insert_with(|| {
            let mut state = PROJECTION_SEED;
            let signs = (0..channels * CELL_DIMENSIONS)
                .map(|_| if splitmix64(&mut state) >> 63 == 0 { 1.0 } else { -1.0 })
                .collect();
            Arc::new(signs)
        })
        .clone()
}

/// SplitMix64 (Steele et al. 2014): a fixed generator, so the projection never changes with a
/// dependency's version.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `side × side` cells of `channels`, each `cell(row, column)`.
    fn cells(side: usize, channels: usize, cell: impl Fn(usize, usize) -> Vec<f32>) -> Vec<f32> {
        (0..side * side)
            .flat_map(|i| cell(i / side, i % side))
            .take(side * side * channels)
            .collect()
    }

    fn pattern(seed: u64, channels: usize) -> Vec<f32> {
        let mut state = seed;
        (0..channels)
            .map(|_| (splitmix64(&mut state) % 1000) as f32 / 1000.0)
            .collect()
    }

    #[test]
    fn local_likeness_finds_a_product_wherever_it_is_and_weighs_strong_cells() {
        let channels = 256;
        let (product, background, other) = (pattern(1, channels), pattern(2, channels), pattern(3, channels));
        let faint = |v: &[f32]| v.iter().map(|x| x * 0.05).collect::<Vec<f32>>();
        // The product strong in the query's top-left corner, the rest faint background.
        let query = cells(4, channels, |r, c| {
            if r < 2 && c < 2 {
                product.clone()
            } else {
                faint(&background)
            }
        });
        // The packshot: the product in its bottom-right corner, white (zero) elsewhere.
        let packshot = cells(4, channels, |r, c| {
            if r >= 2 && c >= 2 {
                product.clone()
            } else {
                vec![0.0; channels]
            }
        });
        let elsewhere = cells(4, channels, |_, _| other.clone());
        let query = QueryCells::of(&query, channels);
        let (found, not) = (
            query.likeness_to(&StoredCells::of(&packshot, channels)),
            query.likeness_to(&StoredCells::of(&elsewhere, channels)),
        );
        assert!(found > 0.95, "the product's cells find it wherever it is: {found}");
        assert!(found > not + 0.05, "{found} against {not}");
    }

    #[test]
    fn only_the_first_products_are_reranked_locally() {
        let order: Vec<usize> = (0..LOCAL_RERANK_DEPTH + 3).collect();
        let reranked = reranked_locally(order.clone(), |&p| Some(p as f32));
        let mut expected: Vec<usize> = (0..LOCAL_RERANK_DEPTH).rev().collect();
        expected.extend(LOCAL_RERANK_DEPTH..LOCAL_RERANK_DEPTH + 3);
        assert_eq!(reranked, expected);
        assert_eq!(reranked_locally(vec![2, 0], |&p| Some(-(p as f32))), [0, 2]);
        // One of the first without cells: nothing moves.
        let lacking = reranked_locally(order.clone(), |&p| (p != 3).then_some(p as f32));
        assert_eq!(lacking, order);
    }

    #[test]
    fn stored_cells_read_back_as_written_and_refuse_other_bytes() {
        let channels = 64;
        let stored = StoredCells::of(
            &cells(3, channels, |r, c| pattern((r * 3 + c) as u64, channels)),
            channels,
        );
        let bytes = stored.to_bytes();
        assert_eq!(bytes.len(), 9 * (4 + CELL_DIMENSIONS));
        assert_eq!(StoredCells::from_bytes(&bytes), Some(stored));
        assert_eq!(StoredCells::from_bytes(&bytes[1..]), None);
        assert_eq!(StoredCells::from_bytes(&[]), None);
        let mut not_finite = bytes.clone();
        not_finite[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert_eq!(StoredCells::from_bytes(&not_finite), None);
    }

    #[test]
    fn the_projection_keeps_angles_between_cells() {
        let channels = 1280;
        let (a, b) = (pattern(4, channels), pattern(5, channels));
        let centred = |v: &[f32]| v.iter().map(|x| x - 0.5).collect::<Vec<f32>>();
        let (a, b) = (centred(&a), centred(&b));
        let mixed: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + 0.5 * y).collect();
        let cosine = |x: &[f32], y: &[f32]| {
            let dot: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
            dot / (x.iter().map(|p| p * p).sum::<f32>() * y.iter().map(|q| q * q).sum::<f32>()).sqrt()
        };
        let exact = cosine(&a, &mixed);
        let local = QueryCells::of(&a, channels).likeness_to(&StoredCells::of(&mixed, channels));
        assert!((exact - local).abs() < 0.1, "cosine {exact}, projected {local}");
        // Zero cells give no weight and no NaN.
        let zero = QueryCells::of(&vec![0.0; channels], channels);
        assert_eq!(zero.likeness_to(&StoredCells::of(&a, channels)), 0.0);
    }
}

//! Training-free ways to describe and rank photos beyond the backbone's average-pooled vector,
//! for measuring them side by side (`eval descriptors`): other poolings of the last feature map
//! (GeM, max), a PCA-whitening fitted on the gallery, and re-ranking (query expansion, database
//! augmentation).

use nalgebra::{DMatrix, SymmetricEigen};
use rayon::prelude::*;
use serde::Serialize;

use crate::index::kernels::dot;
use crate::linalg::{l2_normalise_rows, unit};

/// How a feature map's cells become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Pooling {
    /// The mean of the cells: the backbone's own vector.
    Average,
    /// Generalised mean with exponent p (Radenović et al.): 1 is the mean, ∞ the max.
    Gem(f32),
    /// The largest value per channel (MAC).
    Max,
}

impl Pooling {
    /// `cells` (rows of `channels`) pooled into one vector of `channels`.
    pub fn pool(self, cells: &[f32], channels: usize) -> Vec<f32> {
        let count = (cells.len() / channels.max(1)).max(1) as f32;
        let mut out = vec![0.0f32; channels];
        match self {
            Self::Average => {
                for cell in cells.chunks_exact(channels) {
                    out.iter_mut().zip(cell).for_each(|(o, x)| *o += x);
                }
                out.iter_mut().for_each(|o| *o /= count);
            }
            Self::Gem(p) => {
                for cell in cells.chunks_exact(channels) {
                    out.iter_mut().zip(cell).for_each(|(o, x)| *o += x.max(0.0).powf(p));
                }
                out.iter_mut().for_each(|o| *o = (*o / count).powf(1.0 / p));
            }
            Self::Max => {
                for cell in cells.chunks_exact(channels) {
                    out.iter_mut().zip(cell).for_each(|(o, x)| *o = o.max(*x));
                }
            }
        }
        out
    }

    pub fn name(self) -> String {
        match self {
            Self::Average => "average (the backbone's)".into(),
            Self::Gem(p) => format!("GeM p={p}"),
            Self::Max => "max (MAC)".into(),
        }
    }
}

/// The principal directions of a gallery's vectors, for PCA-whitenings of any size.
pub struct PrincipalAxes {
    mean: Vec<f32>,
    /// Variances, largest first, each with its direction (as wide as the vectors).
    axes: Vec<(f64, Vec<f32>)>,
}

impl PrincipalAxes {
    /// Fitted on `rows`, all as wide.
    pub fn fit(rows: &[Vec<f32>]) -> Self {
        let width = rows.first().map_or(0, Vec::len);
        let n = rows.len().max(1) as f64;
        let mut mean = vec![0.0f64; width];
        for row in rows {
            mean.iter_mut().zip(row).for_each(|(m, x)| *m += *x as f64 / n);
        }
        let centred = DMatrix::from_fn(rows.len(), width, |r, c| rows[r][c] as f64 - mean[c]);
        let covariance = centred.transpose() * &centred / n;
        let eigen = SymmetricEigen::new(covariance);
        let mut axes: Vec<(f64, Vec<f32>)> = (0..width)
            .map(|i| {
                let direction = eigen.eigenvectors.column(i).iter().map(|&v| v as f32).collect();
                (eigen.eigenvalues[i].max(0.0), direction)
            })
            .collect();
        axes.sort_by(|a, b| b.0.total_cmp(&a.0));
        Self {
            mean: mean.into_iter().map(|m| m as f32).collect(),
            axes,
        }
    }

    /// The whitening that keeps the `dimension` leading directions.
    pub fn whitening(&self, dimension: usize) -> Whitening {
        let kept = &self.axes[..dimension.min(self.axes.len())];
        let mean_variance = kept.iter().map(|(v, _)| v).sum::<f64>() / kept.len().max(1) as f64;
        let width = self.mean.len();
        let mut projection = Vec::with_capacity(kept.len() * width);
        for (variance, direction) in kept {
            let scale = (1.0 / (variance + SHRINK * mean_variance).sqrt()) as f32;
            projection.extend(direction.iter().map(|v| v * scale));
        }
        Whitening {
            mean: self.mean.clone(),
            projection,
            width,
        }
    }
}

/// Variances are shrunk by this share of the kept ones' mean before dividing by them, so that
/// directions of almost no variance are not blown up.
const SHRINK: f64 = 0.1;

/// A PCA-whitening: centred, projected on leading principal directions and each scaled to
/// unit variance ([`PrincipalAxes::whitening`]), then unit length.
pub struct Whitening {
    mean: Vec<f32>,
    /// One row per kept direction, as wide as the input.
    projection: Vec<f32>,
    width: usize,
}

impl Whitening {
    /// `vector` whitened, unit length.
    pub fn apply(&self, vector: &[f32]) -> Vec<f32> {
        let centred: Vec<f32> = vector.iter().zip(&self.mean).map(|(x, m)| x - m).collect();
        let mut out: Vec<f32> = self
            .projection
            .chunks_exact(self.width)
            .map(|direction| direction.iter().zip(&centred).map(|(a, b)| a * b).sum())
            .collect();
        let width = out.len();
        l2_normalise_rows(&mut out, width.max(1));
        out
    }
}

/// The indices of the `k` gallery rows most like `query`, most alike first, with their cosines.
fn nearest(query: &[f32], gallery: &[Vec<f32>], k: usize) -> Vec<(usize, f32)> {
    let mut scored: Vec<(usize, f32)> = gallery.iter().enumerate().map(|(i, g)| (i, dot(query, g))).collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    scored.truncate(k);
    scored
}

/// `row` plus each of `neighbours` (gallery index, cosine to `row`) weighted by its cosine to the
/// power `alpha`, unit length.
fn pulled_towards(
    row: &[f32],
    gallery: &[Vec<f32>],
    neighbours: impl Iterator<Item = (usize, f32)>,
    alpha: f32,
) -> Vec<f32> {
    let mut sum = row.to_vec();
    for (i, score) in neighbours {
        let weight = score.max(0.0).powf(alpha);
        sum.iter_mut().zip(&gallery[i]).for_each(|(s, g)| *s += weight * g);
    }
    unit(&sum)
}

/// α-weighted query expansion (Radenović et al.): the query and its `k` nearest gallery rows,
/// each weighted by its cosine to the query to the power `alpha`, averaged (unit vectors in, a
/// unit vector out).
pub fn expanded_query(query: &[f32], gallery: &[Vec<f32>], k: usize, alpha: f32) -> Vec<f32> {
    pulled_towards(query, gallery, nearest(query, gallery, k).into_iter(), alpha)
}

/// Database-side augmentation: each gallery row replaced by the weighted mean of itself and its
/// `k` nearest other rows, as [`expanded_query`] does for a query.
pub fn augmented_gallery(gallery: &[Vec<f32>], k: usize, alpha: f32) -> Vec<Vec<f32>> {
    gallery
        .par_iter()
        .enumerate()
        .map(|(i, row)| {
            let others = nearest(row, gallery, k + 1)
                .into_iter()
                .filter(|&(j, _)| j != i)
                .take(k);
            pulled_towards(row, gallery, others, alpha)
        })
        .collect()
}

/// Labelled retrieval: Recall@1 and @5 over distinct labels, a label ranked by its best gallery
/// row (for products: product recall as search ranks products by their best photo; for
/// classes: Recall@1 is precision@1).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LabelRecall {
    pub queries: usize,
    pub recall_at_1: f64,
    pub recall_at_5: f64,
}

pub fn label_recall(
    queries: &[Vec<f32>],
    query_labels: &[usize],
    gallery: &[Vec<f32>],
    gallery_labels: &[usize],
) -> LabelRecall {
    let labels = gallery_labels.iter().max().map_or(0, |m| m + 1);
    let ranks: Vec<usize> = queries
        .par_iter()
        .zip(query_labels)
        .map(|(query, &own)| {
            let mut best = vec![f32::NEG_INFINITY; labels];
            for (row, &label) in gallery.iter().zip(gallery_labels) {
                best[label] = best[label].max(dot(query, row));
            }
            let own_score = best.get(own).copied().unwrap_or(f32::NEG_INFINITY);
            best.iter()
                .enumerate()
                .filter(|&(label, &score)| label != own && (score > own_score || (score == own_score && label < own)))
                .count()
        })
        .collect();
    let share = |k: usize| ranks.iter().filter(|&&r| r < k).count() as f64 / ranks.len().max(1) as f64;
    LabelRecall {
        queries: ranks.len(),
        recall_at_1: share(1),
        recall_at_5: share(5),
    }
}

/// The poolings `eval descriptors` compares.
pub const POOLINGS: [Pooling; 4] = [Pooling::Average, Pooling::Gem(2.0), Pooling::Gem(3.0), Pooling::Max];

/// Photos described one way, with their labels: a gallery and queries.
pub struct DescribedSet<'a> {
    pub gallery: &'a [Vec<f32>],
    pub gallery_labels: &'a [usize],
    pub queries: &'a [Vec<f32>],
    pub query_labels: &'a [usize],
}

/// What is done to a set's vectors before ranking.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Variant {
    /// PCA-whitening fitted on the gallery, keeping this many directions.
    pub whitened: Option<usize>,
    /// Each gallery vector averaged with its this many nearest gallery vectors.
    pub augmented: Option<usize>,
    /// The query averaged with its this many nearest gallery vectors.
    pub expanded: Option<usize>,
}

impl Variant {
    pub const ALL: [Self; 8] = [
        Self::new(None, None, None),
        Self::new(Some(256), None, None),
        Self::new(Some(512), None, None),
        Self::new(None, None, Some(2)),
        Self::new(None, None, Some(5)),
        Self::new(None, Some(2), None),
        Self::new(None, Some(2), Some(2)),
        Self::new(Some(512), Some(2), Some(2)),
    ];

    const fn new(whitened: Option<usize>, augmented: Option<usize>, expanded: Option<usize>) -> Self {
        Self {
            whitened,
            augmented,
            expanded,
        }
    }

    pub fn name(&self) -> String {
        let mut parts = Vec::new();
        if let Some(d) = self.whitened {
            parts.push(format!("PCA-whitened to {d}"));
        }
        if let Some(k) = self.augmented {
            parts.push(format!("gallery augmented (k={k})"));
        }
        if let Some(k) = self.expanded {
            parts.push(format!("query expanded (αQE k={k})"));
        }
        if parts.is_empty() {
            "as pooled".into()
        } else {
            parts.join(" + ")
        }
    }
}

/// The exponent of the cosine weights of query expansion and augmentation (Radenović et al.).
const ALPHA: f32 = 3.0;

/// `set` ranked after each of [`Variant::ALL`] (the gallery's principal axes fitted once).
pub fn compare(set: &DescribedSet) -> Vec<(Variant, LabelRecall)> {
    let axes = PrincipalAxes::fit(set.gallery);
    Variant::ALL
        .iter()
        .map(|&variant| {
            let (mut gallery, mut queries) = (set.gallery.to_vec(), set.queries.to_vec());
            if let Some(dimension) = variant.whitened {
                let whitening = axes.whitening(dimension);
                gallery = gallery.par_iter().map(|g| whitening.apply(g)).collect();
                queries = queries.par_iter().map(|q| whitening.apply(q)).collect();
            }
            if let Some(k) = variant.augmented {
                gallery = augmented_gallery(&gallery, k, ALPHA);
            }
            if let Some(k) = variant.expanded {
                queries = queries
                    .par_iter()
                    .map(|q| expanded_query(q, &gallery, k, ALPHA))
                    .collect();
            }
            (
                variant,
                label_recall(&queries, set.query_labels, &gallery, set.gallery_labels),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poolings_agree_where_they_must() {
        // Two cells of three channels.
        let cells = [1.0, 0.0, 4.0, 3.0, 0.0, 2.0];
        assert_eq!(Pooling::Average.pool(&cells, 3), vec![2.0, 0.0, 3.0]);
        assert_eq!(Pooling::Max.pool(&cells, 3), vec![3.0, 0.0, 4.0]);
        let gem1 = Pooling::Gem(1.0).pool(&cells, 3);
        assert!(gem1.iter().zip([2.0, 0.0, 3.0]).all(|(a, b)| (a - b).abs() < 1e-6));
        let gem = Pooling::Gem(3.0).pool(&cells, 3);
        assert!(gem[0] > 2.0 && gem[0] < 3.0, "between mean and max: {gem:?}");
    }

    #[test]
    fn whitening_gives_unit_variance_along_kept_directions() {
        let mut rng = fastrand::Rng::with_seed(3);
        // Variance 9 along x, 1 along y, none along z.
        let mut rows: Vec<Vec<f32>> = (0..400)
            .map(|_| vec![3.0 * (rng.f32() - 0.5) * 3.46, (rng.f32() - 0.5) * 3.46, 0.0])
            .collect();
        // Each point's mirror image too: the mean is exactly 0.
        rows.extend(
            rows.clone()
                .into_iter()
                .map(|r| r.iter().map(|x| -x).collect::<Vec<f32>>()),
        );
        let whitening = PrincipalAxes::fit(&rows).whitening(2);
        let white: Vec<Vec<f32>> = rows.iter().map(|r| whitening.apply(r)).collect();
        assert!(white.iter().all(|w| w.len() == 2 && (dot(w, w) - 1.0).abs() < 1e-4));
        // Once whitened, a point along x is as far from one along y as from its mirror.
        let along_x = whitening.apply(&[1.0, 0.0, 0.0]);
        let along_y = whitening.apply(&[0.0, 1.0, 0.0]);
        assert!(dot(&along_x, &along_y).abs() < 0.1, "{along_x:?} {along_y:?}");
    }

    #[test]
    fn expansion_and_augmentation_pull_towards_neighbours() {
        let gallery = vec![unit(&[1.0, 0.1]), unit(&[1.0, -0.1]), unit(&[0.0, 1.0])];
        let query = unit(&[1.0, 0.5]);
        let expanded = expanded_query(&query, &gallery, 2, 3.0);
        assert!(expanded[1] < query[1], "pulled towards the x axis: {expanded:?}");
        let augmented = augmented_gallery(&gallery, 1, 3.0);
        assert!(augmented[0][1].abs() < gallery[0][1].abs());
        assert_eq!(augmented.len(), 3);
    }

    #[test]
    fn label_recall_ranks_labels_by_their_best_row() {
        let gallery = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![0.6, 0.8]];
        let labels = [0, 1, 1];
        let queries = vec![vec![0.8, 0.6], vec![0.0, 1.0]];
        let recall = label_recall(&queries, &[1, 0], &gallery, &labels);
        // The first query's best is label 1 (0.96 against 0.8); the second's own label 0 is second.
        assert_eq!(recall.queries, 2);
        assert_eq!(recall.recall_at_1, 0.5);
        assert_eq!(recall.recall_at_5, 1.0);
    }
}

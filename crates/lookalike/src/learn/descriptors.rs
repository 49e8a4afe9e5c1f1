//! Training-free ways to describe and rank photos beyond the backbone's average-pooled vector,
//! for measuring them side by side (`eval descriptors`): other poolings of the last feature map
//! (GeM, max, R-MAC), the photo shown mirrored and at other scales, a PCA-whitening fitted on the
//! gallery, and re-ranking (query expansion, database augmentation, k-reciprocal re-ranking).

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
    /// Regional MAC (Tolias et al., ICLR 2016) over this many scales of square regions: each
    /// region's MAC, L2-normalised, summed (no per-region whitening: none is fitted here).
    Rmac(usize),
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
            Self::Rmac(levels) => {
                let side = (count as f64).sqrt().round() as usize;
                assert_eq!(side * side * channels, cells.len(), "R-MAC pools a square map");
                for (column, row, width) in rmac_regions(side, levels) {
                    let mut region = vec![f32::MIN; channels];
                    for r in row..row + width {
                        for c in column..column + width {
                            let cell = &cells[(r * side + c) * channels..][..channels];
                            region.iter_mut().zip(cell).for_each(|(o, x)| *o = o.max(*x));
                        }
                    }
                    out.iter_mut().zip(unit(&region)).for_each(|(o, x)| *o += x);
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
            Self::Rmac(levels) => format!("R-MAC L={levels}"),
        }
    }
}

/// R-MAC's regions of a `side` × `side` map (left column, top row, width): at level `l` of
/// `1..=levels`, `l` × `l` squares of width `2·side/(l+1)` spread evenly from edge to edge (the
/// published sampling for a square map, about 40 % overlap).
fn rmac_regions(side: usize, levels: usize) -> Vec<(usize, usize, usize)> {
    let mut regions = Vec::new();
    for level in 1..=levels {
        let width = ((2 * side) as f32 / (level + 1) as f32).round().clamp(1.0, side as f32) as usize;
        let starts: Vec<usize> = (0..level)
            .map(|i| match level {
                1 => (side - width) / 2,
                _ => ((side - width) as f32 * i as f32 / (level - 1) as f32).round() as usize,
            })
            .collect();
        for &row in &starts {
            for &column in &starts {
                regions.push((column, row, width));
            }
        }
    }
    regions
}

/// How a photo is shown to the network before its feature map is pooled.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum View {
    /// As search shows it.
    Native,
    /// Mirrored left to right.
    Mirrored,
    /// At this multiple of the backbone's input size.
    Scaled(f32),
}

const NATIVE: View = View::Native;
const MIRRORED: View = View::Mirrored;
const SMALLER: View = View::Scaled(std::f32::consts::FRAC_1_SQRT_2);
const LARGER: View = View::Scaled(std::f32::consts::SQRT_2);

/// The views [`DESCRIPTORS`] use, each computed once per photo.
pub const VIEWS: [View; 4] = [NATIVE, MIRRORED, SMALLER, LARGER];

/// A photo's vector: its feature map pooled one way in each of some [`VIEWS`], the unit vectors
/// summed (multi-scale and flipped queries as Radenović et al. and Tolias et al. combine them).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Descriptor {
    pub pooling: Pooling,
    /// Some of [`VIEWS`].
    pub views: &'static [View],
    /// The weight of the ImageNet classifier's opinion of the photo ([`class_signature`]) set
    /// beside the pooled vector; none: the pooled vector alone.
    pub classes: Option<f32>,
}

impl Descriptor {
    pub fn name(&self) -> String {
        let views: Vec<String> = self
            .views
            .iter()
            .map(|view| match view {
                View::Native => "1".to_string(),
                View::Mirrored => "mirrored".into(),
                View::Scaled(scale) => format!("{scale:.2}"),
            })
            .collect();
        let pooled = match self.views {
            [View::Native] => self.pooling.name(),
            _ => format!("{}, views {}", self.pooling.name(), views.join(" + ")),
        };
        match self.classes {
            None => pooled,
            Some(weight) => format!("{pooled} + ImageNet classes ×{weight}"),
        }
    }

    /// The descriptor from `pooled[v][p]`: the photo in view `VIEWS[v]` pooled the
    /// `POOLINGS[p]` way, and `classes[v]`, its [`class_signature`] in that view; unit length.
    pub fn of(&self, pooled: &[Vec<Vec<f32>>], classes: &[Vec<f32>]) -> Vec<f32> {
        let p = POOLINGS
            .iter()
            .position(|&pooling| pooling == self.pooling)
            .expect("a descriptor pools one of POOLINGS' ways");
        let sum = self.summed_over_views(|v| &pooled[v][p]);
        let Some(weight) = self.classes else {
            return unit(&sum);
        };
        let signature = self.summed_over_views(|v| &classes[v]);
        let mut both = unit(&sum);
        both.extend(unit(&signature).iter().map(|x| weight * x));
        unit(&both)
    }

    /// The sum of `of_view(v)` over this descriptor's views, `v` a view's index in [`VIEWS`].
    fn summed_over_views<'a>(&self, of_view: impl Fn(usize) -> &'a [f32]) -> Vec<f32> {
        let mut sum: Vec<f32> = Vec::new();
        for view in self.views {
            let v = VIEWS
                .iter()
                .position(|known| known == view)
                .expect("a descriptor's views are VIEWS");
            let vector = of_view(v);
            sum.resize(vector.len(), 0.0);
            sum.iter_mut().zip(vector).for_each(|(s, x)| *s += x);
        }
        sum
    }
}

/// The ImageNet classifier's opinion of a photo as a unit vector: the square roots of its class
/// probabilities, so that the cosine of two is the Bhattacharyya coefficient of their
/// distributions.
pub fn class_signature(logits: &[f32]) -> Vec<f32> {
    let top = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let odds: Vec<f32> = logits.iter().map(|l| (l - top).exp()).collect();
    let total: f32 = odds.iter().sum();
    odds.iter().map(|o| (o / total).sqrt()).collect()
}

/// Every descriptor `eval descriptors` compares: each pooling of the photo as search shows it,
/// then the photo mirrored and at 1/√2 and √2 of the input size, then the average beside the
/// ImageNet classifier's opinion at four weights.
pub const DESCRIPTORS: [Descriptor; 15] = [
    Descriptor {
        pooling: Pooling::Average,
        views: &[NATIVE],
        classes: None,
    },
    Descriptor {
        pooling: Pooling::Gem(2.0),
        views: &[NATIVE],
        classes: None,
    },
    Descriptor {
        pooling: Pooling::Gem(3.0),
        views: &[NATIVE],
        classes: None,
    },
    Descriptor {
        pooling: Pooling::Max,
        views: &[NATIVE],
        classes: None,
    },
    Descriptor {
        pooling: Pooling::Rmac(3),
        views: &[NATIVE],
        classes: None,
    },
    Descriptor {
        pooling: Pooling::Average,
        views: &[NATIVE, MIRRORED],
        classes: None,
    },
    Descriptor {
        pooling: Pooling::Average,
        views: &[NATIVE, LARGER],
        classes: None,
    },
    Descriptor {
        pooling: Pooling::Average,
        views: &[SMALLER, NATIVE, LARGER],
        classes: None,
    },
    Descriptor {
        pooling: Pooling::Gem(3.0),
        views: &[SMALLER, NATIVE, LARGER],
        classes: None,
    },
    Descriptor {
        pooling: Pooling::Rmac(3),
        views: &[NATIVE, LARGER],
        classes: None,
    },
    Descriptor {
        pooling: Pooling::Rmac(3),
        views: &[SMALLER, NATIVE, LARGER],
        classes: None,
    },
    Descriptor {
        pooling: Pooling::Average,
        views: &[NATIVE],
        classes: Some(0.5),
    },
    Descriptor {
        pooling: Pooling::Average,
        views: &[NATIVE],
        classes: Some(1.0),
    },
    Descriptor {
        pooling: Pooling::Average,
        views: &[NATIVE],
        classes: Some(2.0),
    },
    Descriptor {
        pooling: Pooling::Average,
        views: &[NATIVE],
        classes: Some(10.0),
    },
];

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

/// k-reciprocal re-ranking (Zhong et al., CVPR 2017), with the gallery's neighbourhoods
/// computed once and a query joining them as it is asked: the distance becomes a blend of the
/// Jaccard distance between the two photos' k-reciprocal neighbourhoods and the original one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Reciprocal {
    /// Neighbours that must hold each other among their k1 nearest.
    pub k1: usize,
    /// Neighbourhoods averaged over this many nearest (local query expansion).
    pub k2: usize,
    /// The original distance's weight in the blend.
    pub lambda: f32,
}

/// A gallery's k-reciprocal neighbourhoods, for re-ranking queries against it.
pub struct ReciprocalGallery {
    rows: Vec<Vec<f32>>,
    setting: Reciprocal,
    /// Each row's k1 + 1 nearest rows (itself first) and their distances.
    nearest: Vec<Vec<(usize, f32)>>,
    /// Each row's neighbourhood weights over the gallery, expanded over its k2 nearest.
    weights: Vec<Vec<f32>>,
}

/// The distance of unit vectors whose cosine is `cosine`, over 0..=1.
fn distance(cosine: f32) -> f32 {
    ((1.0 - cosine) / 2.0).clamp(0.0, 1.0)
}

impl ReciprocalGallery {
    pub fn fit(rows: &[Vec<f32>], setting: Reciprocal) -> Self {
        let n = rows.len();
        let nearest: Vec<Vec<(usize, f32)>> = rows
            .par_iter()
            .enumerate()
            .map(|(i, row)| {
                let mut all: Vec<(usize, f32)> = rows
                    .iter()
                    .enumerate()
                    .map(|(j, other)| (j, distance(dot(row, other))))
                    .collect();
                all.sort_by(|a, b| a.1.total_cmp(&b.1).then((a.0 != i).cmp(&(b.0 != i))));
                all.truncate(setting.k1 + 1);
                all
            })
            .collect();
        let raw: Vec<Vec<f32>> = (0..n)
            .into_par_iter()
            .map(|i| {
                let chosen = expanded_reciprocal(reciprocal_within(&nearest, i, setting.k1), |c| {
                    reciprocal_within(&nearest, c, setting.k1 / 2)
                });
                let distances: Vec<(usize, f32)> =
                    chosen.iter().map(|&j| (j, distance(dot(&rows[i], &rows[j])))).collect();
                neighbourhood(n, &distances)
            })
            .collect();
        let weights = (0..n)
            .into_par_iter()
            .map(|i| mean_rows(&raw, nearest[i].iter().take(setting.k2).map(|&(j, _)| j), n))
            .collect();
        Self {
            rows: rows.to_vec(),
            setting,
            nearest,
            weights,
        }
    }

    /// `query`'s likeness to each gallery row after re-ranking (the negated blended distance).
    pub fn scores(&self, query: &[f32]) -> Vec<f32> {
        let n = self.rows.len();
        let k1 = self.setting.k1;
        let original: Vec<f32> = self.rows.iter().map(|row| distance(dot(query, row))).collect();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| original[a].total_cmp(&original[b]));
        // A gallery row takes the query among its k1 nearest when the query is nearer than its k1-th.
        let holds_query = |j: usize| self.nearest[j].last().is_some_and(|&(_, d)| original[j] <= d);
        let mutual: Vec<usize> = order.iter().take(k1).copied().filter(|&j| holds_query(j)).collect();
        let chosen = expanded_reciprocal(mutual, |c| reciprocal_within(&self.nearest, c, k1 / 2));
        let distances: Vec<(usize, f32)> = chosen.iter().map(|&j| (j, original[j])).collect();
        let mut expanded = neighbourhood(n, &distances);
        let around = order.iter().take(self.setting.k2.saturating_sub(1));
        for &j in around.clone() {
            expanded.iter_mut().zip(&self.weights[j]).for_each(|(e, w)| *e += w);
        }
        let count = 1 + around.count();
        expanded.iter_mut().for_each(|e| *e /= count as f32);
        let support: Vec<usize> = (0..n).filter(|&j| expanded[j] > 0.0).collect();
        let lambda = self.setting.lambda;
        (0..n)
            .map(|g| {
                let shared: f32 = support.iter().map(|&j| expanded[j].min(self.weights[g][j])).sum();
                let jaccard = 1.0 - shared / (2.0 - shared).max(f32::MIN_POSITIVE);
                -((1.0 - lambda) * jaccard + lambda * original[g])
            })
            .collect()
    }
}

/// The rows among row `i`'s `k` nearest (itself included) that hold `i` among their own `k`
/// nearest, from each row's nearest rows, itself first.
fn reciprocal_within(nearest: &[Vec<(usize, f32)>], i: usize, k: usize) -> Vec<usize> {
    let first = |row: usize| &nearest[row][..(k + 1).min(nearest[row].len())];
    first(i)
        .iter()
        .map(|&(j, _)| j)
        .filter(|&j| first(j).iter().any(|&(m, _)| m == i))
        .collect()
}

/// `mutual` grown by each member's own smaller reciprocal set that mostly (over two thirds)
/// lies inside `mutual` already.
fn expanded_reciprocal(mutual: Vec<usize>, smaller: impl Fn(usize) -> Vec<usize>) -> Vec<usize> {
    let mut chosen = mutual.clone();
    for &c in &mutual {
        let candidate = smaller(c);
        let inside = candidate.iter().filter(|j| mutual.contains(j)).count();
        if 3 * inside > 2 * candidate.len() {
            chosen.extend(candidate);
        }
    }
    chosen.sort_unstable();
    chosen.dedup();
    chosen
}

/// Weights over `n` gallery rows: `exp(-distance)` on the chosen rows, summing to 1.
fn neighbourhood(n: usize, chosen: &[(usize, f32)]) -> Vec<f32> {
    let mut weights = vec![0.0f32; n];
    let total: f32 = chosen.iter().map(|&(_, d)| (-d).exp()).sum();
    for &(j, d) in chosen {
        weights[j] = (-d).exp() / total;
    }
    weights
}

/// The mean of `rows` at `which`, `n` wide.
fn mean_rows(rows: &[Vec<f32>], which: impl Iterator<Item = usize>, n: usize) -> Vec<f32> {
    let mut sum = vec![0.0f32; n];
    let mut count = 0;
    for j in which {
        sum.iter_mut().zip(&rows[j]).for_each(|(s, x)| *s += x);
        count += 1;
    }
    sum.iter_mut().for_each(|s| *s /= count.max(1) as f32);
    sum
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
    label_recall_by(queries.len(), query_labels, gallery_labels, |q| {
        gallery.iter().map(|row| dot(&queries[q], row)).collect()
    })
}

/// [`label_recall`] over any likeness: `scores(q)` is query `q`'s likeness to each gallery row.
pub fn label_recall_by(
    queries: usize,
    query_labels: &[usize],
    gallery_labels: &[usize],
    scores: impl Fn(usize) -> Vec<f32> + Sync,
) -> LabelRecall {
    let labels = gallery_labels.iter().max().map_or(0, |m| m + 1);
    let ranks: Vec<usize> = (0..queries)
        .into_par_iter()
        .zip(query_labels)
        .map(|(query, &own)| {
            let mut best = vec![f32::NEG_INFINITY; labels];
            for (score, &label) in scores(query).into_iter().zip(gallery_labels) {
                best[label] = best[label].max(score);
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
pub const POOLINGS: [Pooling; 5] = [
    Pooling::Average,
    Pooling::Gem(2.0),
    Pooling::Gem(3.0),
    Pooling::Max,
    Pooling::Rmac(3),
];

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
    /// Re-ranked by k-reciprocal neighbourhoods.
    pub reranked: Option<Reciprocal>,
}

impl Variant {
    pub const ALL: [Self; 10] = [
        Self::new(None, None, None),
        Self::new(Some(256), None, None),
        Self::new(Some(512), None, None),
        Self::new(None, None, Some(2)),
        Self::new(None, None, Some(5)),
        Self::new(None, Some(2), None),
        Self::new(None, Some(2), Some(2)),
        Self::new(Some(512), Some(2), Some(2)),
        Self::reranked(20, 6),
        Self::reranked(6, 3),
    ];

    const fn new(whitened: Option<usize>, augmented: Option<usize>, expanded: Option<usize>) -> Self {
        Self {
            whitened,
            augmented,
            expanded,
            reranked: None,
        }
    }

    /// k-reciprocal re-ranking with the published blend (λ = 0.3).
    const fn reranked(k1: usize, k2: usize) -> Self {
        Self {
            reranked: Some(Reciprocal { k1, k2, lambda: 0.3 }),
            ..Self::new(None, None, None)
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
        if let Some(r) = self.reranked {
            parts.push(format!(
                "k-reciprocal re-ranked (k1={}, k2={}, λ={})",
                r.k1, r.k2, r.lambda
            ));
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
            let recall = match variant.reranked {
                Some(setting) => {
                    let reranking = ReciprocalGallery::fit(&gallery, setting);
                    label_recall_by(queries.len(), set.query_labels, set.gallery_labels, |q| {
                        reranking.scores(&queries[q])
                    })
                }
                None => label_recall(&queries, set.query_labels, &gallery, set.gallery_labels),
            };
            (variant, recall)
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
    fn rmac_regions_cover_the_map_at_each_scale() {
        let regions = rmac_regions(8, 3);
        assert_eq!(regions.len(), 1 + 4 + 9);
        assert_eq!(regions[0], (0, 0, 8));
        assert_eq!(&regions[1..5], &[(0, 0, 5), (3, 0, 5), (0, 3, 5), (3, 3, 5)]);
        let third: Vec<usize> = regions[5..].iter().map(|&(column, _, _)| column).collect();
        assert_eq!(third, [0, 2, 4, 0, 2, 4, 0, 2, 4]);
        assert!(regions.iter().all(|&(c, r, w)| c + w <= 8 && r + w <= 8));
        // A 1 × 1 map is one region at every scale.
        assert_eq!(rmac_regions(1, 3), vec![(0, 0, 1); 14]);
    }

    #[test]
    fn rmac_sums_the_unit_maxima_of_its_regions() {
        // A 2 × 2 map of two channels: one level is the map's MAC made unit length.
        let cells = [3.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0];
        assert_eq!(Pooling::Rmac(1).pool(&cells, 2), vec![0.6, 0.8]);
        // At level 2 each cell is a region of its own (width 2·2/3 rounds to 1).
        let two = Pooling::Rmac(2).pool(&cells, 2);
        assert!((two[0] - 1.6).abs() < 1e-6 && (two[1] - 1.8).abs() < 1e-6, "{two:?}");
    }

    #[test]
    fn a_descriptor_sums_its_views_unit_vectors() {
        // Two views, each pooled every one of POOLINGS' ways (here all the same).
        let pooled = vec![
            vec![vec![1.0, 0.0]; POOLINGS.len()],
            vec![vec![0.0, 1.0]; POOLINGS.len()],
        ];
        let classes = vec![vec![0.6, 0.8], vec![0.8, 0.6]];
        let one = Descriptor {
            pooling: Pooling::Max,
            views: &[NATIVE],
            classes: None,
        };
        assert_eq!(one.of(&pooled, &classes), vec![1.0, 0.0]);
        let both = Descriptor {
            pooling: Pooling::Rmac(3),
            views: &[NATIVE, MIRRORED],
            classes: None,
        };
        let half = std::f32::consts::FRAC_1_SQRT_2;
        let summed = both.of(&pooled, &classes);
        assert_eq!(summed.len(), 2);
        assert!(summed.iter().all(|x| (x - half).abs() < 1e-6), "{summed:?}");
        assert_eq!(
            DESCRIPTORS[0].name(),
            Pooling::Average.name(),
            "the backbone's own vector first"
        );
    }

    #[test]
    fn class_signatures_sit_beside_the_pooled_vector_by_their_weight() {
        // Probabilities 1/4 and 3/4.
        let signature = class_signature(&[0.0, 3.0f32.ln()]);
        assert!((signature[0] - 0.5).abs() < 1e-6 && (signature[1] - 0.75f32.sqrt()).abs() < 1e-6);
        let pooled = vec![vec![vec![1.0, 0.0]; POOLINGS.len()]; VIEWS.len()];
        let classes = vec![vec![0.0, 2.0]; VIEWS.len()];
        let beside = |weight: f32| Descriptor {
            pooling: Pooling::Average,
            views: &[NATIVE],
            classes: Some(weight),
        };
        let half = std::f32::consts::FRAC_1_SQRT_2;
        let even = beside(1.0).of(&pooled, &classes);
        assert!(
            even.iter()
                .zip([half, 0.0, 0.0, half])
                .all(|(a, b)| (a - b).abs() < 1e-6),
            "{even:?}"
        );
        let heavy = beside(3.0).of(&pooled, &classes);
        assert!((heavy[3] / heavy[0] - 3.0).abs() < 1e-5, "{heavy:?}");
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
    fn reciprocal_neighbours_keep_a_query_with_its_own_group() {
        let mut rng = fastrand::Rng::with_seed(5);
        let mut near = |axis: usize| {
            let mut v = vec![0.1 * rng.f32(), 0.1 * rng.f32(), 0.1 * rng.f32()];
            v[axis] = 1.0;
            unit(&v)
        };
        let gallery: Vec<Vec<f32>> = (0..10).map(|i| near(i / 5)).collect();
        let reranking = ReciprocalGallery::fit(
            &gallery,
            Reciprocal {
                k1: 4,
                k2: 2,
                lambda: 0.3,
            },
        );
        let scores = reranking.scores(&near(0));
        assert!(scores.iter().all(|s| s.is_finite() && *s <= 0.0), "{scores:?}");
        let worst_own = scores[..5].iter().copied().fold(f32::INFINITY, f32::min);
        let best_other = scores[5..].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert!(worst_own > best_other, "{scores:?}");
        // Its own group shares its neighbourhood, so its Jaccard part is below one.
        assert!(worst_own > -0.99, "{scores:?}");
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

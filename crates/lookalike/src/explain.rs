//! Why a photo matched a product: where in each photo the likeness comes from.
//!
//! The backbone's vector is the mean of its last feature map's cells, so the cosine of two
//! photos' vectors `q = mean(Q_i)` and `g = mean(G_j)` is exactly
//! `Σ_i Q_i·g / (N |q| |g|)` — a share per query cell — and likewise `Σ_j q·G_j / (M |q| |g|)`
//! per matched cell (Stylianou, Souvenir and Pless, WACV 2019: the row and column sums of the
//! cell-pair matrix). The cells are ReLU6 outputs, never negative, so no share is either and
//! the shares add up to the cosine. A heat map lays those shares over the whole photo; the box
//! is the hot blob around the hottest cell. With a projection head or a colour signature the
//! catalogue's score is not the backbone's cosine; the shares then still say where the backbone
//! features that the head or the colour read come from.

use crate::error::Result;
use crate::image::{Photo, Preprocessing};
use crate::index::kernels::dot;
use crate::index::local_cells::{cells_of_planes, QueryCells, StoredCells};
use crate::model::{Embedder, ImageEmbedding};
use crate::types::PhotoBox;

/// Heat maps have at most this many cells on a side (a feature cell is a few of them).
pub const MAX_HEATMAP_SIDE: usize = 48;

/// A cell belongs to the hot blob when it holds at least this share of the hottest cell's heat.
pub const HOT_SHARE: f32 = 0.5;

/// The square of a photo (in its own pixels; it may reach past the photo's edges) that the
/// network's input covers: the centre crop of the whole photo, or a box centred on white.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeenSquare {
    pub x0: f32,
    pub y0: f32,
    pub side: f32,
}

impl SeenSquare {
    /// What the network reads of `part` (the photo's pixels `x0, y0, x1, y1`, all of it when
    /// `None`) of a `width` × `height` photo: the whole photo is cut to its centre square, a box is
    /// centred on a white square of its longer side, and either is then cut to its centre by
    /// the crop's share of the resize ([`Preprocessing`]).
    pub fn of(width: u32, height: u32, part: Option<(u32, u32, u32, u32)>, preprocessing: &Preprocessing) -> Self {
        let kept = preprocessing.crop as f32 / preprocessing.resize_shorter as f32;
        let ((x0, y0, x1, y1), square) = match part {
            None => ((0, 0, width, height), width.min(height)),
            Some((x0, y0, x1, y1)) => ((x0, y0, x1, y1), (x1 - x0).max(y1 - y0)),
        };
        let side = square as f32 * kept;
        let (cx, cy) = ((x0 + x1) as f32 / 2.0, (y0 + y1) as f32 / 2.0);
        Self {
            x0: cx - side / 2.0,
            y0: cy - side / 2.0,
            side,
        }
    }
}

/// One photo's last feature map, cell by cell, and where it lies in the photo.
#[derive(Debug, Clone)]
pub struct FeatureMap {
    /// `side × side` rows of `channels`, row-major (the cell at row `r`, column `c` is row `r·side + c`).
    pub cells: Vec<f32>,
    pub side: usize,
    pub channels: usize,
    pub seen: SeenSquare,
    /// The photo's width and height in its own pixels.
    pub photo: (u32, u32),
}

impl FeatureMap {
    /// A map from the network's NCHW output for one image (`channels` planes of `side × side`).
    pub fn from_planes(planes: &[f32], channels: usize, seen: SeenSquare, photo: (u32, u32)) -> Self {
        let area = planes.len() / channels.max(1);
        let side = (area as f64).sqrt().round() as usize;
        assert_eq!(side * side * channels, planes.len(), "a square feature map");
        Self {
            cells: cells_of_planes(planes, channels),
            side,
            channels,
            seen,
            photo,
        }
    }

    /// The cells as a query part's local features ([`crate::index::local_cells`]).
    pub fn query_cells(&self) -> QueryCells {
        QueryCells::of(&self.cells, self.channels)
    }

    /// The cells as a catalogue photo keeps them ([`crate::index::local_cells`]).
    pub fn stored_cells(&self) -> StoredCells {
        StoredCells::of(&self.cells, self.channels)
    }

    /// The mean of the cells: the backbone's pooled vector.
    pub fn pooled(&self) -> Vec<f32> {
        let mut sum = vec![0.0f32; self.channels];
        for cell in self.cells.chunks_exact(self.channels) {
            for (s, v) in sum.iter_mut().zip(cell) {
                *s += v;
            }
        }
        let count = (self.side * self.side).max(1) as f32;
        sum.iter_mut().for_each(|s| *s /= count);
        sum
    }

    /// Each cell's share of the cosine between this map's pooled vector and `other` (see the
    /// module's note); zeros when either vector is zero. Never negative, never NaN.
    pub fn shares(&self, other: &[f32]) -> Vec<f32> {
        if other.len() != self.channels {
            return vec![0.0; self.side * self.side];
        }
        let own = self.pooled();
        let norms = norm(&own) * norm(other) * (self.side * self.side) as f32;
        self.cells
            .chunks_exact(self.channels)
            .map(|cell| {
                let share = dot(cell, other) / norms;
                if share.is_finite() {
                    share.max(0.0)
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// The photo's pixels a cell covers (row, column), not clipped to the photo.
    fn cell_rect(&self, row: usize, column: usize) -> [f32; 4] {
        let size = self.seen.side / self.side as f32;
        let (x0, y0) = (self.seen.x0 + column as f32 * size, self.seen.y0 + row as f32 * size);
        [x0, y0, x0 + size, y0 + size]
    }

    /// `shares` spread over the whole photo: a grid about a feature cell fine (at most
    /// [`MAX_HEATMAP_SIDE`] a side), each grid cell taking the shares of the feature cells over it
    /// by the area they have in common. What falls outside the photo (the white around a box)
    /// is dropped.
    pub fn heatmap(&self, shares: &[f32]) -> Heatmap {
        let (w, h) = (self.photo.0.max(1) as f32, self.photo.1.max(1) as f32);
        let cell = (self.seen.side / self.side as f32).max(1.0);
        let cells_over = |length: f32| ((length / cell).round() as usize).clamp(1, MAX_HEATMAP_SIDE);
        let (width, height) = (cells_over(w), cells_over(h));
        let (gw, gh) = (w / width as f32, h / height as f32);
        let mut values = vec![0.0f32; width * height];
        let area = cell * cell;
        for (i, &share) in shares.iter().enumerate().filter(|(_, s)| **s > 0.0) {
            let [x0, y0, x1, y1] = self.cell_rect(i / self.side, i % self.side);
            let columns = grid_span(x0, x1, gw, width);
            for row in grid_span(y0, y1, gh, height) {
                let dy = overlap(y0, y1, row as f32 * gh, (row + 1) as f32 * gh);
                for column in columns.clone() {
                    let dx = overlap(x0, x1, column as f32 * gw, (column + 1) as f32 * gw);
                    values[row * width + column] += share * dx * dy / area;
                }
            }
        }
        Heatmap { width, height, values }
    }

    /// The part of the photo that carried the match: the hottest cell and the cells joined to
    /// it that hold at least [`HOT_SHARE`] of its heat, clipped to the photo.
    pub fn hot_box(&self, shares: &[f32]) -> PhotoBox {
        let hottest = (0..shares.len()).fold(0, |best, i| if shares[i] > shares[best] { i } else { best });
        let threshold = shares.get(hottest).copied().unwrap_or(0.0) * HOT_SHARE;
        let mut inside = vec![false; shares.len()];
        let mut stack = vec![hottest];
        let (mut rows, mut columns) = ((usize::MAX, 0), (usize::MAX, 0));
        while let Some(i) = stack.pop() {
            if i >= shares.len() || inside[i] {
                continue;
            }
            inside[i] = true;
            let (row, column) = (i / self.side, i % self.side);
            rows = (rows.0.min(row), rows.1.max(row));
            columns = (columns.0.min(column), columns.1.max(column));
            let neighbours = [
                (row > 0).then(|| i - self.side),
                (row + 1 < self.side).then_some(i + self.side),
                (column > 0).then(|| i - 1),
                (column + 1 < self.side).then_some(i + 1),
            ];
            stack.extend(neighbours.into_iter().flatten().filter(|&n| shares[n] >= threshold));
        }
        let [x0, y0, ..] = self.cell_rect(rows.0, columns.0);
        let [.., x1, y1] = self.cell_rect(rows.1, columns.1);
        let (w, h) = (self.photo.0 as f32, self.photo.1 as f32);
        let clipped = PhotoBox {
            x0: x0.clamp(0.0, w),
            y0: y0.clamp(0.0, h),
            x1: x1.clamp(0.0, w),
            y1: y1.clamp(0.0, h),
        };
        if clipped.x0 < clipped.x1 && clipped.y0 < clipped.y1 {
            clipped
        } else {
            PhotoBox {
                x0: 0.0,
                y0: 0.0,
                x1: w.max(1.0),
                y1: h.max(1.0),
            }
        }
    }
}

/// The last feature map and the vector of each of `parts` of `photo` (`None`: all of it), in one
/// batch through `explainer` (an embedder [`Embedder::with_feature_map`] made).
pub fn feature_maps(
    explainer: &Embedder,
    photo: &Photo,
    parts: &[Option<&PhotoBox>],
) -> Result<Vec<(FeatureMap, ImageEmbedding)>> {
    let items: Vec<(&Photo, Option<&PhotoBox>)> = parts.iter().map(|part| (photo, *part)).collect();
    feature_maps_of(explainer, &items)
}

/// [`feature_maps`] of parts of several photos (`(photo, None)`: all of it), in one batch.
pub fn feature_maps_of(
    explainer: &Embedder,
    items: &[(&Photo, Option<&PhotoBox>)],
) -> Result<Vec<(FeatureMap, ImageEmbedding)>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let pre = &explainer.preprocessing;
    let mut tensor = Vec::with_capacity(items.len() * pre.tensor_len());
    for (photo, part) in items {
        tensor.extend(photo.batch(pre, &[*part])?);
    }
    let out = explainer.run(&tensor, items.len())?;
    let per_image = out.block_input.len() / items.len();
    let channels = explainer.backbone_dimension();
    let mut maps = Vec::with_capacity(items.len());
    for (i, (photo, part)) in items.iter().enumerate() {
        let area = part.map(|b| b.within(photo.width, photo.height)).transpose()?;
        let seen = SeenSquare::of(photo.width, photo.height, area, pre);
        let planes = &out.block_input[i * per_image..(i + 1) * per_image];
        let map = FeatureMap::from_planes(planes, channels, seen, (photo.width, photo.height));
        maps.push((map, out.image(i)));
    }
    Ok(maps)
}

/// Which of `parts` and which of `views` are most alike by cosine: `(part, view)`, the first of
/// each winning ties (`(0, 0)` when none compare).
pub fn most_alike_pair(parts: &[&[f32]], views: &[&[f32]]) -> (usize, usize) {
    let mut best = (f32::MIN, 0, 0);
    for (p, part) in parts.iter().enumerate() {
        for (v, view) in views.iter().enumerate() {
            let score = cosine(part, view).unwrap_or(f32::MIN);
            if score > best.0 {
                best = (score, p, v);
            }
        }
    }
    (best.1, best.2)
}

/// Grid cells (of `size`, `count` of them) that `[start, end)` touches.
fn grid_span(start: f32, end: f32, size: f32, count: usize) -> std::ops::Range<usize> {
    let first = (start / size).floor().max(0.0) as usize;
    let last = ((end / size).ceil().max(0.0) as usize).min(count);
    first.min(last)..last
}

fn overlap(a0: f32, a1: f32, b0: f32, b1: f32) -> f32 {
    (a1.min(b1) - a0.max(b0)).max(0.0)
}

fn norm(a: &[f32]) -> f32 {
    dot(a, a).sqrt()
}

/// The cosine of `a` and `b`; `None` when either is zero or they differ in length.
pub fn cosine(a: &[f32], b: &[f32]) -> Option<f32> {
    if a.len() != b.len() {
        return None;
    }
    Some(dot(a, b) / (norm(a) * norm(b))).filter(|c| c.is_finite())
}

/// Shares of a match laid over a whole photo: cell (row, column) spans `1/width` of the photo's
/// width and `1/height` of its height; the values are never negative and add up to the part of
/// the cosine that the photo's pixels carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    pub width: usize,
    pub height: usize,
    /// `width × height`, row-major.
    pub values: Vec<f32>,
}

impl Heatmap {
    /// Where the heat lies in a `width` × `height` photo: its centre of mass and its standard
    /// deviation across and down, in pixels (`None` when there is none).
    pub fn spread(&self, width: u32, height: u32) -> Option<[f32; 4]> {
        let total: f32 = self.values.iter().sum();
        if total.is_nan() || total <= 0.0 {
            return None;
        }
        let (cell_w, cell_h) = (width as f32 / self.width as f32, height as f32 / self.height as f32);
        let centre = |i: usize| {
            (
                ((i % self.width) as f32 + 0.5) * cell_w,
                ((i / self.width) as f32 + 0.5) * cell_h,
            )
        };
        let (mut cx, mut cy) = (0.0, 0.0);
        for (i, v) in self.values.iter().enumerate() {
            let (x, y) = centre(i);
            (cx, cy) = (cx + v * x, cy + v * y);
        }
        (cx, cy) = (cx / total, cy / total);
        let (mut vx, mut vy) = (0.0, 0.0);
        for (i, v) in self.values.iter().enumerate() {
            let (x, y) = centre(i);
            (vx, vy) = (vx + v * (x - cx).powi(2), vy + v * (y - cy).powi(2));
        }
        Some([cx, cy, (vx / total).sqrt(), (vy / total).sqrt()])
    }

    /// The centre of the hottest cell, in pixels of a `width` × `height` photo.
    pub fn hottest_point(&self, width: u32, height: u32) -> (f32, f32) {
        let hottest =
            (0..self.values.len()).fold(0, |best, i| if self.values[i] > self.values[best] { i } else { best });
        let (row, column) = (hottest / self.width.max(1), hottest % self.width.max(1));
        (
            (column as f32 + 0.5) * width as f32 / self.width as f32,
            (row as f32 + 0.5) * height as f32 / self.height as f32,
        )
    }
}

/// How a query photo matches one product's photo.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub query_heatmap: Heatmap,
    pub match_heatmap: Heatmap,
    /// The parts of each photo that carried the match, in its own pixels.
    pub query_box: PhotoBox,
    pub match_box: PhotoBox,
    /// The product's photo that was matched (0: the main one).
    pub matched_image: usize,
    /// The cosine of the two pooled backbone vectors the shares add up to (the pixels' part).
    pub backbone_cosine: f32,
    /// The two photos' sizes in their own pixels (what the boxes count in).
    pub query_photo: (u32, u32),
    pub match_photo: (u32, u32),
}

/// How `query` matches `matched` (the product's photo number `matched_image`).
pub fn explain(query: &FeatureMap, matched: &FeatureMap, matched_image: usize) -> Result<Explanation> {
    if query.channels != matched.channels {
        return Err(crate::error::Error::Internal(anyhow::anyhow!(
            "feature maps of {} and {} channels cannot be compared",
            query.channels,
            matched.channels
        )));
    }
    let (q, g) = (query.pooled(), matched.pooled());
    let query_shares = query.shares(&g);
    let match_shares = matched.shares(&q);
    Ok(Explanation {
        query_heatmap: query.heatmap(&query_shares),
        match_heatmap: matched.heatmap(&match_shares),
        query_box: query.hot_box(&query_shares),
        match_box: matched.hot_box(&match_shares),
        matched_image,
        backbone_cosine: cosine(&q, &g).unwrap_or(0.0),
        query_photo: query.photo,
        match_photo: matched.photo,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(side: usize, channels: usize, photo: (u32, u32), cell: impl Fn(usize, usize) -> f32) -> FeatureMap {
        let mut planes = vec![0.0; side * side * channels];
        for c in 0..channels {
            for i in 0..side * side {
                planes[c * side * side + i] = cell(i, c);
            }
        }
        let seen = SeenSquare {
            x0: 0.0,
            y0: 0.0,
            side: photo.0 as f32,
        };
        FeatureMap::from_planes(&planes, channels, seen, photo)
    }

    #[test]
    fn shares_add_up_to_the_pooled_cosine_and_cover_the_photo() {
        let mut rng = fastrand::Rng::with_seed(3);
        let values: Vec<f32> = (0..4 * 4 * 6).map(|_| rng.f32() * 6.0).collect();
        let query = map(4, 6, (100, 100), |i, c| values[i * 6 + c]);
        let other: Vec<f32> = (0..6).map(|_| rng.f32()).collect();
        let shares = query.shares(&other);
        let q = query.pooled();
        let cosine = super::cosine(&q, &other).unwrap();
        assert!((shares.iter().sum::<f32>() - cosine).abs() < 1e-5);
        let heat = query.heatmap(&shares);
        assert_eq!((heat.width, heat.height), (4, 4));
        assert!((heat.values.iter().sum::<f32>() - cosine).abs() < 1e-5);
        assert!(heat.values.iter().all(|v| v.is_finite() && *v >= 0.0));
    }

    #[test]
    fn the_hot_box_surrounds_the_cells_that_match() {
        // Cells of the left column carry channel 0 (what the other photo has), the rest channel 1.
        let query = map(4, 2, (400, 400), |i, c| f32::from(u8::from((i % 4 == 0) == (c == 0))));
        let shares = query.shares(&[1.0, 0.0]);
        let found = query.hot_box(&shares);
        assert_eq!([found.x0, found.y0, found.x1, found.y1], [0.0, 0.0, 100.0, 400.0]);
        let heat = query.heatmap(&shares);
        let (x, _) = heat.hottest_point(400, 400);
        assert!(x < 100.0);
    }

    #[test]
    fn the_seen_square_follows_the_crop_and_the_white_square() {
        let p = Preprocessing::for_input(224);
        let whole = SeenSquare::of(400, 200, None, &p);
        assert!((whole.side - 175.0).abs() < 1e-3 && (whole.x0 - 112.5).abs() < 1e-3);
        let tall = SeenSquare::of(400, 200, Some((0, 0, 100, 200)), &p);
        assert!((tall.side - 175.0).abs() < 1e-3 && (tall.x0 + 37.5).abs() < 1e-3);
        // A box's white beyond the photo falls outside the heat map: the shares there are dropped.
        let planes = vec![1.0; 4 * 4];
        let edge = FeatureMap::from_planes(&planes, 1, tall, (400, 200));
        let shares = edge.shares(&[1.0]);
        assert!(edge.heatmap(&shares).values.iter().sum::<f32>() < 1.0);
    }

    #[test]
    fn zero_vectors_give_zero_shares_not_nan() {
        let query = map(2, 3, (10, 10), |_, _| 0.0);
        let shares = query.shares(&[0.0, 0.0, 0.0]);
        assert!(shares.iter().all(|s| *s == 0.0));
        let found = query.hot_box(&shares);
        assert!(found.x0 < found.x1);
    }
}

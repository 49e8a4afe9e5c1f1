//! Finding the product in a shopper's photo: which parts of a photo are searched, and which of
//! them is kept. Pure decisions over boxes and scores, so that the front door ([`crate::shop`])
//! and the measurement ([`crate::scenes`], with a held-out photo left out of the scores) decide
//! the same way.
//!
//! A photo whose best catalogue match is close (a packshot, a product filling the frame) is
//! searched whole, as before and at the same cost. Below [`FIND_PRODUCT_BELOW`] the product is
//! small in a busy photo; 9 windows (3 × 3, each half the photo's width and height) are then
//! embedded as well, the [`NARROWED_CANDIDATES`] parts whose best matches score highest are
//! narrowed to where their likeness to that match lies ([`narrowed`]), and the narrowed part whose
//! best match scores highest is kept, when that match is close and beats the whole photo's
//! ([`part_beats_whole`]), and searched where it matches best, moved a little or not ([`shifted`]). The windows, the threshold and the narrowing were chosen
//! on `eval scenes --seed 7` (see README, "Photos from shoppers"); cells of the feature map ranked
//! by the same likeness found the product far less often than embedded windows.

use crate::explain::Heatmap;
use crate::types::PhotoBox;

/// The cosine of a photo's best catalogue match below which the product is looked for.
/// Clean held-out Luma photos (Lite1) score 0.68 at their 5th percentile and 0.93 at their
/// median; scenes of a product pasted onto a clothing photo score 0.66 at their 95th.
pub const FIND_PRODUCT_BELOW: f32 = 0.70;

/// Photos whose shorter side is under this many pixels are only searched whole: a window of
/// them would be a few pixels the network cannot read.
pub const SMALLEST_WINDOWED_SIDE: u32 = 64;

/// A query photo's pixels are reduced to this longer side before it is searched in parts: the
/// network reads 240 of a half.
pub const KEPT_PHOTO_SIDE: u32 = 1024;

/// The part searched in a busy photo is narrowed to the centre of its likeness to its best match
/// ± this many standard deviations of it (the heat map of [`crate::explain`]), and embedded
/// again. Chosen on `eval scenes --seed 7` among 1.25, 1.5, 1.75 σ, the hot box grown 1×–2×, the
/// window moved onto the heat's centre, a square, and narrowing twice (README, "Photos from
/// shoppers").
pub const NARROWED_SPREAD: f32 = 1.5;

/// The parts of a busy photo (the whole and its windows) whose best matches score highest are
/// narrowed, this many of them, and the narrowed part whose best match scores highest is
/// searched (`eval scenes --seed 7`: one 0.265 / 0.495, the best 2 0.296 / 0.541, the best 3
/// 0.316 / 0.566).
pub const NARROWED_CANDIDATES: usize = 3;

/// The narrowed part of a busy photo is searched instead of the whole photo only when its best
/// match scores at least this much more than the whole photo's best match, and at least
/// [`PART_SCORE_FLOOR`]. A part that finds the very product scores high (scenes of `eval scenes
/// --seed 7`: 0.72 at the median, whole photos 0.55); a part that only finds a product of the
/// same kind scores little more than the whole photo (clothing photos against Luma, `eval kinds`
/// on clothing-dataset-small's validation split: 0.56 against 0.52), and searching that part
/// loses precision@1 (0.605 whole, 0.465 always the part). Chosen on those two sets: margin 0,
/// 0.02, 0.04 × floor 0, 0.55–0.66 (README, "Photos from shoppers").
pub const PART_MARGIN: f32 = 0.04;

/// See [`PART_MARGIN`].
pub const PART_SCORE_FLOOR: f32 = 0.62;

/// Whether the part picked in a busy photo (best match `part_best`) is searched rather than the
/// whole photo (best match `whole_best`).
pub fn part_beats_whole(whole_best: f32, part_best: f32) -> bool {
    part_best >= PART_SCORE_FLOOR && part_best > whole_best + PART_MARGIN
}

/// The part kept in a busy photo is also tried moved by this share of its width left and right
/// and of its height up and down, and the one of the five whose best match scores highest is
/// searched: the narrowed part overlaps the product's true box by IoU 0.55 at the median, and
/// finds the product far more often where it overlaps more. Chosen on `eval scenes --seed 7`
/// (400 scenes, Recall@1: unmoved 0.320, 0.10 0.347, **0.15 0.362**, 0.25 0.357; seed 8, held
/// out: 0.345 → 0.380).
pub const SHIFT: f32 = 0.15;

/// The kept part `region` of a `width` × `height` photo moved by [`SHIFT`] in each of four
/// directions, each clipped to the photo.
pub fn shifted(region: &PhotoBox, width: u32, height: u32) -> Vec<PhotoBox> {
    let (dx, dy) = ((region.x1 - region.x0) * SHIFT, (region.y1 - region.y0) * SHIFT);
    [(dx, 0.0), (-dx, 0.0), (0.0, dy), (0.0, -dy)]
        .iter()
        .map(|&(dx, dy)| PhotoBox {
            x0: (region.x0 + dx).clamp(0.0, width as f32),
            y0: (region.y0 + dy).clamp(0.0, height as f32),
            x1: (region.x1 + dx).clamp(0.0, width as f32),
            y1: (region.y1 + dy).clamp(0.0, height as f32),
        })
        .filter(|moved| moved.x1 - moved.x0 >= 1.0 && moved.y1 - moved.y0 >= 1.0)
        .collect()
}

/// At most this many regions are returned by "shop the look".
pub const MAX_REGIONS: usize = 3;

/// "Shop the look" narrows and moves at most this many of a photo's windows (those
/// [`regions`] keeps of them) before keeping [`MAX_REGIONS`] of the parts they become: a window
/// beside a product, once narrowed and moved, often finds it better than the windows ranked
/// above it. Chosen on `eval scenes --seed 7 --singles 1 --pairs 100` (each product among the 5
/// best of a region around it: 3 windows 0.310, 4 0.380, **5 0.410**, all 9 0.420; held out,
/// `--singles 1`: seed 8, 100 pairs, 0.420 → 0.480; seed 9, 300 pairs, 0.417 → 0.477).
pub const REGION_CANDIDATES: usize = 5;

/// The windows searched when the product is looked for: 3 × 3, each half the photo's width
/// and height, a quarter apart; none for a photo too small to cut up.
pub fn search_windows(width: u32, height: u32) -> Vec<PhotoBox> {
    if width.min(height) < SMALLEST_WINDOWED_SIDE {
        return Vec::new();
    }
    let (w, h) = (width as f32 / 2.0, height as f32 / 2.0);
    let mut windows = Vec::with_capacity(9);
    for row in 0..3 {
        for column in 0..3 {
            let (x0, y0) = (w * column as f32 / 2.0, h * row as f32 / 2.0);
            windows.push(PhotoBox {
                x0,
                y0,
                x1: x0 + w,
                y1: y0 + h,
            });
        }
    }
    windows
}

/// The part of a `width` × `height` photo to search instead of a part whose likeness to its best
/// match is `heat` (see [`NARROWED_SPREAD`]); `None` when the heat says nothing (none, or a
/// point).
pub fn narrowed(heat: &Heatmap, width: u32, height: u32) -> Option<PhotoBox> {
    let [cx, cy, sx, sy] = heat.spread(width, height)?;
    let (w, h) = (width as f32, height as f32);
    let narrowed = PhotoBox {
        x0: (cx - NARROWED_SPREAD * sx).max(0.0),
        y0: (cy - NARROWED_SPREAD * sy).max(0.0),
        x1: (cx + NARROWED_SPREAD * sx).min(w),
        y1: (cy + NARROWED_SPREAD * sy).min(h),
    };
    (narrowed.x1 - narrowed.x0 >= 1.0 && narrowed.y1 - narrowed.y0 >= 1.0).then_some(narrowed)
}

/// Whether a photo whose best catalogue match scores `whole_best` is searched whole.
pub fn whole_is_enough(whole_best: f32) -> bool {
    whole_best >= FIND_PRODUCT_BELOW || whole_best.is_nan()
}

/// Which candidate is searched: the index of the highest best-match score (`scores[0]` is the
/// whole photo, which wins ties).
pub fn pick(scores: &[f32]) -> usize {
    let mut best = 0;
    for (i, &score) in scores.iter().enumerate().skip(1) {
        if score > scores[best] {
            best = i;
        }
    }
    best
}

/// The indices of the `n` highest `scores`, highest first (the earlier of equal ones first).
pub fn strongest(scores: &[f32], n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order.truncate(n);
    order
}

/// A part of a photo and its best catalogue match.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub region: PhotoBox,
    pub score: f32,
    /// The id of the product that matched best.
    pub best_product: String,
}

/// "Shop the look": the candidates kept as regions of their own, best first. A candidate is
/// kept when its best product is not already some kept region's and it overlaps no kept region
/// by half its union or more; at most `at_most`.
pub fn regions(candidates: &[Candidate], at_most: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| candidates[b].score.total_cmp(&candidates[a].score));
    let mut kept: Vec<usize> = Vec::new();
    for i in order {
        let candidate = &candidates[i];
        let distinct = kept.iter().all(|&k| {
            candidates[k].best_product != candidate.best_product
                && overlap(&candidates[k].region, &candidate.region) < 0.5
        });
        if distinct {
            kept.push(i);
            if kept.len() == at_most {
                break;
            }
        }
    }
    kept
}

/// Intersection over union of two boxes.
pub fn overlap(a: &PhotoBox, b: &PhotoBox) -> f32 {
    let w = (a.x1.min(b.x1) - a.x0.max(b.x0)).max(0.0);
    let h = (a.y1.min(b.y1) - a.y0.max(b.y0)).max(0.0);
    let area = |r: &PhotoBox| (r.x1 - r.x0) * (r.y1 - r.y0);
    let shared = w * h;
    let union = area(a) + area(b) - shared;
    if union > 0.0 {
        shared / union
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_part_is_moved_four_ways_within_the_photo() {
        let moved = shifted(&PhotoBox::new(0.0, 100.0, 100.0, 300.0).unwrap(), 400, 300);
        let corners = |b: &PhotoBox| [b.x0, b.y0, b.x1, b.y1];
        let expected = [
            [15.0, 100.0, 115.0, 300.0],
            // Clipped at the left and the bottom edges.
            [0.0, 100.0, 85.0, 300.0],
            [0.0, 130.0, 100.0, 300.0],
            [0.0, 70.0, 100.0, 270.0],
        ];
        assert_eq!(moved.len(), expected.len());
        for (got, want) in moved.iter().zip(expected) {
            // 0.15 has no exact binary form, so a corner may be off by a rounding step.
            let off = corners(got)
                .iter()
                .zip(want)
                .map(|(g, w)| (g - w).abs())
                .fold(0.0, f32::max);
            assert!(off < 1e-3, "{got:?} is not {want:?}");
        }
    }

    #[test]
    fn the_strongest_come_first_and_ties_keep_their_order() {
        assert_eq!(strongest(&[0.2, 0.5, 0.5, 0.1, 0.9], 3), vec![4, 1, 2]);
        assert_eq!(strongest(&[0.3], 3), vec![0]);
    }

    #[test]
    fn a_part_is_narrowed_to_where_its_heat_lies() {
        // A 10 × 10 grid over a 100 × 100 photo, warm only in the block of columns 6-7, rows 2-5.
        let values = (0..100)
            .map(|i| f32::from(u8::from((6..8).contains(&(i % 10)) && (2..6).contains(&(i / 10)))))
            .collect();
        let heat = Heatmap {
            width: 10,
            height: 10,
            values,
        };
        let found = narrowed(&heat, 100, 100).unwrap();
        assert!(found.x0 > 55.0 && found.x1 < 85.0, "{found:?}");
        assert!(found.y0 > 15.0 && found.y1 < 65.0 && found.y0 < 25.0, "{found:?}");
        let cold = Heatmap {
            width: 2,
            height: 2,
            values: vec![0.0; 4],
        };
        assert_eq!(narrowed(&cold, 100, 100), None);
    }

    #[test]
    fn nine_half_size_windows_cover_the_photo_and_small_photos_get_none() {
        let windows = search_windows(400, 300);
        assert_eq!(windows.len(), 9);
        assert_eq!(windows[0], PhotoBox::new(0.0, 0.0, 200.0, 150.0).unwrap());
        assert_eq!(windows[4], PhotoBox::new(100.0, 75.0, 300.0, 225.0).unwrap());
        assert_eq!(windows[8], PhotoBox::new(200.0, 150.0, 400.0, 300.0).unwrap());
        assert!(search_windows(1, 1).is_empty());
        assert!(search_windows(4000, 63).is_empty());
    }

    #[test]
    fn a_photo_close_enough_to_be_searched_whole_keeps_its_order_by_cosine() {
        assert_eq!(FIND_PRODUCT_BELOW, crate::index::category_vote::VOTE_BELOW);
    }

    #[test]
    fn the_whole_photo_wins_ties_and_a_close_match_is_searched_whole() {
        assert_eq!(pick(&[0.5, 0.5, 0.4]), 0);
        assert_eq!(pick(&[0.5, 0.4, 0.6]), 2);
        assert_eq!(pick(&[0.5]), 0);
        assert!(whole_is_enough(0.9));
        assert!(!whole_is_enough(0.5));
    }

    #[test]
    fn a_part_is_searched_only_when_it_finds_a_close_match_the_whole_photo_does_not() {
        // A part that found the very product.
        assert!(part_beats_whole(0.55, 0.72));
        // Only a little better than the whole photo: a product of the same kind.
        assert!(!part_beats_whole(0.55, 0.58));
        assert!(!part_beats_whole(0.60, 0.63));
        // Well above the whole photo, but no close match anywhere.
        assert!(!part_beats_whole(0.40, 0.60));
    }

    #[test]
    fn regions_are_distinct_products_in_distinct_places_best_first() {
        let boxed = |x0: f32, product: &str, score: f32| Candidate {
            region: PhotoBox::new(x0, 0.0, x0 + 100.0, 100.0).unwrap(),
            score,
            best_product: product.into(),
        };
        let candidates = [
            boxed(0.0, "a", 0.6),    // overlaps the best region
            boxed(10.0, "b", 0.7),   // the best
            boxed(300.0, "a", 0.65), // kept: "a" at 0 was dropped
            boxed(450.0, "c", 0.5),
            boxed(600.0, "b", 0.45), // the best region's product
            boxed(800.0, "d", 0.4),  // past the limit
        ];
        assert_eq!(regions(&candidates, MAX_REGIONS), vec![1, 2, 3]);
        assert_eq!(regions(&candidates, 9), vec![1, 2, 3, 5]);
        assert!(regions(&[], MAX_REGIONS).is_empty());
        let a = PhotoBox::new(0.0, 0.0, 10.0, 10.0).unwrap();
        let b = PhotoBox::new(5.0, 0.0, 15.0, 10.0).unwrap();
        assert!((overlap(&a, &b) - 1.0 / 3.0).abs() < 1e-6);
    }
}

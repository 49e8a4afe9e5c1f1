//! A colour signature beside the CNN's features. ImageNet features are built to ignore colour (a red
//! and a blue hoodie are one class), so photos of one product in one colour — its front, back and
//! details — are told apart from the same cut in another colour poorly. A histogram of the photo's
//! colours, the studio's white background left out, says what the features do not.
//!
//! The histogram is read from the network's own input tensor, so every path that embeds (indexing,
//! queries, the server's batcher) gets it without decoding again, and query and catalogue can never
//! disagree on it.

use crate::image::preprocess::Preprocessing;
use crate::linalg::l2_normalise_rows;

/// Hue, saturation and value bins: 8 × 8 × 8.
const BINS: usize = 8;
pub const COLOUR_DIMENSION: usize = BINS * BINS * BINS;
/// Pixels this bright and this grey are background (studio white), not the product.
const BACKGROUND_VALUE: f32 = 0.92;
const BACKGROUND_SATURATION: f32 = 0.08;

/// How a catalogue's vectors are made from the CNN's features and the colour signature: the unit
/// features, then `weight` × the unit colour histogram. Cosine between two such vectors is
/// `(features · features' + weight² · colour · colour') / (1 + weight²)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColourFeatures {
    pub weight: f32,
}

impl ColourFeatures {
    /// `features` (count rows of `dimension`) with each row's colour signature appended, read from
    /// `input` (the `preprocessing` tensors they were made from).
    pub fn append(
        &self,
        features: &[f32],
        dimension: usize,
        input: &[f32],
        count: usize,
        preprocessing: &Preprocessing,
    ) -> Vec<f32> {
        let per_image = preprocessing.tensor_len();
        let mut out = Vec::with_capacity(count * (dimension + COLOUR_DIMENSION));
        for i in 0..count {
            let start = out.len();
            out.extend_from_slice(&features[i * dimension..(i + 1) * dimension]);
            l2_normalise_rows(&mut out[start..], dimension);
            let histogram = colour_histogram(&input[i * per_image..(i + 1) * per_image], preprocessing);
            out.extend(histogram.iter().map(|h| h * self.weight));
        }
        out
    }
}

/// The unit-length, square-rooted HSV histogram of one CHW input tensor, background left out (all
/// zero when nothing but background is left).
pub fn colour_histogram(tensor: &[f32], preprocessing: &Preprocessing) -> Vec<f32> {
    let plane = tensor.len() / 3;
    let mut counts = vec![0f32; COLOUR_DIMENSION];
    let channel = |c: usize, i: usize| {
        ((tensor[c * plane + i] * preprocessing.scale + preprocessing.mean) / 255.0).clamp(0.0, 1.0)
    };
    for i in 0..plane {
        let (h, s, v) = hsv(channel(0, i), channel(1, i), channel(2, i));
        if v >= BACKGROUND_VALUE && s <= BACKGROUND_SATURATION {
            continue;
        }
        let bin = |x: f32| ((x * BINS as f32) as usize).min(BINS - 1);
        counts[(bin(h) * BINS + bin(s)) * BINS + bin(v)] += 1.0;
    }
    // The square root keeps one dominant colour from drowning the rest (Hellinger's kernel).
    counts.iter_mut().for_each(|c| *c = c.sqrt());
    let norm = counts.iter().map(|c| c * c).sum::<f32>().sqrt();
    if norm > 0.0 {
        counts.iter_mut().for_each(|c| *c /= norm);
    }
    counts
}

/// RGB in [0, 1] to hue, saturation and value in [0, 1].
fn hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let delta = max - min;
    let s = if max > 0.0 { delta / max } else { 0.0 };
    let h = if delta <= 0.0 {
        0.0
    } else if max == r {
        ((g - b) / delta).rem_euclid(6.0) / 6.0
    } else if max == g {
        ((b - r) / delta + 2.0) / 6.0
    } else {
        ((r - g) / delta + 4.0) / 6.0
    };
    (h, s, max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    fn tensor_of(colours: &[[u8; 3]]) -> (Vec<f32>, Preprocessing) {
        let preprocessing = Preprocessing::for_input(32);
        // Vertical stripes of the colours on a white background.
        let image = RgbImage::from_fn(64, 64, |x, _| {
            if x < 16 {
                Rgb([255, 255, 255])
            } else {
                Rgb(colours[(x as usize - 16) * colours.len() / 48])
            }
        });
        (preprocessing.tensor_of(&image), preprocessing)
    }

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn colours_tell_apart_what_the_background_does_not() {
        let (red, p) = tensor_of(&[[200, 20, 30]]);
        let (other_red, _) = tensor_of(&[[205, 22, 28]]);
        let (blue, _) = tensor_of(&[[20, 40, 200]]);
        let (red, other_red, blue) = (
            colour_histogram(&red, &p),
            colour_histogram(&other_red, &p),
            colour_histogram(&blue, &p),
        );
        assert!((cosine(&red, &red) - 1.0).abs() < 1e-5);
        assert!(cosine(&red, &other_red) > 0.9, "{}", cosine(&red, &other_red));
        assert!(cosine(&red, &blue) < 0.1, "{}", cosine(&red, &blue));
        let (white, _) = tensor_of(&[[255, 255, 255]]);
        assert!(colour_histogram(&white, &p).iter().all(|&x| x == 0.0));
    }

    #[test]
    fn appended_rows_are_unit_features_then_weighted_colours() {
        let (red, p) = tensor_of(&[[200, 20, 30], [20, 200, 30]]);
        let features = vec![3.0, 4.0];
        let rows = ColourFeatures { weight: 0.5 }.append(&features, 2, &red, 1, &p);
        assert_eq!(rows.len(), 2 + COLOUR_DIMENSION);
        assert!((rows[0] - 0.6).abs() < 1e-6 && (rows[1] - 0.8).abs() < 1e-6);
        let colour_norm = rows[2..].iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((colour_norm - 0.5).abs() < 1e-5, "{colour_norm}");
        assert!((hsv(0.0, 0.0, 1.0).0 - 2.0 / 3.0).abs() < 1e-6);
    }
}

//! One ranking from two: products found by a photo and products found by words, for a query that
//! has both ("a photo of this jacket, in pink").

use std::collections::HashMap;

use crate::types::Metric;

/// How the two rankings become one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fusion {
    /// Reciprocal rank fusion: each list adds `1 / (RRF_K + rank)`; scores' scales never matter.
    ReciprocalRank,
    /// `photo_weight · photo + (1 − photo_weight) · words`, the photo's scores scaled to [0, 1]
    /// within its list (best 1, worst 0), relevance divided by the best (no match: 0).
    Weighted { photo_weight: f32 },
}

/// The constant of Cormack et al.'s reciprocal rank fusion.
pub const RRF_K: f32 = 60.0;

/// The fusion lookalike uses, chosen on Luma by `lookalike eval products --words`, photos held
/// out with their product's kind, colour, or both as words: Recall@1 0.721 / 0.686 / 0.781 against
/// 0.67 for the photo alone; reciprocal rank fusion 0.470 / 0.305 / 0.635 (README, "Words and
/// pictures together").
pub const DEFAULT_FUSION: Fusion = Fusion::Weighted { photo_weight: 0.6 };

/// Fuses `photo` (ids with their `metric` scores, best first) and `words` (ids with relevance,
/// higher better, best first) into ids with fused scores, best first (ties by id). A product
/// missing from one list gets, from it, no rank (RRF) or the list's worst score (weighted): it
/// was not among that list's best, and the list is all that is known of it.
pub fn fuse(photo: &[(String, f32)], words: &[(String, f32)], metric: Metric, fusion: Fusion) -> Vec<(String, f32)> {
    let mut fused: HashMap<&str, f32> = HashMap::new();
    match fusion {
        Fusion::ReciprocalRank => {
            for list in [photo, words] {
                for (rank, (id, _)) in list.iter().enumerate() {
                    *fused.entry(id).or_default() += 1.0 / (RRF_K + rank as f32 + 1.0);
                }
            }
        }
        Fusion::Weighted { photo_weight } => {
            let photo_scaled = scaled(photo, metric);
            // Relevance is 0 for a product without the words: every match keeps a share.
            let most = words.first().map_or(1.0, |(_, s)| s.max(f32::MIN_POSITIVE));
            let words_scaled: HashMap<&str, f32> = words.iter().map(|(id, s)| (id.as_str(), s / most)).collect();
            let ids = photo.iter().chain(words).map(|(id, _)| id.as_str());
            for id in ids {
                let p = photo_scaled.get(id).copied().unwrap_or(0.0);
                let w = words_scaled.get(id).copied().unwrap_or(0.0);
                fused.insert(id, photo_weight * p + (1.0 - photo_weight) * w);
            }
        }
    }
    let mut ranked: Vec<(String, f32)> = fused.into_iter().map(|(id, s)| (id.to_string(), s)).collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked
}

/// Scores mapped to [0, 1]: the best of the list 1, its worst 0 (all 1 when they are equal).
fn scaled(list: &[(String, f32)], metric: Metric) -> HashMap<&str, f32> {
    let (Some(best), Some(worst)) = (list.first(), list.last()) else {
        return HashMap::new();
    };
    let (best, worst) = (best.1, worst.1);
    list.iter()
        .map(|(id, s)| {
            let scaled = if best == worst {
                1.0
            } else {
                match metric {
                    Metric::Cosine => (s - worst) / (best - worst),
                    Metric::Euclidean => (worst - s) / (worst - best),
                }
            };
            (id.as_str(), scaled)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[(&str, f32)]) -> Vec<(String, f32)> {
        items.iter().map(|(id, s)| (id.to_string(), *s)).collect()
    }

    fn ids(ranked: &[(String, f32)]) -> Vec<&str> {
        ranked.iter().map(|(id, _)| id.as_str()).collect()
    }

    #[test]
    fn a_product_both_lists_like_comes_first() {
        let photo = list(&[("a", 0.9), ("b", 0.8), ("c", 0.5)]);
        let words = list(&[("b", 7.0), ("c", 5.0), ("d", 1.0)]);
        for fusion in [Fusion::ReciprocalRank, Fusion::Weighted { photo_weight: 0.5 }] {
            let ranked = fuse(&photo, &words, Metric::Cosine, fusion);
            assert_eq!(ranked[0].0, "b", "{fusion:?}: {ranked:?}");
            assert_eq!(ranked.len(), 4);
        }
        // The weight moves the balance: all photo, then all words.
        let photo_only = fuse(&photo, &words, Metric::Cosine, Fusion::Weighted { photo_weight: 1.0 });
        assert_eq!(ids(&photo_only)[..3], ["a", "b", "c"]);
        let words_only = fuse(&photo, &words, Metric::Cosine, Fusion::Weighted { photo_weight: 0.0 });
        assert_eq!(ids(&words_only)[..3], ["b", "c", "d"]);
    }

    #[test]
    fn distances_scale_the_right_way_round_and_empty_lists_are_fine() {
        let photo = list(&[("near", 0.2), ("far", 1.4)]);
        let ranked = fuse(&photo, &[], Metric::Euclidean, Fusion::Weighted { photo_weight: 0.5 });
        assert_eq!(ids(&ranked), ["near", "far"]);
        assert!(fuse(&[], &[], Metric::Cosine, DEFAULT_FUSION).is_empty());
        let rrf = fuse(&[], &list(&[("x", 1.0)]), Metric::Cosine, Fusion::ReciprocalRank);
        assert_eq!(rrf, list(&[("x", 1.0 / 61.0)]));
    }
}

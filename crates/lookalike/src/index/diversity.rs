//! Maximal marginal relevance (Carbonell & Goldstein, 1998): a result page that is not ten shades of
//! one item. Each next result is the candidate with the best
//! `(1 − diversity) · relevance − diversity · (its highest cosine to a result already chosen)`.

use crate::index::dot;
use crate::linalg::l2_normalise_rows;
use crate::types::{Metric, Scored};

/// Candidates to rank again for `k` results: diversity can only choose among what it is given.
pub fn pool_size(k: usize, diversity: f32) -> usize {
    if diversity > 0.0 {
        (k * 4).max(40)
    } else {
        k
    }
}

/// The first `k` of `hits` (best first) chosen by maximal marginal relevance;
/// `diversity` 0 keeps the order, 1 cares only for difference after the best. Relevance is each
/// score scaled to [0, 1] within `hits`; likeness is the cosine of the products' main vectors
/// (a product without its vector here is like nothing).
pub fn diversify(mut hits: Vec<Scored>, k: usize, diversity: f32, metric: Metric) -> Vec<Scored> {
    if diversity <= 0.0 || hits.len() <= 1 {
        hits.truncate(k);
        return hits;
    }
    // A photo's hits come in their category vote's order, not always by score.
    let scores = hits.iter().map(|h| h.score);
    let (high, low) = (scores.clone().fold(f32::MIN, f32::max), scores.fold(f32::MAX, f32::min));
    let (best, worst) = match metric {
        Metric::Cosine => (high, low),
        Metric::Euclidean => (low, high),
    };
    let relevance: Vec<f32> = hits
        .iter()
        .map(|h| match (best == worst, metric) {
            (true, _) => 1.0,
            (false, Metric::Cosine) => (h.score - worst) / (best - worst),
            (false, Metric::Euclidean) => (worst - h.score) / (worst - best),
        })
        .collect();
    let unit: Vec<Vec<f32>> = hits
        .iter()
        .map(|h| {
            let mut v = h.product.vector.clone();
            l2_normalise_rows(&mut v, h.product.vector.len().max(1));
            v
        })
        .collect();
    let likeness = |a: usize, b: usize| {
        if unit[a].is_empty() || unit[a].len() != unit[b].len() {
            0.0
        } else {
            dot(&unit[a], &unit[b])
        }
    };
    let mut chosen: Vec<usize> = Vec::with_capacity(k.min(hits.len()));
    // The highest likeness of each candidate to anything chosen so far.
    let mut closest = vec![f32::NEG_INFINITY; hits.len()];
    let mut left: Vec<usize> = (0..hits.len()).collect();
    while chosen.len() < k && !left.is_empty() {
        let value = |i: usize| {
            let redundancy = if chosen.is_empty() { 0.0 } else { closest[i] };
            (1.0 - diversity) * relevance[i] - diversity * redundancy
        };
        let (at, &next) = left
            .iter()
            .enumerate()
            .max_by(|(_, &a), (_, &b)| value(a).total_cmp(&value(b)).then(b.cmp(&a)))
            .expect("candidates left");
        left.swap_remove(at);
        chosen.push(next);
        for &i in &left {
            closest[i] = closest[i].max(likeness(i, next));
        }
    }
    let mut taken: Vec<Option<Scored>> = hits.into_iter().map(Some).collect();
    chosen.into_iter().filter_map(|i| taken[i].take()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::StoredProduct;

    fn hit(id: &str, score: f32, vector: Vec<f32>) -> Scored {
        Scored {
            product: StoredProduct {
                id: id.into(),
                info: Default::default(),
                image_path: String::new(),
                content_hash: String::new(),
                vector,
                more_images: Vec::new(),
            },
            score,
            image: 0,
        }
    }

    fn ids(hits: &[Scored]) -> Vec<&str> {
        hits.iter().map(|h| h.product.id.as_str()).collect()
    }

    #[test]
    fn near_copies_give_way_to_something_different() {
        let hits = vec![
            hit("red-1", 0.95, vec![1.0, 0.0]),
            hit("red-2", 0.94, vec![0.99, 0.05]),
            hit("red-3", 0.93, vec![0.98, 0.1]),
            hit("blue", 0.80, vec![0.0, 1.0]),
        ];
        assert_eq!(
            ids(&diversify(hits.clone(), 3, 0.0, Metric::Cosine)),
            ["red-1", "red-2", "red-3"]
        );
        assert_eq!(ids(&diversify(hits.clone(), 2, 0.5, Metric::Cosine)), ["red-1", "blue"]);
        // The best stays first whatever the diversity; all come back when k allows.
        assert_eq!(ids(&diversify(hits.clone(), 9, 1.0, Metric::Cosine))[0], "red-1");
        assert_eq!(diversify(hits, 9, 0.3, Metric::Cosine).len(), 4);
    }

    #[test]
    fn distances_rank_the_nearest_first() {
        let hits = vec![hit("near", 0.1, vec![1.0]), hit("far", 0.9, vec![-1.0])];
        assert_eq!(ids(&diversify(hits, 2, 0.2, Metric::Euclidean)), ["near", "far"]);
    }
}

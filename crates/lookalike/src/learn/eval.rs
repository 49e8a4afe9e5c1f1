//! Retrieval and classification metrics on labelled sets.
//!
//! Retrieval: each query's ranked gallery list is judged by class; a hit is a gallery item of the
//! query's class. `recall_at_k` is the Recall@K of metric-learning papers (the share of queries
//! with at least one hit in the top k), since with hundreds of items per class the IR recall
//! (hits / class size) would say little. `map_at_k` averages AP@k = Σ_{i≤k} P(i)·rel(i) / min(k, R),
//! R the number of gallery items of the query's class.

use std::collections::BTreeMap;
use std::hash::Hash;

use crate::index::category_vote::{voted_order, votes, VOTE_POOL};
use crate::index::fusion::{fuse, Fusion};
use crate::learn::kinds::ProductKinds;
use crate::types::Metric;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct ClassRetrieval {
    pub class: String,
    pub queries: usize,
    pub precision_at_1: f64,
    pub precision_at_k: f64,
    pub map_at_k: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RetrievalReport {
    pub k: usize,
    pub queries: usize,
    pub precision_at_1: f64,
    pub precision_at_k: f64,
    pub recall_at_k: f64,
    pub map_at_k: f64,
    pub per_class: Vec<ClassRetrieval>,
}

#[derive(Default)]
struct Sums {
    queries: usize,
    p1: f64,
    pk: f64,
    any: f64,
    ap: f64,
}

impl Sums {
    fn add(&mut self, relevant: &[bool], class_size: usize, k: usize) {
        let top = &relevant[..relevant.len().min(k)];
        let hits = top.iter().filter(|&&r| r).count();
        let mut found = 0;
        let mut precision_sum = 0.0;
        for (i, _) in top.iter().enumerate().filter(|(_, &r)| r) {
            found += 1;
            precision_sum += found as f64 / (i + 1) as f64;
        }
        self.queries += 1;
        self.p1 += f64::from(u8::from(top.first() == Some(&true)));
        self.pk += hits as f64 / k as f64;
        self.any += f64::from(u8::from(hits > 0));
        if class_size > 0 {
            self.ap += precision_sum / class_size.min(k) as f64;
        }
    }

    fn mean(&self, sum: f64) -> f64 {
        if self.queries == 0 {
            0.0
        } else {
            sum / self.queries as f64
        }
    }
}

/// `ranked[q]` holds the classes of query q's top results, best first (at least k of them
/// when the gallery has k items); `gallery_classes` counts each class's gallery items.
pub fn retrieval_metrics(
    query_classes: &[String],
    ranked: &[Vec<String>],
    gallery_class_sizes: &BTreeMap<String, usize>,
    k: usize,
) -> RetrievalReport {
    let mut total = Sums::default();
    let mut per_class: BTreeMap<&str, Sums> = BTreeMap::new();
    for (class, results) in query_classes.iter().zip(ranked) {
        let relevant: Vec<bool> = results.iter().map(|c| c == class).collect();
        let size = gallery_class_sizes.get(class).copied().unwrap_or(0);
        total.add(&relevant, size, k);
        per_class.entry(class).or_default().add(&relevant, size, k);
    }
    RetrievalReport {
        k,
        queries: total.queries,
        precision_at_1: total.mean(total.p1),
        precision_at_k: total.mean(total.pk),
        recall_at_k: total.mean(total.any),
        map_at_k: total.mean(total.ap),
        per_class: per_class
            .into_iter()
            .map(|(class, s)| ClassRetrieval {
                class: class.to_string(),
                queries: s.queries,
                precision_at_1: s.mean(s.p1),
                precision_at_k: s.mean(s.pk),
                map_at_k: s.mean(s.ap),
            })
            .collect(),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassScores {
    pub class: String,
    pub support: usize,
    pub precision: f64,
    pub recall: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassificationReport {
    pub accuracy: f64,
    pub samples: usize,
    pub classes: Vec<String>,
    /// `confusion[true][predicted]`, in the order of `classes`.
    pub confusion: Vec<Vec<usize>>,
    pub per_class: Vec<ClassScores>,
}

/// `truth` and `predicted` are indices into `classes`.
pub fn classification_metrics(classes: &[String], truth: &[usize], predicted: &[usize]) -> ClassificationReport {
    let n = classes.len();
    let mut confusion = vec![vec![0usize; n]; n];
    for (&t, &p) in truth.iter().zip(predicted) {
        confusion[t][p] += 1;
    }
    let correct: usize = (0..n).map(|i| confusion[i][i]).sum();
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let per_class = (0..n)
        .map(|c| {
            let support: usize = confusion[c].iter().sum();
            let predicted_as: usize = confusion.iter().map(|row| row[c]).sum();
            ClassScores {
                class: classes[c].clone(),
                support,
                precision: ratio(confusion[c][c], predicted_as),
                recall: ratio(confusion[c][c], support),
            }
        })
        .collect();
    ClassificationReport {
        accuracy: ratio(correct, truth.len()),
        samples: truth.len(),
        classes: classes.to_vec(),
        confusion,
        per_class,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn retrieval_metrics_match_hand_computation() {
        let sizes = BTreeMap::from([("a".to_string(), 2), ("b".to_string(), 3)]);
        let queries = s(&["a", "b"]);
        let ranked = vec![s(&["a", "b", "a"]), s(&["a", "b", "b"])];
        let r = retrieval_metrics(&queries, &ranked, &sizes, 3);
        // Query a: hits at ranks 1 and 3 -> P@1 1, P@3 2/3, AP (1 + 2/3) / min(3, 2) = 5/6.
        // Query b: hits at ranks 2 and 3 -> P@1 0, P@3 2/3, AP (1/2 + 2/3) / 3 = 7/18.
        assert_eq!(r.queries, 2);
        assert!((r.precision_at_1 - 0.5).abs() < 1e-12);
        assert!((r.precision_at_k - 2.0 / 3.0).abs() < 1e-12);
        assert!((r.recall_at_k - 1.0).abs() < 1e-12);
        assert!((r.map_at_k - (5.0 / 6.0 + 7.0 / 18.0) / 2.0).abs() < 1e-12);
        assert_eq!(r.per_class[1].class, "b");
        assert!((r.per_class[1].map_at_k - 7.0 / 18.0).abs() < 1e-12);

        let miss = retrieval_metrics(&s(&["a"]), &[s(&["b", "b"])], &sizes, 2);
        assert_eq!((miss.precision_at_1, miss.recall_at_k, miss.map_at_k), (0.0, 0.0, 0.0));
    }

    #[test]
    fn classification_metrics_match_hand_computation() {
        let classes = s(&["x", "y"]);
        let r = classification_metrics(&classes, &[0, 0, 1, 1, 1], &[0, 1, 1, 1, 0]);
        assert!((r.accuracy - 0.6).abs() < 1e-12);
        assert_eq!(r.confusion, vec![vec![1, 1], vec![1, 2]]);
        assert!((r.per_class[1].precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((r.per_class[1].recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((r.per_class[0].recall - 0.5).abs() < 1e-12);
    }
}

/// How a product of several photos is scored against a query photo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Aggregation {
    /// Its best-matching photo.
    Best,
    /// The mean of its two best-matching photos (the one, if it has one): what search does
    /// ([`crate::types::Metric::product_score`]).
    TopTwo,
    /// The cosine to the mean of its photos' unit vectors.
    Centroid,
    /// Its main photo only: the catalogue as if each product had one photo.
    MainPhotoOnly,
}

impl Aggregation {
    pub const ALL: [Self; 4] = [Self::Best, Self::TopTwo, Self::Centroid, Self::MainPhotoOnly];

    /// The product's score from the cosines of `query` to its photos (`views`, unit vectors, main first).
    fn score(self, query: &[f32], views: &[&[f32]]) -> f32 {
        let cos = |v: &[f32]| v.iter().zip(query).map(|(a, b)| a * b).sum::<f32>();
        match self {
            Self::Best => views.iter().map(|v| cos(v)).fold(f32::NEG_INFINITY, f32::max),
            Self::TopTwo => {
                let mut scores: Vec<f32> = views.iter().map(|v| cos(v)).collect();
                scores.sort_by(|a, b| b.total_cmp(a));
                scores.iter().take(2).sum::<f32>() / scores.len().min(2) as f32
            }
            Self::Centroid => {
                let mut mean = vec![0.0f32; query.len()];
                for v in views {
                    mean.iter_mut().zip(v.iter()).for_each(|(m, x)| *m += x);
                }
                let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                cos(&mean) / norm
            }
            Self::MainPhotoOnly => cos(views[0]),
        }
    }
}

/// Product-level retrieval with held-out photos.
#[derive(Debug, Clone, Serialize)]
pub struct ProductRecall {
    pub aggregation: Aggregation,
    pub queries: usize,
    pub recall_at_1: f64,
    pub recall_at_5: f64,
}

/// Leave-one-out over photos: every photo of every product with at least two photos is a query
/// against the gallery of all products, its own product without that photo. Recall@k is the
/// share of queries whose own product is among the k best-scoring products. `products[i]` holds
/// product i's photos as unit vectors, the main photo first.
pub fn held_out_product_recall(products: &[Vec<Vec<f32>>], aggregation: Aggregation) -> ProductRecall {
    recall_of_ranks(products, aggregation, |own, held_out, photo| {
        held_out_rank(products, own, held_out, photo, aggregation)
    })
}

/// [`held_out_product_recall`] in the order search gives a photo's products, with their
/// categories' votes ([`held_out_rank_voted`]).
pub fn held_out_product_recall_voted<K: Eq + Hash>(
    products: &[Vec<Vec<f32>>],
    categories: &[K],
    kinds: Option<&ProductKinds>,
    aggregation: Aggregation,
) -> ProductRecall {
    recall_of_ranks(products, aggregation, |own, held_out, photo| {
        let views = [photo];
        held_out_rank_voted(
            products,
            categories,
            kinds.map(|k| (k, &views[..])),
            own,
            held_out,
            photo,
            aggregation,
        )
    })
}

/// Recall@1 and @5 over every held-out photo, `rank(own, held_out, photo)` giving its product's rank.
fn recall_of_ranks(
    products: &[Vec<Vec<f32>>],
    aggregation: Aggregation,
    rank: impl Fn(usize, usize, &[f32]) -> usize,
) -> ProductRecall {
    let (mut queries, mut at_1, mut at_5) = (0usize, 0usize, 0usize);
    for (own, photos) in products.iter().enumerate().filter(|(_, p)| p.len() >= 2) {
        for (held_out, photo) in photos.iter().enumerate() {
            let rank = rank(own, held_out, photo);
            queries += 1;
            at_1 += usize::from(rank < 1);
            at_5 += usize::from(rank < 5);
        }
    }
    let share = |n: usize| n as f64 / queries.max(1) as f64;
    ProductRecall {
        aggregation,
        queries,
        recall_at_1: share(at_1),
        recall_at_5: share(at_5),
    }
}

/// The rank (0: first) of product `own` for `query` (a unit vector) among `products` (their
/// photos as unit vectors), its photo `held_out` left out of the gallery; ties go to the lower
/// index.
pub fn held_out_rank(
    products: &[Vec<Vec<f32>>],
    own: usize,
    held_out: usize,
    query: &[f32],
    aggregation: Aggregation,
) -> usize {
    let scores = held_out_scores(products, own, held_out, query, aggregation);
    (0..products.len())
        .filter(|&i| i != own && (scores[i] > scores[own] || (scores[i] == scores[own] && i < own)))
        .count()
}

/// [`held_out_rank`] in the order search gives a photo's products: best first, the first
/// [`crate::index::category_vote::VOTE_POOL`] reordered by their categories' votes
/// (`categories[i]` is product i's) and the chances of their kinds, where `kinds` knows them
/// (with the views of the photo their chances are read from, [`crate::learn::kinds::KindChances::of`]).
pub fn held_out_rank_voted<K: Eq + Hash>(
    products: &[Vec<Vec<f32>>],
    categories: &[K],
    kinds: Option<(&ProductKinds, &[&[f32]])>,
    own: usize,
    held_out: usize,
    query: &[f32],
    aggregation: Aggregation,
) -> usize {
    let order = held_out_order_voted(products, categories, kinds, own, held_out, query, aggregation).0;
    order.iter().position(|&i| i == own).expect("every product is ranked")
}

/// The order [`held_out_rank_voted`] ranks in (every product, best first), with the key each
/// product is ordered by (its score for `query`, raised by the vote where the photo is voted on,
/// [`voted_order`]), by product.
pub fn held_out_order_voted<K: Eq + Hash>(
    products: &[Vec<Vec<f32>>],
    categories: &[K],
    kinds: Option<(&ProductKinds, &[&[f32]])>,
    own: usize,
    held_out: usize,
    query: &[f32],
    aggregation: Aggregation,
) -> (Vec<usize>, Vec<f32>) {
    let scores = held_out_scores(products, own, held_out, query, aggregation);
    let mut order: Vec<usize> = (0..products.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let ranked_scores: Vec<f32> = order.iter().map(|&i| scores[i]).collect();
    if !votes(ranked_scores.first().copied()) {
        return (order, scores);
    }
    let ranked_categories: Vec<&K> = order.iter().map(|&i| &categories[i]).collect();
    let ranked_chances: Vec<Option<f32>> = match kinds {
        Some((kinds, views)) => {
            let chances = kinds.chances(views);
            order.iter().take(VOTE_POOL).map(|&i| chances[i]).collect()
        }
        None => Vec::new(),
    };
    let mut keys = scores;
    let voted: Vec<usize> = voted_order(&ranked_scores, &ranked_categories, &ranked_chances)
        .into_iter()
        .map(|(j, key)| {
            keys[order[j]] = key;
            order[j]
        })
        .collect();
    (voted, keys)
}

/// Each product's score for `query`, product `own` without its photo `held_out`.
fn held_out_scores(
    products: &[Vec<Vec<f32>>],
    own: usize,
    held_out: usize,
    query: &[f32],
    aggregation: Aggregation,
) -> Vec<f32> {
    products
        .iter()
        .enumerate()
        .map(|(i, views)| {
            let views: Vec<&[f32]> = views
                .iter()
                .enumerate()
                .filter(|&(j, _)| i != own || j != held_out)
                .map(|(_, v)| v.as_slice())
                .collect();
            aggregation.score(query, &views)
        })
        .collect()
}

/// A way to rank products for a query photo that comes with words.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WithWords {
    PhotoOnly,
    WordsOnly,
    Fused(Fusion),
}

/// Like [`held_out_product_recall`] (products scored by their two best photos) for the held-out
/// photos that come with words: `words(own, held_out)` gives the word ranking (product indices
/// with relevance, best first) for that photo's query, or `None` to leave the photo out. One
/// [`ProductRecall`] per method, the photo ranking cut to the `depth` best as search does.
pub fn held_out_recall_with_words(
    products: &[Vec<Vec<f32>>],
    words: &dyn Fn(usize, usize) -> Option<Vec<(usize, f32)>>,
    methods: &[WithWords],
    depth: usize,
) -> Vec<ProductRecall> {
    let mut hits = vec![(0usize, 0usize); methods.len()];
    let mut queries = 0;
    let name = |i: usize| format!("{i:08}");
    for (own, photos) in products.iter().enumerate().filter(|(_, p)| p.len() >= 2) {
        for (held_out, query) in photos.iter().enumerate() {
            let Some(word_ranking) = words(own, held_out) else {
                continue;
            };
            let mut by_photo: Vec<(usize, f32)> = held_out_scores(products, own, held_out, query, Aggregation::TopTwo)
                .into_iter()
                .enumerate()
                .collect();
            by_photo.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            by_photo.truncate(depth);
            let named =
                |list: &[(usize, f32)]| -> Vec<(String, f32)> { list.iter().map(|&(i, s)| (name(i), s)).collect() };
            let (photo, words) = (named(&by_photo), named(&word_ranking));
            queries += 1;
            for (method, (at_1, at_5)) in methods.iter().zip(hits.iter_mut()) {
                let ranking = match method {
                    WithWords::PhotoOnly => photo.clone(),
                    WithWords::WordsOnly => words.clone(),
                    WithWords::Fused(fusion) => fuse(&photo, &words, Metric::Cosine, *fusion),
                };
                let rank = ranking.iter().position(|(id, _)| *id == name(own));
                *at_1 += usize::from(rank.is_some_and(|r| r < 1));
                *at_5 += usize::from(rank.is_some_and(|r| r < 5));
            }
        }
    }
    let share = |n: usize| n as f64 / queries.max(1) as f64;
    hits.into_iter()
        .map(|(at_1, at_5)| ProductRecall {
            aggregation: Aggregation::TopTwo,
            queries,
            recall_at_1: share(at_1),
            recall_at_5: share(at_5),
        })
        .collect()
}

#[cfg(test)]
mod product_tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn a_held_out_view_finds_its_product_by_its_other_views() {
        // Product 0: a front and two back views; product 2: two near-identical photos.
        let products = vec![
            vec![unit(&[1.0, 0.0, 0.0]), unit(&[0.0, 1.0, 0.0]), unit(&[0.05, 1.0, 0.0])],
            vec![unit(&[0.3, 0.7, 0.0])],
            vec![unit(&[0.0, 0.0, 1.0]), unit(&[0.1, 0.0, 1.0])],
        ];
        let best = held_out_product_recall(&products, Aggregation::Best);
        // Five queries; only the front view of product 0, its back views left, misses.
        assert_eq!(best.queries, 5);
        assert_eq!(best.recall_at_1, 0.8);
        // With the main photo only, a back view held out meets the front, and product 1 wins.
        let main_only = held_out_product_recall(&products, Aggregation::MainPhotoOnly);
        assert!(main_only.recall_at_1 < best.recall_at_1);
        assert_eq!(main_only.recall_at_5, 1.0);
    }
}

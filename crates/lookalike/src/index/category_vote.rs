//! A photo's results ordered with their kind in mind. When the photo matches no product closely
//! (its best product scores under [`VOTE_BELOW`]), each of the [`VOTE_POOL`] best products is
//! raised by [`VOTE_WEIGHT`] × its category's vote, the mean score of that category's
//! [`VOTE_BEST`] best products among them, so a product of the kind most of the closest products
//! share moves up past a lone look-alike of another kind: a shopper's photo of trousers the shop
//! does not sell brings trousers first. Scores stay the photo's own; only the order changes.
//! Products without a category vote as one category of their own, so a catalogue without
//! categories keeps its order.
//!
//! Chosen in numbers on the validation splits of `lookalike eval kinds` (clothing photos against
//! Luma's packshots) and `eval retrieval` (clothing-dataset-small classes), over pools of 50 and
//! 100, the 3, 5 or 10 best, weights 1 and 2 (README, "Photos of a kind, not of the product").

use std::collections::HashMap;
use std::hash::Hash;

use crate::types::{category_key, Scored};

/// How many of the best products the vote is taken among and reorders.
pub const VOTE_POOL: usize = 100;

/// How many of a category's best products in the pool make its vote.
pub const VOTE_BEST: usize = 5;

/// How much a category's vote weighs against a product's own score.
pub const VOTE_WEIGHT: f32 = 2.0;

/// How much the chance of a product's kind weighs, where the catalogue has learnt its kinds
/// ([`crate::learn::kinds`]): a product is raised by this × the chance that the photo shows its
/// kind, beside its category's vote. Chosen on `eval kinds` validation (default search P@1: 0.693,
/// 0.697, **0.702**, 0.711 at 1, 2, **5**, 20) and `eval scenes --seed 7` (Recall@1 0.372 at 2, 5
/// and 20; pairs 0.440 at 5, 0.430 at 20).
pub const KIND_WEIGHT: f32 = 5.0;

/// The vote reorders a photo's products only when the best of them scores under this cosine: a
/// photo that matches a product this closely shows that product, and its look-alikes keep their
/// order (the same line as [`crate::locate::FIND_PRODUCT_BELOW`]). Chosen on `eval scenes --seed
/// 7`, where the part searched often finds its very product: always voting 0.355 / 0.557
/// Recall@1 / @5, under 0.80 0.355 / 0.560, **under 0.70 0.360 / 0.570**, never 0.362 / 0.570.
pub const VOTE_BELOW: f32 = 0.70;

/// Whether products whose best scores `best` are reordered by their categories' votes.
pub fn votes(best: Option<f32>) -> bool {
    best.is_some_and(|best| best < VOTE_BELOW)
}

/// The order of the first [`VOTE_POOL`] of `scores` (higher better, best first, each with its
/// category in `categories`) raised by their categories' votes and by [`KIND_WEIGHT`] × the
/// chance of their kind in `kind_chances` (empty: none known), as indices into them, each with
/// the key it was ordered by (its raised score); the rest keep their places after them, their
/// scores their keys. Ties keep the given order. A product of a kind the learnt kinds do not know
/// (`None`: added since they were learnt) has no chance to weigh against the others', so then no
/// kind weighs for the photo.
pub fn voted_order<K: Eq + Hash>(scores: &[f32], categories: &[K], kind_chances: &[Option<f32>]) -> Vec<(usize, f32)> {
    let pool = scores.len().min(VOTE_POOL);
    let kind_chances = if kind_chances.iter().take(pool).all(Option::is_some) {
        kind_chances
    } else {
        &[]
    };
    // Best first, so each category's first VOTE_BEST are its best.
    let mut best: HashMap<&K, (f32, usize)> = HashMap::new();
    for (score, category) in scores[..pool].iter().zip(categories) {
        let (sum, count) = best.entry(category).or_default();
        if *count < VOTE_BEST {
            *sum += score;
            *count += 1;
        }
    }
    let mut keyed: Vec<(usize, f32)> = scores[..pool]
        .iter()
        .zip(categories)
        .enumerate()
        .map(|(i, (score, category))| {
            let (sum, count) = best[&category];
            let kind_chance = kind_chances.get(i).copied().flatten().unwrap_or(0.0);
            (i, score + VOTE_WEIGHT * sum / count as f32 + KIND_WEIGHT * kind_chance)
        })
        .collect();
    keyed.sort_by(|a, b| b.1.total_cmp(&a.1));
    keyed.extend(scores.iter().enumerate().skip(pool).map(|(i, &score)| (i, score)));
    keyed
}

/// `hits` (best first by a higher-is-closer score) in [`voted_order`] by their products'
/// categories the same but for case, when the best matches no product closely ([`votes`]);
/// `kind_chance` tells how likely the photo shows a category's kind (`|_| Some(0.0)` where the
/// catalogue has not learnt its kinds; `None` for a kind they do not know). Each hit with the key
/// it is ordered by ([`voted_order`]; its score where the photo is not voted on).
pub fn voted(hits: Vec<Scored>, kind_chance: impl Fn(Option<&str>) -> Option<f32>) -> Vec<(Scored, f32)> {
    voted_keyed_by(
        hits,
        |hit| hit.score,
        |hit| hit.product.info.category.as_deref(),
        kind_chance,
    )
}

/// [`voted`] for any kind of hit, given its score and its product's category, without the keys.
pub fn voted_by<T>(
    hits: Vec<T>,
    score: impl Fn(&T) -> f32,
    category: impl Fn(&T) -> Option<&str>,
    kind_chance: impl Fn(Option<&str>) -> Option<f32>,
) -> Vec<T> {
    voted_keyed_by(hits, score, category, kind_chance)
        .into_iter()
        .map(|(hit, _)| hit)
        .collect()
}

/// [`voted`] for any kind of hit, given its score and its product's category.
pub fn voted_keyed_by<T>(
    hits: Vec<T>,
    score: impl Fn(&T) -> f32,
    category: impl Fn(&T) -> Option<&str>,
    kind_chance: impl Fn(Option<&str>) -> Option<f32>,
) -> Vec<(T, f32)> {
    let scores: Vec<f32> = hits.iter().map(&score).collect();
    if !votes(scores.first().copied()) {
        return hits.into_iter().zip(scores).collect();
    }
    let categories: Vec<Option<String>> = hits.iter().map(|hit| category(hit).map(category_key)).collect();
    let chances: Vec<Option<f32>> = hits
        .iter()
        .take(VOTE_POOL)
        .map(|hit| kind_chance(category(hit)))
        .collect();
    let order = voted_order(&scores, &categories, &chances);
    let mut hits: Vec<Option<T>> = hits.into_iter().map(Some).collect();
    order
        .into_iter()
        .map(|(i, key)| (hits[i].take().expect("each hit once"), key))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`voted_order`]'s indices alone.
    fn order_of<K: Eq + Hash>(scores: &[f32], categories: &[K], kind_chances: &[Option<f32>]) -> Vec<usize> {
        voted_order(scores, categories, kind_chances)
            .into_iter()
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn a_lone_look_alike_gives_way_to_the_kind_most_close_products_share() {
        // A jacket scores best, but four trousers follow closely.
        let scores = [0.70, 0.68, 0.67, 0.66, 0.65, 0.40];
        let kinds = ["jacket", "trousers", "trousers", "trousers", "trousers", "jacket"];
        // Trousers vote 0.665, jackets 0.55: 0.68 + 1.33 beats 0.70 + 1.10.
        assert_eq!(order_of(&scores, &kinds, &[]), vec![1, 2, 3, 4, 0, 5]);
    }

    #[test]
    fn the_very_product_far_closer_than_the_rest_keeps_its_place_and_brings_its_kind_up() {
        let scores = [0.69, 0.50, 0.49, 0.48, 0.46];
        let kinds = ["jacket", "trousers", "trousers", "trousers", "jacket"];
        assert_eq!(order_of(&scores, &kinds, &[]), vec![0, 4, 1, 2, 3]);
    }

    #[test]
    fn a_learnt_kind_raises_its_products_past_the_vote() {
        // Trousers vote higher, but the photo is most likely a jacket.
        let scores = [0.60, 0.59, 0.58, 0.57];
        let kinds = ["trousers", "trousers", "jacket", "trousers"];
        assert_eq!(order_of(&scores, &kinds, &[]), vec![0, 1, 3, 2]);
        let chances = [0.1, 0.1, 0.9, 0.1].map(Some);
        assert_eq!(order_of(&scores, &kinds, &chances), vec![2, 0, 1, 3]);
        // A trouser added since the kinds were learnt: no kind weighs rather than one unfairly.
        let mut unknown = chances;
        unknown[3] = None;
        assert_eq!(order_of(&scores, &kinds, &unknown), vec![0, 1, 3, 2]);
    }

    #[test]
    fn each_product_keeps_the_key_it_was_ordered_by() {
        let scores = [0.60, 0.59, 0.58, 0.57];
        let kinds = ["trousers", "trousers", "jacket", "trousers"];
        let chances = [0.1, 0.1, 0.9, 0.1].map(Some);
        let keyed = voted_order(&scores, &kinds, &chances);
        assert_eq!(keyed.iter().map(|&(i, _)| i).collect::<Vec<_>>(), vec![2, 0, 1, 3]);
        assert!(keyed.windows(2).all(|pair| pair[0].1 >= pair[1].1));
        // The jacket: its score, its category's vote (itself) and its kind's chance.
        let jacket = keyed.iter().find(|&&(i, _)| i == 2).expect("ranked").1;
        assert!((jacket - (0.58 + VOTE_WEIGHT * 0.58 + KIND_WEIGHT * 0.9)).abs() < 1e-6);
        // A photo that matches a product closely keeps its scores as keys.
        let hits = vec![0.9f32, 0.5];
        let kept = voted_keyed_by(hits, |&s| s, |_| Some("jacket"), |_| Some(0.0));
        assert_eq!(kept, vec![(0.9, 0.9), (0.5, 0.5)]);
    }

    #[test]
    fn only_a_photo_that_matches_no_product_closely_is_voted_on() {
        assert!(votes(Some(0.55)));
        assert!(!votes(Some(VOTE_BELOW)));
        assert!(!votes(Some(0.93)));
        assert!(!votes(None), "nothing to reorder");
        assert!(!votes(Some(f32::NAN)));
    }

    #[test]
    fn one_category_or_none_keeps_the_order_and_only_the_pool_moves() {
        let scores: Vec<f32> = (0..VOTE_POOL + 20).map(|i| 1.0 - i as f32 / 1000.0).collect();
        let same = vec![None::<String>; scores.len()];
        assert_eq!(order_of(&scores, &same, &[]), (0..scores.len()).collect::<Vec<_>>());
        // The pool's last product is of a kind the pool's best share; past the pool, nothing moves.
        let mut kinds: Vec<u8> = vec![1; scores.len()];
        kinds[0] = 0;
        kinds[VOTE_POOL - 1] = 0;
        let order = order_of(&scores, &kinds, &[]);
        assert_eq!(
            &order[VOTE_POOL..],
            (VOTE_POOL..scores.len()).collect::<Vec<_>>().as_slice()
        );
        assert_eq!(order_of(&[] as &[f32], &[] as &[u8], &[]), Vec::<usize>::new());
    }
}

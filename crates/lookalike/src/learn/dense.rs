//! A dense layer and its backward pass: what heads, the fine-tuned trunk and the scratch CNN
//! all train, so none of them imports another for it.

use crate::linalg::{gemm, Strided};

/// `y = x · w + b`, with `w` stored input-major (`input × output`), so a batch is one matrix product.
#[derive(Debug, Clone)]
pub struct Dense {
    pub input: usize,
    pub output: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl Dense {
    /// He-uniform initialisation, seeded.
    pub fn new(input: usize, output: usize, rng: &mut fastrand::Rng) -> Self {
        let bound = (6.0 / input as f32).sqrt();
        Self {
            input,
            output,
            weight: (0..input * output).map(|_| (rng.f32() * 2.0 - 1.0) * bound).collect(),
            bias: vec![0.0; output],
        }
    }

    /// `rows × input` → `rows × output`.
    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut y: Vec<f32> = self.bias.iter().copied().cycle().take(rows * self.output).collect();
        gemm(
            Strided::rows(x, self.input),
            Strided::rows(&self.weight, self.output),
            &mut y,
            (rows, self.input, self.output),
            1.0,
            1.0,
        );
        y
    }
}

/// Gradients of one layer's weight and bias.
pub type LayerGrads = (Vec<f32>, Vec<f32>);

/// One dense layer's backward pass: the weight and bias gradients for `grad` (rows × output) at
/// `input` (rows × input), and the gradient with respect to the input when asked for.
pub fn dense_backward(
    layer: &Dense,
    input: &[f32],
    grad: &[f32],
    rows: usize,
    input_grad: bool,
) -> (LayerGrads, Option<Vec<f32>>) {
    let mut gw = vec![0.0; layer.weight.len()];
    gemm(
        Strided::transposed(input, layer.input),
        Strided::rows(grad, layer.output),
        &mut gw,
        (layer.input, rows, layer.output),
        1.0,
        0.0,
    );
    let mut gb = vec![0.0; layer.output];
    grad.chunks(layer.output)
        .for_each(|row| gb.iter_mut().zip(row).for_each(|(b, g)| *b += g));
    let gx = input_grad.then(|| {
        let mut gx = vec![0.0; rows * layer.input];
        gemm(
            Strided::rows(grad, layer.output),
            Strided::transposed(&layer.weight, layer.output),
            &mut gx,
            (rows, layer.output, layer.input),
            1.0,
            0.0,
        );
        gx
    });
    ((gw, gb), gx)
}

/// Central finite differences of `objective` agree with `grads`, relatively, for the weight at each
/// (layer, index) pair and for that layer's bias with the largest gradient. A gradient too small to
/// measure fails the check: a test that compares zeros checks nothing.
#[cfg(test)]
pub(crate) fn assert_gradients_match(
    layers: &[Dense],
    grads: &[LayerGrads],
    at: &[(usize, usize)],
    objective: impl Fn(&[Dense]) -> f64,
) {
    let h = 1e-3f32;
    for &(layer, index) in at {
        let bias = largest(&grads[layer].1);
        for (what, analytic) in [("weight", grads[layer].0[index]), ("bias", grads[layer].1[bias])] {
            let nudged = |by: f32| {
                let mut copy = layers.to_vec();
                match what {
                    "weight" => copy[layer].weight[index] += by,
                    _ => copy[layer].bias[bias] += by,
                }
                objective(&copy)
            };
            let numeric = (nudged(h) - nudged(-h)) / (2.0 * f64::from(h));
            let analytic = f64::from(analytic);
            let place = format!("layer {layer} {what} {}", if what == "weight" { index } else { bias });
            assert!(
                numeric.abs() > 1e-3,
                "{place}: numeric gradient {numeric}, too small to check anything"
            );
            let relative = (numeric - analytic).abs() / numeric.abs().max(analytic.abs());
            assert!(relative < 0.05, "{place}: numeric {numeric} analytic {analytic}");
        }
    }
}

/// Where `values` is largest in magnitude.
#[cfg(test)]
pub(crate) fn largest(values: &[f32]) -> usize {
    (0..values.len())
        .max_by(|&a, &b| values[a].abs().total_cmp(&values[b].abs()))
        .expect("not empty")
}

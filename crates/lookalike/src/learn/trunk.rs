//! The last blocks of the backbone, run and trained in Rust: what `--fine-tune-blocks N` unfreezes.
//!
//! ONNX Runtime runs the backbone for inference only, so the blocks being fine-tuned are taken
//! out of it: the graph also outputs the activation entering the first trainable block, and this
//! module runs the rest (MBConv blocks, the 1×1 head convolution, global average pooling) with a
//! hand-written backward pass. Activations are laid out NHWC, `images × side² rows × channels`,
//! so every 1×1 convolution is a [`Dense`] layer over rows and the depthwise convolution reads
//! contiguous channels. BatchNorm stays folded into the convolutions with its statistics frozen
//! (the usual advice when fine-tuning on small batches); the folded weights and biases train.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::learn::dense::{dense_backward, Dense, LayerGrads};

/// The shape of one inverted-residual block (its weights are in [`Trunk::layers`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockShape {
    pub expand: bool,
    pub kernel: usize,
    pub stride: usize,
    /// Top, left, bottom, right.
    pub pads: [usize; 4],
    pub residual: bool,
    pub input_side: usize,
    pub output_side: usize,
}

/// The trainable end of the backbone: blocks, then the head convolution, then average pooling.
///
/// `layers` holds, per block, `[expand], depthwise, project`, then the head convolution. A
/// depthwise convolution is stored as a `Dense` of `kernel² × channels` (weight per tap and channel).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trunk {
    /// Index of the first block in the backbone (the graph's tap point).
    pub first_block: usize,
    pub input_channels: usize,
    pub blocks: Vec<BlockShape>,
    #[serde(skip)]
    pub layers: Vec<Dense>,
}

/// Activations kept for the backward pass of one image batch.
pub struct TrunkPass {
    images: usize,
    /// Per block: its input, the expanded activation (post ReLU6), the depthwise output (post ReLU6).
    blocks: Vec<[Vec<f32>; 3]>,
    /// The head convolution's input and output (post ReLU6).
    head_input: Vec<f32>,
    head_output: Vec<f32>,
    pub pooled: Vec<f32>,
}

fn relu6(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0));
}

/// Zeroes the gradient where the ReLU6 that produced `y` was flat.
fn through_relu6(grad: &mut [f32], y: &[f32]) {
    grad.iter_mut()
        .zip(y)
        .filter(|(_, &y)| y <= 0.0 || y >= 6.0)
        .for_each(|(g, _)| *g = 0.0);
}

/// Visits every (output row, input row, tap) of a depthwise convolution, padding skipped.
fn for_each_tap(images: usize, shape: &BlockShape, mut visit: impl FnMut(usize, usize, usize)) {
    let (i, o, k) = (shape.input_side, shape.output_side, shape.kernel);
    for img in 0..images {
        for oy in 0..o {
            for ox in 0..o {
                let out_row = (img * o + oy) * o + ox;
                for ky in 0..k {
                    let Some(y) = (oy * shape.stride + ky).checked_sub(shape.pads[0]).filter(|&y| y < i) else {
                        continue;
                    };
                    for kx in 0..k {
                        let Some(x) = (ox * shape.stride + kx).checked_sub(shape.pads[1]).filter(|&x| x < i) else {
                            continue;
                        };
                        visit(out_row, (img * i + y) * i + x, ky * k + kx);
                    }
                }
            }
        }
    }
}

fn depthwise_forward(layer: &Dense, shape: &BlockShape, x: &[f32], images: usize) -> Vec<f32> {
    let c = layer.output;
    let rows = images * shape.output_side * shape.output_side;
    let mut y: Vec<f32> = layer.bias.iter().copied().cycle().take(rows * c).collect();
    for_each_tap(images, shape, |out_row, in_row, tap| {
        let (out, input, w) = (
            &mut y[out_row * c..][..c],
            &x[in_row * c..][..c],
            &layer.weight[tap * c..][..c],
        );
        for ch in 0..c {
            out[ch] += w[ch] * input[ch];
        }
    });
    y
}

fn depthwise_backward(
    layer: &Dense,
    shape: &BlockShape,
    x: &[f32],
    grad: &[f32],
    images: usize,
) -> (LayerGrads, Vec<f32>) {
    let c = layer.output;
    let mut gw = vec![0.0; layer.weight.len()];
    let mut gb = vec![0.0; c];
    grad.chunks(c)
        .for_each(|row| gb.iter_mut().zip(row).for_each(|(b, g)| *b += g));
    let mut gx = vec![0.0; x.len()];
    for_each_tap(images, shape, |out_row, in_row, tap| {
        let g = &grad[out_row * c..][..c];
        let input = &x[in_row * c..][..c];
        let w = &layer.weight[tap * c..][..c];
        let gw = &mut gw[tap * c..][..c];
        for ch in 0..c {
            gw[ch] += g[ch] * input[ch];
        }
        let gx = &mut gx[in_row * c..][..c];
        for ch in 0..c {
            gx[ch] += g[ch] * w[ch];
        }
    });
    ((gw, gb), gx)
}

impl Trunk {
    /// The trunk's input for one image, NCHW, as the ONNX graph outputs it.
    pub fn input_dimension(&self) -> usize {
        let side = self.blocks.first().map_or(0, |b| b.input_side);
        self.input_channels * side * side
    }

    pub fn output_dimension(&self) -> usize {
        self.layers.last().map_or(0, |l| l.output)
    }

    fn final_side(&self) -> usize {
        self.blocks.last().map_or(0, |b| b.output_side)
    }

    /// How many layers the block shapes call for: per block `[expand], depthwise, project`, then the head.
    pub fn layer_count(&self) -> usize {
        self.blocks.iter().map(|b| 2 + usize::from(b.expand)).sum::<usize>() + 1
    }

    /// Checks that `layers` fit the block shapes (after loading from a file).
    pub fn check(&self) -> anyhow::Result<()> {
        let expected = self.layer_count();
        anyhow::ensure!(
            self.layers.len() == expected,
            "the trunk has {} layers, its blocks need {expected}",
            self.layers.len()
        );
        let mut channels = self.input_channels;
        let mut at = 0;
        for block in &self.blocks {
            let mut width = channels;
            if block.expand {
                anyhow::ensure!(self.layers[at].input == width, "expansion input mismatch");
                width = self.layers[at].output;
                at += 1;
            }
            let dw = &self.layers[at];
            anyhow::ensure!(
                dw.input == block.kernel * block.kernel && dw.output == width,
                "depthwise layer shape mismatch"
            );
            anyhow::ensure!(self.layers[at + 1].input == width, "projection input mismatch");
            let out = self.layers[at + 1].output;
            anyhow::ensure!(!block.residual || out == channels, "residual block changes channels");
            channels = out;
            at += 2;
        }
        anyhow::ensure!(self.layers[at].input == channels, "head convolution input mismatch");
        Ok(())
    }

    /// Forward pass over `images` NCHW inputs, keeping what [`Self::backward`] needs.
    pub fn forward(&self, input_nchw: &[f32], images: usize) -> TrunkPass {
        let side = self.blocks.first().map_or(0, |b| b.input_side);
        let (c, plane) = (self.input_channels, side * side);
        let mut x = vec![0.0; input_nchw.len()];
        for img in 0..images {
            for ch in 0..c {
                for p in 0..plane {
                    x[(img * plane + p) * c + ch] = input_nchw[(img * c + ch) * plane + p];
                }
            }
        }
        let mut layers = self.layers.iter();
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for shape in &self.blocks {
            let rows_in = images * shape.input_side * shape.input_side;
            let rows_out = images * shape.output_side * shape.output_side;
            let expanded = if shape.expand {
                let mut e = layers.next().expect("checked layout").forward(&x, rows_in);
                relu6(&mut e);
                e
            } else {
                x.clone()
            };
            let mut d = depthwise_forward(layers.next().expect("checked layout"), shape, &expanded, images);
            relu6(&mut d);
            let mut out = layers.next().expect("checked layout").forward(&d, rows_out);
            if shape.residual {
                out.iter_mut().zip(&x).for_each(|(o, i)| *o += i);
            }
            blocks.push([std::mem::replace(&mut x, out), expanded, d]);
        }
        let rows = images * self.final_side() * self.final_side();
        let head = layers.next().expect("checked layout");
        let mut head_output = head.forward(&x, rows);
        relu6(&mut head_output);
        let per_image = self.final_side() * self.final_side();
        let mut pooled = vec![0.0; images * head.output];
        for (r, row) in head_output.chunks(head.output).enumerate() {
            let p = &mut pooled[(r / per_image) * head.output..][..head.output];
            p.iter_mut().zip(row).for_each(|(p, v)| *p += v / per_image as f32);
        }
        TrunkPass {
            images,
            blocks,
            head_input: x,
            head_output,
            pooled,
        }
    }

    /// Gradients of every trunk layer given the gradient of the pooled output.
    pub fn backward(&self, pass: &TrunkPass, grad_pooled: &[f32]) -> Vec<LayerGrads> {
        let head = self.layers.last().expect("checked layout");
        let per_image = self.final_side() * self.final_side();
        let rows = pass.images * per_image;
        let mut grad: Vec<f32> = (0..rows)
            .flat_map(|r| grad_pooled[(r / per_image) * head.output..][..head.output].iter())
            .map(|g| g / per_image as f32)
            .collect();
        through_relu6(&mut grad, &pass.head_output);
        let mut grads = vec![(Vec::new(), Vec::new()); self.layers.len()];
        let (head_grads, g) = dense_backward(head, &pass.head_input, &grad, rows, true);
        *grads.last_mut().expect("head") = head_grads;
        let mut grad = g.expect("input gradient asked for");
        let mut end = self.layers.len() - 1;
        for (b, (shape, [input, expanded, depthwise])) in self.blocks.iter().zip(&pass.blocks).enumerate().rev() {
            let start = end - 2 - usize::from(shape.expand);
            let rows_out = pass.images * shape.output_side * shape.output_side;
            let rows_in = pass.images * shape.input_side * shape.input_side;
            let (project_grads, gd) = dense_backward(&self.layers[end - 1], depthwise, &grad, rows_out, true);
            grads[end - 1] = project_grads;
            let mut gd = gd.expect("input gradient asked for");
            through_relu6(&mut gd, depthwise);
            let (dw_grads, mut ge) = depthwise_backward(&self.layers[end - 2], shape, expanded, &gd, pass.images);
            grads[end - 2] = dw_grads;
            let first = b == 0;
            let mut gx = if shape.expand {
                through_relu6(&mut ge, expanded);
                let (expand_grads, gx) = dense_backward(&self.layers[start], input, &ge, rows_in, !first);
                grads[start] = expand_grads;
                gx.unwrap_or_default()
            } else {
                ge
            };
            if shape.residual && !first {
                gx.iter_mut().zip(&grad).for_each(|(a, g)| *a += g);
            }
            grad = gx;
            end = start;
        }
        grads
    }

    /// Pooled features of `images` NCHW inputs, in chunks across cores.
    pub fn pooled(&self, input_nchw: &[f32], images: usize) -> Vec<f32> {
        if images == 0 {
            return Vec::new();
        }
        let per_image = input_nchw.len() / images;
        input_nchw
            .par_chunks(16 * per_image)
            .flat_map_iter(|chunk| self.forward(chunk, chunk.len() / per_image).pooled)
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::learn::dense::assert_gradients_match;

    /// A tiny random trunk: a stride-2 block with expansion, then a residual one without.
    pub(crate) fn tiny_trunk(seed: u64) -> Trunk {
        let mut rng = fastrand::Rng::with_seed(seed);
        let blocks = vec![
            BlockShape {
                expand: true,
                kernel: 3,
                stride: 2,
                pads: [0, 0, 1, 1],
                residual: false,
                input_side: 5,
                output_side: 3,
            },
            BlockShape {
                expand: false,
                kernel: 3,
                stride: 1,
                pads: [1, 1, 1, 1],
                residual: true,
                input_side: 3,
                output_side: 3,
            },
        ];
        let mut layers = vec![
            Dense::new(3, 6, &mut rng),
            Dense::new(9, 6, &mut rng),
            Dense::new(6, 4, &mut rng),
            Dense::new(9, 4, &mut rng),
            Dense::new(4, 4, &mut rng),
            Dense::new(4, 5, &mut rng),
        ];
        // Small positive biases keep most ReLU6 units away from their kinks.
        layers.iter_mut().for_each(|l| l.bias.iter_mut().for_each(|b| *b = 0.3));
        let trunk = Trunk {
            first_block: 0,
            input_channels: 3,
            blocks,
            layers,
        };
        trunk.check().unwrap();
        trunk
    }

    #[test]
    fn gradients_match_finite_differences() {
        let trunk = tiny_trunk(7);
        let mut rng = fastrand::Rng::with_seed(8);
        let images = 2;
        let input: Vec<f32> = (0..images * trunk.input_dimension()).map(|_| rng.f32()).collect();
        let target: Vec<f32> = (0..images * 5).map(|_| rng.f32() - 0.5).collect();
        // Objective: ½ Σ (pooled · target)², whose gradient w.r.t. pooled is (pooled · target) target.
        let objective = |layers: &[Dense]| {
            let t = Trunk {
                layers: layers.to_vec(),
                ..trunk.clone()
            };
            let pass = t.forward(&input, images);
            let dots: Vec<f32> = pass
                .pooled
                .chunks(5)
                .zip(target.chunks(5))
                .map(|(p, t)| p.iter().zip(t).map(|(a, b)| a * b).sum())
                .collect();
            let loss = dots.iter().map(|d| 0.5 * f64::from(d * d)).sum::<f64>();
            (loss, pass, dots)
        };
        let (_, pass, dots) = objective(&trunk.layers);
        let grad: Vec<f32> = target.iter().enumerate().map(|(i, t)| t * dots[i / 5]).collect();
        let grads = trunk.backward(&pass, &grad);
        // Each layer's largest weight gradient (most are too small to measure in float32 here).
        let at: Vec<(usize, usize)> = (0..trunk.layers.len())
            .map(|l| (l, crate::learn::dense::largest(&grads[l].0)))
            .collect();
        assert_gradients_match(&trunk.layers, &grads, &at, |l| objective(l).0);
    }

    #[test]
    fn chunked_pooling_equals_one_pass() {
        let trunk = tiny_trunk(9);
        let images = 40;
        let mut rng = fastrand::Rng::with_seed(10);
        let input: Vec<f32> = (0..images * trunk.input_dimension()).map(|_| rng.f32()).collect();
        let whole = trunk.forward(&input, images).pooled;
        let chunked = trunk.pooled(&input, images);
        assert!(whole.iter().zip(&chunked).all(|(a, b)| (a - b).abs() < 1e-6));
    }
}

//! A small CNN trained from scratch on Fashion-MNIST (28×28 grey): conv 3×3 (32) → ReLU →
//! max-pool 2 → conv 3×3 (64) → ReLU → max-pool 2 → dense 128 (ReLU; the embedding) → dense 10.
//!
//! Activations are NHWC, so a 3×3 convolution over a batch is one matrix product of the
//! im2col patches (rows: pixels, columns: 3·3·channels) with the kernel matrix, and each layer's
//! weights are a [`Dense`] that the shared AdamW step updates. Batches are split across threads
//! (rayon) and their gradients summed in a fixed order, so runs are reproducible for a seed.

use std::io::Read;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::Serialize;

use crate::learn::dense::{dense_backward, Dense, LayerGrads};
use crate::learn::train::{cross_entropy, parallel_gradients, Adam};
use crate::linalg::{gemm, l2_normalise_rows, Strided};

pub const SIDE: usize = 28;
const C1: usize = 32;
const C2: usize = 64;
const HIDDEN: usize = 128;
const CLASSES: usize = 10;
pub const FASHION_CLASSES: [&str; CLASSES] = [
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
];

/// Images scaled to [0, 1], row-major, with labels.
pub struct Digits {
    pub images: Vec<f32>,
    pub labels: Vec<usize>,
}

impl Digits {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn image(&self, i: usize) -> &[f32] {
        &self.images[i * SIDE * SIDE..(i + 1) * SIDE * SIDE]
    }
}

fn read_gz(path: &Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .with_context(|| format!("{} is not a gzip file", path.display()))?;
    Ok(bytes)
}

fn be_u32(bytes: &[u8], at: usize) -> usize {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize
}

/// Reads an idx3 image file and its idx1 label file (gzip-compressed, as distributed).
pub fn read_idx(images: &Path, labels: &Path) -> Result<Digits> {
    let (img, lab) = (read_gz(images)?, read_gz(labels)?);
    if img.len() < 16 || be_u32(&img, 0) != 2051 {
        bail!("{} is not an idx3 image file (magic 2051)", images.display());
    }
    if lab.len() < 8 || be_u32(&lab, 0) != 2049 {
        bail!("{} is not an idx1 label file (magic 2049)", labels.display());
    }
    let (n, rows, cols) = (be_u32(&img, 4), be_u32(&img, 8), be_u32(&img, 12));
    if rows != SIDE || cols != SIDE {
        bail!("{} holds {rows}×{cols} images, expected 28×28", images.display());
    }
    if img.len() != 16 + n * SIDE * SIDE || lab.len() != 8 + n || be_u32(&lab, 4) != n {
        bail!(
            "{} and {} disagree on the number of items or are truncated",
            images.display(),
            labels.display()
        );
    }
    let labels: Vec<usize> = lab[8..].iter().map(|&l| l as usize).collect();
    if labels.iter().any(|&l| l >= CLASSES) {
        bail!("{} has labels outside 0..9", labels.len());
    }
    Ok(Digits {
        images: img[16..].iter().map(|&p| f32::from(p) / 255.0).collect(),
        labels,
    })
}

/// Reads `train-*` and `t10k-*` from a Fashion-MNIST folder.
pub fn read_fashion_mnist(dir: &Path) -> Result<(Digits, Digits)> {
    Ok((
        read_idx(
            &dir.join("train-images-idx3-ubyte.gz"),
            &dir.join("train-labels-idx1-ubyte.gz"),
        )?,
        read_idx(
            &dir.join("t10k-images-idx3-ubyte.gz"),
            &dir.join("t10k-labels-idx1-ubyte.gz"),
        )?,
    ))
}

/// Calls `visit(patch_offset, pixel_offset)` for every in-bounds (output pixel, 3×3 neighbour) pair of
/// an NHWC batch with padding 1: where the neighbour's channels sit in the im2col matrix and in the image.
fn for_each_patch(batch: usize, side: usize, channels: usize, mut visit: impl FnMut(usize, usize)) {
    let width = 9 * channels;
    for b in 0..batch {
        for y in 0..side {
            for x in 0..side {
                let row = ((b * side + y) * side + x) * width;
                for ky in 0..3 {
                    let Some(sy) = (y + ky).checked_sub(1).filter(|&sy| sy < side) else {
                        continue;
                    };
                    for kx in 0..3 {
                        let Some(sx) = (x + kx).checked_sub(1).filter(|&sx| sx < side) else {
                            continue;
                        };
                        visit(row + (ky * 3 + kx) * channels, ((b * side + sy) * side + sx) * channels);
                    }
                }
            }
        }
    }
}

/// 3×3, padding 1 patches of an NHWC batch: one row per pixel, columns (ky, kx, channel).
fn im2col(x: &[f32], batch: usize, side: usize, channels: usize) -> Vec<f32> {
    let mut cols = vec![0.0; batch * side * side * 9 * channels];
    for_each_patch(batch, side, channels, |patch, pixel| {
        cols[patch..patch + channels].copy_from_slice(&x[pixel..pixel + channels]);
    });
    cols
}

/// The adjoint of [`im2col`]: patch gradients summed back onto the input pixels.
fn col2im(cols: &[f32], batch: usize, side: usize, channels: usize) -> Vec<f32> {
    let mut x = vec![0.0; batch * side * side * channels];
    for_each_patch(batch, side, channels, |patch, pixel| {
        for c in 0..channels {
            x[pixel + c] += cols[patch + c];
        }
    });
    x
}

/// 2×2 max-pool of an NHWC batch; returns the pooled values and, per output, the input index.
fn max_pool(x: &[f32], batch: usize, side: usize, channels: usize) -> (Vec<f32>, Vec<usize>) {
    let half = side / 2;
    let mut out = vec![0.0; batch * half * half * channels];
    let mut arg = vec![0; out.len()];
    for b in 0..batch {
        for y in 0..half {
            for xx in 0..half {
                for c in 0..channels {
                    let o = ((b * half + y) * half + xx) * channels + c;
                    let mut best = (f32::NEG_INFINITY, 0);
                    for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        let i = ((b * side + 2 * y + dy) * side + 2 * xx + dx) * channels + c;
                        if x[i] > best.0 {
                            best = (x[i], i);
                        }
                    }
                    (out[o], arg[o]) = best;
                }
            }
        }
    }
    (out, arg)
}

fn conv(layer: &Dense, cols: &[f32], rows: usize) -> Vec<f32> {
    let mut y = layer.forward(cols, rows);
    y.iter_mut().for_each(|v| *v = v.max(0.0));
    y
}

/// What the backward pass needs from a forward pass over one batch.
struct Activations {
    cols1: Vec<f32>,
    relu1: Vec<f32>,
    arg1: Vec<usize>,
    cols2: Vec<f32>,
    relu2: Vec<f32>,
    arg2: Vec<usize>,
    flat: Vec<f32>,
    hidden: Vec<f32>,
    dropout_mask: Vec<f32>,
    logits: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct FashionCnn {
    /// conv1 (9 → 32), conv2 (288 → 64), dense (3136 → 128), dense (128 → 10).
    pub layers: Vec<Dense>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScratchEpoch {
    pub epoch: usize,
    pub train_loss: f64,
    pub test_accuracy: f64,
    pub learning_rate: f32,
    pub seconds: f64,
}

impl FashionCnn {
    pub fn new(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let flat = (SIDE / 4) * (SIDE / 4) * C2;
        Self {
            layers: vec![
                Dense::new(9, C1, &mut rng),
                Dense::new(9 * C1, C2, &mut rng),
                Dense::new(flat, HIDDEN, &mut rng),
                Dense::new(HIDDEN, CLASSES, &mut rng),
            ],
        }
    }

    fn forward(&self, images: &[f32], batch: usize, dropout: Option<(f32, &mut fastrand::Rng)>) -> Activations {
        let l = &self.layers;
        let cols1 = im2col(images, batch, SIDE, 1);
        let relu1 = conv(&l[0], &cols1, batch * SIDE * SIDE);
        let (pool1, arg1) = max_pool(&relu1, batch, SIDE, C1);
        let half = SIDE / 2;
        let cols2 = im2col(&pool1, batch, half, C1);
        let relu2 = conv(&l[1], &cols2, batch * half * half);
        let (flat, arg2) = max_pool(&relu2, batch, half, C2);
        let mut hidden = l[2].forward(&flat, batch);
        hidden.iter_mut().for_each(|v| *v = v.max(0.0));
        let mut dropout_mask = Vec::new();
        if let Some((rate, rng)) = dropout {
            let keep = 1.0 - rate;
            dropout_mask = (0..hidden.len())
                .map(|_| if rng.f32() < keep { 1.0 / keep } else { 0.0 })
                .collect();
            hidden.iter_mut().zip(&dropout_mask).for_each(|(h, m)| *h *= m);
        }
        let logits = l[3].forward(&hidden, batch);
        Activations {
            cols1,
            relu1,
            arg1,
            cols2,
            relu2,
            arg2,
            flat,
            hidden,
            dropout_mask,
            logits,
        }
    }

    /// Loss and gradients of every layer for one batch.
    fn gradients(&self, a: &Activations, labels: &[usize]) -> (f64, Vec<LayerGrads>) {
        let batch = labels.len();
        let l = &self.layers;
        let (loss, d_logits) = cross_entropy(&a.logits, labels, CLASSES);
        let (g3, d_hidden) = dense_backward(&l[3], &a.hidden, &d_logits, batch, true);
        let mut d_hidden = d_hidden.expect("input gradient");
        for (i, g) in d_hidden.iter_mut().enumerate() {
            let mask = a.dropout_mask.get(i).copied().unwrap_or(1.0);
            if a.hidden[i] <= 0.0 {
                *g = 0.0;
            } else {
                *g *= mask;
            }
        }
        let (g2, d_flat) = dense_backward(&l[2], &a.flat, &d_hidden, batch, true);
        let d_flat = d_flat.expect("input gradient");
        let unpool = |grad: &[f32], arg: &[usize], relu: &[f32]| {
            let mut d = vec![0.0; relu.len()];
            for (g, &i) in grad.iter().zip(arg) {
                if relu[i] > 0.0 {
                    d[i] += g;
                }
            }
            d
        };
        let half = SIDE / 2;
        let d_relu2 = unpool(&d_flat, &a.arg2, &a.relu2);
        let (g1, d_cols2) = dense_backward(&l[1], &a.cols2, &d_relu2, batch * half * half, true);
        let d_cols2 = d_cols2.expect("input gradient");
        let d_pool1 = col2im(&d_cols2, batch, half, C1);
        let d_relu1 = unpool(&d_pool1, &a.arg1, &a.relu1);
        let (g0, _) = dense_backward(&l[0], &a.cols1, &d_relu1, batch * SIDE * SIDE, false);
        (loss, vec![g0, g1, g2, g3])
    }

    /// Class logits for a batch of images.
    pub fn logits(&self, images: &[f32]) -> Vec<f32> {
        self.run_in_chunks(images, |a| a.logits)
    }

    /// The 128-d penultimate activations, L2-normalised: an embedding for k-NN.
    pub fn embed(&self, images: &[f32]) -> Vec<f32> {
        let mut e = self.run_in_chunks(images, |a| a.hidden);
        l2_normalise_rows(&mut e, HIDDEN);
        e
    }

    fn run_in_chunks(&self, images: &[f32], pick: fn(Activations) -> Vec<f32>) -> Vec<f32> {
        images
            .par_chunks(256 * SIDE * SIDE)
            .map(|chunk| pick(self.forward(chunk, chunk.len() / (SIDE * SIDE), None)))
            .collect::<Vec<_>>()
            .concat()
    }

    pub fn accuracy(&self, data: &Digits) -> f64 {
        let logits = self.logits(&data.images);
        let correct = logits
            .chunks(CLASSES)
            .zip(&data.labels)
            .filter(|(row, &l)| (0..CLASSES).max_by(|&a, &b| row[a].total_cmp(&row[b])) == Some(l))
            .count();
        correct as f64 / data.len().max(1) as f64
    }

    /// Trains with AdamW (cosine-decayed learning rate), `epochs` passes over `train`; each epoch
    /// reports its test accuracy through `on_epoch`.
    pub fn train(
        &mut self,
        train: &Digits,
        test: &Digits,
        epochs: usize,
        batch_size: usize,
        seed: u64,
        on_epoch: &mut dyn FnMut(&ScratchEpoch),
    ) -> Result<Vec<ScratchEpoch>> {
        if train.is_empty() || epochs == 0 || batch_size < 2 {
            bail!("need training images, at least one epoch and a batch of at least 2");
        }
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut adam = Adam::new(&self.layers);
        let base_lr = 2e-3f32;
        let threads = rayon::current_num_threads().max(1);
        let mut history = Vec::new();
        for epoch in 1..=epochs {
            let started = Instant::now();
            let lr = base_lr * 0.5 * (1.0 + (std::f32::consts::PI * (epoch - 1) as f32 / epochs as f32).cos());
            let mut order: Vec<usize> = (0..train.len()).collect();
            rng.shuffle(&mut order);
            let mut total = 0.0;
            for batch in order.chunks(batch_size) {
                let (loss, grads) = parallel_gradients(batch, threads, &mut rng, |slice, slice_rng| {
                    let images: Vec<f32> = slice.iter().flat_map(|&i| train.image(i).iter().copied()).collect();
                    let labels: Vec<usize> = slice.iter().map(|&i| train.labels[i]).collect();
                    let acts = self.forward(&images, slice.len(), Some((0.25, slice_rng)));
                    self.gradients(&acts, &labels)
                });
                total += loss * batch.len() as f64;
                adam.step(&mut self.layers, &grads, lr, 1e-4);
            }
            let record = ScratchEpoch {
                epoch,
                train_loss: total / train.len() as f64,
                test_accuracy: self.accuracy(test),
                learning_rate: lr,
                seconds: started.elapsed().as_secs_f64(),
            };
            on_epoch(&record);
            history.push(record);
        }
        Ok(history)
    }
}

const METADATA_KEY: &str = "lookalike_fashion_cnn";

impl FashionCnn {
    pub fn save(&self, path: &Path) -> Result<()> {
        let metadata = serde_json::json!({ "architecture": "conv32-pool-conv64-pool-dense128-dense10", "classes": FASHION_CLASSES });
        let bytes = crate::learn::head::layers_to_safetensors(&self.layers, METADATA_KEY, &metadata.to_string())?;
        crate::files::write_atomically(path, |out| Ok(std::io::Write::write_all(out, &bytes)?))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        crate::learn::head::safetensors_metadata(&bytes, METADATA_KEY)?;
        let layers = crate::learn::head::layers_from_safetensors(&bytes, 4)?;
        let expected = Self::new(0);
        if layers
            .iter()
            .zip(&expected.layers)
            .any(|(a, b)| (a.input, a.output) != (b.input, b.output))
        {
            bail!("{} has layers of other sizes than this network", path.display());
        }
        Ok(Self { layers })
    }
}

/// Share of `queries` whose nearest `gallery` embedding (cosine) has the same label.
pub fn knn_at_1(queries: &[f32], query_labels: &[usize], gallery: &[f32], gallery_labels: &[usize], d: usize) -> f64 {
    let correct: usize = queries
        .par_chunks(512 * d)
        .zip(query_labels.par_chunks(512))
        .map(|(q, labels)| {
            let rows = labels.len();
            let mut sims = vec![0.0; rows * gallery_labels.len()];
            gemm(
                Strided::rows(q, d),
                Strided::transposed(gallery, d),
                &mut sims,
                (rows, d, gallery_labels.len()),
                1.0,
                0.0,
            );
            sims.chunks(gallery_labels.len())
                .zip(labels)
                .filter(|(row, &label)| {
                    let best = (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)));
                    best.is_some_and(|b| gallery_labels[b] == label)
                })
                .count()
        })
        .sum();
    correct as f64 / query_labels.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        // <im2col(x), c> == <x, col2im(c)> for any x, c.
        let mut rng = fastrand::Rng::with_seed(1);
        let (batch, side, ch) = (2, 5, 3);
        let x: Vec<f32> = (0..batch * side * side * ch).map(|_| rng.f32()).collect();
        let c: Vec<f32> = (0..batch * side * side * 9 * ch).map(|_| rng.f32()).collect();
        let lhs: f32 = im2col(&x, batch, side, ch).iter().zip(&c).map(|(a, b)| a * b).sum();
        let rhs: f32 = x.iter().zip(col2im(&c, batch, side, ch)).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() < 1e-3 * lhs.abs(), "{lhs} vs {rhs}");
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = fastrand::Rng::with_seed(2);
        let net = FashionCnn::new(3);
        let images: Vec<f32> = (0..3 * SIDE * SIDE).map(|_| rng.f32()).collect();
        let labels = [1, 7, 4];
        let loss = |net: &FashionCnn| {
            let acts = net.forward(&images, 3, None);
            cross_entropy(&acts.logits, &labels, CLASSES).0
        };
        let (_, grads) = net.gradients(&net.forward(&images, 3, None), &labels);
        crate::learn::dense::assert_gradients_match(
            &net.layers,
            &grads,
            &[(0, 5), (1, 100), (2, 777), (3, 33)],
            |layers| {
                loss(&FashionCnn {
                    layers: layers.to_vec(),
                })
            },
        );
    }

    #[test]
    fn bad_idx_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut gz, bytes).unwrap();
            std::fs::write(dir.path().join(name), gz.finish().unwrap()).unwrap();
            dir.path().join(name)
        };
        let labels = write("l.gz", &[0, 0, 8, 1, 0, 0, 0, 1, 3]);
        let mut images = vec![0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 28, 0, 0, 0, 28];
        images.extend(std::iter::repeat_n(255u8, 28 * 28));
        let good = read_idx(&write("i.gz", &images), &labels).unwrap();
        assert_eq!((good.len(), good.labels[0], good.images[0]), (1, 3, 1.0));
        images.truncate(100);
        assert!(read_idx(&write("short.gz", &images), &labels).is_err());
        assert!(read_idx(&labels, &labels).is_err());
    }
}

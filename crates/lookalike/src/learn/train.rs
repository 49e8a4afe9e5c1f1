//! Training heads on frozen backbone features: a softmax classifier (optionally one hidden
//! layer, dropout) and a metric-learning projection (triplet with batch-hard or semi-hard
//! mining, or siamese contrastive), with Adam, early stopping on a validation set, the best
//! epoch kept, and the learning rate reduced on plateaus.
//!
//! Gradients are written by hand: the heads are dense stacks, whose backward pass is two
//! matrix products per layer. Everything is single-threaded and seeded, so a run is
//! reproducible bit for bit.

use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;

use rayon::prelude::*;

use crate::learn::dense::{dense_backward, Dense, LayerGrads};
use crate::learn::head::{Head, HeadKind};
use crate::learn::trunk::Trunk;
use crate::linalg::{gemm, l2_normalise_rows, softmax_rows, Strided};

/// Learning rate of fine-tuned backbone blocks relative to the head's: pretrained weights
/// need small steps, a freshly initialised head large ones.
pub const BACKBONE_LR_FACTOR: f32 = 0.1;

/// Feature vectors with class labels (indices into `classes`).
#[derive(Debug, Clone)]
pub struct LabelledFeatures {
    pub features: Vec<f32>,
    pub labels: Vec<usize>,
    pub dimension: usize,
    pub classes: Vec<String>,
}

impl LabelledFeatures {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.dimension..(i + 1) * self.dimension]
    }

    fn gather(&self, rows: &[usize]) -> Vec<f32> {
        rows.iter().flat_map(|&i| self.row(i).iter().copied()).collect()
    }

    fn check_trainable(&self, what: &str) -> Result<()> {
        if self.is_empty() {
            bail!("the {what} set has no images");
        }
        let mut seen = vec![false; self.classes.len()];
        self.labels.iter().for_each(|&l| seen[l] = true);
        let present = seen.iter().filter(|&&s| s).count();
        if what == "training" && present < 2 {
            bail!(
                "the training set has {present} class with images; a head needs at least two classes (one sub-folder each)"
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricLoss {
    Triplet,
    Contrastive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mining {
    BatchHard,
    SemiHard,
}

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f32,
    pub weight_decay: f32,
    /// A hidden ReLU layer of this width before the output.
    pub hidden: Option<usize>,
    /// Dropout on every layer's input during training.
    pub dropout: f32,
    /// Epochs without improvement before stopping.
    pub patience: usize,
    /// Epochs without improvement before the learning rate is multiplied by `lr_factor`.
    pub lr_patience: usize,
    pub lr_factor: f32,
    pub seed: u64,
    /// Projection heads: output width, loss, margin, mining, and images per class in a batch.
    pub embedding_dimension: usize,
    pub loss: MetricLoss,
    pub margin: f32,
    pub mining: Mining,
    pub per_class: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            epochs: 100,
            batch_size: 64,
            learning_rate: 1e-3,
            weight_decay: 1e-4,
            hidden: None,
            dropout: 0.2,
            patience: 8,
            lr_patience: 3,
            lr_factor: 0.5,
            seed: 42,
            embedding_dimension: 256,
            loss: MetricLoss::Triplet,
            margin: 0.2,
            mining: Mining::SemiHard,
            per_class: 8,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_loss: f64,
    /// Validation accuracy (classifier) or k-NN precision@1 against the training set (projection).
    pub val_accuracy: f64,
    pub learning_rate: f32,
    pub seconds: f64,
}

#[derive(Debug, Clone)]
pub struct Trained {
    pub head: Head,
    pub history: Vec<EpochRecord>,
    pub best_epoch: usize,
    pub stopped_early: bool,
}

/// First and second moments of one layer's weight and bias.
struct LayerMoments {
    weight: (Vec<f32>, Vec<f32>),
    bias: (Vec<f32>, Vec<f32>),
}

pub(crate) struct Adam {
    moments: Vec<LayerMoments>,
    /// Multiplies the learning rate per layer (fine-tuned backbone layers take smaller steps).
    scales: Vec<f32>,
    steps: i32,
}

impl Adam {
    pub(crate) fn new(layers: &[Dense]) -> Self {
        Self {
            moments: layers
                .iter()
                .map(|l| {
                    let (w, b) = (l.weight.len(), l.bias.len());
                    LayerMoments {
                        weight: (vec![0.0; w], vec![0.0; w]),
                        bias: (vec![0.0; b], vec![0.0; b]),
                    }
                })
                .collect(),
            scales: vec![1.0; layers.len()],
            steps: 0,
        }
    }

    /// The first `count` layers learn at `factor` times the learning rate.
    pub(crate) fn slower_first(mut self, count: usize, factor: f32) -> Self {
        self.scales.iter_mut().take(count).for_each(|s| *s = factor);
        self
    }

    pub(crate) fn step(&mut self, layers: &mut [Dense], grads: &[LayerGrads], lr: f32, weight_decay: f32) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        self.steps += 1;
        let c1 = 1.0 - B1.powi(self.steps);
        let c2 = 1.0 - B2.powi(self.steps);
        let update = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], decay: f32, lr: f32| {
            for i in 0..p.len() {
                m[i] = B1 * m[i] + (1.0 - B1) * g[i];
                v[i] = B2 * v[i] + (1.0 - B2) * g[i] * g[i];
                // Decoupled weight decay (AdamW).
                p[i] -= lr * ((m[i] / c1) / ((v[i] / c2).sqrt() + 1e-8) + decay * p[i]);
            }
        };
        for (((layer, (gw, gb)), m), scale) in layers.iter_mut().zip(grads).zip(&mut self.moments).zip(&self.scales) {
            let lr = lr * scale;
            update(
                &mut layer.weight,
                gw,
                &mut m.weight.0,
                &mut m.weight.1,
                weight_decay,
                lr,
            );
            update(&mut layer.bias, gb, &mut m.bias.0, &mut m.bias.1, 0.0, lr);
        }
    }
}

/// One forward pass that remembers what the backward pass needs.
struct Pass {
    /// The input of each layer (after dropout), then the output of the last.
    inputs: Vec<Vec<f32>>,
    /// Dropout scale per input element of each layer (0 for dropped), empty when not training.
    masks: Vec<Vec<f32>>,
}

fn forward(layers: &[Dense], x: Vec<f32>, rows: usize, dropout: f32, rng: Option<&mut fastrand::Rng>) -> Pass {
    let mut inputs = Vec::with_capacity(layers.len() + 1);
    let mut masks = Vec::new();
    let mut rng = rng;
    let mut x = x;
    for (i, layer) in layers.iter().enumerate() {
        if let Some(rng) = rng.as_deref_mut().filter(|_| dropout > 0.0) {
            let keep = 1.0 - dropout;
            let mask: Vec<f32> = (0..x.len())
                .map(|_| if rng.f32() < keep { 1.0 / keep } else { 0.0 })
                .collect();
            x.iter_mut().zip(&mask).for_each(|(v, m)| *v *= m);
            masks.push(mask);
        }
        let mut y = layer.forward(&x, rows);
        if i + 1 < layers.len() {
            y.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        inputs.push(x);
        x = y;
    }
    inputs.push(x);
    Pass { inputs, masks }
}

/// Gradients of every layer's weight and bias given the gradient of the last output, and
/// the gradient with respect to the stack's input when `input_grad` (through its dropout).
fn backward(
    layers: &[Dense],
    pass: &Pass,
    mut grad: Vec<f32>,
    rows: usize,
    input_grad: bool,
) -> (Vec<LayerGrads>, Option<Vec<f32>>) {
    let mut grads = vec![(Vec::new(), Vec::new()); layers.len()];
    for (i, layer) in layers.iter().enumerate().rev() {
        let input = &pass.inputs[i];
        let (layer_grads, gx) = dense_backward(layer, input, &grad, rows, i > 0 || input_grad);
        grads[i] = layer_grads;
        let Some(mut gx) = gx else { break };
        // Through dropout (the stored input is already masked) and the ReLU that made it, if any.
        let mask = pass.masks.get(i);
        for (j, g) in gx.iter_mut().enumerate() {
            if (i > 0 && input[j] <= 0.0) || mask.is_some_and(|m| m[j] == 0.0) {
                *g = 0.0;
            } else if let Some(m) = mask {
                *g *= m[j];
            }
        }
        grad = gx;
    }
    let input_grad = input_grad.then_some(grad);
    (grads, input_grad)
}

/// Gradients of one batch computed on slices of it across cores, each slice with its own
/// seed drawn from `rng` (so the result does not depend on scheduling); `slice_gradients`
/// returns a slice's mean loss and mean gradients, and the slices are weighted and summed in order.
pub(crate) fn parallel_gradients(
    batch: &[usize],
    slices: usize,
    rng: &mut fastrand::Rng,
    slice_gradients: impl Fn(&[usize], &mut fastrand::Rng) -> (f64, Vec<LayerGrads>) + Sync,
) -> (f64, Vec<LayerGrads>) {
    let slices: Vec<(&[usize], u64)> = batch
        .chunks(batch.len().div_ceil(slices.max(1)))
        .map(|s| (s, rng.u64(..)))
        .collect();
    let parts: Vec<(f64, Vec<LayerGrads>)> = slices
        .par_iter()
        .map(|&(slice, seed)| {
            let (loss, mut grads) = slice_gradients(slice, &mut fastrand::Rng::with_seed(seed));
            let weight = slice.len() as f32 / batch.len() as f32;
            for (gw, gb) in &mut grads {
                gw.iter_mut().chain(gb.iter_mut()).for_each(|g| *g *= weight);
            }
            (loss * f64::from(weight), grads)
        })
        .collect();
    let mut parts = parts.into_iter();
    let (mut loss, mut grads) = parts.next().expect("a batch has at least one slice");
    for (l, g) in parts {
        loss += l;
        for ((aw, ab), (bw, bb)) in grads.iter_mut().zip(g) {
            aw.iter_mut().zip(bw).for_each(|(a, b)| *a += b);
            ab.iter_mut().zip(bb).for_each(|(a, b)| *a += b);
        }
    }
    (loss, grads)
}

/// Mean cross-entropy and its gradient with respect to the logits.
pub(crate) fn cross_entropy(logits: &[f32], labels: &[usize], classes: usize) -> (f64, Vec<f32>) {
    let mut probs = logits.to_vec();
    softmax_rows(&mut probs, classes);
    let rows = labels.len();
    let mut loss = 0.0;
    for (r, &label) in labels.iter().enumerate() {
        loss -= f64::from(probs[r * classes + label].max(1e-12).ln());
        probs[r * classes + label] -= 1.0;
    }
    probs.iter_mut().for_each(|g| *g /= rows as f32);
    (loss / rows as f64, probs)
}

fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Metric loss on unit embeddings `e` (rows × d) and its gradient with respect to `e`.
pub fn metric_loss(e: &[f32], labels: &[usize], d: usize, options: &TrainOptions) -> (f64, Vec<f32>) {
    let rows = labels.len();
    let row = |i: usize| &e[i * d..(i + 1) * d];
    let mut grad = vec![0.0f32; e.len()];
    let add = |grad: &mut [f32], i: usize, from: usize, scale: f32| {
        for t in 0..d {
            grad[i * d + t] += scale * e[from * d + t];
        }
    };
    let mut loss = 0.0f64;
    match options.loss {
        MetricLoss::Triplet => {
            let dist: Vec<f32> = (0..rows * rows)
                .map(|ij| squared_distance(row(ij / rows), row(ij % rows)))
                .collect();
            for a in 0..rows {
                let positives = (0..rows).filter(|&p| p != a && labels[p] == labels[a]);
                let Some(p) = positives.max_by(|&x, &y| dist[a * rows + x].total_cmp(&dist[a * rows + y])) else {
                    continue;
                };
                let dp = dist[a * rows + p];
                let negatives = || (0..rows).filter(|&n| labels[n] != labels[a]);
                let closest = |it: &mut dyn Iterator<Item = usize>| {
                    it.min_by(|&x, &y| dist[a * rows + x].total_cmp(&dist[a * rows + y]))
                };
                let n = match options.mining {
                    Mining::BatchHard => closest(&mut negatives()),
                    Mining::SemiHard => closest(&mut negatives().filter(|&n| {
                        let dn = dist[a * rows + n];
                        dn > dp && dn < dp + options.margin
                    }))
                    .or_else(|| closest(&mut negatives())),
                };
                let Some(n) = n else { continue };
                let violation = dp - dist[a * rows + n] + options.margin;
                if violation > 0.0 {
                    loss += f64::from(violation);
                    // d(a,p) = |a|² + |p|² - 2 a·p on unit vectors: ∂/∂a = -2p, ∂/∂p = -2a; minus for d(a,n).
                    let s = 2.0 / rows as f32;
                    add(&mut grad, a, p, -s);
                    add(&mut grad, p, a, -s);
                    add(&mut grad, a, n, s);
                    add(&mut grad, n, a, s);
                }
            }
            loss /= rows as f64;
        }
        MetricLoss::Contrastive => {
            let pairs = (rows * (rows - 1) / 2).max(1) as f32;
            for i in 0..rows {
                for j in i + 1..rows {
                    let dist = squared_distance(row(i), row(j)).sqrt();
                    // ∂|e_i - e_j|² / ∂e_i = 2(e_i - e_j); the negative term scales it by -(m - d)/d.
                    let scale = if labels[i] == labels[j] {
                        loss += f64::from(dist * dist);
                        2.0
                    } else if dist < options.margin {
                        loss += f64::from((options.margin - dist).powi(2));
                        -2.0 * (options.margin - dist) / dist.max(1e-6)
                    } else {
                        continue;
                    } / pairs;
                    add(&mut grad, i, i, scale);
                    add(&mut grad, i, j, -scale);
                    add(&mut grad, j, j, scale);
                    add(&mut grad, j, i, -scale);
                }
            }
            loss /= f64::from(pairs);
        }
    }
    (loss, grad)
}

/// Back through `e = z / |z|`: `∂z = (∂e - e (e·∂e)) / |z|`.
fn through_normalisation(z: &[f32], e: &[f32], grad_e: &[f32], d: usize) -> Vec<f32> {
    let mut out = vec![0.0; z.len()];
    for r in 0..z.len() / d {
        let span = r * d..(r + 1) * d;
        let norm = z[span.clone()].iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        let dot: f32 = e[span.clone()]
            .iter()
            .zip(&grad_e[span.clone()])
            .map(|(a, b)| a * b)
            .sum();
        for t in span {
            out[t] = (grad_e[t] - e[t] * dot) / norm;
        }
    }
    out
}

/// Batches of `per_class` images from each of several classes, so every anchor has positives.
fn class_balanced_batches(data: &LabelledFeatures, options: &TrainOptions, rng: &mut fastrand::Rng) -> Vec<Vec<usize>> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); data.classes.len()];
    for (i, &l) in data.labels.iter().enumerate() {
        by_class[l].push(i);
    }
    let present: Vec<usize> = (0..by_class.len()).filter(|&c| !by_class[c].is_empty()).collect();
    let per_class = options.per_class.max(2);
    let classes_per_batch = (options.batch_size / per_class).clamp(2, present.len().max(2));
    let batches = data.len().div_ceil(options.batch_size).max(1);
    (0..batches)
        .map(|_| {
            let mut classes = present.clone();
            rng.shuffle(&mut classes);
            classes
                .iter()
                .take(classes_per_batch)
                .flat_map(|&c| {
                    let pool = &by_class[c];
                    (0..per_class)
                        .map(|_| pool[rng.usize(..pool.len())])
                        .collect::<Vec<_>>()
                })
                .collect()
        })
        .collect()
}

fn shuffled_batches(n: usize, batch: usize, rng: &mut fastrand::Rng) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    order.chunks(batch.max(1)).map(<[usize]>::to_vec).collect()
}

/// Share of `queries` whose nearest `gallery` item (cosine on unit vectors) has the same label.
fn nearest_neighbour_accuracy(
    queries: &[f32],
    query_labels: &[usize],
    gallery: &[f32],
    gallery_labels: &[usize],
    d: usize,
) -> f64 {
    let mut sims = vec![0.0; query_labels.len() * gallery_labels.len()];
    gemm(
        Strided::rows(queries, d),
        Strided::transposed(gallery, d),
        &mut sims,
        (query_labels.len(), d, gallery_labels.len()),
        1.0,
        0.0,
    );
    let correct = sims
        .chunks(gallery_labels.len())
        .zip(query_labels)
        .filter(|(row, &label)| {
            let best = (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)));
            best.is_some_and(|b| gallery_labels[b] == label)
        })
        .count();
    correct as f64 / query_labels.len().max(1) as f64
}

/// The loop shared by both heads: Adam, best epoch kept, LR on plateau, early stopping.
/// `evaluate` returns (validation loss, validation accuracy, higher-is-better criterion).
fn fit(
    mut layers: Vec<Dense>,
    mut adam: Adam,
    options: &TrainOptions,
    rng: &mut fastrand::Rng,
    mut epoch: impl FnMut(&mut [Dense], &mut Adam, f32, &mut fastrand::Rng) -> f64,
    mut evaluate: impl FnMut(&[Dense]) -> (f64, f64, f64),
    on_epoch: &mut dyn FnMut(&EpochRecord),
) -> (Vec<Dense>, Vec<EpochRecord>, usize, bool) {
    let mut lr = options.learning_rate;
    let mut best = (f64::NEG_INFINITY, layers.clone(), 0usize);
    let (mut since_best, mut since_lr_change) = (0, 0);
    let mut history = Vec::new();
    for e in 1..=options.epochs {
        let started = Instant::now();
        let train_loss = epoch(&mut layers, &mut adam, lr, rng);
        let (val_loss, val_accuracy, criterion) = evaluate(&layers);
        let record = EpochRecord {
            epoch: e,
            train_loss,
            val_loss,
            val_accuracy,
            learning_rate: lr,
            seconds: started.elapsed().as_secs_f64(),
        };
        on_epoch(&record);
        history.push(record);
        if criterion > best.0 {
            best = (criterion, layers.clone(), e);
            since_best = 0;
            since_lr_change = 0;
        } else {
            since_best += 1;
            since_lr_change += 1;
            if since_best >= options.patience {
                return (best.1, history, best.2, true);
            }
            if since_lr_change >= options.lr_patience {
                lr *= options.lr_factor;
                since_lr_change = 0;
            }
        }
    }
    (best.1, history, best.2, false)
}

/// The seeded starting layers: `input → [hidden →] output`.
fn initial_layers(input: usize, output: usize, options: &TrainOptions, rng: &mut fastrand::Rng) -> Vec<Dense> {
    let mut layers = Vec::new();
    let mut width = input;
    if let Some(hidden) = options.hidden {
        layers.push(Dense::new(width, hidden, rng));
        width = hidden;
    }
    layers.push(Dense::new(width, output, rng));
    layers
}

fn check_inputs(train: &LabelledFeatures, val: &LabelledFeatures, options: &TrainOptions) -> Result<()> {
    check_options(options)?;
    train.check_trainable("training")?;
    val.check_trainable("validation")
}

fn check_options(options: &TrainOptions) -> Result<()> {
    if options.epochs == 0 || options.batch_size == 0 {
        bail!("epochs and batch size must be at least 1");
    }
    if !(0.0..1.0).contains(&options.dropout) {
        bail!("dropout must be in [0, 1)");
    }
    if options.learning_rate.is_nan() || options.learning_rate <= 0.0 {
        bail!("the learning rate must be positive");
    }
    Ok(())
}

/// Softmax classifier; early stopping on validation loss. Without a trunk it trains on frozen
/// pooled features; with one, `train`/`val` hold the input of the trunk's first block and the
/// trunk's blocks are fine-tuned along with the head (at [`BACKBONE_LR_FACTOR`] of its learning rate).
pub fn train_classifier(
    train: &LabelledFeatures,
    val: &LabelledFeatures,
    backbone_sha256: &str,
    options: &TrainOptions,
    trunk: Option<Trunk>,
    on_epoch: &mut dyn FnMut(&EpochRecord),
) -> Result<Trained> {
    check_inputs(train, val, options)?;
    if let Some(trunk) = &trunk {
        if train.dimension != trunk.input_dimension() || val.dimension != trunk.input_dimension() {
            bail!(
                "the fine-tuned blocks take {}-d inputs, the data has {}-d",
                trunk.input_dimension(),
                train.dimension
            );
        }
    }
    let mut rng = fastrand::Rng::with_seed(options.seed);
    let classes = train.classes.len();
    let split = trunk.as_ref().map_or(0, |t| t.layers.len());
    let pooled_dimension = trunk.as_ref().map_or(train.dimension, Trunk::output_dimension);
    let mut layers: Vec<Dense> = trunk.iter().flat_map(|t| t.layers.iter().cloned()).collect();
    layers.extend(initial_layers(pooled_dimension, classes, options, &mut rng));
    let adam = Adam::new(&layers).slower_first(split, BACKBONE_LR_FACTOR);
    let with_layers = |layers: &[Dense]| {
        trunk.as_ref().map(|t| Trunk {
            layers: layers.to_vec(),
            ..t.clone()
        })
    };
    // Fine-tuning is heavy enough to spread each batch over the cores; a head alone is not.
    let slices = if trunk.is_some() {
        rayon::current_num_threads()
    } else {
        1
    };
    let val_rows: Vec<usize> = (0..val.len()).collect();
    let val_x = val.gather(&val_rows);
    let (layers, history, best_epoch, stopped_early) = fit(
        layers,
        adam,
        options,
        &mut rng,
        |layers, adam, lr, rng| {
            let mut total = 0.0;
            let batches = shuffled_batches(train.len(), options.batch_size, rng);
            for batch in &batches {
                let (trunk_layers, head_layers) = layers.split_at(split);
                let trunk = with_layers(trunk_layers);
                let (loss, grads) = parallel_gradients(batch, slices, rng, |slice, rng| {
                    let labels: Vec<usize> = slice.iter().map(|&i| train.labels[i]).collect();
                    let x = train.gather(slice);
                    let trunk_pass = trunk.as_ref().map(|t| t.forward(&x, slice.len()));
                    let pooled = trunk_pass.as_ref().map_or(x, |p| p.pooled.clone());
                    let pass = forward(head_layers, pooled, slice.len(), options.dropout, Some(rng));
                    let (loss, grad) = cross_entropy(pass.inputs.last().expect("output"), &labels, classes);
                    let (head_grads, grad_pooled) = backward(head_layers, &pass, grad, slice.len(), split > 0);
                    let mut grads = match (&trunk, &trunk_pass, grad_pooled) {
                        (Some(t), Some(p), Some(g)) => t.backward(p, &g),
                        _ => Vec::new(),
                    };
                    grads.extend(head_grads);
                    (loss, grads)
                });
                total += loss * batch.len() as f64;
                adam.step(layers, &grads, lr, options.weight_decay);
            }
            total / train.len() as f64
        },
        |layers| {
            let (trunk_layers, head_layers) = layers.split_at(split);
            let pooled = match with_layers(trunk_layers) {
                Some(t) => t.pooled(&val_x, val.len()),
                None => val_x.clone(),
            };
            let pass = forward(head_layers, pooled, val.len(), 0.0, None);
            let logits = pass.inputs.last().expect("output");
            let (loss, _) = cross_entropy(logits, &val.labels, classes);
            let correct = logits
                .chunks(classes)
                .zip(&val.labels)
                .filter(|(row, &l)| (0..classes).max_by(|&a, &b| row[a].total_cmp(&row[b])) == Some(l))
                .count();
            (loss, correct as f64 / val.len() as f64, -loss)
        },
        on_epoch,
    );
    let mut layers = layers;
    let trunk = with_layers(&layers[..split]);
    layers.drain(..split);
    Ok(Trained {
        head: Head {
            kind: HeadKind::Classifier,
            layers,
            classes: train.classes.clone(),
            backbone_sha256: backbone_sha256.to_string(),
            trunk,
        },
        history,
        best_epoch,
        stopped_early,
    })
}

/// Projection head (`d → embedding_dimension`, L2-normalised) trained with a metric loss;
/// early stopping on validation k-NN precision@1 against the training set.
pub fn train_projection(
    train: &LabelledFeatures,
    val: &LabelledFeatures,
    backbone_sha256: &str,
    options: &TrainOptions,
    on_epoch: &mut dyn FnMut(&EpochRecord),
) -> Result<Trained> {
    check_inputs(train, val, options)?;
    if options.embedding_dimension == 0 {
        bail!("the embedding dimension must be at least 1");
    }
    let mut rng = fastrand::Rng::with_seed(options.seed);
    let out = options.embedding_dimension;
    let layers = initial_layers(train.dimension, out, options, &mut rng);
    let embed = |layers: &[Dense], x: Vec<f32>, rows: usize| {
        let mut e = forward(layers, x, rows, 0.0, None).inputs.pop().expect("output");
        l2_normalise_rows(&mut e, out);
        e
    };
    let all_train: Vec<usize> = (0..train.len()).collect();
    let all_val: Vec<usize> = (0..val.len()).collect();
    let (train_x, val_x) = (train.gather(&all_train), val.gather(&all_val));
    let val_batches = class_balanced_batches(val, options, &mut fastrand::Rng::with_seed(options.seed ^ 0x5eed));
    let adam = Adam::new(&layers);
    let (layers, history, best_epoch, stopped_early) = fit(
        layers,
        adam,
        options,
        &mut rng,
        |layers, adam, lr, rng| {
            let batches = class_balanced_batches(train, options, rng);
            let mut total = 0.0;
            for batch in &batches {
                let labels: Vec<usize> = batch.iter().map(|&i| train.labels[i]).collect();
                let pass = forward(layers, train.gather(batch), batch.len(), options.dropout, Some(rng));
                let z = pass.inputs.last().expect("output");
                let mut e = z.clone();
                l2_normalise_rows(&mut e, out);
                let (loss, grad_e) = metric_loss(&e, &labels, out, options);
                total += loss;
                let (grads, _) = backward(
                    layers,
                    &pass,
                    through_normalisation(z, &e, &grad_e, out),
                    batch.len(),
                    false,
                );
                adam.step(layers, &grads, lr, options.weight_decay);
            }
            total / batches.len() as f64
        },
        |layers| {
            let val_loss = val_batches
                .iter()
                .map(|batch| {
                    let labels: Vec<usize> = batch.iter().map(|&i| val.labels[i]).collect();
                    metric_loss(&embed(layers, val.gather(batch), batch.len()), &labels, out, options).0
                })
                .sum::<f64>()
                / val_batches.len() as f64;
            let gallery = embed(layers, train_x.clone(), train.len());
            let queries = embed(layers, val_x.clone(), val.len());
            let p1 = nearest_neighbour_accuracy(&queries, &val.labels, &gallery, &train.labels, out);
            (val_loss, p1, p1)
        },
        on_epoch,
    );
    Ok(Trained {
        head: Head {
            kind: HeadKind::Projection,
            layers,
            classes: Vec::new(),
            backbone_sha256: backbone_sha256.to_string(),
            trunk: None,
        },
        history,
        best_epoch,
        stopped_early,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::dense::assert_gradients_match;

    /// Two separable Gaussian-ish blobs per class in 8-d, seeded.
    fn blobs(n: usize, seed: u64) -> LabelledFeatures {
        let mut rng = fastrand::Rng::with_seed(seed);
        let centres = [[1.0f32, 0.0, 0.5], [0.0, 1.0, 0.5], [0.5, 0.5, -1.0]];
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let c = i % 3;
            for t in 0..8 {
                features.push(centres[c][t % 3] + (rng.f32() - 0.5) * 0.8);
            }
            labels.push(c);
        }
        LabelledFeatures {
            features,
            labels,
            dimension: 8,
            classes: vec!["a".into(), "b".into(), "c".into()],
        }
    }

    fn quiet(_: &EpochRecord) {}

    #[test]
    fn classifier_learns_and_is_deterministic() {
        let (train, val) = (blobs(300, 1), blobs(90, 2));
        let options = TrainOptions {
            epochs: 30,
            hidden: Some(16),
            ..TrainOptions::default()
        };
        let a = train_classifier(&train, &val, "sha", &options, None, &mut quiet).unwrap();
        let b = train_classifier(&train, &val, "sha", &options, None, &mut quiet).unwrap();
        assert!(a.history.last().unwrap().train_loss < a.history[0].train_loss);
        let best = &a.history[a.best_epoch - 1];
        assert!(best.val_accuracy > 0.95, "{best:?}");
        assert_eq!(
            a.head.apply(&val.features, val.len()),
            b.head.apply(&val.features, val.len())
        );
    }

    #[test]
    fn gradients_match_finite_differences() {
        let data = blobs(12, 3);
        let mut rng = fastrand::Rng::with_seed(4);
        let layers = vec![Dense::new(8, 5, &mut rng), Dense::new(5, 4, &mut rng)];
        for loss in [MetricLoss::Triplet, MetricLoss::Contrastive] {
            let options = TrainOptions {
                loss,
                margin: 1.5,
                ..TrainOptions::default()
            };
            let objective = |layers: &[Dense]| {
                let pass = forward(layers, data.features.clone(), 12, 0.0, None);
                let z = pass.inputs.last().unwrap().clone();
                let mut e = z.clone();
                l2_normalise_rows(&mut e, 4);
                let (loss, grad_e) = metric_loss(&e, &data.labels, 4, &options);
                (loss, pass, z, e, grad_e)
            };
            let (_, pass, z, e, grad_e) = objective(&layers);
            let (grads, _) = backward(&layers, &pass, through_normalisation(&z, &e, &grad_e, 4), 12, false);
            assert_gradients_match(&layers, &grads, &[(0, 3), (0, 17), (1, 2), (1, 11)], |l| objective(l).0);
        }
    }

    #[test]
    fn triplet_loss_matches_hand_computation() {
        // Anchor 0 and positive 1 at 90°, negative 2 at 0° from the anchor: d(a,p) = 2, d(a,n) = 0.
        let e = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0];
        let options = TrainOptions {
            margin: 0.5,
            ..TrainOptions::default()
        };
        let (loss, _) = metric_loss(&e, &[0, 0, 1], 2, &options);
        // Anchors 0 and 1 each: 2 - d(a, n) + 0.5 where d(0,2) = 0, d(1,2) = 2; anchor 2 has no positive.
        assert!((loss - (2.5 + 0.5) / 3.0).abs() < 1e-6, "{loss}");
    }

    #[test]
    fn fine_tuned_blocks_learn_with_the_head_and_runs_repeat() {
        let trunk = crate::learn::trunk::tests::tiny_trunk(11);
        let d = trunk.input_dimension();
        // Class c brightens input channel c: a signal the blocks must carry to the head.
        let images = |n: usize, seed: u64| {
            let mut rng = fastrand::Rng::with_seed(seed);
            let labels: Vec<usize> = (0..n).map(|i| i % 3).collect();
            let features = labels
                .iter()
                .flat_map(|&c| (0..d).map(move |t| (t / (d / 3) == c) as u8 as f32 * 0.8))
                .map(|v| v + rng.f32() * 0.6)
                .collect();
            LabelledFeatures {
                features,
                labels,
                dimension: d,
                classes: vec!["a".into(), "b".into(), "c".into()],
            }
        };
        let (train, val) = (images(60, 1), images(30, 2));
        let options = TrainOptions {
            epochs: 40,
            batch_size: 8,
            learning_rate: 1e-2,
            ..TrainOptions::default()
        };
        let run = || train_classifier(&train, &val, "sha", &options, Some(trunk.clone()), &mut quiet).unwrap();
        let (a, b) = (run(), run());
        assert!(
            a.history.last().unwrap().train_loss < a.history[0].train_loss * 0.5,
            "{:?}",
            a.history
        );
        let tuned = a.head.trunk.as_ref().unwrap();
        assert_ne!(
            tuned.layers[0].weight, trunk.layers[0].weight,
            "the blocks did not train"
        );
        assert!(a.history[a.best_epoch - 1].val_accuracy > 0.9, "{:?}", a.history);
        assert_eq!(
            a.head.apply(&val.features, val.len()),
            b.head.apply(&val.features, val.len())
        );
        let reloaded = Head::from_bytes(&a.head.to_bytes().unwrap()).unwrap();
        assert_eq!(
            reloaded.apply(&val.features, val.len()),
            a.head.apply(&val.features, val.len())
        );
        assert!(train_classifier(&blobs(30, 3), &blobs(9, 4), "sha", &options, Some(trunk), &mut quiet).is_err());
    }

    #[test]
    fn a_single_class_is_refused() {
        let mut train = blobs(30, 5);
        train.labels.iter_mut().for_each(|l| *l = 0);
        let err =
            train_classifier(&train, &blobs(9, 6), "sha", &TrainOptions::default(), None, &mut quiet).unwrap_err();
        assert!(err.to_string().contains("at least two classes"), "{err}");
    }
}

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{anyhow, bail, ensure, Context, Result};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;

use super::efficientnet::{EfficientNetLite, GraphOptions, BLOCK_INPUT_NAME, FEATURES_NAME, INPUT_NAME, LOGITS_NAME};
use super::quantize::{Calibration, Int8Weights, Precision};
use super::weights::Checkpoint;
use super::{BackboneSpec, ModelDir, ModelManifest};
use crate::image::Preprocessing;
use crate::learn::head::{Head, HeadKind};
use crate::learn::trunk::Trunk;
use crate::model::colour::{ColourFeatures, COLOUR_DIMENSION};

/// Images per call of a single-threaded session when a batch is spread over them.
const NARROW_SLICE: usize = 2;

/// ONNX Runtime allows one environment per process; the library path is fixed by the first load.
static ORT_ENVIRONMENT: OnceLock<std::result::Result<ort::environment::Environment, String>> = OnceLock::new();

pub(super) fn environment(models: &ModelDir) -> Result<&'static ort::environment::Environment> {
    let env = ORT_ENVIRONMENT.get_or_init(|| {
        let library = models.onnxruntime().map_err(|e| e.to_string())?;
        ort::init_from(&library)
            .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", library.display()))?
            .with_name("lookalike")
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime: {e}"))
    });
    env.as_ref().map_err(|e| anyhow!("{e}"))
}

pub(super) fn build_session(env: &ort::environment::Environment, onnx: &[u8], threads: usize) -> ort::Result<Session> {
    Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::All)?
        .with_intra_threads(threads.max(1))?
        .with_inter_threads(1)?
        // Idle ORT threads otherwise spin for a while after each run, taking the cores
        // from the search scan that follows an online query.
        .with_intra_op_spinning(false)?
        .commit_from_memory(onnx)
}

/// How the threads share a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parallelism {
    /// Every thread works inside each operator of one session.
    Operators,
    /// Single-threaded sessions run different images at once.
    Images,
}

/// The vectors (and ImageNet logits) for a batch, row-major: pooled backbone features, or
/// a projection head's embeddings of them when the embedder has one.
#[derive(Debug, Clone)]
pub struct Embeddings {
    pub count: usize,
    pub dimension: usize,
    pub features: Vec<f32>,
    pub num_classes: usize,
    pub logits: Vec<f32>,
    /// The pooled backbone features when a head or the colour signature made `features`; empty otherwise.
    pub backbone: Vec<f32>,
    /// The activation entering the tapped block (NCHW per image), when the embedder has a tap.
    pub block_input: Vec<f32>,
}

impl Embeddings {
    pub fn feature(&self, i: usize) -> &[f32] {
        &self.features[i * self.dimension..(i + 1) * self.dimension]
    }

    /// Row `i`'s pooled backbone features (what classifier heads take).
    pub fn backbone_feature(&self, i: usize) -> &[f32] {
        if self.backbone.is_empty() {
            return self.feature(i);
        }
        let d = self.backbone.len() / self.count;
        &self.backbone[i * d..(i + 1) * d]
    }

    /// What a classifier head takes for row `i`: the tapped block's input when there is one
    /// (a head with fine-tuned blocks), else the pooled backbone features.
    pub fn classifier_input(&self, i: usize) -> &[f32] {
        if self.block_input.is_empty() {
            return self.backbone_feature(i);
        }
        let d = self.block_input.len() / self.count;
        &self.block_input[i * d..(i + 1) * d]
    }

    pub fn logit_row(&self, i: usize) -> &[f32] {
        &self.logits[i * self.num_classes..(i + 1) * self.num_classes]
    }
}

/// The backbone, built from its PyTorch weights and run by ONNX Runtime.
///
/// Two kinds of session over the same graph: one using every thread inside each
/// operator (best for a single image), and one single-threaded session per thread
/// that each take a slice of a larger batch. On this network's small depthwise
/// convolutions, images in parallel scale better than operators in parallel
/// (see ARCHITECTURE.md for the measurements).
pub struct Embedder {
    wide: Mutex<Session>,
    narrow: Vec<Mutex<Session>>,
    onnx: Vec<u8>,
    network: Arc<EfficientNetLite>,
    models: ModelDir,
    threads: usize,
    tap: Option<Tap>,
    /// The activation ranges of an int8 graph; `None` for fp32.
    int8: Option<Arc<Calibration>>,
    int8_weights: Int8Weights,
    pub spec: BackboneSpec,
    pub preprocessing: Preprocessing,
    pub dimension: usize,
    pub num_classes: usize,
    /// A projection head applied to the pooled features (see [`Self::with_head`]).
    pub head: Option<Head>,
    /// A colour signature appended to the features (see [`Self::with_colour`]).
    pub colour: Option<ColourFeatures>,
}

/// Where the graph also outputs a block's input, and whether that replaces the features.
#[derive(Debug, Clone, Copy)]
struct Tap {
    block: usize,
    dimension: usize,
    as_features: bool,
}

type Sessions = (Mutex<Session>, Vec<Mutex<Session>>);

fn sessions(models: &ModelDir, onnx: &[u8], threads: usize) -> Result<Sessions> {
    let env = environment(models)?;
    let session = |threads| {
        build_session(env, onnx, threads)
            .map(Mutex::new)
            .map_err(|e| anyhow!("cannot build the ONNX Runtime session: {e}"))
    };
    let wide = session(threads)?;
    let narrow = if threads > 1 {
        (0..threads).map(|_| session(1)).collect::<Result<_>>()?
    } else {
        Vec::new()
    };
    Ok((wide, narrow))
}

impl Embedder {
    /// Loads the fp32 backbone `spec` from `models`, refusing weights whose checksum is not the pinned one.
    pub fn load(models: &ModelDir, spec: BackboneSpec, threads: usize) -> Result<Self> {
        Self::load_as(models, spec, Precision::Fp32, threads)
    }

    /// [`Self::load`] at `precision`, for a new catalogue: int8 quantizes with the calibration
    /// shipped for `spec` and the weights that run fastest on this CPU.
    pub fn load_as(models: &ModelDir, spec: BackboneSpec, precision: Precision, threads: usize) -> Result<Self> {
        Self::load_at(models, spec, precision, Int8Weights::for_this_cpu(), threads)
    }

    /// The embedder that made a catalogue's vectors, as its `manifest` records them: its
    /// precision and, for int8, its weights (whichever this CPU would pick for a new catalogue).
    pub fn load_like(models: &ModelDir, spec: BackboneSpec, manifest: &ModelManifest, threads: usize) -> Result<Self> {
        Self::load_at(models, spec, manifest.precision(), manifest.int8_weights(), threads)
    }

    fn load_at(
        models: &ModelDir,
        spec: BackboneSpec,
        precision: Precision,
        weights: Int8Weights,
        threads: usize,
    ) -> Result<Self> {
        let int8 = match precision {
            Precision::Fp32 => None,
            Precision::Int8 => Some(Arc::new(Calibration::shipped(&spec)?)),
        };
        Self::load_with(models, spec, int8, weights, threads)
    }

    /// [`Self::load`] with int8 activations quantized to `int8`'s ranges and weights held as
    /// `int8_weights` say, when given.
    pub fn load_with(
        models: &ModelDir,
        spec: BackboneSpec,
        int8: Option<Arc<Calibration>>,
        int8_weights: Int8Weights,
        threads: usize,
    ) -> Result<Self> {
        let weights = models.weights(&spec)?;
        let checkpoint = Checkpoint::load(&weights)?;
        if checkpoint.sha256 != spec.weights_sha256 {
            bail!(
                "{} has sha256 {}, expected {} for {}; re-run scripts/setup.sh",
                weights.display(),
                checkpoint.sha256,
                spec.weights_sha256,
                spec.name
            );
        }
        let network = EfficientNetLite::from_checkpoint(&checkpoint, spec.input_size)
            .with_context(|| format!("{} is not an EfficientNet-Lite checkpoint", weights.display()))?;
        let onnx = network.to_onnx(&GraphOptions {
            int8: int8.as_deref(),
            int8_weights,
            ..GraphOptions::default()
        })?;
        let threads = threads.max(1);
        let (wide, narrow) = sessions(models, &onnx, threads)?;
        Ok(Self {
            wide,
            narrow,
            onnx,
            models: models.clone(),
            threads,
            tap: None,
            int8,
            int8_weights,
            spec,
            preprocessing: spec.preprocessing(),
            dimension: network.feature_dim,
            num_classes: network.num_classes,
            network: Arc::new(network),
            head: None,
            colour: None,
        })
    }

    /// This backbone built for `input_size` pixels a side instead of its own (the same weights
    /// and precision; no head or colour), to show it photos at another scale.
    pub fn at_input_size(&self, input_size: usize) -> Result<Self> {
        let spec = BackboneSpec {
            input_size,
            ..self.spec
        };
        Self::load_with(&self.models, spec, self.int8.clone(), self.int8_weights, self.threads)
    }

    /// The last `blocks` backbone blocks with their pretrained weights, to fine-tune.
    pub fn pretrained_trunk(&self, blocks: usize) -> Result<Trunk> {
        self.network.trunk(blocks)
    }

    /// A copy of this embedder whose graph also outputs the input of `trunk`'s first block
    /// ([`Embeddings::block_input`]); with `as_features` that input replaces the vectors (for
    /// caching what a fine-tuned head takes).
    pub fn with_block_input(&self, trunk: &Trunk, as_features: bool) -> Result<Self> {
        let expected = self.network.trunk(self.network.block_count() - trunk.first_block)?;
        if expected.blocks != trunk.blocks || expected.input_channels != trunk.input_channels {
            bail!(
                "the fine-tuned blocks do not fit this backbone (block {} onwards differs)",
                trunk.first_block
            );
        }
        self.with_tap(Tap {
            block: trunk.first_block,
            dimension: trunk.input_dimension(),
            as_features,
        })
    }

    /// A copy of this embedder whose graph also outputs the last feature map (the head's
    /// activation before pooling, NCHW) as [`Embeddings::block_input`]: where in the photo the
    /// features come from.
    pub fn with_feature_map(&self) -> Result<Self> {
        self.with_tap(Tap {
            block: self.network.block_count(),
            dimension: 0,
            as_features: false,
        })
    }

    fn with_tap(&self, tap: Tap) -> Result<Self> {
        let onnx = self.network.to_onnx(&GraphOptions {
            tap: Some(tap.block),
            int8: self.int8.as_deref(),
            int8_weights: self.int8_weights,
            ..GraphOptions::default()
        })?;
        let (wide, narrow) = sessions(&self.models, &onnx, self.threads)?;
        Ok(Self {
            wide,
            narrow,
            onnx,
            network: Arc::clone(&self.network),
            models: self.models.clone(),
            threads: self.threads,
            tap: Some(tap),
            int8: self.int8.clone(),
            int8_weights: self.int8_weights,
            spec: self.spec,
            preprocessing: self.preprocessing,
            dimension: self.dimension,
            num_classes: self.num_classes,
            head: self.head.clone(),
            colour: self.colour,
        })
    }

    /// Makes this embedder's vectors the projection head's embeddings of the pooled features.
    pub fn with_head(mut self, head: Head) -> Result<Self> {
        if head.kind != HeadKind::Projection {
            bail!("only a projection head (from `train metric`) can make a catalogue's vectors");
        }
        head.check_backbone(self.spec.weights_sha256)?;
        head.check_input(self.backbone_dimension())?;
        if self.colour.is_some() {
            bail!("a catalogue's vectors take a projection head or a colour signature, not both");
        }
        self.head = Some(head);
        Ok(self)
    }

    /// Makes this embedder's vectors the unit features followed by `weight` × the photo's colour
    /// signature (see [`crate::model::colour`]).
    pub fn with_colour(mut self, weight: f32) -> Result<Self> {
        if !(weight.is_finite() && weight > 0.0 && weight <= 4.0) {
            bail!("the colour weight must be above 0 and at most 4, got {weight}");
        }
        if self.head.is_some() {
            bail!("a catalogue's vectors take a projection head or a colour signature, not both");
        }
        self.colour = Some(ColourFeatures { weight });
        Ok(self)
    }

    /// Takes on the projection head or colour signature weight a catalogue's vectors were made
    /// with, so that queries are embedded the way its products were.
    pub fn for_catalogue(self, head: Option<Head>, colour: Option<f32>) -> Result<Self> {
        let with_head = match head {
            Some(head) => self.with_head(head)?,
            None => self,
        };
        match colour {
            Some(weight) => with_head.with_colour(weight),
            None => Ok(with_head),
        }
    }

    /// Makes queries carry what `classifier` reads: a head with fine-tuned blocks needs the input
    /// of the first of them, which the graph then outputs too.
    pub fn for_classifier(self, classifier: &Head) -> Result<Self> {
        match &classifier.trunk {
            Some(trunk) => self.with_block_input(trunk, false),
            None => Ok(self),
        }
    }

    pub fn precision(&self) -> Precision {
        if self.int8.is_some() {
            Precision::Int8
        } else {
            Precision::Fp32
        }
    }

    /// The float network this embedder's graph was written from (to calibrate an int8 one).
    pub fn network(&self) -> &EfficientNetLite {
        &self.network
    }

    pub fn backbone_dimension(&self) -> usize {
        self.dimension
    }

    /// Dimension of the vectors this embedder produces.
    pub fn output_dimension(&self) -> usize {
        match self.tap {
            Some(tap) if tap.as_features => tap.dimension,
            _ => match (&self.head, self.colour) {
                (Some(head), _) => head.output_dimension(),
                (None, Some(_)) => self.dimension + COLOUR_DIMENSION,
                (None, None) => self.dimension,
            },
        }
    }

    pub fn manifest(&self) -> ModelManifest {
        let mut manifest = self.spec.manifest(&self.preprocessing, self.output_dimension());
        manifest.head = match self.tap {
            Some(tap) if tap.as_features => Some(format!("input of block {}", tap.block)),
            _ => self
                .head
                .as_ref()
                .map(|h| h.manifest_name().expect("a loaded head serialises")),
        };
        manifest.colour = self.colour.map(|c| c.weight);
        manifest.precision = self.int8.as_ref().map(|c| c.manifest_name(self.int8_weights));
        manifest
    }

    /// The ONNX graph this embedder runs (for benchmarks against other runtimes).
    pub fn onnx_model(&self) -> &[u8] {
        &self.onnx
    }

    /// Runs the network on `count` preprocessed images laid out NCHW in `input`.
    pub fn run(&self, input: &[f32], count: usize) -> Result<Embeddings> {
        self.run_with(input, count, self.parallelism_for(count))
    }

    /// Images in parallel once every session gets a few of them; one wide session below that.
    pub fn parallelism_for(&self, count: usize) -> Parallelism {
        if self.narrow.len() > 1 && count >= 4 * self.narrow.len() {
            Parallelism::Images
        } else {
            Parallelism::Operators
        }
    }

    /// [`Self::run`] with the parallelism chosen by the caller (benchmarks compare both).
    pub fn run_with(&self, input: &[f32], count: usize, parallelism: Parallelism) -> Result<Embeddings> {
        let mut out = self.run_backbone(input, count, parallelism)?;
        if let Some(tap) = self.tap.filter(|t| t.as_features) {
            out.features = std::mem::take(&mut out.block_input);
            out.dimension = tap.dimension;
        } else if let Some(head) = &self.head {
            out.backbone = std::mem::take(&mut out.features);
            out.features = head.apply(&out.backbone, count);
            out.dimension = head.output_dimension();
        } else if let Some(colour) = &self.colour {
            out.backbone = std::mem::take(&mut out.features);
            out.features = colour.append(&out.backbone, self.dimension, input, count, &self.preprocessing);
            out.dimension = self.dimension + COLOUR_DIMENSION;
        }
        Ok(out)
    }

    fn run_backbone(&self, input: &[f32], count: usize, parallelism: Parallelism) -> Result<Embeddings> {
        let side = self.spec.input_size;
        ensure!(
            input.len() == count * 3 * side * side,
            "input holds {} floats, {count} images of 3x{side}x{side} need {}",
            input.len(),
            count * 3 * side * side
        );
        if self.narrow.len() < 2 || parallelism == Parallelism::Operators || count == 0 {
            return self.run_session(&self.wide, input, count);
        }
        // Small slices, pulled by whichever session is free: activations of a few images stay in cache.
        let per_image = input.len() / count;
        let slices: Vec<&[f32]> = input.chunks(NARROW_SLICE * per_image).collect();
        let next = AtomicUsize::new(0);
        let mut parts: Vec<(usize, Result<Embeddings>)> = std::thread::scope(|scope| {
            let workers: Vec<_> = self
                .narrow
                .iter()
                .map(|session| {
                    let (slices, next) = (&slices, &next);
                    scope.spawn(move || {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(slice) = slices.get(i) else { return done };
                            done.push((i, self.run_session(session, slice, slice.len() / per_image)));
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("inference worker panicked"))
                .collect()
        });
        parts.sort_by_key(|(i, _)| *i);
        let mut out = self.no_outputs(count);
        for (_, part) in parts {
            let part = part?;
            out.features.extend(part.features);
            out.logits.extend(part.logits);
            out.block_input.extend(part.block_input);
        }
        Ok(out)
    }

    fn no_outputs(&self, count: usize) -> Embeddings {
        Embeddings {
            count,
            dimension: self.dimension,
            features: Vec::new(),
            num_classes: self.num_classes,
            logits: Vec::new(),
            backbone: Vec::new(),
            block_input: Vec::new(),
        }
    }

    fn run_session(&self, session: &Mutex<Session>, input: &[f32], count: usize) -> Result<Embeddings> {
        let mut out = self.no_outputs(count);
        if count == 0 {
            return Ok(out);
        }
        let side = self.spec.input_size;
        let tensor = TensorRef::from_array_view(([count, 3, side, side], input))?;
        let mut session = session
            .lock()
            .map_err(|_| anyhow!("inference session poisoned by an earlier panic"))?;
        let outputs = session.run(ort::inputs![INPUT_NAME => tensor])?;
        out.features = outputs[FEATURES_NAME].try_extract_tensor::<f32>()?.1.to_vec();
        if let Some(v) = outputs.get(LOGITS_NAME) {
            out.logits = v.try_extract_tensor::<f32>()?.1.to_vec();
        }
        if let Some(v) = outputs.get(BLOCK_INPUT_NAME) {
            out.block_input = v.try_extract_tensor::<f32>()?.1.to_vec();
        }
        Ok(out)
    }
}

/// A query image's pooled features and, when the backbone has its classifier, its ImageNet logits.
#[derive(Debug, Clone)]
pub struct ImageEmbedding {
    /// The catalogue's kind of vector: pooled features, or a projection head's embedding.
    pub features: Vec<f32>,
    pub logits: Vec<f32>,
    /// What classifier heads read (see [`Embeddings::classifier_input`]).
    pub classifier_input: Vec<f32>,
}

impl Embeddings {
    /// Row `i` of a batch as one image's embedding.
    pub fn image(&self, i: usize) -> ImageEmbedding {
        let logits = if self.num_classes > 0 {
            self.logit_row(i).to_vec()
        } else {
            Vec::new()
        };
        ImageEmbedding {
            features: self.feature(i).to_vec(),
            logits,
            classifier_input: self.classifier_input(i).to_vec(),
        }
    }
}

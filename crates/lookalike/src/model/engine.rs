use std::sync::{Mutex, OnceLock};

use anyhow::{anyhow, bail, ensure, Context, Result};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;

use super::efficientnet::{EfficientNetLite, FEATURES_NAME, INPUT_NAME, LOGITS_NAME};
use super::weights::Checkpoint;
use super::{BackboneSpec, ModelDir, ModelManifest};
use crate::preprocess::Preprocessing;

/// ONNX Runtime allows one environment per process; the library path is fixed by the first load.
static ORT_ENVIRONMENT: OnceLock<std::result::Result<ort::environment::Environment, String>> = OnceLock::new();

fn environment(models: &ModelDir) -> Result<&'static ort::environment::Environment> {
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

fn build_session(env: &ort::environment::Environment, onnx: &[u8], threads: usize) -> ort::Result<Session> {
    Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)?
        .with_intra_threads(threads.max(1))?
        .with_inter_threads(1)?
        .commit_from_memory(onnx)
}

/// Pooled backbone features (and ImageNet logits) for a batch, row-major.
#[derive(Debug, Clone)]
pub struct Embeddings {
    pub count: usize,
    pub dimension: usize,
    pub features: Vec<f32>,
    pub num_classes: usize,
    pub logits: Vec<f32>,
}

impl Embeddings {
    pub fn feature(&self, i: usize) -> &[f32] {
        &self.features[i * self.dimension..(i + 1) * self.dimension]
    }

    pub fn logit_row(&self, i: usize) -> &[f32] {
        &self.logits[i * self.num_classes..(i + 1) * self.num_classes]
    }
}

/// The backbone, built from its PyTorch weights and run by ONNX Runtime.
pub struct Embedder {
    session: Mutex<Session>,
    onnx: Vec<u8>,
    pub spec: BackboneSpec,
    pub preprocessing: Preprocessing,
    pub dimension: usize,
    pub num_classes: usize,
}

impl Embedder {
    /// Loads EfficientNet-Lite0 from `models`, refusing weights whose checksum is not the pinned one.
    pub fn load(models: &ModelDir, spec: BackboneSpec, threads: usize) -> Result<Self> {
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
        let onnx = network.to_onnx();
        let env = environment(models)?;
        let session =
            build_session(env, &onnx, threads).map_err(|e| anyhow!("cannot build the ONNX Runtime session: {e}"))?;
        Ok(Self {
            session: Mutex::new(session),
            onnx,
            spec,
            preprocessing: Preprocessing::for_input(spec.input_size as u32),
            dimension: network.feature_dim,
            num_classes: network.num_classes,
        })
    }

    pub fn manifest(&self) -> ModelManifest {
        self.spec.manifest(&self.preprocessing, self.dimension)
    }

    /// The ONNX graph this embedder runs (for benchmarks against other runtimes).
    pub fn onnx_model(&self) -> &[u8] {
        &self.onnx
    }

    /// Runs the network on `count` preprocessed images laid out NCHW in `input`.
    pub fn run(&self, input: &[f32], count: usize) -> Result<Embeddings> {
        let side = self.spec.input_size;
        ensure!(
            input.len() == count * 3 * side * side,
            "input holds {} floats, {count} images of 3x{side}x{side} need {}",
            input.len(),
            count * 3 * side * side
        );
        if count == 0 {
            return Ok(Embeddings {
                count,
                dimension: self.dimension,
                features: vec![],
                num_classes: self.num_classes,
                logits: vec![],
            });
        }
        let tensor = TensorRef::from_array_view(([count, 3, side, side], input))?;
        let mut session = self
            .session
            .lock()
            .map_err(|_| anyhow!("inference session poisoned by an earlier panic"))?;
        let outputs = session.run(ort::inputs![INPUT_NAME => tensor])?;
        let (_, features) = outputs[FEATURES_NAME].try_extract_tensor::<f32>()?;
        let logits = match outputs.get(LOGITS_NAME) {
            Some(v) => v.try_extract_tensor::<f32>()?.1.to_vec(),
            None => Vec::new(),
        };
        Ok(Embeddings {
            count,
            dimension: self.dimension,
            features: features.to_vec(),
            num_classes: self.num_classes,
            logits,
        })
    }
}

//! The embedding model: where its files live, how it is built and run.

pub mod batcher;
pub(crate) mod colour;

pub(crate) mod efficientnet;
mod engine;
pub mod labels;
mod onnx_proto;
pub mod quantize;
pub mod weights;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

pub use engine::{Embedder, Embeddings, ImageEmbedding, Parallelism};
pub use quantize::{Calibration, Int8Weights, Precision};

use crate::image::Preprocessing;

/// What produced a vector. Two vectors are comparable only if these agree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelManifest {
    pub model: String,
    pub weights_sha256: String,
    pub preprocessing: String,
    pub dimension: usize,
    /// A trained head applied on top of the backbone, if any.
    pub head: Option<String>,
    /// The weight of the colour signature appended to the features, if any (see [`colour`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub colour: Option<f32>,
    /// How an int8 backbone was quantized (see [`quantize`]); `None` for fp32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
}

/// A pretrained backbone that lookalike knows how to fetch, check and build.
#[derive(Debug, Clone, Copy)]
pub struct BackboneSpec {
    pub name: &'static str,
    pub weights_file: &'static str,
    pub weights_sha256: &'static str,
    pub input_size: usize,
}

pub const EFFICIENTNET_LITE0: BackboneSpec = BackboneSpec {
    name: "efficientnet-lite0",
    weights_file: "efficientnet-lite0-57934424.pth",
    weights_sha256: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    input_size: 224,
};

pub const EFFICIENTNET_LITE1: BackboneSpec = BackboneSpec {
    name: "efficientnet-lite1",
    weights_file: "efficientnet-lite1-77cc7160.pth",
    weights_sha256: "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    input_size: 240,
};

pub const EFFICIENTNET_LITE2: BackboneSpec = BackboneSpec {
    name: "efficientnet-lite2",
    weights_file: "efficientnet-lite2-9656183e.pth",
    weights_sha256: "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    input_size: 260,
};

/// The backbone of new catalogues: Lite1 beat Lite0 on every quality measure here (clothing
/// retrieval P@1 0.841 vs 0.812, mAP@10 0.710 vs 0.690; classifier accuracy 0.922 vs 0.898; Luma
/// Recall@5 0.838 vs 0.815) at 0.65× the images/s (145 vs 222 at batch 32 on 2 cores); Lite2 was
/// slower still and no better (README, Backbones).
pub const DEFAULT_BACKBONE: BackboneSpec = EFFICIENTNET_LITE1;

/// Every backbone lookalike can fetch (`scripts/setup.sh`) and build.
pub const BACKBONES: [BackboneSpec; 3] = [EFFICIENTNET_LITE0, EFFICIENTNET_LITE1, EFFICIENTNET_LITE2];

/// Name of the ONNX Runtime shared library that `scripts/setup.sh` unpacks next to the weights.
pub const ONNXRUNTIME_LIBRARY: &str = "libonnxruntime.so";

/// The folder holding weights and the ONNX Runtime library.
#[derive(Debug, Clone)]
pub struct ModelDir(pub PathBuf);

impl ModelDir {
    /// `$LOOKALIKE_MODELS`, else the checkout's `models/` (where `scripts/setup.sh` puts them).
    pub fn locate(explicit: Option<&Path>) -> Self {
        if let Some(dir) = explicit {
            return Self(dir.to_path_buf());
        }
        if let Some(dir) = std::env::var_os("LOOKALIKE_MODELS") {
            return Self(PathBuf::from(dir));
        }
        Self(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"))
    }

    pub fn weights(&self, spec: &BackboneSpec) -> Result<PathBuf> {
        self.existing(spec.weights_file)
    }

    /// `$ORT_DYLIB_PATH` wins, so a system-wide ONNX Runtime can be used instead.
    pub fn onnxruntime(&self) -> Result<PathBuf> {
        match std::env::var_os("ORT_DYLIB_PATH") {
            Some(path) => Ok(PathBuf::from(path)),
            None => self.existing(ONNXRUNTIME_LIBRARY),
        }
    }

    fn existing(&self, file: &str) -> Result<PathBuf> {
        let path = self.0.join(file);
        if !path.is_file() {
            bail!(
                "{} not found; run scripts/setup.sh to fetch the model files, or point LOOKALIKE_MODELS at the folder holding them",
                path.display()
            );
        }
        Ok(path)
    }
}

impl std::str::FromStr for BackboneSpec {
    type Err = anyhow::Error;

    /// `lite2` or `efficientnet-lite2` (as manifests name them).
    fn from_str(name: &str) -> Result<Self> {
        let name = name.trim().to_ascii_lowercase();
        BACKBONES
            .into_iter()
            .find(|b| b.name == name || b.name.strip_prefix("efficientnet-") == Some(name.as_str()))
            .ok_or_else(|| {
                let known: Vec<&str> = BACKBONES.iter().map(|b| &b.name["efficientnet-".len()..]).collect();
                anyhow::anyhow!("unknown backbone {name:?} (known: {})", known.join(", "))
            })
    }
}

impl ModelManifest {
    /// The backbone that made these vectors, if lookalike knows it.
    pub fn backbone(&self) -> Option<BackboneSpec> {
        self.model.parse().ok()
    }

    pub fn precision(&self) -> Precision {
        match &self.precision {
            Some(_) => Precision::Int8,
            None => Precision::Fp32,
        }
    }

    /// How an int8 catalogue's graph holds its weights (for fp32 catalogues: the default, unused).
    pub fn int8_weights(&self) -> Int8Weights {
        self.precision.as_deref().map(Int8Weights::named_in).unwrap_or_default()
    }
}

impl BackboneSpec {
    /// The input transform the weights were trained with, at this backbone's input size.
    pub fn preprocessing(&self) -> Preprocessing {
        Preprocessing::for_input(self.input_size as u32)
    }

    pub fn manifest(&self, preprocessing: &Preprocessing, dimension: usize) -> ModelManifest {
        ModelManifest {
            model: self.name.to_string(),
            weights_sha256: self.weights_sha256.to_string(),
            preprocessing: preprocessing.describe(),
            dimension,
            head: None,
            colour: None,
            precision: None,
        }
    }
}

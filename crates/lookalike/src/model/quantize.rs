//! Int8 backbones: the activation ranges an int8 graph is quantized to, and how they are measured.
//!
//! Weights are quantized when the graph is written (symmetric int8 per output channel, see
//! [`super::efficientnet`]); activations need the range of values real photos give them. Those
//! ranges are measured once per backbone by running the float graph on photos
//! ([`calibrate`], `lookalike bench calibrate`) and shipped with the library
//! (`calibration/*.json`), so every machine writes the same int8 graph and a catalogue's vectors
//! stay comparable. A calibration is named by a digest of its ranges, which the catalogue's
//! manifest records.

use std::collections::BTreeMap;
use std::str::FromStr;

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::efficientnet::{EfficientNetLite, GraphOptions, INPUT_NAME};
use super::engine::{build_session, environment};
use super::{BackboneSpec, ModelDir};

/// The numbers a backbone computes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Fp32,
    Int8,
}

impl FromStr for Precision {
    type Err = anyhow::Error;

    fn from_str(name: &str) -> Result<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "fp32" | "f32" | "float" => Ok(Self::Fp32),
            "int8" | "i8" => Ok(Self::Int8),
            other => bail!("unknown precision {other:?} (known: fp32, int8)"),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fp32 => "fp32",
            Self::Int8 => "int8",
        })
    }
}

/// How an int8 graph holds its convolution weights (symmetric, per output channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Int8Weights {
    /// Eight bits (±127) everywhere: fast and exact with VNNI; without it the dense
    /// convolutions stay exact only by being widened, a third slower (see `efficientnet::conv`).
    #[default]
    Full,
    /// Seven bits (±63) in the dense convolutions, eight in the depthwise ones: what AVX2 without
    /// VNNI multiplies fastest without saturating, at cosine ≥ 0.98 to fp32.
    DenseSevenBit,
}

impl Int8Weights {
    const DENSE_SEVEN_BIT: &str = "7-bit dense weights";

    /// The weights a new int8 catalogue gets on this CPU: the fastest exact products here.
    pub fn for_this_cpu() -> Self {
        if super::efficientnet::vnni() {
            Self::Full
        } else {
            Self::DenseSevenBit
        }
    }

    /// The weights a manifest's precision name (see [`Calibration::manifest_name`]) records.
    pub fn named_in(precision: &str) -> Self {
        if precision.contains(Self::DENSE_SEVEN_BIT) {
            Self::DenseSevenBit
        } else {
            Self::Full
        }
    }
}

/// The range (low, high) of every activation an int8 graph quantizes, by tensor name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub backbone: String,
    pub weights_sha256: String,
    /// Which photos the ranges were measured on.
    pub photos: String,
    pub ranges: BTreeMap<String, (f32, f32)>,
}

impl Calibration {
    /// The calibration shipped for `spec`.
    pub fn shipped(spec: &BackboneSpec) -> Result<Self> {
        let json = match spec.name {
            "efficientnet-lite0" => include_str!("calibration/efficientnet-lite0.json"),
            "efficientnet-lite1" => include_str!("calibration/efficientnet-lite1.json"),
            "efficientnet-lite2" => include_str!("calibration/efficientnet-lite2.json"),
            other => bail!("no int8 calibration ships for {other}"),
        };
        let calibration: Self = serde_json::from_str(json).context("a shipped int8 calibration is unreadable")?;
        ensure!(
            calibration.weights_sha256 == spec.weights_sha256,
            "the shipped int8 calibration of {} was measured on other weights",
            spec.name
        );
        Ok(calibration)
    }

    /// A short digest of the ranges: two calibrations with the same id quantize alike.
    pub fn id(&self) -> String {
        let mut hasher = Sha256::new();
        for (name, (low, high)) in &self.ranges {
            hasher.update(name.as_bytes());
            hasher.update(low.to_le_bytes());
            hasher.update(high.to_le_bytes());
        }
        hex::encode(&hasher.finalize()[..6])
    }

    /// How the catalogue manifest names this precision with `weights` (eight-bit graphs keep the
    /// name they had before seven-bit ones existed).
    pub fn manifest_name(&self, weights: Int8Weights) -> String {
        match weights {
            Int8Weights::Full => format!("int8 (calibration {})", self.id()),
            Int8Weights::DenseSevenBit => {
                format!("int8 (calibration {}, {})", self.id(), Int8Weights::DENSE_SEVEN_BIT)
            }
        }
    }
}

/// Runs the float graph of `network` on `images` (preprocessed input tensors, one per photo) and
/// keeps the lowest and highest value of every activation an int8 graph quantizes.
pub fn calibrate(
    models: &ModelDir,
    spec: &BackboneSpec,
    network: &EfficientNetLite,
    images: impl IntoIterator<Item = Vec<f32>>,
    photos: &str,
    threads: usize,
) -> Result<Calibration> {
    let onnx = network.to_onnx(&GraphOptions {
        expose_activations: true,
        ..GraphOptions::default()
    })?;
    let mut session = build_session(environment(models)?, &onnx, threads)
        .map_err(|e| anyhow!("cannot build the calibration session: {e}"))?;
    let names: Vec<String> = session
        .outputs()
        .iter()
        .map(|o| o.name().to_string())
        .filter(|n| n != super::efficientnet::FEATURES_NAME && n != super::efficientnet::LOGITS_NAME)
        .collect();
    let side = spec.input_size;
    let mut ranges: BTreeMap<String, (f32, f32)> = BTreeMap::new();
    let mut count = 0;
    for image in images {
        ensure!(
            image.len() == 3 * side * side,
            "a calibration image is not 3×{side}×{side}"
        );
        let tensor = ort::value::TensorRef::from_array_view(([1, 3, side, side], image.as_slice()))?;
        let outputs = session.run(ort::inputs![INPUT_NAME => tensor])?;
        for name in &names {
            let values = outputs[name.as_str()].try_extract_tensor::<f32>()?.1;
            let (low, high) = values
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
            let range = ranges.entry(name.clone()).or_insert((low, high));
            *range = (range.0.min(low), range.1.max(high));
        }
        count += 1;
    }
    ensure!(count > 0, "no photos to calibrate on");
    Ok(Calibration {
        backbone: spec.name.into(),
        weights_sha256: spec.weights_sha256.into(),
        photos: format!("{count} photos: {photos}"),
        ranges,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::efficientnet::{int8_per_channel, uint8_quantization};

    #[test]
    fn activation_ranges_keep_zero_exact() {
        let (scale, zero) = uint8_quantization(0.0, 6.0);
        assert_eq!(zero, 0);
        assert!((scale * 255.0 - 6.0).abs() < 1e-6);
        let (scale, zero) = uint8_quantization(-2.0, 3.1);
        assert_eq!(((0.0 - -2.0) / scale).round() as u8, zero);
        // A range that does not hold 0 is widened to hold it.
        assert_eq!(uint8_quantization(1.0, 2.0).1, 0);
        assert_eq!(uint8_quantization(-2.0, -1.0).1, 255);
        // A constant activation gets a usable scale.
        assert!(uint8_quantization(0.0, 0.0).0 > 0.0);
    }

    #[test]
    fn weights_round_to_their_channel_scale() {
        let weights = [0.5, -1.0, 0.25, 0.0, 0.0, 0.0, 0.01, 0.02, -0.03];
        for largest in [127, 63] {
            let (q, scales) = int8_per_channel(&weights, 3, largest);
            // Each channel's largest weight takes the end of the range; the rest round to the step.
            assert_eq!(q[1], -largest);
            assert!(q.iter().all(|v| v.abs() <= largest));
            if largest == 127 {
                assert_eq!(&q[..3], &[64, -127, 32]);
            }
            assert_eq!(&q[3..6], &[0, 0, 0]);
            assert_eq!(q[8], -largest);
            for (w, (q, s)) in weights.iter().zip(q.iter().zip(scales.iter().flat_map(|s| [s; 3]))) {
                assert!((w - *q as f32 * s).abs() <= s / 2.0 + 1e-7);
            }
        }
    }

    #[test]
    fn precision_names_parse() {
        assert_eq!("INT8".parse::<Precision>().unwrap(), Precision::Int8);
        assert_eq!("fp32".parse::<Precision>().unwrap(), Precision::Fp32);
        assert!("int4".parse::<Precision>().is_err());
    }
}

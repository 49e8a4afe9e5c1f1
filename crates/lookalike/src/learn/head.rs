//! Trained heads on top of the frozen backbone's pooled features, stored as safetensors.
//!
//! A head is a stack of dense layers (ReLU between them). A classifier head ends in class
//! logits; a projection head ends in an embedding that is L2-normalised. The file's metadata
//! names the kind, the classes and the backbone weights it was trained on, so a head is never
//! applied to features of another model.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use crate::learn::dense::Dense;
use crate::learn::trunk::Trunk;
use crate::linalg::{l2_normalise_rows, softmax_rows};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    Classifier,
    Projection,
}

#[derive(Debug, Clone)]
pub struct Head {
    pub kind: HeadKind,
    pub layers: Vec<Dense>,
    /// Class names for a classifier, in logit order; empty for a projection.
    pub classes: Vec<String>,
    /// sha256 of the backbone weights whose features this head takes.
    pub backbone_sha256: String,
    /// Fine-tuned last blocks of the backbone: the head then takes the input of the first of
    /// them instead of pooled features.
    pub trunk: Option<Trunk>,
}

#[derive(Serialize, Deserialize)]
struct HeadMetadata {
    kind: HeadKind,
    classes: Vec<String>,
    backbone_sha256: String,
    layers: usize,
    #[serde(default)]
    trunk: Option<Trunk>,
}

pub fn relu_in_place(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = v.max(0.0));
}

impl Head {
    pub fn input_dimension(&self) -> usize {
        match &self.trunk {
            Some(trunk) => trunk.input_dimension(),
            None => self.layers.first().map_or(0, |l| l.input),
        }
    }

    pub fn output_dimension(&self) -> usize {
        self.layers.last().map_or(0, |l| l.output)
    }

    /// Logits (classifier) or unnormalised embeddings (projection) for `rows` feature vectors.
    pub fn forward_raw(&self, features: &[f32], rows: usize) -> Vec<f32> {
        let mut x = match &self.trunk {
            Some(trunk) => trunk.pooled(features, rows),
            None => features.to_vec(),
        };
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, rows);
            if i + 1 < self.layers.len() {
                relu_in_place(&mut x);
            }
        }
        x
    }

    /// Class probabilities (classifier) or unit-length embeddings (projection).
    pub fn apply(&self, features: &[f32], rows: usize) -> Vec<f32> {
        let mut y = self.forward_raw(features, rows);
        match self.kind {
            HeadKind::Classifier => softmax_rows(&mut y, self.output_dimension()),
            HeadKind::Projection => l2_normalise_rows(&mut y, self.output_dimension()),
        }
        y
    }

    /// Classes sorted by probability, most likely first.
    pub fn predict(&self, features: &[f32]) -> Result<Vec<(String, f32)>> {
        if self.kind != HeadKind::Classifier {
            bail!("this head is a projection head, not a classifier");
        }
        self.check_input(features.len())?;
        let probs = self.apply(features, 1);
        let mut ranked: Vec<(String, f32)> = self.classes.iter().cloned().zip(probs).collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(ranked)
    }

    /// The most likely classes, best first, until their probabilities add up to `coverage`
    /// (always at least one): the categories a hybrid search ranks within.
    pub fn likely_classes(&self, features: &[f32], coverage: f32) -> Result<Vec<(String, f32)>> {
        let mut taken = Vec::new();
        let mut total = 0.0;
        for (class, p) in self.predict(features)? {
            if !taken.is_empty() && total >= coverage {
                break;
            }
            total += p;
            taken.push((class, p));
        }
        Ok(taken)
    }

    pub fn check_input(&self, dimension: usize) -> Result<()> {
        if dimension != self.input_dimension() {
            bail!(
                "this head takes {}-d features, got {dimension}-d",
                self.input_dimension()
            );
        }
        Ok(())
    }

    /// Refuses a head trained on another backbone's features.
    pub fn check_backbone(&self, weights_sha256: &str) -> Result<()> {
        if self.backbone_sha256 != weights_sha256 {
            bail!(
                "this head was trained on features of backbone weights {}, not {}",
                short(&self.backbone_sha256),
                short(weights_sha256)
            );
        }
        Ok(())
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let metadata = HeadMetadata {
            kind: self.kind,
            classes: self.classes.clone(),
            backbone_sha256: self.backbone_sha256.clone(),
            layers: self.layers.len(),
            trunk: self.trunk.clone(),
        };
        let trunk_layers = self.trunk.iter().flat_map(|t| t.layers.iter());
        let all: Vec<Dense> = trunk_layers.chain(&self.layers).cloned().collect();
        layers_to_safetensors(&all, HEAD_METADATA_KEY, &serde_json::to_string(&metadata)?)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let json = safetensors_metadata(bytes, HEAD_METADATA_KEY)?;
        let metadata: HeadMetadata = serde_json::from_str(&json).context("unreadable lookalike_head metadata")?;
        let mut trunk = metadata.trunk;
        let trunk_layers = trunk.as_ref().map_or(0, Trunk::layer_count);
        let mut layers = layers_from_safetensors(bytes, trunk_layers + metadata.layers)?;
        if let Some(trunk) = &mut trunk {
            trunk.layers = layers.drain(..trunk_layers).collect();
            trunk.check()?;
            if layers.first().map(|l| l.input) != Some(trunk.output_dimension()) {
                bail!("the head's first layer does not take the fine-tuned blocks' output");
            }
        }
        if layers.windows(2).any(|pair| pair[0].output != pair[1].input) {
            bail!("the head's layers do not fit together");
        }
        let head = Self {
            kind: metadata.kind,
            layers,
            classes: metadata.classes,
            backbone_sha256: metadata.backbone_sha256,
            trunk,
        };
        if head.layers.is_empty() {
            bail!("the head has no layers");
        }
        if head.kind == HeadKind::Classifier && head.classes.len() != head.output_dimension() {
            bail!(
                "the classifier names {} classes but has {} outputs",
                head.classes.len(),
                head.output_dimension()
            );
        }
        Ok(head)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        crate::files::write_atomically(path, |out| Ok(std::io::Write::write_all(out, &bytes)?))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read head {}", path.display()))?;
        Self::from_bytes(&bytes).with_context(|| format!("cannot load head {}", path.display()))
    }

    /// How the manifest names this head: kind, shape and a checksum of the file's bytes.
    pub fn manifest_name(&self) -> Result<String> {
        let shape: Vec<String> = std::iter::once(self.input_dimension())
            .chain(self.trunk.as_ref().map(Trunk::output_dimension))
            .chain(self.layers.iter().map(|l| l.output))
            .map(|d| d.to_string())
            .collect();
        let kind = match self.kind {
            HeadKind::Classifier => "classifier",
            HeadKind::Projection => "projection",
        };
        let fine_tuned = self
            .trunk
            .as_ref()
            .map(|t| format!(" with blocks {}+ fine-tuned", t.first_block))
            .unwrap_or_default();
        Ok(format!(
            "{kind}{fine_tuned} {} sha256:{}",
            shape.join("-"),
            short(&crate::content_hash(&self.to_bytes()?))
        ))
    }
}

const HEAD_METADATA_KEY: &str = "lookalike_head";

/// Dense layers as `layers.{i}.weight` (input × output) and `layers.{i}.bias` f32 tensors, with one
/// JSON metadata entry under `key` that says what the layers are.
pub fn layers_to_safetensors(layers: &[Dense], key: &str, metadata_json: &str) -> Result<Vec<u8>> {
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = layers
        .iter()
        .enumerate()
        .flat_map(|(i, l)| {
            [
                (
                    format!("layers.{i}.weight"),
                    vec![l.input, l.output],
                    f32_bytes(&l.weight),
                ),
                (format!("layers.{i}.bias"), vec![l.output], f32_bytes(&l.bias)),
            ]
        })
        .collect();
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let info = HashMap::from([(key.to_string(), metadata_json.to_string())]);
    Ok(safetensors::serialize(views, Some(info))?)
}

/// The JSON metadata entry `key` of a safetensors file, refusing files without it.
pub fn safetensors_metadata(bytes: &[u8], key: &str) -> Result<String> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).context("not a safetensors file")?;
    header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(key))
        .cloned()
        .with_context(|| format!("a safetensors file, but not one lookalike wrote for this (no `{key}` metadata)"))
}

pub fn layers_from_safetensors(bytes: &[u8], count: usize) -> Result<Vec<Dense>> {
    let tensors = safetensors::SafeTensors::deserialize(bytes)?;
    (0..count)
        .map(|i| {
            let weight = tensors.tensor(&format!("layers.{i}.weight"))?;
            let bias = tensors.tensor(&format!("layers.{i}.bias"))?;
            let &[input, output] = weight.shape() else {
                bail!("layer {i}'s weight is not a matrix");
            };
            if bias.shape() != [output]
                || weight.dtype() != safetensors::Dtype::F32
                || bias.dtype() != safetensors::Dtype::F32
            {
                bail!("layer {i}'s tensors have the wrong shape or type");
            }
            Ok(Dense {
                input,
                output,
                weight: crate::linalg::bytes_to_f32(weight.data()),
                bias: crate::linalg::bytes_to_f32(bias.data()),
            })
        })
        .collect()
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_round_trip_through_safetensors_and_refuse_other_files() {
        let mut rng = fastrand::Rng::with_seed(3);
        let head = Head {
            kind: HeadKind::Classifier,
            layers: vec![Dense::new(4, 3, &mut rng), Dense::new(3, 2, &mut rng)],
            classes: vec!["a".into(), "b".into()],
            backbone_sha256: "abc".into(),
            trunk: None,
        };
        let back = Head::from_bytes(&head.to_bytes().unwrap()).unwrap();
        let x = [0.5, -1.0, 2.0, 0.25];
        assert_eq!(head.apply(&x, 1), back.apply(&x, 1));
        assert!((back.apply(&x, 1).iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(back.predict(&x).unwrap().len(), 2);
        let best = back.predict(&x).unwrap()[0].clone();
        assert_eq!(back.likely_classes(&x, 0.0).unwrap(), vec![best]);
        assert_eq!(back.likely_classes(&x, 1.0).unwrap().len(), 2);
        assert!(back.predict(&[1.0]).is_err());
        assert!(back.check_backbone("abd").is_err());
        assert!(Head::from_bytes(b"not a head").is_err());
    }

    #[test]
    fn dense_forward_is_x_times_w_plus_b() {
        let layer = Dense {
            input: 2,
            output: 2,
            weight: vec![1.0, 2.0, 3.0, 4.0],
            bias: vec![0.5, -0.5],
        };
        assert_eq!(layer.forward(&[1.0, 1.0, 0.0, 2.0], 2), vec![4.5, 5.5, 6.5, 7.5]);
    }
}

//! Reading PyTorch checkpoints (legacy pickle `.pth` and the zip `.pt` format)
//! into plain f32 tensors, without PyTorch.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use pytorch_reader::{DType, PytorchReader};

#[derive(Debug, Clone)]
pub struct WeightTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A state dict: parameter name -> tensor, plus the checksum of the file it came from.
#[derive(Debug)]
pub struct Checkpoint {
    pub tensors: HashMap<String, WeightTensor>,
    pub sha256: String,
}

impl Checkpoint {
    pub fn load(path: &Path) -> Result<Self> {
        let sha256 = sha256_file(path)?;
        let reader =
            PytorchReader::new(path).with_context(|| format!("cannot read PyTorch checkpoint {}", path.display()))?;
        let mut tensors = HashMap::new();
        for (name, tensor) in reader.tensors() {
            // Integer bookkeeping such as BatchNorm's num_batches_tracked is not a weight.
            let data = match tensor.dtype() {
                DType::F32 => crate::linalg::bytes_to_f32(&tensor.read()?),
                DType::F64 => tensor
                    .read()?
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
                    .collect(),
                _ => continue,
            };
            tensors.insert(
                name.clone(),
                WeightTensor {
                    shape: tensor.shape().to_vec(),
                    data,
                },
            );
        }
        if tensors.is_empty() {
            bail!("{} holds no floating-point tensors", path.display());
        }
        Ok(Self { tensors, sha256 })
    }

    pub fn get(&self, name: &str) -> Result<&WeightTensor> {
        self.tensors
            .get(name)
            .with_context(|| format!("checkpoint has no tensor named {name:?}"))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(crate::content_hash(&bytes))
}

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use lookalike::model::{Embedder, ModelDir, EFFICIENTNET_LITE0};

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// One embedder per test binary: building the ONNX Runtime session takes a moment.
pub fn embedder() -> &'static Embedder {
    static EMBEDDER: OnceLock<Embedder> = OnceLock::new();
    EMBEDDER.get_or_init(|| {
        Embedder::load(&ModelDir::locate(None), EFFICIENTNET_LITE0, 2)
            .expect("model files missing: run scripts/setup.sh first")
    })
}

pub fn read_npy(rel: &str) -> (Vec<u64>, Vec<f32>) {
    let bytes = std::fs::read(fixture(rel)).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().to_vec();
    (shape, npy.into_vec::<f32>().unwrap())
}

/// The largest element-wise difference; infinite when either side has a value that is not finite
/// (`f32::max` would drop a NaN and report the rest as close).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x.is_finite() && y.is_finite() {
                (x - y).abs()
            } else {
                f32::INFINITY
            }
        })
        .fold(0.0, f32::max)
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

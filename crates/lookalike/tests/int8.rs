//! Int8 backbones against their fp32 selves on real photos (the reference images), and the
//! calibration that quantizes them.

mod common;

use std::sync::Arc;

use common::*;
use lookalike::image::load_image;
use lookalike::model::labels::top_k;
use lookalike::model::quantize::calibrate;
use lookalike::model::{Calibration, Embedder, Int8Weights, ModelDir, Precision, BACKBONES};

fn reference_inputs(embedder: &Embedder) -> (Vec<String>, Vec<f32>) {
    let folder = fixture("reference/images");
    let mut files: Vec<_> = std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut inputs = Vec::new();
    for file in &files {
        inputs.extend(embedder.preprocessing.tensor_of(&load_image(file).unwrap()));
    }
    let names = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    (names, inputs)
}

/// Cosines of every image's int8 features to its fp32 features.
fn agreement(fp32: &Embedder, int8: &Embedder, inputs: &[f32], count: usize) -> Vec<f32> {
    let (a, b) = (fp32.run(inputs, count).unwrap(), int8.run(inputs, count).unwrap());
    (0..count).map(|i| cosine(a.feature(i), b.feature(i))).collect()
}

#[test]
fn int8_backbones_agree_with_fp32_on_real_photos() {
    let models = ModelDir::locate(None);
    for (spec, weights) in BACKBONES
        .into_iter()
        .flat_map(|spec| [Int8Weights::Full, Int8Weights::DenseSevenBit].map(|w| (spec, w)))
    {
        let fp32 = Embedder::load(&models, spec, 2).expect("run LOOKALIKE_BACKBONES=lite2 scripts/setup.sh first");
        let calibration = Arc::new(Calibration::shipped(&spec).unwrap());
        let int8 = Embedder::load_with(&models, spec, Some(calibration), weights, 2).unwrap();
        assert_eq!(int8.precision(), Precision::Int8);
        let (names, inputs) = reference_inputs(&fp32);
        let cosines = agreement(&fp32, &int8, &inputs, names.len());
        eprintln!("{} {weights:?}: int8 vs fp32 cosines {cosines:.4?}", spec.name);
        for (name, cos) in names.iter().zip(&cosines) {
            assert!(
                *cos >= 0.98,
                "{}: {name} int8 features at cosine {cos} to fp32",
                spec.name
            );
        }
        // Really quantized: the graph is another one and the numbers move.
        assert!(
            int8.onnx_model().len() * 2 < fp32.onnx_model().len(),
            "int8 weights are a quarter of fp32's"
        );
        assert!(cosines.iter().any(|&c| c < 0.99999));
        // The ImageNet head still names what fp32 names on the plain photos.
        let (a, b) = (
            fp32.run(&inputs, names.len()).unwrap(),
            int8.run(&inputs, names.len()).unwrap(),
        );
        let same = (0..names.len())
            .filter(|&i| top_k(a.logit_row(i), 1)[0].0 == top_k(b.logit_row(i), 1)[0].0)
            .count();
        assert!(
            same >= names.len() - 1,
            "{}: top-1 kept on {same} of {}",
            spec.name,
            names.len()
        );
    }
}

#[test]
fn manifests_tell_int8_from_fp32_and_calibrations_apart() {
    let models = ModelDir::locate(None);
    let spec = lookalike::model::EFFICIENTNET_LITE0;
    let fp32 = Embedder::load(&models, spec, 1).unwrap();
    let int8 = Embedder::load_as(&models, spec, Precision::Int8, 1).unwrap();
    let (m32, m8) = (fp32.manifest(), int8.manifest());
    assert_eq!(m32.precision, None);
    assert_eq!(m32.precision(), Precision::Fp32);
    assert_eq!(m8.precision(), Precision::Int8);
    let shipped = Calibration::shipped(&spec).unwrap();
    let weights = Int8Weights::for_this_cpu();
    assert_eq!(m8.precision.as_deref(), Some(shipped.manifest_name(weights).as_str()));
    assert_eq!(m8.int8_weights(), weights);
    assert_ne!(m32, m8);
    // Eight-bit catalogues keep the name they had before seven-bit weights existed; the two differ.
    assert_eq!(
        shipped.manifest_name(Int8Weights::Full),
        format!("int8 (calibration {})", shipped.id())
    );
    assert_ne!(
        shipped.manifest_name(Int8Weights::Full),
        shipped.manifest_name(Int8Weights::DenseSevenBit)
    );
    // A catalogue is searched and extended with the weights that built it, whatever this CPU prefers.
    for built in [Int8Weights::Full, Int8Weights::DenseSevenBit] {
        let calibration = Arc::new(shipped.clone());
        let builder = Embedder::load_with(&models, spec, Some(calibration), built, 1).unwrap();
        let again = Embedder::load_like(&models, spec, &builder.manifest(), 1).unwrap();
        assert_eq!(again.manifest(), builder.manifest(), "{built:?}");
    }
    // fp32 manifests are written as before precisions existed, so older catalogues still match.
    assert!(!serde_json::to_string(&m32).unwrap().contains("precision"));
    let mut other = shipped.clone();
    other.ranges.values_mut().next().unwrap().1 *= 2.0;
    assert_ne!(other.id(), shipped.id());
}

/// The calibration procedure itself, on the eight reference photos: every quantized activation
/// gets a range, ReLU6 outputs stay within [0, 6], and the graph written with them agrees with fp32.
#[test]
fn calibrating_on_photos_gives_ranges_that_quantize_well() {
    let models = ModelDir::locate(None);
    let spec = lookalike::model::EFFICIENTNET_LITE0;
    let fp32 = Embedder::load(&models, spec, 2).unwrap();
    let (names, inputs) = reference_inputs(&fp32);
    let per_image = fp32.preprocessing.tensor_len();
    let images = inputs.chunks(per_image).map(<[f32]>::to_vec);
    let calibration = calibrate(&models, &spec, fp32.network(), images, "reference photos", 2).unwrap();
    let shipped = Calibration::shipped(&spec).unwrap();
    assert_eq!(
        calibration.ranges.keys().collect::<Vec<_>>(),
        shipped.ranges.keys().collect::<Vec<_>>(),
        "the shipped calibration covers what the graph quantizes"
    );
    for (name, (low, high)) in &calibration.ranges {
        assert!(low <= high, "{name}: {low} > {high}");
        if name.ends_with("relu6") {
            assert!(*low >= 0.0 && *high <= 6.0, "{name}: [{low}, {high}]");
        }
    }
    assert!(calibration.photos.starts_with(&format!("{} photos", names.len())));
    let int8 = Embedder::load_with(
        &models,
        spec,
        Some(Arc::new(calibration)),
        Int8Weights::for_this_cpu(),
        2,
    )
    .unwrap();
    let cosines = agreement(&fp32, &int8, &inputs, names.len());
    assert_eq!(cosines.len(), names.len());
    assert!(cosines.iter().all(|&c| c >= 0.98), "{cosines:?}");
}

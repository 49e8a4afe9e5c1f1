//! The network and the whole pipeline against an independent PyTorch reference
//! (tests/fixtures/reference, made with `efficientnet_lite_pytorch` — see its README).

mod common;

use common::*;
use lookalike::image::load_image;
use lookalike::model::labels::{imagenet_label, top_k};
use lookalike::model::Parallelism;

const IMAGES: usize = 8;
const FEATURE_DIM: usize = 1280;

fn reference_images() -> Vec<(String, usize)> {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("reference/manifest.json")).unwrap()).unwrap();
    manifest["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["file"].as_str().unwrap().to_string(),
                i["top5_imagenet"][0][0].as_u64().unwrap() as usize,
            )
        })
        .collect()
}

#[test]
fn network_matches_pytorch_reference_on_identical_inputs() {
    let (shape, inputs) = read_npy("reference/inputs.npy");
    assert_eq!(shape, vec![IMAGES as u64, 3, 224, 224]);
    let (_, features) = read_npy("reference/features.npy");
    let (_, logits) = read_npy("reference/logits.npy");
    let out = embedder().run(&inputs, IMAGES).unwrap();
    assert_eq!(out.dimension, FEATURE_DIM);
    let diff = max_abs_diff(&out.features, &features);
    eprintln!("max abs diff of pooled features vs PyTorch: {diff:e}");
    assert!(diff <= 1e-3, "features differ from the reference by {diff}");
    let logit_diff = max_abs_diff(&out.logits, &logits);
    assert!(logit_diff <= 1e-2, "logits differ from the reference by {logit_diff}");
}

#[test]
fn images_in_parallel_give_the_same_embeddings_in_the_same_order() {
    let (_, inputs) = read_npy("reference/inputs.npy");
    let operators = embedder().run_with(&inputs, IMAGES, Parallelism::Operators).unwrap();
    let images = embedder().run_with(&inputs, IMAGES, Parallelism::Images).unwrap();
    assert_eq!(images.features.len(), IMAGES * FEATURE_DIM);
    assert!(max_abs_diff(&images.features, &operators.features) < 1e-5);
    assert!(max_abs_diff(&images.logits, &operators.logits) < 1e-4);
}

#[test]
fn imagenet_top1_is_right_on_real_photos() {
    let embedder = embedder();
    let pre = embedder.preprocessing;
    for (file, expected) in reference_images() {
        let image = load_image(&fixture(&format!("reference/{file}"))).unwrap();
        let out = embedder.run(&pre.tensor_of(&image), 1).unwrap();
        let (top1, p) = top_k(out.logit_row(0), 1)[0];
        assert_eq!(
            top1,
            expected,
            "{file}: got {} ({p:.3}), expected {}",
            imagenet_label(top1),
            imagenet_label(expected)
        );
    }
    // The hoodie photo the issue names.
    assert_eq!(imagenet_label(reference_images()[0].1), "sweatshirt");
}

#[test]
fn whole_pipeline_from_jpeg_matches_reference_features() {
    let embedder = embedder();
    let pre = embedder.preprocessing;
    let (_, inputs) = read_npy("reference/inputs.npy");
    let (_, features) = read_npy("reference/features.npy");
    let plane = 3 * 224 * 224;
    for (i, (file, _)) in reference_images().iter().enumerate() {
        let image = load_image(&fixture(&format!("reference/{file}"))).unwrap();
        let tensor = pre.tensor_of(&image);
        let input_diff = max_abs_diff(&tensor, &inputs[i * plane..(i + 1) * plane]);
        let out = embedder.run(&tensor, 1).unwrap();
        let reference = &features[i * FEATURE_DIM..(i + 1) * FEATURE_DIM];
        let cos = cosine(out.feature(0), reference);
        eprintln!(
            "{file}: input max diff {input_diff:.4} ({:.1} grey levels), feature cosine {cos:.5}",
            input_diff * 128.0
        );
        // JPEG decoders and resamplers differ by a few grey levels, never by a pixel shift.
        assert!(
            input_diff * 128.0 <= 4.0,
            "{file}: input differs by {} grey levels",
            input_diff * 128.0
        );
        assert!(cos > 0.999, "{file}: cosine {cos} to the reference features");
    }
}

#[test]
fn blocks_cut_out_for_fine_tuning_compute_what_the_graph_computes() {
    let (_, inputs) = read_npy("reference/inputs.npy");
    let base = embedder();
    // 1 and 5 blocks end at 7×7 (5 starts with a stride-2 block at 14×14); 16 is every block.
    for blocks in [1, 5, 16] {
        let trunk = base.pretrained_trunk(blocks).unwrap();
        let tapped = base.with_block_input(&trunk, false).unwrap();
        let out = tapped.run(&inputs, IMAGES).unwrap();
        assert_eq!(out.block_input.len(), IMAGES * trunk.input_dimension());
        let pooled = trunk.pooled(&out.block_input, IMAGES);
        let diff = max_abs_diff(&pooled, &out.features);
        eprintln!("last {blocks} blocks in Rust vs ONNX Runtime: max abs diff {diff:e}");
        assert!(diff < 1e-4, "{blocks} blocks differ by {diff}");
    }
    assert!(base.pretrained_trunk(17).is_err());
    assert!(base.pretrained_trunk(0).is_err());
}

#[test]
fn big_jpegs_decoded_reduced_embed_like_the_full_decode() {
    let embedder = embedder();
    let pre = embedder.preprocessing;
    for (file, _) in reference_images().iter().take(3) {
        let photo = image::open(fixture(&format!("reference/{file}"))).unwrap();
        // A camera-sized photo: its shorter side is over twice the working side, so it is
        // decoded at half size or less in the DCT domain.
        let (w, h) = (photo.width() * 5, photo.height() * 5);
        let big = photo
            .resize_exact(w, h, image::imageops::FilterType::Triangle)
            .to_rgb8();
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 92)
            .encode_image(&big)
            .unwrap();
        let reduced = lookalike::image::decode_image(&jpeg).unwrap();
        assert!(reduced.width() < w, "{file}: {w}x{h} was not reduced");
        let full = image::load_from_memory(&jpeg).unwrap().into_rgb8();
        let out = embedder
            .run(&[pre.tensor_of(&reduced), pre.tensor_of(&full)].concat(), 2)
            .unwrap();
        let cos = cosine(out.feature(0), out.feature(1));
        eprintln!(
            "{file} at {w}x{h}: decoded at {}x{}, cosine to the full decode {cos:.5}",
            reduced.width(),
            reduced.height()
        );
        assert!(cos > 0.995, "{file}: cosine {cos}");
    }
}

/// Every backbone against an independent numpy forward pass (`scripts/numpy_reference.py`, which
/// agrees with the PyTorch reference on Lite0 to 3.6e-6) on two deterministic inputs of its size.
#[test]
fn every_backbone_matches_an_independent_numpy_forward_pass() {
    use lookalike::model::{ModelDir, BACKBONES};
    for spec in BACKBONES {
        let short = &spec.name["efficientnet-".len()..];
        let embedder = lookalike::model::Embedder::load(&ModelDir::locate(None), spec, 2)
            .expect("run LOOKALIKE_BACKBONES=\"lite1 lite2\" scripts/setup.sh first");
        let side = spec.input_size;
        let inputs: Vec<f32> = (0..2 * 3 * side * side)
            .map(|i| ((i as i64 * 7919 % 2001) as f64 / 1000.0 - 1.0) as f32)
            .collect();
        let out = embedder.run(&inputs, 2).unwrap();
        let (_, features) = read_npy(&format!("reference/numpy/{short}-features.npy"));
        let (_, logits) = read_npy(&format!("reference/numpy/{short}-logits.npy"));
        let diff = max_abs_diff(&out.features, &features);
        eprintln!("{}: max abs diff of pooled features vs numpy: {diff:e}", spec.name);
        assert!(
            diff <= 1e-3,
            "{}: features differ from the numpy reference by {diff}",
            spec.name
        );
        let logit_diff = max_abs_diff(&out.logits, &logits);
        assert!(logit_diff <= 1e-2, "{}: logits differ by {logit_diff}", spec.name);
    }
}

/// Lite1 and Lite2 (240 and 260 px inputs, 65 of Lite2's tensors stored as strided views) on real
/// photos: a loader that ignored strides would name every photo the same class.
#[test]
fn larger_backbones_load_strided_weights_and_name_unambiguous_products() {
    use lookalike::model::{ModelDir, EFFICIENTNET_LITE1, EFFICIENTNET_LITE2};
    // Photos whose ImageNet class is plain: a digital watch, a messenger bag, a sandal, a T-shirt.
    let plain = [(1, 531), (2, 636), (4, 774), (7, 610)];
    let files = reference_images();
    for spec in [EFFICIENTNET_LITE1, EFFICIENTNET_LITE2] {
        let embedder = lookalike::model::Embedder::load(&ModelDir::locate(None), spec, 2)
            .expect("run LOOKALIKE_BACKBONES=\"lite1 lite2\" scripts/setup.sh first");
        assert_eq!(embedder.preprocessing.crop as usize, spec.input_size);
        assert_eq!(embedder.dimension, FEATURE_DIM);
        let mut classes = std::collections::BTreeSet::new();
        for (i, expected) in plain {
            let image = load_image(&fixture(&format!("reference/{}", files[i].0))).unwrap();
            let out = embedder.run(&embedder.preprocessing.tensor_of(&image), 1).unwrap();
            let (top1, p) = top_k(out.logit_row(0), 1)[0];
            assert_eq!(
                top1,
                expected,
                "{}: {} got {} ({p:.3})",
                spec.name,
                files[i].0,
                imagenet_label(top1)
            );
            classes.insert(top1);
        }
        assert_eq!(classes.len(), plain.len());
    }
}

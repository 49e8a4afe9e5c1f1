//! The checkpoint loader on both PyTorch formats (fixtures made by PyTorch, see their README).

mod common;

use common::*;
use lookalike::model::weights::Checkpoint;

fn check(file: &str) {
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("checkpoints/tiny-expected.json")).unwrap()).unwrap();
    let ckpt = Checkpoint::load(&fixture(&format!("checkpoints/{file}"))).unwrap();
    assert!(
        !ckpt.contains("bn.num_batches_tracked"),
        "integer bookkeeping is not a weight"
    );
    for name in ["conv.weight", "bn.running_var", "fc.weight"] {
        let t = ckpt.get(name).unwrap();
        let shape: Vec<usize> = serde_json::from_value(expected["shapes"][name].clone()).unwrap();
        let values: Vec<f32> = expected[name]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(t.shape, shape, "{file}: {name}");
        assert!(max_abs_diff(&t.data, &values) < 1e-6, "{file}: {name} values");
    }
    assert_eq!(ckpt.sha256.len(), 64);
}

#[test]
fn legacy_pickle_checkpoint_loads() {
    check("tiny-legacy.pth");
}

#[test]
fn zip_checkpoint_loads() {
    check("tiny-zip.pt");
}

#[test]
fn a_file_that_is_not_a_checkpoint_is_an_error() {
    let err = Checkpoint::load(&fixture("reference/manifest.json")).unwrap_err();
    assert!(format!("{err:#}").contains("cannot read PyTorch checkpoint"), "{err:#}");
}

//! Shared by the CLI and HTTP tests.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use lookalike::store::SqliteStore;
use lookalike::train::{train_classifier, LabelledFeatures, TrainOptions};

pub fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../demo")
}

/// A classifier head over the demo catalogue's own categories, trained on the features stored in
/// `db` (an indexed demo catalogue), written to `out`.
pub fn demo_classifier(db: &Path, out: &Path) {
    let store = SqliteStore::open(db).unwrap();
    let products = store.products().unwrap();
    let classes: Vec<String> = products
        .iter()
        .filter_map(|p| p.info.category.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let data = LabelledFeatures {
        features: products.iter().flat_map(|p| p.vector.iter().copied()).collect(),
        labels: products
            .iter()
            .map(|p| {
                classes
                    .iter()
                    .position(|c| Some(c) == p.info.category.as_ref())
                    .unwrap()
            })
            .collect(),
        dimension: products[0].vector.len(),
        classes,
    };
    let sha = store.manifest().unwrap().unwrap().weights_sha256;
    let options = TrainOptions {
        epochs: 60,
        batch_size: 16,
        ..TrainOptions::default()
    };
    let trained = train_classifier(&data, &data, &sha, &options, None, &mut |_| {}).unwrap();
    trained.head.save(out).unwrap();
}

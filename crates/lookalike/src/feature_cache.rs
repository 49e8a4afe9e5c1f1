//! Backbone features of labelled image folders, for training and evaluation: embedded once into
//! a catalogue database per folder and model (incremental by image hash; emptied and rebuilt when
//! the model changes), so a second `train` or `eval` over the same folders embeds nothing.
//! A folder's subfolders are its classes (each image's category).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::catalogue::indexer::{index_augmented_views, index_catalogue, IndexOptions, IndexReport};
use crate::catalogue::{read_image_folder, Layout};
use crate::image::augment::Augmentation;
use crate::learn::train::LabelledFeatures;
use crate::model::Embedder;
use crate::store::{SqliteStore, Store};
use crate::types::StoredProduct;

/// Where cached features live: a folder of SQLite catalogues.
pub struct FeatureCache {
    dir: PathBuf,
}

/// A folder's features and what embedding them took.
pub struct FolderFeatures {
    pub products: Vec<StoredProduct>,
    pub report: IndexReport,
}

impl FeatureCache {
    /// In `dir`, or else `$XDG_CACHE_HOME/lookalike` (`~/.cache/lookalike`, the temporary folder).
    pub fn new(dir: Option<PathBuf>) -> Self {
        let dir = dir.unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(std::env::temp_dir)
                .join("lookalike")
        });
        Self { dir }
    }

    /// The features `embedder` gives every image under `folder`, each with its class as category.
    /// `progress` gets images done and in all.
    pub fn folder(
        &self,
        embedder: &Embedder,
        folder: &Path,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<FolderFeatures> {
        let canonical = folder
            .canonicalize()
            .with_context(|| format!("cannot open image folder {}", folder.display()))?;
        let entries = read_image_folder(&canonical, Layout::Images)?.entries;
        if entries.is_empty() {
            bail!("{} has no images", folder.display());
        }
        let mut store = self.open(embedder, &canonical, "")?;
        let options = IndexOptions {
            prune: true,
            local_cells: false,
            ..IndexOptions::default()
        };
        let report = index_catalogue(&mut store, embedder, &entries, &options, progress)?;
        Ok(FolderFeatures {
            products: store.products()?,
            report,
        })
    }

    /// Features of `views` seeded augmented views of each of `originals` (the images of
    /// `folder`); with how many were embedded now rather than read from the cache.
    pub fn augmented(
        &self,
        embedder: &Embedder,
        folder: &Path,
        originals: &[StoredProduct],
        views: u32,
        seed: u64,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(Vec<StoredProduct>, usize)> {
        let canonical = folder
            .canonicalize()
            .with_context(|| format!("cannot open image folder {}", folder.display()))?;
        let mut store = self.open(embedder, &canonical, "-augmented")?;
        let embedded = index_augmented_views(
            &mut store,
            embedder,
            originals,
            &Augmentation::default(),
            seed,
            views,
            progress,
        )?;
        Ok((store.products()?, embedded))
    }

    /// The cache database for `folder` (and `variant` of its features), emptied when it holds
    /// features of another model.
    fn open(&self, embedder: &Embedder, folder: &Path, variant: &str) -> Result<SqliteStore> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("cannot create cache {}", self.dir.display()))?;
        // Inputs of fine-tuned blocks are cached apart from pooled features, so neither evicts the other.
        let manifest = embedder.manifest();
        let head = manifest
            .head
            .as_ref()
            .map(|h| format!("-{}", &crate::content_hash(h.as_bytes())[..8]));
        let colour = manifest.colour.map(|w| format!("-colour{w}"));
        let int8 = manifest.precision.as_ref().map(|_| "-int8".to_string());
        // Each backbone's features apart, Lite0's under the name caches had before there were others.
        let backbone = Some(manifest.model.replace("efficientnet-", "-")).filter(|m| m != "-lite0");
        let kind = backbone.unwrap_or_default()
            + &head.unwrap_or_default()
            + &colour.unwrap_or_default()
            + &int8.unwrap_or_default();
        let db = self.dir.join(format!(
            "{}{variant}{kind}.db",
            &crate::content_hash(folder.to_string_lossy().as_bytes())[..16]
        ));
        let store = SqliteStore::open(&db)?;
        if store.ensure_manifest(&manifest).is_ok() {
            return Ok(store);
        }
        drop(store);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
        SqliteStore::open(&db)
    }
}

/// An image's class: the category its folder gave it.
pub fn class_of(product: &StoredProduct) -> String {
    product.info.category.clone().unwrap_or_default()
}

/// Features with labels in `classes` order, and the classes of images left out (not in `classes`).
pub fn labelled(products: &[StoredProduct], classes: &[String]) -> (LabelledFeatures, BTreeSet<String>) {
    let index: HashMap<&str, usize> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
    let mut out = LabelledFeatures {
        features: Vec::new(),
        labels: Vec::new(),
        dimension: products.first().map_or(0, |p| p.vector.len()),
        classes: classes.to_vec(),
    };
    let mut unknown = BTreeSet::new();
    for p in products {
        match index.get(class_of(p).as_str()) {
            Some(&label) => {
                out.features.extend_from_slice(&p.vector);
                out.labels.push(label);
            }
            None => {
                unknown.insert(class_of(p));
            }
        }
    }
    (out, unknown)
}

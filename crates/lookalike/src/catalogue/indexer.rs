//! Driving a catalogue through the pipeline: read + hash + decode + resize in
//! parallel on a producer thread while the network runs on the previous batch,
//! then one store transaction per batch.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use anyhow::Result;
use rayon::prelude::*;

use crate::content_hash;
use crate::image::{decode_image, read_image_file, ImageError};
use crate::model::{Embedder, ImageEmbedding};
use crate::store::{Fingerprint, ProductWrite, Store};
use crate::types::CatalogueEntry;

pub const DEFAULT_BATCH_SIZE: usize = 32;

#[derive(Debug, Clone)]
pub struct IndexOptions {
    pub batch_size: usize,
    /// Remove stored products that are no longer in the catalogue or whose image file is gone.
    pub prune: bool,
    /// (I, N): the entries are shard I of N (see [`in_shard`]); pruning leaves other shards alone.
    pub shard: Option<(usize, usize)>,
    /// Folders the catalogue could not be read from: pruning leaves products under them alone.
    pub keep_under: Vec<PathBuf>,
}

/// Whether product `id` belongs to shard `index` of `count`: a stable hash of the id, so every
/// worker given the same catalogue agrees without talking to the others.
pub fn in_shard(id: &str, index: usize, count: usize) -> bool {
    let hash = content_hash(id.as_bytes());
    let head = u64::from_str_radix(&hash[..16], 16).expect("hex digest");
    head % count as u64 == index as u64
}

impl Default for IndexOptions {
    fn default() -> Self {
        Self {
            batch_size: DEFAULT_BATCH_SIZE,
            prune: false,
            shard: None,
            keep_under: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Skipped {
    pub id: String,
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Debug, Clone, Default)]
pub struct IndexReport {
    pub total: usize,
    pub embedded: usize,
    pub unchanged: usize,
    pub metadata_updated: usize,
    pub pruned: usize,
    pub skipped: Vec<Skipped>,
    pub elapsed: Duration,
}

impl IndexReport {
    pub fn images_per_second(&self) -> f64 {
        self.embedded as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What the producer decided for one entry.
enum Prepared {
    Unchanged,
    MetadataOnly { hash: String },
    Embed { hash: String, tensor: Vec<f32> },
    Skip(String),
}

fn prepare(entry: &CatalogueEntry, known: Option<&Fingerprint>, embedder: &Embedder) -> Prepared {
    // Stores keep paths as text; a lossy copy would point at no file.
    if entry.image_path.to_str().is_none() {
        return Prepared::Skip("the path is not valid UTF-8 (rename the file or its folders)".into());
    }
    let bytes = match read_image_file(&entry.image_path) {
        Ok(b) => b,
        Err(e) => return Prepared::Skip(e.to_string()),
    };
    let hash = content_hash(&bytes);
    if let Some(known) = known.filter(|k| k.content_hash == hash) {
        let same_info = known.info == entry.info && known.image_path == entry.image_path.to_string_lossy();
        return if same_info {
            Prepared::Unchanged
        } else {
            Prepared::MetadataOnly { hash }
        };
    }
    match decode_image(&bytes) {
        Ok(image) => Prepared::Embed {
            hash,
            tensor: embedder.preprocessing.tensor_of(&image),
        },
        Err(e) => Prepared::Skip(e.to_string()),
    }
}

/// Embeds new and changed images of `entries` into `store`; `on_batch(done, total)` after each batch.
pub fn index_catalogue(
    store: &mut dyn Store,
    embedder: &Embedder,
    entries: &[CatalogueEntry],
    options: &IndexOptions,
    on_batch: &mut dyn FnMut(usize, usize),
) -> Result<IndexReport> {
    let started = Instant::now();
    store.ensure_manifest(&embedder.manifest())?;
    let known = store.fingerprints()?;
    let mut report = IndexReport {
        total: entries.len(),
        ..Default::default()
    };
    let batch_size = options.batch_size.max(1);

    std::thread::scope(|scope| -> Result<()> {
        // Two prepared batches in flight: enough to hide decoding behind inference, bounded memory.
        let (sender, receiver) = sync_channel::<(usize, Vec<Prepared>)>(2);
        let known = &known;
        scope.spawn(move || {
            for (n, chunk) in entries.chunks(batch_size).enumerate() {
                let prepared = chunk
                    .par_iter()
                    .map(|e| prepare(e, known.get(&e.id), embedder))
                    .collect();
                if sender.send((n * batch_size, prepared)).is_err() {
                    break; // the consumer failed and hung up
                }
            }
        });
        let mut done = 0;
        for (start, prepared) in receiver {
            let chunk = &entries[start..start + prepared.len()];
            let mut input = Vec::new();
            let mut to_embed = Vec::new();
            for (i, p) in prepared.iter().enumerate() {
                if let Prepared::Embed { tensor, .. } = p {
                    input.extend_from_slice(tensor);
                    to_embed.push(i);
                }
            }
            let out = embedder.run(&input, to_embed.len())?;
            let row_of: HashMap<usize, usize> = to_embed.iter().enumerate().map(|(row, &i)| (i, row)).collect();
            let mut writes = Vec::new();
            for (i, (entry, p)) in chunk.iter().zip(&prepared).enumerate() {
                match p {
                    Prepared::Unchanged => report.unchanged += 1,
                    Prepared::MetadataOnly { hash } => {
                        report.metadata_updated += 1;
                        writes.push(ProductWrite {
                            entry,
                            content_hash: hash,
                            vector: None,
                        });
                    }
                    Prepared::Embed { hash, .. } => {
                        report.embedded += 1;
                        writes.push(ProductWrite {
                            entry,
                            content_hash: hash,
                            vector: Some(out.feature(row_of[&i])),
                        });
                    }
                    Prepared::Skip(reason) => report.skipped.push(Skipped {
                        id: entry.id.clone(),
                        path: entry.image_path.clone(),
                        reason: reason.clone(),
                    }),
                }
            }
            store.write_batch(&writes)?;
            done += chunk.len();
            on_batch(done, entries.len());
        }
        Ok(())
    })?;

    if options.prune {
        let present: HashSet<&str> = entries
            .iter()
            .filter(|e| e.image_path.is_file())
            .map(|e| e.id.as_str())
            .collect();
        let gone: Vec<String> = known
            .iter()
            .filter(|(id, _)| !present.contains(id.as_str()))
            .filter(|(id, _)| options.shard.is_none_or(|(i, n)| in_shard(id, i, n)))
            .filter(|(_, f)| {
                !options
                    .keep_under
                    .iter()
                    .any(|dir| Path::new(&f.image_path).starts_with(dir))
            })
            .map(|(id, _)| id.clone())
            .collect();
        report.pruned = store.remove(&gone)?;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Embeds image files for queries; each result is the embedding or why the image was refused.
pub fn embed_files(embedder: &Embedder, paths: &[PathBuf]) -> Result<Vec<Result<ImageEmbedding, ImageError>>> {
    let mut results = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(DEFAULT_BATCH_SIZE) {
        let prepared: Vec<Result<Vec<f32>, ImageError>> = chunk
            .par_iter()
            .map(|p| crate::image::load_image(p).map(|img| embedder.preprocessing.tensor_of(&img)))
            .collect();
        let input: Vec<f32> = prepared
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .flatten()
            .copied()
            .collect();
        let out = embedder.run(&input, prepared.iter().filter(|p| p.is_ok()).count())?;
        let mut row = 0;
        for p in prepared {
            results.push(p.map(|_| {
                row += 1;
                out.image(row - 1)
            }));
        }
    }
    Ok(results)
}

/// Stores features of `views` augmented views of each product's image (ids `<id>#aug<n>`),
/// embedding only the views whose image, augmentation settings or seed changed since the last
/// run; views of products that are gone are removed. Returns how many views were embedded.
pub fn index_augmented_views(
    store: &mut dyn Store,
    embedder: &Embedder,
    originals: &[crate::types::StoredProduct],
    augmentation: &crate::image::augment::Augmentation,
    seed: u64,
    views: u32,
    on_batch: &mut dyn FnMut(usize, usize),
) -> Result<usize> {
    store.ensure_manifest(&embedder.manifest())?;
    let known = store.fingerprints()?;
    let wanted: Vec<(CatalogueEntry, String, &crate::types::StoredProduct, u32)> = originals
        .iter()
        .flat_map(|p| (0..views).map(move |v| (p, v)))
        .map(|(p, v)| {
            let entry = CatalogueEntry {
                id: format!("{}#aug{v}", p.id),
                info: p.info.clone(),
                image_path: PathBuf::from(&p.image_path),
            };
            let key = format!("{}|{}|seed={seed}|view={v}", p.content_hash, augmentation.describe());
            (entry, key, p, v)
        })
        .collect();
    let wanted_ids: HashSet<&str> = wanted.iter().map(|(e, ..)| e.id.as_str()).collect();
    let gone: Vec<String> = known
        .keys()
        .filter(|id| !wanted_ids.contains(id.as_str()))
        .cloned()
        .collect();
    store.remove(&gone)?;
    let missing: Vec<_> = wanted
        .iter()
        .filter(|(e, key, ..)| known.get(&e.id).is_none_or(|f| &f.content_hash != key))
        .collect();
    let mut embedded = 0;
    for chunk in missing.chunks(DEFAULT_BATCH_SIZE) {
        let tensors: Vec<Option<Vec<f32>>> = chunk
            .par_iter()
            .map(|(_, _, p, v)| {
                let image = crate::image::load_image(std::path::Path::new(&p.image_path)).ok()?;
                let view = augmentation.view(&image, seed, &p.content_hash, *v);
                Some(embedder.preprocessing.tensor_of(&view))
            })
            .collect();
        let ready: Vec<usize> = (0..chunk.len()).filter(|&i| tensors[i].is_some()).collect();
        let input: Vec<f32> = tensors.iter().flatten().flatten().copied().collect();
        let out = embedder.run(&input, ready.len())?;
        let writes: Vec<ProductWrite> = ready
            .iter()
            .enumerate()
            .map(|(row, &i)| ProductWrite {
                entry: &chunk[i].0,
                content_hash: &chunk[i].1,
                vector: Some(out.feature(row)),
            })
            .collect();
        store.write_batch(&writes)?;
        embedded += ready.len();
        on_batch(embedded, missing.len());
    }
    Ok(embedded)
}

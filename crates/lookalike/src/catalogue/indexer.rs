//! Driving a catalogue through the pipeline in three stages that overlap: read + hash + decode +
//! resize in parallel on low-priority threads, the network on the batch before, one store
//! transaction for the batch before that.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use anyhow::Result;
use rayon::prelude::*;

use crate::content_hash;
use crate::image::{decode_image, read_image_file, ImageError};
use crate::index::local_cells::StoredCells;
use crate::model::{Embedder, ImageEmbedding};
use crate::store::{Fingerprint, ImageWrite, PhotoCells, ProductWrite, Store};
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
    /// Keep each photo's local cells ([`crate::index::local_cells`]), made in the same network
    /// pass as its vector; photos stored without them are embedded again.
    pub local_cells: bool,
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
            local_cells: true,
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

/// What the producer found for one image of an entry.
enum View {
    /// Stored already with this content hash: its vector is kept.
    Known {
        hash: String,
    },
    /// New or changed: its network input is the next one in the batch's [`Tensors`].
    Embed {
        hash: String,
    },
    Failed(String),
}

/// The network inputs of a batch's images to embed, one after another, in a buffer that goes back
/// to the producer once embedded: filling fresh memory for every batch (page faults, zeroing) and
/// gathering the images' inputs into one cost about a tenth of the int8 network's time.
struct Tensors {
    buffer: Vec<f32>,
    count: usize,
}

impl View {
    fn hash(&self) -> Option<&str> {
        match self {
            Self::Known { hash } | Self::Embed { hash, .. } => Some(hash),
            Self::Failed(_) => None,
        }
    }
}

/// Reads `path` and decides whether it needs embedding: not if `known_hashes` (what the store
/// has for this slot of the product) holds its content hash, and `with_cells` (when cells are
/// kept) does too. The network input goes to `slot`.
fn prepare_view(
    path: &Path,
    known_hashes: &[&str],
    with_cells: Option<&HashSet<String>>,
    embedder: &Embedder,
    slot: &mut [f32],
) -> View {
    // Stores keep paths as text; a lossy copy would point at no file.
    if path.to_str().is_none() {
        return View::Failed("the path is not valid UTF-8 (rename the file or its folders)".into());
    }
    let bytes = match read_image_file(path) {
        Ok(b) => b,
        Err(e) => return View::Failed(e.to_string()),
    };
    let hash = content_hash(&bytes);
    if known_hashes.contains(&hash.as_str()) && with_cells.is_none_or(|cells| cells.contains(&hash)) {
        return View::Known { hash };
    }
    match decode_image(&bytes) {
        Ok(image) => {
            embedder.preprocessing.tensor(&image, slot);
            View::Embed { hash }
        }
        Err(e) => View::Failed(e.to_string()),
    }
}

/// The views of `chunk`'s entries (the main image first), with the inputs of those to embed
/// packed at the front of `buffer` (resized to hold every image of the chunk).
fn prepare_chunk(
    chunk: &[CatalogueEntry],
    known: &HashMap<String, Fingerprint>,
    with_cells: Option<&HashSet<String>>,
    embedder: &Embedder,
    mut buffer: Vec<f32>,
) -> (Vec<Vec<View>>, Tensors) {
    let len = embedder.preprocessing.tensor_len();
    let mut jobs = Vec::new();
    for (e, entry) in chunk.iter().enumerate() {
        let stored = known.get(&entry.id);
        let main_known: Vec<&str> = stored.map(|k| k.content_hash.as_str()).into_iter().collect();
        let more_known: Vec<&str> = stored
            .map(|k| k.more_images.iter().map(|(_, hash)| hash.as_str()).collect())
            .unwrap_or_default();
        jobs.push((e, entry.image_path.as_path(), main_known));
        jobs.extend(
            entry
                .more_images
                .iter()
                .map(|path| (e, path.as_path(), more_known.clone())),
        );
    }
    buffer.resize(jobs.len() * len, 0.0);
    let views: Vec<View> = buffer
        .par_chunks_mut(len)
        .zip(jobs.par_iter())
        .map(|(slot, (_, path, known_hashes))| prepare_view(path, known_hashes, with_cells, embedder, slot))
        .collect();
    // Pack the inputs to embed together, in view order (a gap is left by each known or failed view).
    let mut count = 0;
    for (slot, view) in views.iter().enumerate() {
        if matches!(view, View::Embed { .. }) {
            if slot != count {
                buffer.copy_within(slot * len..(slot + 1) * len, count * len);
            }
            count += 1;
        }
    }
    let mut per_entry: Vec<Vec<View>> = chunk.iter().map(|_| Vec::new()).collect();
    for ((e, _, _), view) in jobs.iter().zip(views) {
        per_entry[*e].push(view);
    }
    (per_entry, Tensors { buffer, count })
}

/// Embeds the new and changed images of `entries` into `store`; `on_batch(done, total)` after
/// each batch of entries. A product whose main image cannot be used is skipped; a further view
/// that cannot be used is left out of the product. Both are reported in [`IndexReport::skipped`].
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
    // The same network, also giving each photo's last feature map for its cells.
    let mapper = options.local_cells.then(|| embedder.with_feature_map()).transpose()?;
    let with_cells = options.local_cells.then(|| store.hashes_with_cells()).transpose()?;
    let channels = embedder.backbone_dimension();
    let mut report = IndexReport {
        total: entries.len(),
        ..Default::default()
    };
    let batch_size = options.batch_size.max(1);

    std::thread::scope(|scope| -> Result<()> {
        // Two prepared batches in flight: enough to hide decoding behind inference, bounded memory.
        let (sender, receiver) = sync_channel::<(usize, Vec<Vec<View>>, Tensors)>(2);
        let (recycle, recycled) = std::sync::mpsc::channel::<Vec<f32>>();
        let (known, with_cells) = (&known, with_cells.as_ref());
        let preparers = low_priority_pool(rayon::current_num_threads())?;
        scope.spawn(move || {
            for (n, chunk) in entries.chunks(batch_size).enumerate() {
                let buffer = recycled.try_recv().unwrap_or_default();
                let (prepared, tensors) =
                    preparers.install(|| prepare_chunk(chunk, known, with_cells, embedder, buffer));
                if sender.send((n * batch_size, prepared, tensors)).is_err() {
                    break; // the consumer failed and hung up
                }
            }
        });
        // The network runs on its own thread, so that it goes on with the next batch while this one
        // writes the last one to the store.
        let (embedded_sender, embedded) = sync_channel::<(usize, Vec<Vec<View>>, Result<Embedded>)>(1);
        let network = mapper.as_ref().unwrap_or(embedder);
        scope.spawn(move || {
            for (start, prepared, tensors) in receiver {
                let inputs = &tensors.buffer[..tensors.count * embedder.preprocessing.tensor_len()];
                let features = embed_tensors(network, inputs, tensors.count);
                let _ = recycle.send(tensors.buffer);
                if embedded_sender.send((start, prepared, features)).is_err() {
                    break; // the writer failed and hung up
                }
            }
        });
        let mut done = 0;
        for (start, prepared, features) in embedded {
            let chunk = &entries[start..start + prepared.len()];
            let Embedded { features, maps } = features?;
            let mut next_feature = features.iter();
            // Made here, beside the network's thread rather than on it.
            let cells: Vec<PhotoCells> = prepared
                .iter()
                .flatten()
                .filter_map(|view| match view {
                    View::Embed { hash } => Some(hash),
                    _ => None,
                })
                .zip(&maps)
                .map(|(hash, map)| PhotoCells {
                    content_hash: hash.clone(),
                    cells: StoredCells::of_planes(map, channels).to_bytes(),
                })
                .collect();
            // Per entry: its views with their new vectors (None: keep the stored one).
            let mut plans = Vec::new();
            for (entry, views) in chunk.iter().zip(&prepared) {
                let mut usable = Vec::new();
                for (path, view) in entry.images().zip(views) {
                    let vector = match view {
                        View::Embed { .. } => Some(next_feature.next().expect("one feature per tensor").as_slice()),
                        _ => None,
                    };
                    match (view, view.hash()) {
                        (View::Failed(reason), _) => report.skipped.push(Skipped {
                            id: entry.id.clone(),
                            path: path.clone(),
                            reason: reason.clone(),
                        }),
                        (_, Some(hash)) => usable.push((path, hash, vector)),
                        (_, None) => unreachable!("only failed views lack a hash"),
                    }
                }
                plans.push((entry, views.first().and_then(View::hash).is_some(), usable));
            }
            let mut image_writes = Vec::new();
            let mut product_writes = Vec::new();
            for (entry, main_usable, usable) in &plans {
                if !main_usable {
                    continue; // the main image failed: reported, product not written
                }
                let stored = known.get(&entry.id);
                let (main, more) = usable.split_first().expect("the main image is usable");
                let more_now: Vec<(String, String)> = more
                    .iter()
                    .map(|(path, hash, _)| (path.to_string_lossy().into_owned(), hash.to_string()))
                    .collect();
                let same_more = stored.is_some_and(|k| k.more_images == more_now);
                let embedded = usable.iter().filter(|(_, _, v)| v.is_some()).count();
                let same_info =
                    stored.is_some_and(|k| k.info == entry.info && k.image_path == entry.image_path.to_string_lossy());
                if embedded == 0 && same_more && same_info {
                    report.unchanged += 1;
                    continue;
                }
                if embedded == 0 {
                    report.metadata_updated += 1;
                }
                report.embedded += embedded;
                let more_images = (!same_more).then(|| {
                    more.iter()
                        .map(|(path, hash, vector)| ImageWrite {
                            path: path.to_str().expect("checked to be UTF-8"),
                            content_hash: hash,
                            vector: *vector,
                        })
                        .collect::<Vec<_>>()
                });
                image_writes.push(more_images);
                product_writes.push((entry, main.1, main.2));
            }
            let writes: Vec<ProductWrite> = product_writes
                .iter()
                .zip(&image_writes)
                .map(|((entry, hash, vector), images)| ProductWrite {
                    entry,
                    content_hash: hash,
                    vector: *vector,
                    more_images: images.as_deref(),
                })
                .collect();
            // Cells first: a product is never stored without them (but by a run without cells).
            if !cells.is_empty() {
                store.put_cells(&cells)?;
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
    // Another shard may be between keeping a photo's cells and its product.
    if options.local_cells && options.shard.is_none() {
        store.drop_unused_cells()?;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Threads at the lowest priority (nice 19) for reading and decoding photos: they share the cores
/// with the network's threads, and at equal priority the scheduler slices them into the network's
/// batches, slowing it, while at the end of a batch a core can sit idle waiting for the slowest
/// network thread. At the lowest priority they take what the network leaves: +1.2 % images/s
/// indexing clothing-dataset-small (Lite0 int8, 2 cores), and a busy machine's other work goes
/// first. On Linux the nice value is per thread; elsewhere the threads keep the process's.
fn low_priority_pool(threads: usize) -> Result<rayon::ThreadPool> {
    Ok(rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("lookalike-prepare-{i}"))
        .start_handler(|_| {
            #[cfg(target_os = "linux")]
            // SAFETY: setpriority takes plain integers; who = 0 is the calling thread on Linux.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, 0, 19);
            }
        })
        .build()?)
}

/// A batch's vectors, and each image's last feature map (NCHW) where the network gave them.
struct Embedded {
    features: Vec<Vec<f32>>,
    maps: Vec<Vec<f32>>,
}

/// Features (and feature maps, from an embedder that makes them) of the `count` network inputs
/// laid one after another in `inputs`, run through the network in batches of at most
/// [`DEFAULT_BATCH_SIZE`].
fn embed_tensors(embedder: &Embedder, inputs: &[f32], count: usize) -> Result<Embedded> {
    let mut embedded = Embedded {
        features: Vec::with_capacity(count),
        maps: Vec::new(),
    };
    if count == 0 {
        return Ok(embedded);
    }
    let per_image = inputs.len() / count;
    for batch in inputs.chunks(DEFAULT_BATCH_SIZE * per_image) {
        let images = batch.len() / per_image;
        let out = embedder.run(batch, images)?;
        embedded.features.extend((0..images).map(|i| out.feature(i).to_vec()));
        if !out.block_input.is_empty() {
            let per_map = out.block_input.len() / images;
            embedded
                .maps
                .extend(out.block_input.chunks_exact(per_map).map(<[f32]>::to_vec));
        }
    }
    Ok(embedded)
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
                more_images: Vec::new(),
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
                more_images: None,
            })
            .collect();
        store.write_batch(&writes)?;
        embedded += ready.len();
        on_batch(embedded, missing.len());
    }
    Ok(embedded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn photos_are_prepared_at_the_lowest_priority_and_the_caller_keeps_its_own() {
        let priority = || unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let before = priority();
        let pool = low_priority_pool(2).unwrap();
        let inside: Vec<i32> = pool.install(|| (0..64).into_par_iter().map(|_| priority()).collect());
        assert!(inside.iter().all(|&p| p == 19), "{inside:?}");
        assert_eq!(priority(), before);
    }
}

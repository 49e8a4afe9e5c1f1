//! Big catalogues made from a small real one (`bench synth-catalogue`), and the k-nearest-neighbour
//! statistics that say whether a catalogue looks like a real one (`bench knn-stats`).
//!
//! Copying real vectors with noise makes every product of a big catalogue one of hundreds of
//! near-twins, which no real shop has; `knn-stats` measures how far a generator is from real
//! vectors, at equal size.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use lookalike::index::dot;
use lookalike::recommend::related_for_all;
use lookalike::store::{ProductWrite, SqliteStore, Store};
use lookalike::types::CatalogueEntry;

/// Writes `products` synthetic products into `db`: the real products of `from` in turn, each
/// vector with seeded noise (±half its RMS per component).
pub fn synth_catalogue(from: &Path, db: &Path, products: usize, seed: u64) -> Result<()> {
    let source = SqliteStore::open(from)?;
    let Some(manifest) = source.manifest()? else {
        bail!("{} has no indexed products to copy", from.display());
    };
    let originals = source.products()?;
    if originals.is_empty() {
        bail!("{} has no indexed products to copy", from.display());
    }
    let mut target = SqliteStore::open(db)?;
    target.ensure_manifest(&manifest)?;
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();
    for chunk_start in (0..products).step_by(5000) {
        let chunk: Vec<(CatalogueEntry, String, Vec<f32>)> = (chunk_start..(chunk_start + 5000).min(products))
            .map(|n| {
                let original = &originals[n % originals.len()];
                let rms = (dot(&original.vector, &original.vector) / original.vector.len() as f32).sqrt();
                let vector = original.vector.iter().map(|v| v + (rng.f32() - 0.5) * rms).collect();
                let mut info = original.info.clone();
                info.title = info.title.map(|t| format!("{t} #{n}"));
                let entry = CatalogueEntry {
                    id: format!("{}~{n}", original.id),
                    info,
                    image_path: PathBuf::from(&original.image_path),
                    more_images: Vec::new(),
                };
                (entry, format!("{}~{n}", original.content_hash), vector)
            })
            .collect();
        let writes: Vec<ProductWrite> = chunk
            .iter()
            .map(|(entry, hash, vector)| ProductWrite {
                entry,
                content_hash: hash,
                vector: Some(vector),
                more_images: None,
            })
            .collect();
        target.write_batch(&writes)?;
    }
    println!(
        "wrote {products} synthetic products into {} in {:.1}s",
        db.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Exact k-NN statistics of `sample` random products of each catalogue in `dbs` (all of them when
/// fewer), among themselves: cosine to the 1st and k-th neighbour, and hubness — how unevenly
/// products appear in others' top k (skewness of the k-occurrence counts; share never chosen).
pub fn knn_stats(dbs: &[PathBuf], sample: usize, k: usize, seed: u64) -> Result<()> {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header([
        "catalogue".to_string(),
        "products".into(),
        "cosine to 1st".into(),
        format!("cosine to {k}th"),
        format!("N{k} skewness"),
        format!("max N{k}"),
        "never a neighbour".into(),
    ]);
    for db in dbs {
        let mut products = SqliteStore::open_read_only(db)?.products()?;
        fastrand::Rng::with_seed(seed).shuffle(&mut products);
        products.truncate(sample);
        if products.len() <= k {
            bail!(
                "{} has {} products, not enough for k = {k}",
                db.display(),
                products.len()
            );
        }
        let (related, _, _) = related_for_all(&products, k, None);
        let index: std::collections::HashMap<&str, usize> =
            products.iter().enumerate().map(|(i, p)| (p.id.as_str(), i)).collect();
        let mut occurrences = vec![0usize; products.len()];
        let (mut first, mut kth) = (0.0f64, 0.0f64);
        for (_, neighbours) in &related {
            first += f64::from(neighbours[0].1);
            kth += f64::from(neighbours[k - 1].1);
            for (id, _) in neighbours {
                occurrences[index[id.as_str()]] += 1;
            }
        }
        let n = products.len() as f64;
        let mean = occurrences.iter().sum::<usize>() as f64 / n;
        let moment = |p: i32| occurrences.iter().map(|&c| (c as f64 - mean).powi(p)).sum::<f64>() / n;
        let skewness = moment(3) / moment(2).powf(1.5).max(f64::MIN_POSITIVE);
        let never = occurrences.iter().filter(|&&c| c == 0).count() as f64 / n;
        table.add_row([
            db.display().to_string(),
            products.len().to_string(),
            format!("{:.3}", first / n),
            format!("{:.3}", kth / n),
            format!("{skewness:.2}"),
            occurrences.iter().max().copied().unwrap_or(0).to_string(),
            format!("{:.1} %", 100.0 * never),
        ]);
    }
    println!("{table}");
    Ok(())
}

//! Big catalogues made from a small real one (`bench synth-catalogue`), and the k-nearest-neighbour
//! statistics that say whether a catalogue looks like a real one (`bench knn-stats`).
//!
//! Copying real vectors with noise makes every product of a big catalogue one of hundreds of
//! near-twins, which no real shop has; sampling a Gaussian fitted to each cluster of the real
//! vectors does not. `knn-stats` measures how far a generator is from real vectors, at equal size.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use lookalike::index::dot;
use lookalike::linalg::{gemm, l2_normalise_rows, Strided};
use lookalike::recommend::related_for_all;
use lookalike::store::{ProductWrite, SqliteStore, Store};
use lookalike::types::CatalogueEntry;

/// Writes `products` synthetic products into `db`, made from the real products of `from` by
/// `generator`; each takes the metadata of the real product it came from.
pub fn synth_catalogue(from: &Path, db: &Path, products: usize, generator: Generator, seed: u64) -> Result<()> {
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
    let model = match generator {
        Generator::Clusters => {
            let vectors: Vec<&[f32]> = originals.iter().map(|p| p.vector.as_slice()).collect();
            Some(ClusterModel::fit(&vectors, &mut rng)?)
        }
        Generator::Copies => None,
    };
    for chunk_start in (0..products).step_by(5000) {
        let chunk: Vec<(CatalogueEntry, String, Vec<f32>)> = (chunk_start..(chunk_start + 5000).min(products))
            .map(|n| {
                let (vector, source) = match &model {
                    Some(model) => model.sample(&mut rng),
                    None => {
                        let original = &originals[n % originals.len()].vector;
                        let rms = (dot(original, original) / original.len() as f32).sqrt();
                        (
                            original.iter().map(|v| v + (rng.f32() - 0.5) * rms).collect(),
                            n % originals.len(),
                        )
                    }
                };
                let original = &originals[source];
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

/// How `synth-catalogue` makes vectors from the real ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Generator {
    /// Samples of a Gaussian fitted to each k-means cluster of the real vectors (its main axes and
    /// a residual spread), clipped at 0 as the network's ReLU6 features are: at equal size their
    /// neighbourhoods measure like real ones (`knn-stats`).
    Clusters,
    /// The real vectors in turn with uniform noise: every product has hundreds of near-twins.
    Copies,
}

/// Main axes per cluster, and how much the residual spread is widened: chosen with `knn-stats` on
/// clothing-dataset-small (3,781 real vectors against 3,781 synthetic ones; README, Scale).
const CLUSTER_AXES: usize = 10;
const RESIDUAL_SCALE: f32 = 1.6;
const KMEANS_ROUNDS: usize = 15;
const SUBSPACE_ROUNDS: usize = 20;
/// About this many real vectors per cluster, at most this many clusters.
const VECTORS_PER_CLUSTER: usize = 40;
const MAX_CLUSTERS: usize = 100;

struct Cluster {
    mean: Vec<f32>,
    /// Orthonormal main axes, row-major `spreads.len() × d`.
    axes: Vec<f32>,
    /// Standard deviation along each axis.
    spreads: Vec<f32>,
    /// Standard deviation per component of what the axes leave.
    residual: f32,
    /// The real members (indices into the fitted vectors).
    members: Vec<usize>,
}

/// A Gaussian per cluster of unit vectors; samples are scaled to the norm of a real member.
struct ClusterModel {
    dimension: usize,
    clusters: Vec<Cluster>,
    /// Cumulative member counts of `clusters`, to pick one as often as the real data does.
    cumulative: Vec<usize>,
    norms: Vec<f32>,
}

fn standard_normal(rng: &mut fastrand::Rng) -> f32 {
    let u = rng.f32().max(f32::MIN_POSITIVE);
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * rng.f32()).cos()
}

/// `out = a · bᵀ` for row-major `a` and `b` of rows `width` wide.
fn times_transposed(a: &[f32], b: &[f32], width: usize, out: &mut [f32]) {
    let (m, n) = (a.len() / width, b.len() / width);
    gemm(
        Strided::rows(a, width),
        Strided::transposed(b, width),
        out,
        (m, width, n),
        1.0,
        0.0,
    );
}

/// Orthonormalises the rows (`width` wide) in place, Gram–Schmidt twice for stability.
fn orthonormalise_rows(rows: &mut [f32], width: usize) {
    let count = rows.len() / width;
    for i in 0..count {
        for _ in 0..2 {
            for j in 0..i {
                let (done, rest) = rows.split_at_mut(i * width);
                let (earlier, row) = (&done[j * width..(j + 1) * width], &mut rest[..width]);
                let projection = dot(earlier, row);
                row.iter_mut().zip(earlier).for_each(|(x, e)| *x -= projection * e);
            }
        }
        l2_normalise_rows(&mut rows[i * width..(i + 1) * width], width);
    }
}

impl ClusterModel {
    fn fit(vectors: &[&[f32]], rng: &mut fastrand::Rng) -> Result<Self> {
        let (n, d) = (vectors.len(), vectors[0].len());
        let mut unit: Vec<f32> = vectors.concat();
        l2_normalise_rows(&mut unit, d);
        let k = (n / VECTORS_PER_CLUSTER).clamp(1, MAX_CLUSTERS);
        let mut centroids: Vec<f32> = rng
            .choose_multiple(0..n, k)
            .into_iter()
            .flat_map(|i| unit[i * d..(i + 1) * d].to_vec())
            .collect();
        let mut assignment = vec![0usize; n];
        let mut scores = vec![0f32; n * k];
        for _ in 0..KMEANS_ROUNDS {
            times_transposed(&unit, &centroids, d, &mut scores);
            for (a, row) in assignment.iter_mut().zip(scores.chunks(k)) {
                *a = (0..k).max_by(|&x, &y| row[x].total_cmp(&row[y])).unwrap_or(0);
            }
            let mut sums = vec![0f32; k * d];
            let mut counts = vec![0usize; k];
            for (i, &a) in assignment.iter().enumerate() {
                counts[a] += 1;
                sums[a * d..(a + 1) * d]
                    .iter_mut()
                    .zip(&unit[i * d..(i + 1) * d])
                    .for_each(|(s, v)| *s += v);
            }
            for c in (0..k).filter(|&c| counts[c] > 0) {
                for (centroid, sum) in centroids[c * d..(c + 1) * d].iter_mut().zip(&sums[c * d..(c + 1) * d]) {
                    *centroid = sum / counts[c] as f32;
                }
            }
        }
        let mut clusters = Vec::new();
        for c in 0..k {
            let members: Vec<usize> = (0..n).filter(|&i| assignment[i] == c).collect();
            if members.len() < 2 {
                continue; // a lone vector has no spread to learn
            }
            clusters.push(Self::fit_cluster(&unit, d, members, rng));
        }
        if clusters.is_empty() {
            bail!("{n} vectors are too few to fit clusters to; use --generator copies");
        }
        let cumulative = clusters
            .iter()
            .scan(0, |total, c| {
                *total += c.members.len();
                Some(*total)
            })
            .collect();
        let norms = vectors.iter().map(|v| dot(v, v).sqrt()).collect();
        Ok(Self {
            dimension: d,
            clusters,
            cumulative,
            norms,
        })
    }

    /// The mean, main axes (subspace iteration) and residual spread of `members` of `unit`.
    fn fit_cluster(unit: &[f32], d: usize, members: Vec<usize>, rng: &mut fastrand::Rng) -> Cluster {
        let m = members.len();
        let mut mean = vec![0f32; d];
        for &i in &members {
            mean.iter_mut()
                .zip(&unit[i * d..(i + 1) * d])
                .for_each(|(s, v)| *s += v / m as f32);
        }
        let centred: Vec<f32> = members
            .iter()
            .flat_map(|&i| unit[i * d..(i + 1) * d].iter().zip(&mean).map(|(v, mu)| v - mu))
            .collect();
        let r = CLUSTER_AXES.min(m - 1);
        let mut axes: Vec<f32> = (0..r * d).map(|_| standard_normal(rng)).collect();
        orthonormalise_rows(&mut axes, d);
        let mut projections = vec![0f32; m * r];
        for _ in 0..SUBSPACE_ROUNDS {
            times_transposed(&centred, &axes, d, &mut projections);
            gemm(
                Strided::transposed(&projections, r),
                Strided::rows(&centred, d),
                &mut axes,
                (r, m, d),
                1.0,
                0.0,
            );
            orthonormalise_rows(&mut axes, d);
        }
        times_transposed(&centred, &axes, d, &mut projections);
        let explained: Vec<f32> = (0..r)
            .map(|a| (0..m).map(|i| projections[i * r + a].powi(2)).sum())
            .collect();
        let total: f32 = centred.iter().map(|v| v * v).sum();
        let dof = (m - 1) as f32;
        Cluster {
            mean,
            axes,
            spreads: explained.iter().map(|e| (e / dof).sqrt()).collect(),
            residual: ((total - explained.iter().sum::<f32>()).max(0.0) / dof / d as f32).sqrt(),
            members,
        }
    }

    /// A synthetic vector and the real vector (index) whose norm and metadata it takes.
    fn sample(&self, rng: &mut fastrand::Rng) -> (Vec<f32>, usize) {
        let pick = rng.usize(0..*self.cumulative.last().expect("at least one cluster"));
        let cluster = &self.clusters[self.cumulative.partition_point(|&c| c <= pick)];
        let mut v = cluster.mean.clone();
        for (axis, spread) in cluster.axes.chunks(self.dimension).zip(&cluster.spreads) {
            let z = standard_normal(rng) * spread;
            v.iter_mut().zip(axis).for_each(|(x, a)| *x += z * a);
        }
        let noise = cluster.residual * RESIDUAL_SCALE;
        v.iter_mut()
            .for_each(|x| *x = (*x + noise * standard_normal(rng)).max(0.0));
        let member = cluster.members[rng.usize(0..cluster.members.len())];
        let scale = self.norms[member] / dot(&v, &v).sqrt().max(1e-12);
        v.iter_mut().for_each(|x| *x *= scale);
        (v, member)
    }
}

/// Exact k-NN statistics of `sample` random products of each catalogue in `dbs` (all of them when
/// fewer), among themselves: cosine to the 1st and k-th neighbour, and hubness — how unevenly
/// products appear in others' top k (skewness of the k-occurrence counts; share never chosen).
pub fn knn_stats(dbs: &[PathBuf], sample: usize, k: usize, seed: u64) -> Result<()> {
    let mut table = crate::output::bordered_table([
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

//! `lookalike bench …`: measurements that print a table with a reference measured in the same run.

mod abuse;
mod ann;
mod calibrate;
mod embed;
mod http;
mod prep;
mod synthetic;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};
use clap::Subcommand;
use lookalike::catalogue::image_files;
use lookalike::model::{BackboneSpec, ModelDir, Precision};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Images/s of the backbone at 224x224, per batch size, beside ONNX Runtime (Python) and PyTorch.
    Embed {
        /// Batch sizes to measure.
        #[arg(value_parser = crate::args::count::<1, 4096>, long, value_delimiter = ',', default_value = "1,32")]
        batches: Vec<usize>,
        /// Seconds of timed runs per runtime and batch size.
        #[arg(value_parser = crate::args::seconds, long, default_value_t = 10.0)]
        seconds: f64,
        /// Python interpreter with `onnxruntime` and/or `torch` installed (scripts/bench-env.sh makes one).
        #[arg(long, default_value = "python3")]
        python: String,
        /// Measure lookalike alone.
        #[arg(long)]
        no_reference: bool,
        /// Also every backbone whose weights are present, side by side with the one measured.
        #[arg(long)]
        all_backbones: bool,
    },
    /// What a photo costs before the network (read, hash, decode, resize + crop + tensor) on one
    /// core, beside Pillow in the same run, and the share of each backbone's images/s that indexing
    /// keeps once every photo also costs that.
    Prep {
        #[arg(required = true)]
        folders: Vec<PathBuf>,
        /// Photos spread evenly over each folder.
        #[arg(value_parser = crate::args::count::<1, 100_000>, long, default_value_t = 400)]
        per_folder: usize,
        /// Python with Pillow (and simplejpeg, if wanted) installed (scripts/bench-env.sh makes one);
        /// without it lookalike is measured alone.
        #[arg(long)]
        python: Option<String>,
        /// Seconds of network runs per backbone and precision for the indexing ceilings.
        #[arg(value_parser = crate::args::seconds, long, default_value_t = 4.0)]
        seconds: f64,
        /// Measure the preparation alone, without the networks.
        #[arg(long)]
        no_ceiling: bool,
    },
    /// Search latency through HTTP (photo upload, loopback), per concurrency, beside the same
    /// search done in-process.
    Http {
        #[command(flatten)]
        plan: http::LoadPlan,
    },
    /// A server under hostile uploads (peak memory, slowest answer) and overload (goodput at
    /// 32 and 128 clients, 503s, 5xx).
    Abuse {
        #[command(flatten)]
        plan: abuse::AbusePlan,
    },
    /// Vector search alone: the int8-shortlist scan beside the exact f32 scan, with recall.
    Search {
        #[arg(long)]
        db: PathBuf,
        /// Queries, taken from the catalogue's own vectors (spread evenly over it).
        #[arg(value_parser = crate::args::count::<1, 1_000_000>, long, default_value_t = 200)]
        queries: usize,
        #[arg(value_parser = crate::args::count::<1, 10_000>, short, long, default_value_t = 10)]
        k: usize,
        #[arg(long)]
        category: Option<String>,
        /// Also measure PostgreSQL's HNSW search on this database holding the same catalogue
        /// (copied with `lookalike migrate`).
        #[arg(long)]
        postgres: Option<String>,
    },
    /// Nearest-neighbour search beside FAISS, hnswlib and usearch on the same vectors and held-out
    /// queries (one at a time): queries/s, p50/p99, recall@k, build time, memory.
    Ann {
        #[arg(long)]
        db: PathBuf,
        #[arg(value_parser = crate::args::count::<1, 100_000>, long, default_value_t = 500)]
        queries: usize,
        #[arg(value_parser = crate::args::count::<1, 1000>, short, long, default_value_t = 10)]
        k: usize,
        /// Python with `faiss-cpu`, `hnswlib` and/or `usearch` (scripts/bench-env.sh makes one);
        /// without it lookalike is measured alone.
        #[arg(long)]
        python: Option<String>,
        /// The peers to run, of faiss, hnswlib and usearch.
        #[arg(long, value_delimiter = ',', default_value = "faiss,hnswlib,usearch", value_parser = ["faiss", "hnswlib", "usearch"])]
        peers: Vec<String>,
    },
    /// Products/s of storing precomputed vectors: into SQLite (reference) and into PostgreSQL.
    Ingest {
        /// SQLite catalogue whose products are copied.
        #[arg(long)]
        from: PathBuf,
        /// An empty PostgreSQL database.
        #[arg(long)]
        postgres: String,
        #[arg(value_parser = crate::args::count::<1, 100_000_000>, long, default_value_t = 20_000)]
        products: usize,
        #[arg(value_parser = crate::args::count::<1, 100_000>, long, default_value_t = 1000)]
        batch_size: usize,
    },
    /// Writes a large synthetic catalogue for load tests, `--products` vectors made from the real
    /// ones of `--from` (metadata copied from the real product each came from).
    SynthCatalogue {
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        db: PathBuf,
        #[arg(value_parser = crate::args::count::<1, 100_000_000>, long, default_value_t = 100_000)]
        products: usize,
        #[arg(long, value_enum, default_value_t = synthetic::Generator::Clusters)]
        generator: synthetic::Generator,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Measures the activation ranges of the int8 backbone on photos (`per-folder` spread over each
    /// folder), written as the calibration lookalike ships (`crates/lookalike/src/model/calibration/`).
    Calibrate {
        #[arg(required = true)]
        folders: Vec<PathBuf>,
        #[arg(value_parser = crate::args::count::<1, 100_000>, long, default_value_t = 100)]
        per_folder: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Exact k-nearest-neighbour statistics of catalogues (a random sample of each, among
    /// themselves): cosine to the 1st and k-th neighbour, hubness. Real and synthetic side by side.
    KnnStats {
        #[arg(required = true)]
        dbs: Vec<PathBuf>,
        #[arg(value_parser = crate::args::count::<2, 200_000>, long, default_value_t = 5000)]
        sample: usize,
        #[arg(value_parser = crate::args::count::<1, 100>, short, long, default_value_t = 10)]
        k: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// `backbone` and `precision`: what `bench embed` measures (the others take their catalogue's).
pub fn run(
    command: BenchCommand,
    models: &ModelDir,
    (backbone, precision): (BackboneSpec, Precision),
    threads: usize,
) -> Result<()> {
    match command {
        BenchCommand::Embed {
            batches,
            seconds,
            python,
            no_reference,
            all_backbones,
        } => {
            let reference = (!no_reference).then_some(python.as_str());
            embed::run(
                models,
                (backbone, precision),
                threads,
                &batches,
                seconds,
                reference,
                all_backbones,
            )
        }
        BenchCommand::Prep {
            folders,
            per_folder,
            python,
            seconds,
            no_ceiling,
        } => prep::run(
            models,
            backbone,
            threads,
            &prep::PrepPlan {
                folders: &folders,
                per_folder,
                python: python.as_deref(),
                network_seconds: (!no_ceiling).then_some(seconds),
            },
        ),
        BenchCommand::Http { plan } => http::run(models, threads, &plan),
        BenchCommand::Abuse { plan } => abuse::run(threads, &plan),
        BenchCommand::Search {
            db,
            queries,
            k,
            category,
            postgres,
        } => http::search(&db, queries, k, category, postgres.as_deref()),
        BenchCommand::Ann {
            db,
            queries,
            k,
            python,
            peers,
        } => ann::run(&db, queries, k, python.map(|python| (python, peers)), threads),
        BenchCommand::Ingest {
            from,
            postgres,
            products,
            batch_size,
        } => http::ingest(&from, &postgres, products, batch_size),
        BenchCommand::SynthCatalogue {
            from,
            db,
            products,
            generator,
            seed,
        } => synthetic::synth_catalogue(&from, &db, products, generator, seed),
        BenchCommand::Calibrate {
            folders,
            per_folder,
            out,
        } => calibrate::run(models, backbone, threads, &folders, per_folder, &out),
        BenchCommand::KnnStats { dbs, sample, k, seed } => synthetic::knn_stats(&dbs, sample, k, seed),
    }
}

/// `per_folder` photos spread evenly over each folder (in name order), so every class is seen.
fn spread_photos(folders: &[PathBuf], per_folder: usize) -> Result<Vec<PathBuf>> {
    let mut photos = Vec::new();
    for folder in folders {
        let all = image_files(folder)?;
        let step = (all.len() as f64 / per_folder as f64).max(1.0);
        photos.extend((0..per_folder.min(all.len())).map(|i| all[(i as f64 * step) as usize].clone()));
    }
    Ok(photos)
}

/// Runs the Python script whose source is `script` (written to a temporary `name`) with `args`,
/// and reads each JSON line it prints to standard output.
fn python_json_lines<T: serde::de::DeserializeOwned>(
    python: &str,
    (name, script): (&str, &str),
    args: impl IntoIterator<Item = impl AsRef<OsStr>>,
) -> Result<Vec<T>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(name);
    std::fs::write(&path, script)?;
    let output = Command::new(python)
        .arg(&path)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {python}"))?;
    if !output.status.success() {
        anyhow::bail!("{name} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad line from {name}: {l}")))
        .collect()
}

/// The value at percentile `p` (0–100) of ascending `sorted`, by nearest rank; NaN when empty.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs `search` on every query one at a time: the milliseconds each took, ascending, and the ids
/// found per query, in query order.
fn time_each<'a>(
    queries: impl IntoIterator<Item = &'a [f32]>,
    search: &dyn Fn(&[f32]) -> Vec<String>,
) -> (Vec<f64>, Vec<Vec<String>>) {
    let mut millis = Vec::new();
    let found = queries
        .into_iter()
        .map(|q| {
            let t = std::time::Instant::now();
            let ids = search(q);
            millis.push(t.elapsed().as_secs_f64() * 1e3);
            ids
        })
        .collect();
    millis.sort_by(f64::total_cmp);
    (millis, found)
}

fn hit_ids(hits: Vec<lookalike::index::Hit>) -> Vec<String> {
    hits.into_iter().map(|h| h.product.id.clone()).collect()
}

/// The share of the `exact` answers' ids that `found` holds, over all queries.
fn recall(exact: &[Vec<String>], found: &[Vec<String>]) -> f64 {
    let hits: usize = exact
        .iter()
        .zip(found)
        .map(|(e, f)| f.iter().filter(|id| e.contains(id)).count())
        .sum();
    hits as f64 / exact.iter().map(Vec::len).sum::<usize>().max(1) as f64
}

//! `lookalike`: a thin command-line shell over the lookalike library.

mod args;
mod bench;
mod charts;
mod learn;
mod output;
mod server;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use lookalike::catalogue::export::{export_json, export_npy};
use lookalike::catalogue::indexer::{embed_files, index_catalogue, IndexOptions, DEFAULT_BATCH_SIZE};
use lookalike::catalogue::{read_catalogue, Layout};
use lookalike::index::SearchMode;
use lookalike::index::VectorIndex;
use lookalike::learn::head::Head;
use lookalike::model::batcher::BatchPolicy;
use lookalike::model::labels::imagenet_top_k;
use lookalike::model::{BackboneSpec, Embedder, ModelDir, Precision, DEFAULT_BACKBONE};
use lookalike::recommend::IndexLoad;
use lookalike::shop::{OpenOptions, SearchRequest, Shop};
use lookalike::store::postgres::{is_postgres_url, redact};
use lookalike::store::{open_store, open_store_read_only, Store};
use lookalike::types::{Filter, Metric, Words};

/// Exit status of `index` when it finished but skipped some images.
const EXIT_SKIPPED: u8 = 3;

#[derive(Parser)]
#[command(
    name = "lookalike",
    version,
    about = "Visual product recommendations: which products look like this photo?"
)]
struct Cli {
    /// Folder with the model files (default: $LOOKALIKE_MODELS, else the checkout's models/).
    #[arg(long, global = true)]
    models: Option<PathBuf>,
    /// Inference threads.
    #[arg(value_parser = args::count::<1, 1024>, long, global = true, default_value_t = default_threads())]
    threads: usize,
    /// Backbone for new catalogues and for embed, classify, train and eval: lite1 (default),
    /// lite0 or lite2 (`LOOKALIKE_BACKBONES=lite2 scripts/setup.sh` fetches Lite2). An
    /// existing catalogue is always searched and extended with the backbone that built it.
    #[arg(long, global = true, value_parser = |s: &str| s.parse::<BackboneSpec>())]
    backbone: Option<BackboneSpec>,
    /// Numbers the backbone computes with: fp32 (default) or int8 (about twice the images/s; the
    /// vectors differ slightly, so a catalogue stays on the precision that built it).
    #[arg(long, global = true, value_parser = |s: &str| s.parse::<Precision>())]
    precision: Option<Precision>,
    #[command(subcommand)]
    command: Command,
}

/// One line on stderr when the index file had to be built or written, or could not be.
fn report_index_load(load: Option<&IndexLoad>) {
    let Some(load) = load else { return };
    let what = if load.graph_built {
        "index and search graph"
    } else {
        "index"
    };
    match (&load.rebuilt, load.written) {
        (Some(why), _) => eprintln!("built the search {what} of {} products ({why})", load.products),
        (None, true) => eprintln!(
            "wrote the search {what} of {} products again ({} changed since it was written)",
            load.products, load.changed
        ),
        (None, false) => {}
    }
    if let Some(why) = &load.unsaved {
        eprintln!("warning: cannot keep the search index, the next search builds it again: {why}");
    }
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

#[derive(Subcommand)]
enum Command {
    /// Embed a catalogue (folder of category sub-folders, CSV or JSONL) into a database; only new or changed images are embedded.
    Index {
        catalogue: PathBuf,
        /// SQLite file, or postgres://user@host:port/dbname (PostgreSQL with pgvector).
        #[arg(long)]
        db: String,
        /// Remove products that left the catalogue or whose image file is gone.
        #[arg(long)]
        prune: bool,
        #[arg(value_parser = args::count::<1, 4096>, long, default_value_t = DEFAULT_BATCH_SIZE)]
        batch_size: usize,
        /// Projection head (from `train metric`) whose embeddings become the catalogue's vectors;
        /// it is kept in the database and used for every later query and re-index.
        #[arg(long)]
        head: Option<PathBuf>,
        /// Append each photo's colour signature (an HSV histogram, the white background left
        /// out) with this weight to its features, for catalogues where colour tells products
        /// apart (0.4 lifted Luma's same-product Recall@1 from 0.67 to 0.73); kept in the
        /// database's manifest like a head, so queries do the same.
        #[arg(long, value_parser = args::colour_weight, conflicts_with = "head")]
        colour: Option<f32>,
        /// Index only shard I of N (products split by a hash of their id), so N workers on
        /// several machines can share one catalogue in one PostgreSQL database; --prune then
        /// only removes products of this shard.
        #[arg(long, value_parser = parse_shard)]
        shard: Option<Shard>,
        /// A folder catalogue's layout: `images` (every image a product, in category folders) or
        /// `product-folders` (every folder of images one product, in category folders).
        #[arg(long, default_value = "images", value_parser = |s: &str| s.parse::<Layout>())]
        layout: Layout,
    },
    /// Copy a catalogue with its vectors between databases (SQLite ↔ PostgreSQL), no re-embedding.
    Migrate {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// Products per transaction.
        #[arg(value_parser = args::count::<1, 100_000>, long, default_value_t = 1000)]
        batch_size: usize,
    },
    /// Products that look like a photo, match words (--text), or both.
    Search {
        #[arg(required_unless_present = "text")]
        image: Option<PathBuf>,
        /// Words to find in titles, categories and descriptions; with a photo, both rankings fused.
        #[arg(long)]
        text: Option<String>,
        #[command(flatten)]
        query: QueryArgs,
        /// Classify the query first (with --classifier) and rank only products of the likely categories.
        #[arg(long, requires_all = ["classifier", "image"])]
        hybrid: bool,
        /// Classifier head (from `train classifier`) for --hybrid.
        #[arg(long)]
        classifier: Option<PathBuf>,
        /// --hybrid ranks within the most likely categories until their probabilities add up to this.
        #[arg(value_parser = args::fraction, long, default_value_t = 0.9)]
        coverage: f32,
        /// Also draw the query and its results (photos, scores, titles, prices) as a PNG here.
        #[arg(long, requires = "image")]
        grid: Option<PathBuf>,
    },
    /// Products that look like product ID.
    Similar {
        id: String,
        #[command(flatten)]
        query: QueryArgs,
    },
    /// Raw pooled backbone features (1280-d) of images.
    Embed {
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// ImageNet top-5 labels of images (shows the real pretrained weights at work).
    Classify {
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Use the backbone's own 1000-class ImageNet head.
        #[arg(long, required = true)]
        imagenet: bool,
        #[arg(value_parser = args::count::<1, 1000>, long, default_value_t = 5)]
        top: usize,
        #[arg(long)]
        json: bool,
    },
    /// Write the catalogue's vectors as .npy (rows in id order) and a JSON list describing each row.
    Export {
        #[arg(long)]
        db: String,
        #[arg(long)]
        npy: Option<PathBuf>,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Delete products by id.
    Remove {
        #[arg(required = true)]
        ids: Vec<String>,
        #[arg(long)]
        db: String,
    },
    /// Serve the REST API and the web page over a catalogue database.
    Serve {
        /// SQLite file, or postgres://user@host:port/dbname (replicas may share one).
        #[arg(long)]
        db: String,
        /// Index this catalogue (incrementally) before serving.
        #[arg(long)]
        catalogue: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// 0 picks a free port.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Bearer token required for writes.
        #[arg(long, env = "LOOKALIKE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Serve without write endpoints (no token needed).
        #[arg(long)]
        read_only: bool,
        /// Largest accepted image upload, in MB.
        #[arg(value_parser = args::count::<1, 1024>, long, default_value_t = 10)]
        max_upload_mb: usize,
        /// Where uploaded product images are kept (default: `uploads/` beside the database).
        #[arg(long)]
        upload_dir: Option<PathBuf>,
        /// Most query images embedded in one forward pass.
        #[arg(value_parser = args::count::<1, 256>, long, default_value_t = 16)]
        max_batch: usize,
        /// Query images allowed to wait (for a decoder or the model) beyond those being worked on;
        /// further ones wait up to --queue-wait-ms for a place, then get 503.
        #[arg(value_parser = args::count::<0, 100_000>, long, default_value_t = 64)]
        queue: usize,
        /// Classifier head (from `train classifier`) that enables `hybrid` photo searches.
        #[arg(long)]
        classifier: Option<PathBuf>,
        /// How long an arriving query waits for others to share its forward pass, in ms
        /// (0: queries that queued during the previous pass share the next one).
        #[arg(value_parser = args::window_ms, long, default_value_t = 0.0)]
        batch_window_ms: f64,
        /// Seconds a client may take to send its request headers, or pause while sending a body;
        /// slower connections are closed (a body must also arrive within 120 s in all).
        #[arg(value_parser = args::seconds, long, default_value_t = 10.0)]
        client_timeout_s: f64,
        /// An origin (e.g. https://shop.example) whose pages may call the API, as the widget
        /// does; repeat for several, `*` for any. Without it no CORS headers are sent.
        #[arg(long = "cors-origin", value_parser = args::origin)]
        cors_origins: Vec<axum::http::HeaderValue>,
        /// How long an image request beyond the queue waits for a place before 503, in ms.
        #[arg(value_parser = args::count::<0, 60_000>, long, default_value_t = 1000)]
        queue_wait_ms: usize,
        #[command(flatten)]
        search: SearchArgs,
    },
    /// "Similar products" for every product in one batch run, written as a shop imports them:
    /// `.csv` (`sku,related_skus`, Magento's related-products import) or `.jsonl` (with scores).
    /// A re-run computes again only what added, changed or removed products touch.
    RecommendAll {
        #[arg(long)]
        db: String,
        #[arg(value_parser = args::count::<1, 1000>, short, long, default_value_t = 12)]
        k: usize,
        /// Where to write: a .csv or a .jsonl file.
        #[arg(long)]
        out: PathBuf,
        /// The previous run's state, read and rewritten (default: the output path + `.state.json`).
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Groups of duplicate products: identical image bytes (exact) or nearly identical features (near).
    Dedup {
        #[arg(long)]
        db: String,
        /// Cosine similarity at or above which two products are near-duplicates.
        #[arg(value_parser = args::similarity, long, default_value_t = 0.97)]
        threshold: f32,
        #[arg(long)]
        json: bool,
    },
    /// Train a head on labelled image folders (classifier, or metric-learning projection).
    Train {
        #[command(subcommand)]
        what: learn::TrainCommand,
    },
    /// Evaluate a classifier head or retrieval quality on labelled image folders.
    Eval {
        #[command(subcommand)]
        what: learn::EvalCommand,
    },
    /// Measure embedding throughput against reference runtimes.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
}

#[derive(Args)]
struct QueryArgs {
    /// SQLite file, or postgres://user@host:port/dbname.
    #[arg(long)]
    db: String,
    #[arg(value_parser = args::count::<1, 10_000>, short, long, default_value_t = 10)]
    k: usize,
    /// cosine (score = similarity in [-1, 1], higher is closer) or euclidean (score = distance, lower is closer).
    #[arg(long, default_value = "cosine")]
    metric: Metric,
    #[arg(long)]
    category: Option<String>,
    #[arg(value_parser = args::price, long)]
    min_price: Option<f64>,
    #[arg(value_parser = args::price, long)]
    max_price: Option<f64>,
    /// Every product of a group (e.g. each colour) instead of the best one per group.
    #[arg(long)]
    all_variants: bool,
    /// Variety over relevance, 0 to 1 (maximal marginal relevance): 0 ranks by score alone,
    /// 0.3 keeps a page from being ten shades of one item.
    #[arg(value_parser = args::fraction, long, default_value_t = 0.0)]
    diversity: f32,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    search: SearchArgs,
}

#[derive(Args, Clone, Copy)]
struct SearchArgs {
    /// How candidates are found over an SQLite catalogue (scores are exact either way): exact
    /// reads every image's int8 code; approximate walks a graph built when the catalogue loads,
    /// reading far fewer on big catalogues and now and then missing a true neighbour.
    #[arg(long, value_enum, default_value_t = SearchKind::Exact)]
    search: SearchKind,
    /// Candidate images an approximate search brings per query image (more: slower, fewer misses).
    #[arg(value_parser = args::count::<1, 100_000>, long, default_value_t = SearchMode::DEFAULT_EF)]
    ef: usize,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SearchKind {
    Exact,
    Approximate,
}

impl SearchArgs {
    fn mode(self) -> SearchMode {
        match self.search {
            SearchKind::Exact => SearchMode::Exact,
            SearchKind::Approximate => SearchMode::Approximate { ef: self.ef },
        }
    }
}

impl QueryArgs {
    fn filter(&self) -> Result<Filter> {
        if self.k == 0 {
            bail!("-k must be at least 1");
        }
        let filter = Filter::new(self.category.clone(), self.min_price, self.max_price)?;
        Ok(Filter {
            one_per_group: !self.all_variants,
            ..filter
        })
    }
}

/// Hands back to the system the heap pages freed so far: glibc keeps them otherwise, resident
/// though never used again, after loading has freed many small blocks (which it cannot give back
/// while live blocks sit above them).
fn return_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of glibc's own heap.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// What every command that embeds needs: where the model files are, which backbone at which
/// precision, how many threads.
struct Models {
    dir: ModelDir,
    backbone: Option<BackboneSpec>,
    precision: Option<Precision>,
    threads: usize,
}

impl Models {
    /// How to open a catalogue with these models (see [`OpenOptions`]).
    fn open_options(&self, search: SearchMode, read_only: bool, classifier: Option<Head>) -> OpenOptions {
        OpenOptions {
            models: self.dir.clone(),
            backbone: self.backbone,
            precision: self.precision,
            threads: self.threads,
            search,
            read_only,
            classifier,
        }
    }

    /// The backbone and precision asked for (the defaults unless told), or those that built
    /// `catalogue`, with its head or colour signature ([`OpenOptions::embedder`]).
    fn embedder(&self, catalogue: Option<&dyn Store>) -> Result<Embedder> {
        self.open_options(SearchMode::Exact, true, None).embedder(catalogue)
    }
}

/// Opens an existing catalogue database to read it; queries never create or change one, so a
/// read-only file or folder works.
fn open_existing(db: &str) -> Result<Box<dyn Store>> {
    checked_not_empty(open_store_read_only(db)?, db)
}

/// Opens an existing catalogue database to change it.
fn open_existing_writable(db: &str) -> Result<Box<dyn Store>> {
    if !is_postgres_url(db) && !Path::new(db).is_file() {
        bail!("no catalogue database at {db} (create it with `lookalike index`)");
    }
    checked_not_empty(open_store(db)?, db)
}

fn checked_not_empty(store: Box<dyn Store>, db: &str) -> Result<Box<dyn Store>> {
    if store.manifest()?.is_none() {
        bail!("the catalogue at {} is empty (run `lookalike index` first)", redact(db));
    }
    Ok(store)
}

#[derive(Debug, Clone, Copy)]
struct Shard {
    index: usize,
    count: usize,
}

fn parse_shard(s: &str) -> Result<Shard> {
    let (i, n) = s.split_once('/').context("a shard is I/N, e.g. 0/4")?;
    let number = |x: &str| {
        x.trim()
            .parse::<usize>()
            .with_context(|| format!("{x:?} in shard {s:?} is not a number"))
    };
    let (index, count) = (number(i)?, number(n)?);
    if count == 0 || index >= count {
        bail!("shard {index}/{count}: I must be below N");
    }
    Ok(Shard { index, count })
}

/// `uploads/` beside a SQLite file, or in the working directory for PostgreSQL.
fn default_upload_dir(db: &str) -> PathBuf {
    let beside = (!is_postgres_url(db))
        .then(|| Path::new(db).parent().map(Path::to_path_buf))
        .flatten()
        .unwrap_or_else(|| PathBuf::from("."));
    beside.join("uploads")
}

fn load_index(store: &dyn Store) -> Result<VectorIndex> {
    let index = VectorIndex::new(store.products()?)?;
    if index.is_empty() {
        bail!("the catalogue is empty (run `lookalike index` first)");
    }
    Ok(index)
}

/// Indexes `catalogue` into `db` with a progress bar; true if some images were skipped.
/// Indexes `entries` with `bar` following the batches, then names each skipped image on stderr.
fn index_with_progress(
    store: &mut dyn Store,
    embedder: &Embedder,
    entries: &[lookalike::types::CatalogueEntry],
    options: &IndexOptions,
    bar: ProgressBar,
) -> Result<lookalike::catalogue::indexer::IndexReport> {
    let report = index_catalogue(store, embedder, entries, options, &mut |done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    for s in &report.skipped {
        eprintln!("skipped {}: {}", s.path.display(), s.reason);
    }
    Ok(report)
}

fn index_into(
    embedder: &Embedder,
    catalogue: &Path,
    store: &mut dyn Store,
    db: &str,
    options: IndexOptions,
    layout: Layout,
) -> Result<bool> {
    let lookalike::catalogue::Catalogue { entries, unreadable } = read_catalogue(catalogue, layout)?;
    for (path, why) in &unreadable {
        eprintln!("skipped {}: {why}", path.display());
    }
    // What could not be walked is not gone: pruning leaves its products alone.
    let options = IndexOptions {
        keep_under: unreadable.iter().map(|(path, _)| path.clone()).collect(),
        ..options
    };
    let entries: Vec<_> = match options.shard {
        Some((i, n)) => entries
            .into_iter()
            .filter(|e| lookalike::catalogue::indexer::in_shard(&e.id, i, n))
            .collect(),
        None => entries,
    };
    let bar = ProgressBar::new(entries.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} images  {per_sec}  eta {eta}")
            .expect("valid progress template"),
    );
    let report = index_with_progress(store, embedder, &entries, &options, bar)?;
    println!(
        "indexed {} products into {}: {} embedded, {} unchanged, {} metadata updated, {} skipped, {} pruned; \
         {:.1}s, {:.1} images/s",
        report.total,
        redact(db),
        report.embedded,
        report.unchanged,
        report.metadata_updated,
        report.skipped.len(),
        report.pruned,
        report.elapsed.as_secs_f64(),
        report.images_per_second()
    );
    Ok(!report.skipped.is_empty() || !unreadable.is_empty())
}

fn run(cli: Cli) -> Result<ExitCode> {
    let models = Models {
        dir: ModelDir::locate(cli.models.as_deref()),
        backbone: cli.backbone,
        precision: cli.precision,
        threads: cli.threads,
    };
    match cli.command {
        Command::Index {
            catalogue,
            db,
            prune,
            batch_size,
            head,
            colour,
            shard,
            layout,
        } => {
            let mut store = open_store(&db)?;
            let embedder = match (head, colour) {
                (Some(path), _) => models
                    .embedder(Some(&*store))?
                    .with_head(lookalike::learn::head::Head::load(&path)?)?,
                (None, Some(weight)) => models.embedder(Some(&*store))?.with_colour(weight)?,
                (None, None) => models.embedder(Some(&*store))?,
            };
            store.ensure_manifest(&embedder.manifest())?;
            if let Some(head) = &embedder.head {
                store.set_head(head)?;
            }
            let options = IndexOptions {
                batch_size,
                prune,
                shard: shard.map(|s| (s.index, s.count)),
                ..IndexOptions::default()
            };
            let skipped = index_into(&embedder, &catalogue, &mut *store, &db, options, layout)?;
            Ok(if skipped {
                ExitCode::from(EXIT_SKIPPED)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Serve {
            db,
            catalogue,
            host,
            port,
            token,
            read_only,
            max_upload_mb,
            upload_dir,
            max_batch,
            queue,
            batch_window_ms,
            client_timeout_s,
            queue_wait_ms,
            cors_origins,
            classifier,
            search,
        } => {
            let token = server::check_write_access(&token, read_only)?;
            let classifier = classifier.map(|path| Head::load(&path)).transpose()?;
            // A read-only server over a catalogue it does not index never writes to the file.
            let options = models.open_options(search.mode(), read_only && catalogue.is_none(), classifier);
            if let Some(catalogue) = &catalogue {
                let mut store = open_store(&db)?;
                let embedder = options.embedder(Some(&*store))?;
                index_into(
                    &embedder,
                    catalogue,
                    &mut *store,
                    &db,
                    IndexOptions::default(),
                    Layout::default(),
                )?;
            }
            let shop = Shop::open(&db, options)?;
            let config = server::ServerConfig {
                addr: std::net::SocketAddr::new(host, port),
                token,
                max_upload_bytes: max_upload_mb << 20,
                upload_dir: upload_dir.unwrap_or_else(|| default_upload_dir(&db)),
                batch: BatchPolicy {
                    max_batch,
                    queue,
                    window: std::time::Duration::from_secs_f64(batch_window_ms / 1e3),
                },
                decoders: cli.threads,
                client_timeout: std::time::Duration::from_secs_f64(client_timeout_s),
                admission_wait: std::time::Duration::from_millis(queue_wait_ms as u64),
                cors_origins,
            };
            server::init_logging();
            // Built outside the runtime: opening PostgreSQL blocks.
            let router = server::router(shop, &config)?;
            if std::env::var_os("LOOKALIKE_EXIT_ON_STDIN_EOF").is_some() {
                // For supervisors and tests: the server ends with the process that started it.
                std::thread::spawn(|| {
                    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
                    std::process::exit(0);
                });
            }
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(server::serve(router, config.addr, config.client_timeout))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Search {
            image,
            text,
            query,
            hybrid,
            classifier,
            coverage,
            grid,
        } => {
            let filter = query.filter()?;
            let words = text.as_deref().map(Words::parse).transpose()?;
            let classifier = match (hybrid, &classifier) {
                (true, Some(path)) => Some(Head::load(path)?),
                _ => None,
            };
            let likely_categories = classifier.is_some().then_some(coverage);
            let shop = Shop::open(&query.db, models.open_options(query.search.mode(), true, classifier))?;
            let photo = image.as_deref().map(|path| shop.embed_file(path)).transpose()?;
            report_index_load(shop.catalogue().index_load());
            let answer = shop.search(&SearchRequest {
                photo: photo.as_ref(),
                words: words.as_ref(),
                k: query.k,
                metric: query.metric,
                filter,
                diversity: query.diversity,
                likely_categories,
            })?;
            output::print_hits(
                &answer.hits,
                answer.scored_by,
                query.json,
                answer.likely_categories.as_deref(),
            )?;
            if let (Some(grid), Some(image)) = (&grid, &image) {
                let photo = lookalike::image::load_image(image)?;
                charts::recommendation_grid(&photo, &answer.hits, output::score_name(answer.scored_by), grid)?;
                eprintln!("drew {}", grid.display());
            }
            shop.finish();
            Ok(ExitCode::SUCCESS)
        }
        Command::Similar { id, query } => {
            let filter = query.filter()?;
            let shop = Shop::open(&query.db, models.open_options(query.search.mode(), true, None))?;
            report_index_load(shop.catalogue().index_load());
            let hits = shop.similar(&id, query.k, query.metric, &filter, query.diversity)?;
            output::print_hits(&hits, Some(query.metric), query.json, None)?;
            shop.finish();
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { from, to, batch_size } => {
            let source = open_existing(&from)?;
            let mut target = open_store(&to)?;
            let started = std::time::Instant::now();
            let copied = lookalike::store::copy_catalogue(&*source, &mut *target, batch_size.max(1))?;
            println!(
                "copied {copied} products from {} to {} in {:.1}s",
                redact(&from),
                redact(&to),
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Embed { images, json } => {
            let embedder = models.embedder(None)?;
            let results = embed_files(&embedder, &images)?;
            output::print_embeddings(&images, &results, json)
        }
        Command::Classify {
            images,
            imagenet: _,
            top,
            json,
        } => {
            let embedder = models.embedder(None)?;
            let results = embed_files(&embedder, &images)?;
            let mut failed = false;
            let mut rows = Vec::new();
            for (path, result) in images.iter().zip(results) {
                match result {
                    Ok(e) => rows.push((path, imagenet_top_k(&e.logits, top))),
                    Err(err) => {
                        failed = true;
                        eprintln!("error: {}: {err}", path.display());
                    }
                }
            }
            output::print_labels(&rows, json)?;
            Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Command::Export { db, npy, json } => {
            if npy.is_none() && json.is_none() {
                bail!("nothing to export: give --npy and/or --json");
            }
            let products = open_existing(&db)?.products()?;
            if let Some(path) = &npy {
                export_npy(&products.iter().map(|p| p.vector.as_slice()).collect::<Vec<_>>(), path)?;
                println!("wrote {} vectors to {}", products.len(), path.display());
            }
            if let Some(path) = &json {
                export_json(&products, path)?;
                println!("wrote {} rows to {}", products.len(), path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Remove { ids, db } => {
            let removed = open_existing_writable(&db)?.remove(&ids)?;
            println!("removed {removed} of {} products", ids.len());
            Ok(if removed == ids.len() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::RecommendAll { db, k, out, state } => {
            let write = match out
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                Some("csv") => lookalike::catalogue::export::export_related_csv,
                Some("jsonl" | "ndjson") => lookalike::catalogue::export::export_related_jsonl,
                _ => bail!("--out {}: write a .csv or a .jsonl file", out.display()),
            };
            let state_path = state.unwrap_or_else(|| {
                let mut name = out.clone().into_os_string();
                name.push(".state.json");
                PathBuf::from(name)
            });
            let previous: Option<lookalike::index::related::Previous> = match std::fs::read(&state_path) {
                Ok(bytes) => match serde_json::from_slice(&bytes) {
                    Ok(previous) => Some(previous),
                    Err(err) => {
                        eprintln!("ignoring {} ({err}): computing everything", state_path.display());
                        None
                    }
                },
                Err(_) => None,
            };
            let started = std::time::Instant::now();
            let products = open_existing(&db)?.products()?;
            let loaded = started.elapsed();
            let (related, next, work) = lookalike::recommend::related_for_all(&products, k, previous.as_ref());
            let computed = started.elapsed() - loaded;
            write(&related, &out)?;
            lookalike::files::write_atomically(&state_path, |w| Ok(serde_json::to_writer(w, &next)?))?;
            println!(
                "related products for {} products (k={k}) in {}: {} computed against the whole catalogue, \
                 {} only against the {} new or changed; {:.1}s to load, {:.1}s to compute ({:.0} products/s)",
                products.len(),
                out.display(),
                work.full,
                work.merged,
                work.fresh,
                loaded.as_secs_f64(),
                computed.as_secs_f64(),
                products.len() as f64 / computed.as_secs_f64().max(1e-9)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Dedup { db, threshold, json } => {
            let index = load_index(&*open_existing(&db)?)?;
            let groups = lookalike::index::dedup::duplicate_groups(&index, threshold)?;
            output::print_duplicates(&index, &groups, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Train { what } => {
            learn::train(what, &|| models.embedder(None))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval { what } => {
            let embedder = match what.colour() {
                Some(weight) => models.embedder(None)?.with_colour(weight)?,
                None => models.embedder(None)?,
            };
            learn::eval(what, &embedder)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { what } => {
            bench::run(
                what,
                &models.dir,
                (
                    models.backbone.unwrap_or(DEFAULT_BACKBONE),
                    models.precision.unwrap_or_default(),
                ),
                cli.threads,
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

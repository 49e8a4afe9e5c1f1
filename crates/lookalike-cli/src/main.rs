//! `lookalike`: a thin command-line shell over the lookalike library.

mod answers;
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
use lookalike::catalogue::indexer::{embed_files, DEFAULT_BATCH_SIZE};
use lookalike::catalogue::Layout;
use lookalike::index::SearchMode;
use lookalike::learn::head::Head;
use lookalike::model::batcher::BatchPolicy;
use lookalike::model::labels::imagenet_top_k;
use lookalike::model::{BackboneSpec, Embedder, ModelDir, Precision, DEFAULT_BACKBONE};
use lookalike::recommend::IndexLoad;
use lookalike::shop::{Framing, IndexRequest, OpenOptions, SearchRequest, Shop};
use lookalike::store::open_store;
use lookalike::store::postgres::{is_postgres_url, redact};
use lookalike::types::{Filter, Metric, PhotoBox, Words};

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
    Index(IndexArgs),
    /// Copy a catalogue with its vectors between databases (SQLite ↔ PostgreSQL), no re-embedding.
    Migrate(MigrateArgs),
    /// Products that look like a photo, match words (--text), or both.
    Search(SearchArgs),
    /// Products that look like product ID.
    Similar(SimilarArgs),
    /// Raw pooled backbone features (1280-d) of images.
    Embed(EmbedArgs),
    /// ImageNet top-5 labels of images (shows the real pretrained weights at work).
    Classify(ClassifyArgs),
    /// Write the catalogue's vectors as .npy (rows in id order) and a JSON list describing each row.
    Export(ExportArgs),
    /// Delete products by id.
    Remove(RemoveArgs),
    /// Serve the REST API and the web page over a catalogue database.
    Serve(ServeArgs),
    /// "Similar products" for every product in one batch run, written as a shop imports them:
    /// `.csv` (`sku,related_skus`, Magento's related-products import) or `.jsonl` (with scores).
    /// A re-run computes again only what added, changed or removed products touch.
    RecommendAll(RecommendAllArgs),
    /// Groups of duplicate products: identical image bytes (exact) or nearly identical features (near).
    Dedup(DedupArgs),
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
struct IndexArgs {
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
    /// Do not keep each photo's local cells (16.6 KB a photo with Lite's backbones; a photo's
    /// vector is 5 KB): search then orders a busy photo's part's products by its pooled vector
    /// alone, as before cells were kept.
    #[arg(long)]
    no_local_cells: bool,
}

#[derive(Args)]
struct MigrateArgs {
    #[arg(long)]
    from: String,
    #[arg(long)]
    to: String,
    /// Products per transaction.
    #[arg(value_parser = args::count::<1, 100_000>, long, default_value_t = 1000)]
    batch_size: usize,
}

#[derive(Args)]
struct SearchArgs {
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
    /// Search this part of the photo only: x0,y0,x1,y1 in the photo's pixels (after EXIF
    /// orientation; what lies outside the photo is dropped).
    #[arg(long = "box", value_name = "X0,Y0,X1,Y1", value_parser = args::photo_box, allow_hyphen_values = true, requires = "image")]
    region: Option<PhotoBox>,
    /// Search the whole photo, however busy (by default a photo that matches no product closely
    /// is searched where a product is found in it).
    #[arg(long, requires = "image", conflicts_with = "region")]
    whole: bool,
    /// Shop the look: every product found in the photo, each with its own results.
    #[arg(long, requires = "image", conflicts_with_all = ["region", "whole", "grid", "hybrid"])]
    regions: bool,
    /// Say why each result matched: heat maps and boxes over the photo and the result's photo
    /// (in --json; drawn with --grid).
    #[arg(long, requires = "image", conflicts_with = "regions")]
    explain: bool,
}

#[derive(Args)]
struct SimilarArgs {
    id: String,
    #[command(flatten)]
    query: QueryArgs,
}

#[derive(Args)]
struct EmbedArgs {
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ClassifyArgs {
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Use the backbone's own 1000-class ImageNet head.
    #[arg(long, required = true)]
    imagenet: bool,
    #[arg(value_parser = args::count::<1, 1000>, long, default_value_t = 5)]
    top: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ExportArgs {
    #[arg(long)]
    db: String,
    #[arg(long)]
    npy: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct RemoveArgs {
    #[arg(required = true)]
    ids: Vec<String>,
    #[arg(long)]
    db: String,
}

#[derive(Args)]
struct ServeArgs {
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
    /// Photos searched in parts at once (a busy photo's product looked for, shop the look, an
    /// explanation): each costs a dozen images or more. A photo waits --queue-wait-ms for a
    /// place, then is searched whole (shop the look: one region, all of it). Default: one per
    /// thread.
    #[arg(value_parser = args::count::<1, 1024>, long)]
    photos_in_parts: Option<usize>,
    /// How long an image request beyond the queue waits for a place before 503, in ms.
    #[arg(value_parser = args::count::<0, 60_000>, long, default_value_t = 1000)]
    queue_wait_ms: usize,
    #[command(flatten)]
    search: SearchModeArgs,
}

#[derive(Args)]
struct RecommendAllArgs {
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
}

#[derive(Args)]
struct DedupArgs {
    #[arg(long)]
    db: String,
    /// Cosine similarity at or above which two products are near-duplicates.
    #[arg(value_parser = args::similarity, long, default_value_t = 0.97)]
    threshold: f32,
    #[arg(long)]
    json: bool,
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
    search: SearchModeArgs,
}

#[derive(Args, Clone, Copy)]
struct SearchModeArgs {
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

impl SearchModeArgs {
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

    /// The backbone and precision asked for, or the defaults (no catalogue involved).
    fn embedder(&self) -> Result<Embedder> {
        Ok(self.open_options(SearchMode::Exact, true, None).embedder(None)?)
    }

    /// Opens an existing catalogue to read it: queries never create or change one, so a
    /// read-only file or folder works.
    fn read(&self, db: &str, search: SearchMode, classifier: Option<Head>) -> Result<Shop> {
        Ok(Shop::open(db, self.open_options(search, true, classifier))?)
    }

    /// Opens an existing catalogue to change it.
    fn change(&self, db: &str) -> Result<Shop> {
        Ok(Shop::open_existing(
            db,
            self.open_options(SearchMode::Exact, false, None),
        )?)
    }
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

/// Indexes `request` into `shop` with a progress bar, then names each skipped image on stderr
/// and sums up; true if some images were skipped.
fn index_with_progress(shop: &Shop, request: &IndexRequest) -> Result<bool> {
    let bar = output::progress_bar("products");
    let summary = shop.index(request, &mut |done, of| {
        bar.set_length(of as u64);
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    for (path, why) in &summary.unreadable {
        eprintln!("skipped {}: {why}", path.display());
    }
    for s in &summary.report.skipped {
        eprintln!("skipped {}: {}", s.path.display(), s.reason);
    }
    let report = &summary.report;
    println!(
        "indexed {} products into {}: {} embedded, {} unchanged, {} metadata updated, {} skipped, {} pruned; \
         {:.1}s, {:.1} images/s",
        report.total,
        shop.location(),
        report.embedded,
        report.unchanged,
        report.metadata_updated,
        report.skipped.len(),
        report.pruned,
        report.elapsed.as_secs_f64(),
        report.images_per_second()
    );
    Ok(summary.skipped_any())
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

fn run(cli: Cli) -> Result<ExitCode> {
    let models = Models {
        dir: ModelDir::locate(cli.models.as_deref()),
        backbone: cli.backbone,
        precision: cli.precision,
        threads: cli.threads,
    };
    match cli.command {
        Command::Index(args) => index(&models, args),
        Command::Serve(args) => serve(&models, args),
        Command::Search(args) => search(&models, args),
        Command::Similar(args) => similar(&models, args),
        Command::Migrate(args) => migrate(&models, args),
        Command::Embed(args) => embed(&models, args),
        Command::Classify(args) => classify(&models, args),
        Command::Export(args) => export(&models, args),
        Command::Remove(args) => remove(&models, args),
        Command::RecommendAll(args) => recommend_all(&models, args),
        Command::Dedup(args) => dedup(&models, args),
        Command::Train {
            what:
                learn::TrainCommand::Kinds {
                    db,
                    backgrounds,
                    seed,
                    json,
                },
        } => {
            learn::train_kinds(&models.change(&db)?, backgrounds.as_deref(), seed, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Train { what } => {
            learn::train(what, &|| models.embedder())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval {
            what:
                learn::EvalCommand::Kinds {
                    db,
                    photos,
                    kinds,
                    json,
                },
        } => {
            learn::eval_kinds(&models.read(&db, SearchMode::Exact, None)?, &photos, &kinds, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval { what } => {
            let embedder = match (what.catalogue(), what.colour()) {
                // The catalogue's own backbone and precision, as its queries are embedded.
                (Some(db), _) => models
                    .open_options(SearchMode::Exact, true, None)
                    .embedder(Some(&*lookalike::store::open_store_read_only(db)?))?,
                (None, Some(weight)) => models.embedder()?.with_colour(weight)?,
                (None, None) => models.embedder()?,
            };
            learn::eval(what, &embedder)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { what } => {
            let model = (
                models.backbone.unwrap_or(DEFAULT_BACKBONE),
                models.precision.unwrap_or_default(),
            );
            bench::run(what, &models.dir, model, cli.threads)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn index(models: &Models, args: IndexArgs) -> Result<ExitCode> {
    let shop = Shop::open(&args.db, models.open_options(SearchMode::Exact, false, None))?;
    let request = IndexRequest {
        layout: args.layout,
        prune: args.prune,
        batch_size: args.batch_size,
        head: args.head.as_deref().map(Head::load).transpose()?,
        colour: args.colour,
        shard: args.shard.map(|s| (s.index, s.count)),
        local_cells: !args.no_local_cells,
        ..IndexRequest::new(args.catalogue)
    };
    let skipped = index_with_progress(&shop, &request)?;
    shop.finish();
    Ok(if skipped {
        ExitCode::from(EXIT_SKIPPED)
    } else {
        ExitCode::SUCCESS
    })
}

fn serve(models: &Models, args: ServeArgs) -> Result<ExitCode> {
    let token = server::check_write_access(&args.token, args.read_only)?;
    let classifier = args.classifier.as_deref().map(Head::load).transpose()?;
    // A read-only server over a catalogue it does not index never writes to the file.
    let read_only = args.read_only && args.catalogue.is_none();
    let options = models.open_options(args.search.mode(), read_only, classifier);
    let shop = match &args.catalogue {
        Some(catalogue) => {
            let shop = Shop::open(&args.db, options)?;
            index_with_progress(&shop, &IndexRequest::new(catalogue))?;
            shop
        }
        None => Shop::open(&args.db, options)?,
    };
    let config = server::ServerConfig {
        addr: std::net::SocketAddr::new(args.host, args.port),
        token,
        max_upload_bytes: args.max_upload_mb << 20,
        upload_dir: args.upload_dir.unwrap_or_else(|| default_upload_dir(&args.db)),
        batch: BatchPolicy {
            max_batch: args.max_batch,
            queue: args.queue,
            window: std::time::Duration::from_secs_f64(args.batch_window_ms / 1e3),
        },
        decoders: models.threads,
        photos_in_parts: args.photos_in_parts.unwrap_or(models.threads),
        client_timeout: std::time::Duration::from_secs_f64(args.client_timeout_s),
        admission_wait: std::time::Duration::from_millis(args.queue_wait_ms as u64),
        cors_origins: args.cors_origins,
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

fn search(models: &Models, args: SearchArgs) -> Result<ExitCode> {
    let query = &args.query;
    let filter = query.filter()?;
    let words = args.text.as_deref().map(Words::parse).transpose()?;
    let classifier = match (args.hybrid, &args.classifier) {
        (true, Some(path)) => Some(Head::load(path)?),
        _ => None,
    };
    let likely_categories = classifier.is_some().then_some(args.coverage);
    let shop = models.read(&query.db, query.search.mode(), classifier)?;
    let framing = match (args.region, args.whole) {
        (Some(region), _) => Framing::Box(region),
        (None, true) => Framing::Whole,
        (None, false) => Framing::FindProduct,
    };
    if let (true, Some(image)) = (args.regions, &args.image) {
        let found = shop.find_products(image)?;
        report_index_load(shop.load()?);
        let request = SearchRequest {
            photo: None,
            whole_photo: None,
            part_cells: None,
            words: words.as_ref(),
            k: query.k,
            metric: query.metric,
            filter,
            diversity: query.diversity,
            likely_categories: None,
        };
        let answers = shop.search_regions(&found, &request)?;
        output::print_regions(&found, &answers, query.json)?;
        shop.finish();
        return Ok(ExitCode::SUCCESS);
    }
    let located = args
        .image
        .as_deref()
        .map(|path| shop.locate(&Shop::read_photo(path)?, &framing, args.explain))
        .transpose()?;
    report_index_load(shop.load()?);
    let answer = shop.search(&SearchRequest {
        photo: located.as_ref().map(|l| &l.embedding),
        whole_photo: located.as_ref().and_then(|l| l.whole_photo.as_ref()),
        part_cells: located.as_ref().and_then(|l| l.cells.as_ref()),
        words: words.as_ref(),
        k: query.k,
        metric: query.metric,
        filter,
        diversity: query.diversity,
        likely_categories,
    })?;
    let searched = located.as_ref().and_then(|l| l.region);
    let explanations = match located.as_ref().and_then(|l| l.feature_map.as_ref()) {
        Some(query) => shop.explain(query, &answer.hits)?,
        None => Vec::new(),
    };
    output::print_hits(
        &answer.hits,
        answer.scored_by,
        query.json,
        answer.likely_categories.as_deref(),
        searched.as_ref(),
        &explanations,
    )?;
    if let (Some(grid), Some(image)) = (&args.grid, &args.image) {
        let photo = lookalike::image::load_image(image)?;
        let score_name = answers::ScoredBy::of(answer.scored_by).name();
        if args.explain {
            charts::explanation_grid(&photo, &answer.hits, &explanations, score_name, grid)?;
        } else {
            charts::recommendation_grid(&photo, &answer.hits, score_name, grid)?;
        }
        eprintln!("drew {}", grid.display());
    }
    shop.finish();
    Ok(ExitCode::SUCCESS)
}

fn similar(models: &Models, args: SimilarArgs) -> Result<ExitCode> {
    let query = &args.query;
    let filter = query.filter()?;
    let shop = models.read(&query.db, query.search.mode(), None)?;
    report_index_load(shop.load()?);
    let hits = shop.similar(&args.id, query.k, query.metric, &filter, query.diversity)?;
    output::print_hits(&hits, Some(query.metric), query.json, None, None, &[])?;
    shop.finish();
    Ok(ExitCode::SUCCESS)
}

fn migrate(models: &Models, args: MigrateArgs) -> Result<ExitCode> {
    let source = models.read(&args.from, SearchMode::Exact, None)?;
    let mut target = open_store(&args.to)?;
    let started = std::time::Instant::now();
    let copied = source.copy_into(&mut *target, args.batch_size)?;
    println!(
        "copied {copied} products from {} to {} in {:.1}s",
        source.location(),
        redact(&args.to),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn embed(models: &Models, args: EmbedArgs) -> Result<ExitCode> {
    let results = embed_files(&models.embedder()?, &args.images)?;
    output::print_embeddings(&args.images, &results, args.json)
}

fn classify(models: &Models, args: ClassifyArgs) -> Result<ExitCode> {
    let results = embed_files(&models.embedder()?, &args.images)?;
    let mut failed = false;
    let mut rows = Vec::new();
    for (path, result) in args.images.iter().zip(results) {
        match result {
            Ok(e) => rows.push((path, imagenet_top_k(&e.logits, args.top))),
            Err(err) => {
                failed = true;
                eprintln!("error: {}: {err}", path.display());
            }
        }
    }
    output::print_labels(&rows, args.json)?;
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn export(models: &Models, args: ExportArgs) -> Result<ExitCode> {
    let shop = models.read(&args.db, SearchMode::Exact, None)?;
    let exported = shop.export(args.npy.as_deref(), args.json.as_deref())?;
    if let Some(path) = &args.npy {
        println!("wrote {exported} vectors to {}", path.display());
    }
    if let Some(path) = &args.json {
        println!("wrote {exported} rows to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn remove(models: &Models, args: RemoveArgs) -> Result<ExitCode> {
    let removed = models.change(&args.db)?.remove_all(&args.ids)?;
    println!("removed {removed} of {} products", args.ids.len());
    Ok(if removed == args.ids.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn recommend_all(models: &Models, args: RecommendAllArgs) -> Result<ExitCode> {
    let state = args.state.unwrap_or_else(|| {
        let mut name = args.out.clone().into_os_string();
        name.push(".state.json");
        PathBuf::from(name)
    });
    let shop = models.read(&args.db, SearchMode::Exact, None)?;
    let report = shop.recommend_all(args.k, &args.out, &state)?;
    if let Some(why) = &report.unusable_state {
        eprintln!("ignored {} ({why}): computed everything", state.display());
    }
    println!(
        "related products for {} products (k={}) in {}: {} computed against the whole catalogue, \
         {} only against the {} new or changed; {:.1}s to load, {:.1}s to compute ({:.0} products/s)",
        report.products,
        args.k,
        args.out.display(),
        report.work.full,
        report.work.merged,
        report.work.fresh,
        report.loaded.as_secs_f64(),
        report.computed.as_secs_f64(),
        report.products as f64 / report.computed.as_secs_f64().max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}

fn dedup(models: &Models, args: DedupArgs) -> Result<ExitCode> {
    let duplicates = models
        .read(&args.db, SearchMode::Exact, None)?
        .duplicates(args.threshold)?;
    output::print_duplicates(&duplicates, args.json)?;
    Ok(ExitCode::SUCCESS)
}

//! `lookalike train …` and `lookalike eval …`: heads trained on the shop's own labelled
//! folders, and honest numbers about them. Backbone features of each folder come from the
//! library's [`FeatureCache`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use lookalike::feature_cache::{self, class_of, FeatureCache, FolderFeatures};
use lookalike::index::category_vote::{voted_by, VOTE_POOL};
use lookalike::index::VectorIndex;
use lookalike::learn::eval::{classification_metrics, retrieval_metrics, RetrievalReport};
use lookalike::learn::head::{Head, HeadKind};
use lookalike::learn::kinds::Backgrounds;
use lookalike::learn::train::{
    train_classifier, train_projection, EpochRecord, LabelledFeatures, MetricLoss, Mining, TrainOptions,
};
use lookalike::model::Embedder;
use lookalike::scenes::{kind_precision, pointing_game, scene_recall, PointingReport, SceneOptions};
use lookalike::shop::Shop;
use lookalike::types::{Filter, Metric, StoredProduct, Words};
use rayon::prelude::*;

use crate::output::progress_bar;

#[derive(Clone, Copy, ValueEnum)]
pub enum LossArg {
    Triplet,
    Contrastive,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum MiningArg {
    BatchHard,
    SemiHard,
}

#[derive(clap::Args)]
pub struct Common {
    /// Training images, one sub-folder per class.
    #[arg(long)]
    train: PathBuf,
    /// Validation images, same classes.
    #[arg(long)]
    val: PathBuf,
    /// Where the head is written (safetensors); history.json goes beside it.
    #[arg(long)]
    out: PathBuf,
    #[arg(value_parser = crate::args::count::<1, 100_000>, long, default_value_t = 100)]
    epochs: usize,
    #[arg(value_parser = crate::args::count::<1, 65_536>, long, default_value_t = 64)]
    batch_size: usize,
    #[arg(value_parser = crate::args::positive, long, default_value_t = 1e-3)]
    lr: f32,
    #[arg(value_parser = crate::args::non_negative, long, default_value_t = 1e-4)]
    weight_decay: f32,
    /// Width of a hidden ReLU layer (none by default).
    #[arg(value_parser = crate::args::count::<1, 65_536>, long)]
    hidden: Option<usize>,
    #[arg(value_parser = crate::args::dropout, long, default_value_t = 0.2)]
    dropout: f32,
    /// Epochs without improvement on the validation set before stopping.
    #[arg(value_parser = crate::args::count::<1, 100_000>, long, default_value_t = 8)]
    patience: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Seeded augmented views per training image (flip, rotation, brightness/contrast, random
    /// crop), embedded once and cached; 0 trains on the images as they are.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=64))]
    augment: u32,
    /// Cache of backbone features per image folder (default: ~/.cache/lookalike).
    #[arg(long)]
    cache: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum TrainCommand {
    /// Softmax classifier on frozen backbone features (early stopping on validation loss).
    Classifier {
        #[command(flatten)]
        common: Common,
        /// Also fine-tune the backbone's last N blocks (and its head convolution), at a tenth of
        /// the learning rate. Slower: each image then costs a forward and backward pass through them.
        #[arg(value_parser = crate::args::count::<0, 16>, long, default_value_t = 0)]
        fine_tune_blocks: usize,
    },
    /// Projection head (L2-normalised) trained so that neighbours share a class.
    Metric {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_enum, default_value = "triplet")]
        loss: LossArg,
        #[arg(long, value_enum, default_value = "semi-hard")]
        mining: MiningArg,
        #[arg(value_parser = crate::args::count::<1, 65_536>, long, default_value_t = 256)]
        dim: usize,
        #[arg(value_parser = crate::args::positive, long, default_value_t = 0.2)]
        margin: f32,
        /// Images per class in each batch.
        #[arg(value_parser = crate::args::count::<2, 65_536>, long, default_value_t = 8)]
        per_class: usize,
    },
    /// A catalogue's kinds (the last part of each product's category) learnt from its own photos,
    /// as they are and pasted onto phone photos, and kept with it: a shopper's photo that matches
    /// no product closely then brings products of its kind first. Run again after the catalogue
    /// changes much; a running server picks it up when it restarts.
    Kinds {
        #[arg(long)]
        db: String,
        /// Photos of real places to paste the catalogue's products onto (default: 128 phone photos
        /// shipped with lookalike).
        #[arg(long)]
        backgrounds: Option<PathBuf>,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
    /// A small CNN trained from scratch on Fashion-MNIST; its penultimate layer is an embedding.
    Scratch {
        #[command(flatten)]
        args: ScratchArgs,
    },
}

#[derive(clap::Args)]
pub struct ScratchArgs {
    /// Folder with Fashion-MNIST's four .gz idx files.
    #[arg(long)]
    fashion_mnist: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(value_parser = crate::args::count::<1, 100_000>, long, default_value_t = 12)]
    epochs: usize,
    #[arg(value_parser = crate::args::count::<1, 65_536>, long, default_value_t = 64)]
    batch_size: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Train on the first N training images only (quick runs).
    #[arg(value_parser = crate::args::count::<1, 100_000_000>, long)]
    limit: Option<usize>,
}

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Accuracy, per-class precision/recall and confusion matrix of a classifier head.
    Classify {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        test: PathBuf,
        #[arg(long)]
        json: bool,
        /// Also draw the confusion matrix as a PNG here.
        #[arg(long)]
        png: Option<PathBuf>,
        #[arg(long)]
        cache: Option<PathBuf>,
    },
    /// Retrieval quality: queries against a gallery, a hit is a gallery image of the query's class.
    Retrieval {
        #[arg(long)]
        gallery: PathBuf,
        #[arg(long)]
        queries: PathBuf,
        #[arg(value_parser = crate::args::count::<1, 10_000>, short, long, default_value_t = 10)]
        k: usize,
        /// Rank by this projection head's embeddings instead of raw backbone features.
        #[arg(long)]
        head: Option<PathBuf>,
        /// Rank by features with the colour signature of this weight appended (as `index --colour`).
        #[arg(long, value_parser = crate::args::colour_weight, conflicts_with_all = ["head", "classifier"])]
        colour: Option<f32>,
        /// Hybrid: classify each query with this classifier head and rank only within its likely classes.
        #[arg(long)]
        classifier: Option<PathBuf>,
        /// Hybrid: take likely classes until their probabilities add up to this.
        #[arg(value_parser = crate::args::fraction, long, default_value_t = 0.9)]
        coverage: f32,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        cache: Option<PathBuf>,
    },
    /// Shoppers' photos made from the catalogue's own: a product photo held out, its white
    /// backdrop removed, pasted onto background photos (alone and in pairs, seeded); product
    /// Recall@1/@5 for the whole photo, the product's true box (also cut out onto white) and boxes
    /// found without it, ranked as search ranks them (and without the local re-ranking, where the
    /// catalogue keeps its photos' cells).
    Scenes {
        /// A catalogue of products with two photos or more (one is held out per scene).
        #[arg(long)]
        db: String,
        /// Photos of busy scenes to paste products onto (a folder, searched recursively).
        #[arg(long)]
        backgrounds: PathBuf,
        /// Scenes of one product.
        #[arg(value_parser = crate::args::count::<1, 100_000>, long, default_value_t = 200)]
        singles: usize,
        /// Scenes of two products, one in each half.
        #[arg(value_parser = crate::args::count::<0, 100_000>, long, default_value_t = 100)]
        pairs: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        #[arg(long)]
        json: bool,
        /// The pointing game instead: how often an explanation's heat map and boxes fall on the
        /// product, in the same scenes of one product.
        #[arg(long)]
        explain: bool,
    },
    /// Category retrieval from shoppers'-style photos (folders named for a kind) against a
    /// catalogue's packshots, searched whole and as `search` does by default: precision@1 and @5,
    /// a product being of the photo's kind when the last part of its category is the kind's.
    Kinds {
        #[arg(long)]
        db: String,
        /// A folder of photos in one folder per kind (searched recursively, e.g. a test split).
        #[arg(long)]
        photos: PathBuf,
        /// FOLDER=CATEGORY, comma-separated: which catalogue category each folder's photos are
        /// (e.g. t-shirt=Tees,pants=Pants).
        #[arg(long, value_delimiter = ',', value_parser = crate::args::kind, required = true)]
        kinds: Vec<(String, String)>,
        #[arg(long)]
        json: bool,
    },
    /// Training-free descriptors and re-ranking side by side: poolings of the last feature map
    /// (average, GeM, max) × PCA-whitening fitted on the gallery, query expansion, gallery
    /// augmentation and k-reciprocal re-ranking. Sets: a catalogue's products (--db: each product's last photo against the
    /// other photos, product Recall@1/@5); labelled folders (--gallery and --queries: class
    /// precision@1 and Recall@5 of classes); shoppers'-style photos against the catalogue's
    /// packshots by kind (--db, --queries and --kinds, as `eval kinds`).
    Descriptors {
        #[arg(long)]
        db: Option<String>,
        /// A labelled folder (one folder per class) to search in.
        #[arg(long, requires = "queries")]
        gallery: Option<PathBuf>,
        /// A labelled folder of query photos.
        #[arg(long)]
        queries: Option<PathBuf>,
        /// FOLDER=CATEGORY, comma-separated, as `eval kinds`.
        #[arg(long, value_delimiter = ',', value_parser = crate::args::kind, requires_all = ["db", "queries"])]
        kinds: Vec<(String, String)>,
        #[arg(long)]
        json: bool,
    },
    /// Product-level retrieval on a catalogue of several photos per product (indexed without a
    /// head): each product's last photo is held out and queried against the rest, Recall@1 and
    /// @5 per way of scoring a product by its photos, beside one photo per product.
    Products {
        #[arg(long)]
        db: String,
        /// Also with test-time augmentation: each photo's vector the mean of it and its mirror image.
        #[arg(long)]
        flip: bool,
        /// Also train a metric head on a share of the products (products as classes) and
        /// measure it on the other, unseen ones.
        #[arg(value_parser = crate::args::fraction, long)]
        train_share: Option<f32>,
        /// Also rank with words: a CSV (columns image, words) giving held-out photos, by file
        /// name, words to query with beside them; photo, words and their fusions side by side.
        #[arg(long)]
        words: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

impl EvalCommand {
    /// The colour weight the command's features are made with, if any.
    pub fn colour(&self) -> Option<f32> {
        match self {
            Self::Retrieval { colour, .. } => *colour,
            _ => None,
        }
    }

    /// The catalogue the command measures, whose backbone and precision it must embed with.
    pub fn catalogue(&self) -> Option<&str> {
        match self {
            Self::Scenes { db, .. } | Self::Products { db, .. } => Some(db),
            Self::Descriptors { db, .. } => db.as_deref(),
            _ => None,
        }
    }
}

/// Features of `views` seeded augmented views of each training image, embedded once and cached.
fn augmented_features(
    embedder: &Embedder,
    folder: &Path,
    originals: &[StoredProduct],
    views: u32,
    seed: u64,
    cache: &Option<PathBuf>,
) -> Result<Vec<StoredProduct>> {
    let bar = progress_bar(format!("augmented views of {}", folder.display()));
    let started = std::time::Instant::now();
    let (products, embedded) =
        FeatureCache::new(cache.clone()).augmented(embedder, folder, originals, views, seed, &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64)
        })?;
    bar.finish_and_clear();
    if embedded > 0 {
        eprintln!(
            "{}: embedded {embedded} augmented views in {:.1}s",
            folder.display(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(products)
}

/// Backbone features of every image under `dir`, embedded once and cached.
fn folder_features(embedder: &Embedder, dir: &Path, cache: &Option<PathBuf>) -> Result<Vec<StoredProduct>> {
    let bar = progress_bar(format!("features of {}", dir.display()));
    let FolderFeatures { products, report } =
        FeatureCache::new(cache.clone()).folder(embedder, dir, &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64)
        })?;
    bar.finish_and_clear();
    for s in &report.skipped {
        eprintln!("skipped {}: {}", s.path.display(), s.reason);
    }
    if report.embedded > 0 {
        eprintln!(
            "{}: embedded {} images ({:.1}/s), {} from cache",
            dir.display(),
            report.embedded,
            report.images_per_second(),
            report.unchanged
        );
    }
    Ok(products)
}

/// [`feature_cache::labelled`], warning of the images it leaves out.
fn labelled(products: &[StoredProduct], classes: &[String], what: &str) -> LabelledFeatures {
    let (features, unknown) = feature_cache::labelled(products, classes);
    if !unknown.is_empty() {
        eprintln!("warning: {what} images of classes the training set lacks were left out: {unknown:?}");
    }
    features
}

fn options_from(common: &Common) -> TrainOptions {
    TrainOptions {
        epochs: common.epochs,
        batch_size: common.batch_size,
        learning_rate: common.lr,
        weight_decay: common.weight_decay,
        hidden: common.hidden,
        dropout: common.dropout,
        patience: common.patience,
        seed: common.seed,
        ..TrainOptions::default()
    }
}

fn print_epoch(record: &EpochRecord, accuracy_name: &str) {
    eprintln!(
        "epoch {:3}  train loss {:.4}  val loss {:.4}  val {accuracy_name} {:.4}  lr {:.1e}  {:.1}s",
        record.epoch, record.train_loss, record.val_loss, record.val_accuracy, record.learning_rate, record.seconds
    );
}

fn train_scratch(args: &ScratchArgs) -> Result<()> {
    use lookalike::learn::scratch::{knn_at_1, read_fashion_mnist, FashionCnn};
    let (mut train, test) = read_fashion_mnist(&args.fashion_mnist)?;
    if let Some(limit) = args.limit {
        train.labels.truncate(limit);
        train
            .images
            .truncate(limit * lookalike::learn::scratch::SIDE * lookalike::learn::scratch::SIDE);
    }
    eprintln!("Fashion-MNIST: {} training and {} test images", train.len(), test.len());
    let started = std::time::Instant::now();
    let mut net = FashionCnn::new(args.seed);
    let history = net.train(&train, &test, args.epochs, args.batch_size, args.seed, &mut |e| {
        eprintln!(
            "epoch {:2}  train loss {:.4}  test accuracy {:.4}  lr {:.1e}  {:.1}s",
            e.epoch, e.train_loss, e.test_accuracy, e.learning_rate, e.seconds
        )
    })?;
    let training_seconds = started.elapsed().as_secs_f64();
    net.save(&args.out)?;
    let knn_started = std::time::Instant::now();
    let knn = knn_at_1(
        &net.embed(&test.images),
        &test.labels,
        &net.embed(&train.images),
        &train.labels,
        128,
    );
    let accuracy = history.last().map_or(0.0, |e| e.test_accuracy);
    let history_path = args.out.with_file_name("history.json");
    let summary = serde_json::json!({
        "test_accuracy": accuracy,
        "knn_at_1": knn,
        "training_seconds": training_seconds,
        "epochs": history,
    });
    lookalike::files::write_atomically(&history_path, |out| Ok(serde_json::to_writer_pretty(out, &summary)?))?;
    println!(
        "wrote {}: test accuracy {accuracy:.4}, k-NN@1 accuracy of its 128-d embeddings (test → train) {knn:.4}; \
         training {training_seconds:.0}s, k-NN {:.0}s; history in {}",
        args.out.display(),
        knn_started.elapsed().as_secs_f64(),
        history_path.display()
    );
    Ok(())
}

/// `train kinds` on the catalogue `shop`: learns, keeps and reports its kinds.
pub fn train_kinds(shop: &Shop, backgrounds: Option<&Path>, seed: u64, json: bool) -> Result<()> {
    let backgrounds = match backgrounds {
        Some(folder) => Backgrounds::from_files(&lookalike::catalogue::image_files(folder)?)?,
        None => Backgrounds::bundled()?,
    };
    let bar = progress_bar("views");
    let summary = shop.learn_kinds(&backgrounds, seed, &mut |done, of| {
        bar.set_length(of as u64);
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    let mut table = crate::output::bordered_table(["kind", "products", "vectors", "photos viewed"]);
    for (kind, count) in &summary.kinds {
        table.add_row([
            kind.clone(),
            count.products.to_string(),
            count.vectors.to_string(),
            count.photos.to_string(),
        ]);
    }
    println!("{table}");
    if summary.unreadable_photos > 0 {
        eprintln!(
            "{} catalogue photos could not be read; their stored vectors still count",
            summary.unreadable_photos
        );
    }
    println!(
        "learnt {} kinds of {} from {} vectors ({} views on {} backgrounds), {} epochs (chosen on held-out products, then learnt from all); held-out products' kinds named right: {:.3} (their nearest photo: {:.3})",
        summary.kinds.len(),
        shop.location(),
        summary.examples,
        summary.views,
        backgrounds.len(),
        summary.epochs,
        summary.held_out_accuracy,
        summary.nearest_photo_accuracy
    );
    Ok(())
}

/// `load_embedder` is only called by the commands that need the pretrained backbone.
pub fn train(command: TrainCommand, load_embedder: &dyn Fn() -> Result<Embedder>) -> Result<()> {
    let (common, metric, fine_tune_blocks) = match &command {
        TrainCommand::Scratch { args } => return train_scratch(args),
        TrainCommand::Kinds { .. } => unreachable!("train kinds opens the catalogue's shop: see train_kinds"),
        TrainCommand::Classifier {
            common,
            fine_tune_blocks,
        } => (common, None, *fine_tune_blocks),
        TrainCommand::Metric {
            common,
            loss,
            mining,
            dim,
            margin,
            per_class,
        } => (common, Some((loss, mining, dim, margin, per_class)), 0),
    };
    let backbone = load_embedder()?;
    let trunk = (fine_tune_blocks > 0)
        .then(|| backbone.pretrained_trunk(fine_tune_blocks))
        .transpose()?;
    // Fine-tuning trains on what enters the first unfrozen block, so that is what gets cached.
    let embedder = &match &trunk {
        Some(trunk) => backbone.with_block_input(trunk, true)?,
        None => backbone,
    };
    let started = std::time::Instant::now();
    let mut train_products = folder_features(embedder, &common.train, &common.cache)?;
    if common.augment > 0 {
        let views = augmented_features(
            embedder,
            &common.train,
            &train_products,
            common.augment,
            common.seed,
            &common.cache,
        )?;
        train_products.extend(views);
    }
    let val_products = folder_features(embedder, &common.val, &common.cache)?;
    let classes: Vec<String> = train_products
        .iter()
        .map(class_of)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let train_set = labelled(&train_products, &classes, "training");
    let val_set = labelled(&val_products, &classes, "validation");
    let features_seconds = started.elapsed().as_secs_f64();
    let sha = embedder.manifest().weights_sha256;
    let mut options = options_from(common);
    let trained_at = std::time::Instant::now();
    let (trained, accuracy_name) = match metric {
        None => (
            train_classifier(&train_set, &val_set, &sha, &options, trunk, &mut |r| {
                print_epoch(r, "accuracy")
            })?,
            "accuracy",
        ),
        Some((loss, mining, dim, margin, per_class)) => {
            options.loss = match loss {
                LossArg::Triplet => MetricLoss::Triplet,
                LossArg::Contrastive => MetricLoss::Contrastive,
            };
            options.mining = match mining {
                MiningArg::BatchHard => Mining::BatchHard,
                MiningArg::SemiHard => Mining::SemiHard,
            };
            options.embedding_dimension = *dim;
            options.margin = *margin;
            options.per_class = *per_class;
            (
                train_projection(&train_set, &val_set, &sha, &options, &mut |r| {
                    print_epoch(r, "k-NN precision@1")
                })?,
                "k-NN precision@1",
            )
        }
    };
    trained.head.save(&common.out)?;
    let history_path = common.out.with_file_name("history.json");
    let best = &trained.history[trained.best_epoch - 1];
    let history = serde_json::json!({
        "best_epoch": trained.best_epoch,
        "stopped_early": trained.stopped_early,
        "features_seconds": features_seconds,
        "training_seconds": trained_at.elapsed().as_secs_f64(),
        "epochs": trained.history,
    });
    lookalike::files::write_atomically(&history_path, |out| Ok(serde_json::to_writer_pretty(out, &history)?))?;
    let curves = common.out.with_file_name("history.png");
    crate::charts::history_png(&trained.history, trained.best_epoch, accuracy_name, &curves)?;
    println!(
        "wrote {} ({}): best epoch {} of {}, val loss {:.4}, val {accuracy_name} {:.4}; history in {} and history.png; \
         features {:.1}s, training {:.1}s",
        common.out.display(),
        trained.head.manifest_name()?,
        trained.best_epoch,
        trained.history.len(),
        best.val_loss,
        best.val_accuracy,
        history_path.display(),
        features_seconds,
        trained_at.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn load_head(path: &Path, embedder: &Embedder, kind: HeadKind) -> Result<Head> {
    let head = Head::load(path)?;
    lookalike::shop::check_head(&head, embedder, kind).with_context(|| format!("cannot use {}", path.display()))?;
    Ok(head)
}

/// Query images whose exact bytes, or nearly identical features (cosine ≥ 0.98), are also in the gallery.
fn leakage(queries: &[StoredProduct], gallery: &VectorIndex) -> (usize, usize) {
    let hashes: BTreeSet<&str> = gallery.products().iter().map(|p| p.content_hash.as_str()).collect();
    let exact = queries
        .iter()
        .filter(|q| hashes.contains(q.content_hash.as_str()))
        .count();
    let near = queries
        .iter()
        .filter(|q| !hashes.contains(q.content_hash.as_str()))
        .filter(|q| {
            gallery
                .search(&q.vector, 1, Metric::Cosine, &Filter::default(), None)
                .is_ok_and(|hits| hits.first().is_some_and(|h| h.score >= NEAR_DUPLICATE_COSINE))
        })
        .count();
    (exact, near)
}

const NEAR_DUPLICATE_COSINE: f32 = 0.98;

fn print_retrieval(report: &RetrievalReport) {
    println!(
        "{} queries, k={}: precision@1 {:.4}  precision@{k} {:.4}  recall@{k} {:.4}  mAP@{k} {:.4}",
        report.queries,
        report.k,
        report.precision_at_1,
        report.precision_at_k,
        report.recall_at_k,
        report.map_at_k,
        k = report.k
    );
    let mut table = crate::output::bordered_table(["class", "queries", "precision@1", "precision@k", "mAP@k"]);
    for c in &report.per_class {
        table.add_row([
            c.class.clone(),
            c.queries.to_string(),
            format!("{:.3}", c.precision_at_1),
            format!("{:.3}", c.precision_at_k),
            format!("{:.3}", c.map_at_k),
        ]);
    }
    println!("{table}");
}

fn print_pointing(report: &PointingReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    let mut table = crate::output::bordered_table([
        "scenes of one product, explained",
        "scenes",
        "hottest cell on it",
        "query box centre on it",
        "match box centre on it",
    ]);
    for row in &report.rows {
        table.add_row([
            row.explained.clone(),
            row.scenes.to_string(),
            format!("{:.3}", row.hottest_cell_on_product),
            format!("{:.3}", row.query_box_centre_on_product),
            format!("{:.3}", row.match_box_centre_on_product),
        ]);
    }
    println!("{table}");
    println!(
        "of {} scenes of a product with two photos or more left, the explanation named the photo most like the pasted one in {:.3}",
        report.several_views, report.matched_view_is_the_pasted_one
    );
    Ok(())
}

pub fn eval(command: EvalCommand, embedder: &Embedder) -> Result<()> {
    match command {
        EvalCommand::Scenes {
            db,
            backgrounds,
            singles,
            pairs,
            seed,
            json,
            explain,
        } => {
            let store = lookalike::store::open_store_read_only(&db)?;
            let options = SceneOptions {
                singles,
                pairs,
                seed,
                ..SceneOptions::default()
            };
            if explain {
                return print_pointing(&pointing_game(&*store, embedder, &backgrounds, &options)?, json);
            }
            let report = scene_recall(&*store, embedder, &backgrounds, &options)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            let mut table = crate::output::bordered_table([
                "scenes of one product, searched by",
                "queries",
                "Recall@1",
                "Recall@5",
            ]);
            for row in report.singles.iter().chain(&report.clean) {
                table.add_row([
                    row.search.clone(),
                    row.queries.to_string(),
                    format!("{:.3}", row.recall_at_1),
                    format!("{:.3}", row.recall_at_5),
                ]);
            }
            println!("{table}");
            println!(
                "the default search searched {:.3} of them whole",
                report.singles_searched_whole
            );
            println!(
                "{} scenes of two products: both among the whole photo's 10 best {:.3}; each among the 5 best of a region found around it {:.3}; each among its own true box's 5 best {:.3}",
                report.pairs,
                report.pairs_both_in_whole_top_10,
                report.pairs_both_in_found_regions_top_5,
                report.pairs_both_in_own_box_top_5
            );
            if let Some(share) = report.pairs_both_in_found_regions_top_5_without_local_reranking {
                println!("each among the 5 best of a region found around it, without local re-ranking {share:.3}");
            }
            if report.learnt_kinds {
                println!(
                    "the catalogue's learnt kinds ranked these scenes; they were learnt from the held-out photos too, which flatters them"
                );
            }
            Ok(())
        }
        EvalCommand::Descriptors {
            db,
            gallery,
            queries,
            kinds,
            json,
        } => eval_descriptors(
            embedder,
            db.as_deref(),
            gallery.as_deref(),
            queries.as_deref(),
            &kinds,
            json,
        ),
        EvalCommand::Kinds { .. } => unreachable!("eval kinds opens the catalogue's shop: see eval_kinds"),
        EvalCommand::Products {
            db,
            flip,
            train_share,
            words,
            json,
        } => eval_products(embedder, &db, flip, train_share, words.as_deref(), json),
        EvalCommand::Classify {
            model,
            test,
            json,
            png,
            cache,
        } => {
            let head = load_head(&model, embedder, HeadKind::Classifier)?;
            let tapped = head
                .trunk
                .as_ref()
                .map(|trunk| embedder.with_block_input(trunk, true))
                .transpose()?;
            let products = folder_features(tapped.as_ref().unwrap_or(embedder), &test, &cache)?;
            let data = labelled(&products, &head.classes, "test");
            if data.is_empty() {
                bail!(
                    "none of the test images belong to the classifier's classes {:?}",
                    head.classes
                );
            }
            let probs = head.apply(&data.features, data.len());
            let classes = head.classes.len();
            let predicted: Vec<usize> = probs
                .chunks(classes)
                .map(|row| (0..classes).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap_or(0))
                .collect();
            let report = classification_metrics(&head.classes, &data.labels, &predicted);
            if let Some(png) = &png {
                crate::charts::confusion_png(&report, png)?;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("accuracy {:.4} on {} images", report.accuracy, report.samples);
                let mut table = crate::output::bordered_table(["class", "support", "precision", "recall"]);
                for c in &report.per_class {
                    table.add_row([
                        c.class.clone(),
                        c.support.to_string(),
                        format!("{:.3}", c.precision),
                        format!("{:.3}", c.recall),
                    ]);
                }
                println!("{table}");
                println!("confusion matrix (rows: true class, columns: predicted), classes in the order above:");
                for row in &report.confusion {
                    println!("  {}", row.iter().map(|n| format!("{n:4}")).collect::<String>());
                }
            }
            Ok(())
        }
        EvalCommand::Retrieval {
            gallery,
            queries,
            k,
            head,
            colour: _,
            classifier,
            coverage,
            json,
            cache,
        } => {
            if k == 0 {
                bail!("-k must be at least 1");
            }
            let classifier = classifier
                .map(|h| load_head(&h, embedder, HeadKind::Classifier))
                .transpose()?;
            let head = head
                .map(|h| load_head(&h, embedder, HeadKind::Projection))
                .transpose()?;
            let gallery_products = folder_features(embedder, &gallery, &cache)?;
            let query_products = folder_features(embedder, &queries, &cache)?;
            let mut sizes: BTreeMap<String, usize> = BTreeMap::new();
            for p in &gallery_products {
                *sizes.entry(class_of(p)).or_default() += 1;
            }
            let backbone_index = VectorIndex::new(gallery_products)?;
            // Duplicates are judged on backbone features: a projection pulls a whole class together.
            let (exact, near) = leakage(&query_products, &backbone_index);
            if exact + near > 0 {
                eprintln!(
                    "warning: {exact} query images are byte-identical to gallery images and {near} more are \
                     near-duplicates (cosine ≥ {NEAR_DUPLICATE_COSINE}); they inflate these numbers"
                );
            }
            let project = |products: &[StoredProduct], head: &Head| {
                let mut products = products.to_vec();
                for p in &mut products {
                    p.vector = head.apply(&p.vector, 1);
                }
                products
            };
            // A classifier with fine-tuned blocks reads the input of the first of them instead.
            let block_inputs: HashMap<String, Vec<f32>> = match classifier.as_ref().and_then(|c| c.trunk.as_ref()) {
                Some(trunk) => folder_features(&embedder.with_block_input(trunk, true)?, &queries, &cache)?
                    .into_iter()
                    .map(|p| (p.content_hash, p.vector))
                    .collect(),
                None => HashMap::new(),
            };
            // The classifier reads backbone features, so hybrid filters are chosen before projecting.
            let filters: Vec<Filter> = query_products
                .iter()
                .map(|q| -> Result<Filter> {
                    let mut filter = Filter::default();
                    if let Some(classifier) = &classifier {
                        let input = block_inputs.get(&q.content_hash).unwrap_or(&q.vector);
                        lookalike::shop::keep_to_likely_categories(&mut filter, classifier, input, coverage)?;
                    }
                    Ok(filter)
                })
                .collect::<Result<_>>()?;
            let (projected_index, query_products) = match &head {
                Some(head) => (
                    Some(VectorIndex::new(project(
                        &backbone_index.products_with_vectors(),
                        head,
                    ))?),
                    project(&query_products, head),
                ),
                None => (None, query_products),
            };
            let index = projected_index.as_ref().unwrap_or(&backbone_index);
            let ranked: Vec<Vec<String>> = query_products
                .iter()
                .zip(&filters)
                .map(|(q, filter)| {
                    // In search's order: the best VOTE_POOL reordered by their classes' votes.
                    index
                        .search(&q.vector, k.max(VOTE_POOL), Metric::Cosine, filter, None)
                        .map(|hits| {
                            voted_by(hits, |h| h.score, |h| h.product.info.category.as_deref(), |_| Some(0.0))
                                .iter()
                                .take(k)
                                .map(|h| class_of(h.product))
                                .collect()
                        })
                })
                .collect::<Result<_>>()?;
            let classes: Vec<String> = query_products.iter().map(class_of).collect();
            let report = retrieval_metrics(&classes, &ranked, &sizes, k);
            if json {
                let summary = serde_json::json!({
                    "precision_at_1": report.precision_at_1,
                    "precision_at_k": report.precision_at_k,
                    "recall_at_k": report.recall_at_k,
                    "map_at_k": report.map_at_k,
                    "k": report.k,
                    "queries": report.queries,
                });
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print_retrieval(&report);
            }
            Ok(())
        }
    }
}

/// Unit-length copies of `vectors`.
fn unit_rows(vectors: impl Iterator<Item = Vec<f32>>) -> Vec<Vec<f32>> {
    vectors
        .map(|mut v| {
            let width = v.len().max(1);
            lookalike::linalg::l2_normalise_rows(&mut v, width);
            v
        })
        .collect()
}

/// Pooled features of every photo of `products` seen in a mirror, in photo order.
fn mirrored_features(embedder: &Embedder, products: &[StoredProduct]) -> Result<Vec<Vec<Vec<f32>>>> {
    let bar = progress_bar("mirrored photos");
    bar.set_length(products.iter().map(|p| 1 + p.more_images.len()).sum::<usize>() as u64);
    let mut out = Vec::with_capacity(products.len());
    for p in products {
        let tensors: Vec<Vec<f32>> = p
            .image_paths()
            .collect::<Vec<_>>()
            .par_iter()
            .map(|path| {
                let image = lookalike::image::load_image(Path::new(path))?;
                Ok(embedder
                    .preprocessing
                    .tensor_of(&image::imageops::flip_horizontal(&image)))
            })
            .collect::<Result<_>>()?;
        let embedded = embedder.run(&tensors.concat(), tensors.len())?;
        out.push((0..tensors.len()).map(|i| embedded.feature(i).to_vec()).collect());
        bar.inc(tensors.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// [`lookalike::learn::eval::held_out_recall_with_words`] for the photos `words_csv` gives words to.
fn recall_with_words(
    store: &dyn lookalike::store::Store,
    products: &[StoredProduct],
    raw: &[Vec<Vec<f32>>],
    words_csv: &Path,
) -> Result<Vec<(String, lookalike::learn::eval::ProductRecall)>> {
    use lookalike::index::fusion::{Fusion, RRF_K};
    use lookalike::learn::eval::{held_out_recall_with_words, WithWords};
    const DEPTH: usize = 100;
    let mut reader =
        csv::Reader::from_path(words_csv).with_context(|| format!("cannot read {}", words_csv.display()))?;
    let mut by_file: HashMap<String, String> = HashMap::new();
    for row in reader.deserialize::<HashMap<String, String>>() {
        let row = row.with_context(|| format!("{}", words_csv.display()))?;
        let (Some(image), Some(words)) = (row.get("image"), row.get("words")) else {
            bail!("{} needs the columns image and words", words_csv.display());
        };
        let name = Path::new(image).file_name().map(|n| n.to_string_lossy().into_owned());
        by_file.insert(name.unwrap_or_default(), words.clone());
    }
    let index_of: HashMap<&str, usize> = products.iter().enumerate().map(|(i, p)| (p.id.as_str(), i)).collect();
    // Word rankings do not depend on the held-out photo: one text search per distinct query.
    let mut searched: HashMap<String, Vec<(usize, f32)>> = HashMap::new();
    let mut per_photo: HashMap<(usize, usize), Vec<(usize, f32)>> = HashMap::new();
    for (own, product) in products.iter().enumerate() {
        for (n, path) in product.image_paths().enumerate() {
            let name = Path::new(path).file_name().map(|n| n.to_string_lossy().into_owned());
            let Some(text) = name.and_then(|name| by_file.get(&name)) else {
                continue;
            };
            if !searched.contains_key(text) {
                let found = store.text_search(&Words::parse(text)?, DEPTH, &Filter::default(), None)?;
                let ranked = found
                    .into_iter()
                    .filter_map(|(id, s)| Some((*index_of.get(id.as_str())?, s)));
                searched.insert(text.clone(), ranked.collect());
            }
            per_photo.insert((own, n), searched[text].clone());
        }
    }
    if per_photo.is_empty() {
        bail!("no photo of the catalogue is named in {}", words_csv.display());
    }
    let mut methods = vec![
        ("photo only".to_string(), WithWords::PhotoOnly),
        ("words only".to_string(), WithWords::WordsOnly),
        (
            format!("photo + words, RRF (k={RRF_K})"),
            WithWords::Fused(Fusion::ReciprocalRank),
        ),
    ];
    for photo_weight in [0.3f32, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9] {
        methods.push((
            format!("photo + words, weighted {photo_weight:.1}/{:.1}", 1.0 - photo_weight),
            WithWords::Fused(Fusion::Weighted { photo_weight }),
        ));
    }
    let kinds: Vec<WithWords> = methods.iter().map(|(_, m)| *m).collect();
    let results = held_out_recall_with_words(raw, &|own, n| per_photo.get(&(own, n)).cloned(), &kinds, DEPTH);
    let file = words_csv
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(methods
        .into_iter()
        .zip(results)
        .map(|((label, _), r)| (format!("{label} ({file})"), r))
        .collect())
}

/// A set of photos for `eval descriptors`: gallery and query photos with their labels.
struct PhotoSet {
    name: String,
    gallery: Vec<(PathBuf, usize)>,
    queries: Vec<(PathBuf, usize)>,
}

fn eval_descriptors(
    embedder: &Embedder,
    db: Option<&str>,
    gallery: Option<&Path>,
    queries: Option<&Path>,
    kinds: &[(String, String)],
    json: bool,
) -> Result<()> {
    use lookalike::catalogue::labelled_images;
    use lookalike::learn::descriptors::{
        class_signature, compare, DescribedSet, Descriptor, View, DESCRIPTORS, POOLINGS, VIEWS,
    };
    use lookalike::linalg::unit;
    let mut sets = Vec::new();
    let mut stored: HashMap<PathBuf, Vec<f32>> = HashMap::new();
    if let Some(db) = db {
        let store = lookalike::store::open_store_read_only(db)?;
        if store
            .manifest()?
            .is_some_and(|m| m.head.is_some() || m.colour.is_some())
        {
            bail!("{db} was indexed through a head or with colour: eval descriptors needs raw backbone features");
        }
        let products = store.products()?;
        let mut set = PhotoSet {
            name: format!("{db}: products, each one's last photo held out"),
            gallery: Vec::new(),
            queries: Vec::new(),
        };
        for (label, product) in products.iter().enumerate() {
            let paths: Vec<PathBuf> = product.image_paths().map(PathBuf::from).collect();
            for (i, (path, vector)) in paths.iter().zip(product.vectors()).enumerate() {
                stored.insert(path.clone(), vector.to_vec());
                let held_out = paths.len() >= 2 && i == paths.len() - 1;
                if held_out { &mut set.queries } else { &mut set.gallery }.push((path.clone(), label));
            }
        }
        if !kinds.is_empty() {
            let queries = queries.expect("clap requires --queries with --kinds");
            let mut categories: Vec<String> = Vec::new();
            let mut kind_set = PhotoSet {
                name: format!("{}: kinds, against {db}", queries.display()),
                gallery: Vec::new(),
                queries: Vec::new(),
            };
            for (_, category) in kinds {
                if !categories.contains(category) {
                    categories.push(category.clone());
                }
            }
            for product in &products {
                let leaf = product.info.category_leaf();
                if let Some(label) = leaf.and_then(|leaf| categories.iter().position(|c| c == leaf)) {
                    kind_set
                        .gallery
                        .extend(product.image_paths().map(|path| (PathBuf::from(path), label)));
                }
            }
            let mut folders: Vec<String> = kinds.iter().map(|(folder, _)| folder.clone()).collect();
            for (path, folder) in labelled_images(queries, &mut folders, false)? {
                let category = &kinds[folder].1;
                let label = categories
                    .iter()
                    .position(|c| c == category)
                    .expect("every kind's category");
                kind_set.queries.push((path, label));
            }
            sets.push(kind_set);
        }
        sets.insert(0, set);
    }
    if let (Some(gallery), Some(queries)) = (gallery, queries) {
        let mut classes = Vec::new();
        let gallery_photos = labelled_images(gallery, &mut classes, true)?;
        sets.push(PhotoSet {
            name: format!("{} against {}: classes", queries.display(), gallery.display()),
            gallery: gallery_photos,
            queries: labelled_images(queries, &mut classes, false)?,
        });
    }
    if sets.is_empty() {
        bail!("give a catalogue (--db) or labelled folders (--gallery and --queries)");
    }

    // Every photo's feature map in each view, pooled each way, once.
    let mut paths: Vec<&PathBuf> = sets
        .iter()
        .flat_map(|set| set.gallery.iter().chain(&set.queries).map(|(path, _)| path))
        .collect();
    paths.sort();
    paths.dedup();
    let mut pooled: HashMap<&PathBuf, Vec<Vec<Vec<f32>>>> = HashMap::new();
    let mut classes: HashMap<&PathBuf, Vec<Vec<f32>>> = HashMap::new();
    let native = embedder.with_feature_map()?;
    for (v, view) in VIEWS.iter().enumerate() {
        let scaled;
        let explainer = match view {
            View::Scaled(scale) => {
                let side = (embedder.spec.input_size as f32 * scale).round() as usize;
                scaled = embedder.at_input_size(side)?.with_feature_map()?;
                &scaled
            }
            View::Native | View::Mirrored => &native,
        };
        let bar = progress_bar(format!("feature maps, view {}", v + 1));
        bar.set_length(paths.len() as u64);
        let mut worst_cosine = 1.0f32;
        for chunk in paths.chunks(16) {
            let photos: Vec<(&PathBuf, lookalike::image::Photo)> = chunk
                .iter()
                .filter_map(|&path| match Shop::read_photo(path) {
                    Ok(mut photo) => {
                        if *view == View::Mirrored {
                            image::imageops::flip_horizontal_in_place(&mut photo.pixels);
                        }
                        Some((path, photo))
                    }
                    Err(err) => {
                        eprintln!("skipped {}: {err:#}", path.display());
                        None
                    }
                })
                .collect();
            let items: Vec<_> = photos.iter().map(|(_, photo)| (photo, None)).collect();
            for ((path, _), (map, embedding)) in photos
                .iter()
                .zip(lookalike::explain::feature_maps_of(explainer, &items)?)
            {
                let vectors: Vec<Vec<f32>> = POOLINGS
                    .iter()
                    .map(|pooling| unit(&pooling.pool(&map.cells, map.channels)))
                    .collect();
                if let (View::Native, Some(vector)) = (view, stored.get(*path)) {
                    let vector = unit(vector);
                    worst_cosine = worst_cosine.min(vector.iter().zip(&vectors[0]).map(|(a, b)| a * b).sum());
                }
                pooled.entry(path).or_default().push(vectors);
                classes
                    .entry(path)
                    .or_default()
                    .push(class_signature(&embedding.logits));
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        if *view == View::Native && !stored.is_empty() {
            eprintln!("average pooling against the catalogue's stored vectors: lowest cosine {worst_cosine:.5}");
        }
    }
    // A photo one view could not read is left out of every view.
    pooled.retain(|_, views| views.len() == VIEWS.len());

    let mut rows = Vec::new();
    for set in &sets {
        let described = |photos: &[(PathBuf, usize)], descriptor: &Descriptor| -> (Vec<Vec<f32>>, Vec<usize>) {
            photos
                .iter()
                .filter_map(|(path, label)| {
                    let views = pooled.get(path)?;
                    Some((descriptor.of(views, &classes[path]), *label))
                })
                .unzip()
        };
        for descriptor in &DESCRIPTORS {
            let (gallery, gallery_labels) = described(&set.gallery, descriptor);
            let (queries, query_labels) = described(&set.queries, descriptor);
            let described = DescribedSet {
                gallery: &gallery,
                gallery_labels: &gallery_labels,
                queries: &queries,
                query_labels: &query_labels,
            };
            for (variant, recall) in compare(&described) {
                rows.push(serde_json::json!({
                    "set": set.name,
                    "pooling": descriptor.name(),
                    "variant": variant.name(),
                    "queries": recall.queries,
                    "gallery": gallery.len(),
                    "recall_at_1": recall.recall_at_1,
                    "recall_at_5": recall.recall_at_5,
                }));
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let mut table =
        crate::output::bordered_table(["set", "pooling", "then", "queries", "gallery", "Recall@1", "Recall@5"]);
    for row in &rows {
        table.add_row([
            row["set"].as_str().unwrap_or_default().to_string(),
            row["pooling"].as_str().unwrap_or_default().to_string(),
            row["variant"].as_str().unwrap_or_default().to_string(),
            row["queries"].to_string(),
            row["gallery"].to_string(),
            format!("{:.3}", row["recall_at_1"].as_f64().unwrap_or_default()),
            format!("{:.3}", row["recall_at_5"].as_f64().unwrap_or_default()),
        ]);
    }
    println!("{table}");
    Ok(())
}

/// `eval kinds`: category precision through the front door.
pub fn eval_kinds(shop: &Shop, photos: &Path, kinds: &[(String, String)], json: bool) -> Result<()> {
    let report = kind_precision(shop, photos, kinds)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let mut header = vec![
        "searched by".to_string(),
        "photos".into(),
        "precision@1".into(),
        "precision@5".into(),
    ];
    header.extend(kinds.iter().map(|(name, category)| format!("{name} ({category}) @1")));
    let mut table = crate::output::bordered_table(header);
    for row in &report.rows {
        let mut cells = vec![
            row.search.clone(),
            row.queries.to_string(),
            format!("{:.3}", row.precision_at_1),
            format!("{:.3}", row.precision_at_5),
        ];
        cells.extend(row.per_kind.iter().map(|(_, p)| format!("{p:.3}")));
        table.add_row(cells);
    }
    println!("{table}");
    println!("the default search searched {:.3} of them whole", report.searched_whole);
    match report.learnt_kinds {
        Some(kinds) => println!("both searches used the {kinds} kinds the catalogue learnt (`train kinds`)"),
        None => println!("the catalogue has not learnt its kinds (`train kinds`)"),
    }
    Ok(())
}

fn eval_products(
    embedder: &Embedder,
    db: &str,
    flip: bool,
    train_share: Option<f32>,
    words: Option<&Path>,
    json: bool,
) -> Result<()> {
    use lookalike::learn::eval::{held_out_product_recall, held_out_product_recall_voted, Aggregation, ProductRecall};
    use lookalike::types::category_key;
    let store = lookalike::store::open_store_read_only(db)?;
    let manifest = store.manifest()?;
    if manifest.as_ref().is_some_and(|m| m.head.is_some()) {
        bail!("{db} was indexed through a head: eval products needs raw backbone features");
    }
    if manifest.as_ref().is_some_and(|m| m.colour.is_some()) && (flip || train_share.is_some()) {
        bail!("--flip and --train-share embed photos again without colour: give a catalogue indexed without --colour");
    }
    let products = store.products()?;
    let raw: Vec<Vec<Vec<f32>>> = products
        .iter()
        .map(|p| unit_rows(p.vectors().map(<[f32]>::to_vec)))
        .collect();
    let mirrored = flip.then(|| mirrored_features(embedder, &products)).transpose()?;
    // A photo and its mirror image, as one vector.
    let with_mirror = |vectors: &[Vec<Vec<f32>>], mirrors: &[Vec<Vec<f32>>]| -> Vec<Vec<Vec<f32>>> {
        vectors
            .iter()
            .zip(mirrors)
            .map(|(views, flipped)| {
                let both = views
                    .iter()
                    .zip(unit_rows(flipped.iter().cloned()))
                    .map(|(v, f)| v.iter().zip(&f).map(|(a, b)| a + b).collect::<Vec<f32>>());
                unit_rows(both)
            })
            .collect()
    };
    let mut rows: Vec<(String, ProductRecall)> = Aggregation::ALL
        .iter()
        .map(|&a| ("raw features".to_string(), held_out_product_recall(&raw, a)))
        .collect();
    let categories: Vec<Option<String>> = products
        .iter()
        .map(|p| p.info.category.as_deref().map(category_key))
        .collect();
    rows.push((
        "raw features, in search's order (category vote)".into(),
        held_out_product_recall_voted(&raw, &categories, None, Aggregation::TopTwo),
    ));
    if let Some(head) = store.head(lookalike::store::HeadRole::Kinds)? {
        let dimension = raw.iter().flatten().next().map_or(0, Vec::len);
        let kinds = lookalike::learn::kinds::ProductKinds::new(&head, &categories, dimension)?;
        rows.push((
            "raw features, in search's order (category vote and learnt kinds)".into(),
            held_out_product_recall_voted(&raw, &categories, Some(&kinds), Aggregation::TopTwo),
        ));
    }
    if let Some(mirrored) = &mirrored {
        let both = with_mirror(&raw, mirrored);
        rows.push((
            "raw features + mirror".into(),
            held_out_product_recall(&both, Aggregation::Best),
        ));
    }
    if let Some(words) = words {
        rows.extend(recall_with_words(&*store, &products, &raw, words)?);
    }
    if let Some(share) = train_share {
        // Products split by a hash of their id: the head never sees a test product.
        let in_train = |p: &StoredProduct| {
            let hash = lookalike::content_hash(p.id.as_bytes());
            (u32::from_str_radix(&hash[..8], 16).expect("hex") as f64 / u32::MAX as f64) < share as f64
        };
        let (train, test): (Vec<usize>, Vec<usize>) = (0..products.len()).partition(|&i| in_train(&products[i]));
        let labelled = |ids: &[usize], last_photo: bool| {
            let mut data = LabelledFeatures {
                features: Vec::new(),
                labels: Vec::new(),
                dimension: products[0].vector.len(),
                classes: ids.iter().map(|&i| products[i].id.clone()).collect(),
            };
            for (class, &i) in ids.iter().enumerate() {
                let views: Vec<&[f32]> = products[i].vectors().collect();
                let chosen: Vec<&[f32]> = match (last_photo, views.len()) {
                    (true, n) if n >= 2 => vec![views[n - 1]],
                    (true, _) => Vec::new(),
                    (false, n) if n >= 2 => views[..n - 1].to_vec(),
                    (false, _) => views,
                };
                for v in chosen {
                    data.features.extend_from_slice(v);
                    data.labels.push(class);
                }
            }
            data
        };
        let options = TrainOptions {
            per_class: 2,
            batch_size: 64,
            ..TrainOptions::default()
        };
        let sha = store.manifest()?.map(|m| m.weights_sha256).unwrap_or_default();
        eprintln!(
            "training a projection head on {} products, testing on {} others...",
            train.len(),
            test.len()
        );
        let head = train_projection(
            &labelled(&train, false),
            &labelled(&train, true),
            &sha,
            &options,
            &mut |_| {},
        )?
        .head;
        let project = |vectors: &[Vec<Vec<f32>>]| -> Vec<Vec<Vec<f32>>> {
            test.iter()
                .map(|&i| {
                    let views = &vectors[i];
                    let out = head.apply(&views.concat(), views.len());
                    out.chunks(head.output_dimension()).map(<[f32]>::to_vec).collect()
                })
                .collect()
        };
        let test_raw: Vec<Vec<Vec<f32>>> = test.iter().map(|&i| raw[i].clone()).collect();
        let unseen = format!("{} unseen products", test.len());
        rows.push((
            format!("raw features, {unseen}"),
            held_out_product_recall(&test_raw, Aggregation::Best),
        ));
        let raw_features: Vec<Vec<Vec<f32>>> = products
            .iter()
            .map(|p| p.vectors().map(<[f32]>::to_vec).collect())
            .collect();
        rows.push((
            format!("metric head ({} training products), {unseen}", train.len()),
            held_out_product_recall(&project(&raw_features), Aggregation::Best),
        ));
        if let Some(mirrored) = &mirrored {
            // The head takes raw features: the mean of a photo's and its mirror's.
            let averaged: Vec<Vec<Vec<f32>>> = raw_features
                .iter()
                .zip(mirrored)
                .map(|(views, flipped)| {
                    views
                        .iter()
                        .zip(flipped)
                        .map(|(v, f)| v.iter().zip(f).map(|(a, b)| (a + b) / 2.0).collect())
                        .collect()
                })
                .collect();
            rows.push((
                format!("metric head + mirror, {unseen}"),
                held_out_product_recall(&project(&averaged), Aggregation::Best),
            ));
        }
    }
    if json {
        let body: Vec<serde_json::Value> = rows
            .iter()
            .map(|(features, r)| serde_json::json!({ "features": features, "result": r }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    let mut table =
        crate::output::bordered_table(["features", "a product scores by", "queries", "Recall@1", "Recall@5"]);
    for (features, r) in &rows {
        let by = match r.aggregation {
            Aggregation::Best => "its best photo",
            Aggregation::TopTwo => "its two best photos",
            Aggregation::Centroid => "the mean of its photos",
            Aggregation::MainPhotoOnly => "its main photo only",
        };
        table.add_row([
            features.clone(),
            by.to_string(),
            r.queries.to_string(),
            format!("{:.3}", r.recall_at_1),
            format!("{:.3}", r.recall_at_5),
        ]);
    }
    println!("{table}");
    Ok(())
}

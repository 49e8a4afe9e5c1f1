//! The front door: a catalogue opened with the rules for its model, answering the questions the
//! CLI, the server and a program embedding lookalike ask, each in one place.
//!
//! ```no_run
//! use lookalike::shop::{OpenOptions, SearchRequest, Shop};
//!
//! fn main() -> anyhow::Result<()> {
//!     let shop = Shop::open("shop.db", OpenOptions::default())?;
//!     let photo = shop.embed_file("query.jpg".as_ref())?;
//!     let answer = shop.search(&SearchRequest::photo(&photo, 5))?;
//!     for hit in answer.hits {
//!         println!("{} {:.3} {}", hit.product.id, hit.score, hit.product.info.title.unwrap_or_default());
//!     }
//!     Ok(())
//! }
//! ```

use std::path::Path;
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Context, Result};

use crate::catalogue::indexer::embed_files;
use crate::index::SearchMode;
use crate::learn::head::{Head, HeadKind};
use crate::model::{BackboneSpec, Embedder, ImageEmbedding, ModelDir, Precision, DEFAULT_BACKBONE};
use crate::recommend::{NoSuchProduct, Query, Recommender};
use crate::store::{open_store, open_store_read_only, Store};
use crate::types::{Filter, Metric, Scored, Words};

/// Which model answers, and how a catalogue is opened.
#[derive(Clone)]
pub struct OpenOptions {
    pub models: ModelDir,
    /// The backbone of a new catalogue; an existing one is answered with the one that built it,
    /// and asking for another is an error.
    pub backbone: Option<BackboneSpec>,
    /// The precision of a new catalogue; as `backbone` for an existing one.
    pub precision: Option<Precision>,
    /// Inference threads.
    pub threads: usize,
    /// How an in-memory catalogue (SQLite) finds candidates.
    pub search: SearchMode,
    /// Never create, change or upgrade the catalogue (a read-only SQLite file or folder works).
    pub read_only: bool,
    /// The classifier that hybrid searches keep to the photo's likely categories with.
    pub classifier: Option<Head>,
}

impl Default for OpenOptions {
    /// Models from `$LOOKALIKE_MODELS` (else this checkout's `models/`), the catalogue's own model,
    /// every core, exact search, read-only, no classifier.
    fn default() -> Self {
        Self {
            models: ModelDir::locate(None),
            backbone: None,
            precision: None,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            search: SearchMode::Exact,
            read_only: true,
            classifier: None,
        }
    }
}

impl OpenOptions {
    /// The embedder for `store` (or for a new catalogue, without one): the backbone and precision
    /// that built it, with its projection head or colour signature; for a new one, those asked
    /// for or the defaults. Asking an existing catalogue for another backbone or precision is an
    /// error, as its vectors could not be compared with the new ones.
    pub fn embedder(&self, store: Option<&dyn Store>) -> Result<Embedder> {
        let manifest = match store {
            Some(store) => store.manifest()?,
            None => None,
        };
        let built = manifest.as_ref().and_then(|m| Some((m.backbone()?, m.precision(), m)));
        let embedder = match built {
            Some((built, _, _)) if self.backbone.is_some_and(|asked| asked.name != built.name) => bail!(
                "this catalogue was built with {}; it cannot be searched or extended with {} \
                 (index into a new database for another backbone)",
                built.name,
                self.backbone.map_or("", |b| b.name)
            ),
            Some((built, precision, _)) if self.precision.is_some_and(|asked| asked != precision) => bail!(
                "this catalogue's vectors were made by {} in {precision}; it cannot be searched or extended \
                 in {} (index into a new database for another precision)",
                built.name,
                self.precision.unwrap_or_default()
            ),
            Some((built, _, manifest)) => Embedder::load_like(&self.models, built, manifest, self.threads)?,
            None => Embedder::load_as(
                &self.models,
                self.backbone.unwrap_or(DEFAULT_BACKBONE),
                self.precision.unwrap_or_default(),
                self.threads,
            )?,
        };
        let embedder = match store {
            Some(store) => embedder.for_catalogue(store.head()?, manifest.and_then(|m| m.colour))?,
            None => embedder,
        };
        match &self.classifier {
            Some(classifier) => {
                check_head(classifier, &embedder, HeadKind::Classifier).context("cannot use this classifier")?;
                embedder.for_classifier(classifier)
            }
            None => Ok(embedder),
        }
    }
}

/// Whether `head` is of `kind` and was trained on `embedder`'s backbone features.
pub fn check_head(head: &Head, embedder: &Embedder, kind: HeadKind) -> Result<()> {
    head.check_backbone(&embedder.manifest().weights_sha256)?;
    // Fine-tuned blocks are checked against the backbone when the embedder taps their input.
    if head.trunk.is_none() {
        head.check_input(embedder.backbone_dimension())?;
    }
    if head.kind != kind {
        bail!("it is a {:?} head; this needs a {kind:?} head", head.kind);
    }
    Ok(())
}

/// What to search with, and how.
#[derive(Clone, Debug)]
pub struct SearchRequest<'a> {
    pub photo: Option<&'a ImageEmbedding>,
    pub words: Option<&'a Words>,
    pub k: usize,
    pub metric: Metric,
    pub filter: Filter,
    /// Variety over relevance, 0 to 1 (maximal marginal relevance).
    pub diversity: f32,
    /// Keep to the categories the classifier finds likely for the photo, until their
    /// probabilities add up to this (hybrid search).
    pub likely_categories: Option<f32>,
}

impl<'a> SearchRequest<'a> {
    /// The `k` products that look most like `photo`, one per group, by cosine.
    pub fn photo(photo: &'a ImageEmbedding, k: usize) -> Self {
        Self {
            photo: Some(photo),
            words: None,
            k,
            metric: Metric::Cosine,
            filter: Filter {
                one_per_group: true,
                ..Filter::default()
            },
            diversity: 0.0,
            likely_categories: None,
        }
    }
}

/// What a search found.
#[derive(Debug)]
pub struct Answer {
    pub hits: Vec<Scored>,
    /// What the scores are: the metric's, or `None` for relevance (words, alone or with a photo).
    pub scored_by: Option<Metric>,
    /// The photo's likely categories with their probabilities, when the search kept to them.
    pub likely_categories: Option<Vec<(String, f32)>>,
}

/// A catalogue opened to answer.
pub struct Shop {
    catalogue: Recommender,
    /// Loaded when first needed: words, `similar` and `recommend` need no model.
    embedder: OnceLock<Arc<Embedder>>,
    options: OpenOptions,
}

impl Shop {
    /// Opens the catalogue at `location` (a SQLite file, or a `postgres://` URL). Read-only, it
    /// must exist and hold products.
    pub fn open(location: &str, options: OpenOptions) -> Result<Self> {
        let store = if options.read_only {
            open_store_read_only(location)?
        } else {
            open_store(location)?
        };
        if options.read_only && store.manifest()?.is_none() {
            bail!(
                "the catalogue at {} is empty (run `lookalike index` first)",
                crate::store::postgres::redact(location)
            );
        }
        Self::with_store(store, options)
    }

    /// The catalogue in `store`.
    pub fn with_store(store: Box<dyn Store>, options: OpenOptions) -> Result<Self> {
        Ok(Self {
            catalogue: Recommender::with_search(store, options.search)?,
            embedder: OnceLock::new(),
            options,
        })
    }

    /// The embedder this catalogue's queries are embedded with ([`OpenOptions::embedder`]), loaded
    /// at the first call.
    pub fn embedder(&self) -> Result<Arc<Embedder>> {
        if let Some(embedder) = self.embedder.get() {
            return Ok(embedder.clone());
        }
        let embedder = self.catalogue.with_store(|store| {
            let embedder = self.options.embedder(Some(&*store))?;
            store
                .ensure_manifest(&embedder.manifest())
                .context("cannot search this catalogue")?;
            Ok(embedder)
        })?;
        Ok(self.embedder.get_or_init(|| Arc::new(embedder)).clone())
    }

    /// The photo at `path`, embedded as this catalogue's products were.
    pub fn embed_file(&self, path: &Path) -> Result<ImageEmbedding> {
        let embedder = self.embedder()?;
        embed_files(&embedder, &[path.to_path_buf()])?
            .remove(0)
            .with_context(|| format!("cannot use query image {}", path.display()))
    }

    /// The products for a photo, words or both.
    pub fn search(&self, request: &SearchRequest) -> Result<Answer> {
        let mut filter = request.filter.clone();
        let likely_categories = match (request.likely_categories, request.photo) {
            (None, _) => None,
            (Some(_), None) => bail!("a search kept to the photo's likely categories needs a photo"),
            (Some(coverage), Some(photo)) => {
                let classifier = self
                    .options
                    .classifier
                    .as_ref()
                    .context("a search kept to the photo's likely categories needs a classifier head")?;
                let likely = keep_to_likely_categories(&mut filter, classifier, &photo.classifier_input, coverage)?;
                Some(likely)
            }
        };
        let query = Query {
            image: request.photo.map(|p| p.features.as_slice()),
            words: request.words,
        };
        let hits = self
            .catalogue
            .query(query, request.k, request.metric, &filter, request.diversity)?;
        Ok(Answer {
            hits,
            // Words rank by relevance, alone or fused with the photo's similarity.
            scored_by: request.words.is_none().then_some(request.metric),
            likely_categories,
        })
    }

    /// The products that look like product `id` (its every photo a query), never of its own group.
    pub fn similar(&self, id: &str, k: usize, metric: Metric, filter: &Filter, diversity: f32) -> Result<Vec<Scored>> {
        self.catalogue
            .similar(id, k, metric, filter, diversity)?
            .ok_or_else(|| NoSuchProduct(id.to_string()).into())
    }

    /// "More like these, less like those" (see [`Recommender::recommend`]).
    pub fn recommend(
        &self,
        positive: &[String],
        negative: &[String],
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Scored>> {
        self.catalogue.recommend(positive, negative, k, filter)
    }

    /// The classifier hybrid searches keep to a photo's likely categories with.
    pub fn classifier(&self) -> Option<&Head> {
        self.options.classifier.as_ref()
    }

    /// The catalogue itself, for what the front door does not answer yet.
    pub fn catalogue(&self) -> &Recommender {
        &self.catalogue
    }

    /// Ends a one-shot command's use (see [`Recommender::finish`]).
    pub fn finish(self) {
        self.catalogue.finish();
    }
}

/// Keeps `filter` to the categories `classifier` finds likely for a photo (`input`: what it
/// reads), most likely first until their probabilities add up to `coverage`; returns them.
pub fn keep_to_likely_categories(
    filter: &mut Filter,
    classifier: &Head,
    input: &[f32],
    coverage: f32,
) -> Result<Vec<(String, f32)>> {
    let likely = classifier.likely_classes(input, coverage)?;
    filter.any_category = likely.iter().map(|(category, _)| category.clone()).collect();
    Ok(likely)
}

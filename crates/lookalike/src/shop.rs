//! The front door: a catalogue opened with the rules for its model, answering the questions the
//! CLI, the server and a program embedding lookalike ask, each in one place.
//!
//! ```no_run
//! use lookalike::shop::{Framing, OpenOptions, SearchRequest, Shop};
//!
//! fn main() -> anyhow::Result<()> {
//!     let shop = Shop::open("shop.db", OpenOptions::default())?;
//!     // The product found in the photo (or all of it), as `lookalike search` does.
//!     let photo = shop.embed_photo("query.jpg".as_ref(), &Framing::default())?;
//!     let answer = shop.search(&SearchRequest::photo(&photo.embedding, 5))?;
//!     for hit in answer.hits {
//!         println!("{} {:.3} {}", hit.product.id, hit.score, hit.product.info.title.unwrap_or_default());
//!     }
//!     Ok(())
//! }
//! ```

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use rayon::prelude::*;

use crate::catalogue::export::{export_json, export_npy, export_related_csv, export_related_jsonl};
use crate::catalogue::indexer::{in_shard, index_catalogue, IndexOptions, IndexReport, DEFAULT_BATCH_SIZE};
use crate::catalogue::{read_catalogue, Catalogue, Layout};
use crate::error::{Error, ImageProblem, Result};
use crate::explain::{explain, feature_maps, feature_maps_of, most_alike_pair, Explanation, FeatureMap};
use crate::files::write_atomically;
use crate::image::{decode_photo, read_image_file, ImageError, Photo};
use crate::index::dedup::{duplicate_groups, DuplicateGroup};
use crate::index::local_cells::QueryCells;
use crate::index::related::{Previous, Work};
use crate::index::{SearchMode, VectorIndex};
use crate::learn::head::{Head, HeadKind};
use crate::learn::kinds::{kind_of, per_kind_budget, Backgrounds, KindExamples, VIEWS_PER_PHOTO};
use crate::locate::{
    narrowed, part_beats_whole, pick, regions, search_windows, shifted, strongest, whole_is_enough, Candidate,
    KEPT_PHOTO_SIDE, MAX_REGIONS, NARROWED_CANDIDATES, REGION_CANDIDATES,
};
use crate::model::batcher::SubmitError;
use crate::model::{BackboneSpec, Embedder, ImageEmbedding, ModelDir, Precision, DEFAULT_BACKBONE};
use crate::recommend::{related_for_all, IndexLoad, Query, Recommender};
use crate::store::postgres::{is_postgres_url, redact};
use crate::store::{
    copy_catalogue, open_store, open_store_read_only, HeadRole, PhotoCells, SearchSide, Store, WriteMode,
};
use crate::types::{
    check_id, check_text, Filter, Metric, Page, PhotoBox, Scored, StoredProduct, Words, MAX_TEXT_BYTES,
};

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
            Some((built, _, _)) if self.backbone.is_some_and(|asked| asked.name != built.name) => {
                return Err(Error::WrongModel(format!(
                    "this catalogue was built with {}; it cannot be searched or extended with {} \
                     (index into a new database for another backbone)",
                    built.name,
                    self.backbone.map_or("", |b| b.name)
                )))
            }
            Some((built, precision, _)) if self.precision.is_some_and(|asked| asked != precision) => {
                return Err(Error::WrongModel(format!(
                    "this catalogue's vectors were made by {} in {precision}; it cannot be searched or \
                     extended in {} (index into a new database for another precision)",
                    built.name,
                    self.precision.unwrap_or_default()
                )))
            }
            Some((built, _, manifest)) => Embedder::load_like(&self.models, built, manifest, self.threads)?,
            None => Embedder::load_as(
                &self.models,
                self.backbone.unwrap_or(DEFAULT_BACKBONE),
                self.precision.unwrap_or_default(),
                self.threads,
            )?,
        };
        let embedder = match store {
            Some(store) => {
                embedder.for_catalogue(store.head(HeadRole::Projection)?, manifest.and_then(|m| m.colour))?
            }
            None => embedder,
        };
        match &self.classifier {
            Some(classifier) => {
                check_head(classifier, &embedder, HeadKind::Classifier)
                    .map_err(|err| Error::WrongModel(format!("cannot use this classifier: {err}")))?;
                Ok(embedder.for_classifier(classifier)?)
            }
            None => Ok(embedder),
        }
    }
}

/// Whether `head` is of `kind` and was trained on `embedder`'s backbone features.
pub fn check_head(head: &Head, embedder: &Embedder, kind: HeadKind) -> Result<()> {
    let wrong = |err: anyhow::Error| Error::WrongModel(format!("{err:#}"));
    head.check_backbone(&embedder.manifest().weights_sha256)
        .map_err(wrong)?;
    // Fine-tuned blocks are checked against the backbone when the embedder taps their input.
    if head.trunk.is_none() {
        head.check_input(embedder.backbone_dimension()).map_err(wrong)?;
    }
    if head.kind != kind {
        return Err(Error::WrongModel(format!(
            "it is a {:?} head; this needs a {kind:?} head",
            head.kind
        )));
    }
    Ok(())
}

/// Which part of a query photo is searched.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum Framing {
    /// The whole photo when it matches a product closely, else the part of it that matches a
    /// product best ([`crate::locate`]).
    #[default]
    FindProduct,
    /// The whole photo, however busy.
    Whole,
    /// This part of the photo, in its own pixels after EXIF orientation.
    Box(PhotoBox),
}

/// A query photo embedded, and the part of it that was.
#[derive(Debug, Clone)]
pub struct Located {
    pub embedding: ImageEmbedding,
    /// `None`: the whole photo.
    pub region: Option<PhotoBox>,
    /// The part's last feature map, when asked for (to explain its results).
    pub feature_map: Option<FeatureMap>,
    /// The whole photo, when the part is one the search found in it: what kind of product the
    /// photo shows is read from all of it ([`SearchRequest::whole_photo`]).
    pub whole_photo: Option<ImageEmbedding>,
    /// The part's local cells, when it is one the search found in a busy photo or a box: its
    /// best products are ordered again by how alike their photos are to it, place by place
    /// ([`SearchRequest::part_cells`]).
    pub cells: Option<QueryCells>,
}

impl Located {
    /// `region` of a photo (`None`: all of it) as it was embedded, with its feature map when one
    /// was made; not (yet) a part found in the photo, so no whole photo beside it.
    pub fn embedded(region: Option<PhotoBox>, (embedding, feature_map): (ImageEmbedding, Option<FeatureMap>)) -> Self {
        Self {
            embedding,
            region,
            feature_map,
            whole_photo: None,
            cells: None,
        }
    }
}

/// A product found in a photo ("shop the look").
#[derive(Debug, Clone)]
pub struct FoundRegion {
    pub region: PhotoBox,
    /// The cosine of its best catalogue match.
    pub score: f32,
    pub embedding: ImageEmbedding,
    /// Its local cells, when it is a part of the photo ([`Located::cells`]).
    pub cells: Option<QueryCells>,
}

/// What to search with, and how.
#[derive(Clone, Debug)]
pub struct SearchRequest<'a> {
    pub photo: Option<&'a ImageEmbedding>,
    /// The whole photo when `photo` is a part of it ([`Located::whole_photo`]).
    pub whole_photo: Option<&'a ImageEmbedding>,
    /// The part's local cells when `photo` is a part found by search or a box ([`Located::cells`]):
    /// its [`crate::index::local_cells::LOCAL_RERANK_DEPTH`] best products are ordered again by
    /// their photos' likeness to them.
    pub part_cells: Option<&'a QueryCells>,
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
            whole_photo: None,
            part_cells: None,
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

    /// [`Self::photo`] for a photo located by [`Shop::locate`]: the part searched, and the
    /// whole photo it was found in.
    pub fn located(located: &'a Located, k: usize) -> Self {
        Self {
            whole_photo: located.whole_photo.as_ref(),
            part_cells: located.cells.as_ref(),
            ..Self::photo(&located.embedding, k)
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
    location: String,
    /// The store until the first question that needs memory takes it into `answering`; jobs
    /// over the whole catalogue (indexing, export, …) never load memory.
    store: Mutex<Option<Box<dyn Store>>>,
    answering: OnceLock<Recommender>,
    /// Loaded when first needed (words, `similar` and `recommend` need no model); replaced when
    /// indexing sets another head or colour weight.
    embedder: Mutex<Option<Arc<Embedder>>>,
    /// The embedder that also gives the last feature map (explanations), made from `embedder`
    /// when first asked: the two, kept together.
    explainer: Mutex<Option<(Arc<Embedder>, Arc<Embedder>)>>,
    /// Feature maps of catalogue photos explained lately, by file (see [`KEPT_FEATURE_MAPS`]).
    catalogue_maps: Mutex<RecentMaps>,
    options: OpenOptions,
}

/// Catalogue photos whose feature maps are kept for the next explanation: a Lite map is 64
/// cells of 1,280 floats (320 KiB), so this is 20 MiB at most, and a page of results asked
/// "why?" twice decodes and embeds its photos once.
pub const KEPT_FEATURE_MAPS: usize = 64;

/// The feature maps of the last [`KEPT_FEATURE_MAPS`] catalogue photos, by file, size and change time.
#[derive(Default)]
struct RecentMaps {
    maps: HashMap<String, Arc<FeatureMap>>,
    order: std::collections::VecDeque<String>,
}

impl RecentMaps {
    fn get(&self, key: &str) -> Option<Arc<FeatureMap>> {
        self.maps.get(key).cloned()
    }

    fn keep(&mut self, key: String, map: Arc<FeatureMap>) {
        if self.maps.insert(key.clone(), map).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > KEPT_FEATURE_MAPS {
            if let Some(oldest) = self.order.pop_front() {
                self.maps.remove(&oldest);
            }
        }
    }
}

impl Shop {
    /// Opens the catalogue at `location` (a SQLite file, or a `postgres://` URL). Read-only, it
    /// must exist and hold products; writable, it is created when missing.
    pub fn open(location: &str, options: OpenOptions) -> Result<Self> {
        let store = if options.read_only {
            open_store_read_only(location)?
        } else {
            open_store(location)?
        };
        let shop = Self::with_store(location, store, options);
        if shop.options.read_only {
            shop.check_not_empty()?;
        }
        Ok(shop)
    }

    /// Opens a catalogue that must exist and hold products, even to change it.
    pub fn open_existing(location: &str, options: OpenOptions) -> Result<Self> {
        if !is_postgres_url(location) && !Path::new(location).is_file() {
            return Err(Error::not_found(format!(
                "no catalogue database at {location} (create it with `lookalike index`)"
            )));
        }
        let shop = Self::open(location, options)?;
        shop.check_not_empty()?;
        Ok(shop)
    }

    /// The catalogue in `store`, found at `location` (named in messages).
    pub fn with_store(location: &str, store: Box<dyn Store>, options: OpenOptions) -> Self {
        Self {
            location: location.to_string(),
            store: Mutex::new(Some(store)),
            answering: OnceLock::new(),
            embedder: Mutex::new(None),
            explainer: Mutex::new(None),
            catalogue_maps: Mutex::new(RecentMaps::default()),
            options,
        }
    }

    fn check_not_empty(&self) -> Result<()> {
        if self.on_store(|store| store.manifest())?.is_none() {
            return Err(Error::not_found(format!(
                "the catalogue at {} is empty (run `lookalike index` first)",
                redact(&self.location)
            )));
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        match self.options.read_only {
            true => Err(Error::invalid(format!(
                "the catalogue at {} was opened read-only",
                redact(&self.location)
            ))),
            false => Ok(()),
        }
    }

    /// Where the catalogue is, its password hidden.
    pub fn location(&self) -> String {
        redact(&self.location)
    }

    /// `work` on the store: through memory's lock once it answers (writes then follow it through
    /// the change log), else directly.
    fn on_store<T>(&self, work: impl FnOnce(&mut dyn Store) -> anyhow::Result<T>) -> anyhow::Result<T> {
        if let Some(answering) = self.answering.get() {
            return answering.with_store(work);
        }
        let mut store = self.store.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match store.as_deref_mut() {
            Some(store) => work(store),
            // Taken by `answering` meanwhile.
            None => {
                drop(store);
                self.answering()?.with_store(work)
            }
        }
    }

    /// The catalogue answering from memory (SQLite) or in SQL (PostgreSQL), loaded at the first call.
    fn answering(&self) -> anyhow::Result<&Recommender> {
        if let Some(answering) = self.answering.get() {
            return Ok(answering);
        }
        let mut store = self.store.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(answering) = self.answering.get() {
            return Ok(answering);
        }
        let taken = store.take().context("the catalogue could not be loaded before")?;
        let answering = Recommender::with_search(taken, self.options.search)?;
        Ok(self.answering.get_or_init(|| answering))
    }

    /// Loads what answers questions now rather than at the first one; how the index file was
    /// used, where there is one.
    pub fn load(&self) -> Result<Option<&IndexLoad>> {
        Ok(self.answering()?.index_load())
    }

    /// The embedder this catalogue's queries are embedded with ([`OpenOptions::embedder`]), loaded
    /// at the first call.
    pub fn embedder(&self) -> Result<Arc<Embedder>> {
        let mut loaded = self.embedder.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(embedder) = &*loaded {
            return Ok(embedder.clone());
        }
        let embedder = self.on_store(|store| {
            let embedder = self.options.embedder(Some(&*store))?;
            if !self.options.read_only || store.manifest()?.is_some() {
                store
                    .ensure_manifest(&embedder.manifest())
                    .context("cannot search this catalogue")?;
            }
            Ok(embedder)
        })?;
        Ok(loaded.insert(Arc::new(embedder)).clone())
    }

    /// The photo at `path`, embedded whole as this catalogue's products were.
    pub fn embed_file(&self, path: &Path) -> Result<ImageEmbedding> {
        Ok(self.embed_photo(path, &Framing::Whole)?.embedding)
    }

    /// The photo at `path` read and decoded as a query.
    pub fn read_photo(path: &Path) -> Result<Photo> {
        Ok(read_image_file(path)
            .and_then(|bytes| decode_photo(&bytes))
            .with_context(|| format!("cannot use query image {}", path.display()))?
            .reduced(KEPT_PHOTO_SIDE))
    }

    /// The photo at `path` embedded as `framing` says (a region that keeps nothing of the photo
    /// is [`Error::InvalidInput`]).
    pub fn embed_photo(&self, path: &Path, framing: &Framing) -> Result<Located> {
        self.locate(&Self::read_photo(path)?, framing, false)
    }

    /// `photo` embedded as `framing` says; `with_feature_map`: the part searched keeps its last
    /// feature map, for [`Self::explain`] (the network runs once for both). A box keeps its
    /// cells, as a part found by search does ([`Located::cells`]).
    pub fn locate(&self, photo: &Photo, framing: &Framing, with_feature_map: bool) -> Result<Located> {
        let region = match framing {
            Framing::Box(region) => Some(region),
            Framing::Whole | Framing::FindProduct => None,
        };
        let boxed = region.is_some();
        let mut located = Located::embedded(
            region.copied(),
            self.embed_parts_with(photo, &[region], with_feature_map || boxed)?
                .remove(0),
        );
        if boxed {
            located.cells = located.feature_map.as_ref().map(FeatureMap::query_cells);
            if !with_feature_map {
                located.feature_map = None;
            }
        }
        match framing {
            Framing::FindProduct => self.find_part(photo, located, with_feature_map),
            Framing::Whole | Framing::Box(_) => Ok(located),
        }
    }

    /// The part of `photo` to search by default, given `whole`, the whole photo embedded: the
    /// whole photo when it matches a product closely or is too small to cut up, else the part
    /// [`Self::search_part`] keeps among it and its windows (embedded in one batch with their
    /// feature maps, which the parts narrowed need).
    pub fn find_part(&self, photo: &Photo, whole: Located, with_feature_map: bool) -> Result<Located> {
        let windows = self.windows_to_search(photo, &whole.embedding)?;
        if windows.is_empty() {
            return Ok(whole);
        }
        let parts: Vec<Option<&PhotoBox>> = windows.iter().map(Some).collect();
        let embedded = self.embed_parts_with(photo, &parts, true)?;
        let windows = windows
            .iter()
            .zip(embedded)
            .map(|(window, embedded)| Located::embedded(Some(*window), embedded));
        self.search_part(photo, std::iter::once(whole).chain(windows).collect(), with_feature_map)
    }

    /// The part of a busy photo to search, among `parts` (the whole photo, then its windows): the
    /// [`NARROWED_CANDIDATES`] whose best matches score highest are narrowed ([`Self::narrow_all`]),
    /// and the narrowed part whose best match scores highest is kept when it beats the whole
    /// photo's ([`part_beats_whole`]), else the whole photo.
    fn search_part(&self, photo: &Photo, parts: Vec<Located>, with_feature_map: bool) -> Result<Located> {
        let mut bests = parts
            .iter()
            .map(|part| self.best_match(&part.embedding))
            .collect::<Result<Vec<Option<Scored>>>>()?;
        let scores: Vec<f32> = bests.iter().map(score_of).collect();
        let whole = parts[0].clone();
        let mut parts: Vec<Option<Located>> = parts.into_iter().map(Some).collect();
        let (mut narrowed, mut to_narrow) = (Vec::new(), Vec::new());
        for i in strongest(&scores, NARROWED_CANDIDATES) {
            let part = parts[i].take().expect("each part once");
            match bests[i].take() {
                Some(best) => to_narrow.push((part, best)),
                None => narrowed.push(part),
            }
        }
        // With their feature maps, which the part kept gives its cells from.
        narrowed.extend(self.narrow_all(photo, to_narrow, true)?);
        let mut narrowed_bests = narrowed
            .iter()
            .map(|part| self.best_match(&part.embedding))
            .collect::<Result<Vec<Option<Scored>>>>()?;
        let narrowed_scores: Vec<f32> = narrowed_bests.iter().map(score_of).collect();
        if narrowed.is_empty() {
            return Err(Error::invalid("a photo has at least one part to search"));
        }
        let picked = pick(&narrowed_scores);
        if !part_beats_whole(scores[0], narrowed_scores[picked]) {
            return Ok(whole);
        }
        let kept = (narrowed.swap_remove(picked), narrowed_bests.swap_remove(picked));
        let mut part = self.placed_best(photo, vec![kept], true)?.remove(0).0;
        if part.region.is_some() {
            part.whole_photo = Some(whole.embedding);
            part.cells = part.feature_map.as_ref().map(FeatureMap::query_cells);
        }
        if !with_feature_map {
            part.feature_map = None;
        }
        Ok(part)
    }

    /// Each of `parts` of a busy photo (with its best match) or it moved a little ([`shifted`]),
    /// whichever's best match scores highest (the part itself on a tie), with that match; every
    /// part's moves embedded in one batch.
    fn placed_best(
        &self,
        photo: &Photo,
        parts: Vec<(Located, Option<Scored>)>,
        with_feature_map: bool,
    ) -> Result<Vec<(Located, Option<Scored>)>> {
        let moves: Vec<Vec<PhotoBox>> = parts
            .iter()
            .map(|(part, _)| {
                part.region
                    .map_or_else(Vec::new, |region| shifted(&region, photo.width, photo.height))
            })
            .collect();
        let boxes: Vec<Option<&PhotoBox>> = moves.iter().flatten().map(Some).collect();
        let mut embedded = self.embed_parts_with(photo, &boxes, with_feature_map)?.into_iter();
        let mut placed = Vec::with_capacity(parts.len());
        for (part, moved) in parts.into_iter().zip(moves) {
            let mut candidates = vec![part];
            for region in moved {
                let located = Located::embedded(Some(region), embedded.next().expect("one per moved box"));
                let best = self.best_match(&located.embedding)?;
                candidates.push((located, best));
            }
            let scores: Vec<f32> = candidates.iter().map(|(_, best)| score_of(best)).collect();
            placed.push(candidates.swap_remove(pick(&scores)));
        }
        Ok(placed)
    }

    /// Parts of a busy photo, each narrowed to where it is like its best match
    /// ([`crate::locate::narrowed`]) and embedded again, with its feature map when
    /// `with_feature_map`; a part nothing narrows stays as it is. The parts' missing feature maps
    /// are made in one batch, and the narrowed parts embedded in another.
    pub fn narrow_all(
        &self,
        photo: &Photo,
        parts: Vec<(Located, Scored)>,
        with_feature_map: bool,
    ) -> Result<Vec<Located>> {
        let lacking: Vec<Option<&PhotoBox>> = parts
            .iter()
            .filter(|(part, _)| part.feature_map.is_none())
            .map(|(part, _)| part.region.as_ref())
            .collect();
        let mut made = feature_maps(&*self.explainer()?, photo, &lacking)?.into_iter();
        let mut kept = Vec::with_capacity(parts.len());
        let mut regions = Vec::new();
        for (mut part, best) in parts {
            let part_map = match part.feature_map.take() {
                Some(map) => map,
                None => made.next().expect("a map for each part lacking one").0,
            };
            // The match's backbone features: its stored vector, unless a head or colour made that.
            let stored = best.matched_vector();
            let likeness = if stored.len() == part_map.channels {
                Some(stored.to_vec())
            } else {
                self.catalogue_maps(&[best.matched_path()])?
                    .remove(0)
                    .map(|map| map.pooled())
            };
            let heat = likeness.map(|likeness| part_map.heatmap(&part_map.shares(&likeness)));
            let region = heat.and_then(|heat| narrowed(&heat, photo.width, photo.height));
            if region.is_none() {
                part.feature_map = with_feature_map.then_some(part_map);
            }
            regions.extend(region);
            kept.push((part, region));
        }
        let boxes: Vec<Option<&PhotoBox>> = regions.iter().map(Some).collect();
        let mut embedded = self.embed_parts_with(photo, &boxes, with_feature_map)?.into_iter();
        Ok(kept
            .into_iter()
            .map(|(part, region)| match region {
                None => part,
                Some(region) => Located::embedded(
                    Some(region),
                    embedded.next().expect("an embedding for each narrowed part"),
                ),
            })
            .collect())
    }

    /// "Shop the look" for the photo at `path`: every product found in it, best first.
    pub fn find_products(&self, path: &Path) -> Result<Vec<FoundRegion>> {
        self.products_in(&Self::read_photo(path)?)
    }

    /// "Shop the look" for `photo`: it and its windows embedded in one batch, the windows with
    /// the feature maps their narrowing needs, and kept by [`Self::regions_of`].
    pub fn products_in(&self, photo: &Photo) -> Result<Vec<FoundRegion>> {
        let windows = search_windows(photo.width, photo.height);
        let parts: Vec<Option<&PhotoBox>> = std::iter::once(None).chain(windows.iter().map(Some)).collect();
        let mut embedded = self.embed_parts_with(photo, &parts, !windows.is_empty())?.into_iter();
        let (whole, _) = embedded.next().expect("the whole photo is embedded");
        let windows = windows
            .into_iter()
            .zip(embedded)
            .map(|(window, embedded)| Located::embedded(Some(window), embedded))
            .collect();
        self.regions_of(photo, whole, windows)
    }

    /// "Shop the look" without looking for products: the whole photo (`whole`, embedded) as
    /// its one region, as for a photo that matches a product closely (none when the catalogue is
    /// empty). What a server too busy to search photos in parts answers.
    pub fn whole_photo_region(&self, photo: &Photo, whole: ImageEmbedding) -> Result<Vec<FoundRegion>> {
        self.regions_of(photo, whole, Vec::new())
    }

    /// [`Self::embed_parts`], each part with its last feature map when `with_feature_map`.
    fn embed_parts_with(
        &self,
        photo: &Photo,
        parts: &[Option<&PhotoBox>],
        with_feature_map: bool,
    ) -> Result<Vec<(ImageEmbedding, Option<FeatureMap>)>> {
        Ok(if with_feature_map {
            let maps = feature_maps(&*self.explainer()?, photo, parts)?;
            maps.into_iter()
                .map(|(map, embedding)| (embedding, Some(map)))
                .collect()
        } else {
            let embedded = self.embed_parts(photo, parts)?;
            embedded.into_iter().map(|embedding| (embedding, None)).collect()
        })
    }

    /// Each of `parts` of `photo` (`None`: the whole photo) embedded, in one batch.
    fn embed_parts(&self, photo: &Photo, parts: &[Option<&PhotoBox>]) -> Result<Vec<ImageEmbedding>> {
        if parts.is_empty() {
            return Ok(Vec::new());
        }
        let embedder = self.embedder()?;
        let out = embedder.run(&photo.batch(&embedder.preprocessing, parts)?, parts.len())?;
        Ok((0..parts.len()).map(|i| out.image(i)).collect())
    }

    /// The best catalogue match of `photo` by cosine alone, whatever its category (`None`: an
    /// empty catalogue): how closely the photo matches some product, before any category's vote.
    pub fn best_match(&self, photo: &ImageEmbedding) -> Result<Option<Scored>> {
        let hits = self
            .answering()?
            .search(&photo.features, 1, Metric::Cosine, &Filter::default(), None)?;
        Ok(hits.into_iter().next())
    }

    /// The windows of `photo` to embed besides the whole photo (`whole`) when looking for the
    /// product: none when the whole photo's best match is close ([`crate::locate`]).
    fn windows_to_search(&self, photo: &Photo, whole: &ImageEmbedding) -> Result<Vec<PhotoBox>> {
        let best = self.best_match(whole)?.map_or(f32::NAN, |hit| hit.score);
        Ok(if whole_is_enough(best) {
            Vec::new()
        } else {
            search_windows(photo.width, photo.height)
        })
    }

    /// "Shop the look" from the whole photo and its windows, embedded: the whole photo alone
    /// when it matches a product closely or has no windows, else the [`REGION_CANDIDATES`] windows
    /// kept by [`crate::locate::regions`], narrowed and moved, and [`MAX_REGIONS`] of those kept
    /// again (none when the catalogue is empty).
    fn regions_of(&self, photo: &Photo, whole: ImageEmbedding, windows: Vec<Located>) -> Result<Vec<FoundRegion>> {
        let all = PhotoBox::new(0.0, 0.0, photo.width as f32, photo.height as f32)?;
        let Some(whole_best) = self.best_match(&whole)? else {
            return Ok(Vec::new());
        };
        if windows.is_empty() || whole_is_enough(whole_best.score) {
            return Ok(vec![FoundRegion {
                region: all,
                score: whole_best.score,
                embedding: whole,
                cells: None,
            }]);
        }
        let (mut candidates, mut bests) = (Vec::with_capacity(windows.len()), Vec::with_capacity(windows.len()));
        for window in &windows {
            let best = self.best_match(&window.embedding)?.expect("the catalogue is not empty");
            candidates.push(Candidate {
                region: window.region.expect("a window has its box"),
                score: best.score,
                best_product: best.product.id.clone(),
            });
            bests.push(best);
        }
        let mut windows: Vec<Option<Located>> = windows.into_iter().map(Some).collect();
        let mut bests: Vec<Option<Scored>> = bests.into_iter().map(Some).collect();
        let kept: Vec<(Located, Scored)> = regions(&candidates, REGION_CANDIDATES)
            .into_iter()
            .map(|i| {
                let window = windows[i].take().expect("kept once");
                (window, bests[i].take().expect("kept once"))
            })
            .collect();
        // Each kept window narrowed and searched where it matches best, moved a little or not (as
        // one photo's part); two that then find one product, or overlap, are one region, and the
        // best of them are kept.
        let (mut found, mut placed_candidates) = (Vec::new(), Vec::new());
        let mut narrowed = Vec::new();
        for part in self.narrow_all(photo, kept, true)? {
            let best = self.best_match(&part.embedding)?;
            narrowed.push((part, best));
        }
        for (placed, best) in self.placed_best(photo, narrowed, true)? {
            let best = best.expect("the catalogue is not empty");
            let region = placed.region.expect("a window, narrowed and moved or not");
            placed_candidates.push(Candidate {
                region,
                score: best.score,
                best_product: best.product.id,
            });
            found.push(Some(FoundRegion {
                region,
                score: best.score,
                embedding: placed.embedding,
                cells: placed.feature_map.as_ref().map(FeatureMap::query_cells),
            }));
        }
        Ok(regions(&placed_candidates, MAX_REGIONS)
            .into_iter()
            .map(|i| found[i].take().expect("kept once"))
            .collect())
    }

    /// The embedder whose graph also outputs the last feature map, made when first asked.
    fn explainer(&self) -> Result<Arc<Embedder>> {
        let embedder = self.embedder()?;
        let mut made = self.explainer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((base, explainer)) = &*made {
            if Arc::ptr_eq(base, &embedder) {
                return Ok(explainer.clone());
            }
        }
        let explainer = Arc::new(embedder.with_feature_map()?);
        *made = Some((embedder, explainer.clone()));
        Ok(explainer)
    }

    /// The feature maps of the catalogue photos at `paths`, embedded whole as they were indexed
    /// (those not kept from before in one batch); `None` for a file no longer readable.
    fn catalogue_maps(&self, paths: &[&str]) -> Result<Vec<Option<Arc<FeatureMap>>>> {
        let key = |path: &str| -> Option<String> {
            let meta = std::fs::metadata(path).ok()?;
            let changed = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
            Some(format!("{path}\0{}\0{}", meta.len(), changed.as_nanos()))
        };
        let keys: Vec<Option<String>> = paths.iter().map(|p| key(p)).collect();
        let mut found: Vec<Option<Arc<FeatureMap>>> = {
            let kept = self
                .catalogue_maps
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            keys.iter().map(|k| k.as_deref().and_then(|k| kept.get(k))).collect()
        };
        let mut missing = Vec::new();
        for (i, path) in paths.iter().enumerate() {
            if found[i].is_some() || keys[i].is_none() || missing.iter().any(|(j, _)| paths[*j] == *path) {
                continue;
            }
            if let Ok(photo) = read_image_file(Path::new(path)).and_then(|bytes| decode_photo(&bytes)) {
                missing.push((i, photo));
            }
        }
        let items: Vec<(&Photo, Option<&PhotoBox>)> = missing.iter().map(|(_, photo)| (photo, None)).collect();
        let maps = feature_maps_of(&*self.explainer()?, &items)?;
        let mut kept = self
            .catalogue_maps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for ((i, _), (map, _)) in missing.iter().zip(maps) {
            let map = Arc::new(map);
            kept.keep(keys[*i].clone().expect("read files have keys"), map.clone());
            found[*i] = Some(map);
        }
        // A file asked for twice in one call was embedded once.
        for i in 0..paths.len() {
            if found[i].is_none() {
                found[i] = keys[i].as_deref().and_then(|k| kept.get(k));
            }
        }
        Ok(found)
    }

    /// Why each of `hits` matched the photo whose searched part has the feature map `query`
    /// ([`Self::locate`]); `None` for a hit whose matched photo is no longer readable.
    pub fn explain(&self, query: &FeatureMap, hits: &[Scored]) -> Result<Vec<Option<Explanation>>> {
        let paths: Vec<&str> = hits.iter().map(Scored::matched_path).collect();
        let matched = self.catalogue_maps(&paths)?;
        hits.iter()
            .zip(matched)
            .map(|(hit, map)| map.map(|map| explain(query, &map, hit.image)).transpose())
            .collect()
    }

    /// Why each of `hits` (of [`Self::similar`]) looks like product `id`: for each, the product's
    /// photo most like the hit's matched photo is the query.
    pub fn explain_similar(&self, id: &str, hits: &[Scored]) -> Result<Vec<Option<Explanation>>> {
        let product = self.product(id)?;
        let query_views: Vec<usize> = hits
            .iter()
            .map(|hit| {
                let matched = hit.matched_vector();
                most_alike_pair(&product.vectors().collect::<Vec<_>>(), &[matched]).0
            })
            .collect();
        let query_paths: Vec<&str> = query_views
            .iter()
            .map(|&n| product.image_paths().nth(n).unwrap_or(&product.image_path))
            .collect();
        let mut paths = query_paths.clone();
        paths.extend(hits.iter().map(Scored::matched_path));
        let mut maps = self.catalogue_maps(&paths)?;
        let matched = maps.split_off(hits.len());
        maps.into_iter()
            .zip(matched)
            .zip(hits)
            .map(|((query, matched), hit)| match (query, matched) {
                (Some(query), Some(matched)) => explain(&query, &matched, hit.image).map(Some),
                _ => Ok(None),
            })
            .collect()
    }

    /// How the photo matches product `id`: the part of it `framing` says (finding the product:
    /// the whole photo or the window most like this product) against the product's photo most
    /// like that part; the part, and the explanation.
    pub fn explain_product(
        &self,
        photo: &Photo,
        framing: &Framing,
        id: &str,
    ) -> Result<(Option<PhotoBox>, Explanation)> {
        let product = self.product(id)?;
        let windows = match framing {
            Framing::FindProduct => search_windows(photo.width, photo.height),
            Framing::Whole | Framing::Box(_) => Vec::new(),
        };
        let parts: Vec<Option<&PhotoBox>> = match framing {
            Framing::Box(region) => vec![Some(region)],
            Framing::Whole | Framing::FindProduct => std::iter::once(None).chain(windows.iter().map(Some)).collect(),
        };
        let mut maps = feature_maps(&*self.explainer()?, photo, &parts)?;
        let part_vectors: Vec<&[f32]> = maps
            .iter()
            .map(|(_, embedding)| embedding.features.as_slice())
            .collect();
        let (part, view) = most_alike_pair(&part_vectors, &product.vectors().collect::<Vec<_>>());
        let path = product.image_paths().nth(view).unwrap_or(&product.image_path);
        let matched = self
            .catalogue_maps(&[path])?
            .remove(0)
            .ok_or_else(|| Error::not_found(format!("photo {view} of product {id:?} is no longer on disk")))?;
        let (query, _) = maps.swap_remove(part);
        Ok((parts[part].copied(), explain(&query, &matched, view)?))
    }

    /// The products for a photo, words or both.
    pub fn search(&self, request: &SearchRequest) -> Result<Answer> {
        check_k(request.k)?;
        check_diversity(request.diversity)?;
        let mut filter = request.filter.clone();
        let likely_categories = match (request.likely_categories, request.photo) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(Error::invalid(
                    "a search kept to the photo's likely categories needs a photo",
                ))
            }
            (Some(coverage), Some(photo)) => {
                if !(0.0..=1.0).contains(&coverage) {
                    return Err(Error::invalid("coverage must be between 0 and 1"));
                }
                let classifier = self.options.classifier.as_ref().ok_or_else(|| {
                    Error::invalid("a search kept to the photo's likely categories needs a classifier head")
                })?;
                let likely = keep_to_likely_categories(&mut filter, classifier, &photo.classifier_input, coverage)?;
                Some(likely)
            }
        };
        let query = Query {
            image: request.photo.map(|p| p.features.as_slice()),
            words: request.words,
            whole_photo: request.whole_photo.map(|p| p.features.as_slice()),
            part_cells: request.part_cells,
        };
        let hits = self
            .answering()?
            .query(query, request.k, request.metric, &filter, request.diversity)?;
        Ok(Answer {
            hits,
            // Words rank by relevance, alone or fused with the photo's similarity.
            scored_by: request.words.is_none().then_some(request.metric),
            likely_categories,
        })
    }

    /// "Shop the look": `request` (words, filters, groups and diversity as for one photo) asked
    /// of each region's photo in turn, the regions in their order.
    pub fn search_regions(&self, regions: &[FoundRegion], request: &SearchRequest) -> Result<Vec<Answer>> {
        regions
            .iter()
            .map(|region| {
                self.search(&SearchRequest {
                    photo: Some(&region.embedding),
                    part_cells: region.cells.as_ref(),
                    ..request.clone()
                })
            })
            .collect()
    }

    /// The products that look like product `id` (its every photo a query), never of its own group.
    pub fn similar(&self, id: &str, k: usize, metric: Metric, filter: &Filter, diversity: f32) -> Result<Vec<Scored>> {
        check_k(k)?;
        check_diversity(diversity)?;
        self.answering()?
            .similar(id, k, metric, filter, diversity)?
            .ok_or_else(|| Error::no_product(id))
    }

    /// "More like these, less like those" (see [`Recommender::recommend`]).
    pub fn recommend(
        &self,
        positive: &[String],
        negative: &[String],
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Scored>> {
        check_k(k)?;
        if positive.is_empty() {
            return Err(Error::invalid("`positive` must name at least one product id"));
        }
        if positive.len() + negative.len() > MAX_RECOMMEND_IDS {
            return Err(Error::invalid(format!(
                "at most {MAX_RECOMMEND_IDS} product ids in `positive` and `negative` together"
            )));
        }
        Ok(self.answering()?.recommend(positive, negative, k, filter)?)
    }

    /// Product `id` with its vectors.
    pub fn product(&self, id: &str) -> Result<StoredProduct> {
        self.answering()?.find(id)?.ok_or_else(|| Error::no_product(id))
    }

    /// A page of products (of `category` only, the same but for case), in id order.
    pub fn page(&self, category: Option<&str>, offset: usize, per_page: usize) -> Result<Page> {
        if let Some(category) = category {
            check_text("category", category, MAX_TEXT_BYTES)?;
        }
        if offset > i64::MAX as usize {
            return Err(Error::invalid(format!("offset {offset} is beyond any catalogue")));
        }
        Ok(self.answering()?.page(category, offset, per_page)?)
    }

    /// How many products the catalogue holds.
    pub fn len(&self) -> Result<usize> {
        Ok(self.answering()?.len()?)
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Bytes the vector index takes: in this process (memory) or in the database (HNSW).
    pub fn index_bytes(&self) -> Result<usize> {
        Ok(self.answering()?.index_bytes()?)
    }

    /// The file beside the catalogue that its search index is kept in, where it has one.
    pub fn index_file(&self) -> Result<Option<PathBuf>> {
        Ok(self.on_store(|store| match store.search_side() {
            SearchSide::InMemory(log) => Ok(Some(log.index_file())),
            SearchSide::InDatabase(_) => Ok(None),
        })?)
    }

    /// Adds `product`; [`Error::Conflict`] if its id is taken.
    pub fn create(&self, product: StoredProduct) -> Result<()> {
        self.check_writable()?;
        let id = product.id.clone();
        product.info.check()?;
        check_id(&id)?;
        self.keep_cells(&product, None)?;
        match self.answering()?.write(product, WriteMode::CreateOnly)? {
            true => Ok(()),
            false => Err(Error::Conflict(format!("product {id:?} exists; use PUT to change it"))),
        }
    }

    /// Replaces product `product.id`; [`Error::NotFound`] if the catalogue does not hold it (a
    /// change racing a removal never brings the product back).
    pub fn update(&self, product: StoredProduct) -> Result<()> {
        self.check_writable()?;
        let id = product.id.clone();
        product.info.check()?;
        let stored = self.answering()?.find(&id)?;
        self.keep_cells(&product, stored.as_ref())?;
        match self.answering()?.write(product, WriteMode::UpdateOnly)? {
            true => Ok(()),
            false => Err(Error::no_product(&id)),
        }
    }

    /// Keeps the local cells of `product`'s photos that `stored` (the product as it is stored, if
    /// it is) does not have, made in one batch, before the product is written: search re-ranks
    /// a part's best products only when each has them ([`crate::index::local_cells`]). A photo
    /// that cannot be read is left without (the product is still written, as before).
    fn keep_cells(&self, product: &StoredProduct, stored: Option<&StoredProduct>) -> Result<()> {
        let known: HashSet<&str> = stored.map(|s| s.image_hashes().collect()).unwrap_or_default();
        let mut photos = Vec::new();
        for (path, hash) in product.image_paths().zip(product.image_hashes()) {
            if !known.contains(hash) {
                if let Ok(photo) = Self::read_photo(Path::new(path)) {
                    photos.push((hash, photo));
                }
            }
        }
        if photos.is_empty() {
            return Ok(());
        }
        let items: Vec<(&Photo, Option<&PhotoBox>)> = photos.iter().map(|(_, photo)| (photo, None)).collect();
        let maps = feature_maps_of(&*self.explainer()?, &items)?;
        let cells: Vec<PhotoCells> = photos
            .iter()
            .zip(&maps)
            .map(|((hash, _), (map, _))| PhotoCells {
                content_hash: hash.to_string(),
                cells: map.stored_cells().to_bytes(),
            })
            .collect();
        Ok(self.on_store(|store| store.put_cells(&cells))?)
    }

    /// Removes product `id`; [`Error::NotFound`] if the catalogue does not hold it.
    pub fn remove(&self, id: &str) -> Result<()> {
        self.check_writable()?;
        match self.answering()?.remove(id)? {
            true => Ok(()),
            false => Err(Error::no_product(id)),
        }
    }

    /// Removes every product of `ids` the catalogue holds, without loading memory; returns how many.
    pub fn remove_all(&self, ids: &[String]) -> Result<usize> {
        self.check_writable()?;
        Ok(self.on_store(|store| store.remove(ids))?)
    }

    /// Records that an uploaded image file at `path` may be referenced (see [`Store::record_upload`]).
    pub fn record_upload(&self, path: &str) -> Result<()> {
        self.check_writable()?;
        Ok(self.on_store(|store| store.record_upload(path))?)
    }

    /// Forgets the upload at `path` unless a product references it; true: its file may be deleted.
    pub fn release_upload(&self, path: &str) -> Result<bool> {
        self.check_writable()?;
        Ok(self.on_store(|store| store.release_upload(path))?)
    }

    /// Indexes a catalogue file or folder: only new or changed images are embedded, `progress`
    /// told (images done, of) after each batch. The head or colour weight asked for is kept with
    /// the catalogue and embeds every later query.
    pub fn index(&self, request: &IndexRequest, progress: &mut dyn FnMut(usize, usize)) -> Result<IndexSummary> {
        self.check_writable()?;
        let Catalogue { entries, unreadable } = read_catalogue(&request.catalogue, request.layout)?;
        let entries: Vec<_> = match request.shard {
            Some((i, n)) => entries.into_iter().filter(|e| in_shard(&e.id, i, n)).collect(),
            None => entries,
        };
        // What could not be walked is not gone: pruning leaves its products alone.
        let options = IndexOptions {
            batch_size: request.batch_size,
            prune: request.prune,
            shard: request.shard,
            keep_under: unreadable.iter().map(|(path, _)| path.clone()).collect(),
            local_cells: request.local_cells,
        };
        let (embedder, report) = self.on_store(|store| {
            let embedder = self.options.embedder(Some(&*store))?;
            let embedder = match (&request.head, request.colour) {
                (Some(head), _) => embedder.with_head(head.clone())?,
                (None, Some(weight)) => embedder.with_colour(weight)?,
                (None, None) => embedder,
            };
            store.ensure_manifest(&embedder.manifest())?;
            if let Some(head) = &embedder.head {
                store.set_head(HeadRole::Projection, head)?;
            }
            progress(0, entries.len());
            let report = index_catalogue(store, &embedder, &entries, &options, progress)?;
            Ok((embedder, report))
        })?;
        *self.embedder.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(embedder));
        Ok(IndexSummary { report, unreadable })
    }

    /// Learns the catalogue's kinds from its own photos ([`crate::learn::kinds`]): its stored
    /// vectors and views of its photos pasted onto `backgrounds`, a bounded number per kind;
    /// keeps the head with the catalogue, so every later photo search uses it. Told (views
    /// embedded, of) after each batch.
    pub fn learn_kinds(
        &self,
        backgrounds: &Backgrounds,
        seed: u64,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<KindsSummary> {
        self.check_writable()?;
        let embedder = self.embedder()?;
        // First each product's kind and photo count alone, so a big catalogue is never all in
        // memory; then, in a seeded order, what each kind learns from within its budget.
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut catalogue: Vec<(u64, String, String, usize)> = Vec::new();
        self.on_store(|store| {
            store.each_product(&mut |product| {
                if let Some(kind) = product.info.category.as_deref().map(kind_of) {
                    catalogue.push((rng.u64(..), product.id, kind, 1 + product.more_images.len()));
                }
                Ok(())
            })
        })?;
        catalogue.sort_unstable();
        let kind_names: HashSet<&str> = catalogue.iter().map(|(_, _, kind, _)| kind.as_str()).collect();
        let (photos_per_kind, vectors_per_kind) = per_kind_budget(kind_names.len())?;
        let mut per_kind: HashMap<String, KindCount> = HashMap::new();
        // Id → (its place among those taken, kind, vectors taken, photos viewed).
        let mut taken: HashMap<String, (usize, String, usize, usize)> = HashMap::new();
        for (_, id, kind, images) in catalogue {
            let count = per_kind.entry(kind.clone()).or_default();
            count.products += 1;
            let vectors = images.min(vectors_per_kind - count.vectors);
            let photos = images.min(photos_per_kind - count.photos);
            if vectors + photos > 0 {
                count.vectors += vectors;
                count.photos += photos;
                let place = taken.len();
                taken.insert(id, (place, kind, vectors, photos));
            }
        }
        let mut examples = KindExamples::default();
        let mut to_view: Vec<(usize, String, String)> = Vec::new();
        self.on_store(|store| {
            store.each_product(&mut |product| {
                if let Some((place, kind, vectors, photos)) = taken.get(&product.id) {
                    for vector in product.vectors().take(*vectors) {
                        examples.add_stored(*place, kind, vector);
                    }
                    for path in product.image_paths().take(*photos) {
                        to_view.push((*place, kind.clone(), path.to_string()));
                    }
                }
                Ok(())
            })
        })?;
        // In the seeded order, not the store's.
        to_view.sort_by_key(|(place, _, _)| *place);
        let total = to_view.len() * VIEWS_PER_PHOTO;
        let (mut done, mut unreadable) = (0, 0);
        progress(0, total);
        // A few photos' views per batch, made in parallel, each photo's from its own seed.
        for (batch, chunk) in to_view.chunks(DEFAULT_BATCH_SIZE / VIEWS_PER_PHOTO).enumerate() {
            let views: Vec<Option<Vec<f32>>> = chunk
                .par_iter()
                .enumerate()
                .map(|(i, (_, _, path))| {
                    let photo = crate::image::load_image(Path::new(path)).ok()?;
                    let mut rng = fastrand::Rng::with_seed(seed ^ ((batch * DEFAULT_BATCH_SIZE + i) as u64 + 1));
                    Some(
                        (0..VIEWS_PER_PHOTO)
                            .flat_map(|_| embedder.preprocessing.tensor_of(&backgrounds.view(&photo, &mut rng)))
                            .collect(),
                    )
                })
                .collect();
            let (mut input, mut read) = (Vec::new(), Vec::new());
            for (photo, tensors) in chunk.iter().zip(views) {
                match tensors {
                    Some(tensors) => {
                        input.extend(tensors);
                        read.push(photo);
                    }
                    None => unreadable += 1,
                }
            }
            if !read.is_empty() {
                let out = embedder.run(&input, read.len() * VIEWS_PER_PHOTO)?;
                for (i, (product, kind, _)) in read.iter().enumerate() {
                    for view in 0..VIEWS_PER_PHOTO {
                        examples.add_view(*product, kind, &out.image(i * VIEWS_PER_PHOTO + view).features);
                    }
                }
            }
            done += chunk.len() * VIEWS_PER_PHOTO;
            progress(done, total);
        }
        let examples_count = examples.len();
        let fitted = examples.fit(&embedder.manifest().weights_sha256, seed)?;
        // A head that tells kinds no better than the nearest photo would only add noise to the
        // vote (a catalogue whose kinds are one product each: 0 against 0).
        if fitted.held_out_accuracy <= fitted.nearest_photo_accuracy {
            return Err(Error::invalid(format!(
                "the catalogue's kinds were not learnt well enough to keep: the head names held-out products' kinds \
                 right {:.2} of the time, their nearest catalogue photo {:.2}; more products per kind, or \
                 backgrounds like the shop's customers' photos, may do better. Nothing was changed.",
                fitted.held_out_accuracy, fitted.nearest_photo_accuracy
            )));
        }
        let trained = &fitted.trained;
        // Every reader, this shop's included, takes it up at its next query (its stamp changed).
        self.on_store(|store| store.set_head(HeadRole::Kinds, &trained.head))?;
        let mut kinds: Vec<(String, KindCount)> = per_kind.into_iter().collect();
        kinds.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(KindsSummary {
            kinds,
            views: (to_view.len() - unreadable) * VIEWS_PER_PHOTO,
            unreadable_photos: unreadable,
            examples: examples_count,
            held_out_accuracy: fitted.held_out_accuracy,
            nearest_photo_accuracy: fitted.nearest_photo_accuracy,
            epochs: fitted.epochs_chosen,
        })
    }

    /// Every product with its vectors, in id order.
    pub fn products(&self) -> Result<Vec<StoredProduct>> {
        Ok(self.on_store(|store| store.products())?)
    }

    /// Writes the vectors as a `.npy` matrix and/or the products as JSON; returns how many.
    pub fn export(&self, npy: Option<&Path>, json: Option<&Path>) -> Result<usize> {
        if npy.is_none() && json.is_none() {
            return Err(Error::invalid("nothing to export: give --npy and/or --json"));
        }
        let products = self.products()?;
        if let Some(path) = npy {
            export_npy(&products.iter().map(|p| p.vector.as_slice()).collect::<Vec<_>>(), path)?;
        }
        if let Some(path) = json {
            export_json(&products, path)?;
        }
        Ok(products.len())
    }

    /// Copies the catalogue with its vectors into `target` (no re-embedding); returns how many.
    pub fn copy_into(&self, target: &mut dyn Store, batch: usize) -> Result<usize> {
        Ok(self.on_store(|store| copy_catalogue(&*store, target, batch.max(1)))?)
    }

    /// Every product's `k` most similar products, written to `out` (`.csv` for a Magento import
    /// of related products, `.jsonl`); the state kept in `state` lets the next run compute again
    /// only what changed (a state that cannot be read means computing everything).
    pub fn recommend_all(&self, k: usize, out: &Path, state: &Path) -> Result<RecommendAllReport> {
        check_k(k)?;
        let write = match out
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("csv") => export_related_csv,
            Some("jsonl" | "ndjson") => export_related_jsonl,
            _ => {
                return Err(Error::invalid(format!(
                    "{}: write a .csv or a .jsonl file",
                    out.display()
                )))
            }
        };
        let (previous, unusable_state) = match std::fs::read(state) {
            Ok(bytes) => match serde_json::from_slice::<Previous>(&bytes) {
                Ok(previous) => (Some(previous), None),
                Err(err) => (None, Some(err.to_string())),
            },
            Err(_) => (None, None),
        };
        let started = Instant::now();
        let products = self.products()?;
        let loaded = started.elapsed();
        let (related, next, work) = related_for_all(&products, k, previous.as_ref());
        let computed = started.elapsed() - loaded;
        write(&related, out)?;
        write_atomically(state, |w| Ok(serde_json::to_writer(w, &next)?))?;
        Ok(RecommendAllReport {
            products: products.len(),
            work,
            unusable_state,
            loaded,
            computed,
        })
    }

    /// Groups of products whose images are the same file (by hash) or look alike above
    /// `threshold` (cosine), with the products they name.
    pub fn duplicates(&self, threshold: f32) -> Result<Duplicates> {
        if !(threshold > 0.0 && threshold <= 1.0) {
            return Err(Error::invalid("the threshold must be above 0 and at most 1"));
        }
        let index = VectorIndex::new(self.products()?)?;
        let groups = duplicate_groups(&index, threshold)?;
        let members = groups
            .iter()
            .flat_map(|g| &g.ids)
            .filter_map(|id| index.find(id).map(|p| (id.clone(), p.clone())))
            .collect();
        Ok(Duplicates {
            groups,
            members,
            products: index.len(),
        })
    }

    /// The kinds the catalogue has learnt ([`Self::learn_kinds`]), if it has.
    pub fn learnt_kinds(&self) -> Result<Option<Vec<String>>> {
        Ok(self
            .on_store(|store| store.head(HeadRole::Kinds))?
            .map(|head| head.classes))
    }

    /// The classifier hybrid searches keep to a photo's likely categories with.
    pub fn classifier(&self) -> Option<&Head> {
        self.options.classifier.as_ref()
    }

    /// Ends a one-shot command's use (see [`Recommender::finish`]).
    pub fn finish(self) {
        if let Some(answering) = self.answering.into_inner() {
            answering.finish();
        }
    }
}

/// The most results one question may ask for.
pub const MAX_K: usize = 10_000;
/// The most products one recommendation may name.
pub const MAX_RECOMMEND_IDS: usize = 100;

/// A best match's score, lowest of all when there is none (an empty catalogue).
fn score_of(best: &Option<Scored>) -> f32 {
    best.as_ref().map_or(f32::MIN, |hit| hit.score)
}

fn check_k(k: usize) -> Result<()> {
    if k == 0 || k > MAX_K {
        return Err(Error::invalid(format!("k must be between 1 and {MAX_K}")));
    }
    Ok(())
}

fn check_diversity(diversity: f32) -> Result<()> {
    if !(0.0..=1.0).contains(&diversity) {
        return Err(Error::invalid("diversity must be between 0 and 1"));
    }
    Ok(())
}

/// What to index, and how.
#[derive(Clone, Debug)]
pub struct IndexRequest {
    /// A folder, `.csv` or `.jsonl`/`.ndjson` file (see [`read_catalogue`]).
    pub catalogue: PathBuf,
    pub layout: Layout,
    /// Remove products that left the catalogue or whose image file is gone.
    pub prune: bool,
    pub batch_size: usize,
    /// A projection head whose embeddings become the catalogue's vectors.
    pub head: Option<Head>,
    /// The weight of the colour signature appended to every vector.
    pub colour: Option<f32>,
    /// Only shard I of N of the catalogue's products (see [`in_shard`]).
    pub shard: Option<(usize, usize)>,
    /// Keep each photo's local cells, with which search re-orders the best products for a part
    /// of a busy photo ([`crate::index::local_cells`]; 16.6 KB a photo with Lite's backbones).
    pub local_cells: bool,
}

impl IndexRequest {
    /// The catalogue at `catalogue`, a folder of images in category folders, CSV or JSONL.
    pub fn new(catalogue: impl Into<PathBuf>) -> Self {
        Self {
            catalogue: catalogue.into(),
            layout: Layout::default(),
            prune: false,
            batch_size: DEFAULT_BATCH_SIZE,
            head: None,
            colour: None,
            shard: None,
            local_cells: true,
        }
    }
}

/// What learning a catalogue's kinds used and how well the head tells held-out products' kinds.
#[derive(Debug, serde::Serialize)]
pub struct KindsSummary {
    /// Each kind, by name, with what it was learnt from.
    pub kinds: Vec<(String, KindCount)>,
    /// Views of catalogue photos on backgrounds embedded.
    pub views: usize,
    /// Catalogue photos no longer readable on disk (their stored vectors still count).
    pub unreadable_photos: usize,
    /// Vectors the head learnt from: stored ones and views.
    pub examples: usize,
    /// Share of held-out products' vectors and views whose kind a head learnt without them
    /// names first (kept only when above `nearest_photo_accuracy`).
    pub held_out_accuracy: f64,
    /// The same share by the kind of their nearest photo among the other products.
    pub nearest_photo_accuracy: f64,
    /// Epochs the held-out products chose; the head kept learnt from every product this long.
    pub epochs: usize,
}

/// What one kind was learnt from.
#[derive(Debug, Default, serde::Serialize)]
pub struct KindCount {
    pub products: usize,
    /// Stored vectors used as they are.
    pub vectors: usize,
    /// Photos turned into views.
    pub photos: usize,
}

/// What indexing did.
#[derive(Debug)]
pub struct IndexSummary {
    pub report: IndexReport,
    /// Paths of the catalogue that could not be read (their products were left alone).
    pub unreadable: Vec<(PathBuf, String)>,
}

impl IndexSummary {
    /// Whether some images or folders were left out.
    pub fn skipped_any(&self) -> bool {
        !self.report.skipped.is_empty() || !self.unreadable.is_empty()
    }
}

/// What [`Shop::recommend_all`] did.
#[derive(Debug)]
pub struct RecommendAllReport {
    pub products: usize,
    pub work: Work,
    /// Why the previous run's state was not used, when it was there but unreadable.
    pub unusable_state: Option<String>,
    pub loaded: Duration,
    pub computed: Duration,
}

/// Duplicate groups and the products they name.
#[derive(Debug)]
pub struct Duplicates {
    pub groups: Vec<DuplicateGroup>,
    pub members: HashMap<String, StoredProduct>,
    /// How many products were compared.
    pub products: usize,
}

fn image_problem(err: &ImageError) -> ImageProblem {
    match err {
        ImageError::NotAnImage | ImageError::Empty => ImageProblem::NotAnImage,
        ImageError::TooLarge(_) => ImageProblem::TooLarge,
        ImageError::Undecodable(_) | ImageError::Unreadable(_) | ImageError::NotAFile => ImageProblem::Undecodable,
    }
}

impl From<ImageError> for Error {
    fn from(err: ImageError) -> Self {
        Error::Image {
            problem: image_problem(&err),
            message: err.to_string(),
        }
    }
}

impl From<SubmitError> for Error {
    fn from(err: SubmitError) -> Self {
        match err {
            SubmitError::Overloaded => Error::Overloaded(err.to_string()),
            SubmitError::Stopped => Error::Internal(err.into()),
        }
    }
}

/// The kinds only layers above [`crate::error`] know, found in an error's chain (see
/// [`Error::from_chain`]): every front-door call's error has its kind.
impl From<anyhow::Error> for Error {
    fn from(err: anyhow::Error) -> Self {
        Error::from_chain(err, |cause| {
            if let Some(image) = cause.downcast_ref::<ImageError>() {
                return Some(Error::Image {
                    problem: image_problem(image),
                    message: String::new(),
                });
            }
            if let Some(SubmitError::Overloaded) = cause.downcast_ref::<SubmitError>() {
                return Some(Error::Overloaded(String::new()));
            }
            if let Some(sqlite) = cause.downcast_ref::<rusqlite::Error>() {
                use rusqlite::ErrorCode::*;
                return matches!(
                    sqlite.sqlite_error_code(),
                    Some(DatabaseBusy | DatabaseLocked | CannotOpen | PermissionDenied | DiskFull)
                )
                .then(|| Error::StoreUnavailable(String::new()));
            }
            if let Some(pg) = cause.downcast_ref::<postgres::Error>() {
                // Class 08: connection exceptions; 53: insufficient resources; 57P: shutting down.
                let unavailable = pg.is_closed()
                    || pg.code().map_or(pg.as_db_error().is_none(), |code| {
                        let code = code.code();
                        code.starts_with("08") || code.starts_with("53") || code.starts_with("57P")
                    });
                return unavailable.then(|| Error::StoreUnavailable(String::new()));
            }
            None
        })
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

//! A stored catalogue ready to answer "what looks like this?": the one interface the CLI and
//! the server use, whatever the store. Over SQLite the products are loaded into a
//! [`VectorIndex`] and searched in memory; over PostgreSQL every read is a query, so several
//! servers on one database see each other's writes at once.
//!
//! Writes go to the store and then to memory while the store is held, so two writes to one
//! product reach both in the same order ([`locks`] allows no other order). Writes by other processes (a `lookalike index` run
//! beside a server, on the same SQLite file) are read from the store's change log before each
//! read, so memory never answers from a catalogue that has moved on.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::{bail, ensure, Context, Result};

use crate::index::category_vote::{voted, voted_keyed_by, votes, VOTE_POOL};
use crate::index::diversity::{diversify, pool_size};
use crate::index::fusion::{fuse, DEFAULT_FUSION};
use crate::index::local_cells::{reranked_locally, QueryCells, LOCAL_RERANK_DEPTH};
use crate::index::related::{related_products, Catalogue, Previous, UnitVectors, Work};
use crate::index::{Hit, SearchMode, VectorIndex};
use crate::learn::head::Head;
use crate::learn::kinds::KindChances;
use crate::store::{ChangeLog, Changes, HeadRole, ProductWrite, Store, WriteMode};
use locks::{IndexRead, Locks, Products, Side};

mod locks;
use crate::types::{keep_per_group, Filter, Metric, Page, RelatedIds, Scored, StoredProduct, Words};

/// What a shopper asks with: a photo (its vector), words, or both.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<'a> {
    pub image: Option<&'a [f32]>,
    pub words: Option<&'a Words>,
    /// The whole photo's vector when `image` is a part search found in it: the kind of product
    /// a shopper photographed is read from both ([`KindChances::of`]).
    pub whole_photo: Option<&'a [f32]>,
    /// The part's local cells when `image` is a part search found in a busy photo: its
    /// [`LOCAL_RERANK_DEPTH`] best products are ordered again by [`reranked_locally`] (a photo
    /// alone, by cosine; with words the fusion ranks as before).
    pub part_cells: Option<&'a QueryCells>,
}

/// Candidates each ranking brings to the fusion of a photo and words.
const FUSION_DEPTH: usize = 100;
/// Word matches read per result wanted when groups fold several products into one.
const PER_GROUP_READ: usize = 4;

pub struct Recommender {
    locks: Locks,
    /// The catalogue's kinds, where it has learnt them ([`crate::learn::kinds`]).
    kinds: RwLock<LearntKinds>,
}

/// The catalogue's kinds as last read, with the stamp they were read under, so that kinds learnt
/// again by another process (`train kinds` beside a running server) are used from its next query.
struct LearntKinds {
    head: Option<Arc<Head>>,
    stamp: Option<String>,
}

impl LearntKinds {
    fn read(store: &dyn Store) -> Result<Self> {
        // The stamp first: a head set in between is read again at the next query, never missed.
        let stamp = store.head_stamp(HeadRole::Kinds)?;
        let head = store.head(HeadRole::Kinds)?.map(Arc::new);
        Ok(Self { head, stamp })
    }
}

/// How memory was loaded from an index file ([`crate::index::file`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexLoad {
    pub products: usize,
    /// Products read again from the store: changed since the file was written.
    pub changed: usize,
    /// Why the index was built from the store rather than read from the file.
    pub rebuilt: Option<String>,
    /// Whether the approximate-search graph was built (the file had none).
    pub graph_built: bool,
    /// Whether the file was written: after a build, or when enough had changed since
    /// ([`REWRITE_BYTES_PER_CHANGE`]).
    pub written: bool,
    /// Why it could not be written (a read-only folder): the next start reads the store again.
    pub unsaved: Option<String>,
}

/// Bytes of index file worth writing again for each product that would otherwise be re-read from
/// the store at every start: at a million products a change took ~1–2 ms to replay into the graph
/// (372 new products: CLI search 1.74 s instead of 0.95) and the 7.9 GB file takes seconds to
/// write, so after ~1,000 changes there the file is written again; a small catalogue's at once.
const REWRITE_BYTES_PER_CHANGE: usize = 8 << 20;
/// Products compared with the store when an index file is read.
const SAMPLED_PRODUCTS: usize = 16;

/// How likely a photo shows a category's kind, by `kinds` (0 where none were learnt), as the
/// category vote takes it.
fn kind_chance(kinds: Option<&KindChances>) -> impl Fn(Option<&str>) -> Option<f32> + '_ {
    move |category| kinds.map_or(Some(0.0), |kinds| kinds.of_category(category))
}

/// The store's products in memory, searched in `mode`: read from the store's index file and
/// brought up to date with its change log, or (no file, or one that does not fit) built from the
/// store at change-log `position` and written to the file.
fn load_memory(
    store: &dyn Store,
    log: &dyn ChangeLog,
    mode: SearchMode,
    position: u64,
) -> Result<(VectorIndex, IndexLoad)> {
    let from_store = || VectorIndex::gather(mode, store.count()?, |visit| store.each_product(visit));
    let path = log.index_file();
    let (mut index, mut load, position) = match index_from_file(store, log, &path, mode) {
        Ok((index, changed, position)) => (
            index,
            IndexLoad {
                changed,
                ..IndexLoad::default()
            },
            position,
        ),
        Err(why) => {
            let rebuilt = Some(format!("{why:#}"));
            let index = from_store()?;
            (
                index,
                IndexLoad {
                    rebuilt,
                    ..IndexLoad::default()
                },
                position,
            )
        }
    };
    load.products = index.len();
    if index.mode() != mode {
        index.set_mode(mode)?;
        load.graph_built = true;
    }
    let much_changed = load.changed > 0 && load.changed * REWRITE_BYTES_PER_CHANGE >= index.vector_bytes();
    if load.rebuilt.is_some() || load.graph_built || much_changed {
        match index.write_file(&path, position) {
            Ok(()) => {
                load.written = true;
                // Read back, what was built in memory is mapped from the file: a server then
                // holds what a start from that file would hold, not every vector.
                if let Ok((mapped, _)) = VectorIndex::read_file(&path, mode) {
                    index = mapped;
                }
            }
            Err(err) => load.unsaved = Some(format!("{err:#}")),
        }
    }
    Ok((index, load))
}

/// Brings products `ids` in `index` to what `store` now holds of them (gone: removed).
fn apply_changes(index: &mut VectorIndex, store: &dyn Store, ids: &[String]) -> Result<()> {
    for id in ids {
        match store.product(id)? {
            Some(product) => index.upsert(product)?,
            None => {
                index.remove(id);
            }
        }
    }
    Ok(())
}

/// Reads products `ids`, which searches found damaged in memory (a vector that is not finite), again
/// from `store`; one whose stored vectors are not finite either is left out of memory.
fn repair(index: &mut VectorIndex, store: &dyn Store, ids: &BTreeSet<String>) -> Result<()> {
    for id in ids {
        match store.product(id)? {
            Some(product) if product.vectors().flatten().all(|v| v.is_finite()) => index.upsert(product)?,
            _ => {
                index.remove(id);
            }
        }
    }
    Ok(())
}

/// The index in the file at `path`, with what changed in the store since applied; the products
/// read again and the change-log position it now reflects. An error says why it does not fit.
fn index_from_file(
    store: &dyn Store,
    log: &dyn ChangeLog,
    path: &Path,
    mode: SearchMode,
) -> Result<(VectorIndex, usize, u64)> {
    let (mut index, position) = match VectorIndex::read_file(path, mode) {
        Err(_) if !path.exists() => bail!("no index file yet"),
        Err(err) => return Err(err.context(format!("{} is not usable", path.display()))),
        Ok(read) => read,
    };
    if let Some(manifest) = store.manifest()? {
        ensure!(
            index.is_empty() || manifest.dimension == index.dimension(),
            "{} holds {}-d vectors, the catalogue {}-d",
            path.display(),
            index.dimension(),
            manifest.dimension
        );
    }
    let (changed, position) = match log.changes_from(position)? {
        Changes::Nothing => (Vec::new(), position),
        Changes::Products { ids, position } => (ids, position),
        Changes::Everything { .. } => bail!(
            "the catalogue's change log no longer reaches back to {}",
            path.display()
        ),
    };
    apply_changes(&mut index, store, &changed)?;
    let stored = store.count()?;
    ensure!(
        stored == index.len(),
        "{} holds {} products, the catalogue {stored}",
        path.display(),
        index.len()
    );
    // Vectors are not under the file's checksum: a sample, compared bit for bit, catches a file
    // that belongs to another catalogue with the same ids.
    let step = (index.len() / SAMPLED_PRODUCTS).max(1);
    for p in (0..index.len()).step_by(step) {
        let id = &index.products()[p].id;
        let stored = store
            .product(id)?
            .with_context(|| format!("product {id:?} is not in the catalogue"))?;
        let held = index.product_with_vectors_at(p);
        ensure!(
            stored.vectors().eq(held.vectors()),
            "{} does not hold product {id:?}'s vectors",
            path.display()
        );
    }
    Ok((index, changed.len(), position))
}

impl Recommender {
    pub fn new(store: Box<dyn Store>) -> Result<Self> {
        Self::with_search(store, SearchMode::Exact)
    }

    /// With `mode` for the searches memory answers (a store that searches itself ignores it).
    pub fn with_search(store: Box<dyn Store>, mode: SearchMode) -> Result<Self> {
        let kinds = LearntKinds::read(&*store)?;
        Ok(Self {
            locks: Locks::new(store, mode)?,
            kinds: RwLock::new(kinds),
        })
    }

    /// The catalogue's kinds as the store holds them now: read again when their stamp changed.
    fn learnt_kinds(&self) -> Result<Option<Arc<Head>>> {
        let store = self.locks.store();
        let stamp = store.head_stamp(HeadRole::Kinds)?;
        {
            let kinds = self.kinds.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            if kinds.stamp == stamp {
                return Ok(kinds.head.clone());
            }
        }
        let fresh = LearntKinds::read(&*store)?;
        let head = fresh.head.clone();
        *self.kinds.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh;
        Ok(head)
    }

    /// How likely `views` of a photo ([`KindChances::of`]) show each kind; `None` where the
    /// catalogue has not learnt its kinds or the photo matches a product closely (no vote then).
    fn kind_chances(&self, views: &[&[f32]], best: Option<f32>) -> Result<Option<KindChances>> {
        if !votes(best) {
            return Ok(None);
        }
        self.learnt_kinds()?
            .map(|head| KindChances::of(&head, views))
            .transpose()
    }

    /// How memory was loaded from the store's index file, where it has one.
    pub fn index_load(&self) -> Option<&IndexLoad> {
        self.locks.index_load()
    }

    /// Ends a one-shot command's use: the store is closed, the products in memory are left for
    /// the process's exit to take back (freeing a million of them one by one took a tenth of a
    /// `lookalike search`).
    pub fn finish(self) {
        std::mem::forget(self.locks.into_memory());
    }

    /// The store, for what this type does not wrap. Writes through it bypass memory.
    pub fn with_store<T>(&self, work: impl FnOnce(&mut dyn Store) -> Result<T>) -> Result<T> {
        work(self.locks.store().store_mut())
    }

    pub fn len(&self) -> Result<usize> {
        match self.locks.side()? {
            Side::Memory(index) => Ok(index.len()),
            Side::Database(store) => store.count(),
        }
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Bytes the vector index takes: in this process (memory) or in the database (HNSW).
    pub fn index_bytes(&self) -> Result<usize> {
        match self.locks.side()? {
            Side::Memory(index) => Ok(index.vector_bytes()),
            Side::Database(store) => store.database()?.vector_index_bytes(),
        }
    }

    pub fn find(&self, id: &str) -> Result<Option<StoredProduct>> {
        self.locks.products()?.get(id)
    }

    /// What `search` finds in memory, as results: products cloned from memory, or read from the
    /// store when memory is slim.
    fn results<'a>(
        &self,
        index: IndexRead<'a>,
        search: impl for<'i> FnOnce(&'i VectorIndex) -> Result<Vec<Hit<'i>>>,
    ) -> Result<Vec<Scored>> {
        let hits = search(&index)?;
        if !index.is_slim() {
            return Ok(hits
                .into_iter()
                .map(|hit| Scored {
                    product: index
                        .product_with_vectors(&hit.product.id)
                        .expect("an index finds its own products"),
                    score: hit.score,
                    image: hit.image,
                })
                .collect());
        }
        let found: Vec<(String, f32, usize)> = hits
            .into_iter()
            .map(|hit| (hit.product.id.clone(), hit.score, hit.image))
            .collect();
        let store = index.then_store();
        let mut results = Vec::with_capacity(found.len());
        for (id, score, image) in found {
            // None only if deleted since the search.
            if let Some(product) = store.product(&id)? {
                results.push(Scored { product, score, image });
            }
        }
        Ok(results)
    }

    /// The `k` best products for `query` that pass `filter`, best first; `exclude` drops one id.
    /// Products found by the database come without their vectors.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        metric: Metric,
        filter: &Filter,
        exclude: Option<&str>,
    ) -> Result<Vec<Scored>> {
        self.search_views(&[query], k, metric, filter, exclude)
    }

    /// The `keep` best products for a photo by cosine, in their categories' vote order over the
    /// [`VOTE_POOL`] best ([`crate::index::category_vote`]), each with the key it is ordered by;
    /// in memory, only the products kept are read whole.
    fn search_voted(
        &self,
        query: &[f32],
        keep: usize,
        filter: &Filter,
        kinds: Option<&KindChances>,
    ) -> Result<Vec<(Scored, f32)>> {
        let deep = VOTE_POOL.max(keep);
        let kind_chance = kind_chance(kinds);
        let mut hits = match self.locks.side()? {
            Side::Memory(index) => {
                let mut keys = HashMap::new();
                let hits = self.results(index, |index| {
                    let found = index.search(query, deep, Metric::Cosine, filter, None)?;
                    let voted = voted_keyed_by(
                        found,
                        |hit| hit.score,
                        |hit| hit.product.info.category.as_deref(),
                        kind_chance,
                    );
                    Ok(voted
                        .into_iter()
                        .take(keep)
                        .map(|(hit, key)| {
                            keys.insert(hit.product.id.clone(), key);
                            hit
                        })
                        .collect())
                })?;
                hits.into_iter()
                    .map(|hit| {
                        let key = keys[&hit.product.id];
                        (hit, key)
                    })
                    .collect()
            }
            Side::Database(store) => voted(
                store
                    .database()?
                    .nearest(&[query], deep, Metric::Cosine, filter, None)?,
                kind_chance,
            ),
        };
        hits.truncate(keep);
        Ok(hits)
    }

    /// [`Self::search`] with several photos of one product as the query (see
    /// [`VectorIndex::search_views`]).
    fn search_views(
        &self,
        views: &[&[f32]],
        k: usize,
        metric: Metric,
        filter: &Filter,
        exclude: Option<&str>,
    ) -> Result<Vec<Scored>> {
        match self.locks.side()? {
            Side::Memory(index) => self.results(index, |index| index.search_views(views, k, metric, filter, exclude)),
            Side::Database(store) => store.database()?.nearest(views, k, metric, filter, exclude),
        }
    }

    /// Products that look like product `id`, every image of it a query; neither the product nor
    /// other products of its group. `None` if there is no such product.
    /// `diversity` as in [`Self::query`].
    pub fn similar(
        &self,
        id: &str,
        k: usize,
        metric: Metric,
        filter: &Filter,
        diversity: f32,
    ) -> Result<Option<Vec<Scored>>> {
        let Some(product) = self.find(id)? else {
            return Ok(None);
        };
        let filter = Filter {
            exclude_group: product.info.group.clone(),
            ..filter.clone()
        };
        let views: Vec<&[f32]> = product.vectors().collect();
        let hits = self.search_views(&views, pool_size(k, diversity), metric, &filter, Some(id))?;
        Ok(Some(self.diversified(hits, k, diversity, metric)?))
    }

    /// The `k` best products for a photo, words or both that pass `filter`. A photo alone ranks by
    /// `metric`, by cosine with its category's vote ([`crate::index::category_vote`]); words alone
    /// rank by relevance (BM25 / `ts_rank`); a photo with words ranks by [`DEFAULT_FUSION`] of both.
    /// `diversity` in [0, 1] trades relevance for variety (maximal marginal relevance; 0: none).
    pub fn query(
        &self,
        query: Query,
        k: usize,
        metric: Metric,
        filter: &Filter,
        diversity: f32,
    ) -> Result<Vec<Scored>> {
        let pool = pool_size(k, diversity);
        let (hits, ranked_by) = match (query.image, query.words) {
            (None, None) => return Err(crate::error::Error::invalid("a query needs a photo, words or both").into()),
            (Some(image), None) if metric == Metric::Cosine => {
                let pool = match query.part_cells {
                    Some(_) => pool.max(LOCAL_RERANK_DEPTH),
                    None => pool,
                };
                let hits = self.search(image, pool, metric, filter, None)?;
                let best = hits.first().map(|hit| hit.score);
                let views = match query.whole_photo {
                    Some(whole) => vec![image, whole],
                    None => vec![image],
                };
                let kinds = self.kind_chances(&views, best)?;
                // Only a photo that matches no product closely is voted on, and only it pays for
                // the deeper search the vote needs.
                let hits = if votes(best) && pool < VOTE_POOL {
                    self.search_voted(image, pool, filter, kinds.as_ref())?
                } else {
                    voted(hits, kind_chance(kinds.as_ref()))
                };
                match query.part_cells {
                    Some(part) => (self.reranked_locally(hits, part)?, metric),
                    None => (hits.into_iter().map(|(hit, _)| hit).collect(), metric),
                }
            }
            (Some(image), None) => (self.search(image, pool, metric, filter, None)?, metric),
            (None, Some(words)) => {
                let found = self.word_matches(words, pool, filter)?;
                (self.products_for(found, Vec::new(), pool, filter)?, Metric::Cosine)
            }
            (Some(image), Some(words)) => {
                let depth = pool.max(FUSION_DEPTH);
                let by_photo = self.search(image, depth, metric, filter, None)?;
                let by_words = self.word_matches(words, depth, filter)?;
                let photo_ranking: Vec<(String, f32)> =
                    by_photo.iter().map(|h| (h.product.id.clone(), h.score)).collect();
                let fused = fuse(&photo_ranking, &by_words, metric, DEFAULT_FUSION);
                (self.products_for(fused, by_photo, pool, filter)?, Metric::Cosine)
            }
        };
        self.diversified(hits, k, diversity, ranked_by)
    }

    /// `hits` (each with the key the vote ordered it by) with the first [`LOCAL_RERANK_DEPTH`]
    /// ordered again by their photos' likeness to `part`, their photos' cells read from the
    /// store ([`reranked_locally`]).
    fn reranked_locally(&self, hits: Vec<(Scored, f32)>, part: &QueryCells) -> Result<Vec<Scored>> {
        let depth = hits.len().min(LOCAL_RERANK_DEPTH);
        let ids: Vec<&str> = hits[..depth].iter().map(|(hit, _)| hit.product.id.as_str()).collect();
        let cells = self.locks.store().cells_of(&ids)?;
        let reranked = reranked_locally(hits, |(hit, key)| {
            let photos = cells.get(&hit.product.id)?.iter().map(|photo| photo.cells.as_slice());
            Some(key + part.best_likeness(photos)?)
        });
        Ok(reranked.into_iter().map(|(hit, _)| hit).collect())
    }

    /// Ids matching `words` with their relevance, enough of them for `k` results after groups fold.
    fn word_matches(&self, words: &Words, k: usize, filter: &Filter) -> Result<Vec<(String, f32)>> {
        let read = if filter.one_per_group { k * PER_GROUP_READ } else { k };
        self.locks.store().text_search(words, read, filter, None)
    }

    /// The products of `ranking` (ids with scores, best first), the first `k` after groups fold;
    /// those in `known` are taken from it with their matched image, the others read.
    fn products_for(
        &self,
        ranking: Vec<(String, f32)>,
        known: Vec<Scored>,
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Scored>> {
        let mut known: HashMap<String, Scored> = known.into_iter().map(|h| (h.product.id.clone(), h)).collect();
        let products = self.locks.products()?;
        let mut hits = Vec::new();
        for (id, score) in ranking {
            if hits.len() >= k * PER_GROUP_READ {
                break;
            }
            let (product, image) = match known.remove(&id) {
                Some(hit) => (hit.product, hit.image),
                None => {
                    // None only if deleted since the ranking was made.
                    let Some(product) = products.get(&id)? else { continue };
                    (product, 0)
                }
            };
            hits.push(Scored { product, score, image });
        }
        Ok(keep_per_group(hits, k, filter.one_per_group))
    }

    /// [`diversify`] over `hits`, reading the vectors of products found without them.
    fn diversified(&self, mut hits: Vec<Scored>, k: usize, diversity: f32, ranked_by: Metric) -> Result<Vec<Scored>> {
        if diversity > 0.0 && hits.iter().any(|h| h.product.vector.is_empty()) {
            let store = self.locks.store();
            for hit in hits.iter_mut().filter(|h| h.product.vector.is_empty()) {
                if let Some(stored) = store.product(&hit.product.id)? {
                    hit.product.vector = stored.vector;
                }
            }
        }
        Ok(diversify(hits, k, diversity, ranked_by))
    }

    /// Products in id order, optionally of one category (case-insensitive), skipping `offset`.
    pub fn page(&self, category: Option<&str>, offset: usize, per_page: usize) -> Result<Page> {
        let index = match self.locks.products()? {
            Products::Memory(index) => index,
            Products::Store(store) => return store.page(category, offset, per_page),
        };
        let filter = Filter {
            category: category.map(str::to_string),
            ..Default::default()
        };
        let mut matching: Vec<&StoredProduct> = index.products().iter().filter(|p| filter.accepts(p)).collect();
        matching.sort_by(|a, b| a.id.cmp(&b.id));
        let mut categories: Vec<String> = index
            .products()
            .iter()
            .filter_map(|p| p.info.category.clone())
            .collect();
        categories.sort_unstable();
        categories.dedup();
        Ok(Page {
            total: matching.len(),
            items: matching.into_iter().skip(offset).take(per_page).cloned().collect(),
            categories,
        })
    }

    /// Stores `product` as `mode` allows and makes it searchable; false if `mode`'s condition
    /// (no such product yet, or the product still there) did not hold and nothing was written.
    pub fn write(&self, product: StoredProduct, mode: WriteMode) -> Result<bool> {
        let entry = product.entry();
        let images = product.image_writes();
        let mut store = self.locks.store();
        let write = ProductWrite {
            entry: &entry,
            content_hash: &product.content_hash,
            vector: Some(&product.vector),
            more_images: Some(&images),
        };
        if !store.store_mut().write_one(&write, mode)? {
            return Ok(false);
        }
        if let Some(mut index) = store.index_mut() {
            index.upsert(product)?;
        }
        Ok(true)
    }

    /// Deletes product `id`; false if there was none.
    pub fn remove(&self, id: &str) -> Result<bool> {
        let mut store = self.locks.store();
        let removed = store.store_mut().remove(&[id.to_string()])? > 0;
        if let Some(mut index) = store.index_mut() {
            index.remove(id);
        }
        Ok(removed)
    }

    /// "More like these, less like those": the `k` products nearest (by cosine) to the mean of the
    /// `positive` products minus half the mean of the `negative` ones, each product as the mean of
    /// its photos' unit vectors (as [`related_for_all`] sees it), every named product excluded. An
    /// id the catalogue does not hold is an [`Error::NotFound`](crate::error::Error::NotFound).
    pub fn recommend(
        &self,
        positive: &[String],
        negative: &[String],
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Scored>> {
        let mut query: Vec<f32> = Vec::new();
        for (ids, weight) in [(positive, 1.0f32), (negative, -0.5)] {
            for id in ids {
                let product = self.find(id)?.ok_or_else(|| crate::error::Error::no_product(id))?;
                let mean = centroid(&product);
                let norm = crate::index::dot(&mean, &mean).sqrt().max(f32::MIN_POSITIVE);
                let scale = weight / (ids.len() as f32 * norm);
                query.resize(mean.len(), 0.0);
                query.iter_mut().zip(mean.iter()).for_each(|(q, v)| *q += v * scale);
            }
        }
        let named: std::collections::HashSet<&str> = positive.iter().chain(negative).map(String::as_str).collect();
        let hits = self.search(&query, k + named.len(), Metric::Cosine, filter, None)?;
        Ok(hits
            .into_iter()
            .filter(|hit| !named.contains(hit.product.id.as_str()))
            .take(k)
            .collect())
    }

    /// See [`Store::record_upload`].
    pub fn record_upload(&self, path: &str) -> Result<()> {
        self.locks.store().record_upload(path)
    }

    /// See [`Store::release_upload`].
    pub fn release_upload(&self, path: &str) -> Result<bool> {
        self.locks.store().release_upload(path)
    }
}

/// Related products for every product of `products` (the `k` most similar by cosine, best
/// first), reusing `previous` (an earlier run's state) for what did not change; returns the lists
/// by id, the state for the next run, and how much was computed again.
pub fn related_for_all(
    products: &[StoredProduct],
    k: usize,
    previous: Option<&Previous>,
) -> (Vec<(String, RelatedIds)>, Previous, Work) {
    // A product of several photos is their centroid: one row per product keeps the batch one
    // matrix product, and the centroid ranked Luma's products above the main photo alone
    // (`eval products`: Recall@1 0.616 vs 0.546).
    let centroids: Vec<Cow<[f32]>> = products.iter().map(centroid).collect();
    // Keyed by the vector itself: a new image, a re-index with another head, anything that moves it.
    let fingerprints: Vec<String> = centroids.iter().map(|v| vector_fingerprint(v)).collect();
    let catalogue = Catalogue {
        ids: products.iter().map(|p| p.id.as_str()).collect(),
        hashes: fingerprints.iter().map(String::as_str).collect(),
        vectors: UnitVectors::new(&centroids.iter().map(|v| &**v).collect::<Vec<_>>()),
    };
    let (neighbours, work) = related_products(&catalogue, k, previous);
    let related: Vec<(String, RelatedIds)> = products
        .iter()
        .zip(neighbours)
        .map(|(p, n)| {
            let named = n
                .into_iter()
                .map(|(j, score)| (products[j].id.clone(), score))
                .collect();
            (p.id.clone(), named)
        })
        .collect();
    let state = Previous {
        k,
        hashes: products.iter().map(|p| p.id.clone()).zip(fingerprints).collect(),
        related: related.iter().cloned().collect(),
    };
    (related, state, work)
}

/// The mean of a product's photos' unit vectors; its one vector as it is when it has one photo.
fn centroid(product: &StoredProduct) -> Cow<'_, [f32]> {
    if product.more_images.is_empty() {
        return Cow::Borrowed(&product.vector);
    }
    let mut sum = vec![0.0f32; product.vector.len()];
    for view in product.vectors() {
        let norm = crate::index::dot(view, view).sqrt().max(f32::MIN_POSITIVE);
        sum.iter_mut().zip(view).for_each(|(s, x)| *s += x / norm);
    }
    Cow::Owned(sum)
}

/// A 64-bit digest of a vector's exact bits (a multiply-xorshift mix; not cryptographic).
fn vector_fingerprint(vector: &[f32]) -> String {
    let mut h: u64 = 0x9E37_79B9_7F4A_7C15 ^ vector.len() as u64;
    for x in vector {
        h = (h ^ u64::from(x.to_bits())).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        h ^= h >> 32;
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ProductImage;

    fn product(id: &str, views: &[[f32; 2]]) -> StoredProduct {
        StoredProduct {
            id: id.into(),
            info: Default::default(),
            image_path: format!("/{id}.jpg"),
            content_hash: id.into(),
            vector: views[0].to_vec(),
            more_images: views[1..]
                .iter()
                .map(|v| ProductImage {
                    path: String::new(),
                    content_hash: String::new(),
                    vector: v.to_vec(),
                })
                .collect(),
        }
    }

    #[test]
    fn related_products_compare_every_photo_of_a_product() {
        // "front" matches "a" by its main photo, "b" by the mean of front and back together.
        let products = [
            product("a", &[[1.0, 0.0]]),
            product("b", &[[0.6, 0.8]]),
            product("shirt", &[[0.9, 0.1], [0.0, 5.0]]),
        ];
        let (related, _, _) = related_for_all(&products, 1, None);
        let of = |id: &str| related.iter().find(|(p, _)| p == id).unwrap().1[0].0.clone();
        assert_eq!(of("shirt"), "b");
        // A changed back photo counts as a change.
        let mut moved = products.clone();
        moved[2].more_images[0].vector = vec![0.0, -5.0];
        let (_, state, _) = related_for_all(&products, 1, None);
        let (again, _, work) = related_for_all(&moved, 1, Some(&state));
        assert_eq!(work.fresh, 1);
        assert_eq!(again.iter().find(|(p, _)| p == "shirt").unwrap().1[0].0, "a");
    }

    fn manifest(dimension: usize) -> crate::model::ModelManifest {
        crate::model::ModelManifest {
            model: "test".into(),
            weights_sha256: "w".into(),
            preprocessing: "p".into(),
            dimension,
            head: None,
            colour: None,
            precision: None,
        }
    }

    fn titled(id: String, vector: &[f32], n: usize) -> StoredProduct {
        StoredProduct {
            id: id.clone(),
            info: crate::types::ProductInfo {
                title: Some(format!("title of {id}")),
                category: Some(["shoes", "bags", "hats"][n % 3].into()),
                price: Some((n % 50) as f64),
                ..Default::default()
            },
            image_path: format!("/{id}.jpg"),
            content_hash: id,
            vector: vector.to_vec(),
            more_images: Vec::new(),
        }
    }

    #[test]
    fn a_catalogue_starts_from_its_index_file_and_follows_what_others_wrote() {
        use crate::store::sqlite::SqliteStore;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("c.db");
        let d = 24;
        let vectors = crate::index::ann::tests::clustered(2100, d, 31);
        let rows: Vec<&[f32]> = vectors.chunks(d).collect();
        let products: Vec<StoredProduct> = (0..2000).map(|n| titled(format!("p{n:04}"), rows[n], n)).collect();
        let mut writer = SqliteStore::open(&db).unwrap();
        crate::store::store_products(&mut writer, &manifest(d), None, &products, 500).unwrap();
        let open = || -> Box<dyn Store> { Box::new(SqliteStore::open(&db).unwrap()) };
        let mode = SearchMode::Approximate { ef: 32 };
        let bags = Filter {
            category: Some("bags".into()),
            ..Filter::default()
        };
        let answers = |catalogue: &Recommender| {
            let mut all = Vec::new();
            for q in rows.iter().skip(2000).step_by(10) {
                for filter in [&Filter::default(), &bags] {
                    let hits = catalogue.search(q, 10, Metric::Cosine, filter, None).unwrap();
                    for hit in &hits {
                        assert_eq!(hit.product.info.title, Some(format!("title of {}", hit.product.id)));
                        assert_eq!(hit.product.vector.len(), d, "results carry their vectors");
                    }
                    all.push(
                        hits.into_iter()
                            .map(|h| (h.product.id, h.score.to_bits()))
                            .collect::<Vec<_>>(),
                    );
                }
            }
            all
        };

        let first = Recommender::with_search(open(), mode).unwrap();
        let load = first.index_load().unwrap();
        assert_eq!(
            (load.rebuilt.as_deref(), load.written, load.products),
            (Some("no index file yet"), true, 2000)
        );
        assert!(
            matches!(first.locks.side().unwrap(), Side::Memory(index) if index.is_slim()),
            "what was built is read back from the file written"
        );
        let second = Recommender::with_search(open(), mode).unwrap();
        assert_eq!(
            second.index_load(),
            Some(&IndexLoad {
                products: 2000,
                ..IndexLoad::default()
            }),
            "read from the file as it is"
        );
        assert_eq!(answers(&second), answers(&first));
        let found = second.find("p0007").unwrap().unwrap();
        assert_eq!(
            (found.info.title.as_deref(), found.vector.as_slice()),
            (Some("title of p0007"), rows[7])
        );
        let page = second.page(Some("BAGS"), 10, 5).unwrap();
        assert_eq!((page.total, page.items.len(), page.categories.len()), (667, 5, 3));
        assert_eq!(page.items[0].info.title.as_deref(), Some("title of p0031"));
        let exact = Recommender::with_search(open(), SearchMode::Exact).unwrap();
        assert!(
            exact.index_load().unwrap().rebuilt.is_none(),
            "exact mode reads the same file"
        );

        // Another process writes: 40 new, 20 removed, 10 moved. A running catalogue follows through
        // the change log; a new one reads the file and then the changes.
        let new: Vec<StoredProduct> = (2000..2040).map(|n| titled(format!("p{n:04}"), rows[n], n)).collect();
        crate::store::store_products(&mut writer, &manifest(d), None, &new, 100).unwrap();
        let removed: Vec<String> = (0..20).map(|n| format!("p{:04}", n * 50)).collect();
        writer.remove(&removed).unwrap();
        let moved: Vec<StoredProduct> = (0..10)
            .map(|n| titled(format!("p{:04}", n * 50 + 1), rows[2040 + n], n))
            .collect();
        crate::store::store_products(&mut writer, &manifest(d), None, &moved, 100).unwrap();
        let third = Recommender::with_search(open(), mode).unwrap();
        assert_eq!(
            third.index_load(),
            Some(&IndexLoad {
                products: 2020,
                changed: 70,
                written: true,
                ..IndexLoad::default()
            }),
            "a small catalogue's file is written again at once"
        );
        for catalogue in [&second, &third] {
            assert_eq!(answers(catalogue), answers(&third));
            for p in new.iter().chain(&moved) {
                let hits = catalogue
                    .search(&p.vector, 3, Metric::Cosine, &Filter::default(), None)
                    .unwrap();
                assert_eq!(hits[0].product.id, p.id);
            }
            for id in &removed {
                assert!(catalogue.find(id).unwrap().is_none());
            }
        }

        // The file of another catalogue with the same ids: caught by the sample, built again.
        let other_db = dir.path().join("other.db");
        let mut other = SqliteStore::open(&other_db).unwrap();
        let shifted: Vec<StoredProduct> = products
            .iter()
            .map(|p| StoredProduct {
                vector: p.vector.iter().map(|x| x + 1.0).collect(),
                ..p.clone()
            })
            .collect();
        crate::store::store_products(&mut other, &manifest(d), None, &shifted, 500).unwrap();
        drop(Recommender::with_search(Box::new(SqliteStore::open(&other_db).unwrap()), mode).unwrap());
        // Replaced as files are (a rename): processes mapping the old file keep reading it.
        std::fs::rename(dir.path().join("other.db.index"), dir.path().join("c.db.index")).unwrap();
        let fourth = Recommender::with_search(open(), mode).unwrap();
        let why = fourth.index_load().unwrap().rebuilt.clone().unwrap();
        assert!(why.contains("products") || why.contains("vectors"), "{why}");
        assert_eq!(answers(&fourth), answers(&third));
    }

    #[test]
    fn writers_and_readers_on_many_threads_keep_memory_and_store_alike() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("c.db");
        let d = 8;
        let vectors = crate::index::ann::tests::clustered(400, d, 5);
        let rows: Vec<&[f32]> = vectors.chunks(d).collect();
        let products: Vec<StoredProduct> = (0..200).map(|n| titled(format!("p{n:04}"), rows[n], n)).collect();
        let mut store = crate::store::SqliteStore::open(&db).unwrap();
        crate::store::store_products(&mut store, &manifest(d), None, &products, 100).unwrap();
        let catalogue = Recommender::new(Box::new(store)).unwrap();
        std::thread::scope(|threads| {
            for t in 0..4 {
                let (catalogue, rows) = (&catalogue, &rows);
                threads.spawn(move || {
                    for n in 0..50 {
                        let id = format!("p{:04}", (t * 50 + n) % 200);
                        if n % 2 == 0 {
                            catalogue
                                .write(titled(id.clone(), rows[200 + t * 50 + n], n), WriteMode::Upsert)
                                .unwrap();
                        } else {
                            catalogue.remove(&id).unwrap();
                        }
                        let query = rows[(t * 31 + n) % 400];
                        catalogue
                            .search(query, 5, Metric::Cosine, &Filter::default(), None)
                            .unwrap();
                        catalogue.page(None, 0, 5).unwrap();
                    }
                });
            }
        });
        let in_memory: Vec<StoredProduct> = catalogue.page(None, 0, 1000).unwrap().items;
        let in_store = catalogue.with_store(|store| store.products()).unwrap();
        assert_eq!(in_memory.len(), in_store.len());
        assert!(!in_memory.is_empty());
        for (held, stored) in in_memory.iter().zip(&in_store) {
            let found = catalogue.find(&held.id).unwrap().unwrap();
            assert_eq!((&held.id, &found.vector), (&stored.id, &stored.vector));
            let best = catalogue
                .search(&stored.vector, 1, Metric::Cosine, &Filter::default(), None)
                .unwrap();
            assert!((best[0].score - 1.0).abs() < 1e-5, "{}: {}", stored.id, best[0].score);
        }
    }

    #[test]
    #[should_panic(expected = "lock order")]
    fn a_reader_of_memory_cannot_take_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = crate::store::SqliteStore::open(&dir.path().join("c.db")).unwrap();
        let product = titled("p".into(), &[1.0, 0.0], 0);
        crate::store::store_products(&mut store, &manifest(2), None, &[product], 10).unwrap();
        let catalogue = Recommender::new(Box::new(store)).unwrap();
        let Side::Memory(_reading) = catalogue.locks.side().unwrap() else {
            panic!("SQLite is searched in memory")
        };
        catalogue.locks.store();
    }
}

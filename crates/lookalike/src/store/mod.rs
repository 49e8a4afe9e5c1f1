//! The catalogue store: products, their vectors and the manifest of the model that made them.
//! [`Store`] is what the pipeline needs of one; [`SqliteStore`] (one file, the default) and
//! [`crate::store::postgres::PgStore`] (PostgreSQL + pgvector, for several servers on one catalogue)
//! implement it. Every write is a transaction, so a process killed at any point leaves either
//! the old or the new state of a batch.

pub mod postgres;
pub(crate) mod sqlite;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, Result};

pub use self::sqlite::SqliteStore;
use crate::learn::head::Head;
use crate::model::ModelManifest;
use crate::types::{CatalogueEntry, Filter, Metric, Page, ProductInfo, Scored, StoredProduct, Words};

/// What the store knows of a product without its vectors: enough to tell whether it changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Fingerprint {
    pub content_hash: String,
    pub image_path: String,
    pub info: ProductInfo,
    /// The further views: (path, content hash), in order.
    pub more_images: Vec<(String, String)>,
}

/// One product write; `vector: None` updates the metadata and keeps the stored vector.
pub struct ProductWrite<'a> {
    pub entry: &'a CatalogueEntry,
    pub content_hash: &'a str,
    pub vector: Option<&'a [f32]>,
    /// `Some`: the product's further views become these (the entry's `more_images`, in order);
    /// `None` leaves the stored ones.
    pub more_images: Option<&'a [ImageWrite<'a>]>,
}

/// A photo's local cells as stored, with the content hash they are kept under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhotoCells {
    pub content_hash: String,
    pub cells: Vec<u8>,
}

/// One further view of a product; `vector: None` keeps the vector stored for an image of the
/// same product with the same content hash.
#[derive(Debug, Clone, Copy)]
pub struct ImageWrite<'a> {
    pub path: &'a str,
    pub content_hash: &'a str,
    pub vector: Option<&'a [f32]>,
}

/// What a single-product write requires of the product already stored under its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Insert or replace.
    Upsert,
    /// Only if no product has the id: creating twice is a conflict, not an overwrite.
    CreateOnly,
    /// Only if the product exists: a write racing a delete must not bring the product back.
    UpdateOnly,
}

/// What other processes wrote to a store since a position in its change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    Nothing,
    /// These products were written or deleted; `position` is where the log now ends.
    Products {
        ids: Vec<String>,
        position: u64,
    },
    /// More changed than the log remembers: reload everything.
    Everything {
        position: u64,
    },
}

/// What a head kept with a catalogue is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadRole {
    /// The projection that made the catalogue's vectors (`index --head`).
    Projection,
    /// The catalogue's kinds learnt from its photos (`train kinds`, [`crate::learn::kinds`]).
    Kinds,
}

impl HeadRole {
    /// Its key in the manifest table of either store.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Self::Projection => "head",
            Self::Kinds => "kinds",
        }
    }

    /// The manifest key of its stamp ([`Store::head_stamp`]).
    pub(crate) fn stamp_key(self) -> &'static str {
        match self {
            Self::Projection => "head_stamp",
            Self::Kinds => "kinds_stamp",
        }
    }
}

/// The stamp [`Store::set_head`] keeps beside a head: its bytes' SHA-256, so a process holding a
/// copy can tell with one small read whether another one changed it.
pub(crate) fn head_stamp_of(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// What the indexer, the CLI and the server need of a catalogue store.
pub trait Store: Send {
    fn manifest(&self) -> Result<Option<ModelManifest>>;
    /// Records `model` as the one that makes this catalogue's vectors, or checks it is the recorded one.
    fn ensure_manifest(&self, model: &ModelManifest) -> Result<()>;
    /// The catalogue's head of that role, if any.
    fn head(&self, role: HeadRole) -> Result<Option<Head>>;
    /// Keeps `head` with the catalogue in that role, so queries use it without being told, and
    /// its stamp with it, in one transaction.
    fn set_head(&self, role: HeadRole, head: &Head) -> Result<()>;
    /// What changes whenever the head of that role is set: a reader whose copy was read under
    /// another stamp reads it again (`None` for a catalogue whose head predates stamps).
    fn head_stamp(&self, role: HeadRole) -> Result<Option<String>>;
    fn count(&self) -> Result<usize>;
    fn fingerprints(&self) -> Result<HashMap<String, Fingerprint>>;
    /// Applies all writes in one transaction.
    fn write_batch(&mut self, writes: &[ProductWrite]) -> Result<()>;
    /// One product in its own transaction; false when `mode`'s condition did not hold (nothing written).
    fn write_one(&mut self, write: &ProductWrite, mode: WriteMode) -> Result<bool>;
    fn remove(&mut self, ids: &[String]) -> Result<usize>;
    /// Keeps each photo's local cells ([`crate::index::local_cells::StoredCells::to_bytes`]) under
    /// its content hash, replacing what was kept there.
    fn put_cells(&mut self, cells: &[PhotoCells]) -> Result<()>;
    /// The content hashes of the photos whose cells are of
    /// [`crate::index::local_cells::CELLS_FORMAT`] (cells of another are made again).
    fn hashes_with_cells(&self) -> Result<HashSet<String>>;
    /// The cells (of that format) of each of `ids`' photos that has them, by product id.
    fn cells_of(&self, ids: &[&str]) -> Result<HashMap<String, Vec<PhotoCells>>>;
    /// Hands every photo's cells (of that format) to `visit`, `batch` at a time.
    fn each_cells(&self, batch: usize, visit: &mut dyn FnMut(Vec<PhotoCells>) -> Result<()>) -> Result<()>;
    /// Forgets the cells of photos no product has any more, and those of another format; how many.
    fn drop_unused_cells(&mut self) -> Result<usize>;
    /// Records `path` as a file that a server of this catalogue wrote (an upload): the only
    /// files a server ever deletes.
    fn record_upload(&self, path: &str) -> Result<()>;
    /// Forgets `path` if it is a recorded upload that no product's image is; true when it was,
    /// and the caller deletes the file.
    fn release_upload(&self, path: &str) -> Result<bool>;
    fn product(&self, id: &str) -> Result<Option<StoredProduct>>;
    /// Every product with its vector, in id order.
    fn products(&self) -> Result<Vec<StoredProduct>>;
    /// Hands every product with its vector to `visit`, in id order, as read: a million vectors are
    /// then never all in memory at once outside what `visit` keeps.
    fn each_product(&self, visit: &mut dyn FnMut(StoredProduct) -> Result<()>) -> Result<()> {
        self.products()?.into_iter().try_for_each(visit)
    }
    /// Products in id order from `offset`, optionally of one category, with the total and all categories.
    fn page(&self, category: Option<&str>, offset: usize, limit: usize) -> Result<Page>;
    /// Products whose title, category or description hold any of `words`, most relevant first
    /// (BM25 in SQLite, `ts_rank` in PostgreSQL; English stemming in both), at most `limit`,
    /// passing `filter` but for its groups. Scores grow with relevance and compare within one
    /// answer only.
    fn text_search(
        &self,
        words: &Words,
        limit: usize,
        filter: &Filter,
        exclude: Option<&str>,
    ) -> Result<Vec<(String, f32)>>;
    /// Announces many writes into a catalogue that may be empty: PostgreSQL then leaves its vector
    /// index aside and builds it once in [`Self::finish_bulk_load`], far faster than row by row.
    fn start_bulk_load(&mut self) -> Result<()> {
        Ok(())
    }
    fn finish_bulk_load(&mut self) -> Result<()> {
        Ok(())
    }
    /// How this catalogue is searched.
    fn search_side(&self) -> SearchSide<'_>;
}

/// How a store's catalogue is searched: each store is one or the other, and says which with
/// what that side needs of it.
pub enum SearchSide<'a> {
    /// Its products are loaded into a [`crate::index::VectorIndex`] and kept in step through the
    /// store's change log (SQLite).
    InMemory(&'a dyn ChangeLog),
    /// The database searches by itself (PostgreSQL with pgvector): every read is a query.
    InDatabase(&'a dyn VectorSearch),
}

/// What a store whose products are searched in memory gives that memory.
pub trait ChangeLog {
    /// Where the change log ends now; see [`Self::changes_since`].
    fn change_position(&self) -> Result<u64>;
    /// Products written by other processes since `position`.
    fn changes_since(&self, position: u64) -> Result<Changes>;
    /// Like [`Self::changes_since`], but read from the log even when this connection has seen no
    /// other connection commit (for a position that came from a file, not from this connection).
    fn changes_from(&self, position: u64) -> Result<Changes>;
    /// Where this catalogue's index file is kept (see [`crate::index::file`]).
    fn index_file(&self) -> std::path::PathBuf;
}

/// What a store that searches by itself answers.
pub trait VectorSearch {
    /// The `k` nearest products to `queries` (one photo, or a product's views) by the database's
    /// own vector index, best first, without their vectors; each product scores by
    /// [`Metric::product_score`] over every pair of a query and one of its images.
    fn nearest(
        &self,
        queries: &[&[f32]],
        k: usize,
        metric: Metric,
        filter: &Filter,
        exclude: Option<&str>,
    ) -> Result<Vec<Scored>>;
    /// Size of the database's vector index.
    fn vector_index_bytes(&self) -> Result<usize>;
}

/// The catalogue's schema version, one numbering for both stores (SQLite's `user_version`,
/// PostgreSQL's `lookalike_schema`): a version holds the same things in each.
/// 1 the manifest and the products; 2 the image-path index (and SQLite's change log, which memory
/// follows); 3 product links, groups and further photos; 4 the word index; 5 the record of uploads
/// and Unicode case-folded category keys; 6 accent-insensitive words (SQLite's word index folded
/// accents from 4 on, so its 6 adds nothing); 7 each photo's local cells.
pub const SCHEMA_VERSION: u32 = 7;

/// Refuses a catalogue written by a newer lookalike, whose schema this one cannot read right.
pub(crate) fn check_schema(catalogue: &dyn std::fmt::Display, found: u32) -> Result<()> {
    if found > SCHEMA_VERSION {
        bail!("{catalogue} was written by a newer lookalike (schema {found}, this one knows up to {SCHEMA_VERSION})");
    }
    Ok(())
}

/// `postgres://…` or `postgresql://…` opens PostgreSQL, anything else is a SQLite file path
/// (created if missing).
pub fn open_store(location: &str) -> Result<Box<dyn Store>> {
    if postgres::is_postgres_url(location) {
        Ok(Box::new(postgres::PgStore::connect(location)?))
    } else {
        Ok(Box::new(SqliteStore::open(Path::new(location))?))
    }
}

/// Opens a store only to read it: a SQLite file is never created, changed or upgraded, so a
/// read-only file or folder serves. (PostgreSQL access rights are the database's business.)
pub fn open_store_read_only(location: &str) -> Result<Box<dyn Store>> {
    if postgres::is_postgres_url(location) {
        open_store(location)
    } else {
        Ok(Box::new(SqliteStore::open_read_only(Path::new(location))?))
    }
}

/// The manifest error both stores give when vectors of another model would be mixed in.
pub(crate) fn check_same_model(stored: &ModelManifest, model: &ModelManifest) -> Result<()> {
    if stored == model {
        return Ok(());
    }
    let describe = |m: &ModelManifest| {
        format!(
            "{} {} (weights {}, head {}, colour {}, {}-d, preprocessing {})",
            m.model,
            m.precision.as_deref().unwrap_or("fp32"),
            &m.weights_sha256[..12.min(m.weights_sha256.len())],
            m.head.as_deref().unwrap_or("none"),
            m.colour.map_or("none".to_string(), |w| format!("weight {w}")),
            m.dimension,
            m.preprocessing
        )
    };
    bail!(
        "this catalogue's vectors were made by {}; refusing to mix them with {}. \
         Index into a new database, or re-index this one from scratch.",
        describe(stored),
        describe(model)
    )
}

/// Copies every product (vectors and photos' cells included), the manifest and the heads from
/// `source` into `target`, `batch` products per transaction; returns how many were copied.
pub fn copy_catalogue(source: &dyn Store, target: &mut dyn Store, batch: usize) -> Result<usize> {
    let Some(manifest) = source.manifest()? else {
        bail!("the source catalogue has no products yet");
    };
    let products = source.products()?;
    store_products(
        target,
        &manifest,
        source.head(HeadRole::Projection)?.as_ref(),
        &products,
        batch,
    )?;
    if let Some(kinds) = source.head(HeadRole::Kinds)? {
        target.set_head(HeadRole::Kinds, &kinds)?;
    }
    source.each_cells(batch, &mut |cells| target.put_cells(&cells))?;
    Ok(products.len())
}

/// Records `manifest` (and `head`) in `target`, then writes `products` with their vectors,
/// `batch` per transaction.
pub fn store_products(
    target: &mut dyn Store,
    manifest: &ModelManifest,
    head: Option<&Head>,
    products: &[StoredProduct],
    batch: usize,
) -> Result<()> {
    target.ensure_manifest(manifest)?;
    if let Some(head) = head {
        target.set_head(HeadRole::Projection, head)?;
    }
    target.start_bulk_load()?;
    for chunk in products.chunks(batch.max(1)) {
        let entries: Vec<CatalogueEntry> = chunk.iter().map(StoredProduct::entry).collect();
        let images: Vec<Vec<ImageWrite>> = chunk.iter().map(StoredProduct::image_writes).collect();
        let writes: Vec<ProductWrite> = entries
            .iter()
            .zip(chunk)
            .zip(&images)
            .map(|((entry, p), images)| ProductWrite {
                entry,
                content_hash: &p.content_hash,
                vector: Some(&p.vector),
                more_images: Some(images),
            })
            .collect();
        target.write_batch(&writes)?;
    }
    target.finish_bulk_load()
}

impl StoredProduct {
    /// The catalogue entry this product would be written from.
    pub fn entry(&self) -> CatalogueEntry {
        CatalogueEntry {
            id: self.id.clone(),
            info: self.info.clone(),
            image_path: self.image_path.clone().into(),
            more_images: self.more_images.iter().map(|i| i.path.clone().into()).collect(),
        }
    }

    /// Writes of its further views, with their vectors.
    pub fn image_writes(&self) -> Vec<ImageWrite<'_>> {
        self.more_images
            .iter()
            .map(|i| ImageWrite {
                path: &i.path,
                content_hash: &i.content_hash,
                vector: Some(&i.vector),
            })
            .collect()
    }
}

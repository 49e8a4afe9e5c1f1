//! The catalogue store: products, their vectors and the manifest of the model that made them.
//! [`Store`] is what the pipeline needs of one; [`SqliteStore`] (one file, the default) and
//! [`crate::pgstore::PgStore`] (PostgreSQL + pgvector, for several servers on one catalogue)
//! implement it. Every write is a transaction, so a process killed at any point leaves either
//! the old or the new state of a batch.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OptionalExtension};

use crate::catalogue::{CatalogueEntry, ProductInfo};
use crate::head::Head;
use crate::model::ModelManifest;
use crate::recommend::{Page, Scored};
use crate::search::{Filter, Metric};

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS manifest (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS products (
    id           TEXT PRIMARY KEY,
    title        TEXT,
    price        REAL,
    category     TEXT,
    description  TEXT,
    image_path   TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    vector       BLOB NOT NULL,
    updated_at   TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX IF NOT EXISTS products_category ON products(category);
CREATE INDEX IF NOT EXISTS products_content_hash ON products(content_hash);
";

#[derive(Debug, Clone, PartialEq)]
pub struct StoredProduct {
    pub id: String,
    pub info: ProductInfo,
    pub image_path: String,
    pub content_hash: String,
    pub vector: Vec<f32>,
}

/// What the store knows of a product without its vector: enough to tell whether it changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Fingerprint {
    pub content_hash: String,
    pub image_path: String,
    pub info: ProductInfo,
}

/// One product write; `vector: None` updates the metadata and keeps the stored vector.
pub struct ProductWrite<'a> {
    pub entry: &'a CatalogueEntry,
    pub content_hash: &'a str,
    pub vector: Option<&'a [f32]>,
}

/// What the indexer, the CLI and the server need of a catalogue store.
pub trait Store: Send {
    fn manifest(&self) -> Result<Option<ModelManifest>>;
    /// Records `model` as the one that makes this catalogue's vectors, or checks it is the recorded one.
    fn ensure_manifest(&self, model: &ModelManifest) -> Result<()>;
    /// The projection head that made this catalogue's vectors, if any.
    fn head(&self) -> Result<Option<Head>>;
    /// Keeps `head` with the catalogue, so queries get projected the same way without being told.
    fn set_head(&self, head: &Head) -> Result<()>;
    fn count(&self) -> Result<usize>;
    fn fingerprints(&self) -> Result<HashMap<String, Fingerprint>>;
    /// Applies all writes in one transaction.
    fn write_batch(&mut self, writes: &[ProductWrite]) -> Result<()>;
    fn remove(&mut self, ids: &[String]) -> Result<usize>;
    fn product(&self, id: &str) -> Result<Option<StoredProduct>>;
    /// Every product with its vector, in id order.
    fn products(&self) -> Result<Vec<StoredProduct>>;
    /// Whether the store searches by itself ([`Self::nearest`], [`Self::page`]); otherwise its
    /// products are loaded into a [`crate::search::VectorIndex`] (see [`crate::recommend`]).
    fn has_vector_index(&self) -> bool {
        false
    }
    /// The `k` nearest products by the database's own vector index, best first, without their vectors.
    fn nearest(
        &self,
        _query: &[f32],
        _k: usize,
        _metric: Metric,
        _filter: &Filter,
        _exclude: Option<&str>,
    ) -> Result<Vec<Scored>> {
        bail!("this store has no vector index of its own")
    }
    /// Products in id order from `offset`, optionally of one category, with the total and all categories.
    fn page(&self, _category: Option<&str>, _offset: usize, _limit: usize) -> Result<Page> {
        bail!("this store has no vector index of its own")
    }
    /// Size of the database's vector index.
    fn vector_index_bytes(&self) -> Result<usize> {
        Ok(0)
    }
    /// Announces many writes into a catalogue that may be empty: PostgreSQL then leaves its vector
    /// index aside and builds it once in [`Self::finish_bulk_load`], far faster than row by row.
    fn start_bulk_load(&mut self) -> Result<()> {
        Ok(())
    }
    fn finish_bulk_load(&mut self) -> Result<()> {
        Ok(())
    }
}

/// `postgres://…` or `postgresql://…` opens PostgreSQL, anything else is a SQLite file path.
pub fn open_store(location: &str) -> Result<Box<dyn Store>> {
    if crate::pgstore::is_postgres_url(location) {
        Ok(Box::new(crate::pgstore::PgStore::connect(location)?))
    } else {
        Ok(Box::new(SqliteStore::open(Path::new(location))?))
    }
}

/// The manifest error both stores give when vectors of another model would be mixed in.
pub(crate) fn check_same_model(stored: &ModelManifest, model: &ModelManifest) -> Result<()> {
    if stored == model {
        return Ok(());
    }
    bail!(
        "this catalogue's vectors were made by {} (weights {}, head {}, {}-d, preprocessing {}); \
         refusing to mix them with {} (weights {}, head {}, {}-d, preprocessing {}). \
         Index into a new database, or re-index this one from scratch.",
        stored.model,
        &stored.weights_sha256[..12.min(stored.weights_sha256.len())],
        stored.head.as_deref().unwrap_or("none"),
        stored.dimension,
        stored.preprocessing,
        model.model,
        &model.weights_sha256[..12.min(model.weights_sha256.len())],
        model.head.as_deref().unwrap_or("none"),
        model.dimension,
        model.preprocessing
    )
}

/// Copies every product (vectors included), the manifest and the head from `source` into
/// `target`, `batch` products per transaction; returns how many were copied.
pub fn copy_catalogue(source: &dyn Store, target: &mut dyn Store, batch: usize) -> Result<usize> {
    let Some(manifest) = source.manifest()? else {
        bail!("the source catalogue has no products yet");
    };
    let products = source.products()?;
    store_products(target, &manifest, source.head()?.as_ref(), &products, batch)?;
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
        target.set_head(head)?;
    }
    target.start_bulk_load()?;
    for chunk in products.chunks(batch.max(1)) {
        let entries: Vec<CatalogueEntry> = chunk
            .iter()
            .map(|p| CatalogueEntry {
                id: p.id.clone(),
                info: p.info.clone(),
                image_path: p.image_path.clone().into(),
            })
            .collect();
        let writes: Vec<ProductWrite> = entries
            .iter()
            .zip(chunk)
            .map(|(entry, p)| ProductWrite {
                entry,
                content_hash: &p.content_hash,
                vector: Some(&p.vector),
            })
            .collect();
        target.write_batch(&writes)?;
    }
    target.finish_bulk_load()
}

pub struct SqliteStore {
    conn: Connection,
}

fn vector_to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn blob_to_vector(b: &[u8]) -> Vec<f32> {
    crate::model::weights::bytes_to_f32(b)
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self> {
        let conn =
            Connection::open(path).with_context(|| format!("cannot open catalogue database {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .with_context(|| format!("{} is not a lookalike catalogue (SQLite) database", path.display()))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            bail!(
                "{} was written by a newer lookalike (schema {version}, this one knows {SCHEMA_VERSION})",
                path.display()
            );
        }
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(Self { conn })
    }

    pub fn integrity_check(&self) -> Result<String> {
        Ok(self.conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }
}

/// title, price, category, description from consecutive columns starting at `first`.
fn info_at(r: &rusqlite::Row, first: usize) -> rusqlite::Result<ProductInfo> {
    Ok(ProductInfo {
        title: r.get(first)?,
        price: r.get(first + 1)?,
        category: r.get(first + 2)?,
        description: r.get(first + 3)?,
    })
}

fn row_to_product(r: &rusqlite::Row) -> rusqlite::Result<StoredProduct> {
    Ok(StoredProduct {
        id: r.get(0)?,
        info: info_at(r, 1)?,
        image_path: r.get(5)?,
        content_hash: r.get(6)?,
        vector: blob_to_vector(&r.get::<_, Vec<u8>>(7)?),
    })
}

const PRODUCT_COLUMNS: &str = "id, title, price, category, description, image_path, content_hash, vector";

impl Store for SqliteStore {
    fn manifest(&self) -> Result<Option<ModelManifest>> {
        let value: Option<String> = self
            .conn
            .query_row("SELECT value FROM manifest WHERE key = 'model'", [], |r| r.get(0))
            .optional()?;
        value
            .map(|v| serde_json::from_str(&v).context("unreadable model manifest in the database"))
            .transpose()
    }

    fn ensure_manifest(&self, model: &ModelManifest) -> Result<()> {
        match self.manifest()? {
            Some(stored) => check_same_model(&stored, model),
            None => {
                self.conn.execute(
                    "INSERT INTO manifest (key, value) VALUES ('model', ?1)",
                    [serde_json::to_string(model)?],
                )?;
                Ok(())
            }
        }
    }

    fn head(&self) -> Result<Option<Head>> {
        let value: Option<String> = self
            .conn
            .query_row("SELECT value FROM manifest WHERE key = 'head'", [], |r| r.get(0))
            .optional()?;
        value
            .map(|hex_bytes| {
                let bytes = hex::decode(hex_bytes).context("unreadable head in the database")?;
                Head::from_bytes(&bytes)
            })
            .transpose()
    }

    fn set_head(&self, head: &Head) -> Result<()> {
        self.conn.execute(
            "INSERT INTO manifest (key, value) VALUES ('head', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [hex::encode(head.to_bytes()?)],
        )?;
        Ok(())
    }

    fn count(&self) -> Result<usize> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM products", [], |r| r.get::<_, i64>(0))? as usize)
    }

    fn fingerprints(&self) -> Result<HashMap<String, Fingerprint>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, title, price, category, description, image_path, content_hash FROM products")?;
        let rows = stmt.query_map([], |r| {
            let info = info_at(r, 1)?;
            Ok((
                r.get::<_, String>(0)?,
                Fingerprint {
                    info,
                    image_path: r.get(5)?,
                    content_hash: r.get(6)?,
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn write_batch(&mut self, writes: &[ProductWrite]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO products (id, title, price, category, description, image_path, content_hash, vector)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(id) DO UPDATE SET title = excluded.title, price = excluded.price,
                   category = excluded.category, description = excluded.description,
                   image_path = excluded.image_path, content_hash = excluded.content_hash,
                   vector = excluded.vector, updated_at = CURRENT_TIMESTAMP",
            )?;
            let mut update_info = tx.prepare_cached(
                "UPDATE products SET title = ?2, price = ?3, category = ?4, description = ?5, image_path = ?6,
                   updated_at = CURRENT_TIMESTAMP WHERE id = ?1",
            )?;
            for w in writes {
                let e = w.entry;
                let path = e.image_path.to_string_lossy();
                let i = &e.info;
                match w.vector {
                    Some(v) => upsert.execute(params![
                        e.id,
                        i.title,
                        i.price,
                        i.category,
                        i.description,
                        path,
                        w.content_hash,
                        vector_to_blob(v)
                    ])?,
                    None => update_info.execute(params![e.id, i.title, i.price, i.category, i.description, path])?,
                };
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn remove(&mut self, ids: &[String]) -> Result<usize> {
        let tx = self.conn.transaction()?;
        let mut removed = 0;
        {
            let mut delete = tx.prepare_cached("DELETE FROM products WHERE id = ?1")?;
            for id in ids {
                removed += delete.execute([id])?;
            }
        }
        tx.commit()?;
        Ok(removed)
    }

    fn product(&self, id: &str) -> Result<Option<StoredProduct>> {
        let sql = format!("SELECT {} FROM products WHERE id = ?1", PRODUCT_COLUMNS);
        Ok(self.conn.query_row(&sql, [id], row_to_product).optional()?)
    }

    fn products(&self) -> Result<Vec<StoredProduct>> {
        let sql = format!("SELECT {} FROM products ORDER BY id", PRODUCT_COLUMNS);
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([], row_to_product)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn manifest(model: &str) -> ModelManifest {
        ModelManifest {
            model: model.into(),
            weights_sha256: "abc".into(),
            preprocessing: "p".into(),
            dimension: 2,
            head: None,
        }
    }

    fn entry(id: &str, title: &str) -> CatalogueEntry {
        CatalogueEntry {
            id: id.into(),
            info: ProductInfo {
                title: Some(title.into()),
                price: Some(1.5),
                ..Default::default()
            },
            image_path: PathBuf::from(format!("/img/{id}.jpg")),
        }
    }

    #[test]
    fn writes_read_back_and_metadata_updates_keep_the_vector() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let (a, b) = (entry("a", "A"), entry("b", "B"));
        store
            .write_batch(&[
                ProductWrite {
                    entry: &a,
                    content_hash: "h1",
                    vector: Some(&[1.0, 0.0]),
                },
                ProductWrite {
                    entry: &b,
                    content_hash: "h2",
                    vector: Some(&[0.0, 1.0]),
                },
            ])
            .unwrap();
        let renamed = entry("a", "A2");
        store
            .write_batch(&[ProductWrite {
                entry: &renamed,
                content_hash: "h1",
                vector: None,
            }])
            .unwrap();
        let p = store.product("a").unwrap().unwrap();
        assert_eq!(p.info.title.as_deref(), Some("A2"));
        assert_eq!(p.vector, vec![1.0, 0.0]);
        assert_eq!(store.count().unwrap(), 2);
        assert_eq!(store.fingerprints().unwrap()["b"].content_hash, "h2");
        assert_eq!(store.remove(&["b".into(), "zz".into()]).unwrap(), 1);
        assert_eq!(store.products().unwrap().len(), 1);
    }

    #[test]
    fn a_database_refuses_vectors_of_another_model() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        SqliteStore::open(&path)
            .unwrap()
            .ensure_manifest(&manifest("m1"))
            .unwrap();
        let store = SqliteStore::open(&path).unwrap();
        store.ensure_manifest(&manifest("m1")).unwrap();
        let err = store.ensure_manifest(&manifest("m2")).unwrap_err().to_string();
        assert!(err.contains("refusing to mix"), "{err}");
    }

    #[test]
    fn a_non_database_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not.db");
        std::fs::write(
            &path,
            b"this is not sqlite, just some text that is long enough to have a header",
        )
        .unwrap();
        let err = SqliteStore::open(&path).err().unwrap().to_string();
        assert!(err.contains("not a lookalike catalogue"), "{err}");
    }
}

//! [`SqliteStore`]: the catalogue in one SQLite file (the default store).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OptionalExtension};

use super::{check_same_model, Fingerprint, ProductWrite, Store};
use crate::learn::head::Head;
use crate::model::ModelManifest;
use crate::types::{ProductInfo, StoredProduct};

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
    use crate::types::CatalogueEntry;
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

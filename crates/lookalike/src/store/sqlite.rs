//! [`SqliteStore`]: the catalogue in one SQLite file (the default store).

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rusqlite::functions::FunctionFlags;
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};

use super::{
    check_same_model, head_stamp_of, ChangeLog, Changes, Fingerprint, HeadRole, ImageWrite, PhotoCells, ProductWrite,
    SearchSide, Store, WriteMode,
};
use crate::index::local_cells::CELLS_FORMAT;
use crate::learn::head::Head;
use crate::model::ModelManifest;
use crate::types::{category_key, Filter, Page, ProductImage, ProductInfo, StoredProduct, Words};

/// [`super::SCHEMA_VERSION`], as SQLite's `user_version` holds it.
const SCHEMA_VERSION: i64 = super::SCHEMA_VERSION as i64;

/// The upgrade to version 7: each photo's local cells ([`crate::index::local_cells`]) by its
/// content hash, so a photo kept by several products or by a product again keeps one copy; and
/// the index that finds whether any product still has a photo.
const SCHEMA_7: &str = "
CREATE TABLE photo_cells (
    content_hash TEXT PRIMARY KEY,
    format       INTEGER NOT NULL,
    cells        BLOB NOT NULL
);
CREATE INDEX product_images_content_hash ON product_images(content_hash);
";

/// The upgrade to version 5: the files a server wrote (uploads), the only ones it may delete.
const SCHEMA_5: &str = "
CREATE TABLE uploads (
    path        TEXT PRIMARY KEY,
    recorded_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
";

/// The SQL function giving [`category_key`], which category filters compare: SQLite's own
/// `lower()` folds ASCII only.
const CATEGORY_KEY: &str = "lookalike_category_key";

/// The upgrade to version 4: a full-text index over the products' words, kept by triggers (so
/// every writer, whichever its version, keeps it right) and filled from what is there.
const SCHEMA_4: &str = "
CREATE VIRTUAL TABLE product_words USING fts5(
    title, category, description,
    content = 'products', content_rowid = 'rowid',
    tokenize = 'porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER product_words_inserted AFTER INSERT ON products BEGIN
    INSERT INTO product_words (rowid, title, category, description)
    VALUES (NEW.rowid, NEW.title, NEW.category, NEW.description);
END;
CREATE TRIGGER product_words_deleted AFTER DELETE ON products BEGIN
    INSERT INTO product_words (product_words, rowid, title, category, description)
    VALUES ('delete', OLD.rowid, OLD.title, OLD.category, OLD.description);
END;
CREATE TRIGGER product_words_updated AFTER UPDATE OF title, category, description ON products BEGIN
    INSERT INTO product_words (product_words, rowid, title, category, description)
    VALUES ('delete', OLD.rowid, OLD.title, OLD.category, OLD.description);
    INSERT INTO product_words (rowid, title, category, description)
    VALUES (NEW.rowid, NEW.title, NEW.category, NEW.description);
END;
INSERT INTO product_words (product_words) VALUES ('rebuild');
";

/// BM25 weights of title, category and description: a word in the title says most about a product.
const WORD_WEIGHTS: (f64, f64, f64) = (4.0, 2.0, 1.0);

/// The upgrade to version 3 (after [`SCHEMA`], which creates version 2's objects).
const SCHEMA_3: &str = "
ALTER TABLE products ADD COLUMN url TEXT;
ALTER TABLE products ADD COLUMN group_id TEXT;
CREATE TABLE product_images (
    product_id   TEXT NOT NULL,
    position     INTEGER NOT NULL,
    image_path   TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    vector       BLOB NOT NULL,
    PRIMARY KEY (product_id, position)
) WITHOUT ROWID;
CREATE INDEX product_images_path ON product_images(image_path);
CREATE TRIGGER product_images_inserted AFTER INSERT ON product_images
    BEGIN INSERT INTO changes (id) VALUES (NEW.product_id); END;
CREATE TRIGGER product_images_deleted AFTER DELETE ON product_images
    BEGIN INSERT INTO changes (id) VALUES (OLD.product_id); END;
CREATE TRIGGER products_deleted_images AFTER DELETE ON products
    BEGIN DELETE FROM product_images WHERE product_id = OLD.id; END;
";

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
CREATE INDEX IF NOT EXISTS products_image_path ON products(image_path);
-- Every write to products, by whichever process: a server keeping the catalogue in memory reads
-- what others changed from here (see Store::changes_since).
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id  TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS products_inserted AFTER INSERT ON products
    BEGIN INSERT INTO changes (id) VALUES (NEW.id); END;
CREATE TRIGGER IF NOT EXISTS products_updated AFTER UPDATE ON products
    BEGIN INSERT INTO changes (id) VALUES (NEW.id); END;
CREATE TRIGGER IF NOT EXISTS products_deleted AFTER DELETE ON products
    BEGIN INSERT INTO changes (id) VALUES (OLD.id); END;
";

/// Changes remembered; a reader further behind reloads everything.
const CHANGES_KEPT: i64 = 100_000;
/// How long opening waits for another process (creating or migrating the same file).
const BUSY_WAIT: Duration = Duration::from_secs(10);

pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    /// The schema version of the file (below [`SCHEMA_VERSION`] only when opened read-only).
    schema: i64,
    /// `PRAGMA data_version` when the change log was last read: it moves only when another
    /// connection commits, so an unchanged value answers [`Store::changes_since`] without a query.
    seen_data_version: Cell<Option<i64>>,
}

fn vector_to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn blob_to_vector(b: &[u8]) -> Vec<f32> {
    crate::linalg::bytes_to_f32(b)
}

/// What went wrong opening `path`, in the words of someone who has to fix it.
fn open_error(path: &Path, err: rusqlite::Error) -> anyhow::Error {
    let shown = path.display();
    let code = err.sqlite_error_code();
    let why = match code {
        Some(ErrorCode::NotADatabase) => format!("{shown} is not a lookalike catalogue (SQLite) database"),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => format!(
            "{shown} stayed locked by another process for {} s",
            BUSY_WAIT.as_secs()
        ),
        Some(ErrorCode::ReadOnly) => format!(
            "{shown} is read-only (the file or its folder): it can be searched and served with --read-only, not written"
        ),
        Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => format!(
            "cannot open {shown}: check that its folder exists and that this user may read (and, to write, change) the file and its folder"
        ),
        _ => format!("cannot use catalogue database {shown}"),
    };
    anyhow::Error::new(err).context(why)
}

/// Runs `step` until it is not refused for a lock held by another connection, for up to
/// [`BUSY_WAIT`]. SQLite's busy handler does not cover every case: switching to WAL, or a
/// transaction upgrading to a writer, can be refused at once.
fn retry_busy<T>(mut step: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = Instant::now() + BUSY_WAIT;
    let mut pause = Duration::from_millis(2);
    loop {
        match step() {
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(pause + Duration::from_micros(fastrand::u64(0..2000)));
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

impl SqliteStore {
    /// The manifest table's value under `key`, if any.
    fn manifest_value(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM manifest WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    /// Opens (or creates) a catalogue to read and write, bringing its schema up to date. Several
    /// processes may do this at once on a new file.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).map_err(|e| open_error(path, e))?;
        conn.busy_timeout(BUSY_WAIT)?;
        retry_busy(|| conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0)))
            .map_err(|e| open_error(path, e))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| open_error(path, e))?;
        retry_busy(|| Self::migrate(&conn)).map_err(|e| open_error(path, e))?;
        let mut store = Self::with_connection(conn, path)?;
        store.check_version()?;
        Ok(store)
    }

    /// Opens an existing catalogue without ever writing to it: a read-only file or folder works.
    pub fn open_read_only(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(crate::error::Error::not_found(format!(
                "no catalogue database at {} (create it with `lookalike index`)",
                path.display()
            ))
            .into());
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = match Connection::open_with_flags(path, flags).and_then(|c| Self::probe(&c).map(|_| c)) {
            Ok(conn) => conn,
            // A WAL database whose folder is read-only has no shared-memory file to map; nobody
            // can be writing it then, so it can be opened as immutable.
            Err(e) if matches!(e.sqlite_error_code(), Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly)) => {
                let uri = format!(
                    "file:{}?immutable=1",
                    percent_encoding::utf8_percent_encode(&path.to_string_lossy(), URI_PATH)
                );
                let conn = Connection::open_with_flags(&uri, flags).map_err(|e| open_error(path, e))?;
                Self::probe(&conn).map_err(|e| open_error(path, e))?;
                conn
            }
            Err(e) => return Err(open_error(path, e)),
        };
        conn.busy_timeout(BUSY_WAIT)?;
        let mut store = Self::with_connection(conn, path)?;
        store.check_version()?;
        let tables: i64 = store.conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('manifest', 'products')",
            [],
            |r| r.get(0),
        )?;
        if tables != 2 {
            bail!("{} is not a lookalike catalogue (no products table)", path.display());
        }
        Ok(store)
    }

    fn with_connection(conn: Connection, path: &Path) -> Result<Self> {
        conn.create_scalar_function(
            CATEGORY_KEY,
            1,
            FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
            |context| Ok(context.get::<Option<String>>(0)?.map(|c| category_key(&c))),
        )?;
        Ok(Self {
            conn,
            path: path.to_path_buf(),
            schema: 0,
            seen_data_version: Cell::new(None),
        })
    }

    /// Reads the schema version: the first read of a file, where a non-database shows.
    fn probe(conn: &Connection) -> rusqlite::Result<i64> {
        conn.pragma_query_value(None, "user_version", |r| r.get(0))
    }

    /// Reads the file's schema version, refusing one newer than this lookalike knows.
    fn check_version(&mut self) -> Result<()> {
        let version = Self::probe(&self.conn).map_err(|e| open_error(&self.path, e))?;
        self.schema = version;
        super::check_schema(&self.path.display(), u32::try_from(version).unwrap_or(u32::MAX))
    }

    /// Creates or upgrades the schema in one immediate transaction, so processes opening a new
    /// file together queue instead of racing.
    fn migrate(conn: &Connection) -> rusqlite::Result<()> {
        if Self::probe(conn)? >= SCHEMA_VERSION {
            return Ok(());
        }
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let result = (|| {
            let version = Self::probe(conn)?;
            if version < SCHEMA_VERSION {
                conn.execute_batch(SCHEMA)?;
                if version < 3 {
                    conn.execute_batch(SCHEMA_3)?;
                }
                if version < 4 {
                    conn.execute_batch(SCHEMA_4)?;
                }
                if version < 5 {
                    conn.execute_batch(SCHEMA_5)?;
                }
                if version < 7 {
                    conn.execute_batch(SCHEMA_7)?;
                }
                conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            }
            conn.execute_batch("COMMIT")
        })();
        if result.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        result
    }

    /// A transaction that takes the write lock at its start, where SQLite waits for it up to
    /// [`BUSY_WAIT`]. A deferred one takes it at its first write, where SQLite may answer
    /// "database is locked" at once instead of waiting (four `lookalike index` runs started
    /// together on a new file: a failure in one round of three; none in 25 rounds since).
    fn write_transaction(&mut self) -> rusqlite::Result<rusqlite::Transaction<'_>> {
        self.conn.transaction_with_behavior(TransactionBehavior::Immediate)
    }

    pub fn integrity_check(&self) -> Result<String> {
        Ok(self.conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }

    /// Whether this file has a change log (schema 2; a read-only open of an older file has none).
    fn has_change_log(&self) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'changes'",
            [],
            |r| r.get::<_, i64>(0),
        )? > 0)
    }

    /// Further images by product id (none in files before schema 3), each list in order;
    /// `only` restricts them to one product.
    fn more_images(&self, only: Option<&str>, with_vectors: bool) -> Result<HashMap<String, Vec<ProductImage>>> {
        let mut images: HashMap<String, Vec<ProductImage>> = HashMap::new();
        if self.schema < 3 {
            return Ok(images);
        }
        let vector = if with_vectors { "vector" } else { "NULL AS vector" };
        let sql = format!(
            "SELECT product_id, image_path, content_hash, {vector} FROM product_images
             WHERE ?1 IS NULL OR product_id = ?1 ORDER BY product_id, position"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut rows = stmt.query([only])?;
        while let Some(r) = rows.next()? {
            let blob: Option<Vec<u8>> = r.get(3)?;
            images.entry(r.get(0)?).or_default().push(ProductImage {
                path: r.get(1)?,
                content_hash: r.get(2)?,
                vector: blob.map(|b| blob_to_vector(&b)).unwrap_or_default(),
            });
        }
        Ok(images)
    }
}

/// Characters escaped in a file path inside a SQLite URI.
const URI_PATH: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'?').add(b'#').add(b'%');

/// Inserts a product with its vector; completed by what to do when the id exists.
macro_rules! insert_product {
    ($on_conflict:literal) => {
        concat!(
            "INSERT INTO products (id, title, price, category, description, url, image_path, content_hash, vector, group_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT(id) ",
            $on_conflict
        )
    };
}

/// The statement for one product write in `mode`; `None` vector keeps the stored one.
fn write_in(tx: &rusqlite::Transaction, w: &ProductWrite, mode: WriteMode) -> Result<bool> {
    let e = w.entry;
    let path = e.image_path.to_string_lossy();
    let i = &e.info;
    let sql = match (w.vector.is_some(), mode) {
        (true, WriteMode::Upsert) => insert_product!(
            "DO UPDATE SET title = excluded.title, price = excluded.price,
               category = excluded.category, description = excluded.description, url = excluded.url,
               image_path = excluded.image_path, content_hash = excluded.content_hash,
               vector = excluded.vector, group_id = excluded.group_id, updated_at = CURRENT_TIMESTAMP"
        ),
        (true, WriteMode::CreateOnly) => insert_product!("DO NOTHING"),
        (true, WriteMode::UpdateOnly) => {
            "UPDATE products SET title = ?2, price = ?3, category = ?4, description = ?5, url = ?6,
               image_path = ?7, content_hash = ?8, vector = ?9, group_id = ?10, updated_at = CURRENT_TIMESTAMP
             WHERE id = ?1"
        }
        (false, WriteMode::CreateOnly) => bail!("product {:?}: a new product needs its vector", e.id),
        (false, _) => {
            "UPDATE products SET title = ?2, price = ?3, category = ?4, description = ?5, url = ?6,
               image_path = ?7, group_id = ?8, updated_at = CURRENT_TIMESTAMP WHERE id = ?1"
        }
    };
    let mut statement = tx.prepare_cached(sql)?;
    let changed = match w.vector {
        Some(v) => statement.execute(params![
            e.id,
            i.title,
            i.price,
            i.category,
            i.description,
            i.url,
            path,
            w.content_hash,
            vector_to_blob(v),
            i.group
        ])?,
        None => statement.execute(params![
            e.id,
            i.title,
            i.price,
            i.category,
            i.description,
            i.url,
            path,
            i.group
        ])?,
    };
    if changed == 0 {
        return Ok(false);
    }
    if let Some(images) = w.more_images {
        replace_images(tx, &e.id, images)?;
    }
    Ok(true)
}

/// Makes `images` the product's further views, taking stored vectors for those without one.
fn replace_images(tx: &rusqlite::Transaction, product_id: &str, images: &[ImageWrite]) -> Result<()> {
    let mut kept: HashMap<String, Vec<u8>> = HashMap::new();
    if images.iter().any(|i| i.vector.is_none()) {
        let mut stmt = tx.prepare_cached("SELECT content_hash, vector FROM product_images WHERE product_id = ?1")?;
        for row in stmt.query_map([product_id], |r| Ok((r.get(0)?, r.get(1)?)))? {
            let (hash, blob) = row?;
            kept.insert(hash, blob);
        }
    }
    tx.prepare_cached("DELETE FROM product_images WHERE product_id = ?1")?
        .execute([product_id])?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO product_images (product_id, position, image_path, content_hash, vector) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (n, image) in images.iter().enumerate() {
        let blob = match image.vector {
            Some(v) => vector_to_blob(v),
            None => kept
                .get(image.content_hash)
                .cloned()
                .with_context(|| format!("product {product_id:?}: no stored vector for image {}", image.path))?,
        };
        insert.execute(params![product_id, n as i64 + 1, image.path, image.content_hash, blob])?;
    }
    Ok(())
}

/// Keeps the change log to its last [`CHANGES_KEPT`] entries.
fn trim_change_log(tx: &rusqlite::Transaction) -> Result<()> {
    tx.prepare_cached("DELETE FROM changes WHERE seq <= (SELECT MAX(seq) FROM changes) - ?1")?
        .execute([CHANGES_KEPT])?;
    Ok(())
}

fn info_of(r: &rusqlite::Row) -> rusqlite::Result<ProductInfo> {
    Ok(ProductInfo {
        title: r.get("title")?,
        price: r.get("price")?,
        category: r.get("category")?,
        description: r.get("description")?,
        url: r.get("url")?,
        group: r.get("group_id")?,
    })
}

fn row_to_product(r: &rusqlite::Row) -> rusqlite::Result<StoredProduct> {
    Ok(StoredProduct {
        id: r.get("id")?,
        info: info_of(r)?,
        image_path: r.get("image_path")?,
        content_hash: r.get("content_hash")?,
        vector: blob_to_vector(&r.get::<_, Vec<u8>>("vector")?),
        more_images: Vec::new(),
    })
}

/// Everything but the vector. A file of schema 1 or 2, opened read-only and so not upgraded,
/// has no `url` and `group_id` columns: they read as NULL.
fn fingerprint_columns(schema: i64) -> &'static str {
    if schema >= 3 {
        "id, title, price, category, description, url, group_id, image_path, content_hash"
    } else {
        "id, title, price, category, description, NULL AS url, NULL AS group_id, image_path, content_hash"
    }
}

fn product_columns(schema: i64) -> String {
    format!("{}, vector", fingerprint_columns(schema))
}

impl Store for SqliteStore {
    fn manifest(&self) -> Result<Option<ModelManifest>> {
        self.manifest_value("model")?
            .map(|v| serde_json::from_str(&v).context("unreadable model manifest in the database"))
            .transpose()
    }

    fn ensure_manifest(&self, model: &ModelManifest) -> Result<()> {
        match self.manifest()? {
            Some(stored) => check_same_model(&stored, model),
            None => {
                // Writers racing to record the first manifest: the first one decides.
                self.conn.execute(
                    "INSERT INTO manifest (key, value) VALUES ('model', ?1) ON CONFLICT(key) DO NOTHING",
                    [serde_json::to_string(model)?],
                )?;
                let stored = self.manifest()?.context("the model manifest vanished")?;
                check_same_model(&stored, model)
            }
        }
    }

    fn head(&self, role: HeadRole) -> Result<Option<Head>> {
        self.manifest_value(role.key())?
            .map(|hex_bytes| {
                let bytes = hex::decode(hex_bytes).context("unreadable head in the database")?;
                Head::from_bytes(&bytes)
            })
            .transpose()
    }

    fn set_head(&self, role: HeadRole, head: &Head) -> Result<()> {
        let bytes = head.to_bytes()?;
        let tx = self.conn.unchecked_transaction()?;
        for (key, value) in [
            (role.key(), hex::encode(&bytes)),
            (role.stamp_key(), head_stamp_of(&bytes)),
        ] {
            tx.execute(
                "INSERT INTO manifest (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [key, value.as_str()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn head_stamp(&self, role: HeadRole) -> Result<Option<String>> {
        self.manifest_value(role.stamp_key())
    }

    fn count(&self) -> Result<usize> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM products", [], |r| r.get::<_, i64>(0))? as usize)
    }

    fn fingerprints(&self) -> Result<HashMap<String, Fingerprint>> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {} FROM products", fingerprint_columns(self.schema)))?;
        let mut more = self.more_images(None, false)?;
        let rows = stmt.query_map([], |r| {
            let id: String = r.get("id")?;
            let more_images = more
                .remove(&id)
                .unwrap_or_default()
                .into_iter()
                .map(|i| (i.path, i.content_hash))
                .collect();
            Ok((
                id,
                Fingerprint {
                    info: info_of(r)?,
                    image_path: r.get("image_path")?,
                    content_hash: r.get("content_hash")?,
                    more_images,
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn write_batch(&mut self, writes: &[ProductWrite]) -> Result<()> {
        let tx = self.write_transaction()?;
        for w in writes {
            write_in(&tx, w, WriteMode::Upsert)?;
        }
        trim_change_log(&tx)?;
        tx.commit()?;
        Ok(())
    }

    fn write_one(&mut self, write: &ProductWrite, mode: WriteMode) -> Result<bool> {
        let tx = self.write_transaction()?;
        let written = write_in(&tx, write, mode)?;
        trim_change_log(&tx)?;
        tx.commit()?;
        Ok(written)
    }

    fn remove(&mut self, ids: &[String]) -> Result<usize> {
        let tx = self.write_transaction()?;
        let mut removed = 0;
        {
            let mut delete = tx.prepare_cached("DELETE FROM products WHERE id = ?1")?;
            for id in ids {
                removed += delete.execute([id])?;
            }
        }
        trim_change_log(&tx)?;
        tx.commit()?;
        Ok(removed)
    }

    fn put_cells(&mut self, cells: &[PhotoCells]) -> Result<()> {
        let tx = self.write_transaction()?;
        {
            let mut put = tx.prepare_cached(
                "INSERT INTO photo_cells (content_hash, format, cells) VALUES (?1, ?2, ?3)
                 ON CONFLICT(content_hash) DO UPDATE SET format = excluded.format, cells = excluded.cells",
            )?;
            for photo in cells {
                put.execute(params![photo.content_hash, CELLS_FORMAT, photo.cells])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn hashes_with_cells(&self) -> Result<HashSet<String>> {
        if self.schema < 7 {
            return Ok(HashSet::new());
        }
        let mut stmt = self
            .conn
            .prepare("SELECT content_hash FROM photo_cells WHERE format = ?1")?;
        let hashes = stmt.query_map([CELLS_FORMAT], |r| r.get(0))?;
        Ok(hashes.collect::<rusqlite::Result<_>>()?)
    }

    fn cells_of(&self, ids: &[&str]) -> Result<HashMap<String, Vec<PhotoCells>>> {
        let mut found: HashMap<String, Vec<PhotoCells>> = HashMap::new();
        if self.schema < 7 {
            return Ok(found);
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT p.id, c.content_hash, c.cells FROM products p JOIN photo_cells c ON c.content_hash = p.content_hash
             WHERE p.id = ?1 AND c.format = ?2
             UNION ALL
             SELECT i.product_id, c.content_hash, c.cells FROM product_images i
               JOIN photo_cells c ON c.content_hash = i.content_hash
             WHERE i.product_id = ?1 AND c.format = ?2",
        )?;
        for id in ids {
            let rows = stmt.query_map(params![id, CELLS_FORMAT], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    PhotoCells {
                        content_hash: r.get(1)?,
                        cells: r.get(2)?,
                    },
                ))
            })?;
            for row in rows {
                let (id, cells) = row?;
                found.entry(id).or_default().push(cells);
            }
        }
        Ok(found)
    }

    fn each_cells(&self, batch: usize, visit: &mut dyn FnMut(Vec<PhotoCells>) -> Result<()>) -> Result<()> {
        if self.schema < 7 {
            return Ok(());
        }
        let mut stmt = self
            .conn
            .prepare("SELECT content_hash, cells FROM photo_cells WHERE format = ?1 ORDER BY content_hash")?;
        let mut rows = stmt.query([CELLS_FORMAT])?;
        let mut chunk = Vec::with_capacity(batch);
        while let Some(row) = rows.next()? {
            chunk.push(PhotoCells {
                content_hash: row.get(0)?,
                cells: row.get(1)?,
            });
            if chunk.len() >= batch.max(1) {
                visit(std::mem::take(&mut chunk))?;
            }
        }
        if !chunk.is_empty() {
            visit(chunk)?;
        }
        Ok(())
    }

    fn drop_unused_cells(&mut self) -> Result<usize> {
        let tx = self.write_transaction()?;
        let dropped = tx.execute(
            "DELETE FROM photo_cells WHERE format <> ?1
               OR (NOT EXISTS (SELECT 1 FROM products p WHERE p.content_hash = photo_cells.content_hash)
                   AND NOT EXISTS (SELECT 1 FROM product_images i WHERE i.content_hash = photo_cells.content_hash))",
            [CELLS_FORMAT],
        )?;
        tx.commit()?;
        Ok(dropped)
    }

    fn record_upload(&self, path: &str) -> Result<()> {
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO uploads (path) VALUES (?1)")?
            .execute([path])?;
        Ok(())
    }

    fn release_upload(&self, path: &str) -> Result<bool> {
        if self.schema < 5 {
            return Ok(false);
        }
        let released = self
            .conn
            .prepare_cached(
                "DELETE FROM uploads WHERE path = ?1
                     AND NOT EXISTS (SELECT 1 FROM products WHERE image_path = ?1)
                     AND NOT EXISTS (SELECT 1 FROM product_images WHERE image_path = ?1)",
            )?
            .execute([path])?;
        Ok(released > 0)
    }

    fn text_search(
        &self,
        words: &Words,
        limit: usize,
        filter: &Filter,
        exclude: Option<&str>,
    ) -> Result<Vec<(String, f32)>> {
        if self.schema < 4 {
            return Err(crate::error::Error::Conflict(format!(
                "{} has no word index yet; open it once with `lookalike index` to add one",
                self.path.display()
            ))
            .into());
        }
        let matching = words
            .as_slice()
            .iter()
            .map(|w| format!("\"{w}\""))
            .collect::<Vec<_>>()
            .join(" OR ");
        let mut params: Vec<Box<dyn rusqlite::ToSql>> = vec![Box::new(matching), Box::new(limit as i64)];
        let mut conditions = String::new();
        let mut add = |condition: &str, param: Box<dyn rusqlite::ToSql>| {
            params.push(param);
            conditions += &format!(" AND {}", condition.replace('?', &format!("?{}", params.len())));
        };
        if let Some(category) = &filter.category {
            add(
                &format!("{CATEGORY_KEY}(p.category) = ?"),
                Box::new(category_key(category)),
            );
        }
        if !filter.any_category.is_empty() {
            let keys: Vec<String> = filter.any_category.iter().map(|c| category_key(c)).collect();
            add(
                &format!("{CATEGORY_KEY}(p.category) IN (SELECT value FROM json_each(?))"),
                Box::new(serde_json::to_string(&keys)?),
            );
        }
        if let Some(min) = filter.min_price {
            add("p.price >= ?", Box::new(min));
        }
        if let Some(max) = filter.max_price {
            add("p.price <= ?", Box::new(max));
        }
        if let Some(id) = exclude {
            add("p.id <> ?", Box::new(id.to_string()));
        }
        if let Some(group) = &filter.exclude_group {
            add("p.group_id IS NOT ?", Box::new(group.clone()));
        }
        let (title, category, description) = WORD_WEIGHTS;
        let sql = format!(
            "SELECT p.id, bm25(product_words, {title}, {category}, {description}) AS rank
             FROM product_words JOIN products p ON p.rowid = product_words.rowid
             WHERE product_words MATCH ?1{conditions} ORDER BY rank, p.id LIMIT ?2"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(params.iter()), |r| {
            // FTS5's bm25 is negative, lower is better.
            Ok((r.get::<_, String>(0)?, -r.get::<_, f64>(1)? as f32))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn page(&self, category: Option<&str>, offset: usize, limit: usize) -> Result<Page> {
        let matching = format!("?1 IS NULL OR {CATEGORY_KEY}(category) = ?1");
        let category = category.map(category_key);
        let total: i64 = self.conn.query_row(
            &format!("SELECT count(*) FROM products WHERE {matching}"),
            [&category],
            |r| r.get(0),
        )?;
        let sql = format!(
            "SELECT {}, X'' AS vector FROM products WHERE {matching} ORDER BY id LIMIT ?2 OFFSET ?3",
            fingerprint_columns(self.schema)
        );
        let mut items = self
            .conn
            .prepare(&sql)?
            .query_map(rusqlite::params![category, limit as i64, offset as i64], row_to_product)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for product in &mut items {
            product.more_images = self
                .more_images(Some(&product.id), false)?
                .remove(&product.id)
                .unwrap_or_default();
        }
        let categories = self
            .conn
            .prepare("SELECT DISTINCT category FROM products WHERE category IS NOT NULL ORDER BY category")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(Page {
            total: total as usize,
            items,
            categories,
        })
    }

    fn product(&self, id: &str) -> Result<Option<StoredProduct>> {
        let sql = format!("SELECT {} FROM products WHERE id = ?1", product_columns(self.schema));
        let Some(mut product) = self.conn.query_row(&sql, [id], row_to_product).optional()? else {
            return Ok(None);
        };
        product.more_images = self.more_images(Some(id), true)?.remove(id).unwrap_or_default();
        Ok(Some(product))
    }

    fn products(&self) -> Result<Vec<StoredProduct>> {
        let mut all = Vec::new();
        self.each_product(&mut |product| {
            all.push(product);
            Ok(())
        })?;
        Ok(all)
    }

    fn each_product(&self, visit: &mut dyn FnMut(StoredProduct) -> Result<()>) -> Result<()> {
        let sql = format!("SELECT {} FROM products ORDER BY id", product_columns(self.schema));
        let mut more = self.more_images(None, true)?;
        let mut stmt = self.conn.prepare(&sql)?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let mut product = row_to_product(row)?;
            product.more_images = more.remove(&product.id).unwrap_or_default();
            visit(product)?;
        }
        Ok(())
    }

    fn search_side(&self) -> SearchSide<'_> {
        SearchSide::InMemory(self)
    }
}

impl ChangeLog for SqliteStore {
    fn change_position(&self) -> Result<u64> {
        self.seen_data_version
            .set(Some(self.conn.pragma_query_value(None, "data_version", |r| r.get(0))?));
        if !self.has_change_log()? {
            return Ok(0);
        }
        let position: Option<i64> = self
            .conn
            .query_row("SELECT seq FROM sqlite_sequence WHERE name = 'changes'", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(position.unwrap_or(0) as u64)
    }

    fn index_file(&self) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(".index");
        name.into()
    }

    fn changes_since(&self, position: u64) -> Result<Changes> {
        let data_version: i64 = self.conn.pragma_query_value(None, "data_version", |r| r.get(0))?;
        if self.seen_data_version.replace(Some(data_version)) == Some(data_version) {
            return Ok(Changes::Nothing);
        }
        self.changes_from(position)
    }

    fn changes_from(&self, position: u64) -> Result<Changes> {
        if !self.has_change_log()? {
            return Ok(Changes::Everything { position: 0 });
        }
        let tx = self.conn.unchecked_transaction()?;
        let (oldest, newest): (Option<i64>, Option<i64>) =
            tx.query_row("SELECT MIN(seq), MAX(seq) FROM changes", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let newest = newest.unwrap_or(position as i64) as u64;
        if newest <= position {
            return Ok(Changes::Nothing);
        }
        if oldest.is_none_or(|oldest| oldest as u64 > position + 1) {
            return Ok(Changes::Everything { position: newest });
        }
        let mut stmt = tx.prepare_cached("SELECT DISTINCT id FROM changes WHERE seq > ?1 AND seq <= ?2")?;
        let ids = stmt
            .query_map([position as i64, newest as i64], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(Changes::Products { ids, position: newest })
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
            colour: None,
            precision: None,
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
            more_images: Vec::new(),
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
                    more_images: None,
                },
                ProductWrite {
                    entry: &b,
                    content_hash: "h2",
                    vector: Some(&[0.0, 1.0]),
                    more_images: None,
                },
            ])
            .unwrap();
        let renamed = entry("a", "A2");
        store
            .write_batch(&[ProductWrite {
                entry: &renamed,
                content_hash: "h1",
                vector: None,
                more_images: None,
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

    #[test]
    fn another_connections_writes_show_in_the_change_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut writer = SqliteStore::open(&path).unwrap();
        let reader = SqliteStore::open_read_only(&path).unwrap();
        let start = reader.change_position().unwrap();
        assert_eq!(reader.changes_since(start).unwrap(), Changes::Nothing);
        let a = entry("a", "A");
        let write = ProductWrite {
            entry: &a,
            content_hash: "h",
            vector: Some(&[1.0, 0.0]),
            more_images: None,
        };
        assert!(writer.write_one(&write, WriteMode::CreateOnly).unwrap());
        assert!(
            !writer.write_one(&write, WriteMode::CreateOnly).unwrap(),
            "created twice"
        );
        let Changes::Products { ids, position } = reader.changes_since(start).unwrap() else {
            panic!("the write was not seen");
        };
        assert_eq!(ids, ["a"]);
        assert_eq!(reader.changes_since(position).unwrap(), Changes::Nothing);
        writer.remove(&["a".into()]).unwrap();
        assert!(
            !writer.write_one(&write, WriteMode::UpdateOnly).unwrap(),
            "updated after delete"
        );
        assert!(matches!(
            reader.changes_since(position).unwrap(),
            Changes::Products { ids, .. } if ids == ["a"]
        ));
        // A reader further behind than the log remembers reloads everything.
        writer
            .conn
            .execute("DELETE FROM changes WHERE seq <= ?1", [position as i64 + 1])
            .unwrap();
        writer.write_one(&write, WriteMode::Upsert).unwrap();
        assert!(matches!(
            reader.changes_since(position).unwrap(),
            Changes::Everything { .. }
        ));
    }

    #[test]
    fn read_only_opens_refuse_what_is_not_a_catalogue() {
        let dir = tempfile::tempdir().unwrap();
        let missing = SqliteStore::open_read_only(&dir.path().join("none.db")).err().unwrap();
        assert!(missing.to_string().contains("no catalogue database"), "{missing}");
        let other = dir.path().join("other.db");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        let err = SqliteStore::open_read_only(&other).err().unwrap();
        assert!(err.to_string().contains("not a lookalike catalogue"), "{err}");
        let text = dir.path().join("text.db");
        std::fs::write(&text, vec![b'x'; 4096]).unwrap();
        let err = format!("{:#}", SqliteStore::open_read_only(&text).err().unwrap());
        assert!(err.contains("not a lookalike catalogue"), "{err}");
    }

    #[test]
    fn a_schema_1_catalogue_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE manifest (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE products (id TEXT PRIMARY KEY, title TEXT, price REAL, category TEXT,
               description TEXT, image_path TEXT NOT NULL, content_hash TEXT NOT NULL,
               vector BLOB NOT NULL, updated_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP);
             INSERT INTO products (id, title, image_path, content_hash, vector)
               VALUES ('x', 'Grey Hoodies', '/x.jpg', 'h', x'0000803f');
             PRAGMA user_version = 1;",
        )
        .unwrap();
        drop(old);
        let mut store = SqliteStore::open(&path).unwrap();
        assert_eq!(SqliteStore::probe(&store.conn).unwrap(), SCHEMA_VERSION);
        assert_eq!(store.product("x").unwrap().unwrap().vector, vec![1.0]);
        let hoodie = Words::parse("hoodie").unwrap();
        let found = store.text_search(&hoodie, 10, &Filter::default(), None).unwrap();
        assert_eq!(found.len(), 1, "the upgrade indexes the words already there");
        let position = store.change_position().unwrap();
        store.remove(&["x".into()]).unwrap();
        assert!(store.change_position().unwrap() > position);
        assert!(
            !store.release_upload("/x.jpg").unwrap(),
            "a file never recorded as an upload is never the server's to delete"
        );
        // Photos' cells: none yet, kept by content hash, forgotten once no product has the photo.
        assert!(store.hashes_with_cells().unwrap().is_empty());
        let cells = PhotoCells {
            content_hash: "h".into(),
            cells: vec![1, 2, 3],
        };
        store.put_cells(std::slice::from_ref(&cells)).unwrap();
        assert_eq!(store.hashes_with_cells().unwrap(), ["h".to_string()].into());
        assert_eq!(store.drop_unused_cells().unwrap(), 1, "product x was removed above");
        assert!(store.hashes_with_cells().unwrap().is_empty());
        drop(store);

        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        for open in [SqliteStore::open, SqliteStore::open_read_only] {
            let refused = open(&path).err().expect("a newer schema is refused").to_string();
            let newer = format!("written by a newer lookalike (schema {}", SCHEMA_VERSION + 1);
            assert!(refused.contains(&newer), "{refused}");
        }
    }

    #[test]
    fn words_are_found_ranked_filtered_and_follow_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let mut entries = [
            entry("a", "Grey hoodie"),
            entry("b", "Pink jacket"),
            entry("c", "Jacket"),
            entry("d", "Socks"),
        ];
        entries[1].info.description = Some("A light jacket in pink, with a hood.".into());
        entries[2].info.category = Some("Women/Jackets".into());
        entries[2].info.price = Some(80.0);
        entries[3].info.description = Some("Grey socks.".into());
        let writes: Vec<ProductWrite> = entries
            .iter()
            .map(|e| ProductWrite {
                entry: e,
                content_hash: "h",
                vector: Some(&[1.0, 0.0]),
                more_images: None,
            })
            .collect();
        store.write_batch(&writes).unwrap();
        let search = |store: &SqliteStore, text: &str, filter: &Filter| -> Vec<String> {
            let words = Words::parse(text).unwrap();
            store
                .text_search(&words, 10, filter, None)
                .unwrap()
                .into_iter()
                .map(|(id, score)| {
                    assert!(score > 0.0);
                    id
                })
                .collect()
        };
        let any = Filter::default();
        // Stemmed (jackets ~ jacket); the title and both words weigh most.
        assert_eq!(search(&store, "pink jackets", &any), ["b", "c"]);
        assert_eq!(search(&store, "grey", &any), ["a", "d"]);
        assert_eq!(search(&store, "women", &any), ["c"]);
        let cheap = Filter::new(None, None, Some(10.0)).unwrap();
        assert_eq!(search(&store, "jacket", &cheap), ["b"]);
        let jackets = Filter::new(Some("women/JACKETS".into()), None, None).unwrap();
        assert_eq!(search(&store, "jacket", &jackets), ["c"]);
        // Renamed and deleted products follow at once.
        let renamed = entry("d", "Pink socks");
        store
            .write_one(
                &ProductWrite {
                    entry: &renamed,
                    content_hash: "h",
                    vector: None,
                    more_images: None,
                },
                WriteMode::UpdateOnly,
            )
            .unwrap();
        assert_eq!(search(&store, "grey", &any), ["a"]);
        store.remove(&["b".into()]).unwrap();
        assert_eq!(search(&store, "pink", &any), ["d"]);
        assert_eq!(store.integrity_check().unwrap(), "ok");
        let check: rusqlite::Result<()> = store
            .conn
            .execute_batch("INSERT INTO product_words (product_words, rank) VALUES ('integrity-check', 1)");
        check.unwrap();
    }

    #[test]
    fn further_views_are_written_kept_replaced_and_deleted_with_their_product() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let mut shirt = entry("shirt", "Shirt");
        shirt.info.group = Some("shirts".into());
        shirt.more_images = vec![PathBuf::from("/img/back.jpg"), PathBuf::from("/img/side.jpg")];
        let views = [
            ImageWrite {
                path: "/img/back.jpg",
                content_hash: "hb",
                vector: Some(&[0.0, 1.0]),
            },
            ImageWrite {
                path: "/img/side.jpg",
                content_hash: "hs",
                vector: Some(&[0.5, 0.5]),
            },
        ];
        let write = |store: &mut SqliteStore, entry: &CatalogueEntry, images: Option<&[ImageWrite]>| {
            store
                .write_batch(&[ProductWrite {
                    entry,
                    content_hash: "hm",
                    vector: Some(&[1.0, 0.0]),
                    more_images: images,
                }])
                .unwrap()
        };
        write(&mut store, &shirt, Some(&views));
        let stored = store.product("shirt").unwrap().unwrap();
        assert_eq!(stored.info.group.as_deref(), Some("shirts"));
        assert_eq!(
            stored.image_paths().collect::<Vec<_>>(),
            ["/img/shirt.jpg", "/img/back.jpg", "/img/side.jpg"]
        );
        assert_eq!(stored.more_images[1].vector, vec![0.5, 0.5]);
        assert_eq!(
            store.fingerprints().unwrap()["shirt"].more_images[0],
            ("/img/back.jpg".into(), "hb".into())
        );
        // Metadata alone leaves the views; a new list keeps the vectors of views it names by hash.
        write(&mut store, &shirt, None);
        assert_eq!(store.product("shirt").unwrap().unwrap().more_images.len(), 2);
        let kept = [ImageWrite {
            path: "/img/side-renamed.jpg",
            content_hash: "hs",
            vector: None,
        }];
        write(&mut store, &shirt, Some(&kept));
        let stored = store.product("shirt").unwrap().unwrap();
        assert_eq!(stored.more_images.len(), 1);
        assert_eq!(stored.more_images[0].path, "/img/side-renamed.jpg");
        assert_eq!(stored.more_images[0].vector, vec![0.5, 0.5]);
        for upload in ["/img/side-renamed.jpg", "/img/back.jpg"] {
            store.record_upload(upload).unwrap();
        }
        assert!(!store.release_upload("/img/side-renamed.jpg").unwrap(), "in use");
        assert!(store.release_upload("/img/back.jpg").unwrap(), "no longer in use");
        assert!(!store.release_upload("/img/back.jpg").unwrap(), "released once");
        assert_eq!(store.products().unwrap()[0].more_images.len(), 1);
        store.remove(&["shirt".into()]).unwrap();
        assert!(
            store.release_upload("/img/side-renamed.jpg").unwrap(),
            "views go with their product"
        );
    }
}

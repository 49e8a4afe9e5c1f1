//! The catalogue in PostgreSQL with pgvector: for shops that already run PostgreSQL and for
//! several API replicas (or index workers) sharing one catalogue. Nearest-neighbour search runs
//! in the database on an HNSW index (cosine), with category and price filters in the same query
//! and pgvector's iterative index scans so that filtered queries still fill `k` rows.
//!
//! The schema is versioned: [`MIGRATIONS`] run on connect under an advisory lock, each in its
//! own transaction, so replicas starting together apply them once. The vector column gets its
//! dimension (and its HNSW index) when the first manifest is recorded, since only then is the
//! model known. Two options ride on the URL and are not passed to the driver: `vector=halfvec`
//! stores half-precision vectors (half the memory; only when the database is first set up), and
//! `ef_search=N` sets HNSW's candidate list for every query (default [`ef_search_for`]`(k)`).

use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, Mutex};

use anyhow::{bail, Context, Result};
use pgvector::Vector;
use postgres::{Client, NoTls, Row};

use super::{
    check_same_model, head_stamp_of, Fingerprint, HeadRole, ImageWrite, PhotoCells, ProductWrite, SearchSide, Store,
    VectorSearch, WriteMode,
};
use crate::index::local_cells::CELLS_FORMAT;
use crate::learn::head::Head;
use crate::model::ModelManifest;
use crate::types::{
    category_key, fold_accents, Filter, Metric, Page, ProductImage, ProductInfo, Scored, StoredProduct, Words,
};

/// Schema versions in order ([`super::SCHEMA_VERSION`] says what each holds); the index of each
/// is its version - 1. Never edit one that shipped.
pub const MIGRATIONS: &[&str] = &[
    "
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE lookalike_manifest (
    key   text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE lookalike_products (
    id           text PRIMARY KEY,
    title        text,
    price        double precision,
    category     text,
    description  text,
    image_path   text NOT NULL,
    content_hash text NOT NULL,
    embedding    vector NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX lookalike_products_category ON lookalike_products (lower(category));
CREATE INDEX lookalike_products_price ON lookalike_products (price);
",
    "
CREATE INDEX lookalike_products_image_path ON lookalike_products (image_path);
",
    "
ALTER TABLE lookalike_products ADD COLUMN url text;
ALTER TABLE lookalike_products ADD COLUMN group_id text;
CREATE TABLE lookalike_images (
    product_id   text NOT NULL REFERENCES lookalike_products (id) ON DELETE CASCADE,
    position     integer NOT NULL,
    image_path   text NOT NULL,
    content_hash text NOT NULL,
    embedding    vector NOT NULL,
    PRIMARY KEY (product_id, position)
);
CREATE INDEX lookalike_images_image_path ON lookalike_images (image_path);
",
    "
ALTER TABLE lookalike_products ADD COLUMN words tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector('english', coalesce(title, '')), 'A') ||
    setweight(to_tsvector('english', translate(coalesce(category, ''), '/', ' ')), 'B') ||
    setweight(to_tsvector('english', coalesce(description, '')), 'C')
) STORED;
CREATE INDEX lookalike_products_words ON lookalike_products USING gin (words);
",
    // The files a server wrote (uploads), the only ones it may delete; and the case-folded
    // category that filters compare (`lower()` follows the database's locale, and a C-locale
    // database leaves `É` as it is), filled in by [`fill_category_keys`].
    "
CREATE TABLE lookalike_uploads (
    path        text PRIMARY KEY,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE lookalike_products ADD COLUMN category_key text;
DROP INDEX lookalike_products_category;
CREATE INDEX lookalike_products_category_key ON lookalike_products (category_key);
",
    // Words with their accents folded, which only Rust does (see [`words_sql`]): the column is
    // written with the product instead of generated, filled here from the texts as they are, and
    // by [`fold_stored_words`] for the products whose texts have accents.
    "
ALTER TABLE lookalike_products DROP COLUMN words;
ALTER TABLE lookalike_products ADD COLUMN words tsvector;
UPDATE lookalike_products SET words =
    setweight(to_tsvector('english', coalesce(title, '')), 'A') ||
    setweight(to_tsvector('english', translate(coalesce(category, ''), '/', ' ')), 'B') ||
    setweight(to_tsvector('english', coalesce(description, '')), 'C');
CREATE INDEX lookalike_products_words ON lookalike_products USING gin (words);
",
    // Each photo's local cells by its content hash (see the SQLite store's schema 7).
    "
CREATE TABLE lookalike_photo_cells (
    content_hash text PRIMARY KEY,
    format       integer NOT NULL,
    cells        bytea NOT NULL
);
CREATE INDEX lookalike_products_content_hash ON lookalike_products (content_hash);
CREATE INDEX lookalike_images_content_hash ON lookalike_images (content_hash);
",
];

const _: () = assert!(MIGRATIONS.len() == super::SCHEMA_VERSION as usize);

/// Advisory lock key for schema changes ("lookalik" in ASCII).
const SCHEMA_LOCK: i64 = 0x6c6f_6f6b_616c_696b;
/// HNSW build parameters: pgvector's defaults, which reach recall@10 ≥ 0.95 here with a modest ef_search.
const HNSW_M: u32 = 16;
const HNSW_EF_CONSTRUCTION: u32 = 64;
/// `maintenance_work_mem` while building the HNSW index after a bulk load: 100k 1280-d vectors need ~800 MB.
const BULK_INDEX_MEMORY: &str = "1GB";
/// Largest vector kept inline in its row (PLAIN storage); a page holds 8 kB.
const INLINE_VECTOR_BYTES: usize = 6000;
/// A category filter matching at most this many products is scored exactly (see [`PgStore::nearest`]);
/// pgvector's iterative scan gives up after `hnsw.max_scan_tuples` (20,000 by default).
const EXACT_CATEGORY_ROWS: usize = 20_000;
/// `hnsw.ef_search` per query: enough candidates for `k` results, within pgvector's limit.
pub fn ef_search_for(k: usize) -> usize {
    (k * 4).clamp(40, 1000)
}

pub fn is_postgres_url(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorType {
    Vector,
    HalfVec,
}

impl VectorType {
    fn sql(self) -> &'static str {
        match self {
            Self::Vector => "vector",
            Self::HalfVec => "halfvec",
        }
    }
}

pub struct PgStore {
    client: Mutex<Client>,
    /// The column type once the manifest fixed it, e.g. `vector(1280)`.
    column: Mutex<Option<String>>,
    options: UrlOptions,
    /// A bulk load dropped the vector index, to be rebuilt when it finishes.
    index_dropped: bool,
}

/// lookalike's own options on a PostgreSQL URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UrlOptions {
    vector_type: VectorType,
    ef_search: Option<usize>,
}

/// Splits lookalike's own options off the URL; the rest goes to the driver.
fn parse_url(url: &str) -> Result<(String, UrlOptions)> {
    let mut options = UrlOptions {
        vector_type: VectorType::Vector,
        ef_search: None,
    };
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), options));
    };
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("vector", "vector")) => options.vector_type = VectorType::Vector,
            Some(("vector", "halfvec")) => options.vector_type = VectorType::HalfVec,
            Some(("vector", other)) => bail!("vector={other} in the database URL: use vector or halfvec"),
            Some(("ef_search", n)) => match n.parse() {
                Ok(n @ 1..=1000) => options.ef_search = Some(n),
                _ => bail!("ef_search={n} in the database URL: use a number from 1 to 1000"),
            },
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, options))
}

/// The category keys ([`category_key`]) a filter compares.
struct CategoryKeys {
    one: Option<String>,
    any: Vec<String>,
}

impl CategoryKeys {
    fn of(filter: &Filter) -> Self {
        Self {
            one: filter.category.as_deref().map(category_key),
            any: filter.any_category.iter().map(|c| category_key(c)).collect(),
        }
    }
}

/// SQL conditions on products `p` for `filter` (its categories as `keys`) and `exclude`, their
/// values appended to `params`: only the conditions in use, so the planner sees plain predicates
/// beside an index scan.
fn filter_conditions<'a>(
    filter: &'a Filter,
    keys: &'a CategoryKeys,
    exclude: &'a Option<&'a str>,
    params: &mut Vec<&'a (dyn postgres::types::ToSql + Sync)>,
) -> Vec<String> {
    let mut conditions = Vec::new();
    let mut add = |template: &str, param| {
        params.push(param);
        conditions.push(template.replace('?', &format!("${}", params.len())));
    };
    if let Some(key) = &keys.one {
        add("p.category_key = ?", key);
    }
    if !keys.any.is_empty() {
        add("p.category_key = ANY(?)", &keys.any);
    }
    if let Some(min) = &filter.min_price {
        add("p.price >= ?", min);
    }
    if let Some(max) = &filter.max_price {
        add("p.price <= ?", max);
    }
    if let Some(id) = exclude {
        add("p.id <> ?", id);
    }
    if let Some(group) = &filter.exclude_group {
        add("p.group_id IS DISTINCT FROM ?", group);
    }
    conditions
}

fn product_info(row: &Row) -> ProductInfo {
    ProductInfo {
        title: row.get("title"),
        price: row.get("price"),
        category: row.get("category"),
        description: row.get("description"),
        url: row.get("url"),
        group: row.get("group_id"),
    }
}

/// Everything but the vector.
const PRODUCT_COLUMNS: &str = "id, title, price, category, description, url, group_id, image_path, content_hash";

fn product_from(row: &Row, with_vector: bool) -> StoredProduct {
    StoredProduct {
        id: row.get("id"),
        info: product_info(row),
        image_path: row.get("image_path"),
        content_hash: row.get("content_hash"),
        vector: if with_vector {
            row.get::<_, Vector>("embedding").to_vec()
        } else {
            Vec::new()
        },
        more_images: Vec::new(),
    }
}

/// Further images by product id, each list in order; `only` restricts them to those products.
fn more_images(
    client: &mut impl postgres::GenericClient,
    only: Option<&[&str]>,
    with_vectors: bool,
) -> Result<HashMap<String, Vec<ProductImage>>> {
    let vector = if with_vectors {
        "embedding::vector"
    } else {
        "NULL::vector"
    };
    let rows = client.query(
        &format!(
            "SELECT product_id, image_path, content_hash, {vector} AS embedding FROM lookalike_images
             WHERE $1::text[] IS NULL OR product_id = ANY($1) ORDER BY product_id, position"
        ),
        &[&only],
    )?;
    let mut images: HashMap<String, Vec<ProductImage>> = HashMap::new();
    for r in rows {
        let vector: Option<Vector> = r.get("embedding");
        images.entry(r.get("product_id")).or_default().push(ProductImage {
            path: r.get("image_path"),
            content_hash: r.get("content_hash"),
            vector: vector.map(|v| v.to_vec()).unwrap_or_default(),
        });
    }
    Ok(images)
}

/// Makes `images` the product's further views, taking stored vectors for those without one.
fn replace_images(tx: &mut postgres::Transaction, product_id: &str, images: &[ImageWrite]) -> Result<()> {
    let mut kept: HashMap<String, Vector> = HashMap::new();
    if images.iter().any(|i| i.vector.is_none()) {
        for r in tx.query(
            "SELECT content_hash, embedding::vector FROM lookalike_images WHERE product_id = $1",
            &[&product_id],
        )? {
            kept.insert(r.get(0), r.get(1));
        }
    }
    tx.execute("DELETE FROM lookalike_images WHERE product_id = $1", &[&product_id])?;
    let insert = tx.prepare(
        "INSERT INTO lookalike_images (product_id, position, image_path, content_hash, embedding)
         VALUES ($1, $2, $3, $4, $5::vector)",
    )?;
    for (n, image) in images.iter().enumerate() {
        let vector = match image.vector {
            Some(v) => Vector::from(v.to_vec()),
            None => kept
                .get(image.content_hash)
                .cloned()
                .with_context(|| format!("product {product_id:?}: no stored vector for image {}", image.path))?,
        };
        let position = n as i32 + 1;
        tx.execute(
            &insert,
            &[&product_id, &position, &image.path, &image.content_hash, &vector],
        )?;
    }
    Ok(())
}

impl PgStore {
    /// Connects and brings the schema up to date.
    pub fn connect(url: &str) -> Result<Self> {
        let (driver_url, options) = parse_url(url)?;
        let shown = redact(&driver_url);
        let mut client =
            Client::connect(&driver_url, NoTls).with_context(|| format!("cannot connect to PostgreSQL at {shown}"))?;
        migrate(&mut client).with_context(|| format!("cannot prepare the lookalike schema in {shown}"))?;
        let store = Self {
            client: Mutex::new(client),
            column: Mutex::new(None),
            options,
            index_dropped: false,
        };
        let column = store.column_type()?;
        if let Some(column) = &column {
            // A bulk load killed before it rebuilt the index left the catalogue without one.
            let mut client = store.client();
            let missing: bool = client
                .query_one(
                    "SELECT to_regclass('lookalike_products_embedding') IS NULL
                         OR to_regclass('lookalike_images_embedding') IS NULL",
                    &[],
                )?
                .get(0);
            if missing {
                rebuild_vector_index(&mut client, column, None)?;
            }
        }
        *store.column.lock().expect("column lock") = column;
        Ok(store)
    }

    /// `hnsw.ef_search` for a query of `k` results: the URL's `ef_search`, else [`ef_search_for`].
    pub fn ef_search(&self, k: usize) -> usize {
        self.options.ef_search.unwrap_or_else(|| ef_search_for(k))
    }

    fn client(&self) -> std::sync::MutexGuard<'_, Client> {
        self.client.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The embedding column's declared type when it has a dimension (after the first manifest).
    fn column_type(&self) -> Result<Option<String>> {
        let row = self.client().query_one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
             WHERE attrelid = 'lookalike_products'::regclass AND attname = 'embedding'",
            &[],
        )?;
        let column: String = row.get(0);
        Ok(column.contains('(').then_some(column))
    }

    fn manifest_value(client: &mut impl postgres::GenericClient, key: &str) -> Result<Option<String>> {
        Ok(client
            .query_opt("SELECT value FROM lookalike_manifest WHERE key = $1", &[&key])?
            .map(|r| r.get(0)))
    }
}

/// A database location without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The HNSW index over `column` (`vector(d)` or `halfvec(d)`), cosine distance.
fn create_vector_index(client: &mut impl postgres::GenericClient, column: &str, if_missing: bool) -> Result<()> {
    let ops = if column.starts_with("halfvec") {
        "halfvec_cosine_ops"
    } else {
        "vector_cosine_ops"
    };
    let if_missing = if if_missing { "IF NOT EXISTS" } else { "" };
    for table in VECTOR_TABLES {
        client.batch_execute(&format!(
            "CREATE INDEX {if_missing} {table}_embedding ON {table}
               USING hnsw (embedding {ops}) WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})"
        ))?;
    }
    Ok(())
}

/// The tables holding vectors: products' main images, and their further views.
const VECTOR_TABLES: [&str; 2] = ["lookalike_products", "lookalike_images"];

/// Gives `table`'s vector column its type (`vector(d)` or `halfvec(d)`), inline when it fits a page.
fn type_vector_column(
    client: &mut impl postgres::GenericClient,
    table: &str,
    column: &str,
    inline: bool,
) -> Result<()> {
    client.batch_execute(&format!("ALTER TABLE {table} ALTER COLUMN embedding TYPE {column}"))?;
    // Vectors that fit in a page stay inline: TOASTed ones cost a detour per row scored, which
    // made exactly scored categories 3x slower (measured at 100k products).
    if inline {
        client.batch_execute(&format!("ALTER TABLE {table} ALTER COLUMN embedding SET STORAGE PLAIN"))?;
    }
    Ok(())
}

/// Creates the HNSW index if it is missing, one process at a time: the backend of a process killed
/// while building it keeps building, and a second `CREATE INDEX IF NOT EXISTS` racing it fails on
/// the catalogue's unique name. `memory` sets `maintenance_work_mem` for this build only (the
/// graph builds in memory when it fits).
fn rebuild_vector_index(client: &mut Client, column: &str, memory: Option<&str>) -> Result<()> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
    if let Some(memory) = memory {
        tx.batch_execute(&format!("SET LOCAL maintenance_work_mem = '{memory}'"))?;
    }
    // A catalogue typed before further images existed has an untyped column for them.
    let images_typed: bool = tx
        .query_one(
            "SELECT format_type(atttypid, atttypmod) LIKE '%(%' FROM pg_attribute
             WHERE attrelid = 'lookalike_images'::regclass AND attname = 'embedding'",
            &[],
        )?
        .get(0);
    if !images_typed {
        let inline: bool = tx
            .query_one(
                "SELECT attstorage = 'p' FROM pg_attribute
                 WHERE attrelid = 'lookalike_products'::regclass AND attname = 'embedding'",
                &[],
            )?
            .get(0);
        type_vector_column(&mut tx, "lookalike_images", column, inline)?;
    }
    create_vector_index(&mut tx, column, true)?;
    tx.commit()?;
    Ok(())
}

fn migrate(client: &mut Client) -> Result<()> {
    // Session-level lock: a second replica waits here until the first has migrated.
    client.execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK])?;
    let result = (|| -> Result<()> {
        client.batch_execute(
            "CREATE TABLE IF NOT EXISTS lookalike_schema (
                 version    integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )?;
        let current: i32 = client
            .query_one("SELECT COALESCE(MAX(version), 0) FROM lookalike_schema", &[])?
            .get(0);
        super::check_schema(&"the database", u32::try_from(current).unwrap_or(0))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let version = i as i32 + 1;
            let mut tx = client.transaction()?;
            tx.batch_execute(sql)
                .with_context(|| format!("migration {version} failed"))?;
            match version {
                CATEGORY_KEY_VERSION => fill_category_keys(&mut tx),
                FOLDED_WORDS_VERSION => fold_stored_words(&mut tx),
                _ => Ok(()),
            }
            .with_context(|| format!("migration {version} failed"))?;
            tx.execute("INSERT INTO lookalike_schema (version) VALUES ($1)", &[&version])?;
            tx.commit()?;
        }
        Ok(())
    })();
    client.execute("SELECT pg_advisory_unlock($1)", &[&SCHEMA_LOCK])?;
    result
}

/// The schema version that added `category_key`.
const CATEGORY_KEY_VERSION: i32 = 5;

/// Sets `category_key` of every product from its category: computed here, not in SQL, so that
/// it is the same function as in memory and in SQLite.
fn fill_category_keys(tx: &mut postgres::Transaction) -> Result<()> {
    let categories: Vec<String> = tx
        .query(
            "SELECT DISTINCT category FROM lookalike_products WHERE category IS NOT NULL",
            &[],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let update = tx.prepare("UPDATE lookalike_products SET category_key = $2 WHERE category = $1")?;
    for category in &categories {
        tx.execute(&update, &[category, &category_key(category)])?;
    }
    Ok(())
}

/// The `words` of a product: its title, category and description with their accents folded
/// ([`fold_accents`], computed here so that `cafe` finds `Café`), from parameters `$first` on.
fn words_sql(first: usize) -> String {
    format!(
        "setweight(to_tsvector('english', coalesce(${first}::text, '')), 'A') ||
         setweight(to_tsvector('english', translate(coalesce(${}::text, ''), '/', ' ')), 'B') ||
         setweight(to_tsvector('english', coalesce(${}::text, '')), 'C')",
        first + 1,
        first + 2
    )
}

/// The schema version that made `words` accent-insensitive.
const FOLDED_WORDS_VERSION: i32 = 6;

/// Sets `words` again, accents folded, for every product whose texts are not all ASCII.
fn fold_stored_words(tx: &mut postgres::Transaction) -> Result<()> {
    let rows = tx.query(
        "SELECT id, title, category, description FROM lookalike_products
         WHERE concat(title, category, description) ~ '[^\x01-\x7f]'",
        &[],
    )?;
    let update = tx.prepare(&format!(
        "UPDATE lookalike_products SET words = {} WHERE id = $1",
        words_sql(2)
    ))?;
    for row in rows {
        let id: String = row.get(0);
        let folded: Vec<Option<String>> = (1..4)
            .map(|c| row.get::<_, Option<String>>(c).map(|t| fold_accents(&t).into_owned()))
            .collect();
        tx.execute(&update, &[&id, &folded[0], &folded[1], &folded[2]])?;
    }
    Ok(())
}

/// Inserts a product with its vector; completed by what to do when the id exists.
fn insert_product(on_conflict: &str) -> String {
    format!(
        "INSERT INTO lookalike_products (id, title, price, category, description, url, image_path,
           content_hash, embedding, group_id, category_key, words)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::vector, $10, $11, {}) ON CONFLICT (id) {on_conflict}",
        words_sql(12)
    )
}

static UPSERT: LazyLock<String> = LazyLock::new(|| {
    insert_product(
        "DO UPDATE SET title = excluded.title, price = excluded.price,
           category = excluded.category, description = excluded.description, url = excluded.url,
           image_path = excluded.image_path, content_hash = excluded.content_hash,
           embedding = excluded.embedding, group_id = excluded.group_id,
           category_key = excluded.category_key, words = excluded.words, updated_at = now()",
    )
});
static CREATE: LazyLock<String> = LazyLock::new(|| insert_product("DO NOTHING"));
static UPDATE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE lookalike_products SET title = $2, price = $3, category = $4, description = $5, url = $6,
           image_path = $7, content_hash = $8, embedding = $9::vector, group_id = $10,
           category_key = $11, words = {}, updated_at = now()
         WHERE id = $1",
        words_sql(12)
    )
});
static UPDATE_KEEPING_VECTOR: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE lookalike_products SET title = $2, price = $3, category = $4, description = $5, url = $6,
           image_path = $7, group_id = $8, category_key = $9, words = {}, updated_at = now()
         WHERE id = $1",
        words_sql(10)
    )
});

/// Statements prepared in one transaction, by their SQL: a batch prepares each once.
type Prepared = HashMap<&'static str, postgres::Statement>;

/// The statement for one product write in `mode`; `None` vector keeps the stored one.
fn write_in(
    tx: &mut postgres::Transaction,
    prepared: &mut Prepared,
    w: &ProductWrite,
    mode: WriteMode,
) -> Result<bool> {
    let e = w.entry;
    let path = e.image_path.to_string_lossy().into_owned();
    let i = &e.info;
    let sql: &'static str = match (w.vector.is_some(), mode) {
        (true, WriteMode::Upsert) => &UPSERT,
        (true, WriteMode::CreateOnly) => &CREATE,
        (true, WriteMode::UpdateOnly) => &UPDATE,
        (false, WriteMode::CreateOnly) => bail!("product {:?}: a new product needs its vector", e.id),
        (false, _) => &UPDATE_KEEPING_VECTOR,
    };
    let vector = w.vector.map(|v| Vector::from(v.to_vec()));
    let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> =
        vec![&e.id, &i.title, &i.price, &i.category, &i.description, &i.url, &path];
    if let Some(vector) = &vector {
        params.extend([&w.content_hash as &(dyn postgres::types::ToSql + Sync), vector]);
    }
    params.push(&i.group);
    let key = i.category.as_deref().map(category_key);
    params.push(&key);
    let folded = [&i.title, &i.category, &i.description].map(|t| t.as_deref().map(|t| fold_accents(t).into_owned()));
    params.extend(folded.iter().map(|t| t as &(dyn postgres::types::ToSql + Sync)));
    let statement = match prepared.get(sql) {
        Some(statement) => statement.clone(),
        None => prepared.entry(sql).or_insert(tx.prepare(sql)?).clone(),
    };
    if tx.execute(&statement, &params)? == 0 {
        return Ok(false);
    }
    if let Some(images) = w.more_images {
        replace_images(tx, &e.id, images)?;
    }
    Ok(true)
}

impl Store for PgStore {
    fn manifest(&self) -> Result<Option<ModelManifest>> {
        Self::manifest_value(&mut *self.client(), "model")?
            .map(|v| serde_json::from_str(&v).context("unreadable model manifest in the database"))
            .transpose()
    }

    fn ensure_manifest(&self, model: &ModelManifest) -> Result<()> {
        if let Some(stored) = self.manifest()? {
            return check_same_model(&stored, model);
        }
        let mut client = self.client();
        let mut tx = client.transaction()?;
        // Writers racing to record the first manifest queue here; the first one decides.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
        if let Some(stored) = Self::manifest_value(&mut tx, "model")? {
            tx.commit()?;
            let stored: ModelManifest = serde_json::from_str(&stored)?;
            return check_same_model(&stored, model);
        }
        let column = format!("{}({})", self.options.vector_type.sql(), model.dimension);
        tx.execute(
            "INSERT INTO lookalike_manifest (key, value) VALUES ('model', $1)",
            &[&serde_json::to_string(model)?],
        )?;
        let bytes_per_value = match self.options.vector_type {
            VectorType::Vector => 4,
            VectorType::HalfVec => 2,
        };
        for table in VECTOR_TABLES {
            type_vector_column(
                &mut tx,
                table,
                &column,
                model.dimension * bytes_per_value <= INLINE_VECTOR_BYTES,
            )?;
        }
        create_vector_index(&mut tx, &column, false)?;
        tx.commit()?;
        *self.column.lock().expect("column lock") = Some(column);
        Ok(())
    }

    fn head(&self, role: HeadRole) -> Result<Option<Head>> {
        Self::manifest_value(&mut *self.client(), role.key())?
            .map(|hex_bytes| Head::from_bytes(&hex::decode(hex_bytes).context("unreadable head in the database")?))
            .transpose()
    }

    fn set_head(&self, role: HeadRole, head: &Head) -> Result<()> {
        let bytes = head.to_bytes()?;
        let mut client = self.client();
        let mut tx = client.transaction()?;
        for (key, value) in [
            (role.key(), hex::encode(&bytes)),
            (role.stamp_key(), head_stamp_of(&bytes)),
        ] {
            tx.execute(
                "INSERT INTO lookalike_manifest (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&key, &value],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn head_stamp(&self, role: HeadRole) -> Result<Option<String>> {
        Self::manifest_value(&mut *self.client(), role.stamp_key())
    }

    fn count(&self) -> Result<usize> {
        let n: i64 = self
            .client()
            .query_one("SELECT count(*) FROM lookalike_products", &[])?
            .get(0);
        Ok(n as usize)
    }

    fn fingerprints(&self) -> Result<HashMap<String, Fingerprint>> {
        let mut client = self.client();
        let rows = client.query(&format!("SELECT {PRODUCT_COLUMNS} FROM lookalike_products"), &[])?;
        let mut more = more_images(&mut *client, None, false)?;
        Ok(rows
            .iter()
            .map(|r| {
                let id: String = r.get("id");
                let more_images = more
                    .remove(&id)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|i| (i.path, i.content_hash))
                    .collect();
                let fingerprint = Fingerprint {
                    info: product_info(r),
                    image_path: r.get("image_path"),
                    content_hash: r.get("content_hash"),
                    more_images,
                };
                (id, fingerprint)
            })
            .collect())
    }

    fn write_batch(&mut self, writes: &[ProductWrite]) -> Result<()> {
        let mut client = self.client();
        let mut tx = client.transaction()?;
        let mut prepared = Prepared::new();
        for w in writes {
            write_in(&mut tx, &mut prepared, w, WriteMode::Upsert)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn write_one(&mut self, write: &ProductWrite, mode: WriteMode) -> Result<bool> {
        let mut client = self.client();
        let mut tx = client.transaction()?;
        let written = write_in(&mut tx, &mut Prepared::new(), write, mode)?;
        tx.commit()?;
        Ok(written)
    }

    fn remove(&mut self, ids: &[String]) -> Result<usize> {
        let ids: Vec<&String> = ids.iter().filter(|id| !id.contains('\0')).collect();
        let n = self
            .client()
            .execute("DELETE FROM lookalike_products WHERE id = ANY($1)", &[&ids])?;
        Ok(n as usize)
    }

    fn put_cells(&mut self, cells: &[PhotoCells]) -> Result<()> {
        let mut client = self.client();
        let mut tx = client.transaction()?;
        let put = tx.prepare(
            "INSERT INTO lookalike_photo_cells (content_hash, format, cells) VALUES ($1, $2, $3)
             ON CONFLICT (content_hash) DO UPDATE SET format = excluded.format, cells = excluded.cells",
        )?;
        for photo in cells {
            tx.execute(&put, &[&photo.content_hash, &CELLS_FORMAT, &photo.cells])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn hashes_with_cells(&self) -> Result<HashSet<String>> {
        let rows = self.client().query(
            "SELECT content_hash FROM lookalike_photo_cells WHERE format = $1",
            &[&CELLS_FORMAT],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn cells_of(&self, ids: &[&str]) -> Result<HashMap<String, Vec<PhotoCells>>> {
        let ids: Vec<&str> = ids.iter().copied().filter(|id| !id.contains('\0')).collect();
        let rows = self.client().query(
            "SELECT p.id, c.content_hash, c.cells FROM lookalike_products p
               JOIN lookalike_photo_cells c ON c.content_hash = p.content_hash
             WHERE p.id = ANY($1) AND c.format = $2
             UNION ALL
             SELECT i.product_id, c.content_hash, c.cells FROM lookalike_images i
               JOIN lookalike_photo_cells c ON c.content_hash = i.content_hash
             WHERE i.product_id = ANY($1) AND c.format = $2",
            &[&ids, &CELLS_FORMAT],
        )?;
        let mut found: HashMap<String, Vec<PhotoCells>> = HashMap::new();
        for row in rows {
            found.entry(row.get(0)).or_default().push(PhotoCells {
                content_hash: row.get(1),
                cells: row.get(2),
            });
        }
        Ok(found)
    }

    fn each_cells(&self, batch: usize, visit: &mut dyn FnMut(Vec<PhotoCells>) -> Result<()>) -> Result<()> {
        let mut after = String::new();
        loop {
            let rows = self.client().query(
                "SELECT content_hash, cells FROM lookalike_photo_cells
                 WHERE format = $1 AND content_hash > $2 ORDER BY content_hash LIMIT $3",
                &[&CELLS_FORMAT, &after, &(batch.max(1) as i64)],
            )?;
            let Some(last) = rows.last() else { return Ok(()) };
            after = last.get(0);
            visit(
                rows.iter()
                    .map(|r| PhotoCells {
                        content_hash: r.get(0),
                        cells: r.get(1),
                    })
                    .collect(),
            )?;
        }
    }

    fn drop_unused_cells(&mut self) -> Result<usize> {
        let dropped = self.client().execute(
            "DELETE FROM lookalike_photo_cells c WHERE c.format <> $1
               OR (NOT EXISTS (SELECT 1 FROM lookalike_products p WHERE p.content_hash = c.content_hash)
                   AND NOT EXISTS (SELECT 1 FROM lookalike_images i WHERE i.content_hash = c.content_hash))",
            &[&CELLS_FORMAT],
        )?;
        Ok(dropped as usize)
    }

    fn record_upload(&self, path: &str) -> Result<()> {
        self.client().execute(
            "INSERT INTO lookalike_uploads (path) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&path],
        )?;
        Ok(())
    }

    fn release_upload(&self, path: &str) -> Result<bool> {
        let released = self.client().execute(
            "DELETE FROM lookalike_uploads WHERE path = $1
                 AND NOT EXISTS (SELECT 1 FROM lookalike_products WHERE image_path = $1)
                 AND NOT EXISTS (SELECT 1 FROM lookalike_images WHERE image_path = $1)",
            &[&path],
        )?;
        Ok(released > 0)
    }

    fn product(&self, id: &str) -> Result<Option<StoredProduct>> {
        // PostgreSQL text cannot hold NUL, so no stored id has one.
        if id.contains('\0') {
            return Ok(None);
        }
        let mut client = self.client();
        let row = client.query_opt(
            &format!("SELECT {PRODUCT_COLUMNS}, embedding::vector AS embedding FROM lookalike_products WHERE id = $1"),
            &[&id],
        )?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut product = product_from(&row, true);
        product.more_images = more_images(&mut *client, Some(&[id]), true)?
            .remove(id)
            .unwrap_or_default();
        Ok(Some(product))
    }

    fn products(&self) -> Result<Vec<StoredProduct>> {
        let mut client = self.client();
        let rows = client.query(
            &format!("SELECT {PRODUCT_COLUMNS}, embedding::vector AS embedding FROM lookalike_products ORDER BY id"),
            &[],
        )?;
        let mut more = more_images(&mut *client, None, true)?;
        Ok(rows
            .iter()
            .map(|r| {
                let mut product = product_from(r, true);
                product.more_images = more.remove(&product.id).unwrap_or_default();
                product
            })
            .collect())
    }

    fn start_bulk_load(&mut self) -> Result<()> {
        if self.count()? == 0 {
            self.client().batch_execute(
                "DROP INDEX IF EXISTS lookalike_products_embedding; DROP INDEX IF EXISTS lookalike_images_embedding",
            )?;
            self.index_dropped = true;
        }
        Ok(())
    }

    fn finish_bulk_load(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.index_dropped) {
            return Ok(());
        }
        let column = self.column.lock().expect("column lock").clone();
        if let Some(column) = column {
            rebuild_vector_index(&mut self.client(), &column, Some(BULK_INDEX_MEMORY))?;
        }
        Ok(())
    }

    fn page(&self, category: Option<&str>, offset: usize, limit: usize) -> Result<Page> {
        let mut client = self.client();
        let condition = "($1::text IS NULL OR category_key = $1)";
        let category = category.map(category_key);
        let total: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM lookalike_products WHERE {condition}"),
                &[&category],
            )?
            .get(0);
        let mut items = client
            .query(
                &format!(
                    "SELECT {PRODUCT_COLUMNS} FROM lookalike_products WHERE {condition} ORDER BY id OFFSET $2 LIMIT $3"
                ),
                &[&category, &(offset as i64), &(limit as i64)],
            )?
            .iter()
            .map(|r| product_from(r, false))
            .collect::<Vec<_>>();
        let ids: Vec<&str> = items.iter().map(|p: &StoredProduct| p.id.as_str()).collect();
        let mut views = more_images(&mut *client, Some(&ids), false)?;
        for product in &mut items {
            product.more_images = views.remove(&product.id).unwrap_or_default();
        }
        let categories = client
            .query(
                "SELECT DISTINCT category FROM lookalike_products WHERE category IS NOT NULL ORDER BY category",
                &[],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok(Page {
            total: total as usize,
            items,
            categories,
        })
    }

    fn text_search(
        &self,
        words: &Words,
        limit: usize,
        filter: &Filter,
        exclude: Option<&str>,
    ) -> Result<Vec<(String, f32)>> {
        // Any of the words; they are letters and digits only, so nothing else reaches to_tsquery.
        let matching = words.as_slice().join(" | ");
        let each: Vec<String> = words.as_slice().to_vec();
        let keys = CategoryKeys::of(filter);
        let limit = limit as i64;
        let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![&matching, &limit, &each];
        let conditions: String = filter_conditions(filter, &keys, &exclude, &mut params)
            .iter()
            .map(|c| format!(" AND {c}"))
            .collect();
        // ts_rank counts occurrences, so a product saying "hoodie" four times outranks one with both
        // words asked for; products first by how many of the words they have (as BM25 ranks), then
        // by ts_rank, squeezed below 1.
        let sql = format!(
            "SELECT p.id,
               ((SELECT count(*) FROM unnest($3::text[]) w WHERE p.words @@ to_tsquery('english', w))
                 + ts_rank(p.words, q, 1) / (1 + ts_rank(p.words, q, 1)))::real AS rank
             FROM lookalike_products p, to_tsquery('english', $1) q
             WHERE p.words @@ q{conditions} ORDER BY rank DESC, p.id LIMIT $2"
        );
        let rows = self.client().query(&sql, &params)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get::<_, f32>(1))).collect())
    }

    fn search_side(&self) -> SearchSide<'_> {
        SearchSide::InDatabase(self)
    }
}

impl VectorSearch for PgStore {
    fn nearest(
        &self,
        queries: &[&[f32]],
        k: usize,
        metric: Metric,
        filter: &Filter,
        exclude: Option<&str>,
    ) -> Result<Vec<Scored>> {
        let Some(column) = self.column.lock().expect("column lock").clone() else {
            return Ok(Vec::new()); // no manifest yet, so no products
        };
        let dimension: usize = column
            .trim_end_matches(')')
            .rsplit('(')
            .next()
            .and_then(|d| d.parse().ok())
            .unwrap_or(0);
        if let Some(query) = queries.iter().find(|q| q.len() != dimension) {
            return Err(crate::error::Error::WrongModel(format!(
                "query vector is {}-d, the catalogue's are {dimension}-d",
                query.len()
            ))
            .into());
        }
        // Cosine uses the HNSW index; Euclidean has none, so it is an exact scan.
        let operator = match metric {
            Metric::Cosine => "<=>",
            Metric::Euclidean => "<->",
        };
        let keys = CategoryKeys::of(filter);
        let vectors: Vec<Vector> = queries.iter().map(|q| Vector::from(q.to_vec())).collect();
        // Candidates per table and query: a product may come back from several, and groups fold
        // several into one.
        let limit = (k * if filter.one_per_group { 4 } else { 2 }) as i64;
        let placeholder = Vector::from(vec![0.0; dimension]);
        let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![&placeholder, &limit];
        let conditions = filter_conditions(filter, &keys, &exclude, &mut params);
        let condition = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let mut client = self.client();
        let mut tx = client.transaction()?;
        // HNSW walks the graph from the query outwards, so a category far from the query makes its
        // iterative scan visit (and filter out) up to hnsw.max_scan_tuples rows and still come back
        // short. Categories of moderate size are scored exactly instead, found by their B-tree index.
        let category_rows = match (&keys.one, keys.any.is_empty()) {
            (None, true) => None,
            _ => {
                let (category_sql, category_param): (&str, &(dyn postgres::types::ToSql + Sync)) = match &keys.one {
                    Some(key) => ("category_key = $1", key),
                    None => ("category_key = ANY($1)", &keys.any),
                };
                let n: i64 = tx
                    .query_one(
                        &format!("SELECT count(*) FROM lookalike_products WHERE {category_sql}"),
                        &[category_param],
                    )?
                    .get(0);
                Some(n as usize)
            }
        };
        // `+ 0` keeps the planner from ordering by the HNSW index: every matching row is scored.
        let exact = category_rows.is_some_and(|n| n <= EXACT_CATEGORY_ROWS) || metric == Metric::Euclidean;
        let order = if exact { "+ 0" } else { "" };
        // The nearest main images and the nearest further views, each product once.
        let distance = |table: &str| format!("({table}.embedding {operator} ($1::vector)::{column})");
        let sql = format!(
            "WITH hits AS (
               (SELECT p.id AS product_id, {main} AS distance FROM lookalike_products p
                {condition} ORDER BY {main} {order} LIMIT $2)
               UNION ALL
               (SELECT i.product_id, {view} FROM lookalike_images i
                JOIN lookalike_products p ON p.id = i.product_id
                {condition} ORDER BY {view} {order} LIMIT $2))
             SELECT DISTINCT ON (h.product_id) {columns}
             FROM hits h JOIN lookalike_products p ON p.id = h.product_id
             ORDER BY h.product_id",
            main = distance("p"),
            view = distance("i"),
            columns = PRODUCT_COLUMNS
                .split(", ")
                .map(|c| format!("p.{c}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        tx.batch_execute(&format!(
            "SET LOCAL hnsw.ef_search = {}; SET LOCAL hnsw.iterative_scan = relaxed_order;",
            self.ef_search(k)
        ))?;
        let statement = tx.prepare(&sql)?;
        let mut candidates: HashMap<String, Row> = HashMap::new();
        for vector in &vectors {
            params[0] = vector;
            for row in tx.query(&statement, &params)? {
                candidates.entry(row.get("id")).or_insert(row);
            }
        }
        let ids: Vec<String> = candidates.keys().cloned().collect();
        // Each candidate scored exactly by all of its images against every query, as the
        // in-memory index does ([`Metric::product_score`]).
        let all_images = format!(
            "SELECT id AS product_id, 0 AS image, embedding {operator} ($1::vector)::{column} AS distance
               FROM lookalike_products WHERE id = ANY($2)
             UNION ALL
             SELECT product_id, position, embedding {operator} ($1::vector)::{column}
               FROM lookalike_images WHERE product_id = ANY($2)"
        );
        let all_images = tx.prepare(&all_images)?;
        let mut pairs: HashMap<String, Vec<(f32, usize)>> = HashMap::new();
        for vector in &vectors {
            for r in tx.query(&all_images, &[vector, &ids])? {
                let distance: f64 = r.get("distance");
                let score = match metric {
                    Metric::Cosine => 1.0 - distance,
                    Metric::Euclidean => distance,
                };
                pairs
                    .entry(r.get("product_id"))
                    .or_default()
                    .push((score as f32, r.get::<_, i32>("image") as usize));
            }
        }
        let mut views = more_images(
            &mut tx,
            Some(&ids.iter().map(String::as_str).collect::<Vec<_>>()),
            false,
        )?;
        tx.commit()?;
        let mut hits: Vec<Scored> = candidates
            .into_values()
            .filter_map(|r| {
                let mut product = product_from(&r, false);
                product.more_images = views.remove(&product.id).unwrap_or_default();
                // None only if the product was deleted between the two statements.
                let (score, image) = metric.product_score(pairs.remove(&product.id)?);
                Some(Scored { product, score, image })
            })
            .collect();
        hits.sort_by(|a, b| {
            metric
                .best_first(a.score, b.score)
                .then_with(|| a.product.id.cmp(&b.product.id))
        });
        Ok(crate::types::keep_per_group(hits, k, filter.one_per_group))
    }
    fn vector_index_bytes(&self) -> Result<usize> {
        let row = self.client().query_one(
            "SELECT COALESCE(pg_relation_size(to_regclass('lookalike_products_embedding')), 0)
                  + COALESCE(pg_relation_size(to_regclass('lookalike_images_embedding')), 0)",
            &[],
        )?;
        Ok(row.get::<_, i64>(0) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_driver_options_and_lose_lookalikes() {
        assert!(is_postgres_url("postgres://u@h/db") && is_postgres_url("postgresql://h/db"));
        assert!(!is_postgres_url("shop.db"));
        assert_eq!(
            parse_url("postgres://u@h:5/db?vector=halfvec&sslmode=disable&ef_search=100").unwrap(),
            (
                "postgres://u@h:5/db?sslmode=disable".to_string(),
                UrlOptions {
                    vector_type: VectorType::HalfVec,
                    ef_search: Some(100)
                }
            )
        );
        assert_eq!(
            parse_url("postgres://u@h/db").unwrap(),
            (
                "postgres://u@h/db".to_string(),
                UrlOptions {
                    vector_type: VectorType::Vector,
                    ef_search: None
                }
            )
        );
        assert!(parse_url("postgres://h/db?vector=float").is_err());
        assert!(parse_url("postgres://h/db?ef_search=0").is_err());
        assert_eq!(redact("postgres://me:secret@h/db"), "postgres://me:***@h/db");
        assert_eq!(ef_search_for(10), 40);
        assert_eq!(ef_search_for(100), 400);
        assert_eq!(ef_search_for(10_000), 1000);
    }
}

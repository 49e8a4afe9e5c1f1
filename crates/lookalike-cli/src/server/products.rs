//! The write endpoints and the uploaded images they keep.
//!
//! Writes to one product are ordered (a lock per product id), and the store's own conditions
//! decide the outcome even across servers sharing PostgreSQL: a create inserts only if the id is
//! free (else 409), an update changes only a product that still exists (a PUT racing a DELETE
//! cannot bring it back). Uploaded images are named by their content hash; saving, referencing
//! and deleting them happens under one lock, and an image no product references any more is
//! deleted.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{Multipart, Path, State};
use axum::http::StatusCode;
use axum::Json;
use lookalike::error::Error;
use lookalike::store::WriteMode;
use lookalike::types::{check_id, ProductInfo, StoredProduct};
use serde_json::Value;
use tokio::sync::{Mutex, MutexGuard};

use super::error::ApiError;
use super::queries::{find_product, parse_number, product_json};
use super::{on_catalogue, read_form, ApiResult, Shared};

/// Uploads older than this that no product references are deleted when the server starts (a
/// younger one may belong to a write in progress on another server sharing the folder).
const ORPHAN_AGE: Duration = Duration::from_secs(15 * 60);

/// Locks that order writes per product id (striped: ids sharing a stripe share a lock).
pub struct ProductLocks {
    stripes: Vec<Mutex<()>>,
}

impl Default for ProductLocks {
    fn default() -> Self {
        Self {
            stripes: (0..64).map(|_| Mutex::new(())).collect(),
        }
    }
}

impl ProductLocks {
    pub async fn lock(&self, id: &str) -> MutexGuard<'_, ()> {
        let hash = lookalike::content_hash(id.as_bytes());
        let stripe = usize::from_str_radix(&hash[..8], 16).expect("hex digest") % self.stripes.len();
        self.stripes[stripe].lock().await
    }
}

fn info_from_fields(fields: &HashMap<String, String>, base: ProductInfo) -> ApiResult<ProductInfo> {
    let text = |k: &str, old: Option<String>| match fields.get(k) {
        Some(v) if v.trim().is_empty() => None,
        Some(v) => Some(v.trim().to_string()),
        None => old,
    };
    let price = match fields.get("price") {
        None => base.price,
        Some(_) => parse_number::<f64>("price", &fields.get("price").cloned())?,
    };
    let info = ProductInfo {
        title: text("title", base.title),
        price,
        category: text("category", base.category),
        description: text("description", base.description),
        url: text("url", base.url),
        group: text("group", base.group),
    };
    info.check()?;
    Ok(info)
}

/// Whether `path` is named as this server names its uploads: `<sha256>.<extension>` directly in
/// the upload folder. Only such files, and only when the store recorded them as uploads, are
/// ever deleted: the folder may be shared with files the server never wrote.
fn has_upload_name(state: &Shared, path: &FsPath) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let Some((hash, extension)) = name.split_once('.') else {
        return false;
    };
    path.parent() == Some(state.upload_dir.as_path())
        && hash.len() == 64
        && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && (1..=8).contains(&extension.len())
        && extension.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Refuses an upload folder that holds the catalogue's database (where its `index_file` is, for a
/// store that has one): the server deletes files there.
pub fn check_upload_dir(upload_dir: &FsPath, index_file: Option<&FsPath>) -> anyhow::Result<()> {
    let Some(index_file) = index_file else {
        return Ok(());
    };
    let database_folder = lookalike::files::folder_of(index_file);
    let same = |a: &FsPath, b: &FsPath| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => std::path::absolute(a).ok() == std::path::absolute(b).ok(),
    };
    if same(upload_dir, database_folder) {
        anyhow::bail!(
            "the upload folder {} holds the catalogue's database; give --upload-dir a folder of its own",
            upload_dir.display()
        );
    }
    Ok(())
}

/// Records the upload in the store, then writes it into the upload folder under its content
/// hash (through a temporary file of its own, so identical uploads at once do not collide);
/// returns its path and hash. Recorded first: a crash in between leaves a record without a
/// file, never a file the server would not delete.
async fn save_upload(state: &Shared, bytes: Bytes) -> ApiResult<(PathBuf, String)> {
    let hash = lookalike::content_hash(&bytes);
    let extension = image::guess_format(&bytes)
        .ok()
        .and_then(|f| f.extensions_str().first().copied())
        .unwrap_or("img");
    let path = state.upload_dir.join(format!("{hash}.{extension}"));
    let recorded = path.to_string_lossy().into_owned();
    on_catalogue(state, move |c| c.record_upload(&recorded)).await?;
    let file = path.clone();
    tokio::task::spawn_blocking(move || {
        if !file.is_file() {
            lookalike::files::write_atomically(&file, |out| Ok(std::io::Write::write_all(out, &bytes)?))?;
        }
        Ok::<_, anyhow::Error>(())
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok((path, hash))
}

/// Deletes `path` if it is one of our uploads and no product references it. Call with the
/// uploads lock held.
async fn release_image(state: &Shared, path: &str) -> ApiResult<()> {
    let file = PathBuf::from(path);
    if !has_upload_name(state, &file) {
        return Ok(());
    }
    let owned = path.to_string();
    if on_catalogue(state, move |c| c.release_upload(&owned)).await? {
        if let Err(err) = tokio::fs::remove_file(&file).await {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path, %err, "cannot delete an unused upload");
            }
        }
    }
    Ok(())
}

/// Stores `product` with the new image `bytes` as `mode` allows; the image is not kept if the
/// store refused the write (the id taken, or the product gone).
async fn store_with_upload(
    state: &Shared,
    mut product: StoredProduct,
    bytes: Bytes,
    mode: WriteMode,
) -> ApiResult<StoredProduct> {
    let _files = state.uploads.lock().await;
    let (path, hash) = save_upload(state, bytes).await?;
    product.image_path = path.to_string_lossy().into_owned();
    product.content_hash = hash;
    let stored = product.clone();
    let written = on_catalogue(state, move |c| write(c, stored, mode)).await;
    if written.is_err() {
        release_image(state, &product.image_path).await?;
    }
    written.map(|()| product)
}

fn write(shop: &lookalike::shop::Shop, product: StoredProduct, mode: WriteMode) -> lookalike::error::Result<()> {
    match mode {
        WriteMode::CreateOnly => shop.create(product),
        _ => shop.update(product),
    }
}

pub async fn create_product(State(state): State<Shared>, multipart: Multipart) -> ApiResult<(StatusCode, Json<Value>)> {
    let ticket = state.admit_image().await?;
    let form = read_form(&state, multipart).await?;
    let image = form
        .image
        .clone()
        .ok_or_else(|| ApiError::bad_request("the multipart field `image` is required"))?;
    let id = match form.fields.get("id").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        Some(id) => id.to_string(),
        None => lookalike::content_hash(&image)[..16].to_string(),
    };
    check_id(&id)?;
    let info = info_from_fields(&form.fields, ProductInfo::default())?;
    let _product = state.product_locks.lock(&id).await;
    let taken = {
        let id = id.clone();
        on_catalogue(&state, move |c| match c.product(&id) {
            Ok(_) => Ok(true),
            Err(Error::NotFound(_)) => Ok(false),
            Err(err) => Err(err),
        })
        .await?
    };
    if taken {
        return Err(Error::Conflict(format!("product {id:?} exists; use PUT to change it")).into());
    }
    let vector = state.embed(image.clone(), ticket).await?.features;
    let product = StoredProduct {
        id: id.clone(),
        info,
        image_path: String::new(),
        content_hash: String::new(),
        vector,
        more_images: Vec::new(),
    };
    // A conflict here: another server sharing the database created it meanwhile.
    let product = store_with_upload(&state, product, image, WriteMode::CreateOnly).await?;
    Ok((StatusCode::CREATED, Json(product_json(&product))))
}

pub async fn update_product(
    State(state): State<Shared>,
    Path(id): Path<String>,
    multipart: Multipart,
) -> ApiResult<Json<Value>> {
    find_product(&state, &id).await?;
    let form = read_form(&state, multipart).await?;
    let ticket = match form.image {
        Some(_) => Some(state.admit_image().await?),
        None => None,
    };
    let _product = state.product_locks.lock(&id).await;
    let existing = find_product(&state, &id).await?;
    let info = info_from_fields(&form.fields, existing.info.clone())?;
    let old_image = existing.image_path.clone();
    let mut product = StoredProduct { info, ..existing };
    // Not found here: deleted (by another server sharing the database) while this update was
    // being prepared.
    let product = match (form.image, ticket) {
        (Some(bytes), Some(ticket)) => {
            product.vector = state.embed(bytes.clone(), ticket).await?.features;
            let product = store_with_upload(&state, product, bytes, WriteMode::UpdateOnly).await?;
            if product.image_path != old_image {
                let _files = state.uploads.lock().await;
                release_image(&state, &old_image).await?;
            }
            product
        }
        _ => {
            let stored = product.clone();
            on_catalogue(&state, move |c| c.update(stored)).await?;
            product
        }
    };
    Ok(Json(product_json(&product)))
}

pub async fn delete_product(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let _product = state.product_locks.lock(&id).await;
    let existing = find_product(&state, &id).await?;
    let _files = state.uploads.lock().await;
    on_catalogue(&state, move |c| c.remove(&id)).await?;
    release_image(&state, &existing.image_path).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes uploads that no product references, if older than [`ORPHAN_AGE`], and temporary
/// files of uploads left by a crash; returns how many were deleted. Blocking: run it on a thread
/// of its own.
pub fn sweep_uploads(state: &Shared) -> anyhow::Result<usize> {
    let _files = state.uploads.blocking_lock();
    let mut deleted = lookalike::files::sweep_abandoned_writes(&state.upload_dir);
    let Ok(entries) = std::fs::read_dir(&state.upload_dir) else {
        return Ok(deleted);
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let metadata = entry.metadata()?;
        let old = metadata
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age > ORPHAN_AGE);
        if !metadata.is_file() || !old || !has_upload_name(state, &path) {
            continue;
        }
        if state.shop.release_upload(&path.to_string_lossy())? && std::fs::remove_file(&path).is_ok() {
            deleted += 1;
        }
    }
    Ok(deleted)
}

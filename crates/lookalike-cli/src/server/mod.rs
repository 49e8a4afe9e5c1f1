//! `lookalike serve`: the REST API and the web page, a thin async shell over the library.
//! Decoding runs on tokio's blocking pool, inference on the batcher thread, so the
//! executor only routes requests.

mod error;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::LengthLimitError;
use lookalike::image::{decode_image, Preprocessing};
use lookalike::learn::head::Head;
use lookalike::model::batcher::{BatchPolicy, Batcher};
use lookalike::model::ImageEmbedding;
use lookalike::model::{Embedder, ModelManifest};
use lookalike::recommend::Recommender;
use lookalike::store::Store;
use lookalike::types::{Filter, Metric, ProductInfo, Scored, StoredProduct};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::Deserialize;
use serde_json::{json, Value};

pub use error::ApiError;

const MAX_K: usize = 200;
const MAX_PER_PAGE: usize = 200;

pub struct ServerConfig {
    pub addr: SocketAddr,
    /// Bearer token for writes; `None` means read-only.
    pub token: Option<String>,
    pub max_upload_bytes: usize,
    pub upload_dir: PathBuf,
    pub batch: BatchPolicy,
    /// Enables `hybrid` searches.
    pub classifier: Option<Head>,
}

struct AppState {
    catalogue: Recommender,
    batcher: Batcher,
    preprocessing: Preprocessing,
    manifest: ModelManifest,
    token: Option<String>,
    upload_dir: PathBuf,
    max_upload_bytes: usize,
    classifier: Option<Head>,
}

type Shared = Arc<AppState>;
type ApiResult<T> = std::result::Result<T, ApiError>;

pub fn router(store: Box<dyn Store>, embedder: Arc<Embedder>, config: &ServerConfig) -> Result<Router> {
    let manifest = embedder.manifest();
    store
        .ensure_manifest(&manifest)
        .context("cannot serve this catalogue")?;
    let state = Arc::new(AppState {
        catalogue: Recommender::new(store)?,
        preprocessing: embedder.preprocessing,
        batcher: Batcher::start(embedder, config.batch),
        manifest,
        token: config.token.clone(),
        upload_dir: config.upload_dir.clone(),
        max_upload_bytes: config.max_upload_bytes,
        classifier: config.classifier.clone(),
    });
    Ok(Router::new()
        .route("/", get(|| async { Html(include_str!("web/index.html")) }))
        .route(
            "/app.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], include_str!("web/app.js")) }),
        )
        .route(
            "/style.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], include_str!("web/style.css")) }),
        )
        .route(
            "/openapi.json",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    include_str!("openapi.json"),
                )
            }),
        )
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/v1/stats", get(stats))
        .route("/v1/search", post(search))
        .route("/v1/recommend", post(recommend))
        .route("/v1/products", get(list_products).post(create_product))
        .route(
            "/v1/products/{id}",
            get(get_product).put(update_product).delete(delete_product),
        )
        .route("/v1/products/{id}/similar", get(similar))
        .route("/v1/products/{id}/image", get(product_image))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(middleware::from_fn_with_state(state.clone(), read_whole_body))
        .layer(DefaultBodyLimit::disable())
        .with_state(state))
}

pub async fn serve(router: Router, addr: SocketAddr) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    println!("lookalike serving on http://{}", listener.local_addr()?);
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// Reads each request body completely (up to the upload limit plus room for the multipart
/// framing) before any handler runs. A handler that answers early — wrong token, unknown
/// product — would otherwise leave the client's upload unread, and the connection would be
/// cut under the client before it sees the answer.
async fn read_whole_body(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let limit = state.max_upload_bytes + 64 * 1024;
    let (parts, body) = request.into_parts();
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Err(err) if std::error::Error::source(&err).is_some_and(|e| e.is::<LengthLimitError>()) => {
            upload_too_large(&state).into_response()
        }
        Err(err) => ApiError::bad_request(format!("could not read the request body: {err}")).into_response(),
    }
}

fn image_url(id: &str) -> String {
    format!("/v1/products/{}/image", utf8_percent_encode(id, NON_ALPHANUMERIC))
}

fn product_json(p: &StoredProduct) -> Value {
    json!({
        "id": p.id,
        "title": p.info.title,
        "price": p.info.price,
        "category": p.info.category,
        "description": p.info.description,
        "image_url": image_url(&p.id),
    })
}

fn hits_json(hits: &[Scored], metric: Metric) -> Value {
    let results: Vec<Value> = hits
        .iter()
        .map(|(product, score)| {
            let mut v = product_json(product);
            v["score"] = json!(score);
            v
        })
        .collect();
    json!({ "metric": metric, "results": results })
}

/// Runs `work` on the catalogue off the executor: PostgreSQL queries block, and scanning a big
/// in-memory index takes milliseconds.
async fn on_catalogue<T: Send + 'static>(
    state: &Shared,
    work: impl FnOnce(&Recommender) -> Result<T> + Send + 'static,
) -> ApiResult<T> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || work(&state.catalogue))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

fn no_product(id: &str) -> ApiError {
    ApiError::not_found(format!("no product with id {id:?}"))
}

#[derive(Debug, Default, Deserialize)]
struct QueryParams {
    k: Option<String>,
    category: Option<String>,
    min_price: Option<String>,
    max_price: Option<String>,
}

fn parse_number<T: std::str::FromStr>(name: &str, value: &Option<String>) -> ApiResult<Option<T>> {
    match value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("{name} must be a number, got {v:?}"))),
    }
}

impl QueryParams {
    fn k(&self) -> ApiResult<usize> {
        let k = parse_number::<usize>("k", &self.k)?.unwrap_or(10);
        if k == 0 || k > MAX_K {
            return Err(ApiError::bad_request(format!("k must be between 1 and {MAX_K}")));
        }
        Ok(k)
    }

    fn filter(&self) -> ApiResult<Filter> {
        let min_price = parse_number::<f64>("min_price", &self.min_price)?;
        let max_price = parse_number::<f64>("max_price", &self.max_price)?;
        Filter::new(self.category.clone(), min_price, max_price).map_err(|e| ApiError::bad_request(e.to_string()))
    }
}

async fn stats(State(state): State<Shared>) -> ApiResult<Json<Value>> {
    let (products, index_bytes) = on_catalogue(&state, |c| Ok((c.len()?, c.index_bytes()?))).await?;
    Ok(Json(json!({
        "products": products,
        "model": state.manifest.model,
        "weights_sha256": state.manifest.weights_sha256,
        "dimension": state.manifest.dimension,
        "preprocessing": state.manifest.preprocessing,
        "index_bytes": index_bytes,
        "classifier": state.classifier.as_ref().map(|h| json!({ "classes": h.classes })),
    })))
}

/// Decodes and preprocesses off the executor, then waits for the batcher's forward pass.
async fn embed_upload(state: &Shared, bytes: axum::body::Bytes) -> ApiResult<ImageEmbedding> {
    let pre = state.preprocessing;
    let tensor = tokio::task::spawn_blocking(move || decode_image(&bytes).map(|img| pre.tensor_of(&img)))
        .await
        .map_err(ApiError::internal)??;
    let reply = state.batcher.submit(tensor)?;
    reply.await.map_err(ApiError::internal)?.map_err(ApiError::internal)
}

/// A multipart form: the `image` part's bytes and the other fields as text.
struct Form {
    image: Option<axum::body::Bytes>,
    fields: std::collections::HashMap<String, String>,
}

async fn read_form(state: &Shared, mut multipart: Multipart) -> ApiResult<Form> {
    let mut form = Form {
        image: None,
        fields: Default::default(),
    };
    while let Some(field) = multipart.next_field().await? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "image" {
            let bytes = field.bytes().await?;
            if bytes.len() > state.max_upload_bytes {
                return Err(upload_too_large(state));
            }
            form.image = Some(bytes);
        } else {
            form.fields.insert(name, field.text().await?);
        }
    }
    Ok(form)
}

fn upload_too_large(state: &Shared) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "upload_too_large",
        format!(
            "the upload is larger than this server's limit of {:.1} MB ({} bytes)",
            state.max_upload_bytes as f64 / (1024.0 * 1024.0),
            state.max_upload_bytes
        ),
    )
}

async fn search(State(state): State<Shared>, multipart: Multipart) -> ApiResult<Json<Value>> {
    let form = read_form(&state, multipart).await?;
    let field = |name: &str| form.fields.get(name).cloned();
    let params = QueryParams {
        k: field("k"),
        category: field("category"),
        min_price: field("min_price"),
        max_price: field("max_price"),
    };
    let (k, mut filter) = (params.k()?, params.filter()?);
    let hybrid = match field("hybrid").as_deref().map(str::trim) {
        None | Some("" | "false" | "0" | "no") => false,
        Some("true" | "1" | "yes" | "on") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "hybrid must be true or false, got {other:?}"
            )))
        }
    };
    let coverage = parse_number::<f32>("coverage", &field("coverage"))?.unwrap_or(0.9);
    if !(0.0..=1.0).contains(&coverage) {
        return Err(ApiError::bad_request("coverage must be between 0 and 1"));
    }
    let classifier = match (hybrid, &state.classifier) {
        (true, None) => {
            return Err(ApiError::bad_request(
                "hybrid search needs a classifier head; start the server with --classifier",
            ))
        }
        (true, Some(head)) => Some(head),
        (false, _) => None,
    };
    let image = form
        .image
        .ok_or_else(|| ApiError::bad_request("the multipart field `image` is required"))?;
    let embedding = embed_upload(&state, image).await?;
    let query = embedding.features;
    let predicted = match classifier {
        Some(head) => {
            let likely = head
                .likely_classes(&embedding.classifier_input, coverage)
                .map_err(ApiError::internal)?;
            filter.any_category = likely.iter().map(|(c, _)| c.clone()).collect();
            Some(likely)
        }
        None => None,
    };
    let hits = on_catalogue(&state, move |c| c.search(&query, k, Metric::Cosine, &filter, None)).await?;
    let mut body = hits_json(&hits, Metric::Cosine);
    if let Some(predicted) = predicted {
        body["predicted"] = predicted
            .iter()
            .map(|(category, probability)| json!({ "category": category, "probability": probability }))
            .collect();
    }
    Ok(Json(body))
}

async fn similar(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(params): Query<QueryParams>,
) -> ApiResult<Json<Value>> {
    let (k, filter) = (params.k()?, params.filter()?);
    let found = {
        let id = id.clone();
        on_catalogue(&state, move |c| c.similar(&id, k, Metric::Cosine, &filter)).await?
    };
    let hits = found.ok_or_else(|| no_product(&id))?;
    Ok(Json(hits_json(&hits, Metric::Cosine)))
}

#[derive(Deserialize)]
struct RecommendRequest {
    #[serde(default)]
    positive: Vec<String>,
    #[serde(default)]
    negative: Vec<String>,
    k: Option<usize>,
    category: Option<String>,
    min_price: Option<f64>,
    max_price: Option<f64>,
}

/// "More like these, less like those": the mean of the positives' unit vectors minus half
/// the mean of the negatives', searched by cosine with all given products excluded.
async fn recommend(
    State(state): State<Shared>,
    body: Result<Json<RecommendRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if req.positive.is_empty() {
        return Err(ApiError::bad_request("`positive` must name at least one product id"));
    }
    let params = QueryParams {
        k: req.k.map(|k| k.to_string()),
        category: req.category.clone(),
        min_price: req.min_price.map(|v| v.to_string()),
        max_price: req.max_price.map(|v| v.to_string()),
    };
    let (k, filter) = (params.k()?, params.filter()?);
    let dimension = state.manifest.dimension;
    let hits = on_catalogue(&state, move |c| {
        let mut query = vec![0.0f32; dimension];
        for (ids, weight) in [(&req.positive, 1.0f32), (&req.negative, -0.5)] {
            for id in ids {
                let Some(p) = c.find(id)? else {
                    return Ok(Err(no_product(id)));
                };
                let norm = lookalike::index::dot(&p.vector, &p.vector)
                    .sqrt()
                    .max(f32::MIN_POSITIVE);
                let scale = weight / (ids.len() as f32 * norm);
                query.iter_mut().zip(&p.vector).for_each(|(q, v)| *q += v * scale);
            }
        }
        let excluded: std::collections::HashSet<&str> =
            req.positive.iter().chain(&req.negative).map(String::as_str).collect();
        let hits = c.search(&query, k + excluded.len(), Metric::Cosine, &filter, None)?;
        Ok(Ok(hits
            .into_iter()
            .filter(|(p, _)| !excluded.contains(p.id.as_str()))
            .take(k)
            .collect::<Vec<Scored>>()))
    })
    .await??;
    Ok(Json(hits_json(&hits, Metric::Cosine)))
}

#[derive(Deserialize)]
struct ListParams {
    category: Option<String>,
    page: Option<String>,
    per_page: Option<String>,
}

async fn list_products(State(state): State<Shared>, Query(params): Query<ListParams>) -> ApiResult<Json<Value>> {
    let page = parse_number::<usize>("page", &params.page)?.unwrap_or(1);
    let per_page = parse_number::<usize>("per_page", &params.per_page)?.unwrap_or(24);
    if page == 0 || per_page == 0 || per_page > MAX_PER_PAGE {
        return Err(ApiError::bad_request(format!(
            "page starts at 1; per_page is between 1 and {MAX_PER_PAGE}"
        )));
    }
    let category = params.category.filter(|c| !c.is_empty());
    let listed = on_catalogue(&state, move |c| c.page(category.as_deref(), page, per_page)).await?;
    let items: Vec<Value> = listed.items.iter().map(product_json).collect();
    Ok(Json(json!({
        "total": listed.total,
        "page": page,
        "per_page": per_page,
        "categories": listed.categories,
        "items": items
    })))
}

async fn find_product(state: &Shared, id: &str) -> ApiResult<Option<StoredProduct>> {
    let id = id.to_string();
    on_catalogue(state, move |c| c.find(&id)).await
}

async fn get_product(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let p = find_product(&state, &id).await?.ok_or_else(|| no_product(&id))?;
    Ok(Json(product_json(&p)))
}

fn content_type_of(path: &str) -> &'static str {
    match path.rsplit('.').next().map(str::to_ascii_lowercase).as_deref() {
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("bmp") => "image/bmp",
        Some("tif" | "tiff") => "image/tiff",
        _ => "image/jpeg",
    }
}

/// Serves only the file recorded for the product; no path from the request reaches the disk.
async fn product_image(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult<Response> {
    let path = find_product(&state, &id)
        .await?
        .ok_or_else(|| no_product(&id))?
        .image_path;
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|_| ApiError::not_found(format!("the image of product {id:?} is no longer on disk")))?;
    Ok((
        [
            (header::CONTENT_TYPE, content_type_of(&path)),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        bytes,
    )
        .into_response())
}

fn authorize(state: &Shared, headers: &HeaderMap) -> ApiResult<()> {
    let Some(token) = &state.token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "read_only",
            "this server is read-only",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "writes need `Authorization: Bearer <token>`",
        )),
        Some(g) if !constant_time_eq(g.as_bytes(), token.as_bytes()) => {
            Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "wrong token"))
        }
        Some(_) => Ok(()),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn info_from_fields(fields: &std::collections::HashMap<String, String>, base: ProductInfo) -> ApiResult<ProductInfo> {
    let text = |k: &str, old: Option<String>| match fields.get(k) {
        Some(v) if v.trim().is_empty() => None,
        Some(v) => Some(v.trim().to_string()),
        None => old,
    };
    let price = match fields.get("price") {
        None => base.price,
        Some(_) => parse_number::<f64>("price", &fields.get("price").cloned())?,
    };
    if price.is_some_and(|p| !(p.is_finite() && p >= 0.0)) {
        return Err(ApiError::bad_request("price must be a non-negative number"));
    }
    Ok(ProductInfo {
        title: text("title", base.title),
        price,
        category: text("category", base.category),
        description: text("description", base.description),
    })
}

/// Stores the upload under the upload folder, named by its content hash.
async fn save_upload(state: &Shared, bytes: &[u8]) -> ApiResult<(PathBuf, String)> {
    let hash = lookalike::content_hash(bytes);
    let ext = image::guess_format(bytes)
        .ok()
        .and_then(|f| f.extensions_str().first().copied())
        .unwrap_or("img");
    let path = state.upload_dir.join(format!("{hash}.{ext}"));
    tokio::fs::create_dir_all(&state.upload_dir)
        .await
        .map_err(ApiError::internal)?;
    let part = path.with_extension("part");
    tokio::fs::write(&part, bytes).await.map_err(ApiError::internal)?;
    tokio::fs::rename(&part, &path).await.map_err(ApiError::internal)?;
    Ok((path, hash))
}

async fn write_product(
    state: &Shared,
    id: String,
    info: ProductInfo,
    image: Option<axum::body::Bytes>,
    existing: Option<StoredProduct>,
) -> ApiResult<StoredProduct> {
    let (vector, image_path, hash) = match (image, existing) {
        (Some(bytes), _) => {
            let vector = embed_upload(state, bytes.clone()).await?.features;
            let (path, hash) = save_upload(state, &bytes).await?;
            (vector, path, hash)
        }
        (None, Some(old)) => (old.vector, PathBuf::from(old.image_path), old.content_hash),
        (None, None) => return Err(ApiError::bad_request("the multipart field `image` is required")),
    };
    let product = StoredProduct {
        id,
        info,
        image_path: image_path.to_string_lossy().into_owned(),
        content_hash: hash,
        vector,
    };
    let stored = product.clone();
    on_catalogue(state, move |c| c.upsert(stored)).await?;
    Ok(product)
}

async fn create_product(
    State(state): State<Shared>,
    headers: HeaderMap,
    multipart: Multipart,
) -> ApiResult<(StatusCode, Json<Value>)> {
    authorize(&state, &headers)?;
    let form = read_form(&state, multipart).await?;
    let image = form.image.clone();
    let id = match form
        .fields
        .get("id")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
    {
        Some(id) => id,
        None => lookalike::content_hash(image.as_deref().unwrap_or_default())[..16].to_string(),
    };
    if find_product(&state, &id).await?.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "exists",
            format!("product {id:?} exists; use PUT to change it"),
        ));
    }
    let info = info_from_fields(&form.fields, ProductInfo::default())?;
    let product = write_product(&state, id, info, image, None).await?;
    Ok((StatusCode::CREATED, Json(product_json(&product))))
}

async fn update_product(
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    multipart: Multipart,
) -> ApiResult<Json<Value>> {
    authorize(&state, &headers)?;
    let Some(existing) = find_product(&state, &id).await? else {
        return Err(no_product(&id));
    };
    let form = read_form(&state, multipart).await?;
    let info = info_from_fields(&form.fields, existing.info.clone())?;
    let product = write_product(&state, id, info, form.image, Some(existing)).await?;
    Ok(Json(product_json(&product)))
}

async fn delete_product(
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    authorize(&state, &headers)?;
    let removed = on_catalogue(&state, move |c| c.remove(&id)).await?;
    if removed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no such product"))
    }
}

/// Refuses to start writable without a token.
pub fn check_write_access(token: &Option<String>, read_only: bool) -> Result<Option<String>> {
    match (token, read_only) {
        (_, true) => Ok(None),
        (Some(t), false) if !t.trim().is_empty() => Ok(Some(t.clone())),
        _ => bail!("a writable server needs a token (--token or LOOKALIKE_TOKEN); start with --read-only to serve without writes"),
    }
}

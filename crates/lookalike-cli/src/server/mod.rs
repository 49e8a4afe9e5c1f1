//! `lookalike serve`: the REST API and the web page, a thin async shell over the library.
//! Decoding runs on tokio's blocking pool (one decode per core at a time), inference on the
//! batcher thread (the parts of a busy photo, which need their feature maps, on the blocking
//! pool through [`Shop::find_part`]), so the executor only routes requests; what the server
//! takes on at once is decided up front ([`admission`]).

mod admission;
mod bodies;
mod error;
mod layers;
mod metrics;
mod products;
mod protocol_errors;
mod queries;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Multipart, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware;
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};
use axum::{Json, Router};
use lookalike::image::{decode_photo, ImageError, Photo, Preprocessing};
use lookalike::locate::KEPT_PHOTO_SIDE;
use lookalike::model::batcher::{BatchPolicy, Batcher, SubmitError};
use lookalike::model::{ImageEmbedding, ModelManifest};
use lookalike::shop::{FoundRegion, Framing, Located, Shop};
use lookalike::types::PhotoBox;
use serde_json::json;
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use admission::{Admission, ImageTicket, PartsTicket};
pub use error::ApiError;
pub use layers::{init_logging, serve};

pub struct ServerConfig {
    pub addr: std::net::SocketAddr,
    /// Bearer token for writes; `None` means read-only.
    pub token: Option<String>,
    pub max_upload_bytes: usize,
    pub upload_dir: PathBuf,
    pub batch: BatchPolicy,
    /// Decodes at once.
    pub decoders: usize,
    /// Photos searched in parts at once (see [`admission`]).
    pub photos_in_parts: usize,
    /// How long a client may take to send its headers, or pause while sending a body.
    pub client_timeout: std::time::Duration,
    /// How long an image request waits for a place in the pipeline before 503.
    pub admission_wait: std::time::Duration,
    /// Origins whose pages may call the API (the widget on a shop's site); none: no CORS headers.
    pub cors_origins: Vec<HeaderValue>,
}

pub struct AppState {
    shop: Shop,
    batcher: Batcher,
    preprocessing: Preprocessing,
    manifest: ModelManifest,
    token: Option<String>,
    upload_dir: PathBuf,
    max_upload_bytes: usize,
    admission: Admission,
    bodies: Arc<bodies::BodyBudget>,
    metrics: metrics::Metrics,
    product_locks: products::ProductLocks,
    /// Held while uploads are saved, referenced or deleted.
    uploads: tokio::sync::Mutex<()>,
    client_timeout: std::time::Duration,
    admission_wait: std::time::Duration,
    /// Beyond this many images in the pipeline (a full batch waiting), photos are searched
    /// whole instead of looking for the product in them.
    busy_images: usize,
}

type Shared = Arc<AppState>;
type ApiResult<T> = std::result::Result<T, ApiError>;

/// Bodies held in memory at once, at least four uploads' worth.
const BODY_BUDGET_BYTES: usize = 256 * 1024 * 1024;

pub fn router(shop: Shop, config: &ServerConfig) -> Result<Router> {
    let embedder = shop.embedder().context("cannot serve this catalogue")?;
    let manifest = embedder.manifest();
    let upload_dir = std::path::absolute(&config.upload_dir)?;
    if config.token.is_some() {
        let index_file = shop.index_file()?;
        products::check_upload_dir(&upload_dir, index_file.as_deref())?;
        std::fs::create_dir_all(&upload_dir)
            .with_context(|| format!("cannot create the upload folder {}", upload_dir.display()))?;
    }
    // Every admitted image may wait for the model, so the batcher's queue never refuses one.
    let images = config.batch.queue + config.batch.max_batch + config.decoders;
    let batch = BatchPolicy {
        queue: images,
        ..config.batch
    };
    let body_budget = BODY_BUDGET_BYTES.max(4 * (config.max_upload_bytes + bodies::MULTIPART_ROOM));
    if let Some(load) = shop.load()? {
        tracing::info!(
            products = load.products,
            changed = load.changed,
            rebuilt = load.rebuilt.as_deref().unwrap_or("no"),
            graph_built = load.graph_built,
            written = load.written,
            "search index loaded"
        );
        if let Some(why) = &load.unsaved {
            tracing::warn!(%why, "cannot keep the search index; the next start builds it again");
        }
    }
    // The network's conversion and the index file's meta part were freed: 65 MB of a small
    // catalogue's 185 MB at start.
    crate::return_freed_heap();
    let state = Arc::new(AppState {
        shop,
        preprocessing: embedder.preprocessing,
        batcher: Batcher::start(embedder, batch),
        manifest,
        token: config.token.clone(),
        upload_dir,
        max_upload_bytes: config.max_upload_bytes,
        admission: Admission::new(images, config.decoders, config.photos_in_parts),
        bodies: bodies::BodyBudget::new(body_budget),
        metrics: metrics::Metrics::default(),
        product_locks: Default::default(),
        uploads: Default::default(),
        client_timeout: config.client_timeout,
        admission_wait: config.admission_wait,
        busy_images: config.batch.max_batch,
    });
    if config.token.is_some() {
        let state = state.clone();
        std::thread::spawn(move || match products::sweep_uploads(&state) {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "deleted uploads no product references"),
            Err(err) => tracing::warn!(%err, "cannot sweep the upload folder"),
        });
    }
    let products = Router::new()
        .route(
            "/v1/products",
            get(queries::list_products).post(products::create_product),
        )
        .route(
            "/v1/products/{id}",
            get(queries::get_product)
                .put(products::update_product)
                .delete(products::delete_product),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), bodies::read_whole_body))
        .route_layer(middleware::from_fn_with_state(state.clone(), layers::require_token));
    let api = Router::new()
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
            "/widget.js",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/javascript"),
                        (header::CACHE_CONTROL, "public, max-age=300"),
                    ],
                    include_str!("web/widget.js"),
                )
            }),
        )
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], openapi_document()) }),
        )
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/metrics", get(queries::metrics))
        .route("/v1/stats", get(queries::stats))
        .route("/v1/search", post(queries::search).get(queries::search_words))
        .route("/v1/recommend", post(queries::recommend))
        .route("/v1/products/{id}/similar", get(queries::similar))
        .route("/v1/explain", post(queries::explain))
        .route("/v1/products/{id}/image", get(queries::product_image))
        .route("/v1/products/{id}/images/{n}", get(queries::product_view))
        .route_layer(middleware::from_fn_with_state(state.clone(), bodies::read_whole_body))
        .merge(products)
        .route_layer(middleware::from_fn(layers::remember_route))
        .fallback(|State(state): State<Shared>, request: Request| async move {
            bodies::refuse(&state, request, ApiError::not_found("no such endpoint")).await
        })
        .method_not_allowed_fallback(|State(state): State<Shared>, request: Request| async move {
            let error = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            );
            bodies::refuse(&state, request, error).await
        })
        .with_state(state.clone());
    let request_id = layers::REQUEST_ID.clone();
    Ok(api.layer(
        ServiceBuilder::new()
            .layer(middleware::from_fn(layers::drop_unfit_request_id))
            .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
            .layer(PropagateRequestIdLayer::new(request_id.clone()))
            .option_layer(cors(&config.cors_origins, request_id))
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
                ApiError::internal("the request handler failed").into_response()
            }))
            .layer(middleware::from_fn_with_state(state, layers::observe))
            .layer(DefaultBodyLimit::disable()),
    ))
}

/// The CORS layer for `origins` (`*` for any); `None` (no CORS headers at all) without any.
fn cors(origins: &[HeaderValue], request_id: axum::http::HeaderName) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allowed = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().cloned())
    };
    Some(
        CorsLayer::new()
            .allow_origin(allowed)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION, request_id.clone()])
            .expose_headers([request_id])
            .max_age(std::time::Duration::from_secs(3600)),
    )
}

/// The API's description: paths and the other schemas written in `openapi.json`, the schemas of
/// products and results generated from the types that serialise them ([`crate::answers`]).
fn openapi_document() -> &'static str {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(|| {
        use utoipa::OpenApi;
        let mut document: serde_json::Value =
            serde_json::from_str(include_str!("openapi.json")).expect("openapi.json is JSON");
        let generated = serde_json::to_value(crate::answers::Schemas::openapi().components).expect("schemas");
        let schemas = document["components"]["schemas"].as_object_mut().expect("schemas");
        for (name, schema) in generated["schemas"].as_object().expect("schemas") {
            schemas.insert(name.clone(), schema.clone());
        }
        document.to_string()
    })
}

/// Runs `work` on the catalogue off the executor: PostgreSQL queries block, and scanning a big
/// in-memory index takes milliseconds.
async fn on_catalogue<T: Send + 'static>(
    state: &Shared,
    work: impl FnOnce(&Shop) -> lookalike::error::Result<T> + Send + 'static,
) -> ApiResult<T> {
    let state = state.clone();
    Ok(tokio::task::spawn_blocking(move || work(&state.shop))
        .await
        .map_err(ApiError::internal)??)
}

impl AppState {
    /// A place for one more image in the pipeline, or 503 when none frees up in time.
    async fn admit_image(&self) -> ApiResult<ImageTicket> {
        self.admission
            .admit_image(self.admission_wait)
            .await
            .inspect_err(|_| self.metrics.refused("images"))
    }

    /// The photo in `bytes` embedded whole (decoded by one of the decoders, then through the
    /// batcher). `ticket` is the image's admission, kept until it is embedded.
    async fn embed(self: &Arc<Self>, bytes: Bytes, ticket: ImageTicket) -> ApiResult<ImageEmbedding> {
        Ok(self.locate(bytes, Framing::Whole, ticket).await?.0.embedding)
    }

    /// A place among the photos searched in parts (to hold while it looks), waited for as an
    /// image waits for the pipeline; `None` when the server is busy (a full batch waiting, or no
    /// place free in time), and the photo is then searched whole.
    async fn place_in_parts(&self) -> Option<PartsTicket> {
        let ticket = if self.admission.images_in_flight() > self.busy_images {
            None
        } else {
            self.admission.search_in_parts(self.admission_wait).await
        };
        if ticket.is_none() {
            self.metrics.searched_whole_when_busy();
        }
        ticket
    }

    /// `framing` as the server can afford it now: looking for the product with a place among the
    /// photos searched in parts ([`Self::place_in_parts`]), else the whole photo.
    pub(crate) async fn affordable(&self, framing: Framing) -> Afforded {
        let place = match framing {
            Framing::FindProduct => self.place_in_parts().await,
            Framing::Whole | Framing::Box(_) => None,
        };
        let when_busy = framing == Framing::FindProduct && place.is_none();
        Afforded {
            framing: if when_busy { Framing::Whole } else { framing },
            place,
            searched_whole_when_busy: when_busy,
        }
    }

    /// The photo in `bytes` embedded as `framing` says (see [`Shop::embed_photo`]), or whole
    /// when the server cannot afford to look for the product ([`Self::affordable`]); and whether
    /// it was searched whole for that.
    async fn locate(
        self: &Arc<Self>,
        bytes: Bytes,
        framing: Framing,
        ticket: ImageTicket,
    ) -> ApiResult<(Located, bool)> {
        let Afforded {
            framing,
            place,
            searched_whole_when_busy,
        } = self.affordable(framing).await;
        let photo = self.decode(bytes).await?;
        // A box is read with its feature map, for its cells (`Shop::locate`): not batched.
        if let Framing::Box(_) = framing {
            let located = on_catalogue(self, move |shop| shop.locate(&photo, &framing, false)).await;
            drop(ticket);
            return Ok((located?, searched_whole_when_busy));
        }
        let embedded = Located::embedded(None, (self.embed_parts(&photo, vec![None]).await?.remove(0), None));
        if framing != Framing::FindProduct {
            return Ok((embedded, searched_whole_when_busy));
        }
        let located = on_catalogue(self, move |shop| shop.find_part(&photo, embedded, false)).await;
        drop((ticket, place));
        Ok((located?, searched_whole_when_busy))
    }

    /// "Shop the look" for the photo in `bytes` (see [`Shop::find_products`]), or the whole photo
    /// as its one region when the server is too busy to look ([`Self::affordable`]), and
    /// whether it was that.
    async fn find_products(self: &Arc<Self>, bytes: Bytes, ticket: ImageTicket) -> ApiResult<(Vec<FoundRegion>, bool)> {
        let Afforded {
            place,
            searched_whole_when_busy,
            ..
        } = self.affordable(Framing::FindProduct).await;
        let photo = self.decode(bytes).await?;
        let found = if searched_whole_when_busy {
            let whole = self.embed_parts(&photo, vec![None]).await?.remove(0);
            on_catalogue(self, move |shop| shop.whole_photo_region(&photo, whole)).await
        } else {
            on_catalogue(self, move |shop| shop.products_in(&photo)).await
        };
        drop((ticket, place));
        Ok((found?, searched_whole_when_busy))
    }

    /// `bytes` decoded, waiting for one of the decoders.
    pub(crate) async fn decode(self: &Arc<Self>, bytes: Bytes) -> ApiResult<Arc<Photo>> {
        let decoder = self.admission.decoder().await;
        let photo = tokio::task::spawn_blocking(move || {
            let photo = decode_photo(&bytes).map(|photo| photo.reduced(KEPT_PHOTO_SIDE));
            drop(decoder);
            photo
        })
        .await
        .map_err(ApiError::internal)?
        .inspect_err(|err| self.metrics.decode_failed(decode_failure(err)))?;
        Ok(Arc::new(photo))
    }

    /// Each of `parts` of `photo` (`None`: all of it) through the batcher, which runs them
    /// together.
    async fn embed_parts(&self, photo: &Arc<Photo>, parts: Vec<Option<PhotoBox>>) -> ApiResult<Vec<ImageEmbedding>> {
        let (pre, photo) = (self.preprocessing, photo.clone());
        let tensors = tokio::task::spawn_blocking(move || {
            parts
                .iter()
                .map(|part| photo.batch(&pre, &[part.as_ref()]))
                .collect::<lookalike::error::Result<Vec<_>>>()
        })
        .await
        .map_err(ApiError::internal)??;
        let replies = tensors
            .into_iter()
            .map(|tensor| self.batcher.submit(tensor))
            .collect::<Result<Vec<_>, SubmitError>>()?;
        let mut embedded = Vec::with_capacity(replies.len());
        for reply in replies {
            embedded.push(reply.await.map_err(ApiError::internal)?.map_err(ApiError::internal)?);
        }
        Ok(embedded)
    }
}

fn decode_failure(err: &ImageError) -> &'static str {
    match err {
        ImageError::Empty | ImageError::NotAnImage => "not_an_image",
        ImageError::TooLarge(_) => "too_large",
        ImageError::Undecodable(_) | ImageError::Unreadable(_) | ImageError::NotAFile => "undecodable",
    }
}

/// What a photo query can afford now ([`AppState::affordable`]).
pub(crate) struct Afforded {
    pub framing: Framing,
    /// Its place among the photos searched in parts, held while it looks.
    pub place: Option<PartsTicket>,
    /// It asked for the product to be looked for, and the server is too busy: searched whole.
    pub searched_whole_when_busy: bool,
}

/// A multipart form: the `image` part's bytes and the other fields as text.
struct Form {
    image: Option<Bytes>,
    fields: std::collections::HashMap<String, String>,
}

/// Most form fields besides the image.
const MAX_FORM_FIELDS: usize = 32;

async fn read_form(state: &Shared, mut multipart: Multipart) -> ApiResult<Form> {
    let mut form = Form {
        image: None,
        fields: Default::default(),
    };
    while let Some(field) = multipart.next_field().await? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "image" {
            if form.image.is_some() {
                return Err(ApiError::bad_request("the form has more than one `image`"));
            }
            let bytes = field.bytes().await?;
            if bytes.len() > state.max_upload_bytes {
                return Err(upload_too_large(state));
            }
            form.image = Some(bytes);
        } else {
            if form.fields.len() >= MAX_FORM_FIELDS {
                return Err(ApiError::bad_request(format!(
                    "more than {MAX_FORM_FIELDS} form fields"
                )));
            }
            if form.fields.contains_key(&name) {
                return Err(ApiError::bad_request(format!("the form field `{name}` is given twice")));
            }
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

/// Refuses to start writable without a token.
pub fn check_write_access(token: &Option<String>, read_only: bool) -> Result<Option<String>> {
    match (token, read_only) {
        (_, true) => Ok(None),
        (Some(t), false) if !t.trim().is_empty() => Ok(Some(t.clone())),
        _ => bail!("a writable server needs a token (--token or LOOKALIKE_TOKEN); start with --read-only to serve without writes"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// (path, method) of every route this file gives the router.
    fn routed() -> BTreeSet<(String, String)> {
        let source = include_str!("mod.rs");
        let call = [".", "route("].concat();
        let mut routes = BTreeSet::new();
        for (start, _) in source.match_indices(&call) {
            // The call's text, to its closing parenthesis.
            let mut depth = 0;
            let end = source[start..]
                .char_indices()
                .find_map(|(i, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => return None,
                    }
                    (depth == 0).then_some(start + i)
                })
                .expect("a closed call");
            let text = &source[start..end];
            let path = text.split('"').nth(1).expect("a path").to_string();
            for method in ["get", "post", "put", "delete", "patch"] {
                let called = text.match_indices(&format!("{method}(")).any(|(at, _)| {
                    !text[..at]
                        .chars()
                        .next_back()
                        .is_some_and(|c| c.is_alphanumeric() || c == '_')
                });
                if called {
                    routes.insert((path.clone(), method.to_string()));
                }
            }
        }
        routes
    }

    #[test]
    fn every_route_is_declared_in_openapi_and_every_declared_one_is_routed() {
        let routed = routed();
        assert!(routed.len() >= 15, "{routed:?}");
        let document: serde_json::Value = serde_json::from_str(super::openapi_document()).unwrap();
        let declared: BTreeSet<(String, String)> = document["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, methods)| {
                methods
                    .as_object()
                    .unwrap()
                    .keys()
                    // A path item also holds what its operations share, such as `parameters`.
                    .filter(|key| ["get", "post", "put", "delete", "patch"].contains(&key.as_str()))
                    .map(move |method| (path.clone(), method.clone()))
            })
            .collect();
        assert_eq!(routed, declared);
    }

    #[test]
    fn the_schemas_of_products_and_results_come_from_their_types() {
        let document: serde_json::Value = serde_json::from_str(super::openapi_document()).unwrap();
        let schemas = &document["components"]["schemas"];
        let product = schemas["Product"]["properties"].as_object().unwrap();
        for key in ["id", "title", "image", "images", "group"] {
            assert!(product.contains_key(key), "{key}");
        }
        assert_eq!(
            schemas["Results"]["properties"]["metric"]["$ref"],
            "#/components/schemas/ScoredBy"
        );
        // Every reference points at a schema or response that exists.
        let text = document.to_string();
        for reference in text.split("\"$ref\":\"#/").skip(1) {
            let pointer = format!("/{}", reference.split('"').next().unwrap());
            assert!(
                document.pointer(&pointer).is_some(),
                "{pointer} is referenced but missing"
            );
        }
    }
}

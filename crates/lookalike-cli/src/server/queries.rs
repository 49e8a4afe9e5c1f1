//! The read endpoints: search by photo, similar, recommend, browse, stats, product images.

use axum::extract::{Multipart, Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use lookalike::shop::{Framing, SearchRequest};
use lookalike::types::{Filter, Metric, PhotoBox, Scored, StoredProduct, Words};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::{on_catalogue, read_form, Afforded, ApiResult, Shared};
use crate::answers::{corners, Explanation, Images, Product, Regions, Results};

const MAX_K: usize = 200;
const MAX_PER_PAGE: usize = 200;

pub fn product_json(p: &StoredProduct) -> Value {
    json!(Product::new(p, Images::Urls))
}

fn hits_json(hits: &[Scored], metric: Option<Metric>, predicted: Option<&[(String, f32)]>) -> Value {
    json!(Results::new(hits, metric, predicted, Images::Urls))
}

#[derive(Debug, Default, Deserialize)]
pub struct QueryParams {
    k: Option<String>,
    category: Option<String>,
    min_price: Option<String>,
    max_price: Option<String>,
    /// `all`: every product of a group, not just the best one.
    variants: Option<String>,
    /// Variety over relevance in [0, 1] (maximal marginal relevance).
    diversity: Option<String>,
    /// Words to find in titles, categories and descriptions.
    q: Option<String>,
    /// `true`: each result says why it matched.
    explain: Option<String>,
}

pub fn parse_number<T: std::str::FromStr>(name: &str, value: &Option<String>) -> ApiResult<Option<T>> {
    match value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("{name} must be a number, got {v:?}"))),
    }
}

impl QueryParams {
    fn diversity(&self) -> ApiResult<f32> {
        let diversity = parse_number::<f32>("diversity", &self.diversity)?.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&diversity) {
            return Err(ApiError::bad_request("diversity must be between 0 and 1"));
        }
        Ok(diversity)
    }

    /// The words of `q`, if it has any text.
    fn words(&self) -> ApiResult<Option<Words>> {
        match self.q.as_deref().filter(|q| !q.trim().is_empty()) {
            None => Ok(None),
            Some(q) => Words::parse(q)
                .map(Some)
                .map_err(|e| ApiError::bad_request(format!("q: {e}"))),
        }
    }

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
        let filter = Filter::new(self.category.clone(), min_price, max_price)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let one_per_group = match self.variants.as_deref().map(str::trim) {
            None | Some("" | "best") => true,
            Some("all") => false,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "variants is best (one product per group) or all, got {other:?}"
                )))
            }
        };
        Ok(Filter {
            one_per_group,
            ..filter
        })
    }
}

pub async fn stats(State(state): State<Shared>) -> ApiResult<Json<Value>> {
    let (products, index_bytes) = on_catalogue(&state, |c| Ok((c.len()?, c.index_bytes()?))).await?;
    Ok(Json(json!({
        "products": products,
        "model": state.manifest.model,
        "weights_sha256": state.manifest.weights_sha256,
        "dimension": state.manifest.dimension,
        "preprocessing": state.manifest.preprocessing,
        "index_bytes": index_bytes,
        "classifier": state.shop.classifier().map(|h| json!({ "classes": h.classes })),
    })))
}

pub async fn metrics(State(state): State<Shared>) -> Response {
    let products = on_catalogue(&state, |c| c.len()).await.ok();
    let text = state
        .metrics
        .render(state.admission.images_in_flight(), state.bodies.used(), products);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `POST /v1/search`: a photo (field `image`), words (`q`) or both, as a multipart form.
pub async fn search(State(state): State<Shared>, multipart: Multipart) -> ApiResult<Json<Value>> {
    // Refused before the form is even parsed when the pipeline is full.
    let ticket = state.admit_image().await?;
    let form = read_form(&state, multipart).await?;
    let field = |name: &str| form.fields.get(name).cloned();
    let params = QueryParams {
        k: field("k"),
        category: field("category"),
        min_price: field("min_price"),
        max_price: field("max_price"),
        variants: field("variants"),
        diversity: field("diversity"),
        q: field("q"),
        explain: None,
    };
    let (k, filter, diversity, words) = (params.k()?, params.filter()?, params.diversity()?, params.words()?);
    let hybrid = flag("hybrid", field("hybrid"))?;
    let (whole, regions) = (flag("whole", field("whole"))?, flag("regions", field("regions"))?);
    let explain = flag("explain", field("explain"))?;
    if explain && form.image.is_none() {
        return Err(ApiError::bad_request(
            "explain=true says why a photo matched: send the field `image` (words alone have no heat map)",
        ));
    }
    if explain && regions {
        return Err(ApiError::bad_request(
            "explain=true explains one search: leave out regions, or ask POST /v1/explain with a region's box",
        ));
    }
    let coverage = parse_number::<f32>("coverage", &field("coverage"))?.unwrap_or(0.9);
    if !(0.0..=1.0).contains(&coverage) {
        return Err(ApiError::bad_request("coverage must be between 0 and 1"));
    }
    if hybrid && state.shop.classifier().is_none() {
        return Err(ApiError::bad_request(
            "hybrid search needs a classifier head; start the server with --classifier",
        ));
    }
    let framing = framing(field("box"), whole)?;
    if (framing != Framing::FindProduct || regions) && form.image.is_none() {
        return Err(ApiError::bad_request(
            "box, whole and regions say which part of the photo is searched: send the field `image` too",
        ));
    }
    if regions && (framing != Framing::FindProduct || hybrid) {
        return Err(ApiError::bad_request(
            "regions=true finds every product in the photo: leave out box, whole and hybrid",
        ));
    }
    let image = match (form.image, &words) {
        (None, None) => {
            return Err(ApiError::bad_request(
                "give a photo (the multipart field `image`), words (the field `q`) or both",
            ))
        }
        (None, Some(_)) if hybrid => {
            return Err(ApiError::bad_request(
                "hybrid search classifies a photo: send the field `image`",
            ))
        }
        (image, _) => image,
    };
    if let (true, Some(image)) = (regions, &image) {
        let (found, searched_whole_when_busy) = state.find_products(image.clone(), ticket).await?;
        let answers = on_catalogue(&state, {
            let found = found.clone();
            move |c| {
                let request = SearchRequest {
                    photo: None,
                    whole_photo: None,
                    part_cells: None,
                    words: words.as_ref(),
                    k,
                    metric: Metric::Cosine,
                    filter,
                    diversity,
                    likely_categories: None,
                };
                c.search_regions(&found, &request)
            }
        })
        .await?;
        let mut regions = Regions::new(&found, &answers, Images::Urls);
        regions.searched_whole_when_busy = searched_whole_when_busy;
        return Ok(Json(json!(regions)));
    }
    let (located, searched_whole_when_busy) = match image {
        None => {
            drop(ticket); // words alone take no place in the image pipeline
            (None, false)
        }
        // Explaining needs the searched part's feature map: the network gives it with the
        // embedding, run here instead of through the batcher (the place in the pipeline is held).
        Some(image) if explain => {
            let Afforded {
                framing,
                place,
                searched_whole_when_busy,
            } = state.affordable(framing).await;
            let photo = state.decode(image).await?;
            let located = on_catalogue(&state, move |c| c.locate(&photo, &framing, true)).await?;
            drop((ticket, place));
            (Some(located), searched_whole_when_busy)
        }
        Some(image) => {
            let (located, searched_whole_when_busy) = state.locate(image, framing, ticket).await?;
            (Some(located), searched_whole_when_busy)
        }
    };
    let searched = located.as_ref().and_then(|l| l.region);
    let (answer, explanations) = on_catalogue(&state, move |c| {
        let answer = c.search(&SearchRequest {
            photo: located.as_ref().map(|l| &l.embedding),
            whole_photo: located.as_ref().and_then(|l| l.whole_photo.as_ref()),
            part_cells: located.as_ref().and_then(|l| l.cells.as_ref()),
            words: words.as_ref(),
            k,
            metric: Metric::Cosine,
            filter,
            diversity,
            likely_categories: hybrid.then_some(coverage),
        })?;
        let explanations = match located.as_ref().and_then(|l| l.feature_map.as_ref()) {
            Some(query) => c.explain(query, &answer.hits)?,
            None => Vec::new(),
        };
        Ok((answer, explanations))
    })
    .await?;
    let mut results = Results::new(
        &answer.hits,
        answer.scored_by,
        answer.likely_categories.as_deref(),
        Images::Urls,
    )
    .searched(searched.as_ref())
    .explained(&answer.hits, &explanations, Images::Urls);
    results.searched_whole_when_busy = searched_whole_when_busy;
    Ok(Json(json!(results)))
}

/// `POST /v1/explain`: how the photo (field `image`; `box` or `whole=true` as for a search)
/// matches product `id`.
pub async fn explain(State(state): State<Shared>, multipart: Multipart) -> ApiResult<Json<Value>> {
    let ticket = state.admit_image().await?;
    let form = read_form(&state, multipart).await?;
    let field = |name: &str| form.fields.get(name).cloned();
    let id = field("id").ok_or_else(|| ApiError::bad_request("name the product: the field `id`"))?;
    let framing = framing(field("box"), flag("whole", field("whole"))?)?;
    let image = form
        .image
        .ok_or_else(|| ApiError::bad_request("send the photo to explain: the field `image`"))?;
    let Afforded {
        framing,
        place,
        searched_whole_when_busy,
    } = state.affordable(framing).await;
    let photo = state.decode(image).await?;
    let (product, searched, explained) = on_catalogue(&state, move |c| {
        let (searched, explained) = c.explain_product(&photo, &framing, &id)?;
        Ok((c.product(&id)?, searched, explained))
    })
    .await?;
    drop((ticket, place));
    let mut answer = Explanation::new(&explained, &product, Images::Urls);
    answer.searched_box = searched.as_ref().map(corners);
    answer.searched_whole_when_busy = searched_whole_when_busy;
    Ok(Json(json!(answer)))
}

/// The part of the photo the fields `box` and `whole` ask for.
fn framing(region: Option<String>, whole: bool) -> ApiResult<Framing> {
    let region = region.map(|text| PhotoBox::parse(&text)).transpose()?;
    Ok(match (region, whole) {
        (Some(_), true) => return Err(ApiError::bad_request("give box or whole=true, not both")),
        (Some(region), false) => Framing::Box(region),
        (None, true) => Framing::Whole,
        (None, false) => Framing::FindProduct,
    })
}

/// A yes/no form field (absent: no).
fn flag(name: &str, value: Option<String>) -> ApiResult<bool> {
    match value.as_deref().map(str::trim) {
        None | Some("" | "false" | "0" | "no") => Ok(false),
        Some("true" | "1" | "yes" | "on") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "{name} must be true or false, got {other:?}"
        ))),
    }
}

/// `GET /v1/search?q=…`: products by words alone, for a shop's search box.
pub async fn search_words(State(state): State<Shared>, Query(params): Query<QueryParams>) -> ApiResult<Json<Value>> {
    let (k, filter, diversity) = (params.k()?, params.filter()?, params.diversity()?);
    let words = params
        .words()?
        .ok_or_else(|| ApiError::bad_request("q must hold words to search for"))?;
    let answer = on_catalogue(&state, move |c| {
        c.search(&SearchRequest {
            photo: None,
            whole_photo: None,
            part_cells: None,
            words: Some(&words),
            k,
            metric: Metric::Cosine,
            filter,
            diversity,
            likely_categories: None,
        })
    })
    .await?;
    Ok(Json(hits_json(&answer.hits, answer.scored_by, None)))
}

pub async fn similar(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(params): Query<QueryParams>,
) -> ApiResult<Json<Value>> {
    let (k, filter, diversity) = (params.k()?, params.filter()?, params.diversity()?);
    let explain = flag("explain", params.explain.clone())?;
    // Explaining runs the network: a place in the image pipeline first.
    let ticket = match explain {
        true => Some(state.admit_image().await?),
        false => None,
    };
    let (hits, explanations) = on_catalogue(&state, move |c| {
        let hits = c.similar(&id, k, Metric::Cosine, &filter, diversity)?;
        let explanations = if explain {
            c.explain_similar(&id, &hits)?
        } else {
            Vec::new()
        };
        Ok((hits, explanations))
    })
    .await?;
    drop(ticket);
    let results = Results::new(&hits, Some(Metric::Cosine), None, Images::Urls);
    Ok(Json(json!(results.explained(&hits, &explanations, Images::Urls))))
}

#[derive(Deserialize)]
pub struct RecommendRequest {
    #[serde(default)]
    positive: Vec<String>,
    #[serde(default)]
    negative: Vec<String>,
    k: Option<usize>,
    category: Option<String>,
    min_price: Option<f64>,
    max_price: Option<f64>,
}

/// Most products one recommendation may name.
const MAX_RECOMMEND_IDS: usize = 100;

/// "More like these, less like those" ([`lookalike::recommend::Recommender::recommend`]).
pub async fn recommend(
    State(state): State<Shared>,
    body: Result<Json<RecommendRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if req.positive.is_empty() {
        return Err(ApiError::bad_request("`positive` must name at least one product id"));
    }
    if req.positive.len() + req.negative.len() > MAX_RECOMMEND_IDS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_RECOMMEND_IDS} product ids in `positive` and `negative` together"
        )));
    }
    let params = QueryParams {
        k: req.k.map(|k| k.to_string()),
        category: req.category.clone(),
        min_price: req.min_price.map(|v| v.to_string()),
        max_price: req.max_price.map(|v| v.to_string()),
        ..QueryParams::default()
    };
    let (k, filter) = (params.k()?, params.filter()?);
    let hits = on_catalogue(&state, move |c| c.recommend(&req.positive, &req.negative, k, &filter)).await?;
    Ok(Json(hits_json(&hits, Some(Metric::Cosine), None)))
}

#[derive(Deserialize)]
pub struct ListParams {
    category: Option<String>,
    page: Option<String>,
    per_page: Option<String>,
}

pub async fn list_products(State(state): State<Shared>, Query(params): Query<ListParams>) -> ApiResult<Json<Value>> {
    let page = parse_number::<usize>("page", &params.page)?.unwrap_or(1);
    let per_page = parse_number::<usize>("per_page", &params.per_page)?.unwrap_or(24);
    if page == 0 || per_page == 0 || per_page > MAX_PER_PAGE {
        return Err(ApiError::bad_request(format!(
            "page starts at 1; per_page is between 1 and {MAX_PER_PAGE}"
        )));
    }
    // Every store counts offsets in a signed 64-bit integer.
    let offset = (page - 1)
        .checked_mul(per_page)
        .filter(|&offset| offset <= i64::MAX as usize)
        .ok_or_else(|| ApiError::bad_request(format!("page {page} is beyond any catalogue")))?;
    let category = params.category.filter(|c| !c.is_empty());
    if let Some(category) = &category {
        lookalike::types::check_text("category", category, lookalike::types::MAX_TEXT_BYTES)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    let listed = on_catalogue(&state, move |c| c.page(category.as_deref(), offset, per_page)).await?;
    let items: Vec<Value> = listed.items.iter().map(product_json).collect();
    Ok(Json(json!({
        "total": listed.total,
        "page": page,
        "per_page": per_page,
        "categories": listed.categories,
        "items": items
    })))
}

/// Product `id`, or 404.
pub async fn find_product(state: &Shared, id: &str) -> ApiResult<StoredProduct> {
    let id = id.to_string();
    on_catalogue(state, move |c| c.product(&id)).await
}

pub async fn get_product(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let p = find_product(&state, &id).await?;
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

/// The product's main image.
pub async fn product_image(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult<Response> {
    serve_image(&state, id, 0).await
}

/// The product's image `n` (0: the main image, then the further views in order).
pub async fn product_view(State(state): State<Shared>, Path((id, n)): Path<(String, usize)>) -> ApiResult<Response> {
    serve_image(&state, id, n).await
}

/// Serves only a file recorded for the product; no path from the request reaches the disk.
async fn serve_image(state: &Shared, id: String, n: usize) -> ApiResult<Response> {
    let product = find_product(state, &id).await?;
    let Some(path) = product.image_paths().nth(n).map(str::to_string) else {
        return Err(ApiError::not_found(format!(
            "product {id:?} has {} images (numbered from 0)",
            1 + product.more_images.len()
        )));
    };
    let gone = || ApiError::not_found(format!("image {n} of product {id:?} is no longer on disk"));
    let bytes = tokio::task::spawn_blocking(move || {
        lookalike::image::read_image_file(std::path::Path::new(&path)).map(|b| (b, path))
    })
    .await
    .map_err(ApiError::internal)?;
    let (bytes, path) = bytes.map_err(|_| gone())?;
    Ok((
        [
            (header::CONTENT_TYPE, content_type_of(&path)),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        bytes,
    )
        .into_response())
}

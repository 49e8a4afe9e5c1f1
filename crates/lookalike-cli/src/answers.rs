//! The one shape of a product and of search results, for `--json` and the API alike: the same
//! keys, image paths on the command line and URLs over HTTP. `/openapi.json` takes its schemas
//! of these from the types themselves ([`Schemas`]).

use lookalike::explain;
use lookalike::shop::{Answer, FoundRegion};
use lookalike::types::{Metric, PhotoBox, Scored, StoredProduct};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::Serialize;
use utoipa::ToSchema;

/// How a product's photos are named.
#[derive(Clone, Copy)]
pub enum Images {
    /// Their files, as the catalogue recorded them.
    Paths,
    /// Where the server serves them.
    Urls,
}

impl Images {
    /// Photo `n` of `product` (0: the main one).
    fn of(self, product: &StoredProduct, n: usize) -> String {
        match self {
            Self::Paths => product.image_paths().nth(n).unwrap_or_default().to_string(),
            Self::Urls => {
                let id = utf8_percent_encode(&product.id, NON_ALPHANUMERIC);
                match n {
                    0 => format!("/v1/products/{id}/image"),
                    n => format!("/v1/products/{id}/images/{n}"),
                }
            }
        }
    }
}

/// A product of the catalogue.
#[derive(Serialize, ToSchema)]
pub struct Product {
    pub id: String,
    pub title: Option<String>,
    pub price: Option<f64>,
    pub category: Option<String>,
    pub description: Option<String>,
    /// The product's page in the shop.
    pub url: Option<String>,
    /// The variant family: products of one group show as one result unless all variants are asked for.
    pub group: Option<String>,
    /// The main photo: its file on the command line, its URL over HTTP.
    pub image: String,
    /// The same as `image`, over HTTP only: the key API clients had before `image`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
    /// The product's photos, the main one first.
    pub images: Vec<String>,
}

impl Product {
    pub fn new(product: &StoredProduct, images: Images) -> Self {
        let image = images.of(product, 0);
        Self {
            id: product.id.clone(),
            title: product.info.title.clone(),
            price: product.info.price,
            category: product.info.category.clone(),
            description: product.info.description.clone(),
            url: product.info.url.clone(),
            group: product.info.group.clone(),
            image_url: matches!(images, Images::Urls).then(|| image.clone()),
            image,
            images: (0..=product.more_images.len()).map(|n| images.of(product, n)).collect(),
        }
    }
}

/// A product found, with its place and score.
#[derive(Serialize, ToSchema)]
pub struct Hit {
    /// 1 for the best.
    pub rank: usize,
    #[serde(flatten)]
    pub product: Product,
    /// As `metric` says: a cosine similarity, a distance, or relevance to words.
    pub score: f32,
    /// The product's photo that matched best.
    pub matched_image: String,
    /// Why it matched (searches and `similar` asked to explain).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<Explanation>,
}

/// How much of a match each part of a photo carries.
#[derive(Serialize, ToSchema)]
pub struct Heatmap {
    pub width: usize,
    pub height: usize,
    /// `width × height` non-negative numbers, row-major: cell (row, column) spans `1/width` of the
    /// photo's width and `1/height` of its height (after EXIF orientation). They add up to the
    /// share of the backbone's cosine that the photo's pixels carry.
    pub values: Vec<f32>,
}

/// Why a photo matched a product's photo: exact for the backbone's average pooling (each
/// feature-map cell's share of the cosine of the pooled vectors). With a projection head or a
/// colour signature the shares are of the backbone's cosine, which the head or colour then reads.
#[derive(Serialize, ToSchema)]
pub struct Explanation {
    /// Over the query photo.
    pub query_heatmap: Heatmap,
    /// Over the matched photo.
    pub match_heatmap: Heatmap,
    /// The part of the query photo that carried the match, `[x0, y0, x1, y1]` in its pixels.
    pub query_box: [f32; 4],
    /// The part of the matched photo that carried the match, in its pixels.
    pub match_box: [f32; 4],
    /// The product's photo that was matched: its file on the command line, its URL over HTTP.
    pub matched_image: String,
    /// The cosine of the two photos' pooled backbone vectors: what the heat maps' values add up to
    /// where nothing falls outside a photo.
    pub backbone_cosine: f32,
    /// `POST /v1/explain` only: the part of the query photo explained (none: all of it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub searched_box: Option<[f32; 4]>,
    /// Present, and true, when the server was too busy to look for the product in the photo and
    /// searched it whole (`--photos-in-parts`, `--queue-wait-ms`); asking again later may look.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub searched_whole_when_busy: bool,
}

impl Explanation {
    pub fn new(explained: &explain::Explanation, product: &StoredProduct, images: Images) -> Self {
        let heatmap = |map: &explain::Heatmap| Heatmap {
            width: map.width,
            height: map.height,
            values: map.values.clone(),
        };
        Self {
            query_heatmap: heatmap(&explained.query_heatmap),
            match_heatmap: heatmap(&explained.match_heatmap),
            query_box: corners(&explained.query_box),
            match_box: corners(&explained.match_box),
            matched_image: images.of(product, explained.matched_image),
            backbone_cosine: explained.backbone_cosine,
            searched_box: None,
            searched_whole_when_busy: false,
        }
    }
}

/// What the scores of results mean.
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScoredBy {
    /// Cosine similarity in [-1, 1], higher is closer.
    Cosine,
    /// Euclidean distance, lower is closer.
    Euclidean,
    /// Relevance to words, alone or fused with a photo's similarity; higher is better.
    Relevance,
}

impl ScoredBy {
    /// `None`: relevance.
    pub fn of(metric: Option<Metric>) -> Self {
        match metric {
            Some(Metric::Cosine) => Self::Cosine,
            Some(Metric::Euclidean) => Self::Euclidean,
            None => Self::Relevance,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Cosine => "cosine",
            Self::Euclidean => "euclidean",
            Self::Relevance => "relevance",
        }
    }
}

/// A category a hybrid search kept to, with the classifier's probability.
#[derive(Serialize, ToSchema)]
pub struct Likely {
    pub category: String,
    pub probability: f32,
}

/// The answer to a search, `similar` or `recommend`.
#[derive(Serialize, ToSchema)]
pub struct Results {
    pub metric: ScoredBy,
    /// Best first: by score, but a photo that matches no product closely (cosine under 0.70) has
    /// its products in their categories' vote order, each raised by its kind's closest products.
    pub results: Vec<Hit>,
    /// Hybrid searches only: the categories ranked within, most likely first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted: Option<Vec<Likely>>,
    /// Photo searches of a part of the photo only (a box asked for, or the product found in a
    /// busy photo): that part, `[x0, y0, x1, y1]` in the photo's pixels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub searched_box: Option<[f32; 4]>,
    /// Present, and true, when the server was too busy to look for the product in the photo and
    /// searched it whole (`--photos-in-parts`, `--queue-wait-ms`); asking again later may look.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub searched_whole_when_busy: bool,
}

/// A product found in a photo, with the products that look like it.
#[derive(Serialize, ToSchema)]
pub struct Region {
    /// Where it is: `[x0, y0, x1, y1]` in the photo's pixels.
    #[serde(rename = "box")]
    pub region: [f32; 4],
    /// The cosine of its best catalogue match.
    pub score: f32,
    pub results: Vec<Hit>,
}

/// "Shop the look": every product found in the photo, best first.
#[derive(Serialize, ToSchema)]
pub struct Regions {
    pub metric: ScoredBy,
    pub regions: Vec<Region>,
    /// Present, and true, when the server was too busy to look for products in the photo and
    /// answered the whole photo as its one region (`--photos-in-parts`, `--queue-wait-ms`);
    /// asking again later may look.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub searched_whole_when_busy: bool,
}

impl Regions {
    pub fn new(found: &[FoundRegion], answers: &[Answer], images: Images) -> Self {
        let metric = answers.first().and_then(|a| a.scored_by).or(Some(Metric::Cosine));
        Self {
            metric: ScoredBy::of(metric),
            regions: found
                .iter()
                .zip(answers)
                .map(|(found, answer)| Region {
                    region: corners(&found.region),
                    score: found.score,
                    results: Results::new(&answer.hits, answer.scored_by, None, images).results,
                })
                .collect(),
            searched_whole_when_busy: false,
        }
    }
}

/// A box as `[x0, y0, x1, y1]`.
pub fn corners(region: &PhotoBox) -> [f32; 4] {
    [region.x0, region.y0, region.x1, region.y1]
}

impl Results {
    pub fn new(hits: &[Scored], metric: Option<Metric>, predicted: Option<&[(String, f32)]>, images: Images) -> Self {
        Self {
            metric: ScoredBy::of(metric),
            results: hits
                .iter()
                .enumerate()
                .map(|(rank, hit)| Hit {
                    rank: rank + 1,
                    product: Product::new(&hit.product, images),
                    score: hit.score,
                    matched_image: images.of(&hit.product, hit.image),
                    explanation: None,
                })
                .collect(),
            predicted: predicted.map(|likely| {
                likely
                    .iter()
                    .map(|(category, probability)| Likely {
                        category: category.clone(),
                        probability: *probability,
                    })
                    .collect()
            }),
            searched_box: None,
            searched_whole_when_busy: false,
        }
    }

    /// The same, each hit with its explanation (`explanations` in the order of `hits`).
    pub fn explained(mut self, hits: &[Scored], explanations: &[Option<explain::Explanation>], images: Images) -> Self {
        for ((hit, scored), explained) in self.results.iter_mut().zip(hits).zip(explanations) {
            hit.explanation = explained.as_ref().map(|e| Explanation::new(e, &scored.product, images));
        }
        self
    }

    /// The same, saying which part of the photo was searched.
    pub fn searched(mut self, region: Option<&PhotoBox>) -> Self {
        self.searched_box = region.map(corners);
        self
    }
}

/// The schemas `/openapi.json` takes from the types above.
#[derive(utoipa::OpenApi)]
#[openapi(components(schemas(Product, Hit, ScoredBy, Likely, Results, Region, Regions, Heatmap, Explanation)))]
pub struct Schemas;

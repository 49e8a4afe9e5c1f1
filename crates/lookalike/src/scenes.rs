//! Shoppers' photos made from photos a shop has, for measuring search on them: a product photo
//! held out of the catalogue, its white studio background removed, pasted onto a real photo of
//! a busy scene at a random size (a third to a half of the scene's height) and place, alone or
//! beside another product; seeded, so a run can be repeated exactly. Each scene is searched as a
//! whole, as search does by default (finding the product: [`crate::locate`]) and inside the
//! pasted product's true box; two-product scenes also as "shop the look" does. Its own product's
//! rank is read with that photo left out of the gallery (as `eval products` does), and left out
//! of the best matches that decide where to search.
//!
//! How it differs from real shoppers' photos: the product is lit and sharp as in the studio, its
//! edges are cut cleanly, nothing covers it, and the scene around it was never its setting.
//!
//! [`kind_precision`] measures the other half of a shopper's search: a photo of a kind of product
//! the shop may not sell (a folder of photos per kind), searched through the front door, whole and
//! by default, and judged by the category of what it finds.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Result};
use image::{Rgb, RgbImage};
use serde::Serialize;

use crate::catalogue::{image_files, labelled_images};
use crate::explain::{explain, feature_maps, most_alike_pair, FeatureMap};
use crate::image::cutout::{cut_out, paste, studio_backdrop};
use crate::image::{load_image, Photo};
use crate::index::local_cells::{reranked_locally, QueryCells, LOCAL_RERANK_DEPTH};
use crate::learn::eval::{held_out_order_voted, held_out_rank_voted, Aggregation};
use crate::learn::kinds::ProductKinds;
use crate::linalg::unit;
use crate::locate::{self, pick, search_windows, whole_is_enough, Candidate};
use crate::model::Embedder;
use crate::shop::{Framing, SearchRequest, Shop};
use crate::store::{check_same_model, HeadRole, Store};
use crate::types::{category_key, Metric, PhotoBox, StoredProduct};

/// How many scenes, and how they are made.
#[derive(Debug, Clone)]
pub struct SceneOptions {
    /// Scenes with one product.
    pub singles: usize,
    /// Scenes with two products, one in each half.
    pub pairs: usize,
    pub seed: u64,
    /// The pasted product's height as a share of the scene's, drawn from this range.
    pub height_share: (f32, f32),
}

impl Default for SceneOptions {
    fn default() -> Self {
        Self {
            singles: 200,
            pairs: 100,
            seed: 7,
            height_share: (1.0 / 3.0, 0.5),
        }
    }
}

/// Product recall for one way of searching the scenes.
#[derive(Debug, Clone, Serialize)]
pub struct SceneRecall {
    pub search: String,
    pub queries: usize,
    pub recall_at_1: f64,
    pub recall_at_5: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SceneReport {
    /// Scenes of one product: the whole photo, the default search, the product's true box, the part
    /// the default search picked before it is narrowed, the true box with the scene around the
    /// product made white (a perfect cut-out: what the scene's backdrop costs), and, where the
    /// catalogue keeps its photos' cells, the default search and the true box without their
    /// local re-ranking. Boxes are ranked as search ranks `--box`.
    pub singles: Vec<SceneRecall>,
    /// Every held-out photo as it is (a packshot): searched whole, and by default.
    pub clean: Vec<SceneRecall>,
    /// Share of one-product scenes the default search searched whole.
    pub singles_searched_whole: f64,
    pub pairs: usize,
    /// Share of two-product scenes with both products among the whole photo's 10 best.
    pub pairs_both_in_whole_top_10: f64,
    /// Share of two-product scenes with each product among its own true box's 5 best.
    pub pairs_both_in_own_box_top_5: f64,
    /// Share of two-product scenes with each product among the 5 best of a region "shop the
    /// look" found around its centre.
    pub pairs_both_in_found_regions_top_5: f64,
    /// The same without each region's local re-ranking, where the catalogue keeps its photos'
    /// cells (`None` where it does not: search then has none to re-rank with).
    pub pairs_both_in_found_regions_top_5_without_local_reranking: Option<f64>,
    /// Whether the catalogue's learnt kinds ranked the scenes: they were learnt from the held-out
    /// photos too, which flatters them.
    pub learnt_kinds: bool,
}

/// A product photo held out of the gallery: product index, photo index, file.
struct HeldOut {
    product: usize,
    view: usize,
    path: PathBuf,
}

/// A scene's windows, and its whole and its windows' unit vectors and feature maps (the whole first).
type ScenePartsEmbedded = (Vec<PhotoBox>, Vec<Vec<f32>>, Vec<FeatureMap>);

/// What every measurement over scenes starts from.
struct Setup {
    products: Vec<StoredProduct>,
    /// Every product's photos' vectors, as unit vectors.
    gallery: Vec<Vec<Vec<f32>>>,
    held_out: Vec<HeldOut>,
    backgrounds: Vec<PathBuf>,
}

impl Setup {
    fn new(store: &dyn Store, embedder: &Embedder, backgrounds: &Path) -> Result<Self> {
        if let Some(manifest) = store.manifest()? {
            check_same_model(&manifest, &embedder.manifest())?;
        }
        let products = store.products()?;
        let gallery = unit_gallery(&products);
        let held_out = held_out_photos(&products);
        ensure!(
            !held_out.is_empty(),
            "the catalogue has no product of two photos or more to hold one out of"
        );
        let backgrounds = image_files(backgrounds)?;
        if backgrounds.is_empty() {
            bail!("no background photos found");
        }
        Ok(Self {
            products,
            gallery,
            held_out,
            backgrounds,
        })
    }
}

/// A scene of one product: a held-out photo and a background drawn, the product pasted on it.
struct SingleScene<'a> {
    scene: Photo,
    photo: &'a HeldOut,
    /// Where the product was pasted.
    placed: PhotoBox,
    /// The product pasted at the same place on white instead: what a perfect cut-out of it
    /// from the scene would be.
    on_white: Photo,
}

/// Draws a [`SingleScene`]; the same seed draws the same scenes.
fn single_scene<'a>(
    held_out: &'a [HeldOut],
    backgrounds: &[PathBuf],
    options: &SceneOptions,
    rng: &mut fastrand::Rng,
) -> Result<SingleScene<'a>> {
    let photo = &held_out[rng.usize(..held_out.len())];
    let mut scene = load_image(&backgrounds[rng.usize(..backgrounds.len())])?;
    let product = cut_out(&load_image(&photo.path)?);
    let width = scene.width();
    let mut on_white = RgbImage::from_pixel(width, scene.height(), Rgb([255, 255, 255]));
    paste(
        &mut on_white,
        &product,
        (0, width),
        options.height_share,
        &mut rng.clone(),
    );
    let placed = paste(&mut scene, &product, (0, width), options.height_share, rng);
    Ok(SingleScene {
        scene: scene_photo(scene),
        photo,
        placed,
        on_white: scene_photo(on_white),
    })
}

/// Builds the scenes from the catalogue in `store` (products of two photos or more give the held-out
/// photos) and the photos under `backgrounds`, and measures them with `embedder`, which must be
/// the model that built the catalogue.
pub fn scene_recall(
    store: &dyn Store,
    embedder: &Embedder,
    backgrounds: &Path,
    options: &SceneOptions,
) -> Result<SceneReport> {
    let Setup {
        products,
        gallery,
        held_out,
        backgrounds,
    } = Setup::new(store, embedder, backgrounds)?;
    let categories: Vec<Option<String>> = products
        .iter()
        .map(|p| p.info.category.as_deref().map(category_key))
        .collect();
    let kinds_head = store.head(HeadRole::Kinds)?;
    let kinds = kinds_head
        .as_ref()
        .map(|head| ProductKinds::new(head, &categories, embedder.output_dimension()))
        .transpose()?;
    let mut rng = fastrand::Rng::with_seed(options.seed);
    let search = MirroredSearch::new(&gallery, embedder)?;
    // In search's order, with the categories' votes and their kinds' chances, read from the
    // part searched and the whole photo it was found in (the same vector twice for a photo
    // searched whole: their mean is its own chances).
    let rank_part = |query: &[f32], whole: &[f32], photo: &HeldOut| {
        let views = [query, whole];
        held_out_rank_voted(
            &gallery,
            &categories,
            kinds.as_ref().map(|kinds| (kinds, &views[..])),
            photo.product,
            photo.view,
            query,
            Aggregation::TopTwo,
        )
    };
    let rank = |query: &[f32], photo: &HeldOut| rank_part(query, query, photo);
    let keeps_cells = !store.hashes_with_cells()?.is_empty();
    // A part search found in `scene` (`region`), ranked as search ranks it: re-ranked by local
    // likeness where the catalogue keeps its photos' cells (and `locally`).
    let rank_found = |scene: &Photo, region: Option<PhotoBox>, views: [&[f32]; 2], photo: &HeldOut, locally: bool| {
        let (order, keys) = held_out_order_voted(
            &gallery,
            &categories,
            kinds.as_ref().map(|kinds| (kinds, &views[..])),
            photo.product,
            photo.view,
            views[0],
            Aggregation::TopTwo,
        );
        let order = if locally && keeps_cells {
            let part = feature_maps(&search.explainer, scene, &[region.as_ref()])?
                .remove(0)
                .0
                .query_cells();
            reranked_like_search(store, &products, order, &keys, &part, photo)?
        } else {
            order
        };
        Ok::<_, anyhow::Error>(
            order
                .iter()
                .position(|&p| p == photo.product)
                .expect("every product is ranked"),
        )
    };
    let (mut whole, mut found, mut boxed, mut picked, mut cut_out_boxed) = (
        Counts::default(),
        Counts::default(),
        Counts::default(),
        Counts::default(),
        Counts::default(),
    );
    let mut searched_whole = 0usize;
    let (mut not_locally, mut boxed_not_locally) = (Counts::default(), Counts::default());
    for _ in 0..options.singles {
        let SingleScene {
            scene,
            photo,
            placed,
            on_white,
        } = single_scene(&held_out, &backgrounds, options, &mut rng)?;
        let embedded = search.whole_and_windows(&scene)?;
        let vectors = &embedded.1;
        whole.add(rank(&vectors[0], photo));
        let scores = search.best_scores(vectors, &[photo]);
        // The window picked before narrowing, where search would look in one at all.
        let in_a_window = !keeps_to_the_whole(&embedded.0, &scores);
        picked.add(rank_part(
            &vectors[if in_a_window { pick(&scores) } else { 0 }],
            &vectors[0],
            photo,
        ));
        match search.part_to_search(&scene, &embedded, &scores, &[photo])? {
            Some((region, part)) => {
                found.add(rank_found(&scene, region, [&part, &vectors[0]], photo, true)?);
                not_locally.add(rank_part(&part, &vectors[0], photo));
            }
            None => {
                searched_whole += 1;
                found.add(rank(&vectors[0], photo));
                not_locally.add(rank(&vectors[0], photo));
            }
        }
        // `--box` on the product, as search ranks a box.
        let in_box = search.embed(&scene, &[Some(placed)])?.remove(0);
        boxed.add(rank_found(&scene, Some(placed), [&in_box, &in_box], photo, true)?);
        boxed_not_locally.add(rank(&in_box, photo));
        let on_white_box = search.embed(&on_white, &[Some(placed)])?.remove(0);
        cut_out_boxed.add(rank_found(
            &on_white,
            Some(placed),
            [&on_white_box, &on_white_box],
            photo,
            true,
        )?);
    }

    // Clean packshots: every held-out photo as it is, searched whole and by default.
    let (mut clean_whole, mut clean_found) = (Counts::default(), Counts::default());
    for photo in &held_out {
        let clean = scene_photo(load_image(&photo.path)?);
        let whole_vector = search.embed(&clean, &[None])?.remove(0);
        clean_whole.add(rank(&whole_vector, photo));
        // Most packshots match closely and are searched whole: their windows are not embedded.
        let part = if whole_is_enough(search.best_match(&whole_vector, &[photo]).0) {
            None
        } else {
            let embedded = search.whole_and_windows(&clean)?;
            let scores = search.best_scores(&embedded.1, &[photo]);
            search.part_to_search(&clean, &embedded, &scores, &[photo])?
        };
        clean_found.add(match part {
            Some((region, part)) => rank_found(&clean, region, [&part, &whole_vector], photo, true)?,
            None => rank(&whole_vector, photo),
        });
    }

    let (mut both_whole, mut both_boxes, mut both_regions) = (0usize, 0usize, 0usize);
    let mut both_regions_not_locally = 0usize;
    for _ in 0..options.pairs {
        let first = &held_out[rng.usize(..held_out.len())];
        let second = loop {
            let other = &held_out[rng.usize(..held_out.len())];
            if other.product != first.product || held_out.iter().all(|h| h.product == first.product) {
                break other;
            }
        };
        let mut scene = load_image(&backgrounds[rng.usize(..backgrounds.len())])?;
        let half = scene.width() / 2;
        let mut boxes = Vec::new();
        for (photo, columns) in [(first, (0, half)), (second, (half, scene.width()))] {
            let product = cut_out(&load_image(&photo.path)?);
            boxes.push(paste(&mut scene, &product, columns, options.height_share, &mut rng));
        }
        let scene = scene_photo(scene);
        let embedded = search.whole_and_windows(&scene)?;
        let vectors = &embedded.1;
        let both = [first, second];
        both_whole += usize::from(both.iter().all(|&photo| rank(&vectors[0], photo) < 10));
        let in_own_box = search.embed(&scene, &[Some(boxes[0]), Some(boxes[1])])?;
        let found_in_own_box = |i: usize, photo: &HeldOut| -> Result<bool> {
            Ok(rank_found(&scene, Some(boxes[i]), [&in_own_box[i], &in_own_box[i]], photo, true)? < 5)
        };
        both_boxes += usize::from(found_in_own_box(0, first)? && found_in_own_box(1, second)?);
        // "Shop the look" (see `Shop::regions_of`): each product among the 5 best of a region
        // found around its centre.
        let regions = search.regions(&scene, &embedded, &both)?;
        let found_in_a_region = |photo: &HeldOut, placed: PhotoBox, locally: bool| -> Result<bool> {
            let (x, y) = ((placed.x0 + placed.x1) / 2.0, (placed.y0 + placed.y1) / 2.0);
            for (r, vector) in regions
                .iter()
                .filter(|(r, _)| (r.x0..r.x1).contains(&x) && (r.y0..r.y1).contains(&y))
            {
                if rank_found(&scene, Some(*r), [vector, vector], photo, locally)? < 5 {
                    return Ok(true);
                }
            }
            Ok(false)
        };
        let both_found = |locally| -> Result<bool> {
            Ok(found_in_a_region(first, boxes[0], locally)? && found_in_a_region(second, boxes[1], locally)?)
        };
        both_regions += usize::from(both_found(true)?);
        if keeps_cells {
            both_regions_not_locally += usize::from(both_found(false)?);
        }
    }
    let share = |n: usize| n as f64 / options.pairs.max(1) as f64;
    let mut singles = vec![
        whole.recall("whole photo"),
        found.recall("default search (finds the product)"),
        boxed.recall("the product's true box"),
        picked.recall("the part picked, not narrowed (before)"),
        cut_out_boxed.recall("the true box, the scene around it white"),
    ];
    if keeps_cells {
        singles.push(not_locally.recall("default search without local re-ranking"));
        singles.push(boxed_not_locally.recall("the true box without local re-ranking"));
    }
    Ok(SceneReport {
        singles,
        clean: vec![
            clean_whole.recall("clean held-out photos, whole"),
            clean_found.recall("clean held-out photos, default search"),
        ],
        singles_searched_whole: searched_whole as f64 / options.singles.max(1) as f64,
        pairs: options.pairs,
        pairs_both_in_whole_top_10: share(both_whole),
        pairs_both_in_own_box_top_5: share(both_boxes),
        pairs_both_in_found_regions_top_5: share(both_regions),
        pairs_both_in_found_regions_top_5_without_local_reranking: keeps_cells.then(|| share(both_regions_not_locally)),
        learnt_kinds: kinds.is_some(),
    })
}

/// Search's default decisions (`Shop::locate`: where in a photo to search; `Shop::regions_of`'s
/// steps) over a catalogue's stored vectors, with some of its photos left out of every best
/// match, as `eval scenes` needs them: the same rules from [`crate::locate`], the same product
/// score ([`Metric::product_score`]), and `tests/shop.rs` checks that they decide as search does.
struct MirroredSearch<'a> {
    /// Every product's photos' vectors, as unit vectors.
    gallery: &'a [Vec<Vec<f32>>],
    embedder: &'a Embedder,
    explainer: Embedder,
}

impl<'a> MirroredSearch<'a> {
    fn new(gallery: &'a [Vec<Vec<f32>>], embedder: &'a Embedder) -> Result<Self> {
        Ok(Self {
            gallery,
            embedder,
            explainer: embedder.with_feature_map()?,
        })
    }

    /// Every part of `scene` in one batch, as unit vectors (`None`: the whole scene).
    fn embed(&self, scene: &Photo, parts: &[Option<PhotoBox>]) -> Result<Vec<Vec<f32>>> {
        let parts: Vec<Option<&PhotoBox>> = parts.iter().map(Option::as_ref).collect();
        let out = self
            .embedder
            .run(&scene.batch(&self.embedder.preprocessing, &parts)?, parts.len())?;
        Ok((0..parts.len()).map(|i| unit(out.feature(i))).collect())
    }

    /// The best catalogue match of `query` by cosine, the `left_out` photos left out, as
    /// search's best match is: the product of the best score, with its score, product and best
    /// photo.
    fn best_match(&self, query: &[f32], left_out: &[&HeldOut]) -> (f32, usize, usize) {
        let mut best = (f32::MIN, 0, 0);
        for (p, views) in self.gallery.iter().enumerate() {
            let scored: Vec<(f32, usize)> = views
                .iter()
                .enumerate()
                .filter(|&(v, _)| !left_out.iter().any(|h| (h.product, h.view) == (p, v)))
                .map(|(v, view)| (view.iter().zip(query).map(|(a, b)| a * b).sum::<f32>(), v))
                .collect();
            if scored.is_empty() {
                continue;
            }
            let (score, view) = Metric::Cosine.product_score(scored);
            if score > best.0 {
                best = (score, p, view);
            }
        }
        best
    }

    /// The whole scene and its windows, embedded in one batch, with their feature maps.
    fn whole_and_windows(&self, scene: &Photo) -> Result<ScenePartsEmbedded> {
        let windows = search_windows(scene.width, scene.height);
        let parts: Vec<Option<&PhotoBox>> = std::iter::once(None).chain(windows.iter().map(Some)).collect();
        let (maps, vectors) = feature_maps(&self.explainer, scene, &parts)?
            .into_iter()
            .map(|(map, embedding)| (map, unit(&embedding.features)))
            .unzip();
        Ok((windows, vectors, maps))
    }

    /// A part of `scene` (its feature map, its vector) narrowed as `Shop::narrow_all` does: the
    /// narrowed box and its vector (`None` and the part's own vector when nothing narrows it).
    fn narrow(
        &self,
        scene: &Photo,
        map: &FeatureMap,
        vector: &[f32],
        left_out: &[&HeldOut],
    ) -> Result<(Option<PhotoBox>, Vec<f32>)> {
        let (_, product, view) = self.best_match(vector, left_out);
        let heat = map.heatmap(&map.shares(&self.gallery[product][view]));
        Ok(match locate::narrowed(&heat, scene.width, scene.height) {
            Some(region) => (Some(region), self.embed(scene, &[Some(region)])?.remove(0)),
            None => (None, vector.to_vec()),
        })
    }

    /// As `Shop::placed_best`: `region` (embedded as `vector`) or it moved a little, whichever's
    /// best match scores highest.
    fn placed_best(
        &self,
        scene: &Photo,
        region: PhotoBox,
        vector: Vec<f32>,
        left_out: &[&HeldOut],
    ) -> Result<(PhotoBox, Vec<f32>)> {
        let moved = locate::shifted(&region, scene.width, scene.height);
        let parts: Vec<Option<PhotoBox>> = moved.iter().copied().map(Some).collect();
        let mut placed = vec![(region, vector)];
        placed.extend(moved.into_iter().zip(self.embed(scene, &parts)?));
        let scores: Vec<f32> = placed.iter().map(|(_, v)| self.best_match(v, left_out).0).collect();
        Ok(placed.swap_remove(pick(&scores)))
    }

    /// The best-match scores of `vectors` ([`Self::best_match`]).
    fn best_scores(&self, vectors: &[Vec<f32>], left_out: &[&HeldOut]) -> Vec<f32> {
        vectors.iter().map(|v| self.best_match(v, left_out).0).collect()
    }

    /// As `Shop::find_part` given the whole scene and its windows embedded, and their best-match
    /// `scores` ([`Self::best_scores`]): `None` when the whole scene is searched (it matches
    /// closely, has no windows, or no part beats it), else the part searched (its box, `None` for the whole scene narrowed to nothing) and its vector.
    /// The strongest parts are narrowed, the one matching best kept and searched where it
    /// matches best, moved a little or not.
    fn part_to_search(
        &self,
        scene: &Photo,
        (windows, vectors, maps): &ScenePartsEmbedded,
        scores: &[f32],
        left_out: &[&HeldOut],
    ) -> Result<Option<(Option<PhotoBox>, Vec<f32>)>> {
        if keeps_to_the_whole(windows, scores) {
            return Ok(None);
        }
        let mut narrowed = Vec::new();
        for i in locate::strongest(scores, locate::NARROWED_CANDIDATES) {
            let (region, vector) = self.narrow(scene, &maps[i], &vectors[i], left_out)?;
            narrowed.push((vector, region.or(i.checked_sub(1).map(|w| windows[w]))));
        }
        let narrowed_scores: Vec<f32> = narrowed.iter().map(|(v, _)| self.best_match(v, left_out).0).collect();
        let picked = pick(&narrowed_scores);
        if !locate::part_beats_whole(scores[0], narrowed_scores[picked]) {
            return Ok(None);
        }
        let (vector, region) = narrowed.swap_remove(picked);
        Ok(Some(match region {
            Some(region) => {
                let (region, vector) = self.placed_best(scene, region, vector, left_out)?;
                (Some(region), vector)
            }
            None => (None, vector),
        }))
    }

    /// As `Shop::regions_of` given the whole scene and its windows embedded: the whole scene
    /// when it matches closely or has no windows, else the windows whose best products differ
    /// ([`locate::regions`]), narrowed and moved, and kept again; each with its vector.
    fn regions(
        &self,
        scene: &Photo,
        (windows, vectors, maps): &ScenePartsEmbedded,
        left_out: &[&HeldOut],
    ) -> Result<Vec<(PhotoBox, Vec<f32>)>> {
        if keeps_to_the_whole(windows, &[self.best_match(&vectors[0], left_out).0]) {
            let all = PhotoBox::new(0.0, 0.0, scene.width as f32, scene.height as f32)?;
            return Ok(vec![(all, vectors[0].clone())]);
        }
        let candidate = |region: PhotoBox, vector: &[f32]| {
            let (score, product, _) = self.best_match(vector, left_out);
            Candidate {
                region,
                score,
                best_product: product.to_string(),
            }
        };
        let candidates: Vec<Candidate> = windows
            .iter()
            .zip(&vectors[1..])
            .map(|(region, vector)| candidate(*region, vector))
            .collect();
        let (mut kept, mut placed_candidates) = (Vec::new(), Vec::new());
        for i in locate::regions(&candidates, locate::REGION_CANDIDATES) {
            let (narrowed, vector) = self.narrow(scene, &maps[i + 1], &vectors[i + 1], left_out)?;
            let (region, vector) = self.placed_best(scene, narrowed.unwrap_or(windows[i]), vector, left_out)?;
            placed_candidates.push(candidate(region, &vector));
            kept.push((region, vector));
        }
        Ok(locate::regions(&placed_candidates, locate::MAX_REGIONS)
            .into_iter()
            .map(|i| kept[i].clone())
            .collect())
    }
}

/// Where `eval scenes` takes search to look in `photo` by default, with nothing left out, over
/// the catalogue in `store` embedded by `embedder`: the part searched, `None` for the whole
/// photo, and the regions "shop the look" finds. They are what `Shop::locate` and
/// `Shop::products_in` give (`tests/shop.rs` checks it), so the benchmark measures search itself.
pub fn mirrored_search(
    store: &dyn Store,
    embedder: &Embedder,
    photo: &Photo,
) -> Result<(Option<PhotoBox>, Vec<PhotoBox>)> {
    let gallery = unit_gallery(&store.products()?);
    let search = MirroredSearch::new(&gallery, embedder)?;
    let embedded = search.whole_and_windows(photo)?;
    let scores = search.best_scores(&embedded.1, &[]);
    let part = search
        .part_to_search(photo, &embedded, &scores, &[])?
        .and_then(|(region, _)| region);
    let regions = search.regions(photo, &embedded, &[])?;
    Ok((part, regions.into_iter().map(|(region, _)| region).collect()))
}

/// Whether search keeps to the whole photo, its windows and their best-match `scores` (the
/// whole photo's first) given: it matches closely, or has no windows.
fn keeps_to_the_whole(windows: &[PhotoBox], scores: &[f32]) -> bool {
    whole_is_enough(scores[0]) || windows.is_empty()
}

/// `order` (products, best first, the `keys` they were ordered by, by index) re-ranked as search
/// re-ranks a part it found ([`reranked_locally`], as `Recommender::query` does), the held-out
/// `photo`'s own cells left out.
fn reranked_like_search(
    store: &dyn Store,
    products: &[StoredProduct],
    order: Vec<usize>,
    keys: &[f32],
    part: &QueryCells,
    photo: &HeldOut,
) -> Result<Vec<usize>> {
    let depth = order.len().min(LOCAL_RERANK_DEPTH);
    let ids: Vec<&str> = order[..depth].iter().map(|&p| products[p].id.as_str()).collect();
    let cells = store.cells_of(&ids)?;
    let held_out = products[photo.product].image_hashes().nth(photo.view);
    Ok(reranked_locally(order, |&p| {
        let photos = cells
            .get(&products[p].id)?
            .iter()
            .filter(|theirs| p != photo.product || Some(theirs.content_hash.as_str()) != held_out)
            .map(|theirs| theirs.cells.as_slice());
        Some(keys[p] + part.best_likeness(photos)?)
    }))
}

/// Every product's photos' vectors, as unit vectors.
fn unit_gallery(products: &[StoredProduct]) -> Vec<Vec<Vec<f32>>> {
    products.iter().map(|p| p.vectors().map(unit).collect()).collect()
}

/// How often an explanation points at the product in scenes of one product.
#[derive(Debug, Clone, Serialize)]
pub struct Pointing {
    /// Which part of the scene was explained.
    pub explained: String,
    pub scenes: usize,
    /// Share of scenes whose query heat map's hottest cell has its centre inside the pasted product.
    pub hottest_cell_on_product: f64,
    /// Share of scenes whose query box has its centre inside the pasted product.
    pub query_box_centre_on_product: f64,
    /// Share of scenes whose match box has its centre on the product in the matched photo (its
    /// studio backdrop cut away).
    pub match_box_centre_on_product: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PointingReport {
    pub rows: Vec<Pointing>,
    /// Scenes of a product with two photos or more besides the held-out one.
    pub several_views: usize,
    /// Share of those where the explanation's matched photo is the product's photo most like the
    /// held-out photo itself (the view that was pasted).
    pub matched_view_is_the_pasted_one: f64,
}

/// The pointing game on the scenes of one product that [`scene_recall`] makes with the same
/// options: each scene explained against its own product (its held-out photo left out), as
/// `POST /v1/explain` does, for three parts of the scene: all of it as search reads it (its
/// centre square), all of it on white (`box` the whole photo), and the part most like the
/// product (the default: the whole photo or one of the windows a search looks in).
pub fn pointing_game(
    store: &dyn Store,
    embedder: &Embedder,
    backgrounds: &Path,
    options: &SceneOptions,
) -> Result<PointingReport> {
    let setup = Setup::new(store, embedder, backgrounds)?;
    let explainer = embedder.with_feature_map()?;
    let mut rng = fastrand::Rng::with_seed(options.seed);
    // A catalogue photo's feature map and where the product is in it, by (product, photo).
    struct KeptPhoto {
        map: FeatureMap,
        product_bounds: (u32, u32, u32, u32),
    }
    let mut catalogue_maps: HashMap<(usize, usize), KeptPhoto> = HashMap::new();
    let names = [
        "whole photo, as search reads it (centre square)",
        "whole photo on white (box: all of it)",
        "the part most like the product (default)",
    ];
    let mut hits = [[0usize; 3]; 3];
    let (mut several_views, mut pasted_view_named) = (0usize, 0usize);
    for _ in 0..options.singles {
        let SingleScene {
            scene, photo, placed, ..
        } = single_scene(&setup.held_out, &setup.backgrounds, options, &mut rng)?;
        let views: Vec<usize> = (0..setup.gallery[photo.product].len())
            .filter(|&v| v != photo.view)
            .collect();
        let view_vectors: Vec<&[f32]> = views
            .iter()
            .map(|&v| setup.gallery[photo.product][v].as_slice())
            .collect();
        let all = PhotoBox::new(0.0, 0.0, scene.width as f32, scene.height as f32)?;
        let windows = search_windows(scene.width, scene.height);
        let mut parts: Vec<Option<&PhotoBox>> = vec![None, Some(&all)];
        parts.extend(windows.iter().map(Some));
        let maps = feature_maps(&explainer, &scene, &parts)?;
        let vectors: Vec<&[f32]> = maps.iter().map(|(_, e)| e.features.as_slice()).collect();
        // The default looks among the whole photo (as search reads it) and the windows.
        let looked_among: Vec<usize> = std::iter::once(0).chain(2..parts.len()).collect();
        let among: Vec<&[f32]> = looked_among.iter().map(|&i| vectors[i]).collect();
        let chosen = [
            (0, most_alike_pair(&vectors[..1], &view_vectors).1),
            (1, most_alike_pair(&vectors[1..2], &view_vectors).1),
            {
                let (part, view) = most_alike_pair(&among, &view_vectors);
                (looked_among[part], view)
            },
        ];
        let inside = |(x, y): (f32, f32)| (placed.x0..placed.x1).contains(&x) && (placed.y0..placed.y1).contains(&y);
        for (row, &(part, view)) in chosen.iter().enumerate() {
            let number = views[view];
            let kept = match catalogue_maps.entry((photo.product, number)) {
                Entry::Occupied(kept) => kept.into_mut(),
                Entry::Vacant(place) => {
                    let path = setup.products[photo.product]
                        .image_paths()
                        .nth(number)
                        .unwrap_or_default();
                    let matched = scene_photo(load_image(Path::new(path))?);
                    let (map, _) = feature_maps(&explainer, &matched, &[None])?.remove(0);
                    place.insert(KeptPhoto {
                        map,
                        product_bounds: studio_backdrop(&matched.pixels).1,
                    })
                }
            };
            let (matched, bounds) = (&kept.map, kept.product_bounds);
            let explained = explain(&maps[part].0, matched, number)?;
            let centre = |b: &PhotoBox| ((b.x0 + b.x1) / 2.0, (b.y0 + b.y1) / 2.0);
            let (mx, my) = centre(&explained.match_box);
            hits[row][0] += usize::from(inside(explained.query_heatmap.hottest_point(scene.width, scene.height)));
            hits[row][1] += usize::from(inside(centre(&explained.query_box)));
            hits[row][2] += usize::from(
                (bounds.0 as f32..bounds.2 as f32).contains(&mx) && (bounds.1 as f32..bounds.3 as f32).contains(&my),
            );
            if row == 2 && views.len() >= 2 {
                several_views += 1;
                let own = setup.gallery[photo.product][photo.view].as_slice();
                pasted_view_named += usize::from(most_alike_pair(&[own], &view_vectors).1 == view);
            }
        }
    }
    let share = |n: usize, of: usize| n as f64 / of.max(1) as f64;
    Ok(PointingReport {
        rows: names
            .iter()
            .zip(hits)
            .map(|(name, [hottest, query_box, match_box])| Pointing {
                explained: name.to_string(),
                scenes: options.singles,
                hottest_cell_on_product: share(hottest, options.singles),
                query_box_centre_on_product: share(query_box, options.singles),
                match_box_centre_on_product: share(match_box, options.singles),
            })
            .collect(),
        several_views,
        matched_view_is_the_pasted_one: share(pasted_view_named, several_views),
    })
}

/// Category retrieval from shoppers'-style photos against a catalogue's packshots, one way of
/// searching: how often the best product, and the 5 best, are of the photo's kind.
#[derive(Debug, Clone, Serialize)]
pub struct KindPrecision {
    pub search: String,
    pub queries: usize,
    pub precision_at_1: f64,
    /// The share of the 5 best products of the photo's kind, averaged over photos.
    pub precision_at_5: f64,
    /// Precision@1 per kind (folder name), in the order the kinds were given.
    pub per_kind: Vec<(String, f64)>,
}

/// [`kind_precision`]'s answer: the whole photo, then the default search.
#[derive(Debug, Clone, Serialize)]
pub struct KindReport {
    pub rows: Vec<KindPrecision>,
    /// The share of photos the default search searched whole (they match a product closely, or
    /// no part of them beats the whole photo).
    pub searched_whole: f64,
    /// How many kinds the catalogue has learnt (`train kinds`), which both searches use.
    pub learnt_kinds: Option<usize>,
}

/// Each photo under `photos/<folder>/` whose folder `kinds` names (folder, category) searched
/// through the front door, whole and as `search` does by default; a product is of its kind when
/// the last part of its category (`Men/Tops/Tees` -> `Tees`) is the folder's category.
pub fn kind_precision(shop: &Shop, photos: &Path, kinds: &[(String, String)]) -> Result<KindReport> {
    ensure!(!kinds.is_empty(), "name at least one kind: FOLDER=CATEGORY");
    let mut folders: Vec<String> = kinds.iter().map(|(folder, _)| folder.clone()).collect();
    let queries = labelled_images(photos, &mut folders, false)?;
    ensure!(
        !queries.is_empty(),
        "{} has no photos in folders named {:?}",
        photos.display(),
        kinds.iter().map(|(name, _)| name).collect::<Vec<_>>()
    );
    let framings = [
        ("whole photo", Framing::Whole),
        ("default search", Framing::FindProduct),
    ];
    // [framing][kind] -> (photos, right at 1, share right in the 5 best summed)
    let mut sums = vec![vec![(0usize, 0usize, 0f64); kinds.len()]; framings.len()];
    let mut searched_whole = 0;
    for (path, kind) in &queries {
        let photo = match Shop::read_photo(path) {
            Ok(photo) => photo,
            Err(err) => {
                eprintln!("skipped {}: {err:#}", path.display());
                continue;
            }
        };
        for (f, (_, framing)) in framings.iter().enumerate() {
            let located = shop.locate(&photo, framing, false)?;
            if *framing == Framing::FindProduct && located.region.is_none() {
                searched_whole += 1;
            }
            let hits = shop.search(&SearchRequest::located(&located, 5))?.hits;
            let right: Vec<bool> = hits
                .iter()
                .map(|hit| hit.product.info.category_leaf() == Some(kinds[*kind].1.as_str()))
                .collect();
            let sum = &mut sums[f][*kind];
            sum.0 += 1;
            sum.1 += usize::from(right.first() == Some(&true));
            sum.2 += right.iter().filter(|&&r| r).count() as f64 / 5.0;
        }
    }
    let searched = sums[0].iter().map(|s| s.0).sum::<usize>();
    let share = |part: f64, whole: usize| part / whole.max(1) as f64;
    let rows = framings
        .iter()
        .zip(&sums)
        .map(|((name, _), per_kind)| KindPrecision {
            search: name.to_string(),
            queries: searched,
            precision_at_1: share(per_kind.iter().map(|s| s.1).sum::<usize>() as f64, searched),
            precision_at_5: share(per_kind.iter().map(|s| s.2).sum::<f64>(), searched),
            per_kind: kinds
                .iter()
                .zip(per_kind)
                .map(|((name, _), s)| (name.clone(), share(s.1 as f64, s.0)))
                .collect(),
        })
        .collect();
    Ok(KindReport {
        rows,
        searched_whole: share(searched_whole as f64, searched),
        learnt_kinds: shop.learnt_kinds()?.map(|kinds| kinds.len()),
    })
}

#[derive(Default)]
struct Counts {
    queries: usize,
    at_1: usize,
    at_5: usize,
}

impl Counts {
    fn add(&mut self, rank: usize) {
        self.queries += 1;
        self.at_1 += usize::from(rank < 1);
        self.at_5 += usize::from(rank < 5);
    }

    fn recall(&self, search: &str) -> SceneRecall {
        let share = |n: usize| n as f64 / self.queries.max(1) as f64;
        SceneRecall {
            search: search.into(),
            queries: self.queries,
            recall_at_1: share(self.at_1),
            recall_at_5: share(self.at_5),
        }
    }
}

/// Every photo of every product that has two or more, with a file that can be read.
fn held_out_photos(products: &[StoredProduct]) -> Vec<HeldOut> {
    products
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.more_images.is_empty())
        .flat_map(|(i, p)| {
            p.image_paths().enumerate().map(move |(view, path)| HeldOut {
                product: i,
                view,
                path: PathBuf::from(path),
            })
        })
        .filter(|h| h.path.is_file())
        .collect()
}

/// A scene as a photo, its pixels its own.
fn scene_photo(scene: RgbImage) -> Photo {
    Photo {
        width: scene.width(),
        height: scene.height(),
        pixels: scene,
    }
}

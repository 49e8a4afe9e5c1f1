//! Shoppers' photos made from photos a shop has, for measuring search on them: a product photo
//! held out of the catalogue, its white studio background removed, pasted onto a real photo of
//! a busy scene at a random size (a third to a half of the scene's height) and place, alone or
//! beside another product; seeded, so a run can be repeated exactly. Each scene is searched as a
//! whole, inside the pasted product's true box, and inside boxes found without knowing it (the
//! feature map's SCDA blob; the window of feature-map cells most like a catalogue photo; 18
//! fixed windows embedded, the one most like a catalogue photo kept), and its own product's rank
//! is read with that photo left out of the gallery (as `eval products` does; the finders' "like a
//! catalogue photo" leaves it out too).
//!
//! How it differs from real shoppers' photos: the product is lit and sharp as in the studio, its
//! edges are cut cleanly, nothing covers it, and the scene around it was never its setting.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Result};
use image::{Rgb, RgbImage, Rgba, RgbaImage};
use serde::Serialize;

use crate::catalogue::{read_image_folder, Layout};
use crate::image::decode::centred_on_white;
use crate::image::{load_image, Photo};
use crate::learn::eval::{held_out_rank, Aggregation};
use crate::linalg::l2_normalise_rows;
use crate::model::Embedder;
use crate::store::{check_same_model, Store};
use crate::types::{PhotoBox, StoredProduct};

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
    /// Scenes of one product: the whole photo, the product's true box, the boxes found.
    pub singles: Vec<SceneRecall>,
    pub pairs: usize,
    /// Share of two-product scenes with both products among the whole photo's 10 best.
    pub pairs_both_in_whole_top_10: f64,
    /// Share of two-product scenes with each product among its own true box's 5 best.
    pub pairs_both_in_own_box_top_5: f64,
}

/// A product photo held out of the gallery: product index, photo index, file.
struct HeldOut {
    product: usize,
    view: usize,
    path: PathBuf,
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
    if let Some(manifest) = store.manifest()? {
        check_same_model(&manifest, &embedder.manifest())?;
    }
    let products = store.products()?;
    let gallery: Vec<Vec<Vec<f32>>> = products.iter().map(|p| p.vectors().map(unit).collect()).collect();
    let held_out = held_out_photos(&products);
    ensure!(
        !held_out.is_empty(),
        "the catalogue has no product of two photos or more to hold one out of"
    );
    let backgrounds: Vec<PathBuf> = read_image_folder(backgrounds, Layout::Images)?
        .entries
        .into_iter()
        .map(|e| e.image_path)
        .collect();
    if backgrounds.is_empty() {
        bail!("no background photos found");
    }
    let mut rng = fastrand::Rng::with_seed(options.seed);
    let embed = |image: &RgbImage| -> Result<Vec<f32>> {
        let out = embedder.run(&embedder.preprocessing.tensor_of(image), 1)?;
        Ok(unit(&out.image(0).features))
    };
    let rank =
        |query: &[f32], photo: &HeldOut| held_out_rank(&gallery, photo.product, photo.view, query, Aggregation::TopTwo);

    let (mut whole, mut boxed, mut located) = (Counts::default(), Counts::default(), Counts::default());
    let (mut matched, mut windows) = (Counts::default(), Counts::default());
    let locator = embedder.with_feature_map()?;
    for _ in 0..options.singles {
        let photo = &held_out[rng.usize(..held_out.len())];
        let mut scene = load_image(&backgrounds[rng.usize(..backgrounds.len())])?;
        let product = cut_out(&load_image(&photo.path)?);
        let width = scene.width();
        let placed = paste(&mut scene, &product, (0, width), options.height_share, &mut rng);
        let scene = scene_photo(scene);
        whole.add(rank(&embed(&scene.pixels)?, photo));
        boxed.add(rank(&embed(&region(&scene, placed)?)?, photo));
        let grid = FeatureGrid::of(&locator, &scene.pixels)?;
        located.add(rank(&embed(&region(&scene, grid.scda_box())?)?, photo));
        let like_catalogue = |pooled: &[f32]| {
            gallery
                .iter()
                .enumerate()
                .flat_map(|(p, views)| views.iter().enumerate().map(move |(v, view)| (p, v, view)))
                .filter(|&(p, v, _)| (p, v) != (photo.product, photo.view))
                .map(|(_, _, view)| view.iter().zip(pooled).map(|(a, b)| a * b).sum::<f32>())
                .fold(f32::MIN, f32::max)
        };
        let found = grid.best_window(&[3, 4, 5], &like_catalogue);
        matched.add(rank(&embed(&region(&scene, found)?)?, photo));
        // The blind search: 18 fixed windows (3 × 3 at a half and two thirds of each side),
        // each embedded, the one whose best catalogue match scores highest kept.
        let (width, height) = (scene.width, scene.height);
        let mut best = (f32::MIN, Vec::new());
        for share in [0.5f32, 2.0 / 3.0] {
            let (w, h) = (width as f32 * share, height as f32 * share);
            for row in 0..3 {
                for column in 0..3 {
                    let (x0, y0) = (
                        (width as f32 - w) * column as f32 / 2.0,
                        (height as f32 - h) * row as f32 / 2.0,
                    );
                    let window = (x0 as u32, y0 as u32, (x0 + w) as u32, (y0 + h) as u32);
                    let vector = embed(&region(&scene, window)?)?;
                    let score = like_catalogue(&vector);
                    if score > best.0 {
                        best = (score, vector);
                    }
                }
            }
        }
        windows.add(rank(&best.1, photo));
    }

    let (mut both_whole, mut both_boxes) = (0usize, 0usize);
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
        let whole_scene = embed(&scene.pixels)?;
        both_whole += usize::from(rank(&whole_scene, first) < 10 && rank(&whole_scene, second) < 10);
        let in_own_box =
            |photo: &HeldOut, placed| -> Result<bool> { Ok(rank(&embed(&region(&scene, placed)?)?, photo) < 5) };
        both_boxes += usize::from(in_own_box(first, boxes[0])? && in_own_box(second, boxes[1])?);
    }
    let share = |n: usize| n as f64 / options.pairs.max(1) as f64;
    Ok(SceneReport {
        singles: vec![
            whole.recall("whole photo"),
            boxed.recall("the product's true box"),
            located.recall("the box the feature map shows (SCDA)"),
            matched.recall("the window of cells most like a catalogue photo"),
            windows.recall("18 windows embedded, the one most like a catalogue photo"),
        ],
        pairs: options.pairs,
        pairs_both_in_whole_top_10: share(both_whole),
        pairs_both_in_own_box_top_5: share(both_boxes),
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

fn unit(vector: &[f32]) -> Vec<f32> {
    let mut unit = vector.to_vec();
    l2_normalise_rows(&mut unit, vector.len().max(1));
    unit
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

/// Near-white, as a studio background is.
fn is_backdrop(pixel: &Rgb<u8>) -> bool {
    pixel.0.iter().all(|&c| c >= 235)
}

/// The product without its studio background: near-white pixels joined to the photo's border
/// become transparent (white inside the product stays), cropped to what is left.
fn cut_out(photo: &RgbImage) -> RgbaImage {
    let (width, height) = photo.dimensions();
    let mut backdrop = vec![false; (width * height) as usize];
    let mut stack: Vec<(u32, u32)> = Vec::new();
    for x in 0..width {
        stack.extend([(x, 0), (x, height - 1)]);
    }
    for y in 0..height {
        stack.extend([(0, y), (width - 1, y)]);
    }
    while let Some((x, y)) = stack.pop() {
        let at = (y * width + x) as usize;
        if backdrop[at] || !is_backdrop(photo.get_pixel(x, y)) {
            continue;
        }
        backdrop[at] = true;
        if x > 0 {
            stack.push((x - 1, y));
        }
        if x + 1 < width {
            stack.push((x + 1, y));
        }
        if y > 0 {
            stack.push((x, y - 1));
        }
        if y + 1 < height {
            stack.push((x, y + 1));
        }
    }
    let (mut x0, mut y0, mut x1, mut y1) = (width, height, 0, 0);
    for y in 0..height {
        for x in 0..width {
            if !backdrop[(y * width + x) as usize] {
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
            }
        }
    }
    if x1 <= x0 || y1 <= y0 {
        // All backdrop: the photo as it is.
        (x0, y0, x1, y1) = (0, 0, width, height);
        backdrop.iter_mut().for_each(|b| *b = false);
    }
    RgbaImage::from_fn(x1 - x0, y1 - y0, |x, y| {
        let (sx, sy) = (x + x0, y + y0);
        let Rgb([r, g, b]) = *photo.get_pixel(sx, sy);
        let alpha = if backdrop[(sy * width + sx) as usize] { 0 } else { 255 };
        Rgba([r, g, b, alpha])
    })
}

/// Pastes `product` onto `scene` inside the columns `columns`, its height a random share (in
/// `height_share`) of the scene's (less if it would not fit), at a random place; its box.
fn paste(
    scene: &mut RgbImage,
    product: &RgbaImage,
    columns: (u32, u32),
    height_share: (f32, f32),
    rng: &mut fastrand::Rng,
) -> (u32, u32, u32, u32) {
    let scene_height = scene.height();
    let room = columns.1 - columns.0;
    let share = height_share.0 + rng.f32() * (height_share.1 - height_share.0);
    let aspect = product.width() as f32 / product.height() as f32;
    let mut height = (share * scene_height as f32).max(1.0);
    if height * aspect > room as f32 {
        height = room as f32 / aspect;
    }
    let (width, height) = (
        ((height * aspect).round() as u32).clamp(1, room),
        (height.round() as u32).max(1),
    );
    let resized = image::imageops::resize(product, width, height, image::imageops::FilterType::Triangle);
    let x = columns.0 + rng.u32(0..=room - width);
    let y = rng.u32(0..=scene_height - height);
    for (px, py, pixel) in resized.enumerate_pixels() {
        let alpha = u32::from(pixel.0[3]);
        if alpha == 0 {
            continue;
        }
        let under = scene.get_pixel_mut(x + px, y + py);
        for c in 0..3 {
            under.0[c] = ((u32::from(pixel.0[c]) * alpha + u32::from(under.0[c]) * (255 - alpha)) / 255) as u8;
        }
    }
    (x, y, x + width, y + height)
}

/// The last feature map of `image` shown whole (on a white square wide enough that the
/// network's centre crop keeps all of it): each cell's features, and where the cells lie.
struct FeatureGrid {
    cells: Vec<Vec<f32>>,
    grid: usize,
    /// The image's size, and where it sits in the `longer` square the cells cover.
    width: u32,
    height: u32,
    longer: u32,
    left: u32,
    top: u32,
}

impl FeatureGrid {
    fn of(locator: &Embedder, image: &RgbImage) -> Result<Self> {
        let (width, height) = image.dimensions();
        let longer = width.max(height);
        let pre = &locator.preprocessing;
        let side = (u64::from(longer) * u64::from(pre.resize_shorter) / u64::from(pre.crop)) as u32;
        let canvas = centred_on_white(image, side);
        let (pad_x, pad_y) = ((side - width) / 2, (side - height) / 2);
        let out = locator.run(&pre.tensor_of(&canvas), 1)?;
        let map = &out.block_input;
        // The pooled features' width, whatever a head or colour made of the vectors.
        let channels = if out.backbone.is_empty() {
            out.dimension
        } else {
            out.backbone.len()
        };
        let count = map.len() / channels.max(1);
        let grid = (count as f64).sqrt().round() as usize;
        ensure!(grid * grid == count && grid > 0, "the feature map is not square");
        let cells = (0..count)
            .map(|cell| (0..channels).map(|c| map[c * count + cell]).collect())
            .collect();
        let square = (side - longer) / 2;
        Ok(Self {
            cells,
            grid,
            width,
            height,
            longer,
            left: pad_x - square,
            top: pad_y - square,
        })
    }

    /// Columns `c0..c1`, rows `r0..r1` of cells as a box in the image's pixels.
    fn to_box(&self, c0: usize, r0: usize, c1: usize, r1: usize) -> (u32, u32, u32, u32) {
        let at = |cell: usize, start: u32, limit: u32| -> u32 {
            let at = cell as f64 * f64::from(self.longer) / self.grid as f64;
            (at - f64::from(start)).clamp(0.0, f64::from(limit)).round() as u32
        };
        let (x0, x1) = (at(c0, self.left, self.width), at(c1, self.left, self.width));
        let (y0, y1) = (at(r0, self.top, self.height), at(r1, self.top, self.height));
        if x1 <= x0 || y1 <= y0 {
            return (0, 0, self.width, self.height);
        }
        (x0, y0, x1, y1)
    }

    /// SCDA (Wei et al., TIP 2017): the cells whose activations summed over channels exceed
    /// their mean, the largest 4-connected blob of them, its box.
    fn scda_box(&self) -> (u32, u32, u32, u32) {
        let mass: Vec<f32> = self.cells.iter().map(|c| c.iter().sum()).collect();
        let mean = mass.iter().sum::<f32>() / mass.len() as f32;
        let blob = largest_blob(&mass.iter().map(|&m| m > mean).collect::<Vec<_>>(), self.grid);
        let g = self.grid;
        let (mut c0, mut r0, mut c1, mut r1) = (g, g, 0, 0);
        for cell in blob {
            let (row, column) = (cell / g, cell % g);
            (c0, r0, c1, r1) = (c0.min(column), r0.min(row), c1.max(column + 1), r1.max(row + 1));
        }
        self.to_box(c0, r0, c1, r1)
    }

    /// The window of cells (every square of `sizes` cells a side) whose pooled features score
    /// highest by `score`, as a box.
    fn best_window(&self, sizes: &[usize], score: &dyn Fn(&[f32]) -> f32) -> (u32, u32, u32, u32) {
        let g = self.grid;
        let mut best = (f32::MIN, (0, 0, g, g));
        for &size in sizes.iter().filter(|&&s| s <= g) {
            for r0 in 0..=g - size {
                for c0 in 0..=g - size {
                    let mut pooled = vec![0.0f32; self.cells[0].len()];
                    for row in r0..r0 + size {
                        for column in c0..c0 + size {
                            let cell = &self.cells[row * g + column];
                            pooled.iter_mut().zip(cell).for_each(|(p, x)| *p += x);
                        }
                    }
                    let value = score(&unit(&pooled));
                    if value > best.0 {
                        best = (value, (c0, r0, c0 + size, r0 + size));
                    }
                }
            }
        }
        let (c0, r0, c1, r1) = best.1;
        self.to_box(c0, r0, c1, r1)
    }
}

/// The cells of the largest 4-connected blob of `mask` (`grid` × `grid`, row-major).
fn largest_blob(mask: &[bool], grid: usize) -> Vec<usize> {
    let mut seen = vec![false; mask.len()];
    let mut best = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || seen[start] {
            continue;
        }
        let (mut blob, mut stack) = (Vec::new(), vec![start]);
        seen[start] = true;
        while let Some(cell) = stack.pop() {
            blob.push(cell);
            let (row, column) = (cell / grid, cell % grid);
            let neighbours = [
                (row > 0).then(|| cell - grid),
                (row + 1 < grid).then(|| cell + grid),
                (column > 0).then(|| cell - 1),
                (column + 1 < grid).then(|| cell + 1),
            ];
            for next in neighbours.into_iter().flatten() {
                if mask[next] && !seen[next] {
                    seen[next] = true;
                    stack.push(next);
                }
            }
        }
        if blob.len() > best.len() {
            best = blob;
        }
    }
    best
}

/// A scene as a photo, its pixels its own.
fn scene_photo(scene: RgbImage) -> Photo {
    Photo {
        width: scene.width(),
        height: scene.height(),
        pixels: scene,
    }
}

/// What search shows the network for `placed` in `photo` (see [`Photo::region`]).
fn region(photo: &Photo, (x0, y0, x1, y1): (u32, u32, u32, u32)) -> Result<RgbImage> {
    let placed = PhotoBox::new(x0 as f32, y0 as f32, x1 as f32, y1 as f32)?;
    Ok(photo.region(Some(&placed))?.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_studio_backdrop_is_cut_away_and_the_product_pasted_where_its_box_says() {
        // A dark square with a white stripe inside, on a white backdrop.
        let photo = RgbImage::from_fn(40, 30, |x, y| {
            let inside = (10..30).contains(&x) && (5..25).contains(&y);
            let stripe = (18..20).contains(&x) && (8..22).contains(&y);
            Rgb(if inside && !stripe { [20, 40, 60] } else { [250; 3] })
        });
        let product = cut_out(&photo);
        assert_eq!(product.dimensions(), (20, 20), "cropped to the product");
        assert_eq!(product.get_pixel(8, 10).0[3], 255, "white inside the product stays");
        let mut scene = RgbImage::from_pixel(300, 200, Rgb([200, 0, 0]));
        let mut rng = fastrand::Rng::with_seed(3);
        let (x0, y0, x1, y1) = paste(&mut scene, &product, (150, 300), (1.0 / 3.0, 0.5), &mut rng);
        assert!(x0 >= 150 && x1 <= 300 && y1 <= 200, "{x0} {y0} {x1} {y1}");
        assert!(
            (66..=100).contains(&(y1 - y0)),
            "a third to a half of the height: {}",
            y1 - y0
        );
        assert_eq!(scene.get_pixel(x0 + 1, y0 + 1).0, [20, 40, 60]);
        assert_eq!(
            scene.get_pixel(x0.saturating_sub(2), y0).0,
            [200, 0, 0],
            "the scene around it"
        );
    }
}

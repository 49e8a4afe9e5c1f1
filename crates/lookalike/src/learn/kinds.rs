//! A catalogue's kinds learnt from its own photos, so that a shopper's photo of a kind of product
//! (trousers on a bed, a jacket on a hanger) brings products of that kind even when it looks like
//! none of them closely. A product's kind is the last part of its category (`Men/Bottoms/Pants`
//! → `pants`). Packshots alone teach the studio, not the shopper's photo: each catalogue photo is
//! also cut away from its white backdrop and pasted, smaller or larger, mirrored, lighter or
//! darker, onto real phone photos ([`Backgrounds`]), and a softmax head over the catalogue's
//! vectors learns the kinds from both. The head is kept with the catalogue, like a projection
//! head; search then raises a photo's products by the chance of their kind
//! ([`crate::index::category_vote`]), only for a photo that matches no product closely.
//!
//! Chosen in numbers (README, "Learnt kinds"): a prototype head's `eval kinds` validation
//! precision@1 was 0.596 learnt from packshots alone, 0.618 with them pasted onto plain colours,
//! 0.689–0.715 onto 128 or 321 phone photos. How many views, and learning again from every
//! product, were chosen on clothing-dataset-small's 2,104 training photos of five kinds (whole
//! photo, mean of three seeds: 4 views 0.715, **8 views learnt again 0.726**); lookalike's default
//! search then reaches 0.695 on validation and 0.720 on test over three seeds (0.650 without
//! kinds; the default seed 0.693 / 0.744).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use image::{imageops, Rgb, RgbImage};
use rayon::prelude::*;

use crate::image::cutout::{cut_out, paste};
use crate::image::{decode_image, load_image};
use crate::index::kernels::dot;
use crate::learn::head::{Head, HeadKind};
use crate::learn::train::{train_classifier, LabelledFeatures, TrainOptions, Trained};
use crate::linalg::unit;
use crate::types::category_key;

/// Views of each catalogue photo pasted onto backgrounds (besides the photo itself): 4, 8 and
/// 16 gave 0.715, 0.720 and 0.712 (module note), and 8 with the head learnt again 0.726.
pub const VIEWS_PER_PHOTO: usize = 8;

/// Photos of one kind turned into views, at most: bounds the work a big catalogue costs
/// (`VIEWS_PER_PHOTO` × this × kinds network passes).
pub const PHOTOS_PER_KIND: usize = 128;

/// Catalogue vectors of one kind the head learns from as they are, at most (they cost no pass).
pub const VECTORS_PER_KIND: usize = 2_000;

/// Photos turned into views over all kinds, at most: a catalogue of many kinds views fewer of each.
pub const PHOTOS_VIEWED: usize = 4_096;

/// Stored vectors learnt from over all kinds, at most (50,000 of 1,280 floats: 256 MB).
pub const VECTORS_LEARNT: usize = 50_000;

/// Kinds a head learns, at most (its weights grow with them: 1,000 × 1,280 floats).
pub const MAX_KINDS: usize = 1_000;

/// How many photos to view and stored vectors to learn from, at most, of each of `kinds` kinds;
/// refused past [`MAX_KINDS`].
pub fn per_kind_budget(kinds: usize) -> Result<(usize, usize)> {
    if kinds > MAX_KINDS {
        bail!("the catalogue has {kinds} kinds (the last parts of its categories); kinds are learnt for up to {MAX_KINDS}");
    }
    let kinds = kinds.max(1);
    Ok((
        PHOTOS_PER_KIND.min((PHOTOS_VIEWED / kinds).max(1)),
        VECTORS_PER_KIND.min((VECTORS_LEARNT / kinds).max(1)),
    ))
}

/// Side of the square a view is made on (the network reads it whole).
const VIEW_SIDE: u32 = 256;

/// One product in this many is kept out of training to decide when to stop and whether to keep
/// the head.
const HELD_OUT_EVERY: usize = 7;

/// Held-out vectors and views the head is checked on against the nearest photo, at most.
const CHECKED_EXAMPLES: usize = 2_000;

/// The phone photos shipped with lookalike that views are pasted onto: 128 photos of shoes and
/// hats on floors, beds and tables from clothing-dataset-small's training split (CC0;
/// `assets/backgrounds/PROVENANCE.md`), none of a kind the catalogue is likely to sell as clothing.
const BUNDLED_BACKGROUNDS: &[&[u8]] = include!("../../assets/backgrounds/list.rs");

/// The kind of a product of `category`: its last part, compared without case.
pub fn kind_of(category: &str) -> String {
    category_key(category.rsplit('/').next().unwrap_or(category).trim())
}

/// Photos of real places for views to be pasted onto.
pub struct Backgrounds(Vec<RgbImage>);

impl Backgrounds {
    /// The photos shipped with lookalike.
    pub fn bundled() -> Result<Self> {
        let photos = BUNDLED_BACKGROUNDS
            .iter()
            .map(|jpeg| decode_image(jpeg).context("a bundled background is not a photo"))
            .collect::<Result<_>>()?;
        Ok(Self(photos))
    }

    /// The photos at `paths`, reduced to what a view needs; unreadable ones are skipped.
    pub fn from_files(paths: &[PathBuf]) -> Result<Self> {
        let photos: Vec<RgbImage> = paths
            .iter()
            .filter_map(|path| load_image(path).ok())
            .map(|photo| imageops::thumbnail(&photo, VIEW_SIDE, VIEW_SIDE))
            .collect();
        if photos.is_empty() {
            bail!("none of the {} background files is a readable photo", paths.len());
        }
        Ok(Self(photos))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A view of the studio photo `photo`: its product cut out, mirrored or not, its longer side
    /// a half to all of a square background's, placed at random, lit a little differently.
    pub fn view(&self, photo: &RgbImage, rng: &mut fastrand::Rng) -> RgbImage {
        let background = &self.0[rng.usize(..self.0.len())];
        let mut view = imageops::resize(background, VIEW_SIDE, VIEW_SIDE, imageops::FilterType::Triangle);
        let mut product = cut_out(photo);
        if rng.bool() {
            imageops::flip_horizontal_in_place(&mut product);
        }
        // `paste` sizes by height; a wide product's longer side is its width.
        let longer = 0.5 + rng.f32() * 0.5;
        let aspect = product.width() as f32 / product.height() as f32;
        let height = if aspect > 1.0 { longer / aspect } else { longer };
        paste(&mut view, &product, (0, VIEW_SIDE), (height, height), rng);
        let brightness = 0.7 + rng.f32() * 0.5;
        let saturation = 0.6 + rng.f32() * 0.7;
        for Rgb(pixel) in view.pixels_mut() {
            let grey = 0.299 * f32::from(pixel[0]) + 0.587 * f32::from(pixel[1]) + 0.114 * f32::from(pixel[2]);
            for c in pixel.iter_mut() {
                let coloured = grey + (f32::from(*c) - grey) * saturation;
                *c = (coloured * brightness).round().clamp(0.0, 255.0) as u8;
            }
        }
        view
    }
}

/// What a kind head learns from: catalogue vectors and views' vectors, each with its product's
/// kind, and which product it is (products are held out whole).
#[derive(Default)]
pub struct KindExamples {
    examples: Vec<Example>,
}

struct Example {
    product: usize,
    kind: String,
    vector: Vec<f32>,
    /// A catalogue photo's stored vector, not a view.
    stored: bool,
}

/// A kind head and how well it names held-out products' kinds, beside what their nearest
/// catalogue photo tells.
pub struct FittedKinds {
    /// Learnt from every product for [`Self::epochs_chosen`] epochs.
    pub trained: Trained,
    /// When the head learnt without the held-out products named their kinds best.
    pub epochs_chosen: usize,
    /// Share of held-out products' vectors and views whose kind the head learnt without them
    /// names first.
    pub held_out_accuracy: f64,
    /// The same share by the kind of the nearest stored vector of the other products.
    pub nearest_photo_accuracy: f64,
}

impl KindExamples {
    /// A catalogue photo's stored vector.
    pub fn add_stored(&mut self, product: usize, kind: &str, vector: &[f32]) {
        self.push(product, kind, vector, true);
    }

    /// A view's vector.
    pub fn add_view(&mut self, product: usize, kind: &str, vector: &[f32]) {
        self.push(product, kind, vector, false);
    }

    fn push(&mut self, product: usize, kind: &str, vector: &[f32], stored: bool) {
        self.examples.push(Example {
            product,
            kind: kind.to_string(),
            vector: unit(vector),
            stored,
        });
    }

    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// The head, trained on all but one product in [`HELD_OUT_EVERY`] until those stop
    /// improving, then learnt again from every product for as many epochs (the products held
    /// out, a seeded seventh, otherwise decide which products a kind is learnt from); refused
    /// when the catalogue has fewer than two kinds or too few products to hold one out.
    pub fn fit(self, backbone_sha256: &str, seed: u64) -> Result<FittedKinds> {
        let mut kinds: Vec<String> = self.examples.iter().map(|e| e.kind.clone()).collect();
        kinds.sort();
        kinds.dedup();
        if kinds.len() < 2 {
            bail!(
                "kinds are learnt from products' categories, and this catalogue has {} kind{} (the last part of a category, e.g. `Pants` of `Men/Bottoms/Pants`); it needs at least two",
                kinds.len(),
                if kinds.len() == 1 { "" } else { "s" }
            );
        }
        let index: HashMap<&str, usize> = kinds.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
        let dimension = self.examples[0].vector.len();
        let empty = || LabelledFeatures {
            features: Vec::new(),
            labels: Vec::new(),
            dimension,
            classes: kinds.clone(),
        };
        let (mut train, mut val) = (empty(), empty());
        let held_out = |e: &Example| e.product % HELD_OUT_EVERY == HELD_OUT_EVERY - 1;
        for example in &self.examples {
            let set = if held_out(example) { &mut val } else { &mut train };
            set.features.extend_from_slice(&example.vector);
            set.labels.push(index[example.kind.as_str()]);
        }
        if val.is_empty() {
            bail!("kinds are learnt from {HELD_OUT_EVERY} products or more: one in {HELD_OUT_EVERY} is held out to check them");
        }
        let (held_out_examples, known): (Vec<&Example>, Vec<&Example>) =
            self.examples.iter().partition(|e| held_out(e));
        let known: Vec<&Example> = known.into_iter().filter(|e| e.stored).collect();
        // Each is checked against every known vector: a bounded few keep that quick.
        let checked: Vec<&Example> = held_out_examples.into_iter().take(CHECKED_EXAMPLES).collect();
        let nearest_right = checked
            .par_iter()
            .filter(|e| {
                let nearest = known
                    .iter()
                    .max_by(|a, b| dot(&a.vector, &e.vector).total_cmp(&dot(&b.vector, &e.vector)));
                nearest.is_some_and(|n| n.kind == e.kind)
            })
            .count();
        let options = TrainOptions {
            seed,
            learning_rate: 3e-3,
            ..TrainOptions::default()
        };
        let stopped = train_classifier(&train, &val, backbone_sha256, &options, None, &mut |_| {})?;
        // Judged before the held-out products are learnt from, so the figure is a held-out one.
        let head_right = checked
            .iter()
            .filter(|e| {
                stopped
                    .head
                    .predict(&e.vector)
                    .is_ok_and(|ranked| ranked[0].0 == e.kind)
            })
            .count();
        let mut every_product = train;
        every_product.features.extend_from_slice(&val.features);
        every_product.labels.extend_from_slice(&val.labels);
        let again = TrainOptions {
            epochs: stopped.best_epoch,
            patience: usize::MAX,
            ..options
        };
        let trained = train_classifier(&every_product, &val, backbone_sha256, &again, None, &mut |_| {})?;
        let share = |right: usize| right as f64 / checked.len() as f64;
        Ok(FittedKinds {
            trained,
            epochs_chosen: stopped.best_epoch,
            held_out_accuracy: share(head_right),
            nearest_photo_accuracy: share(nearest_right),
        })
    }
}

/// The chance of each kind for a photo's vector, by a kind head.
pub struct KindChances(HashMap<String, f32>);

/// Refused unless `head` is a classifier of vectors of `dimension`.
fn check_kinds_head(head: &Head, dimension: usize) -> Result<()> {
    if head.kind != HeadKind::Classifier {
        bail!("the catalogue's kinds are not a classifier head");
    }
    head.check_input(dimension)
}

impl KindChances {
    /// The mean chance of each kind over `views` of one photo: the part searched and, where it
    /// was found in a busy photo, the whole photo too (the whole says better what kind of thing
    /// a shopper photographed; the part, which one). Refused when `head` is not a classifier of
    /// their dimension.
    pub fn of(head: &Head, views: &[&[f32]]) -> Result<Self> {
        for view in views {
            check_kinds_head(head, view.len())?;
        }
        Ok(Self::of_checked(head, views))
    }

    fn of_checked(head: &Head, views: &[&[f32]]) -> Self {
        let mut sums = vec![0.0; head.classes.len()];
        for view in views {
            for (sum, chance) in sums.iter_mut().zip(head.apply(&unit(view), 1)) {
                *sum += chance;
            }
        }
        let count = views.len().max(1) as f32;
        Self(
            head.classes
                .iter()
                .cloned()
                .zip(sums.into_iter().map(|sum| sum / count))
                .collect(),
        )
    }

    /// The chance that a product of `category` is of the photo's kind: 0 without a category,
    /// `None` for a kind the head does not know (one added since it was learnt).
    pub fn of_category(&self, category: Option<&str>) -> Option<f32> {
        self.of_kind(category.map(kind_of).as_deref())
    }

    fn of_kind(&self, kind: Option<&str>) -> Option<f32> {
        kind.map_or(Some(0.0), |kind| self.0.get(kind).copied())
    }
}

/// A catalogue's products' kinds with the head that learnt them, for measuring search over
/// stored vectors as [`KindChances`] ranks them.
pub struct ProductKinds<'a> {
    head: &'a Head,
    /// Product i's kind, where it has a category.
    kinds: Vec<Option<String>>,
}

impl<'a> ProductKinds<'a> {
    /// `categories[i]` is product i's; refused when `head` is not a classifier of `dimension`.
    pub fn new(head: &'a Head, categories: &[Option<String>], dimension: usize) -> Result<Self> {
        check_kinds_head(head, dimension)?;
        let kinds = categories.iter().map(|c| c.as_deref().map(kind_of)).collect();
        Ok(Self { head, kinds })
    }

    /// The chance of each product's kind for `views` of a photo ([`KindChances::of`]).
    pub fn chances(&self, views: &[&[f32]]) -> Vec<Option<f32>> {
        let chances = KindChances::of_checked(self.head, views);
        self.kinds.iter().map(|kind| chances.of_kind(kind.as_deref())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_kinds_take_fewer_photos_each_and_too_many_are_refused() {
        assert_eq!(per_kind_budget(10).unwrap(), (PHOTOS_PER_KIND, VECTORS_PER_KIND));
        assert_eq!(per_kind_budget(1_000).unwrap(), (4, 50));
        assert!(per_kind_budget(MAX_KINDS + 1).is_err());
    }

    #[test]
    fn a_kind_is_the_last_part_of_a_category_without_case() {
        assert_eq!(kind_of("Men/Bottoms/Pants"), "pants");
        assert_eq!(kind_of("Women/Tops/Hoodies & Sweatshirts "), "hoodies & sweatshirts");
        assert_eq!(kind_of("Shoes"), "shoes");
    }

    #[test]
    fn a_kind_the_head_never_learnt_has_no_chance_to_weigh() {
        let chances = KindChances(HashMap::from([("pants".to_string(), 0.9)]));
        assert_eq!(chances.of_category(Some("Men/Bottoms/Pants")), Some(0.9));
        assert_eq!(chances.of_category(None), Some(0.0), "no category, no kind");
        assert_eq!(chances.of_category(Some("Gear/Umbrellas")), None);
    }

    #[test]
    fn the_head_kept_has_learnt_the_held_out_products_too() {
        // Kind `a` lies along axis 0, `b` along axis 1. Axis 2 is product 6's alone, of kind
        // `a` and held out; product 8, of kind `b`, shows a little of it, so a head that never
        // saw product 6 takes axis 2 for `b`. Product 13, held out too, is a faint `b`.
        let mut examples = KindExamples::default();
        let mut rng = fastrand::Rng::with_seed(3);
        for product in 0..14 {
            let kind = product / 7;
            // Product 6 seen often enough that a few epochs learn it.
            for copy in 0..if product == 6 { 600 } else { 40 } {
                let mut vector: Vec<f32> = (0..8).map(|_| 0.1 * rng.f32()).collect();
                match product {
                    6 => vector[2] = 1.0,
                    13 => vector[1] = 0.3,
                    8 => (vector[1], vector[2]) = (1.0, 0.4),
                    _ => vector[kind] = 1.0,
                }
                if copy == 0 {
                    examples.add_stored(product, ["a", "b"][kind], &vector);
                } else {
                    examples.add_view(product, ["a", "b"][kind], &vector);
                }
            }
        }
        let fitted = examples.fit("sha", 1).unwrap();
        assert_eq!(fitted.trained.history.len(), fitted.epochs_chosen);
        let named = |axis: usize| {
            let mut vector = vec![0.0; 8];
            vector[axis] = 1.0;
            fitted.trained.head.predict(&vector).unwrap()[0].0.clone()
        };
        assert_eq!([named(0), named(1), named(2)], ["a", "b", "a"]);
        // Judged by the head that had not seen them: product 6's views taken for `b`.
        assert!(fitted.held_out_accuracy < 0.5, "{}", fitted.held_out_accuracy);
    }

    #[test]
    fn the_bundled_backgrounds_are_photos_and_a_view_keeps_the_product_inside() {
        let backgrounds = Backgrounds::bundled().unwrap();
        assert_eq!(backgrounds.len(), 128);
        // A dark product on a white studio backdrop.
        let photo = RgbImage::from_fn(60, 90, |x, y| {
            Rgb(if (10..50).contains(&x) && (10..80).contains(&y) {
                [10, 20, 30]
            } else {
                [255; 3]
            })
        });
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..8 {
            let view = backgrounds.view(&photo, &mut rng);
            assert_eq!(view.dimensions(), (VIEW_SIDE, VIEW_SIDE));
            // The 40 × 70 product at least 128 pixels tall, so 128 × 73 of its dark pixels.
            let dark = view.pixels().filter(|p| p.0.iter().all(|&c| c < 60)).count();
            assert!(dark > 8_000, "{dark}");
        }
    }
}

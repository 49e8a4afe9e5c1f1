//! A studio product photo cut away from its white backdrop and pasted onto another photo: how
//! `eval scenes` makes shoppers' photos and how a catalogue's kinds are learnt from its own
//! packshots seen on real backgrounds ([`crate::learn::kinds`]).

use image::{Rgb, RgbImage, Rgba, RgbaImage};

use crate::types::PhotoBox;

/// Near-white, as a studio background is.
fn is_backdrop(pixel: &Rgb<u8>) -> bool {
    pixel.0.iter().all(|&c| c >= 235)
}

/// The product without its studio background: near-white pixels joined to the photo's border
/// become transparent (white inside the product stays), cropped to what is left.
pub fn cut_out(photo: &RgbImage) -> RgbaImage {
    let width = photo.width();
    let (backdrop, (x0, y0, x1, y1)) = studio_backdrop(photo);
    RgbaImage::from_fn(x1 - x0, y1 - y0, |x, y| {
        let (sx, sy) = (x + x0, y + y0);
        let Rgb([r, g, b]) = *photo.get_pixel(sx, sy);
        let alpha = if backdrop[(sy * width + sx) as usize] { 0 } else { 255 };
        Rgba([r, g, b, alpha])
    })
}

/// Which pixels of a studio photo are its backdrop (near-white and joined to the border), and
/// the box of the rest (`x0, y0, x1, y1`; all of the photo, and no backdrop, when nothing is left).
pub fn studio_backdrop(photo: &RgbImage) -> (Vec<bool>, (u32, u32, u32, u32)) {
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
    (backdrop, (x0, y0, x1, y1))
}

/// Pastes `product` onto `scene` inside the columns `columns`, its height a random share (in
/// `height_share`) of the scene's (less if it would not fit), at a random place; its box.
pub fn paste(
    scene: &mut RgbImage,
    product: &RgbaImage,
    columns: (u32, u32),
    height_share: (f32, f32),
    rng: &mut fastrand::Rng,
) -> PhotoBox {
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
    PhotoBox {
        x0: x as f32,
        y0: y as f32,
        x1: (x + width) as f32,
        y1: (y + height) as f32,
    }
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
        let placed = paste(&mut scene, &product, (150, 300), (1.0 / 3.0, 0.5), &mut rng);
        let (x0, y0, x1, y1) = (placed.x0 as u32, placed.y0 as u32, placed.x1 as u32, placed.y1 as u32);
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

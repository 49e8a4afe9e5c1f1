//! Seeded data augmentation for training images: horizontal flip, rotation, brightness and
//! contrast, random resized crop. Each view is fully determined by (seed, image hash, view
//! number), so augmented features can be cached and reproduced.

use image::{Rgb, RgbImage};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augmentation {
    pub flip: bool,
    /// Largest rotation either way, in degrees.
    pub max_rotation_degrees: f32,
    /// Largest relative change of brightness and of contrast, e.g. 0.2 for ±20 %.
    pub max_brightness: f32,
    pub max_contrast: f32,
    /// Smallest share of the image area a random crop keeps (1 disables cropping).
    pub min_crop_area: f32,
}

impl Default for Augmentation {
    fn default() -> Self {
        Self {
            flip: true,
            max_rotation_degrees: 15.0,
            max_brightness: 0.2,
            max_contrast: 0.2,
            min_crop_area: 0.6,
        }
    }
}

impl Augmentation {
    /// Stored with cached features: a change of settings invalidates them.
    pub fn describe(&self) -> String {
        format!(
            "flip={};rot={};bright={};contrast={};crop>={}",
            self.flip, self.max_rotation_degrees, self.max_brightness, self.max_contrast, self.min_crop_area
        )
    }

    /// View number `view` of `image`, seeded by `seed` and the image's content hash.
    pub fn view(&self, image: &RgbImage, seed: u64, content_hash: &str, view: u32) -> RgbImage {
        let image_seed = u64::from_str_radix(&content_hash[..content_hash.len().min(16)], 16).unwrap_or(0);
        let mut rng = fastrand::Rng::with_seed(seed ^ image_seed ^ (u64::from(view) << 48));
        let mut out = self.random_crop(image, &mut rng);
        if self.flip && rng.bool() {
            image::imageops::flip_horizontal_in_place(&mut out);
        }
        let angle = (rng.f32() * 2.0 - 1.0) * self.max_rotation_degrees;
        if angle.abs() > 0.1 {
            out = rotate(&out, angle.to_radians());
        }
        let brightness = 1.0 + (rng.f32() * 2.0 - 1.0) * self.max_brightness;
        let contrast = 1.0 + (rng.f32() * 2.0 - 1.0) * self.max_contrast;
        adjust(&mut out, brightness, contrast);
        out
    }

    fn random_crop(&self, image: &RgbImage, rng: &mut fastrand::Rng) -> RgbImage {
        let (w, h) = image.dimensions();
        if self.min_crop_area >= 1.0 || w < 8 || h < 8 {
            return image.clone();
        }
        let area = self.min_crop_area + rng.f32() * (1.0 - self.min_crop_area);
        let aspect = (rng.f32() * 2.0 - 1.0) * (4.0f32 / 3.0).ln();
        let aspect = aspect.exp();
        let cw = ((w as f32 * h as f32 * area * aspect).sqrt().round() as u32).clamp(1, w);
        let ch = ((w as f32 * h as f32 * area / aspect).sqrt().round() as u32).clamp(1, h);
        let x = rng.u32(0..=w - cw);
        let y = rng.u32(0..=h - ch);
        image::imageops::crop_imm(image, x, y, cw, ch).to_image()
    }
}

/// Rotation about the centre with bilinear sampling; corners brought in are white, like a
/// studio background.
fn rotate(image: &RgbImage, radians: f32) -> RgbImage {
    let (w, h) = image.dimensions();
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    let (sin, cos) = radians.sin_cos();
    RgbImage::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
        let sx = cos * dx + sin * dy + cx - 0.5;
        let sy = -sin * dx + cos * dy + cy - 0.5;
        if sx < 0.0 || sy < 0.0 || sx > (w - 1) as f32 || sy > (h - 1) as f32 {
            return Rgb([255, 255, 255]);
        }
        let (x0, y0) = (sx.floor() as u32, sy.floor() as u32);
        let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
        let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
        let px = |x, y| image.get_pixel(x, y).0.map(f32::from);
        let (a, b, c, d) = (px(x0, y0), px(x1, y0), px(x0, y1), px(x1, y1));
        Rgb([0, 1, 2].map(|i| {
            let top = a[i] + (b[i] - a[i]) * fx;
            let bottom = c[i] + (d[i] - c[i]) * fx;
            (top + (bottom - top) * fy).round().clamp(0.0, 255.0) as u8
        }))
    })
}

fn adjust(image: &mut RgbImage, brightness: f32, contrast: f32) {
    let pixels = (image.width() * image.height()).max(1) as f32;
    let mean = image.pixels().flat_map(|p| p.0).map(f32::from).sum::<f32>() / (3.0 * pixels);
    for p in image.pixels_mut() {
        for v in &mut p.0 {
            *v = (((f32::from(*v) - mean) * contrast + mean) * brightness)
                .round()
                .clamp(0.0, 255.0) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient() -> RgbImage {
        RgbImage::from_fn(64, 48, |x, y| Rgb([(x * 4) as u8, (y * 5) as u8, 128]))
    }

    #[test]
    fn views_are_reproducible_and_differ_between_view_numbers() {
        let aug = Augmentation::default();
        let img = gradient();
        assert_eq!(aug.view(&img, 7, "ab12", 0), aug.view(&img, 7, "ab12", 0));
        assert_ne!(aug.view(&img, 7, "ab12", 0), aug.view(&img, 7, "ab12", 1));
        assert_ne!(aug.view(&img, 7, "ab12", 0), aug.view(&img, 8, "ab12", 0));
    }

    #[test]
    fn a_quarter_turn_moves_pixels_where_expected() {
        let img = RgbImage::from_fn(5, 5, |x, y| {
            if (x, y) == (4, 2) {
                Rgb([0, 0, 0])
            } else {
                Rgb([200, 200, 200])
            }
        });
        let turned = rotate(&img, std::f32::consts::FRAC_PI_2);
        // Sampling rotates the pixel grid clockwise on screen (y grows downwards).
        assert_eq!(turned.get_pixel(2, 4).0, [0, 0, 0]);
        assert_eq!(rotate(&img, 0.0), img);
    }

    #[test]
    fn disabled_augmentation_only_keeps_the_image() {
        let aug = Augmentation {
            flip: false,
            max_rotation_degrees: 0.0,
            max_brightness: 0.0,
            max_contrast: 0.0,
            min_crop_area: 1.0,
        };
        assert_eq!(aug.view(&gradient(), 1, "00", 3), gradient());
    }
}

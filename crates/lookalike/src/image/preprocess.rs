//! The exact input transform the weights were trained with.
//!
//! Shorter side resized to 256/224 of the crop (bilinear with antialiasing, as PIL does), centre
//! crop, then `(x - 127) / 128` per RGB channel, laid out CHW. The resize only computes the crop:
//! the resampler is given the crop's window in the source, so the work and memory are those of a
//! 224 × 224 output whatever the image's shape (a 12,000 × 1 strip resized whole would be
//! 3 million × 256 pixels). Indexing and querying both go through [`Preprocessing::tensor`], so
//! they can never disagree.

use fast_image_resize::{images::Image, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

/// The input transform of a backbone; `describe()` is stored in the catalogue manifest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocessing {
    pub resize_shorter: u32,
    pub crop: u32,
    pub mean: f32,
    pub scale: f32,
}

impl Preprocessing {
    /// The TF EfficientNet-Lite convention: resize to crop/0.875, centre crop, (x-127)/128.
    pub fn for_input(crop: u32) -> Self {
        Self {
            resize_shorter: (crop as f32 / 0.875).round() as u32,
            crop,
            mean: 127.0,
            scale: 128.0,
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "rgb;resize-shorter={};bilinear-antialias;center-crop={};(x-{})/{};chw",
            self.resize_shorter, self.crop, self.mean, self.scale
        )
    }

    pub fn tensor_len(&self) -> usize {
        3 * (self.crop * self.crop) as usize
    }

    /// Writes the network input for `image` into `out` (length [`Self::tensor_len`]).
    pub fn tensor(&self, image: &RgbImage, out: &mut [f32]) {
        assert_eq!(out.len(), self.tensor_len());
        let cropped = self.resize_and_crop(image);
        let plane = (self.crop * self.crop) as usize;
        let (red, rest) = out.split_at_mut(plane);
        let (green, blue) = rest.split_at_mut(plane);
        // A table lookup per sample instead of a subtraction and a division: a tenth of the
        // preprocessing time of a photo.
        let value: [f32; 256] = std::array::from_fn(|v| (v as f32 - self.mean) / self.scale);
        for (((px, r), g), b) in cropped.as_raw().chunks_exact(3).zip(red).zip(green).zip(blue) {
            (*r, *g, *b) = (value[px[0] as usize], value[px[1] as usize], value[px[2] as usize]);
        }
    }

    pub fn tensor_of(&self, image: &RgbImage) -> Vec<f32> {
        let mut out = vec![0.0; self.tensor_len()];
        self.tensor(image, &mut out);
        out
    }

    /// The centred `crop` square of the image resized so its shorter side is `resize_shorter`
    /// (the longer side rounded), computed straight from the source window it covers.
    pub fn resize_and_crop(&self, image: &RgbImage) -> RgbImage {
        let (w, h) = image.dimensions();
        let window = self.crop_window(w, h);
        let mut dst = Image::new(self.crop, self.crop, PixelType::U8x3);
        let options = ResizeOptions::new()
            .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
            .crop(window[0], window[1], window[2], window[3]);
        Resizer::new()
            .resize(image, &mut dst, &options)
            .expect("an RGB source and destination with a window inside the source");
        RgbImage::from_raw(self.crop, self.crop, dst.into_vec()).expect("resizer output matches its dimensions")
    }

    /// The source window (left, top, width, height in source pixels) that becomes the crop.
    fn crop_window(&self, w: u32, h: u32) -> [f64; 4] {
        let short = f64::from(w.min(h));
        let scale = f64::from(self.resize_shorter) / short;
        let resized = |side: u32| ((f64::from(side) * scale).round() as u64).max(u64::from(self.crop));
        let (rw, rh) = if w <= h {
            (u64::from(self.resize_shorter), resized(h))
        } else {
            (resized(w), u64::from(self.resize_shorter))
        };
        let (sx, sy) = (f64::from(w) / rw as f64, f64::from(h) / rh as f64);
        let crop = u64::from(self.crop);
        [
            centre_offset(rw, crop) as f64 * sx,
            centre_offset(rh, crop) as f64 * sy,
            crop as f64 * sx,
            crop as f64 * sy,
        ]
    }
}

/// The reference floors the centre offset: an odd excess leaves the extra row at the bottom.
fn centre_offset(size: u64, crop: u64) -> u64 {
    (size - crop) / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transform as first written: resize the whole image, then cut the crop out of it.
    fn resize_whole_then_crop(p: &Preprocessing, image: &RgbImage) -> RgbImage {
        let (w, h) = image.dimensions();
        let scale = p.resize_shorter as f64 / w.min(h) as f64;
        let (rw, rh) = if w <= h {
            (p.resize_shorter, ((h as f64 * scale).round() as u32).max(p.crop))
        } else {
            (((w as f64 * scale).round() as u32).max(p.crop), p.resize_shorter)
        };
        let mut dst = Image::new(rw, rh, PixelType::U8x3);
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        Resizer::new().resize(image, &mut dst, &options).unwrap();
        let resized = RgbImage::from_raw(rw, rh, dst.into_vec()).unwrap();
        let (left, top) = (
            centre_offset(rw.into(), p.crop.into()) as u32,
            centre_offset(rh.into(), p.crop.into()) as u32,
        );
        image::imageops::crop_imm(&resized, left, top, p.crop, p.crop).to_image()
    }

    fn textured(w: u32, h: u32) -> RgbImage {
        let mut rng = fastrand::Rng::with_seed(u64::from(w * 31 + h));
        RgbImage::from_fn(w, h, |x, y| {
            let noise = rng.u8(0..40);
            image::Rgb([
                ((x * 255) / w.max(1)) as u8 / 2 + noise,
                ((y * 255) / h.max(1)) as u8 / 2 + noise,
                ((x ^ y) & 0xFF) as u8 / 2,
            ])
        })
    }

    #[test]
    fn centre_offset_floors_like_the_reference() {
        assert_eq!(centre_offset(224, 224), 0);
        assert_eq!(centre_offset(263, 224), 19);
        assert_eq!(centre_offset(256, 224), 16);
    }

    #[test]
    fn lite_preprocessing_resizes_to_256_and_crops_224() {
        let p = Preprocessing::for_input(224);
        assert_eq!(p.resize_shorter, 256);
        let img = RgbImage::from_pixel(640, 480, image::Rgb([127, 255, 0]));
        let t = p.tensor_of(&img);
        assert_eq!(t.len(), 3 * 224 * 224);
        assert_eq!(t[0], 0.0);
        assert!((t[224 * 224] - 1.0).abs() < 1e-6);
        assert!((t[2 * 224 * 224] + 127.0 / 128.0).abs() < 1e-6);
    }

    #[test]
    fn resizing_only_the_window_matches_resizing_the_whole_image() {
        let p = Preprocessing::for_input(224);
        for (w, h) in [
            (640, 480),
            (480, 640),
            (645, 800),
            (257, 256),
            (300, 1001),
            (224, 224),
            (100, 60),
            (3, 500),
        ] {
            let image = textured(w, h);
            let window = p.resize_and_crop(&image);
            let whole = resize_whole_then_crop(&p, &image);
            let worst = window
                .as_raw()
                .iter()
                .zip(whole.as_raw())
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            assert!(worst <= 1, "{w}x{h}: differs by {worst}");
        }
    }

    #[test]
    fn extreme_aspect_ratios_cost_only_the_crop() {
        let p = Preprocessing::for_input(224);
        for (w, h) in [(12_000, 1), (1, 12_000), (12_000, 2)] {
            let image = textured(w, h);
            assert_eq!(p.resize_and_crop(&image).dimensions(), (224, 224));
        }
    }
}

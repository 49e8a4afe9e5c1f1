//! Image decoding and the exact input transform the weights were trained with.
//!
//! Shorter side resized to 256/224 of the crop (bilinear with antialiasing, as
//! PIL does), centre crop, then `(x - 127) / 128` per RGB channel, laid out CHW.
//! Indexing and querying both go through [`Preprocessing::tensor`], so they can
//! never disagree.

pub mod augment;

use std::io::Cursor;
use std::path::Path;

use fast_image_resize::{images::Image, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};

/// Largest accepted image side, in pixels: larger files are treated as decompression bombs.
pub const MAX_IMAGE_SIDE: u32 = 12_000;
/// Largest decoder allocation, in bytes.
pub const MAX_DECODE_BYTES: u64 = 512 * 1024 * 1024;

/// Why an image could not be used. Displayed as the one-line reason in skip reports and HTTP errors.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read file: {0}")]
    Unreadable(#[from] std::io::Error),
    #[error("file is empty")]
    Empty,
    #[error("not an image (unrecognised format)")]
    NotAnImage,
    #[error("image too large: {0} (limits: {MAX_IMAGE_SIDE} pixels per side, {mib} MiB decoded)", mib = MAX_DECODE_BYTES >> 20)]
    TooLarge(String),
    #[error("cannot decode image: {0}")]
    Undecodable(String),
}

/// Decodes an encoded image (any supported format), applying its EXIF orientation
/// and refusing decompression bombs before allocating their pixels.
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(ImageError::Unreadable)?;
    match reader.format() {
        None => return Err(ImageError::NotAnImage),
        Some(image::ImageFormat::Jpeg) if !jpeg_has_end_of_image(bytes) => {
            return Err(ImageError::Undecodable(
                "truncated JPEG (no end-of-image marker)".into(),
            ))
        }
        Some(_) => {}
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(classify)?;
    let (width, height) = decoder.dimensions();
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(ImageError::TooLarge(format!("{width}x{height} pixels")));
    }
    let orientation = decoder.orientation().ok();
    let mut image = DynamicImage::from_decoder(decoder).map_err(classify)?;
    if let Some(orientation) = orientation {
        image.apply_orientation(orientation);
    }
    Ok(flatten_on_white(image))
}

/// JPEG decoders fill a truncated scan with grey instead of failing; a complete file has an
/// end-of-image marker after its first start-of-scan. (Entropy-coded data never holds a bare
/// 0xFF 0xD9, and data appended after the image, as in motion photos, does not matter.)
fn jpeg_has_end_of_image(bytes: &[u8]) -> bool {
    let Some(scan) = bytes.windows(2).position(|w| w == [0xFF, 0xDA]) else {
        return false;
    };
    bytes[scan..].windows(2).any(|w| w == [0xFF, 0xD9])
}

pub fn load_image(path: &Path) -> Result<RgbImage, ImageError> {
    decode_image(&std::fs::read(path)?)
}

fn classify(err: image::ImageError) -> ImageError {
    match err {
        image::ImageError::Limits(e) => ImageError::TooLarge(e.to_string()),
        image::ImageError::Unsupported(_) => ImageError::NotAnImage,
        other => ImageError::Undecodable(other.to_string()),
    }
}

/// Transparent product cut-outs are shown on white in shops; composite them the same way.
fn flatten_on_white(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.into_rgb8();
    }
    let rgba = image.into_rgba8();
    let (w, h) = rgba.dimensions();
    RgbImage::from_fn(w, h, |x, y| {
        let p = rgba.get_pixel(x, y).0;
        let a = p[3] as f32 / 255.0;
        image::Rgb([0, 1, 2].map(|c| (p[c] as f32 * a + 255.0 * (1.0 - a)).round() as u8))
    })
}

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
        for (i, px) in cropped.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = (px.0[c] as f32 - self.mean) / self.scale;
            }
        }
    }

    pub fn tensor_of(&self, image: &RgbImage) -> Vec<f32> {
        let mut out = vec![0.0; self.tensor_len()];
        self.tensor(image, &mut out);
        out
    }

    /// Shorter side to `resize_shorter` (longer side rounded), then the centred `crop` square.
    pub fn resize_and_crop(&self, image: &RgbImage) -> RgbImage {
        let (w, h) = image.dimensions();
        let short = w.min(h) as f64;
        let scale = self.resize_shorter as f64 / short;
        let (rw, rh) = if w <= h {
            (self.resize_shorter, ((h as f64 * scale).round() as u32).max(self.crop))
        } else {
            (((w as f64 * scale).round() as u32).max(self.crop), self.resize_shorter)
        };
        let src = Image::from_vec_u8(w, h, image.as_raw().clone(), PixelType::U8x3)
            .expect("RgbImage buffer matches its dimensions");
        let mut dst = Image::new(rw, rh, PixelType::U8x3);
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        Resizer::new()
            .resize(&src, &mut dst, &options)
            .expect("same pixel type on both sides");
        let resized = RgbImage::from_raw(rw, rh, dst.into_vec()).expect("resizer output matches its dimensions");
        let left = centre_offset(rw, self.crop);
        let top = centre_offset(rh, self.crop);
        image::imageops::crop_imm(&resized, left, top, self.crop, self.crop).to_image()
    }
}

/// The reference floors the centre offset: an odd excess leaves the extra row at the bottom.
fn centre_offset(size: u32, crop: u32) -> u32 {
    (size - crop) / 2
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn bad_bytes_are_classified() {
        assert!(matches!(decode_image(b""), Err(ImageError::Empty)));
        assert!(matches!(
            decode_image(b"hello, not an image"),
            Err(ImageError::NotAnImage)
        ));
        let mut png = Vec::new();
        RgbImage::new(8, 8)
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert!(matches!(
            decode_image(&png[..png.len() / 2]),
            Err(ImageError::Undecodable(_))
        ));
    }
}

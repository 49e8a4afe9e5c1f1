//! Bytes -> RGB pixels, with the cost known and bounded before any pixel is decoded.
//!
//! Every format's header tells its size, so what a decode will allocate is checked against
//! [`MAX_DECODED_BYTES`] first: a 100-byte PNG that declares 12,000 × 12,000 RGBA16 is refused
//! in microseconds instead of taking a gigabyte. Big JPEGs, the usual big photos, are decoded
//! at 1/2, 1/4 or 1/8 of their size in the DCT domain, keeping at least [`WORKING_SIDE`] pixels
//! on the shorter side: far more than the network's input needs, at a fraction of the work.

use std::borrow::Cow;
use std::io::Cursor;
use std::path::Path;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use super::jpeg::{self, JpegShape};
use crate::types::PhotoBox;

/// Largest accepted image side, in pixels.
pub const MAX_IMAGE_SIDE: u32 = 12_000;
/// Largest decode, in bytes of decoded pixels (or of DCT coefficients for a progressive JPEG):
/// 22 megapixels of RGB, 16 of RGBA, 8 of 16-bit RGBA. Two decodes per core stay far below a
/// gigabyte, and one takes well under a second here.
pub const MAX_DECODED_BYTES: u64 = 64 * 1024 * 1024;
/// Most scans a progressive JPEG may have; each walks all of its coefficients again.
pub const MAX_JPEG_SCANS: u32 = 64;
/// Big JPEGs are decoded reduced, keeping at least this many pixels on the shorter side.
pub const WORKING_SIDE: u32 = 1024;
/// Largest image file read from disk (uploads have the server's own, smaller limit).
pub const MAX_IMAGE_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Why an image could not be used. Displayed as the one-line reason in skip reports and HTTP errors.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read file: {0}")]
    Unreadable(#[from] std::io::Error),
    #[error("cannot read file: not a regular file")]
    NotAFile,
    #[error("file is empty")]
    Empty,
    #[error("not an image (unrecognised format)")]
    NotAnImage,
    #[error("image too large: {0}")]
    TooLarge(String),
    #[error("cannot decode image: {0}")]
    Undecodable(String),
}

impl From<crate::files::ReadError> for ImageError {
    fn from(err: crate::files::ReadError) -> Self {
        match err {
            crate::files::ReadError::Io(e) => Self::Unreadable(e),
            crate::files::ReadError::NotRegular => Self::NotAFile,
            crate::files::ReadError::TooLarge { limit } => {
                Self::TooLarge(format!("the file is over {} MiB", limit >> 20))
            }
        }
    }
}

/// Reads an image file (regular files only, at most [`MAX_IMAGE_FILE_BYTES`]) and decodes it.
pub fn load_image(path: &Path) -> Result<RgbImage, ImageError> {
    decode_image(&read_image_file(path)?)
}

/// The bytes of an image file: regular files only, at most [`MAX_IMAGE_FILE_BYTES`].
pub fn read_image_file(path: &Path) -> Result<Vec<u8>, ImageError> {
    Ok(crate::files::read_regular_file(path, MAX_IMAGE_FILE_BYTES)?)
}

/// Decodes an encoded image (any supported format) into RGB with its EXIF orientation applied
/// and transparency composited on white, refusing before allocation what would cost more than
/// [`MAX_DECODED_BYTES`]. JPEGs with a shorter side of at least twice [`WORKING_SIDE`] come back
/// reduced (by 2, 4 or 8) in the DCT domain.
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage, ImageError> {
    decode_photo(bytes).map(|photo| photo.pixels)
}

/// A decoded photo and its size in its own pixels (after EXIF orientation), which the decoded
/// pixels may be a reduction of.
pub struct Photo {
    pub pixels: RgbImage,
    pub width: u32,
    pub height: u32,
}

impl Photo {
    /// What the network is shown for `region` of the photo (all of it: `None`): the region's
    /// pixels centred on a white square. The network sees the centre square of what it is given,
    /// which would cut the ends off a tall or wide product, and catalogue photos are products on
    /// white (`eval scenes`, true box: Recall@5 0.725 padded, 0.575 cropped, 0.560 squared with
    /// what is around it). A region that keeps nothing of the photo is invalid input.
    pub fn region(&self, region: Option<&PhotoBox>) -> crate::error::Result<Cow<'_, RgbImage>> {
        Ok(match self.crop(region)? {
            Cow::Owned(cropped) => Cow::Owned(pad_to_white_square(&cropped)),
            whole => whole,
        })
    }

    /// The network's input for each of `parts` (`None`: all of it, see [`Self::region`]), one
    /// after another: a batch.
    pub fn batch(
        &self,
        preprocessing: &super::Preprocessing,
        parts: &[Option<&PhotoBox>],
    ) -> crate::error::Result<Vec<f32>> {
        let mut tensor = Vec::with_capacity(parts.len() * preprocessing.tensor_len());
        for part in parts {
            let pixels = self.region(*part)?;
            tensor.extend(preprocessing.tensor_of(&pixels));
        }
        Ok(tensor)
    }

    /// The photo with its pixels reduced so that their longer side is at most `longest`: enough
    /// for the network to read any half of it, and small to keep while its parts are searched.
    /// Boxes still count in the photo's own pixels.
    pub fn reduced(self, longest: u32) -> Self {
        let (w, h) = self.pixels.dimensions();
        if w.max(h) <= longest {
            return self;
        }
        let scale = f64::from(longest) / f64::from(w.max(h));
        let (rw, rh) = (
            ((f64::from(w) * scale).round() as u32).max(1),
            ((f64::from(h) * scale).round() as u32).max(1),
        );
        Self {
            pixels: image::imageops::resize(&self.pixels, rw, rh, image::imageops::FilterType::Triangle),
            ..self
        }
    }

    /// The pixels of `region` (in the photo's own pixels; the part outside the photo dropped),
    /// or all of them. A region that keeps nothing of the photo is invalid input.
    pub fn crop(&self, region: Option<&PhotoBox>) -> crate::error::Result<Cow<'_, RgbImage>> {
        let Some(region) = region else {
            return Ok(Cow::Borrowed(&self.pixels));
        };
        let (x0, y0, x1, y1) = region.within(self.width, self.height)?;
        // From the photo's pixels to the decoded ones (the same, or a reduction by 2, 4 or 8).
        let (sx, sy) = (
            f64::from(self.pixels.width()) / f64::from(self.width),
            f64::from(self.pixels.height()) / f64::from(self.height),
        );
        let left = ((f64::from(x0) * sx).floor() as u32).min(self.pixels.width() - 1);
        let top = ((f64::from(y0) * sy).floor() as u32).min(self.pixels.height() - 1);
        let right = ((f64::from(x1) * sx).ceil() as u32).clamp(left + 1, self.pixels.width());
        let bottom = ((f64::from(y1) * sy).ceil() as u32).clamp(top + 1, self.pixels.height());
        Ok(Cow::Owned(
            image::imageops::crop_imm(&self.pixels, left, top, right - left, bottom - top).to_image(),
        ))
    }
}

fn pad_to_white_square(image: &RgbImage) -> RgbImage {
    centred_on_white(image, image.width().max(image.height()))
}

/// `image` centred on a white square of `side` pixels (at least its longer side).
pub(crate) fn centred_on_white(image: &RgbImage, side: u32) -> RgbImage {
    let mut canvas = RgbImage::from_pixel(side, side, image::Rgb([255, 255, 255]));
    let (x, y) = ((side - image.width()) / 2, (side - image.height()) / 2);
    image::imageops::replace(&mut canvas, image, i64::from(x), i64::from(y));
    canvas
}

/// [`decode_image`], with the photo's own size.
pub fn decode_photo(bytes: &[u8]) -> Result<Photo, ImageError> {
    // A decoder bug on one hostile file must not take an index run or a server thread with it.
    std::panic::catch_unwind(|| decode_unguarded(bytes))
        .unwrap_or_else(|_| Err(ImageError::Undecodable("the decoder failed on this file".into())))
}

fn decode_unguarded(bytes: &[u8]) -> Result<Photo, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let format = image::guess_format(bytes).map_err(|_| ImageError::NotAnImage)?;
    let jpeg = match format {
        ImageFormat::Jpeg => Some(jpeg::shape(bytes)?),
        _ => None,
    };
    if let Some(shape) = jpeg.filter(|s| s.scans > MAX_JPEG_SCANS) {
        return Err(ImageError::TooLarge(format!(
            "a JPEG of {} scans (limit: {MAX_JPEG_SCANS})",
            shape.scans
        )));
    }
    let (rgb, orientation) = match jpeg {
        Some(shape) if jpeg::decodes_directly(&shape) => decode_jpeg(bytes, &shape)?,
        _ => decode_through_image_crate(bytes, format, jpeg)?,
    };
    // Only a JPEG comes back reduced; its header has the size it was taken at.
    let (mut width, mut height) = jpeg.map_or(rgb.dimensions(), |shape| (shape.width, shape.height));
    let mut image = DynamicImage::ImageRgb8(rgb);
    if let Some(orientation) = orientation {
        image.apply_orientation(orientation);
        if matches!(
            orientation,
            Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH
        ) {
            (width, height) = (height, width);
        }
    }
    Ok(Photo {
        pixels: image.into_rgb8(),
        width,
        height,
    })
}

/// 8-bit grey and colour JPEGs, the usual photo: reduced in the DCT domain when big.
fn decode_jpeg(bytes: &[u8], shape: &JpegShape) -> Result<(RgbImage, Option<Orientation>), ImageError> {
    check_sides(shape.width, shape.height)?;
    // A progressive JPEG holds all its DCT coefficients, at full size, whatever the output size.
    let coefficient_bytes = shape.held_coefficient_bytes();
    let reduction = jpeg_reduction(shape);
    if reduction > 1 {
        check_cost("DCT coefficients", coefficient_bytes)?;
        return jpeg::decode_reduced(bytes, shape, reduction);
    }
    let pixel_bytes = u64::from(shape.width) * u64::from(shape.height) * 3;
    check_cost(
        &format!("{}x{} RGB pixels", shape.width, shape.height),
        pixel_bytes.max(coefficient_bytes),
    )?;
    jpeg::decode_full(bytes, shape)
}

/// Every other image (PNG, WebP, GIF, BMP, TIFF, CMYK or 12-bit JPEG), with the image crate's own
/// limits on top of the cost checked from the header.
fn decode_through_image_crate(
    bytes: &[u8],
    format: ImageFormat,
    jpeg: Option<JpegShape>,
) -> Result<(RgbImage, Option<Orientation>), ImageError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(classify)?;
    let (width, height) = decoder.dimensions();
    check_sides(width, height)?;
    let orientation = decoder.orientation().ok();
    let coefficient_bytes = jpeg.map_or(0, |s| s.held_coefficient_bytes());
    check_cost(
        &format!("{width}x{height} {:?} pixels", decoder.color_type()),
        decoder.total_bytes().max(coefficient_bytes),
    )?;
    let rgb = flatten_on_white(DynamicImage::from_decoder(decoder).map_err(classify)?);
    Ok((rgb, orientation))
}

fn check_sides(width: u32, height: u32) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::Undecodable(format!("the image is {width}x{height} pixels")));
    }
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(ImageError::TooLarge(format!(
            "{width}x{height} pixels (limit: {MAX_IMAGE_SIDE} per side)"
        )));
    }
    Ok(())
}

fn check_cost(what: &str, bytes: u64) -> Result<(), ImageError> {
    if bytes > MAX_DECODED_BYTES {
        return Err(ImageError::TooLarge(format!(
            "decoding needs {} MiB for {what} (limit: {} MiB)",
            bytes.div_ceil(1 << 20),
            MAX_DECODED_BYTES >> 20
        )));
    }
    Ok(())
}

/// How much to reduce a JPEG in the DCT domain: the most (of 2, 4, 8) that keeps the shorter side
/// at least [`WORKING_SIDE`].
fn jpeg_reduction(shape: &JpegShape) -> u32 {
    let shorter = shape.width.min(shape.height);
    [8, 4, 2].into_iter().find(|r| shorter / r >= WORKING_SIDE).unwrap_or(1)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn png(image: &DynamicImage) -> Vec<u8> {
        let mut out = Vec::new();
        image.write_to(&mut Cursor::new(&mut out), ImageFormat::Png).unwrap();
        out
    }

    #[test]
    fn bad_bytes_are_classified() {
        assert!(matches!(decode_image(b""), Err(ImageError::Empty)));
        assert!(matches!(
            decode_image(b"hello, not an image"),
            Err(ImageError::NotAnImage)
        ));
        let bytes = png(&DynamicImage::new_rgb8(8, 8));
        assert!(matches!(
            decode_image(&bytes[..bytes.len() / 2]),
            Err(ImageError::Undecodable(_))
        ));
    }

    #[test]
    fn alpha_is_composited_on_white() {
        let mut rgba = image::RgbaImage::from_pixel(4, 4, image::Rgba([0, 0, 0, 0]));
        rgba.put_pixel(0, 0, image::Rgba([0, 0, 0, 255]));
        let rgb = decode_image(&png(&DynamicImage::ImageRgba8(rgba))).unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(rgb.get_pixel(1, 1).0, [255, 255, 255]);
    }

    #[test]
    fn the_cost_is_checked_before_decoding() {
        // 5000 x 5000 RGBA16 is 200 MB decoded: refused from its header.
        let bytes = super::super::hostile::png_header_only(5000, 5000, 16, 6);
        let err = decode_image(&bytes).unwrap_err();
        assert!(matches!(err, ImageError::TooLarge(_)), "{err}");
        assert!(err.to_string().contains("MiB"), "{err}");
    }

    /// `jpeg` with an EXIF segment holding `orientation` inserted after its start-of-image marker.
    fn with_exif_orientation(jpeg: &[u8], orientation: u8) -> Vec<u8> {
        let mut exif = b"Exif\0\0MM\0\x2a\0\0\0\x08".to_vec();
        // One IFD entry: tag 0x0112 (orientation), type SHORT, count 1, the value; no next IFD.
        exif.extend([0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, orientation, 0, 0, 0, 0, 0, 0]);
        let length = u16::try_from(exif.len() + 2).unwrap().to_be_bytes();
        let mut out = jpeg[..2].to_vec();
        out.extend([0xFF, 0xE1, length[0], length[1]]);
        out.extend(exif);
        out.extend(&jpeg[2..]);
        out
    }

    #[test]
    fn exif_orientation_is_applied_to_jpegs_decoded_full_and_reduced() {
        // Left half black, right half white; orientation 6 turns the photo a quarter clockwise,
        // so the black half comes out on top.
        for (width, height) in [(64, 48), (4096, 2048)] {
            let image = RgbImage::from_fn(width, height, |x, _| {
                image::Rgb([if x < width / 2 { 0 } else { 255 }; 3])
            });
            let mut bytes = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
                .encode_image(&image)
                .unwrap();
            let plain = decode_image(&bytes).unwrap();
            let turned = decode_image(&with_exif_orientation(&bytes, 6)).unwrap();
            assert_eq!(turned.dimensions(), (plain.height(), plain.width()), "{width}x{height}");
            let (w, h) = turned.dimensions();
            assert!(
                turned.get_pixel(w / 2, h / 4).0[0] < 30,
                "{width}x{height}: top is black"
            );
            assert!(
                turned.get_pixel(w / 2, 3 * h / 4).0[0] > 225,
                "{width}x{height}: bottom is white"
            );
            // A box is in the turned photo's own pixels, whatever size it was decoded at.
            let photo = decode_photo(&with_exif_orientation(&bytes, 6)).unwrap();
            assert_eq!((photo.width, photo.height), (height, width));
            let (full_w, full_h) = (photo.width as f32, photo.height as f32);
            for (half, dark) in [(0.0, true), (0.5, false)] {
                let region = PhotoBox::new(0.0, full_h * half, full_w, full_h * (half + 0.5)).unwrap();
                let cropped = photo.crop(Some(&region)).unwrap();
                let (cw, ch) = cropped.dimensions();
                assert!(
                    (cw, ch) == (w, h / 2) || (cw, ch) == (w, h / 2 + 1),
                    "{width}x{height}: {cw}x{ch}"
                );
                let mean = cropped.pixels().map(|p| f64::from(p.0[0])).sum::<f64>() / f64::from(cw * ch);
                assert_eq!(mean < 40.0, dark, "{width}x{height}: half {half}: mean {mean}");
            }
            let outside = PhotoBox::new(full_w + 1.0, 0.0, full_w + 9.0, 5.0).unwrap();
            assert!(matches!(
                photo.crop(Some(&outside)),
                Err(crate::error::Error::InvalidInput(_))
            ));
        }
    }

    #[test]
    fn big_jpegs_decode_reduced() {
        let image = RgbImage::from_fn(2100, 2400, |x, y| image::Rgb([(x / 9) as u8, (y / 10) as u8, 128]));
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 85)
            .encode_image(&image)
            .unwrap();
        assert_eq!(decode_image(&bytes).unwrap().dimensions(), (1050, 1200));
    }
}

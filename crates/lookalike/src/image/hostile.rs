//! Hostile image files, made on demand: headers that lie about the size, extreme aspect ratios,
//! huge GIF screens. The decoder's tests, the HTTP tests and `lookalike bench abuse` feed these
//! to lookalike; nothing here is used to read real images.

use std::io::{Cursor, Write};

use image::{DynamicImage, ImageFormat, RgbImage};

/// The formats lookalike decodes, each with a file built by [`encode`].
pub const FORMATS: [ImageFormat; 6] = [
    ImageFormat::Png,
    ImageFormat::Jpeg,
    ImageFormat::Gif,
    ImageFormat::WebP,
    ImageFormat::Tiff,
    ImageFormat::Bmp,
];

/// `image` written in `format` with the `image` crate's own encoder.
pub fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let image = match format {
        // These encoders take 8-bit RGB(A) only.
        ImageFormat::Jpeg => DynamicImage::ImageRgb8(image.to_rgb8()),
        ImageFormat::Gif | ImageFormat::WebP | ImageFormat::Bmp => DynamicImage::ImageRgba8(image.to_rgba8()),
        _ => image.clone(),
    };
    let mut out = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut out), format)
        .expect("encoding to memory");
    out
}

/// A copy of `bytes` whose header declares `width` × `height` while the data stays the same
/// (`None` if the file is not laid out as [`encode`] writes it).
pub fn with_dimensions(bytes: &[u8], format: ImageFormat, width: u32, height: u32) -> Option<Vec<u8>> {
    let mut out = bytes.to_vec();
    match format {
        ImageFormat::Png => {
            // IHDR is the first chunk: length (4), type (4), width, height, ..., then its CRC.
            out.get_mut(16..24)?
                .copy_from_slice(&[width.to_be_bytes(), height.to_be_bytes()].concat());
            let crc = crc32fast::hash(out.get(12..29)?);
            out.get_mut(29..33)?.copy_from_slice(&crc.to_be_bytes());
        }
        ImageFormat::Gif => {
            // The logical screen; frames keep their own (small) size.
            let (w, h) = (u16::try_from(width).ok()?, u16::try_from(height).ok()?);
            out.get_mut(6..10)?
                .copy_from_slice(&[w.to_le_bytes(), h.to_le_bytes()].concat());
        }
        ImageFormat::Jpeg => {
            let sof = find_jpeg_marker(&out, |m| matches!(m, 0xC0..=0xC2))?;
            let (w, h) = (u16::try_from(width).ok()?, u16::try_from(height).ok()?);
            out.get_mut(sof + 5..sof + 9)?
                .copy_from_slice(&[h.to_be_bytes(), w.to_be_bytes()].concat());
        }
        ImageFormat::Bmp => {
            out.get_mut(18..26)?.copy_from_slice(
                &[
                    i32::try_from(width).ok()?.to_le_bytes(),
                    i32::try_from(height).ok()?.to_le_bytes(),
                ]
                .concat(),
            );
        }
        ImageFormat::WebP => {
            // Lossless: after "VP8L", the chunk size and the 0x2F signature come 14-bit
            // width - 1 and height - 1, then alpha and version bits.
            let at = out.windows(4).position(|w| w == b"VP8L")? + 9;
            let (w, h) = (width.checked_sub(1)?, height.checked_sub(1)?);
            if w >= 1 << 14 || h >= 1 << 14 {
                return None;
            }
            let old = u32::from_le_bytes(out.get(at..at + 4)?.try_into().ok()?);
            let packed = (old & !((1 << 28) - 1)) | w | (h << 14);
            out[at..at + 4].copy_from_slice(&packed.to_le_bytes());
            if let Some(vp8x) = out.windows(4).position(|w| w == b"VP8X") {
                let canvas = [(w).to_le_bytes(), h.to_le_bytes()];
                out.get_mut(vp8x + 12..vp8x + 15)?.copy_from_slice(&canvas[0][..3]);
                out.get_mut(vp8x + 15..vp8x + 18)?.copy_from_slice(&canvas[1][..3]);
            }
        }
        ImageFormat::Tiff => {
            // Little-endian ("II"): the first IFD's ImageWidth (256) and ImageLength (257) tags.
            if out.get(..2)? != b"II" {
                return None;
            }
            let ifd = u32::from_le_bytes(out.get(4..8)?.try_into().ok()?) as usize;
            let entries = u16::from_le_bytes(out.get(ifd..ifd + 2)?.try_into().ok()?) as usize;
            for e in 0..entries {
                let at = ifd + 2 + 12 * e;
                let tag = u16::from_le_bytes(out.get(at..at + 2)?.try_into().ok()?);
                let kind = u16::from_le_bytes(out.get(at + 2..at + 4)?.try_into().ok()?);
                let value = match tag {
                    256 => width,
                    257 => height,
                    _ => continue,
                };
                match kind {
                    3 => out[at + 8..at + 10].copy_from_slice(&u16::try_from(value).ok()?.to_le_bytes()),
                    4 => out[at + 8..at + 12].copy_from_slice(&value.to_le_bytes()),
                    _ => return None,
                }
            }
        }
        _ => return None,
    }
    Some(out)
}

/// Offset of the first JPEG marker segment whose marker byte passes `is`.
fn find_jpeg_marker(bytes: &[u8], is: impl Fn(u8) -> bool) -> Option<usize> {
    let mut i = 2;
    while i + 4 <= bytes.len() {
        if bytes[i] != 0xFF {
            return None;
        }
        if is(bytes[i + 1]) {
            return Some(i);
        }
        i += 2 + usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
    }
    None
}

/// A JPEG whose frame is marked progressive (SOF2) and declares `width` × `height`.
pub fn progressive_jpeg_header(width: u16, height: u16) -> Vec<u8> {
    let mut bytes = encode(&DynamicImage::ImageRgb8(RgbImage::new(16, 16)), ImageFormat::Jpeg);
    let sof = find_jpeg_marker(&bytes, |m| m == 0xC0).expect("a baseline frame");
    bytes[sof + 1] = 0xC2;
    bytes[sof + 5..sof + 9].copy_from_slice(&[height.to_be_bytes(), width.to_be_bytes()].concat());
    bytes
}

/// A PNG declaring `width` × `height` at `bit_depth` and `color_type` (PNG codes: 2 RGB,
/// 6 RGBA) followed by a few bytes of image data only.
pub fn png_header_only(width: u32, height: u32, bit_depth: u8, color_type: u8) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[bit_depth, color_type, 0, 0, 0]);
    png_file(&ihdr, &zlib(&[0u8; 64]))
}

/// A complete PNG of `width` × `height` RGB pixels of one colour: tiny compressed, of any size
/// decoded.
pub fn png_flat(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    let row: Vec<u8> = std::iter::once(0)
        .chain(rgb.iter().copied().cycle().take(width as usize * 3))
        .collect();
    for _ in 0..height {
        encoder.write_all(&row).expect("writing to memory");
    }
    png_file(&ihdr, &encoder.finish().expect("writing to memory"))
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

fn png_file(ihdr: &[u8], idat: &[u8]) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [(b"IHDR", ihdr), (b"IDAT", idat), (b"IEND", &[][..])] {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    out
}

/// A baseline JPEG of `width` × `height` (a smooth gradient, so it stays small).
pub fn jpeg_gradient(width: u32, height: u32) -> Vec<u8> {
    let image = RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, 128])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 75)
        .encode_image(&image)
        .expect("encoding to memory");
    out
}

/// The files a public server must survive, by name: each is small to upload and, decoded
/// naively, costs from a gigabyte up.
pub fn bombs() -> Vec<(&'static str, Vec<u8>)> {
    let small = DynamicImage::ImageRgb8(RgbImage::from_fn(8, 8, |x, y| {
        image::Rgb([x as u8 * 30, y as u8 * 30, 0])
    }));
    let forged = |format: ImageFormat, w: u32, h: u32| {
        with_dimensions(&encode(&small, format), format, w, h).expect("encode() writes the layout forged")
    };
    vec![
        ("png 12000x1 strip", png_flat(12_000, 1, [200, 40, 40])),
        ("png 1x12000 strip", png_flat(1, 12_000, [40, 200, 40])),
        ("png 12000x12000 rgba16 header", png_header_only(12_000, 12_000, 16, 6)),
        (
            "gif 8x8 on a 12000x12000 screen",
            forged(ImageFormat::Gif, 12_000, 12_000),
        ),
        ("tiff 12000x12000 header", forged(ImageFormat::Tiff, 12_000, 12_000)),
        ("bmp 12000x12000 header", forged(ImageFormat::Bmp, 12_000, 12_000)),
        ("webp 12000x12000 header", forged(ImageFormat::WebP, 12_000, 12_000)),
        ("jpeg 12000x12000 header", forged(ImageFormat::Jpeg, 12_000, 12_000)),
        (
            "progressive jpeg 12000x12000 header",
            progressive_jpeg_header(12_000, 12_000),
        ),
        ("png 4000x4000 flat", png_flat(4_000, 4_000, [90, 90, 200])),
        ("jpeg 8000x6000 gradient", jpeg_gradient(8_000, 6_000)),
    ]
}

//! What a JPEG costs to decode, read from its markers before any pixel is decoded, and the
//! DCT-domain downscaled decode that makes big photos cheap.
//!
//! A baseline JPEG decodes row by row at the scale asked for, so its memory follows the output.
//! A progressive one keeps every DCT coefficient of the full image (two bytes per sample) until
//! its last scan, and every scan walks them again: its cost is set by size × scans, which the
//! markers tell.

use std::io::Cursor;

use image::metadata::Orientation;
use image::RgbImage;

use super::ImageError;

/// The frame and scans of a JPEG, from its markers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegShape {
    pub width: u32,
    pub height: u32,
    pub components: u32,
    /// Bits per sample (8 for nearly every photo; 12 and 16 exist).
    pub precision: u8,
    pub progressive: bool,
    /// Start-of-scan markers: 1 for a baseline image, about 10 for a usual progressive one.
    pub scans: u32,
    /// 8 × 8 blocks over all components (chroma subsampling counted).
    pub blocks: u64,
    /// Bytes of entropy-coded data over all scans.
    pub entropy_bytes: u64,
}

impl JpegShape {
    /// Bytes of DCT coefficients a progressive decode holds at once (an upper bound: chroma
    /// subsampling makes it less).
    pub fn coefficient_bytes(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height) * u64::from(self.components) * 2
    }

    /// [`Self::coefficient_bytes`] if this JPEG is progressive (a baseline one decodes row by row).
    pub fn held_coefficient_bytes(&self) -> u64 {
        if self.progressive {
            self.coefficient_bytes()
        } else {
            0
        }
    }
}

/// Reads the frame header and counts the scans. Entropy-coded data never holds a bare 0xFF
/// followed by a marker byte (0xFF is stuffed as 0xFF 0x00), so walking segment lengths and
/// skipping stuffed bytes finds every marker without decoding.
pub fn shape(bytes: &[u8]) -> Result<JpegShape, ImageError> {
    let undecodable = |why: &str| ImageError::Undecodable(format!("JPEG: {why}"));
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return Err(undecodable("no start-of-image marker"));
    }
    let mut frame: Option<JpegShape> = None;
    let mut scans = 0u32;
    let mut entropy_bytes = 0u64;
    let mut ended = false;
    let mut i = 2;
    while i + 1 < bytes.len() {
        if bytes[i] != 0xFF {
            // Entropy-coded data, up to the next 0xFF (memchr: a tenth of the time of a byte loop).
            let end = memchr::memchr(0xFF, &bytes[i..])
                .map_or(bytes.len(), |n| i + n)
                .min(bytes.len() - 1);
            entropy_bytes += (end - i) as u64;
            i = end;
            continue;
        }
        let marker = bytes[i + 1];
        match marker {
            0x00 => {
                i += 1; // a stuffed 0xFF data byte
                entropy_bytes += 1;
                continue;
            }
            0xFF => {
                i += 1; // fill bytes before a marker
                continue;
            }
            0xD9 => {
                ended = true;
                break;
            }
            0x01 | 0xD0..=0xD7 => {
                i += 2; // markers without a length: TEM, restart markers
                continue;
            }
            _ => {}
        }
        let Some(length) = bytes
            .get(i + 2..i + 4)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        else {
            break;
        };
        if length < 2 {
            return Err(undecodable("segment length below 2"));
        }
        let segment = bytes.get(i + 4..(i + 2 + length).min(bytes.len())).unwrap_or_default();
        match marker {
            // Start of frame: every SOFn but DHT (C4), JPG (C8) and DAC (CC).
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                if frame.is_some() {
                    return Err(undecodable("more than one frame"));
                }
                if segment.len() < 6 {
                    return Err(undecodable("short frame header"));
                }
                let sampling: Vec<(u64, u64)> = segment[6..]
                    .chunks_exact(3)
                    .take(usize::from(segment[5]))
                    .map(|c| (u64::from(c[1] >> 4).max(1), u64::from(c[1] & 0x0F).max(1)))
                    .collect();
                let h_max = sampling.iter().map(|s| s.0).max().unwrap_or(1);
                let v_max = sampling.iter().map(|s| s.1).max().unwrap_or(1);
                let (height, width) = (
                    u64::from(u16::from_be_bytes([segment[1], segment[2]])),
                    u64::from(u16::from_be_bytes([segment[3], segment[4]])),
                );
                let mcus = width.div_ceil(8 * h_max) * height.div_ceil(8 * v_max);
                frame = Some(JpegShape {
                    blocks: mcus * sampling.iter().map(|(h, v)| h * v).sum::<u64>(),
                    entropy_bytes: 0,
                    precision: segment[0],
                    height: u32::from(u16::from_be_bytes([segment[1], segment[2]])),
                    width: u32::from(u16::from_be_bytes([segment[3], segment[4]])),
                    components: u32::from(segment[5]),
                    progressive: matches!(marker, 0xC2 | 0xC6 | 0xCA | 0xCE),
                    scans: 0,
                });
            }
            0xDA => scans += 1,
            _ => {}
        }
        i += 2 + length;
    }
    let Some(mut frame) = frame else {
        return Err(undecodable("no frame header"));
    };
    if scans == 0 {
        return Err(undecodable("no image data"));
    }
    // Decoders fill a truncated scan with grey instead of failing; data appended after the
    // end-of-image marker (motion photos) does not matter.
    if !ended {
        return Err(ImageError::Undecodable(
            "truncated JPEG (no end-of-image marker)".into(),
        ));
    }
    frame.scans = scans;
    frame.entropy_bytes = entropy_bytes;
    // Every block codes its DC coefficient in at least one bit (the shortest Huffman code), in
    // baseline and progressive JPEGs alike. Less data than that is a header claiming a size the
    // file does not have, and decoders would spend seconds filling the rest with nothing.
    if frame.entropy_bytes * 8 < frame.blocks {
        return Err(undecodable(&format!(
            "{} bytes of image data cannot hold {}x{} pixels",
            frame.entropy_bytes, frame.width, frame.height
        )));
    }
    Ok(frame)
}

/// Decodes at 1/`reduction` of the full size (2, 4 or 8) in the DCT domain, for 8-bit grey or
/// colour JPEGs; the output is the size asked for, rounded up. With the EXIF orientation, if any.
pub fn decode_reduced(
    bytes: &[u8],
    shape: &JpegShape,
    reduction: u32,
) -> Result<(RgbImage, Option<Orientation>), ImageError> {
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    let want = |side: u32| side.div_ceil(reduction).clamp(1, u32::from(u16::MAX)) as u16;
    let (width, height) = decoder
        .scale(want(shape.width), want(shape.height))
        .map_err(|e| ImageError::Undecodable(e.to_string()))?;
    let pixels = decoder.decode().map_err(|e| ImageError::Undecodable(e.to_string()))?;
    let (width, height) = (u32::from(width), u32::from(height));
    let format = decoder.info().map(|info| info.pixel_format);
    let rgb = match format {
        Some(jpeg_decoder::PixelFormat::RGB24) => pixels,
        Some(jpeg_decoder::PixelFormat::L8) => pixels.iter().flat_map(|&l| [l, l, l]).collect(),
        other => {
            return Err(ImageError::Undecodable(format!(
                "unexpected JPEG pixel format {other:?}"
            )))
        }
    };
    let image = RgbImage::from_raw(width, height, rgb)
        .ok_or_else(|| ImageError::Undecodable("JPEG decoder output is short".into()))?;
    Ok((image, decoder.exif_data().and_then(Orientation::from_exif_chunk)))
}

/// Whether [`decode_full`] takes this JPEG: 8-bit grey or colour (not CMYK, not 12-bit).
pub fn decodes_directly(shape: &JpegShape) -> bool {
    shape.precision == 8 && matches!(shape.components, 1 | 3)
}

/// Decodes at full size straight through zune-jpeg, the decoder the image crate wraps: the wrapper
/// parses the headers three times (size, orientation, pixels), each building the Huffman tables
/// again, and copies the file; this parses them once. With the EXIF orientation, if any. The
/// decoder must read the size that `shape` (whose cost was checked) read from the markers.
pub fn decode_full(bytes: &[u8], shape: &JpegShape) -> Result<(RgbImage, Option<Orientation>), ImageError> {
    use zune_core::{colorspace::ColorSpace, options::DecoderOptions};
    let undecodable = |e: zune_jpeg::errors::DecodeErrors| ImageError::Undecodable(format!("JPEG: {e}"));
    let options = DecoderOptions::default()
        .set_strict_mode(false)
        .set_max_width(super::MAX_IMAGE_SIDE as usize)
        .set_max_height(super::MAX_IMAGE_SIDE as usize)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(zune_core::bytestream::ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(undecodable)?;
    let (width, height) = decoder
        .dimensions()
        .ok_or_else(|| ImageError::Undecodable("JPEG: no frame header".into()))?;
    if (width, height) != (shape.width as usize, shape.height as usize) {
        return Err(ImageError::Undecodable(format!(
            "JPEG: the decoder reads {width}x{height} pixels where the frame header says {}x{}",
            shape.width, shape.height
        )));
    }
    let mut pixels = vec![0; width * height * 3];
    decoder.decode_into(&mut pixels).map_err(undecodable)?;
    let image = RgbImage::from_raw(width as u32, height as u32, pixels)
        .ok_or_else(|| ImageError::Undecodable("JPEG decoder output is short".into()))?;
    Ok((
        image,
        decoder.exif().and_then(|exif| Orientation::from_exif_chunk(exif)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let image = RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, 90])
        });
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&image)
            .unwrap();
        out
    }

    #[test]
    fn shape_reads_the_frame_and_counts_scans() {
        let bytes = jpeg(40, 24);
        let shape = shape(&bytes).unwrap();
        assert_eq!((shape.width, shape.height, shape.components), (40, 24, 3));
        assert_eq!((shape.precision, shape.progressive, shape.scans), (8, false, 1));
        assert_eq!(shape.coefficient_bytes(), 40 * 24 * 3 * 2);
        // The image crate writes 4:4:4: one block per 8 x 8 pixels and component.
        assert_eq!(shape.blocks, (40 / 8) * (24 / 8) * 3);
        assert!(shape.entropy_bytes > 0 && shape.entropy_bytes < bytes.len() as u64);
    }

    #[test]
    fn a_header_claiming_more_pixels_than_the_data_holds_is_refused() {
        let bytes =
            crate::image::hostile::with_dimensions(&jpeg(16, 16), image::ImageFormat::Jpeg, 12_000, 12_000).unwrap();
        let err = shape(&bytes).unwrap_err().to_string();
        assert!(err.contains("cannot hold 12000x12000"), "{err}");
    }

    #[test]
    fn broken_markers_are_refused() {
        let bytes = jpeg(16, 16);
        assert!(shape(&bytes[..bytes.len() - 2]).is_err(), "no end of image");
        assert!(shape(&bytes[2..]).is_err(), "no start of image");
        assert!(shape(&[0xFF, 0xD8, 0xFF, 0xD9]).is_err(), "no frame");
        assert!(shape(&[0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x01]).is_err(), "length below 2");
    }

    #[test]
    fn reduced_decodes_are_the_size_asked_for_and_look_alike() {
        let bytes = jpeg(160, 96);
        let shape = shape(&bytes).unwrap();
        let full = image::load_from_memory(&bytes).unwrap().into_rgb8();
        for reduction in [2, 4, 8] {
            let (small, _) = decode_reduced(&bytes, &shape, reduction).unwrap();
            assert_eq!(small.dimensions(), (160 / reduction, 96 / reduction));
            // The reduced pixel at the centre of a block matches the full decode's mean there.
            let (x, y) = (small.width() / 2, small.height() / 2);
            let mut mean = [0u32; 3];
            for dy in 0..reduction {
                for dx in 0..reduction {
                    let p = full.get_pixel(x * reduction + dx, y * reduction + dy);
                    (0..3).for_each(|c| mean[c] += u32::from(p[c]));
                }
            }
            let got = small.get_pixel(x, y);
            for c in 0..3 {
                let expected = mean[c] as f32 / (reduction * reduction) as f32;
                assert!(
                    (f32::from(got[c]) - expected).abs() < 4.0,
                    "{reduction}: {got:?} vs {mean:?}"
                );
            }
        }
    }
}

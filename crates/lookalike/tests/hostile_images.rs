//! Mutated real images (truncated, bit-flipped, with forged dimensions) in every format, and the
//! known decompression bombs, through decoding and preprocessing: nothing may panic, and no
//! input may make the decode allocate much beyond its stated limit. One test in its own binary,
//! so the counting allocator sees nothing else.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use image::{DynamicImage, ImageFormat};
use lookalike::image::{decode_image, hostile, Preprocessing, MAX_DECODED_BYTES};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        q
    }
}

fn grew(size: usize) {
    let now = CURRENT.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes allocated at the peak of decoding and preprocessing `bytes`, beyond what was live before.
fn peak_of(bytes: &[u8], pre: &Preprocessing) -> (usize, Result<(), String>) {
    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let outcome = std::panic::catch_unwind(|| decode_image(bytes).map(|image| pre.tensor_of(&image).len()));
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    let outcome = match outcome {
        Ok(Ok(len)) => {
            assert_eq!(len, pre.tensor_len());
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("PANIC".into()),
    };
    (peak, outcome)
}

fn sources() -> Vec<(String, ImageFormat, Vec<u8>)> {
    let photo = image::open(common::fixture("reference/images/02-mb01-blue-0.jpg")).unwrap();
    let small = photo.thumbnail(96, 96);
    let mut out = Vec::new();
    for format in hostile::FORMATS {
        out.push((format!("{format:?} rgb8"), format, hostile::encode(&small, format)));
    }
    for (name, image) in [
        ("rgba8", DynamicImage::ImageRgba8(small.to_rgba8())),
        ("rgb16", DynamicImage::ImageRgb16(small.to_rgb16())),
        ("rgba16", DynamicImage::ImageRgba16(small.to_rgba16())),
        ("luma8", DynamicImage::ImageLuma8(small.to_luma8())),
    ] {
        for format in [ImageFormat::Png, ImageFormat::Tiff] {
            out.push((format!("{format:?} {name}"), format, hostile::encode(&image, format)));
        }
    }
    out
}

fn mutations(format: ImageFormat, bytes: &[u8], rng: &mut fastrand::Rng) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for fraction in [0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99] {
        let cut = (bytes.len() as f64 * fraction) as usize;
        out.push((format!("truncated at {cut}"), bytes[..cut].to_vec()));
    }
    for round in 0..60 {
        let mut flipped = bytes.to_vec();
        // Half the rounds aim at the header, where sizes and offsets live.
        let span = if round % 2 == 0 {
            bytes.len().min(128)
        } else {
            bytes.len()
        };
        for _ in 0..rng.usize(1..=8) {
            flipped[rng.usize(..span)] ^= 1 << rng.u8(0..8);
        }
        out.push((format!("bit flips, round {round}"), flipped));
    }
    for (w, h) in [
        (0, 0),
        (1, 1),
        (12_000, 1),
        (1, 12_000),
        (11_999, 11_999),
        (12_000, 12_000),
        (12_001, 9),
        (16_383, 16_383),
        (65_535, 65_535),
    ] {
        if let Some(forged) = hostile::with_dimensions(bytes, format, w, h) {
            out.push((format!("declares {w}x{h}"), forged));
        }
    }
    out
}

#[test]
fn mutated_and_bomb_images_never_panic_and_stay_within_the_decode_limit() {
    let pre = Preprocessing::for_input(224);
    // Decoded pixels, an RGB copy and decoder bookkeeping: well under three times the limit.
    let bound = 2 * MAX_DECODED_BYTES as usize + (24 << 20);
    let mut rng = fastrand::Rng::with_seed(20261125);
    let mut cases = 0;
    let mut decoded = 0;
    let mut worst = (0, String::new());
    let mut failures = Vec::new();
    let mut check = |name: String, bytes: &[u8]| {
        let (peak, outcome) = peak_of(bytes, &pre);
        cases += 1;
        decoded += usize::from(outcome.is_ok());
        if peak > worst.0 {
            worst = (peak, name.clone());
        }
        if outcome.as_ref().is_err_and(|e| e == "PANIC") || peak > bound {
            failures.push(format!("{name}: peak {} MiB, {outcome:?}", peak >> 20));
        }
    };
    for (source, format, bytes) in sources() {
        check(source.clone(), &bytes);
        for (mutation, mutated) in mutations(format, &bytes, &mut rng) {
            check(format!("{source}, {mutation}"), &mutated);
        }
    }
    for (name, bytes) in hostile::bombs() {
        check(name.to_string(), &bytes);
    }
    eprintln!(
        "{cases} inputs, {decoded} decoded; largest peak {} MiB ({})",
        worst.0 >> 20,
        worst.1
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(decoded > cases / 10, "the unmutated sources and many mutations decode");
}

//! `lookalike bench calibrate`: measures the activation ranges of an int8 backbone on photos, to
//! ship as `crates/lookalike/src/model/calibration/<backbone>.json`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use lookalike::image::load_image;
use lookalike::model::quantize::calibrate;
use lookalike::model::{BackboneSpec, Embedder, ModelDir};

pub fn run(
    models: &ModelDir,
    spec: BackboneSpec,
    threads: usize,
    folders: &[PathBuf],
    per_folder: usize,
    out: &Path,
) -> Result<()> {
    let embedder = Embedder::load(models, spec, threads)?;
    let photos = super::spread_photos(folders, per_folder)?;
    let images = photos.iter().map(|p| {
        let image = load_image(p).with_context(|| format!("cannot read {}", p.display()));
        image.map(|i| embedder.preprocessing.tensor_of(&i))
    });
    let images: Vec<Vec<f32>> = images.collect::<Result<_>>()?;
    let names: Vec<String> = folders
        .iter()
        .map(|f| {
            f.file_name()
                .map_or(f.display().to_string(), |n| n.to_string_lossy().into())
        })
        .collect();
    let described = format!("{per_folder} spread over each of {}", names.join(", "));
    let calibration = calibrate(models, &spec, embedder.network(), images, &described, threads)?;
    let json = serde_json::to_string_pretty(&calibration)? + "\n";
    lookalike::files::write_atomically(out, |w| Ok(std::io::Write::write_all(w, json.as_bytes())?))?;
    eprintln!(
        "{}: {} activation ranges from {} photos ({}) -> {}",
        spec.name,
        calibration.ranges.len(),
        photos.len(),
        calibration.id(),
        out.display()
    );
    Ok(())
}

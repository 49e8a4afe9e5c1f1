//! `lookalike bench prep`: what a photo costs before the network (read, hash, decode, resize +
//! crop + tensor) on one core, beside Pillow measured in the same run, and the share of the
//! network's images/s that indexing can keep once every photo also costs that.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use comfy_table::Table;
use lookalike::image::{decode_image, read_image_file, Preprocessing};
use lookalike::model::{BackboneSpec, Embedder, ModelDir, Precision, BACKBONES};
use serde::Deserialize;

const REFERENCE_SCRIPT: (&str, &str) = ("reference_prep.py", include_str!("../../../../bench/reference_prep.py"));
const PASSES: usize = 3;

#[derive(Debug, Deserialize)]
struct Reference {
    runtime: String,
    stage: Option<String>,
    ms_per_photo: Option<f64>,
    error: Option<String>,
}

/// Milliseconds per photo of each stage, the best of [`PASSES`] passes over every photo; the last
/// stage once per backbone (their inputs differ in size).
struct Stages {
    read: f64,
    hash: f64,
    decode: f64,
    tensor: Vec<(BackboneSpec, f64)>,
}

impl Stages {
    fn before_tensor(&self) -> f64 {
        self.read + self.hash + self.decode
    }

    fn tensor(&self, spec: &BackboneSpec) -> f64 {
        self.tensor
            .iter()
            .find(|(s, _)| s.name == spec.name)
            .map_or(f64::NAN, |(_, ms)| *ms)
    }
}

fn measure_stages(photos: &[PathBuf]) -> Result<Stages> {
    let preprocessings: Vec<(BackboneSpec, Preprocessing)> =
        BACKBONES.iter().map(|spec| (*spec, spec.preprocessing())).collect();
    let mut outputs: Vec<Vec<f32>> = preprocessings.iter().map(|(_, p)| vec![0.0; p.tensor_len()]).collect();
    let mut best = [f64::INFINITY; 3];
    let mut best_tensor = vec![f64::INFINITY; preprocessings.len()];
    for _ in 0..PASSES {
        let mut sums = [0.0; 3];
        let mut tensor_sums = vec![0.0; preprocessings.len()];
        for photo in photos {
            let t = Instant::now();
            let bytes = read_image_file(photo).with_context(|| format!("cannot read {}", photo.display()))?;
            let read = t.elapsed();
            let t = Instant::now();
            std::hint::black_box(lookalike::content_hash(&bytes));
            let hash = t.elapsed();
            let t = Instant::now();
            let image = decode_image(&bytes).with_context(|| format!("cannot decode {}", photo.display()))?;
            let decode = t.elapsed();
            for (sum, took) in sums.iter_mut().zip([read, hash, decode]) {
                *sum += took.as_secs_f64();
            }
            for ((_, preprocessing), (sum, out)) in preprocessings.iter().zip(tensor_sums.iter_mut().zip(&mut outputs))
            {
                let t = Instant::now();
                preprocessing.tensor(&image, out);
                *sum += t.elapsed().as_secs_f64();
            }
        }
        for (best, sum) in best.iter_mut().zip(sums).chain(best_tensor.iter_mut().zip(tensor_sums)) {
            *best = best.min(sum * 1e3 / photos.len() as f64);
        }
    }
    Ok(Stages {
        read: best[0],
        hash: best[1],
        decode: best[2],
        tensor: preprocessings.iter().map(|(s, _)| *s).zip(best_tensor).collect(),
    })
}

fn reference(python: &str, photos: &[PathBuf], preprocessing: &Preprocessing) -> Result<Vec<Reference>> {
    let dir = tempfile::tempdir()?;
    let list = dir.path().join("photos.txt");
    let names: Vec<String> = photos.iter().map(|p| p.display().to_string()).collect();
    std::fs::write(&list, names.join("\n"))?;
    super::python_json_lines(
        python,
        REFERENCE_SCRIPT,
        [
            "--files".into(),
            list.into_os_string(),
            "--resize-shorter".into(),
            preprocessing.resize_shorter.to_string().into(),
            "--crop".into(),
            preprocessing.crop.to_string().into(),
            "--mean".into(),
            preprocessing.mean.to_string().into(),
            "--scale".into(),
            preprocessing.scale.to_string().into(),
            "--passes".into(),
            PASSES.to_string().into(),
        ],
    )
}

pub struct PrepPlan<'a> {
    pub folders: &'a [PathBuf],
    pub per_folder: usize,
    pub python: Option<&'a str>,
    /// Seconds of network runs per backbone and precision for the ceiling table, if wanted.
    pub network_seconds: Option<f64>,
}

pub fn run(models: &ModelDir, spec: BackboneSpec, threads: usize, plan: &PrepPlan) -> Result<()> {
    let mut photos = super::spread_photos(plan.folders, plan.per_folder)?;
    // A broken file would stop the reference halfway; it is left out of both, and said.
    photos.retain(
        |photo| match read_image_file(photo).and_then(|bytes| decode_image(&bytes)) {
            Ok(_) => true,
            Err(e) => {
                eprintln!("left out {}: {e}", photo.display());
                false
            }
        },
    );
    anyhow::ensure!(!photos.is_empty(), "no photos that decode in {:?}", plan.folders);
    eprintln!("measuring the preparation of {} photos, one core...", photos.len());
    let stages = measure_stages(&photos)?;
    let preprocessing = spec.preprocessing();
    let references = match plan.python {
        Some(python) => {
            eprintln!("measuring Pillow with {python}...");
            reference(python, &photos, &preprocessing)?
        }
        None => Vec::new(),
    };
    let pillow = |stage: &str| {
        references
            .iter()
            .find(|r| r.runtime == "Pillow" && r.stage.as_deref() == Some(stage))
            .and_then(|r| r.ms_per_photo)
    };
    let mut table = crate::output::bordered_table([
        "stage (one core)",
        "lookalike ms/photo",
        "Pillow ms/photo",
        "Pillow ÷ lookalike",
    ]);
    let tensor_stage = "resize + crop + tensor";
    let total = stages.before_tensor() + stages.tensor(&spec);
    let rows = [
        ("read file", stages.read),
        ("content hash (SHA-256)", stages.hash),
        ("decode", stages.decode),
        (tensor_stage, stages.tensor(&spec)),
    ];
    let mut pillow_total = Some(0.0);
    for (stage, ours) in rows {
        let theirs = pillow(stage);
        pillow_total = pillow_total.zip(theirs).map(|(a, b)| a + b);
        table.add_row(row(stage, Some(ours), theirs));
    }
    table.add_row(row("total", Some(total), pillow_total));
    for r in references.iter().filter(|r| r.runtime != "Pillow") {
        let stage = format!("{}: {}", r.runtime, r.stage.as_deref().unwrap_or("-"));
        table.add_row(row(&stage, None, r.ms_per_photo));
    }
    for r in references.iter().filter(|r| r.error.is_some()) {
        table.add_row([
            r.runtime.clone(),
            "-".into(),
            "-".into(),
            r.error.clone().unwrap_or_default(),
        ]);
    }
    println!(
        "{} photo{}, {} input ({}x{} crop of the shorter side resized to {}), best of {PASSES} passes",
        photos.len(),
        if photos.len() == 1 { "" } else { "s" },
        spec.name,
        preprocessing.crop,
        preprocessing.crop,
        preprocessing.resize_shorter
    );
    println!("{table}");
    if let Some(seconds) = plan.network_seconds {
        println!("{}", ceilings(models, threads, &stages, seconds)?);
    }
    Ok(())
}

fn row(stage: &str, ours: Option<f64>, theirs: Option<f64>) -> [String; 4] {
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    let ratio = ours.zip(theirs).map_or(String::new(), |(a, b)| format!("{:.2}", b / a));
    [stage.to_string(), ms(ours), ms(theirs), ratio]
}

/// Every backbone × precision: the network's images/s at batch 32, and what indexing can reach
/// when each photo also costs its preparation on one of the same cores.
fn ceilings(models: &ModelDir, threads: usize, stages: &Stages, seconds: f64) -> Result<Table> {
    let mut table = crate::output::bordered_table([
        "backbone",
        "precision",
        "network images/s, batch 32",
        "preparation ms/photo",
        "indexing ceiling images/s",
        "ceiling ÷ network",
    ]);
    for spec in BACKBONES {
        if models.weights(&spec).is_err() {
            continue;
        }
        for precision in [Precision::Fp32, Precision::Int8] {
            eprintln!("measuring {} {precision}...", spec.name);
            let embedder = Embedder::load_as(models, spec, precision, threads)?;
            let rate = super::embed::measure(&embedder, 32, seconds, embedder.parallelism_for(32))?;
            let prep_ms = stages.before_tensor() + stages.tensor(&spec);
            // The network takes `threads` cores for 1/rate s per photo; preparation adds its own core time.
            let ceiling = threads as f64 / (threads as f64 / rate + prep_ms / 1e3);
            table.add_row([
                spec.name.to_string(),
                precision.to_string(),
                format!("{rate:.1}"),
                format!("{prep_ms:.3}"),
                format!("{ceiling:.1}"),
                format!("{:.2}", ceiling / rate),
            ]);
        }
    }
    Ok(table)
}

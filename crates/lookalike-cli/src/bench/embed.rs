//! `lookalike bench embed`: lookalike's embedding throughput beside the reference
//! runtimes (ONNX Runtime's Python API on the same graph, and PyTorch eager on an
//! independent implementation of the network), measured in the same run.

use std::time::{Duration, Instant};

use anyhow::Result;
use comfy_table::Table;
use lookalike::model::{BackboneSpec, Embedder, ModelDir, Parallelism, Precision, BACKBONES};
use serde::Deserialize;

const REFERENCE_SCRIPT: (&str, &str) = (
    "reference_runtimes.py",
    include_str!("../../../../bench/reference_runtimes.py"),
);

#[derive(Debug, Deserialize)]
struct Measurement {
    runtime: String,
    batch: Option<usize>,
    images_per_second: Option<f64>,
    error: Option<String>,
}

/// Median images/s over timed runs of `seconds`, after one warm-up run.
pub(super) fn measure(embedder: &Embedder, batch: usize, seconds: f64, parallelism: Parallelism) -> Result<f64> {
    let len = batch * embedder.preprocessing.tensor_len();
    // Deterministic inputs in the network's input range; throughput does not depend on the values.
    let input: Vec<f32> = (0..len).map(|i| ((i * 7919 % 2001) as f32 / 1000.0) - 1.0).collect();
    embedder.run_with(&input, batch, parallelism)?;
    let budget = Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut rates = Vec::new();
    while started.elapsed() < budget || rates.len() < 3 {
        let t = Instant::now();
        embedder.run_with(&input, batch, parallelism)?;
        rates.push(batch as f64 / t.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    Ok(rates[rates.len() / 2])
}

fn reference_measurements(
    embedder: &Embedder,
    models: &ModelDir,
    spec: BackboneSpec,
    python: &str,
    batches: &[usize],
    seconds: f64,
    threads: usize,
) -> Result<Vec<Measurement>> {
    let dir = tempfile::tempdir()?;
    let onnx = dir.path().join(format!("{}.onnx", spec.name));
    std::fs::write(&onnx, embedder.onnx_model())?;
    let batches: Vec<String> = batches.iter().map(usize::to_string).collect();
    super::python_json_lines(
        python,
        REFERENCE_SCRIPT,
        [
            "--onnx".into(),
            onnx.into_os_string(),
            "--weights".into(),
            models.weights(&spec)?.into_os_string(),
            "--size".into(),
            spec.input_size.to_string().into(),
            "--threads".into(),
            threads.to_string().into(),
            "--batches".into(),
            batches.join(",").into(),
            "--seconds".into(),
            seconds.to_string().into(),
        ],
    )
}

pub fn run(
    models: &ModelDir,
    (spec, precision): (BackboneSpec, Precision),
    threads: usize,
    batches: &[usize],
    seconds: f64,
    reference_python: Option<&str>,
    all_backbones: bool,
) -> Result<()> {
    let embedder = Embedder::load_as(models, spec, precision, threads)?;
    eprintln!(
        "measuring lookalike, {} {precision} ({threads} threads, {seconds}s per batch size)...",
        spec.name
    );
    // Both ways of sharing the threads, alternating, so they see the same machine.
    let mut ours = Vec::new();
    let mut operator_parallel = Vec::new();
    for &batch in batches {
        let images = measure(&embedder, batch, seconds / 2.0, Parallelism::Images)?;
        let operators = measure(&embedder, batch, seconds / 2.0, Parallelism::Operators)?;
        let images = images.max(measure(&embedder, batch, seconds / 2.0, Parallelism::Images)?);
        let operators = operators.max(measure(&embedder, batch, seconds / 2.0, Parallelism::Operators)?);
        let chosen = match embedder.parallelism_for(batch) {
            Parallelism::Images => images,
            Parallelism::Operators => operators,
        };
        ours.push((batch, chosen));
        operator_parallel.push((batch, operators, images));
    }
    let references = match reference_python {
        None => Vec::new(),
        Some(python) => {
            eprintln!("measuring reference runtimes with {python}...");
            reference_measurements(&embedder, models, spec, python, batches, seconds, threads)?
        }
    };

    let mut table = crate::output::bordered_table(["runtime", "batch", "images/s", "lookalike ÷ this"]);
    for &(batch, rate) in &ours {
        table.add_row([
            "lookalike (ONNX Runtime via ort)".to_string(),
            batch.to_string(),
            format!("{rate:.1}"),
            "1.00".into(),
        ]);
    }
    for &(batch, operators, images) in &operator_parallel {
        let ratio = |rate: f64| {
            ours.iter()
                .find(|(b, _)| *b == batch)
                .map_or(String::new(), |(_, r)| format!("{:.2}", r / rate))
        };
        table.add_row([
            "  one session, threads inside operators".to_string(),
            batch.to_string(),
            format!("{operators:.1}"),
            ratio(operators),
        ]);
        table.add_row([
            "  single-thread sessions, images in parallel".to_string(),
            batch.to_string(),
            format!("{images:.1}"),
            ratio(images),
        ]);
    }
    for m in &references {
        match (m.batch, m.images_per_second) {
            (Some(batch), Some(rate)) => {
                let ratio = ours
                    .iter()
                    .find(|(b, _)| *b == batch)
                    .map_or(String::new(), |(_, r)| format!("{:.2}", r / rate));
                table.add_row([m.runtime.clone(), batch.to_string(), format!("{rate:.1}"), ratio]);
            }
            _ => {
                table.add_row([
                    m.runtime.clone(),
                    "-".into(),
                    "-".into(),
                    m.error.clone().unwrap_or_default(),
                ]);
            }
        }
    }
    println!(
        "{} {precision}, {side}x{side}, {threads} threads, median of timed runs over {seconds}s",
        spec.name,
        side = spec.input_size
    );
    println!("{table}");
    if all_backbones {
        println!(
            "{}",
            backbones_table(models, (spec, precision), &ours, threads, batches, seconds)?
        );
    }
    Ok(())
}

/// Every backbone whose weights are present, in each precision, at its own parallelism, as
/// ratios to `measured` (`base`'s images/s per batch size).
fn backbones_table(
    models: &ModelDir,
    base: (BackboneSpec, Precision),
    measured: &[(usize, f64)],
    threads: usize,
    batches: &[usize],
    seconds: f64,
) -> Result<Table> {
    let mut table = crate::output::bordered_table([
        "backbone".to_string(),
        "precision".into(),
        "input".into(),
        "batch".into(),
        "images/s".into(),
        format!("÷ {} {}", base.0.name, base.1),
    ]);
    for other in BACKBONES {
        let side = format!("{0}x{0}", other.input_size);
        if models.weights(&other).is_err() {
            table.add_row([
                other.name.to_string(),
                "-".into(),
                side,
                "-".into(),
                "-".into(),
                "weights not fetched".into(),
            ]);
            continue;
        }
        for precision in [Precision::Fp32, Precision::Int8] {
            eprintln!("measuring {} {precision}...", other.name);
            let embedder = Embedder::load_as(models, other, precision, threads)?;
            let is_base = other.name == base.0.name && precision == base.1;
            for &batch in batches {
                let rate = match measured.iter().find(|&&(b, _)| b == batch && is_base) {
                    Some(&(_, rate)) => rate,
                    None => measure(&embedder, batch, seconds, embedder.parallelism_for(batch))?,
                };
                let reference = measured.iter().find(|(b, _)| *b == batch).map(|(_, r)| *r);
                table.add_row([
                    other.name.to_string(),
                    precision.to_string(),
                    side.clone(),
                    batch.to_string(),
                    format!("{rate:.1}"),
                    reference.map_or(String::new(), |r| format!("{:.2}", rate / r)),
                ]);
            }
        }
    }
    Ok(table)
}

//! Human tables and JSON for the CLI's answers.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use comfy_table::{presets::UTF8_BORDERS_ONLY, ColumnConstraint, ContentArrangement, Row, Table, Width};
use indicatif::{ProgressBar, ProgressStyle};
use lookalike::explain::Explanation;
use lookalike::image::ImageError;
use lookalike::model::labels::Prediction;
use lookalike::model::ImageEmbedding;
use lookalike::shop::{Answer, FoundRegion};
use lookalike::types::{Metric, PhotoBox, Scored};
use serde_json::json;

use crate::answers::{Images, Regions, Results};

/// Hits as a table or JSON (the API's shape: [`crate::answers::Results`], with file paths);
/// `metric` `None` for relevance. `predicted`: the categories a hybrid search ranked within;
/// `searched`: the part of the photo searched, when not all of it; `explanations`: why each hit
/// matched, when asked.
pub fn print_hits(
    hits: &[Scored],
    metric: Option<Metric>,
    as_json: bool,
    predicted: Option<&[(String, f32)]>,
    searched: Option<&PhotoBox>,
    explanations: &[Option<Explanation>],
) -> Result<()> {
    if as_json {
        let results = Results::new(hits, metric, predicted, Images::Paths)
            .searched(searched)
            .explained(hits, explanations, Images::Paths);
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    if let Some(predicted) = predicted {
        let named: Vec<String> = predicted
            .iter()
            .map(|(c, p)| format!("{c} ({:.1} %)", p * 100.0))
            .collect();
        println!("predicted category: {}", named.join(", "));
    }
    if let Some(region) = searched {
        println!("searched the part {} of the photo", shown(region));
    }
    print_table(hits, metric);
    for (n, explained) in explanations.iter().enumerate() {
        match explained {
            Some(e) => println!(
                "#{} matched by the part {} of the photo and {} of its photo {} (backbone cosine {:.3})",
                n + 1,
                shown(&e.query_box),
                shown(&e.match_box),
                e.matched_image,
                e.backbone_cosine
            ),
            None => println!("#{}: its photo can no longer be read, so it is not explained", n + 1),
        }
    }
    Ok(())
}

/// "Shop the look": each product found, with its results, as tables or JSON (the API's shape:
/// [`crate::answers::Regions`], with file paths).
pub fn print_regions(found: &[FoundRegion], answers: &[Answer], as_json: bool) -> Result<()> {
    if as_json {
        let regions = Regions::new(found, answers, Images::Paths);
        println!("{}", serde_json::to_string_pretty(&regions)?);
        return Ok(());
    }
    if found.is_empty() {
        println!("no product found: the catalogue is empty");
    }
    for (n, (region, answer)) in found.iter().zip(answers).enumerate() {
        println!(
            "product {} of {} in the photo, at {} (best match {:.4}):",
            n + 1,
            found.len(),
            shown(&region.region),
            region.score
        );
        print_table(&answer.hits, answer.scored_by);
    }
    Ok(())
}

fn shown(region: &PhotoBox) -> String {
    format!("{:.0},{:.0},{:.0},{:.0}", region.x0, region.y0, region.x1, region.y1)
}

/// The CLI's one progress bar: `message`, the bar, how many of how many, their rate and the time
/// left; its length is set once known.
pub fn progress_bar(message: impl Into<std::borrow::Cow<'static, str>>) -> ProgressBar {
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} {per_sec} eta {eta}")
            .expect("valid progress template"),
    );
    bar.set_message(message);
    bar
}

/// A table with the CLI's borders and `header`.
pub fn bordered_table(header: impl Into<Row>) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(header);
    table
}

fn print_table(hits: &[Scored], metric: Option<Metric>) {
    let score = match metric {
        Some(Metric::Cosine) => "similarity",
        Some(Metric::Euclidean) => "distance",
        None => "relevance",
    };
    // Long titles and categories wrap; `--json` has every path whole.
    let mut table = bordered_table(["rank", "id", score, "category", "title", "price", "matched image"]);
    table
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(TABLE_WIDTH)
        // Only the category and the title wrap.
        .set_constraints([
            ColumnConstraint::ContentWidth,
            ColumnConstraint::ContentWidth,
            ColumnConstraint::ContentWidth,
            ColumnConstraint::LowerBoundary(Width::Fixed(12)),
            ColumnConstraint::LowerBoundary(Width::Fixed(12)),
            ColumnConstraint::ContentWidth,
            ColumnConstraint::ContentWidth,
        ]);
    for (rank, hit) in hits.iter().enumerate() {
        let p = &hit.product;
        table.add_row([
            (rank + 1).to_string(),
            p.id.clone(),
            format!("{:.4}", hit.score),
            p.info.category.clone().unwrap_or_default(),
            p.info.title.clone().unwrap_or_default(),
            p.info.price.map(|v| format!("{v:.2}")).unwrap_or_default(),
            short_path(p.image_paths().nth(hit.image).unwrap_or_default()),
        ]);
    }
    println!("{table}");
    if hits.is_empty() {
        println!("no product matches the filters");
    }
}

/// Columns a results table takes at most: it fits a 100-column terminal.
const TABLE_WIDTH: u16 = 100;

/// `path` short enough for a table cell: relative to the working folder when under it, else its
/// folder and file name after `…/`.
fn short_path(path: &str) -> String {
    let path = std::path::Path::new(path);
    if let Some(relative) = std::env::current_dir().ok().and_then(|cwd| path.strip_prefix(cwd).ok()) {
        return relative.display().to_string();
    }
    let tail: Vec<_> = path.components().rev().take(2).collect();
    if tail.len() < 2 || path.components().count() <= 2 {
        return path.display().to_string();
    }
    let tail: std::path::PathBuf = tail.into_iter().rev().collect();
    format!("…/{}", tail.display())
}

pub fn print_embeddings(
    paths: &[PathBuf],
    results: &[Result<ImageEmbedding, ImageError>],
    as_json: bool,
) -> Result<ExitCode> {
    let mut failed = false;
    let mut rows = Vec::new();
    for (path, result) in paths.iter().zip(results) {
        match result {
            Ok(e) if as_json => {
                rows.push(json!({ "path": path, "dimension": e.features.len(), "embedding": e.features }))
            }
            Ok(e) => {
                let norm = e.features.iter().map(|x| x * x).sum::<f32>().sqrt();
                let head: Vec<String> = e.features.iter().take(6).map(|x| format!("{x:.4}")).collect();
                println!(
                    "{}\t{}-d\tL2 {norm:.3}\t[{}, ...]",
                    path.display(),
                    e.features.len(),
                    head.join(", ")
                );
            }
            Err(err) => {
                failed = true;
                eprintln!("error: {}: {err}", path.display());
            }
        }
    }
    if as_json {
        println!("{}", serde_json::to_string(&rows)?);
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

pub fn print_labels(rows: &[(&PathBuf, Vec<Prediction>)], as_json: bool) -> Result<()> {
    if as_json {
        let out: Vec<_> = rows
            .iter()
            .map(|(path, top)| json!({ "path": path, "top": top }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for (path, top) in rows {
        println!("{}", path.display());
        for p in top {
            println!("  {:6.2}%  {} ({})", p.probability * 100.0, p.label, p.class);
        }
    }
    Ok(())
}

pub fn print_duplicates(duplicates: &lookalike::shop::Duplicates, as_json: bool) -> Result<()> {
    let groups = &duplicates.groups;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&groups)?);
        return Ok(());
    }
    let mut table = bordered_table(["group", "kind", "lowest similarity", "id", "title", "image"]);
    for (n, g) in groups.iter().enumerate() {
        for id in &g.ids {
            let p = duplicates.members.get(id);
            table.add_row([
                (n + 1).to_string(),
                g.kind.to_string(),
                format!("{:.4}", g.min_similarity),
                id.clone(),
                p.and_then(|p| p.info.title.clone()).unwrap_or_default(),
                p.map(|p| p.image_path.clone()).unwrap_or_default(),
            ]);
        }
    }
    println!("{table}");
    let (exact, near) = groups.iter().fold(
        (0, 0),
        |(e, n), g| if g.kind == "exact" { (e + 1, n) } else { (e, n + 1) },
    );
    println!(
        "{exact} exact and {near} near-duplicate groups among {} products",
        duplicates.products
    );
    Ok(())
}

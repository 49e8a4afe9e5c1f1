//! `lookalike bench abuse`: a `lookalike serve` under the uploads and load a public server gets.
//!
//! 1. Every hostile file of [`lookalike::image::hostile::bombs`], 16 uploads at once: the
//!    answers, the slowest one, and the server's peak resident memory (VmHWM), beside its memory
//!    when idle. Goals: peak under 1 GiB, every answer under 2 s.
//! 2. Closed-loop clients searching with a real photo at each concurrency (default 32, then 128),
//!    sending the next request as soon as an answer (503 included) arrives: goodput (answered
//!    200 per second) and its ratio to the first concurrency's, 503s, and 5xx (goal: none).

use std::time::Duration;

use anyhow::{Context, Result};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use reqwest::blocking::{multipart, Client};

use super::http::{closed_loop, photo_form, ServerProcess};

#[derive(clap::Args)]
pub struct AbusePlan {
    /// Catalogue to serve (a `lookalike serve` is started on a free loopback port).
    #[arg(long)]
    pub db: String,
    /// The photo the load phase searches with.
    #[arg(long)]
    pub image: std::path::PathBuf,
    #[arg(value_parser = crate::args::count::<1, 4096>, long, value_delimiter = ',', default_value = "32,128")]
    pub concurrency: Vec<usize>,
    /// Seconds of load per concurrency.
    #[arg(value_parser = crate::args::seconds, long, default_value_t = 20.0)]
    pub seconds: f64,
    /// Uploads of each hostile file at once.
    #[arg(value_parser = crate::args::count::<1, 1024>, long, default_value_t = 16)]
    pub bombs_at_once: usize,
}

fn count_statuses(statuses: &std::collections::BTreeMap<u16, Vec<f64>>) -> String {
    statuses
        .iter()
        .map(|(status, millis)| match status {
            0 => format!("{}× no answer", millis.len()),
            s => format!("{}× {s}", millis.len()),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn run(threads: usize, plan: &AbusePlan) -> Result<()> {
    let photo = std::fs::read(&plan.image).with_context(|| format!("cannot read {}", plan.image.display()))?;
    let bombs = lookalike::image::hostile::bombs();
    let largest = bombs.iter().map(|(_, b)| b.len()).max().unwrap_or(0).max(photo.len());
    let upload_mb = (largest >> 20) + 1;
    let server = ServerProcess::start(&plan.db, threads, &["--max-upload-mb", &upload_mb.max(10).to_string()])?;
    let search = format!("{}/v1/search", server.url);
    let warm = Client::new()
        .post(&search)
        .multipart(photo_form(&photo, 10, None))
        .send()?;
    anyhow::ensure!(warm.status().is_success(), "warm-up search failed: {}", warm.status());
    let idle_mib = server.resident_mib().unwrap_or(f64::NAN);

    let mut bomb_table = Table::new();
    bomb_table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_header(["hostile file", "bytes", "answers", "slowest ms"]);
    let mut slowest_bomb = 0.0f64;
    let mut bomb_5xx = 0;
    for (name, bytes) in &bombs {
        let request = |client: &Client| {
            let part = multipart::Part::bytes(bytes.clone()).file_name("upload");
            client
                .post(&search)
                .multipart(multipart::Form::new().part("image", part))
        };
        let answers = closed_loop(
            plan.bombs_at_once,
            plan.bombs_at_once,
            Duration::from_secs(120),
            &request,
        )?;
        let slowest = answers
            .by_status
            .values()
            .flat_map(|m| m.last())
            .fold(0.0f64, |a, &b| a.max(b));
        slowest_bomb = slowest_bomb.max(slowest);
        bomb_5xx += answers.count(|s| s >= 500 || s == 0);
        bomb_table.add_row([
            name.to_string(),
            bytes.len().to_string(),
            count_statuses(&answers.by_status),
            format!("{slowest:.0}"),
        ]);
    }
    let peak_mib = server.peak_resident_mib().unwrap_or(f64::NAN);

    let mut load_table = Table::new();
    load_table.load_preset(UTF8_BORDERS_ONLY).set_header([
        "clients",
        "answered 200/s",
        "÷ first row",
        "503/s",
        "5xx",
        "p50 ms (200)",
        "p99 ms (200)",
    ]);
    let mut first_goodput = None;
    let mut load_5xx = 0;
    let request = |client: &Client| client.post(&search).multipart(photo_form(&photo, 10, None));
    for &concurrency in &plan.concurrency {
        eprintln!("{concurrency} clients for {} s...", plan.seconds);
        let answers = closed_loop(concurrency, usize::MAX, Duration::from_secs_f64(plan.seconds), &request)?;
        let seconds = answers.elapsed.as_secs_f64();
        let ok = answers.by_status.get(&200).cloned().unwrap_or_default();
        let goodput = ok.len() as f64 / seconds;
        let first = *first_goodput.get_or_insert(goodput);
        let failed = answers.count(|s| s >= 500 && s != 503 || s == 0);
        load_5xx += failed;
        let percentile = |p: f64| {
            ok.get(((p / 100.0 * ok.len() as f64).ceil() as usize).clamp(1, ok.len().max(1)) - 1)
                .copied()
                .unwrap_or(f64::NAN)
        };
        load_table.add_row([
            concurrency.to_string(),
            format!("{goodput:.1}"),
            format!("{:.2}", goodput / first),
            format!("{:.1}", answers.count(|s| s == 503) as f64 / seconds),
            failed.to_string(),
            format!("{:.1}", percentile(50.0)),
            format!("{:.1}", percentile(99.0)),
        ]);
        if let Some(failure) = &answers.first_failure {
            eprintln!("first failure at {concurrency} clients: {failure}");
        }
    }

    println!(
        "hostile uploads, {} at once each ({threads} threads, upload limit {upload_mb} MB):",
        plan.bombs_at_once
    );
    println!("{bomb_table}");
    println!(
        "server resident memory: {idle_mib:.0} MiB idle, {peak_mib:.0} MiB peak (goal < 1024); \
         slowest answer {slowest_bomb:.0} ms (goal < 2000); {bomb_5xx} 5xx or no answer (goal 0)"
    );
    println!(
        "\nphoto search under load, {} KB JPEG, k=10, {} s per row, clients retry at once after a 503:",
        photo.len() / 1024,
        plan.seconds
    );
    println!("{load_table}");
    println!("5xx or no answer under load: {load_5xx} (goal 0); goal for the ratio: ≥ 0.80");
    Ok(())
}

//! `lookalike bench abuse`: a `lookalike serve` under the uploads and load a public server gets.
//!
//! 1. Every hostile file of [`lookalike::image::hostile::bombs`], 16 uploads at once: the
//!    answers, the slowest one, and the server's peak resident memory (VmHWM), beside its memory
//!    when idle. Goals: peak under 1 GiB, every answer under 2 s.
//! 2. Closed-loop clients searching with a real photo at each concurrency (default 32, then 128),
//!    sending the next request as soon as an answer (503 included) arrives: goodput (answered
//!    200 per second) and its ratio to the first concurrency's, 503s, and 5xx (goal: none).
//! 3. One shopper searching with the photo while attackers abuse the protocol (slow bodies,
//!    bodies sent and then stalled, 1-byte chunks, invented methods): the shopper's answers per
//!    second and latency beside the same shopper alone, the server's CPU and memory.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use reqwest::blocking::{multipart, Client};

use super::http::{closed_loop, photo_form, Answers, ServerProcess};

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
    /// Connections each slow-body attack opens.
    #[arg(value_parser = crate::args::count::<1, 900>, long, default_value_t = 300)]
    pub slow_clients: usize,
    /// Seconds the shopper searches during each attack.
    #[arg(value_parser = crate::args::seconds, long, default_value_t = 10.0)]
    pub attack_seconds: f64,
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

    let mut bomb_table = crate::output::bordered_table(["hostile file", "bytes", "answers", "slowest ms"]);
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

    let mut load_table = crate::output::bordered_table([
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
    drop(server);
    attacks(threads, plan, &photo, upload_mb)
}

/// What one attack cost the shopper and the server.
struct Attacked {
    shopper: Answers,
    cpu_seconds: f64,
    rss_growth_mib: f64,
    note: String,
}

/// Section 3: each attack on a server of its own, a shopper searching beside it.
fn attacks(threads: usize, plan: &AbusePlan, photo: &[u8], upload_mb: usize) -> Result<()> {
    let seconds = Duration::from_secs_f64(plan.attack_seconds);
    let n = plan.slow_clients;
    let upload = upload_mb << 20;
    // Twice what fills the server's budget for bodies (256 MiB, or four uploads).
    let stalled = 2 * (256usize << 20).max(4 * upload) / upload;
    let names = [
        "none (the shopper alone)".to_string(),
        format!("{n} slow bodies to a route that does not exist (1 MiB declared, a byte per 2 s)"),
        format!("{n} slow bodies to POST /v1/search (the same)"),
        format!(
            "{stalled} bodies of {upload_mb} MB to POST /v1/search, sent at once but for their last KiB, \
             then a byte per 2 s; more fill what they leave of the budget"
        ),
        "4 clients sending 5 MB bodies in 1-byte chunks, 2 MB/s each".to_string(),
        "1 client sending 5,000 requests/s with invented 4 KB method names".to_string(),
    ];
    let mut table = crate::output::bordered_table([
        "attack",
        "shopper 200/s",
        "÷ alone",
        "shopper p50 / p99 ms",
        "shopper's other answers",
        "server CPU s",
        "server RSS growth MiB",
        "",
    ]);
    let mut alone = None;
    let mut peak = 0.0f64;
    for (attack, name) in names.iter().enumerate() {
        eprintln!("attack: {name}...");
        let server = ServerProcess::start(&plan.db, threads, &["--max-upload-mb", &upload_mb.to_string()])?;
        let address = server.url.trim_start_matches("http://").to_string();
        let warm = Client::new()
            .post(format!("{}/v1/search", server.url))
            .multipart(photo_form(photo, 10, None))
            .send()?;
        anyhow::ensure!(warm.status().is_success(), "warm-up search failed: {}", warm.status());
        let attacked = beside_a_shopper(&server, photo, seconds, |stop| match attack {
            0 => String::new(),
            1 => {
                trickle(&address, n, "POST /no/such/route", 1 << 20, 0, stop);
                String::new()
            }
            2 => {
                trickle(&address, n, "POST /v1/search", 1 << 20, 0, stop);
                String::new()
            }
            3 => std::thread::scope(|scope| {
                scope.spawn(|| fill_the_budget(&address, &server.url, stop));
                trickle(&address, stalled, "POST /v1/search", upload, upload - 1024, stop);
                String::new()
            }),
            4 => tiny_chunks(&address, 4, 5_000_000, 2_000_000, stop),
            _ => invented_methods(&address, &server.url, 5000.0, stop),
        })?;
        peak = peak.max(server.peak_resident_mib().unwrap_or(0.0));
        let refused = |reason: &str| {
            metric(
                &server.url,
                &format!("lookalike_overload_refusals_total{{reason=\"{reason}\"}}"),
            )
            .unwrap_or(0)
        };
        let (cut, full) = (refused("stalled_body"), refused("bodies"));
        let note = match (cut, full, attacked.note.is_empty()) {
            (0, 0, _) => attacked.note,
            (_, _, true) => format!("server: {cut} cut off, {full} refused for room"),
            _ => format!("{}; server: {cut} cut off, {full} refused for room", attacked.note),
        };
        let ok = attacked.shopper.by_status.get(&200).cloned().unwrap_or_default();
        let per_second = ok.len() as f64 / attacked.shopper.elapsed.as_secs_f64();
        let alone = *alone.get_or_insert(per_second);
        let others = attacked
            .shopper
            .by_status
            .iter()
            .filter(|(s, _)| **s != 200)
            .map(|(s, m)| (*s, m.clone()));
        table.add_row([
            name.clone(),
            format!("{per_second:.1}"),
            format!("{:.2}", per_second / alone),
            format!(
                "{:.1} / {:.1}",
                super::percentile(&ok, 50.0),
                super::percentile(&ok, 99.0)
            ),
            count_statuses(&others.collect()),
            format!("{:.2}", attacked.cpu_seconds),
            format!("{:.0}", attacked.rss_growth_mib),
            note,
        ]);
    }
    println!(
        "\none shopper searching ({} KB JPEG, k=10) for {} s while attackers abuse the protocol, a fresh server each:",
        photo.len() / 1024,
        plan.attack_seconds
    );
    println!("{table}");
    println!(
        "server peak resident memory {peak:.0} MiB; goals: the shopper keeps ≥ 0.80 of its answers alone \
         and gets nothing but 200"
    );
    Ok(())
}

/// Runs `attack` (until it is told to stop) beside one shopper searching with `photo` for
/// `seconds`; the attack returns a note for the table.
fn beside_a_shopper(
    server: &ServerProcess,
    photo: &[u8],
    seconds: Duration,
    attack: impl FnOnce(&AtomicBool) -> String + Send,
) -> Result<Attacked> {
    let stop = AtomicBool::new(false);
    let (cpu, rss) = (server.cpu_seconds(), server.resident_mib());
    let search = format!("{}/v1/search", server.url);
    let request = |client: &Client| client.post(&search).multipart(photo_form(photo, 10, None));
    let (shopper, note) = std::thread::scope(|scope| {
        let attacker = scope.spawn(|| attack(&stop));
        // Let the attack take hold before the shopper comes.
        std::thread::sleep(Duration::from_secs(1));
        let shopper = closed_loop(1, usize::MAX, seconds, &request);
        stop.store(true, Ordering::Relaxed);
        (shopper, attacker.join().expect("attacker panicked"))
    });
    Ok(Attacked {
        shopper: shopper?,
        cpu_seconds: server.cpu_seconds().zip(cpu).map_or(f64::NAN, |(b, a)| b - a),
        rss_growth_mib: server.resident_mib().zip(rss).map_or(f64::NAN, |(b, a)| b - a),
        note,
    })
}

/// `clients` connections that each send `request` declaring a body of `declared` bytes, then
/// `at_once` of it, then a byte every 2 s; a connection the server closes is opened again.
fn trickle(address: &str, clients: usize, request: &str, declared: usize, at_once: usize, stop: &AtomicBool) {
    let head = format!(
        "{request} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=X\r\n\
         Content-Length: {declared}\r\n\r\n"
    );
    let filler = vec![b'x'; at_once];
    let open = || -> Option<TcpStream> {
        let mut stream = TcpStream::connect(address).ok()?;
        stream.write_all(head.as_bytes()).ok()?;
        stream.write_all(&filler).ok()?;
        Some(stream)
    };
    let mut streams: Vec<Option<TcpStream>> = (0..clients).map(|_| open()).collect();
    while !stop.load(Ordering::Relaxed) {
        for stream in &mut streams {
            if stream.as_mut().is_none_or(|s| s.write_all(b"x").is_err()) {
                *stream = open();
            }
        }
        sleep_unless_stopped(Duration::from_secs(2), stop);
    }
}

/// Every 50 ms, a body that fills what is left of the server's 256 MiB budget for bodies
/// (read off its `/metrics`) to a KiB, below one search's body, then a byte of each per 2 s.
fn fill_the_budget(address: &str, url: &str, stop: &AtomicBool) {
    let mut fillers: Vec<(TcpStream, Instant)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        // Often enough to find the moments between the shopper's searches.
        sleep_unless_stopped(Duration::from_millis(50), stop);
        let left = body_bytes_held(url).and_then(|held| (256usize << 20).checked_sub(held));
        if let Some(left) = left.filter(|&left| left > 2048) {
            let head = format!(
                "POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=X\r\n\
                 Content-Length: {left}\r\n\r\n"
            );
            if let Ok(mut stream) = TcpStream::connect(address) {
                if stream.write_all(head.as_bytes()).is_ok() && stream.write_all(&vec![b'x'; left - 1024]).is_ok() {
                    fillers.push((stream, Instant::now()));
                }
            }
        }
        for (stream, last) in &mut fillers {
            if last.elapsed() >= Duration::from_secs(2) {
                let _ = stream.write_all(b"x");
                *last = Instant::now();
            }
        }
    }
}

fn sleep_unless_stopped(pause: Duration, stop: &AtomicBool) {
    let until = Instant::now() + pause;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `clients` connections sending bodies of `bytes` in 1-byte chunks, one after the other, each
/// at most `rate` bytes per second on the wire (so that the load is the same whatever the server
/// does with it, and the load generator leaves the shared cores alone).
fn tiny_chunks(address: &str, clients: usize, bytes: usize, rate: usize, stop: &AtomicBool) -> String {
    let head = "POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=X\r\n\
                Transfer-Encoding: chunked\r\n\r\n";
    let block = b"1\r\nx\r\n".repeat(10_000);
    let pace = Duration::from_secs_f64(block.len() as f64 / rate as f64);
    let sent = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..clients {
            scope.spawn(|| {
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut stream) = TcpStream::connect(address) else {
                        continue;
                    };
                    let mut body = 0;
                    let _ = stream.write_all(head.as_bytes());
                    while body < bytes && !stop.load(Ordering::Relaxed) && stream.write_all(&block).is_ok() {
                        body += block.len() / 6;
                        next += pace;
                        std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    }
                    let _ = stream.write_all(b"0\r\n\r\n");
                    let _ = stream.read(&mut [0u8; 512]);
                    sent.fetch_add(body, Ordering::Relaxed);
                }
            });
        }
    });
    format!("{:.1} MB of chunks sent", sent.into_inner() as f64 / 1e6)
}

/// Requests with a new 4 KB method name each, `rate` a second, until stopped; the note gives
/// `/metrics`' size.
fn invented_methods(address: &str, url: &str, rate: f64, stop: &AtomicBool) -> String {
    let started = Instant::now();
    let mut sent = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let Ok(stream) = TcpStream::connect(address) else {
            continue;
        };
        let mut reader = BufReader::new(stream);
        while !stop.load(Ordering::Relaxed) {
            let due = started + Duration::from_secs_f64(sent as f64 / rate);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let request = format!("M{sent}{} /v1/stats HTTP/1.1\r\nHost: x\r\n\r\n", "X".repeat(4096));
            if reader.get_mut().write_all(request.as_bytes()).is_err() || read_answer(&mut reader).is_none() {
                break;
            }
            sent += 1;
        }
    }
    let metrics = Client::new()
        .get(format!("{url}/metrics"))
        .send()
        .and_then(|r| r.text())
        .map_or(0, |t| t.len());
    format!("{sent} requests; /metrics {:.1} KB after", metrics as f64 / 1e3)
}

/// The value of the series `name` (with its labels) on the server's `/metrics`.
fn metric(url: &str, name: &str) -> Option<usize> {
    let text = Client::new().get(format!("{url}/metrics")).send().ok()?.text().ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))?
        .trim()
        .parse()
        .ok()
}

/// The bytes of request bodies the server holds.
fn body_bytes_held(url: &str) -> Option<usize> {
    metric(url, "lookalike_request_body_bytes")
}

/// Reads one answer with a Content-Length body; `None` if the connection ended.
fn read_answer(reader: &mut BufReader<TcpStream>) -> Option<()> {
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    reader.read_exact(&mut vec![0; length]).ok()
}

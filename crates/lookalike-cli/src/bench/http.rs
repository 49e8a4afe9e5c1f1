//! `lookalike bench http`: a bounded loopback load generator for photo search.
//!
//! The reference row is the same query done in-process (decode, preprocess, embed at
//! batch 1, exact search), measured in the same run, so the table shows what HTTP,
//! multipart parsing and queueing add on top of the pipeline itself.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lookalike::image::decode_image;
use lookalike::index::VectorIndex;
use lookalike::model::ModelDir;
use lookalike::shop::{OpenOptions, SearchRequest, Shop};
use lookalike::store::postgres::{redact, PgStore};
use lookalike::store::{store_products, SqliteStore, Store, VectorSearch};
use lookalike::types::{Filter, Metric, StoredProduct};
use reqwest::blocking::{multipart, Client};

use super::{hit_ids, percentile, recall, time_each};

#[derive(clap::Args)]
pub struct LoadPlan {
    /// Catalogue to serve, SQLite file or postgres:// URL (a `lookalike serve` is started on a free
    /// loopback port).
    #[arg(long)]
    pub db: String,
    /// The query photo uploaded with every request.
    #[arg(long)]
    pub image: PathBuf,
    /// Measure an already running server instead of starting one (it must serve `--db`).
    #[arg(long)]
    pub url: Option<String>,
    #[arg(value_parser = crate::args::count::<1, 4096>, long, value_delimiter = ',', default_value = "1,8")]
    pub concurrency: Vec<usize>,
    /// Most requests per concurrency level.
    #[arg(value_parser = crate::args::count::<1, 100_000_000>, long, default_value_t = 500)]
    pub requests: usize,
    /// Most seconds per concurrency level.
    #[arg(value_parser = crate::args::seconds, long, default_value_t = 20.0)]
    pub seconds: f64,
    #[arg(value_parser = crate::args::count::<1, 10_000>, short, long, default_value_t = 10)]
    pub k: usize,
    /// Restrict every query to this category (measures filtered search).
    #[arg(long)]
    pub category: Option<String>,
    /// Also measure each concurrency with explain=true (every result's heat maps and boxes).
    #[arg(long)]
    pub explain: bool,
}

/// A `lookalike serve` child that ends with this process.
pub struct ServerProcess {
    child: Child,
    pub url: String,
}

impl ServerProcess {
    /// `lookalike serve --read-only` over `db` with `extra` flags: this binary, or the one
    /// `LOOKALIKE_BENCH_SERVER` names (to measure another build's server with the same load).
    pub fn start(db: &str, threads: usize, extra: &[&str]) -> Result<Self> {
        let program = match std::env::var_os("LOOKALIKE_BENCH_SERVER") {
            Some(other) => PathBuf::from(other),
            None => std::env::current_exe()?,
        };
        let mut child = Command::new(program)
            .args(["serve", "--read-only", "--port", "0", "--threads", &threads.to_string()])
            .args(["--db", db])
            .args(extra)
            .env("LOOKALIKE_EXIT_ON_STDIN_EOF", "1")
            // Request logs would interleave with the tables; errors still show.
            .env(
                "LOOKALIKE_LOG",
                std::env::var("LOOKALIKE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start `lookalike serve`")?;
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        for line in stdout.lines() {
            if let Some(url) = line?.strip_prefix("lookalike serving on ") {
                return Ok(Self {
                    url: url.trim().to_string(),
                    child,
                });
            }
        }
        bail!("`lookalike serve --db {}` exited before listening", redact(db))
    }

    /// Resident memory of the server process now, from /proc (Linux only).
    pub fn resident_mib(&self) -> Option<f64> {
        self.memory_mib("VmRSS")
    }

    /// Its peak resident memory so far.
    pub fn peak_resident_mib(&self) -> Option<f64> {
        self.memory_mib("VmHWM")
    }

    /// CPU time the server process has used so far (user + system), from /proc.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // The fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        // SAFETY: sysconf only reads a configuration value.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (per_second > 0).then(|| ticks / per_second as f64)
    }

    fn memory_mib(&self, field: &str) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib / 1024.0)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Latencies {
    label: String,
    concurrency: usize,
    millis: Vec<f64>,
    errors: usize,
    first_error: Option<String>,
    elapsed: Duration,
}

impl Latencies {
    fn percentile(&self, p: f64) -> f64 {
        super::percentile(&self.millis, p)
    }

    fn per_second(&self) -> f64 {
        self.millis.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// The front door answering in this process: its latencies, and the catalogue's size.
fn in_process(models: &ModelDir, threads: usize, plan: &LoadPlan, photo: &[u8]) -> Result<(Latencies, usize)> {
    let options = OpenOptions {
        models: models.clone(),
        threads,
        ..OpenOptions::default()
    };
    let shop = Shop::open(&plan.db, options)?;
    let embedder = shop.embedder()?;
    let filter = Filter {
        category: plan.category.clone(),
        ..Filter::default()
    };
    let query = || -> Result<usize> {
        let image = decode_image(photo)?;
        let tensor = embedder.preprocessing.tensor_of(&image);
        let photo = embedder.run(&tensor, 1)?.image(0);
        let request = SearchRequest {
            filter: filter.clone(),
            ..SearchRequest::photo(&photo, plan.k)
        };
        Ok(shop.search(&request)?.hits.len())
    };
    query()?;
    let budget = Duration::from_secs_f64(plan.seconds);
    let started = Instant::now();
    let mut millis = Vec::new();
    while millis.len() < plan.requests && started.elapsed() < budget {
        let t = Instant::now();
        query()?;
        millis.push(t.elapsed().as_secs_f64() * 1e3);
    }
    millis.sort_by(f64::total_cmp);
    let latencies = Latencies {
        label: "in-process (decode + embed + search)".into(),
        concurrency: 1,
        millis,
        errors: 0,
        first_error: None,
        elapsed: started.elapsed(),
    };
    Ok((latencies, shop.len()?))
}

/// What closed-loop clients got: milliseconds per answer, by HTTP status (0: no answer).
pub struct Answers {
    pub by_status: std::collections::BTreeMap<u16, Vec<f64>>,
    pub first_failure: Option<String>,
    pub elapsed: Duration,
}

impl Answers {
    pub fn count(&self, status: impl Fn(u16) -> bool) -> usize {
        self.by_status
            .iter()
            .filter(|(s, _)| status(**s))
            .map(|(_, m)| m.len())
            .sum()
    }
}

/// `concurrency` clients each sending `request()` and waiting for the answer before the next,
/// until `requests` were sent or `budget` is over.
pub fn closed_loop(
    concurrency: usize,
    requests: usize,
    budget: Duration,
    request: &(dyn Fn(&Client) -> reqwest::blocking::RequestBuilder + Sync),
) -> Result<Answers> {
    let client = Client::builder().timeout(Duration::from_secs(60)).build()?;
    let issued = AtomicUsize::new(0);
    let first_failure = Mutex::new(None);
    let started = Instant::now();
    let answers: Vec<(u16, f64)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let (client, issued, first_failure) = (client.clone(), &issued, &first_failure);
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    while issued.fetch_add(1, Ordering::Relaxed) < requests && started.elapsed() < budget {
                        let t = Instant::now();
                        let status = match request(&client).send() {
                            Ok(r) => {
                                let status = r.status();
                                let body = r.text().unwrap_or_default();
                                if !status.is_success() && status != reqwest::StatusCode::SERVICE_UNAVAILABLE {
                                    first_failure
                                        .lock()
                                        .expect("slot")
                                        .get_or_insert(format!("{status}: {body}"));
                                }
                                status.as_u16()
                            }
                            Err(e) => {
                                first_failure.lock().expect("slot").get_or_insert(e.to_string());
                                0
                            }
                        };
                        mine.push((status, t.elapsed().as_secs_f64() * 1e3));
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("load worker panicked"))
            .collect()
    });
    let mut by_status = std::collections::BTreeMap::<u16, Vec<f64>>::new();
    for (status, millis) in answers {
        by_status.entry(status).or_default().push(millis);
    }
    by_status.values_mut().for_each(|m| m.sort_by(f64::total_cmp));
    Ok(Answers {
        by_status,
        first_failure: first_failure.into_inner().expect("slot"),
        elapsed: started.elapsed(),
    })
}

/// A multipart search form uploading `photo`.
pub fn photo_form(photo: &[u8], k: usize, category: Option<&str>) -> multipart::Form {
    let mut form = multipart::Form::new()
        .part(
            "image",
            multipart::Part::bytes(photo.to_vec())
                .file_name("query.jpg")
                .mime_str("image/jpeg")
                .expect("valid mime type"),
        )
        .text("k", k.to_string());
    if let Some(category) = category {
        form = form.text("category", category.to_string());
    }
    form
}

fn load(url: &str, plan: &LoadPlan, photo: &[u8], concurrency: usize, explain: bool) -> Result<Latencies> {
    let search = format!("{url}/v1/search");
    let request = |client: &Client| {
        let form = photo_form(photo, plan.k, plan.category.as_deref());
        client
            .post(&search)
            .multipart(if explain { form.text("explain", "true") } else { form })
    };
    let warm_up = closed_loop(concurrency, concurrency.max(3), Duration::from_secs(60), &request)?;
    if warm_up.count(|s| s != 200) > 0 {
        bail!("warm-up search failed: {}", warm_up.first_failure.unwrap_or_default());
    }
    let answers = closed_loop(
        concurrency,
        plan.requests,
        Duration::from_secs_f64(plan.seconds),
        &request,
    )?;
    Ok(Latencies {
        label: format!("HTTP POST /v1/search{}", if explain { ", explain=true" } else { "" }),
        concurrency,
        errors: answers.count(|s| s != 200),
        millis: answers.by_status.get(&200).cloned().unwrap_or_default(),
        first_error: answers.first_failure,
        elapsed: answers.elapsed,
    })
}

pub fn run(models: &ModelDir, threads: usize, plan: &LoadPlan) -> Result<()> {
    let photo = std::fs::read(&plan.image).with_context(|| format!("cannot read {}", plan.image.display()))?;
    if plan.concurrency.contains(&0) {
        bail!("concurrency must be at least 1");
    }
    eprintln!("measuring the in-process pipeline...");
    let (reference, catalogue_size) = in_process(models, threads, plan, &photo)?;

    let server = match &plan.url {
        Some(_) => None,
        None => Some(ServerProcess::start(&plan.db, threads, &[])?),
    };
    let url = plan
        .url
        .clone()
        .or_else(|| server.as_ref().map(|s| s.url.clone()))
        .expect("a url or a server");
    let mut rows = vec![reference];
    for &concurrency in &plan.concurrency {
        eprintln!("loading {url} with {concurrency} concurrent clients...");
        rows.push(load(&url, plan, &photo, concurrency, false)?);
        if plan.explain {
            rows.push(load(&url, plan, &photo, concurrency, true)?);
        }
    }

    let reference_p50 = rows[0].percentile(50.0);
    let mut table = crate::output::bordered_table([
        "path",
        "concurrency",
        "requests",
        "errors",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "p50 ÷ in-process",
    ]);
    for row in &rows {
        table.add_row([
            row.label.clone(),
            row.concurrency.to_string(),
            row.millis.len().to_string(),
            row.errors.to_string(),
            format!("{:.1}", row.per_second()),
            format!("{:.1}", row.percentile(50.0)),
            format!("{:.1}", row.percentile(90.0)),
            format!("{:.1}", row.percentile(99.0)),
            format!("{:.1}", row.millis.last().copied().unwrap_or(f64::NAN)),
            format!("{:.2}", row.percentile(50.0) / reference_p50),
        ]);
    }
    println!(
        "photo search, {} KB JPEG, k={}, {} products{}, {threads} threads; at most {} requests or {}s per row",
        photo.len() / 1024,
        plan.k,
        catalogue_size,
        plan.category
            .as_ref()
            .map_or(String::new(), |c| format!(", category {c:?}")),
        plan.requests,
        plan.seconds
    );
    println!("{table}");
    if let Some(mib) = server.as_ref().and_then(ServerProcess::resident_mib) {
        println!("server resident memory after the load: {mib:.0} MiB");
    }
    for row in &rows {
        if let Some(e) = &row.first_error {
            println!("first error at concurrency {}: {e}", row.concurrency);
        }
    }
    Ok(())
}

pub fn search(db: &Path, queries: usize, k: usize, category: Option<String>, postgres: Option<&str>) -> Result<()> {
    let index = VectorIndex::new(SqliteStore::open(db)?.products()?)?;
    let postgres = postgres.map(PgStore::connect).transpose()?;
    if let Some(pg) = &postgres {
        if pg.count()? != index.len() {
            bail!(
                "the PostgreSQL catalogue has {} products, {} has {}: copy it with `lookalike migrate` first",
                pg.count()?,
                db.display(),
                index.len()
            );
        }
    }
    if index.is_empty() || queries == 0 {
        bail!("need a catalogue with products and at least one query");
    }
    let filter = Filter {
        category,
        ..Filter::default()
    };
    let step = (index.len() / queries).max(1);
    let queries: Vec<Vec<f32>> = (0..index.len())
        .step_by(step)
        .take(queries)
        .map(|i| index.main_vector(i).to_vec())
        .collect();
    let timed = |search: &dyn Fn(&[f32]) -> Vec<String>| time_each(queries.iter().map(Vec::as_slice), search);
    let (exact_ms, exact) = timed(&|q| hit_ids(index.search_exact(q, k, Metric::Cosine, &filter)));
    let (fast_ms, fast) = timed(&|q| hit_ids(index.search(q, k, Metric::Cosine, &filter, None).expect("search")));
    let recall = |found: &[Vec<String>]| recall(&exact, found);
    let median = |m: &[f64]| m[m.len() / 2];
    let p99 = |m: &[f64]| percentile(m, 99.0);
    let mut table = crate::output::bordered_table(["scan", "p50 ms", "p99 ms", "speed-up", "recall@k vs exact"]);
    table.add_row([
        "exact f32 (reference)".to_string(),
        format!("{:.2}", median(&exact_ms)),
        format!("{:.2}", p99(&exact_ms)),
        "1.00".into(),
        "1.000".into(),
    ]);
    table.add_row([
        "int8 shortlist + exact re-score".to_string(),
        format!("{:.2}", median(&fast_ms)),
        format!("{:.2}", p99(&fast_ms)),
        format!("{:.2}", median(&exact_ms) / median(&fast_ms)),
        format!("{:.3}", recall(&fast)),
    ]);
    if let Some(pg) = &postgres {
        let (pg_ms, pg_found) = timed(&|q| {
            pg.nearest(&[q], k, Metric::Cosine, &filter, None)
                .expect("PostgreSQL search")
                .into_iter()
                .map(|hit| hit.product.id)
                .collect()
        });
        table.add_row([
            format!("PostgreSQL (SQL round trip, ef_search {})", pg.ef_search(k)),
            format!("{:.2}", median(&pg_ms)),
            format!("{:.2}", p99(&pg_ms)),
            format!("{:.2}", median(&exact_ms) / median(&pg_ms)),
            format!("{:.3}", recall(&pg_found)),
        ]);
    }
    println!(
        "{} products, {}-d, k={k}, {} queries, rayon threads {}",
        index.len(),
        index.dimension(),
        queries.len(),
        rayon::current_num_threads()
    );
    println!("{table}");
    if let Some(pg) = &postgres {
        println!(
            "PostgreSQL HNSW index: {:.1} MiB",
            pg.vector_index_bytes()? as f64 / (1024.0 * 1024.0)
        );
    }
    Ok(())
}

/// Products/s copying precomputed vectors into a new SQLite file (the reference) and into an
/// empty PostgreSQL database, in transactions of `batch` products.
pub fn ingest(from: &Path, postgres: &str, products: usize, batch: usize) -> Result<()> {
    let source = SqliteStore::open(from)?;
    let all = source.products()?;
    let Some(manifest) = source.manifest()? else {
        bail!("{} has no products", from.display());
    };
    let sample: Vec<StoredProduct> = all.into_iter().take(products).collect();
    let scratch = std::env::temp_dir().join(format!("lookalike-ingest-{}.db", std::process::id()));
    let remove_scratch = || {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", scratch.display()));
        }
    };
    remove_scratch();
    let into_sqlite = || -> Result<Box<dyn Store>> { Ok(Box::new(SqliteStore::open(&scratch)?)) };
    let into_postgres = || -> Result<Box<dyn Store>> {
        let pg = PgStore::connect(postgres)?;
        if pg.count()? > 0 {
            bail!("{} is not empty; ingest needs an empty database", redact(postgres));
        }
        Ok(Box::new(pg))
    };
    let mut table = crate::output::bordered_table(["into", "products", "seconds", "products/s", "÷ SQLite"]);
    let mut reference = None;
    for (name, open) in [
        (
            "SQLite (WAL, reference)",
            &into_sqlite as &dyn Fn() -> Result<Box<dyn Store>>,
        ),
        ("PostgreSQL (HNSW index built after the load)", &into_postgres),
    ] {
        let mut target = open()?;
        let started = Instant::now();
        store_products(&mut *target, &manifest, None, &sample, batch)?;
        let seconds = started.elapsed().as_secs_f64();
        let rate = sample.len() as f64 / seconds;
        let base = *reference.get_or_insert(rate);
        table.add_row([
            name.to_string(),
            sample.len().to_string(),
            format!("{seconds:.1}"),
            format!("{rate:.0}"),
            format!("{:.2}", rate / base),
        ]);
    }
    println!(
        "ingest of precomputed {}-d vectors, {batch} products per transaction",
        manifest.dimension
    );
    println!("{table}");
    remove_scratch();
    Ok(())
}

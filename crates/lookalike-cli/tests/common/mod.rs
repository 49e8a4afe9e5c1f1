//! Shared by the CLI and HTTP tests.
#![allow(dead_code)] // each test binary uses its own part of this

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

use lookalike::learn::train::{train_classifier, LabelledFeatures, TrainOptions};
use lookalike::store::{SqliteStore, Store};

/// Runs the real binary to completion.
pub fn lookalike(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lookalike"))
        .args(args)
        .output()
        .expect("run lookalike")
}

/// stdout then stderr, for assertions and failure messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The output of a run that must succeed.
pub fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", text(&o));
    text(&o)
}

/// stdout of a run that must succeed, as JSON.
pub fn json(o: &Output) -> Value {
    assert!(o.status.success(), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(o)))
}

/// The results of `search` or `similar --json`: `{metric, results: [...]}`, the API's shape.
pub fn results(o: &Output) -> Value {
    let answer = json(o);
    assert!(answer["metric"].is_string(), "{answer}");
    assert!(answer["results"].is_array(), "{answer}");
    answer["results"].clone()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `bench synth-catalogue`: `products` products into `db` by `generator`, from the vectors of `from`.
pub fn synth_catalogue(from: &Path, db: &Path, products: usize, generator: &str) {
    ok(lookalike(&[
        "bench",
        "synth-catalogue",
        "--from",
        s(from),
        "--db",
        s(db),
        "--products",
        &products.to_string(),
        "--generator",
        generator,
    ]));
}

/// A shopper's photo of two demo products side by side, each 400 × 400 on a 1000 × 500 grey
/// canvas (left product at x 50..450, right at 550..950, both at y 50..450), written as `out`
/// says (PNG, JPEG).
pub fn two_products_photo(left: &str, right: &str, out: &Path) {
    let mut canvas = image::RgbImage::from_pixel(1000, 500, image::Rgb([128, 128, 128]));
    for (photo, x) in [(left, 50), (right, 550)] {
        let pixels = lookalike::image::load_image(&demo().join("images").join(photo)).unwrap();
        let pixels = image::imageops::resize(&pixels, 400, 400, image::imageops::FilterType::Triangle);
        image::imageops::overlay(&mut canvas, &pixels, x, 50);
    }
    canvas.save(out).unwrap();
}

pub fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../demo")
}

/// A classifier head over the demo catalogue's own categories, trained on the features stored in
/// `db` (an indexed demo catalogue), written to `out`.
pub fn demo_classifier(db: &Path, out: &Path) {
    let store = SqliteStore::open(db).unwrap();
    let products = store.products().unwrap();
    let classes: Vec<String> = products
        .iter()
        .filter_map(|p| p.info.category.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let data = LabelledFeatures {
        features: products.iter().flat_map(|p| p.vector.iter().copied()).collect(),
        labels: products
            .iter()
            .map(|p| {
                classes
                    .iter()
                    .position(|c| Some(c) == p.info.category.as_ref())
                    .unwrap()
            })
            .collect(),
        dimension: products[0].vector.len(),
        classes,
    };
    let sha = store.manifest().unwrap().unwrap().weights_sha256;
    let options = TrainOptions {
        epochs: 60,
        batch_size: 16,
        ..TrainOptions::default()
    };
    let trained = train_classifier(&data, &data, &sha, &options, None, &mut |_| {}).unwrap();
    trained.head.save(out).unwrap();
}

/// A running `lookalike serve`; it exits when this test process does (its stdin closes).
pub struct Server {
    pub base: String,
    /// The catalogue it serves (SQLite path or PostgreSQL URL).
    pub db: String,
    _child: ChildGuard,
    _dir: tempfile::TempDir,
}

impl Server {
    /// The folder the server keeps uploaded images in.
    pub fn upload_dir(&self) -> PathBuf {
        self._dir.path().join("uploads")
    }

    /// Peak resident memory of the server process so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self._child.0.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status");
        kib * 1024
    }
}

/// Statics are never dropped, so the server is told to exit when our end of its stdin closes,
/// which the OS does when this test process exits.
struct ChildGuard(#[allow(dead_code)] Child);

/// Starts the real binary on a free port over `db` with `args`, keeping `dir` alive with it
/// (and keeping uploads in it unless `args` say where).
pub fn serve(db: &str, args: &[String], token: &str, dir: tempfile::TempDir) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lookalike"));
    command.args(["serve", "--port", "0", "--threads", "2", "--db", db]);
    if !args.iter().any(|a| a == "--upload-dir") {
        command.args(["--upload-dir", dir.path().join("uploads").to_str().unwrap()]);
    }
    let mut child = command
        .args(args)
        .env("LOOKALIKE_TOKEN", token)
        .env("LOOKALIKE_EXIT_ON_STDIN_EOF", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut base = None;
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(url) = line.strip_prefix("lookalike serving on ") {
            base = Some(url.trim().to_string());
            break;
        }
    }
    Server {
        base: base.expect("server printed its address"),
        db: db.to_string(),
        _child: ChildGuard(child),
        _dir: dir,
    }
}

/// A new, empty database on the PostgreSQL that `scripts/pg.sh run` started
/// (`LOOKALIKE_TEST_POSTGRES`); the whole cluster is thrown away after the tests.
pub fn postgres_db() -> String {
    let base = std::env::var("LOOKALIKE_TEST_POSTGRES").expect(
        "LOOKALIKE_TEST_POSTGRES is not set: run the tests through `scripts/pg.sh run cargo test`, \
         or point it at a PostgreSQL with pgvector where databases may be created",
    );
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let name = format!(
        "test_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut client = postgres::Client::connect(&base, postgres::NoTls).expect("connect to the test PostgreSQL");
    client.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    let (server, _) = base.rsplit_once('/').expect("a URL ending in /dbname");
    format!("{server}/{name}")
}

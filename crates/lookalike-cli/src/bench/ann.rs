//! `lookalike bench ann`: lookalike's searches beside FAISS, hnswlib and usearch (run by
//! `bench/ann_peers.py` in a Python that has them) on the same vectors and held-out queries, one
//! query at a time: queries/s, p50/p99, recall@k against exact search, build time, memory.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use lookalike::catalogue::export::export_npy;
use lookalike::index::{SearchMode, VectorIndex};
use lookalike::store::{SqliteStore, Store};
use lookalike::types::{Filter, Metric};
use serde::Deserialize;

use super::{hit_ids, percentile, recall, time_each};

/// Search breadths tried for every graph, as `ann_peers.py` does.
const EFS: [usize; 5] = [16, 32, 64, 128, 256];

const PEERS_SCRIPT: (&str, &str) = ("ann_peers.py", include_str!("../../../../bench/ann_peers.py"));

#[derive(Debug, Deserialize)]
struct Row {
    library: String,
    setting: Option<String>,
    build_s: Option<f64>,
    memory_mb: Option<f64>,
    qps: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    recall: Option<f64>,
    error: Option<String>,
}

/// `python`: a Python and the peers to run in it.
pub fn run(db: &Path, queries: usize, k: usize, python: Option<(String, Vec<String>)>, threads: usize) -> Result<()> {
    let products = SqliteStore::open_read_only(db)?.products()?;
    if products.len() < 2 * queries.max(k) {
        bail!(
            "{} has {} products, too few for {queries} held-out queries",
            db.display(),
            products.len()
        );
    }
    // Held-out queries spread over the catalogue: a query is never its own answer.
    let step = products.len() / queries;
    let (query_products, base): (Vec<_>, Vec<_>) = products
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % step == 0 && i / step < queries);
    let query_products: Vec<_> = query_products.into_iter().map(|(_, p)| p).collect();
    let base: Vec<_> = base.into_iter().map(|(_, p)| p).collect();
    let dimension = base[0].vector.len();
    let started = Instant::now();
    let count = base.len();
    let index = VectorIndex::new(base)?;
    let build_s = started.elapsed().as_secs_f64();
    let filter = Filter::default();
    let timed =
        |search: &dyn Fn(&[f32]) -> Vec<String>| time_each(query_products.iter().map(|q| q.vector.as_slice()), search);
    let (exact_ms, exact) = timed(&|q| hit_ids(index.search_exact(q, k, Metric::Cosine, &filter)));
    let (scan_ms, scan) = timed(&|q| hit_ids(index.search(q, k, Metric::Cosine, &filter, None).expect("search")));
    let recall = |found: &[Vec<String>]| recall(&exact, found);
    let n = count as f64;
    let row = |setting: &str, memory_mb: f64, millis: &[f64], recall: f64| Row {
        library: "lookalike".into(),
        setting: Some(setting.into()),
        build_s: Some(build_s),
        memory_mb: Some(memory_mb),
        qps: Some(millis.len() as f64 / (millis.iter().sum::<f64>() / 1e3)),
        p50_ms: Some(percentile(millis, 50.0)),
        p99_ms: Some(percentile(millis, 99.0)),
        recall: Some(recall),
        error: None,
    };
    let mut rows = vec![
        row(
            "exact f32 scan",
            n * 4.0 * dimension as f64 / f64::from(1 << 20),
            &exact_ms,
            1.0,
        ),
        row(
            "int8 shortlist + f32 re-score",
            n * 5.0 * dimension as f64 / f64::from(1 << 20),
            &scan_ms,
            recall(&scan),
        ),
    ];
    eprintln!("building the HNSW graph of {count} vectors...");
    let mut index = index;
    let started = Instant::now();
    index.set_mode(SearchMode::Approximate { ef: EFS[0] })?;
    let graph_build_s = started.elapsed().as_secs_f64();
    let index_mib = index.vector_bytes() as f64 / f64::from(1 << 20);
    for ef in EFS {
        index.set_mode(SearchMode::Approximate { ef })?;
        let (millis, found) = timed(&|q| hit_ids(index.search(q, k, Metric::Cosine, &filter, None).expect("search")));
        rows.push(Row {
            build_s: Some(graph_build_s),
            ..row(
                &format!("HNSW int8 M16 ef{ef} + f32 re-score"),
                index_mib,
                &millis,
                recall(&found),
            )
        });
    }
    if let Some((python, names)) = python {
        eprintln!("running {} with {python}...", names.join(", "));
        let dir = tempfile::tempdir()?;
        let (base_npy, queries_npy) = (dir.path().join("base.npy"), dir.path().join("queries.npy"));
        let base: Vec<&[f32]> = (0..index.len()).map(|p| index.main_vector(p)).collect();
        export_npy(&base, &base_npy)?;
        export_npy(
            &query_products.iter().map(|p| p.vector.as_slice()).collect::<Vec<_>>(),
            &queries_npy,
        )?;
        // Memory goes to the peers: they hold their own copies of every vector. The products'
        // vectors, freed as they moved into the index, stayed in the heap (5 GB at 1M).
        drop(index);
        crate::return_freed_heap();
        match peers(&python, &names, &base_npy, &queries_npy, k, threads) {
            Ok(peer_rows) => rows.extend(peer_rows),
            Err(err) => rows.push(Row {
                library: "peers".into(),
                setting: None,
                build_s: None,
                memory_mb: None,
                qps: None,
                p50_ms: None,
                p99_ms: None,
                recall: None,
                error: Some(format!("{err:#}")),
            }),
        }
    }
    let reference = rows[1].qps.unwrap_or(1.0);
    let mut table = crate::output::bordered_table([
        "library",
        "setting",
        "build s",
        "memory MiB",
        "queries/s",
        "p50 ms",
        "p99 ms",
        &format!("recall@{k}"),
        "÷ lookalike int8 scan",
    ]);
    let cell = |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    for r in &rows {
        match &r.error {
            Some(error) => table.add_row([r.library.clone(), error.clone()]),
            None => table.add_row([
                r.library.clone(),
                r.setting.clone().unwrap_or_default(),
                cell(r.build_s, 1),
                cell(r.memory_mb, 0),
                cell(r.qps, 0),
                cell(r.p50_ms, 2),
                cell(r.p99_ms, 2),
                cell(r.recall, 3),
                cell(r.qps.map(|q| q / reference), 2),
            ]),
        };
    }
    println!(
        "{} products, {dimension}-d, {} held-out queries one at a time, k={k}, {threads} build threads",
        count,
        query_products.len()
    );
    println!("{table}");
    Ok(())
}

/// The peers' rows, from `bench/ann_peers.py` run on the vectors in `base` and `queries` (.npy).
fn peers(python: &str, names: &[String], base: &Path, queries: &Path, k: usize, threads: usize) -> Result<Vec<Row>> {
    super::python_json_lines(
        python,
        PEERS_SCRIPT,
        [
            "--base".into(),
            base.as_os_str().to_owned(),
            "--queries".into(),
            queries.as_os_str().to_owned(),
            "-k".into(),
            k.to_string().into(),
            "--threads".into(),
            threads.to_string().into(),
            "--peers".into(),
            names.join(",").into(),
        ],
    )
}

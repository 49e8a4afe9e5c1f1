//! lookalike inside another program: a line-oriented service that a shop's own backend can run
//! as a child process. It indexes a catalogue (only what changed), then reads requests from
//! stdin, one per line, and answers each with one line of JSON on stdout:
//!
//! ```text
//! photo PATH [K]      the products that look like the photo at PATH
//! words TEXT...       the products whose title, category or description has these words
//! similar ID [K]      the products that look like product ID
//! ```
//!
//! A bad request gets `{"error": {"kind", "message"}}` and the service goes on.
//!
//! ```text
//! cargo run --release -p lookalike --example photo_service -- demo/catalogue.csv /tmp/demo.db
//! photo demo/images/24-mb01.jpg 3
//! ```

use std::io::{BufRead, Write};

use lookalike::error::Error;
use lookalike::shop::{Framing, IndexRequest, OpenOptions, SearchRequest, Shop};
use lookalike::types::{Filter, Metric, Scored, Words};
use serde_json::{json, Value};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(catalogue), Some(db)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: photo_service CATALOGUE DATABASE");
    };
    let shop = Shop::open(
        &db,
        OpenOptions {
            read_only: false,
            ..OpenOptions::default()
        },
    )?;
    let summary = shop.index(&IndexRequest::new(&catalogue), &mut |_, _| {})?;
    eprintln!(
        "{} products, {} embedded now; send requests on stdin",
        summary.report.total, summary.report.embedded
    );
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let answer = match answer(&shop, line?.trim()) {
            Ok(hits) => json!({ "results": hits }),
            Err(err) => json!({ "error": { "kind": kind(&err), "message": err.to_string() } }),
        };
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
    Ok(())
}

fn answer(shop: &Shop, request: &str) -> Result<Vec<Value>, Error> {
    let (verb, rest) = request.split_once(' ').unwrap_or((request, ""));
    // The last word is K when it is a number.
    let (subject, k) = match rest.rsplit_once(' ').map(|(s, k)| (s, k.parse::<usize>())) {
        Some((subject, Ok(k))) => (subject, k),
        _ => (rest, 5),
    };
    let hits = match verb {
        "photo" => {
            // As `lookalike search PHOTO`: the product found in the photo, or all of it.
            let photo = shop.embed_photo(subject.as_ref(), &Framing::default())?;
            shop.search(&SearchRequest::located(&photo, k))?.hits
        }
        "words" => {
            let words = Words::parse(rest)?;
            let request = SearchRequest {
                photo: None,
                whole_photo: None,
                part_cells: None,
                words: Some(&words),
                k: 5,
                metric: Metric::Cosine,
                filter: Filter::default(),
                diversity: 0.0,
                likely_categories: None,
            };
            shop.search(&request)?.hits
        }
        "similar" => shop.similar(subject, k, Metric::Cosine, &Filter::default(), 0.0)?,
        _ => {
            return Err(Error::invalid(format!(
                "unknown request {verb:?}: photo, words or similar"
            )))
        }
    };
    Ok(hits.iter().map(hit_json).collect())
}

fn hit_json(hit: &Scored) -> Value {
    json!({ "id": hit.product.id, "title": hit.product.info.title, "score": hit.score })
}

fn kind(err: &Error) -> &'static str {
    match err {
        Error::NotFound(_) => "not_found",
        Error::Conflict(_) => "conflict",
        Error::InvalidInput(_) => "invalid_input",
        Error::Image { .. } => "unusable_photo",
        Error::WrongModel(_) => "wrong_model",
        Error::Overloaded(_) => "overloaded",
        Error::StoreUnavailable(_) => "store_unavailable",
        Error::Internal(_) => "internal",
    }
}

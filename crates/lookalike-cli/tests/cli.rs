//! The `lookalike` binary end to end on the committed demo catalogue (real photos, real weights).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use lookalike::model::ModelManifest;
use lookalike::store::{SqliteStore, Store};
use serde_json::Value;

const DEMO_PRODUCTS: usize = 60;

mod common;
use common::{demo, demo_classifier, json, lookalike, results, s, synth_catalogue, text, two_products_photo};

/// `train classifier` on ImageFolder `train`/`val` into `out`, with `extra` flags.
fn train_classifier(train: &Path, val: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "classifier",
        "--train",
        s(train),
        "--val",
        s(val),
        "--out",
        s(out),
    ];
    args.extend(extra);
    lookalike(&args)
}

/// The last epoch's training loss is under half the first's, in the history.json beside a head.
fn assert_training_loss_halved(history_json: &Path) {
    let history: Value = serde_json::from_slice(&std::fs::read(history_json).unwrap()).unwrap();
    let epochs = history["epochs"].as_array().unwrap();
    let loss = |e: &Value| e["train_loss"].as_f64().unwrap();
    assert!(loss(epochs.last().unwrap()) < loss(&epochs[0]) * 0.5, "{history}");
}

/// The demo catalogue indexed once per test binary, shared read-only by the query tests.
fn demo_db() -> &'static Path {
    static DB: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DB.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("demo.db");
        let out = lookalike(&["index", s(&demo().join("catalogue.csv")), "--db", s(&db)]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("{DEMO_PRODUCTS} embedded")),
            "{}",
            text(&out)
        );
        (dir, db)
    })
    .1
}

#[test]
fn search_by_photo_finds_the_product_itself_first_with_its_metadata() {
    let db = demo_db();
    let hits = results(&lookalike(&[
        "search",
        s(&demo().join("images/mh01.jpg")),
        "--db",
        s(db),
        "-k",
        "5",
        "--json",
    ]));
    let hits = hits.as_array().unwrap();
    assert_eq!(hits.len(), 5);
    assert_eq!(hits[0]["id"], "MH01");
    assert_eq!(hits[0]["title"], "Chaz Kangeroo Hoodie");
    assert_eq!(hits[0]["price"], 52.0);
    assert_eq!(hits[0]["url"], "https://luma.example/chaz-kangeroo-hoodie.html");
    assert!(hits[0]["score"].as_f64().unwrap() > 0.999);
    let scores: Vec<f64> = hits.iter().map(|h| h["score"].as_f64().unwrap()).collect();
    // A photo that matches a product this closely keeps its look-alikes in cosine order.
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    assert!(scores.iter().all(|s| (-1.0..=1.0001).contains(s)));
}

#[test]
fn a_photo_matching_no_product_closely_brings_the_kind_its_closest_products_share() {
    let db = demo_db();
    let hits = results(&lookalike(&[
        "search",
        s(&demo().join("../tests/web/fixtures/two-products.jpg")),
        "--whole",
        "--db",
        s(db),
        "-k",
        "60",
        "--json",
    ]));
    let hits = hits.as_array().unwrap();
    assert_eq!(hits.len(), 60, "the whole demo catalogue");
    let scored: Vec<(String, String, f32)> = hits
        .iter()
        .map(|h| {
            let text = |field: &str| h[field].as_str().unwrap().to_string();
            (text("id"), text("category"), h["score"].as_f64().unwrap() as f32)
        })
        .collect();
    // The rule, written out again: in cosine order, each product raised by twice the mean cosine
    // of its category's 5 best products.
    let mut by_cosine = scored.clone();
    by_cosine.sort_by(|a, b| b.2.total_cmp(&a.2));
    assert!(
        by_cosine[0].2 < 0.70,
        "the photo matches no product closely: {by_cosine:?}"
    );
    let raised: Vec<f32> = by_cosine
        .iter()
        .map(|(_, category, score)| {
            let best: Vec<f32> = by_cosine
                .iter()
                .filter(|other| &other.1 == category)
                .map(|other| other.2)
                .take(5)
                .collect();
            score + 2.0 * best.iter().sum::<f32>() / best.len() as f32
        })
        .collect();
    let mut expected: Vec<usize> = (0..by_cosine.len()).collect();
    expected.sort_by(|&a, &b| raised[b].total_cmp(&raised[a]));
    let expected: Vec<&str> = expected.iter().map(|&i| by_cosine[i].0.as_str()).collect();
    let answered: Vec<&str> = scored.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(answered, expected);
    assert_ne!(
        answered,
        by_cosine.iter().map(|(id, _, _)| id.as_str()).collect::<Vec<_>>()
    );
    // The bags come first, together, though a hoodie's photo scores higher than two of them.
    assert!(hits[..4].iter().all(|h| h["category"] == "Gear/Bags"), "{hits:#?}");
}

#[test]
fn similar_products_are_mostly_of_the_same_category() {
    let db = demo_db();
    // Watches look like watches: the 3 other watches should be the 3 nearest.
    let hits = results(&lookalike(&["similar", "24-MG01", "--db", s(db), "-k", "3", "--json"]));
    let hits = hits.as_array().unwrap();
    assert_eq!(hits.len(), 3, "{hits:#?}");
    assert!(hits.iter().all(|h| h["id"] != "24-MG01"));
    assert!(hits.iter().all(|h| h["category"] == "Gear/Watches"), "{hits:#?}");
}

#[test]
fn filters_restrict_results() {
    let db = demo_db();
    let q = demo().join("images/mh01.jpg");
    let hits = results(&lookalike(&[
        "search",
        s(&q),
        "--db",
        s(db),
        "-k",
        "50",
        "--json",
        "--category",
        "gear/bags",
        "--max-price",
        "40",
    ]));
    let hits = hits.as_array().unwrap();
    assert!(!hits.is_empty());
    for h in hits {
        assert_eq!(h["category"], "Gear/Bags");
        assert!(h["price"].as_f64().unwrap() <= 40.0);
    }
    let euclid = results(&lookalike(&[
        "search",
        s(&q),
        "--db",
        s(db),
        "-k",
        "3",
        "--metric",
        "euclidean",
        "--json",
    ]));
    assert_eq!(euclid[0]["id"], "MH01");
    assert!(euclid[0]["score"].as_f64().unwrap() < 1e-3, "distance to itself");
    let table = lookalike(&["search", s(&q), "--db", s(db), "-k", "3"]);
    let shown = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(
        shown.contains("MH01") && shown.contains("Chaz Kangeroo") && shown.contains("similarity"),
        "{shown}"
    );
    // A 100-column terminal holds it (long titles wrap; `--json` has whole paths).
    assert!(shown.lines().all(|l| l.chars().count() <= 100), "{shown}");
}

#[test]
fn export_writes_npy_and_json_rows() {
    let db = demo_db();
    let dir = tempfile::tempdir().unwrap();
    let (npy, rows) = (dir.path().join("e.npy"), dir.path().join("p.json"));
    let out = lookalike(&["export", "--db", s(db), "--npy", s(&npy), "--json", s(&rows)]);
    assert!(out.status.success(), "{}", text(&out));
    let bytes = std::fs::read(&npy).unwrap();
    let file = npyz::NpyFile::new(&bytes[..]).unwrap();
    assert_eq!(file.shape(), &[DEMO_PRODUCTS as u64, 1280]);
    let rows: Value = serde_json::from_slice(&std::fs::read(&rows).unwrap()).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), DEMO_PRODUCTS);
}

#[test]
fn embed_and_classify_report_per_image() {
    let hoodie = demo().join("images/mh01.jpg");
    let out = json(&lookalike(&["embed", s(&hoodie), "--json"]));
    assert_eq!(out[0]["embedding"].as_array().unwrap().len(), 1280);
    let labels = json(&lookalike(&["classify", "--imagenet", s(&hoodie), "--json"]));
    assert_eq!(labels[0]["top"][0]["label"], "sweatshirt");
    assert_eq!(labels[0]["top"].as_array().unwrap().len(), 5);
}

#[test]
fn a_box_searches_that_part_of_the_photo_only() {
    let db = demo_db();
    let dir = tempfile::tempdir().unwrap();
    let photo = dir.path().join("two.png");
    two_products_photo("24-mb01.jpg", "mh03.jpg", &photo);
    let top = |region: &str| -> String {
        let out = lookalike(&["search", s(&photo), "--db", s(db), "-k", "3", "--box", region, "--json"]);
        results(&out)[0]["id"].as_str().unwrap().to_string()
    };
    assert_eq!(top("50,50,450,450"), "24-MB01");
    assert_eq!(top("[550, 50, 950, 450]"), "MH03");
    // What lies outside the photo is dropped.
    assert_eq!(top("-100,-20,450.5,600"), "24-MB01");

    for (region, status, says) in [
        ("1,2,3", 2, "four numbers"),
        ("5,0,1,1", 2, "x0 < x1"),
        ("0,0,NaN,1", 2, "finite"),
        ("2000,0,2100,100", 1, "lies outside the photo (1000x500 pixels)"),
    ] {
        let out = lookalike(&["search", s(&photo), "--db", s(db), "--box", region]);
        assert_eq!(out.status.code(), Some(status), "{region}: {}", text(&out));
        assert!(text(&out).contains(says), "{region}: {}", text(&out));
    }
    let out = lookalike(&["search", "--text", "bag", "--db", s(db), "--box", "0,0,10,10"]);
    assert_eq!(out.status.code(), Some(2), "a box needs a photo: {}", text(&out));
}

#[test]
fn explain_says_which_part_matched_in_json_and_draws_it() {
    let db = demo_db();
    let dir = tempfile::tempdir().unwrap();
    let photo = dir.path().join("two.png");
    two_products_photo("24-mb01.jpg", "mh03.jpg", &photo);
    let grid = dir.path().join("why.png");
    let args = [
        "search",
        s(&photo),
        "--db",
        s(db),
        "-k",
        "2",
        "--box",
        "0,0,1000,500",
        "--explain",
    ];
    let out = lookalike(&[&args[..], &["--json"]].concat());
    let hits = results(&out);
    for hit in hits.as_array().unwrap() {
        let explanation = &hit["explanation"];
        assert_eq!(explanation["matched_image"], hit["matched_image"], "{hit}");
        let heat = &explanation["query_heatmap"];
        let values = heat["values"].as_array().unwrap();
        assert_eq!(
            values.len() as u64,
            heat["width"].as_u64().unwrap() * heat["height"].as_u64().unwrap()
        );
        let query_box: Vec<f64> = explanation["query_box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert!(query_box[0] < query_box[2] && query_box[2] <= 1000.0, "{hit}");
    }
    let table = ok_text(lookalike(&[&args[..], &["--grid", s(&grid)]].concat()));
    assert!(table.contains("#1 matched by the part"), "{table}");
    let drawn = image::open(&grid).unwrap();
    assert!(drawn.width() > 600 && drawn.height() > 400, "two rows of photos");
    let out = lookalike(&["search", s(&photo), "--db", s(db), "--explain", "--regions"]);
    assert_eq!(out.status.code(), Some(2), "explain one search: {}", text(&out));
}

#[test]
fn eval_scenes_pastes_held_out_photos_onto_backgrounds_and_measures_the_true_box() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/luma-shop");
    let db = dir.path().join("shop.db");
    ok_text(lookalike(&["index", s(&shop.join("magento.csv")), "--db", s(&db)]));
    let backgrounds = demo().join("images");
    let run = |db: &Path, pairs: &str| {
        let args = [
            "eval",
            "scenes",
            "--db",
            s(db),
            "--backgrounds",
            s(&backgrounds),
            "--singles",
            "16",
            "--pairs",
            pairs,
            "--json",
        ];
        serde_json::from_str::<Value>(&ok_text(lookalike(&args))).unwrap()
    };
    let report = run(&db, "6");
    assert_eq!(report, run(&db, "6"), "seeded: the same scenes every time");
    let singles = report["singles"].as_array().unwrap();
    assert_eq!(
        singles.len(),
        7,
        "whole, default search, true box, picked part, true box cut out, the default and the true box without local re-ranking: {report}"
    );
    let recall = |row: usize, at: &str| singles[row][at].as_f64().unwrap();
    for (row, single) in singles.iter().enumerate() {
        assert_eq!(single["queries"], 16, "{report}");
        assert!((0.0..=1.0).contains(&recall(row, "recall_at_1")), "{report}");
        assert!(recall(row, "recall_at_1") <= recall(row, "recall_at_5"), "{report}");
    }
    assert!(
        recall(2, "recall_at_5") >= recall(0, "recall_at_5"),
        "the true box finds more: {report}"
    );
    assert!(
        recall(1, "recall_at_5") >= recall(0, "recall_at_5"),
        "finding the product finds more than the whole photo: {report}"
    );
    assert!(recall(2, "recall_at_5") > 0.5, "{report}");
    assert!(
        recall(4, "recall_at_5") > 0.5,
        "the product cut out of the scene is found: {report}"
    );
    let clean = report["clean"].as_array().unwrap();
    assert_eq!(clean.len(), 2, "{report}");
    assert!(
        clean[1]["recall_at_1"].as_f64().unwrap() >= clean[0]["recall_at_1"].as_f64().unwrap() - 0.05,
        "packshots are found as well as before: {report}"
    );
    for key in [
        "pairs_both_in_whole_top_10",
        "pairs_both_in_found_regions_top_5",
        "pairs_both_in_own_box_top_5",
    ] {
        assert!((0.0..=1.0).contains(&report[key].as_f64().unwrap()), "{key}: {report}");
    }
    assert_eq!(report["pairs"], 6, "{report}");
    assert_eq!(report["learnt_kinds"], false, "{report}");

    // The same catalogue without its photos' cells: search orders a part's and a box's products
    // by their vectors alone, which are the rows measured without local re-ranking, and those go.
    let without_cells = dir.path().join("without-cells.db");
    ok_text(lookalike(&[
        "index",
        s(&shop.join("magento.csv")),
        "--db",
        s(&without_cells),
        "--no-local-cells",
    ]));
    let plain = run(&without_cells, "6");
    let plain_singles = plain["singles"].as_array().unwrap();
    assert_eq!(plain_singles.len(), 5, "{plain}");
    for (plain_row, row) in [(0, 0), (1, 5), (2, 6), (3, 3)] {
        for at in ["recall_at_1", "recall_at_5"] {
            assert_eq!(plain_singles[plain_row][at], singles[row][at], "{plain_row}: {plain}");
        }
    }
    assert_eq!(
        plain["pairs_both_in_found_regions_top_5"], report["pairs_both_in_found_regions_top_5_without_local_reranking"],
        "{plain}"
    );
    assert!(
        plain["pairs_both_in_found_regions_top_5_without_local_reranking"].is_null(),
        "{plain}"
    );

    // A catalogue of another backbone is measured with its own, not the default.
    let lite0 = dir.path().join("lite0.db");
    ok_text(lookalike(&[
        "--backbone",
        "lite0",
        "index",
        s(&shop.join("magento.csv")),
        "--db",
        s(&lite0),
    ]));
    let args = [
        "eval",
        "scenes",
        "--db",
        s(&lite0),
        "--backgrounds",
        s(&backgrounds),
        "--singles",
        "4",
        "--pairs",
        "0",
        "--json",
    ];
    let lite0_report: Value = serde_json::from_str(&ok_text(lookalike(&args))).unwrap();
    assert!(
        lite0_report["clean"][0]["recall_at_5"].as_f64().unwrap() > 0.5,
        "{lite0_report}"
    );

    let args = [
        "eval",
        "scenes",
        "--db",
        s(&db),
        "--backgrounds",
        s(&backgrounds),
        "--singles",
        "8",
        "--explain",
        "--json",
    ];
    let pointing: Value = serde_json::from_str(&ok_text(lookalike(&args))).unwrap();
    let rows = pointing["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{pointing}");
    for row in rows {
        assert_eq!(row["scenes"], 8, "{pointing}");
        for key in [
            "hottest_cell_on_product",
            "query_box_centre_on_product",
            "match_box_centre_on_product",
        ] {
            assert!((0.0..=1.0).contains(&row[key].as_f64().unwrap()), "{key}: {pointing}");
        }
    }
    assert!(
        rows[2]["hottest_cell_on_product"].as_f64().unwrap() >= 0.5,
        "the default explanation points at the product: {pointing}"
    );

    let demo_db = demo_db();
    let out = lookalike(&[
        "eval",
        "scenes",
        "--db",
        s(demo_db),
        "--backgrounds",
        s(&demo().join("images")),
    ]);
    assert!(
        !out.status.success() && text(&out).contains("two photos or more"),
        "{}",
        text(&out)
    );
}

#[test]
fn eval_kinds_and_descriptors_measure_known_answers() {
    // The catalogue's own photos, sorted into folders by kind: each finds itself first, whole
    // or by default (it matches itself closely, so it is searched whole).
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("kinds");
    for (folder, ids) in [
        ("trousers", ["mp01", "mp02", "mp03"]),
        ("hoodie", ["mh01", "mh02", "mh03"]),
    ] {
        std::fs::create_dir_all(photos.join(folder)).unwrap();
        for id in ids {
            let from = demo().join("images").join(format!("{id}.jpg"));
            std::fs::copy(from, photos.join(folder).join(format!("{id}.jpg"))).unwrap();
        }
    }
    let db = demo_db();
    let eval_kinds = |kinds: &str, json: bool| {
        let args = ["eval", "kinds", "--db", s(db), "--photos", s(&photos), "--kinds", kinds];
        lookalike(&[&args[..], if json { &["--json"][..] } else { &[][..] }].concat())
    };
    let report: Value = serde_json::from_str(&ok_text(eval_kinds(
        "trousers=Pants,hoodie=Hoodies & Sweatshirts",
        true,
    )))
    .unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "whole, default: {report}");
    for row in rows {
        assert_eq!(row["queries"], 6, "{report}");
        assert_eq!(row["precision_at_1"], 1.0, "{report}");
        assert!(row["precision_at_5"].as_f64().unwrap() > 0.2, "{report}");
        assert_eq!(row["per_kind"].as_array().unwrap().len(), 2, "{report}");
    }
    assert_eq!(report["searched_whole"], 1.0, "{report}");
    assert!(report["learnt_kinds"].is_null(), "{report}");
    let out = eval_kinds("trousers", false);
    assert_eq!(out.status.code(), Some(2), "not FOLDER=CATEGORY: {}", text(&out));
    let out = eval_kinds("socks=Socks", false);
    assert!(
        !out.status.success() && text(&out).contains("no photos in folders named"),
        "{}",
        text(&out)
    );

    let shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/luma-shop");
    let luma = dir.path().join("luma.db");
    ok_text(lookalike(&["index", s(&shop.join("magento.csv")), "--db", s(&luma)]));
    let args = ["eval", "descriptors", "--db", s(&luma), "--json"];
    let out = lookalike(&args);
    assert!(out.status.success(), "{}", text(&out));
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        text(&out).contains("lowest cosine 0.99") || text(&out).contains("lowest cosine 1.0"),
        "average pooling of the feature map is the stored vector: {}",
        text(&out)
    );
    let rows = rows.as_array().unwrap();
    assert_eq!(
        rows.len(),
        15 * 10,
        "15 descriptors (poolings, views, class signatures) × 10 variants"
    );
    for row in rows {
        let (at_1, at_5) = (
            row["recall_at_1"].as_f64().unwrap(),
            row["recall_at_5"].as_f64().unwrap(),
        );
        assert!((0.0..=1.0).contains(&at_1) && at_1 <= at_5, "{row}");
    }
    assert!(rows[0]["recall_at_5"].as_f64().unwrap() >= 0.5, "{}", rows[0]);
    let out = lookalike(&["eval", "descriptors", "--json"]);
    assert!(
        !out.status.success() && text(&out).contains("give a catalogue"),
        "{}",
        text(&out)
    );
}

/// `train kinds` says why it keeps nothing: kinds it cannot learn better than the nearest photo
/// tells (each one product, so a held-out product's kind is learnt from nothing), no kinds at
/// all, backgrounds that are not photos.
#[test]
fn train_kinds_refuses_what_it_cannot_learn_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for (i, name) in [
        "24-mb01", "24-mb02", "24-mb03", "24-mb04", "24-mg01", "24-mg02", "24-ug01", "24-ug02",
    ]
    .iter()
    .enumerate()
    {
        let folder = dir.path().join(format!("lone/kind-{i}"));
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::copy(
            demo().join(format!("images/{name}.jpg")),
            folder.join(format!("{name}.jpg")),
        )
        .unwrap();
    }
    let db = dir.path().join("lone.db");
    ok_text(lookalike(&["index", s(&dir.path().join("lone")), "--db", s(&db)]));
    let before = std::fs::read(&db).unwrap();
    let out = lookalike(&["train", "kinds", "--db", s(&db)]);
    assert!(
        !out.status.success() && text(&out).contains("not learnt well enough to keep"),
        "{}",
        text(&out)
    );
    assert!(std::fs::read(&db).unwrap() == before, "nothing written");

    let no_photos = dir.path().join("empty");
    std::fs::create_dir(&no_photos).unwrap();
    std::fs::write(no_photos.join("notes.jpg"), b"not a photo").unwrap();
    let out = lookalike(&["train", "kinds", "--db", s(&db), "--backgrounds", s(&no_photos)]);
    assert!(
        !out.status.success() && text(&out).contains("is a readable photo"),
        "{}",
        text(&out)
    );

    // Photos in a folder: products without categories.
    let uncategorised = dir.path().join("plain.db");
    ok_text(lookalike(&[
        "index",
        s(&demo().join("images")),
        "--db",
        s(&uncategorised),
    ]));
    let out = lookalike(&["train", "kinds", "--db", s(&uncategorised)]);
    assert!(
        !out.status.success() && text(&out).contains("this catalogue has 0 kinds"),
        "{}",
        text(&out)
    );
    let out = lookalike(&["train", "kinds", "--db", s(&dir.path().join("missing.db"))]);
    assert!(
        !out.status.success() && text(&out).contains("no catalogue database"),
        "{}",
        text(&out)
    );
}

#[test]
fn bad_queries_fail_clearly() {
    let db = demo_db();
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("q.jpg");
    std::fs::write(&bogus, b"definitely not a jpeg").unwrap();
    let out = lookalike(&["search", s(&bogus), "--db", s(db)]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not an image"), "{}", text(&out));
    let out = lookalike(&["search", s(&dir.path().join("missing.jpg")), "--db", s(db)]);
    assert!(
        !out.status.success() && text(&out).contains("cannot read file"),
        "{}",
        text(&out)
    );
    let out = lookalike(&["similar", "NOPE", "--db", s(db)]);
    assert!(
        !out.status.success() && text(&out).contains("no product with id \"NOPE\""),
        "{}",
        text(&out)
    );
    let out = lookalike(&["similar", "MH01", "--db", s(&dir.path().join("none.db"))]);
    assert!(
        !out.status.success() && text(&out).contains("no catalogue database"),
        "{}",
        text(&out)
    );
    let out = lookalike(&[
        "similar",
        "MH01",
        "--db",
        s(db),
        "--min-price",
        "10",
        "--max-price",
        "5",
    ]);
    assert!(
        !out.status.success() && text(&out).contains("above the maximum price"),
        "{}",
        text(&out)
    );
    let csv = dir.path().join("script.csv");
    std::fs::write(&csv, "id,image,url\n1,a.jpg,javascript:alert(1)\n").unwrap();
    let out = lookalike(&["index", s(&csv), "--db", s(&dir.path().join("x.db"))]);
    assert!(
        !out.status.success() && text(&out).contains("line 2") && text(&out).contains("not an http(s) address"),
        "{}",
        text(&out)
    );
    let csv = dir.path().join("bad.csv");
    std::fs::write(&csv, "id,title\n1,x\n").unwrap();
    let out = lookalike(&["index", s(&csv), "--db", s(&dir.path().join("x.db"))]);
    assert!(
        !out.status.success() && text(&out).contains("no image column"),
        "{}",
        text(&out)
    );
}

#[test]
fn bad_catalogue_images_are_skipped_with_reasons_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let cat = dir.path().join("cat");
    std::fs::create_dir_all(cat.join("tops")).unwrap();
    std::fs::copy(demo().join("images/mh01.jpg"), cat.join("tops/good.jpg")).unwrap();
    std::fs::write(cat.join("tops/empty.jpg"), b"").unwrap();
    std::fs::write(cat.join("tops/text.jpg"), b"just text").unwrap();
    let jpeg = std::fs::read(demo().join("images/mh02.jpg")).unwrap();
    std::fs::write(cat.join("tops/truncated.jpg"), &jpeg[..jpeg.len() / 3]).unwrap();
    let bomb = lookalike::image::hostile::png_header_only(100_000, 100_000, 8, 2);
    std::fs::write(cat.join("tops/bomb.png"), bomb).unwrap();
    let db = dir.path().join("c.db");
    let out = lookalike(&["index", s(&cat), "--db", s(&db)]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(3), "{t}");
    assert!(t.contains("empty.jpg: file is empty"), "{t}");
    assert!(t.contains("text.jpg: not an image"), "{t}");
    assert!(t.contains("truncated.jpg: cannot decode image"), "{t}");
    assert!(t.contains("bomb.png: image too large"), "{t}");
    assert!(t.contains("1 embedded") && t.contains("4 skipped"), "{t}");
    assert_eq!(SqliteStore::open(&db).unwrap().count().unwrap(), 1);
}

fn copy_demo(to: &Path) -> PathBuf {
    std::fs::create_dir_all(to.join("images")).unwrap();
    for f in std::fs::read_dir(demo().join("images")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, to.join("images").join(f.file_name().unwrap())).unwrap();
    }
    std::fs::copy(demo().join("catalogue.csv"), to.join("catalogue.csv")).unwrap();
    to.join("catalogue.csv")
}

#[test]
fn reindex_is_incremental_and_prune_and_remove_delete() {
    let dir = tempfile::tempdir().unwrap();
    let csv = copy_demo(&dir.path().join("shop"));
    let db = dir.path().join("s.db");
    assert!(lookalike(&["index", s(&csv), "--db", s(&db)]).status.success());
    // Change one image, rename one product, delete one image file.
    let images = dir.path().join("shop/images");
    std::fs::copy(images.join("mh02.jpg"), images.join("mh01.jpg")).unwrap();
    std::fs::remove_file(images.join("mh03.jpg")).unwrap();
    let text_csv = std::fs::read_to_string(&csv)
        .unwrap()
        .replace("Teton Pullover Hoodie", "Teton Hoodie v2");
    std::fs::write(&csv, text_csv).unwrap();
    let out = lookalike(&["index", s(&csv), "--db", s(&db), "--prune"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(3), "the missing image is reported: {t}");
    assert!(
        t.contains("1 embedded") && t.contains("57 unchanged") && t.contains("1 metadata updated"),
        "{t}"
    );
    assert!(t.contains("1 skipped") && t.contains("1 pruned"), "{t}");
    let store = SqliteStore::open(&db).unwrap();
    assert_eq!(store.count().unwrap(), DEMO_PRODUCTS - 1);
    assert_eq!(
        store.product("MH02").unwrap().unwrap().info.title.as_deref(),
        Some("Teton Hoodie v2")
    );
    assert_eq!(
        store.product("MH01").unwrap().unwrap().vector,
        store.product("MH02").unwrap().unwrap().vector
    );
    let out = lookalike(&["remove", "MH01", "--db", s(&db)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(store.product("MH01").unwrap().is_none());
    assert!(!lookalike(&["remove", "MH01", "--db", s(&db)]).status.success());
}

#[test]
fn a_database_of_another_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("other.db");
    SqliteStore::open(&db)
        .unwrap()
        .ensure_manifest(&ModelManifest {
            model: "resnet50".into(),
            weights_sha256: "0123456789abcdef".into(),
            preprocessing: "imagenet".into(),
            dimension: 2048,
            head: None,
            colour: None,
            precision: None,
        })
        .unwrap();
    let out = lookalike(&["index", s(&demo().join("catalogue.csv")), "--db", s(&db)]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("made by resnet50") && text(&out).contains("refusing to mix"),
        "{}",
        text(&out)
    );
}

#[test]
fn sigkill_mid_index_leaves_a_consistent_database_that_a_rerun_completes() {
    let dir = tempfile::tempdir().unwrap();
    let csv = copy_demo(&dir.path().join("shop"));
    let db = dir.path().join("k.db");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lookalike"))
        .args(["index", s(&csv), "--db", s(&db), "--batch-size", "2", "--threads", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut stored_before_kill = 0;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        if let Ok(store) = SqliteStore::open(&db) {
            stored_before_kill = store.count().unwrap_or(0);
            if stored_before_kill >= 6 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    assert!(stored_before_kill >= 6, "indexing did not get going");
    let store = SqliteStore::open(&db).unwrap();
    assert_eq!(store.integrity_check().unwrap(), "ok");
    let after_kill = store.count().unwrap();
    assert!(after_kill < DEMO_PRODUCTS, "killed too late to prove anything");
    assert_eq!(after_kill % 2, 0, "batches of 2 are written whole");
    let stored = store.products().unwrap();
    assert_eq!(stored.len(), after_kill);
    assert!(stored.iter().all(|p| p.vector.len() == 1280));
    let out = lookalike(&["index", s(&csv), "--db", s(&db)]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains(&format!("{} embedded", DEMO_PRODUCTS - after_kill)), "{t}");
    assert_eq!(store.count().unwrap(), DEMO_PRODUCTS);
}

/// Demo photos as an ImageFolder split: bags, watches, fitness gear and women's pants
/// (3 of each for training, the 4th for validation and test).
fn demo_split(root: &Path) -> (PathBuf, PathBuf) {
    let classes = [
        ("bags", "24-mb"),
        ("watches", "24-mg"),
        ("fitness", "24-ug"),
        ("pants", "wp"),
    ];
    for (split, numbers) in [("train", &["01", "02", "03"][..]), ("val", &["04"][..])] {
        for (class, prefix) in classes {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for n in numbers {
                let name = format!("{prefix}{n}.jpg");
                std::fs::copy(demo().join("images").join(&name), dir.join(&name)).unwrap();
            }
        }
    }
    (root.join("train"), root.join("val"))
}

#[test]
fn heads_train_on_real_photos_and_evaluate() {
    let dir = tempfile::tempdir().unwrap();
    let (train, val) = demo_split(dir.path());
    let cache = dir.path().join("cache");
    let classifier = dir.path().join("heads/classifier.safetensors");
    std::fs::create_dir_all(classifier.parent().unwrap()).unwrap();
    let out = train_classifier(
        &train,
        &val,
        &classifier,
        &["--epochs", "15", "--batch-size", "4", "--cache", s(&cache)],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_training_loss_halved(&dir.path().join("heads/history.json"));

    let report = json(&lookalike(&[
        "eval",
        "classify",
        "--model",
        s(&classifier),
        "--test",
        s(&val),
        "--json",
        "--cache",
        s(&cache),
    ]));
    assert_eq!(report["accuracy"].as_f64(), Some(1.0), "{report}");
    assert_eq!(report["confusion"].as_array().unwrap().len(), 4);

    let projection = dir.path().join("heads/projection.safetensors");
    let out = lookalike(&[
        "train",
        "metric",
        "--train",
        s(&train),
        "--val",
        s(&val),
        "--out",
        s(&projection),
        "--epochs",
        "10",
        "--dim",
        "32",
        "--per-class",
        "3",
        "--batch-size",
        "12",
        "--cache",
        s(&cache),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let retrieval = json(&lookalike(&[
        "eval",
        "retrieval",
        "--gallery",
        s(&train),
        "--queries",
        s(&val),
        "-k",
        "3",
        "--head",
        s(&projection),
        "--json",
        "--cache",
        s(&cache),
    ]));
    let mut keys: Vec<&str> = retrieval.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "k",
            "map_at_k",
            "precision_at_1",
            "precision_at_k",
            "queries",
            "recall_at_k"
        ]
    );
    assert_eq!(retrieval["queries"], 4);
    assert!(retrieval["precision_at_1"].as_f64().unwrap() >= 0.75, "{retrieval}");

    // A catalogue indexed through the projection: its vectors are 32-d, queries are projected too,
    // and a re-index without --head keeps using the stored head.
    let projected = dir.path().join("projected.db");
    let catalogue = demo().join("catalogue.csv");
    let out = lookalike(&["index", s(&catalogue), "--db", s(&projected), "--head", s(&projection)]);
    assert!(out.status.success(), "{}", text(&out));
    let manifest = SqliteStore::open(&projected).unwrap().manifest().unwrap().unwrap();
    assert_eq!(manifest.dimension, 32);
    assert!(manifest.head.unwrap().starts_with("projection 1280-32 sha256:"));
    let hits = results(&lookalike(&[
        "search",
        s(&demo().join("images/wp02.jpg")),
        "--db",
        s(&projected),
        "--json",
    ]));
    assert_eq!(hits[0]["id"], "WP02", "{hits}");
    assert!(hits[0]["score"].as_f64().unwrap() > 0.999);
    let again = lookalike(&["index", s(&catalogue), "--db", s(&projected)]);
    assert!(
        again.status.success() && text(&again).contains("0 embedded, 60 unchanged"),
        "{}",
        text(&again)
    );

    // A projection head is not a classifier, and one class is not enough to train on.
    let out = lookalike(&[
        "eval",
        "classify",
        "--model",
        s(&projection),
        "--test",
        s(&val),
        "--cache",
        s(&cache),
    ]);
    assert!(
        !out.status.success() && text(&out).contains("needs a Classifier head"),
        "{}",
        text(&out)
    );
    let single = dir.path().join("single");
    std::fs::create_dir_all(single.join("bags")).unwrap();
    std::fs::copy(train.join("bags/24-mb01.jpg"), single.join("bags/24-mb01.jpg")).unwrap();
    let out = train_classifier(&single, &val, &classifier, &["--cache", s(&cache)]);
    assert!(
        !out.status.success() && text(&out).contains("at least two classes"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_classifier_fine_tunes_the_last_blocks_and_serves_hybrid_search() {
    let dir = tempfile::tempdir().unwrap();
    let (train, val) = demo_split(dir.path());
    let cache = dir.path().join("cache");
    let head = dir.path().join("fine-tuned.safetensors");
    let out = train_classifier(
        &train,
        &val,
        &head,
        &[
            "--fine-tune-blocks",
            "2",
            "--epochs",
            "12",
            "--batch-size",
            "4",
            "--cache",
            s(&cache),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    // The default backbone's last two blocks (Lite1: 19 and 20) before the 1280-d features and 4 classes.
    assert!(
        text(&out).contains("with blocks 19+ fine-tuned 12288-1280-4"),
        "{}",
        text(&out)
    );
    assert_training_loss_halved(&dir.path().join("history.json"));

    let report = json(&lookalike(&[
        "eval",
        "classify",
        "--model",
        s(&head),
        "--test",
        s(&val),
        "--json",
        "--cache",
        s(&cache),
    ]));
    assert!(report["accuracy"].as_f64().unwrap() >= 0.75, "{report}");

    // Hybrid search with it, over a catalogue whose categories are the training classes.
    let db = dir.path().join("train.db");
    let out = lookalike(&["index", s(&train), "--db", s(&db)]);
    assert!(out.status.success(), "{}", text(&out));
    let hits = json(&lookalike(&[
        "search",
        s(&val.join("watches/24-mg04.jpg")),
        "--db",
        s(&db),
        "--hybrid",
        "--classifier",
        s(&head),
        "--coverage",
        "0.5",
        "--json",
    ]));
    assert_eq!(hits["predicted"][0]["category"], "watches", "{hits}");
    let results = hits["results"].as_array().unwrap();
    assert!(
        !results.is_empty() && results.iter().all(|r| r["category"] == "watches"),
        "{hits}"
    );

    let retrieval = json(&lookalike(&[
        "eval",
        "retrieval",
        "--gallery",
        s(&train),
        "--queries",
        s(&val),
        "-k",
        "3",
        "--classifier",
        s(&head),
        "--coverage",
        "0.5",
        "--json",
        "--cache",
        s(&cache),
    ]));
    assert!(retrieval["precision_at_1"].as_f64().unwrap() >= 0.75, "{retrieval}");

    let out = train_classifier(&train, &val, &head, &["--fine-tune-blocks", "17"]);
    assert!(
        !out.status.success() && text(&out).contains("between 0 and 16"),
        "{}",
        text(&out)
    );
}

#[test]
fn hybrid_search_ranks_within_the_predicted_category() {
    let dir = tempfile::tempdir().unwrap();
    let head = dir.path().join("classifier.safetensors");
    demo_classifier(demo_db(), &head);
    let photo = demo().join("images/24-mg01.jpg");
    let out = json(&lookalike(&[
        "search",
        s(&photo),
        "--db",
        s(demo_db()),
        "--hybrid",
        "--classifier",
        s(&head),
        "--coverage",
        "0.5",
        "--json",
    ]));
    let predicted: Vec<&str> = out["predicted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["category"].as_str().unwrap())
        .collect();
    assert_eq!(predicted[0], "Gear/Watches", "{out}");
    let results = out["results"].as_array().unwrap();
    assert!(!results.is_empty());
    assert!(
        results
            .iter()
            .all(|r| predicted.contains(&r["category"].as_str().unwrap())),
        "{out}"
    );

    let out = lookalike(&["search", s(&photo), "--db", s(demo_db()), "--hybrid"]);
    assert!(
        !out.status.success() && text(&out).contains("--classifier"),
        "{}",
        text(&out)
    );
}

#[test]
fn dedup_groups_identical_images() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("shop.csv");
    let image = |name: &str| demo().join("images").join(name).display().to_string();
    std::fs::write(
        &csv,
        format!(
            "id,title,image\nbag,Bag,{}\nbag-again,Same bag,{}\nwatch,Watch,{}\n",
            image("24-mb01.jpg"),
            image("24-mb01.jpg"),
            image("24-mg01.jpg")
        ),
    )
    .unwrap();
    let db = dir.path().join("shop.db");
    assert!(lookalike(&["index", s(&csv), "--db", s(&db)]).status.success());
    let groups = json(&lookalike(&["dedup", "--db", s(&db), "--json"]));
    assert_eq!(groups.as_array().unwrap().len(), 1, "{groups}");
    assert_eq!(groups[0]["kind"], "exact");
    assert_eq!(groups[0]["ids"], serde_json::json!(["bag", "bag-again"]));
}

#[test]
fn a_cnn_trains_from_scratch_on_fashion_mnist_idx_files() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fashion-mnist");
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("fmnist.safetensors");
    let out = lookalike(&[
        "train",
        "scratch",
        "--fashion-mnist",
        s(&fixture),
        "--out",
        s(&model),
        "--epochs",
        "3",
        "--seed",
        "7",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let history: Value = serde_json::from_slice(&std::fs::read(dir.path().join("history.json")).unwrap()).unwrap();
    let epochs = history["epochs"].as_array().unwrap();
    let loss = |epoch: usize| epochs[epoch]["train_loss"].as_f64().expect("a number");
    assert!(loss(2) < loss(0), "{history}");
    // 1,000 training images, 3 epochs: far above chance (0.1), far below the full run.
    assert!(history["test_accuracy"].as_f64().unwrap() > 0.6, "{history}");
    assert!(history["knn_at_1"].as_f64().unwrap() > 0.6, "{history}");
    assert!(lookalike::learn::scratch::FashionCnn::load(&model).is_ok());

    let out = lookalike(&["train", "scratch", "--fashion-mnist", s(dir.path()), "--out", s(&model)]);
    assert!(
        !out.status.success() && text(&out).contains("cannot open"),
        "{}",
        text(&out)
    );
}

/// Runs the binary with `args` in `cwd`, killed if it takes longer than `limit` (a hang fails
/// the test instead of stalling the suite).
fn lookalike_within(args: &[&str], cwd: &Path, limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lookalike"))
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("lookalike {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn hostile_catalogue_entries_are_skipped_or_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let minute = Duration::from_secs(60);
    // Two files that would share the id "tops/red": an error naming both.
    let clash = dir.path().join("clash");
    std::fs::create_dir_all(clash.join("tops")).unwrap();
    std::fs::copy(demo().join("images/mh01.jpg"), clash.join("tops/red.jpg")).unwrap();
    std::fs::copy(demo().join("images/mh02.jpg"), clash.join("tops/red.png")).unwrap();
    let out = lookalike_within(&["index", s(&clash), "--db", "c.db"], dir.path(), minute);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("\"tops/red\" is used twice") && t.contains("red.jpg") && t.contains("red.png"),
        "{t}"
    );

    // /dev/zero, a FIFO and a link loop beside a good photo: skipped with reasons, no hang.
    let shop = dir.path().join("shop");
    std::fs::create_dir_all(shop.join("bags")).unwrap();
    std::fs::copy(demo().join("images/24-mb01.jpg"), shop.join("bags/good.jpg")).unwrap();
    assert!(Command::new("mkfifo")
        .arg(shop.join("bags/pipe.jpg"))
        .status()
        .unwrap()
        .success());
    std::os::unix::fs::symlink(&shop, shop.join("bags/loop")).unwrap();
    let csv = dir.path().join("devices.csv");
    std::fs::write(
        &csv,
        "id,image\nZERO,/dev/zero\nPIPE,shop/bags/pipe.jpg\nGOOD,shop/bags/good.jpg\n",
    )
    .unwrap();
    for catalogue in [s(&csv), s(&shop)] {
        let db = dir.path().join("devices.db");
        let out = lookalike_within(&["index", catalogue, "--db", s(&db)], dir.path(), minute);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(3), "{t}");
        assert!(t.contains("pipe.jpg: ") && t.contains("not a regular file"), "{t}");
        assert!(t.contains("1 embedded"), "{t}");
        if catalogue == s(&csv) {
            assert!(t.contains("/dev/zero: cannot read file: not a regular file"), "{t}");
        } else {
            assert!(t.contains("link loop"), "{t}");
        }
        std::fs::remove_file(&db).unwrap();
    }

    // A file name that is not UTF-8 cannot be stored as text: skipped, not stored mangled.
    use std::os::unix::ffi::OsStrExt;
    let odd = dir.path().join("odd");
    std::fs::create_dir_all(&odd).unwrap();
    std::fs::copy(
        demo().join("images/mh03.jpg"),
        odd.join(std::ffi::OsStr::from_bytes(b"caf\xe9.jpg")),
    )
    .unwrap();
    let out = lookalike_within(&["index", s(&odd), "--db", "odd.db"], dir.path(), minute);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(3), "{t}");
    assert!(t.contains("not valid UTF-8"), "{t}");
}

#[test]
fn a_catalogue_indexed_through_a_relative_path_stores_absolute_image_paths() {
    let dir = tempfile::tempdir().unwrap();
    copy_demo(&dir.path().join("shop"));
    let out = lookalike_within(
        &["index", "shop/catalogue.csv", "--db", "rel.db"],
        dir.path(),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}", text(&out));
    let products = SqliteStore::open(&dir.path().join("rel.db"))
        .unwrap()
        .products()
        .unwrap();
    assert_eq!(products.len(), DEMO_PRODUCTS);
    for p in products {
        assert!(Path::new(&p.image_path).is_absolute(), "{}", p.image_path);
        assert!(Path::new(&p.image_path).is_file(), "{}", p.image_path);
    }
}

#[test]
fn index_runs_started_together_on_a_new_database_all_succeed() {
    // Several rounds: with deferred write transactions a round failed about one time in three.
    for round in 0..3 {
        index_runs_started_together(round);
    }
}

fn index_runs_started_together(round: usize) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(format!("new{round}.db"));
    let runs: Vec<std::process::Child> = (0..4)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_lookalike"))
                .args([
                    "index",
                    s(&demo().join("catalogue.csv")),
                    "--db",
                    s(&db),
                    "--threads",
                    "1",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for run in runs {
        let out = run.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let store = SqliteStore::open(&db).unwrap();
    assert_eq!(store.count().unwrap(), DEMO_PRODUCTS);
    assert_eq!(store.integrity_check().unwrap(), "ok");
}

#[test]
fn queries_never_write_to_the_catalogue_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("copy.db");
    // A checkpointed copy: one file, no journal beside it.
    let source = SqliteStore::open(demo_db()).unwrap();
    drop(source);
    std::fs::copy(demo_db(), &db).unwrap();
    let before = std::fs::read(&db).unwrap();
    let photo = demo().join("images/mh01.jpg");
    let out = lookalike(&["search", s(&photo), "--db", s(&db), "-k", "2", "--json"]);
    assert_eq!(results(&out)[0]["id"], "MH01");
    ok_status(lookalike(&["similar", "MH01", "--db", s(&db)]));
    ok_status(lookalike(&[
        "export",
        "--db",
        s(&db),
        "--json",
        s(&dir.path().join("rows.json")),
    ]));
    assert!(
        std::fs::read(&db).unwrap() == before,
        "a query changed the database file"
    );
    // Writing where the folder does not exist says so.
    let out = lookalike(&[
        "index",
        s(&demo().join("catalogue.csv")),
        "--db",
        "/nonexistent-dir/x.db",
    ]);
    assert!(
        !out.status.success() && text(&out).contains("check that its folder exists"),
        "{}",
        text(&out)
    );
}

fn ok_status(out: Output) {
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn numbers_outside_their_meaning_are_usage_errors() {
    let db = demo_db();
    let photo = demo().join("images/mh01.jpg");
    for args in [
        vec!["similar", "MH01", "--db", s(db), "--min-price", "NaN"],
        vec!["similar", "MH01", "--db", s(db), "--max-price", "inf"],
        vec!["similar", "MH01", "--db", s(db), "--max-price", "1e400"],
        vec!["similar", "MH01", "--db", s(db), "-k", "0"],
        vec!["search", s(&photo), "--db", s(db), "--min-price=-1"],
        vec!["dedup", "--db", s(db), "--threshold", "2"],
        vec!["serve", "--db", s(db), "--read-only", "--batch-window-ms", "inf"],
        vec![
            "serve",
            "--db",
            s(db),
            "--read-only",
            "--max-upload-mb",
            "99999999999999999999",
        ],
        vec!["serve", "--db", s(db), "--read-only", "--max-upload-mb", "0"],
        vec!["serve", "--db", s(db), "--read-only", "--max-batch", "0"],
        vec!["--threads", "0", "similar", "MH01", "--db", s(db)],
    ] {
        let out = lookalike(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("invalid value"), "{args:?}: {}", text(&out));
    }
}

/// Runs the binary as a user for whom file permissions apply: this user unless it is root, else
/// `nobody` through `runuser` (from a world-readable copy of the binary when the checkout is not).
fn lookalike_unprivileged(args: &[&str], scratch: &Path) -> Output {
    let binary = Path::new(env!("CARGO_BIN_EXE_lookalike"));
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Command::new(binary).args(args).output().unwrap();
    }
    let reachable = Command::new("runuser")
        .args(["-u", "nobody", "--", "test", "-x", s(binary)])
        .status()
        .is_ok_and(|s| s.success());
    let binary = if reachable {
        binary.to_path_buf()
    } else {
        let copy = scratch.join("bin/lookalike");
        std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
        std::fs::copy(binary, &copy).unwrap();
        copy
    };
    Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(binary)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_read_only_catalogue_file_in_a_read_only_folder_answers_queries() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let folder = scratch.path().join("ro");
    std::fs::create_dir(&folder).unwrap();
    let db = folder.join("demo.db");
    drop(SqliteStore::open(demo_db()).unwrap()); // checkpointed: one file, no journal beside it
    std::fs::copy(demo_db(), &db).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o555)).unwrap();
    let out = lookalike_unprivileged(
        &["similar", "MH01", "--db", s(&db), "-k", "2", "--json"],
        scratch.path(),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(results(&out).as_array().unwrap().len(), 2);
    let out = lookalike_unprivileged(&["remove", "MH01", "--db", s(&db)], scratch.path());
    assert!(
        !out.status.success() && text(&out).contains("is read-only"),
        "{}",
        text(&out)
    );
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `sku -> related skus` from a `recommend-all` CSV.
fn related_csv(path: &Path) -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(reader.headers().unwrap(), vec!["sku", "related_skus"]);
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r[0].to_string(), r[1].split(',').map(str::to_string).collect())
        })
        .collect()
}

#[test]
fn recommend_all_agrees_with_similar_and_reruns_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let csv_path = copy_demo(&dir.path().join("shop"));
    let db = dir.path().join("shop.db");
    ok_status(lookalike(&["index", s(&csv_path), "--db", s(&db)]));
    let out = dir.path().join("related.csv");
    let first = lookalike(&["recommend-all", "--db", s(&db), "-k", "5", "--out", s(&out)]);
    assert!(
        text(&first).contains("60 computed against the whole catalogue"),
        "{}",
        text(&first)
    );
    let related = related_csv(&out);
    assert_eq!(related.len(), DEMO_PRODUCTS);
    for (sku, skus) in &related {
        assert_eq!(skus.len(), 5, "{sku}");
        assert!(!skus.contains(sku), "{sku} is not its own related product");
    }
    let similar = results(&lookalike(&["similar", "MH01", "--db", s(&db), "-k", "5", "--json"]));
    let similar: Vec<&str> = similar
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    let mh01 = &related.iter().find(|(sku, _)| sku == "MH01").unwrap().1;
    assert_eq!(mh01, &similar);

    // Two products added (one with MH01's very photo), one removed: a rerun touches little and
    // gives what a run from scratch gives.
    let mut catalogue = std::fs::read_to_string(&csv_path).unwrap();
    catalogue.push_str("NEW-1,Twin hoodie,52,Men/Tops/Hoodies & Sweatshirts,,,images/mh01.jpg\n");
    catalogue.push_str("NEW-2,Twin bag,34,Gear/Bags,,,images/24-mb01.jpg\n");
    std::fs::write(&csv_path, catalogue).unwrap();
    ok_status(lookalike(&["index", s(&csv_path), "--db", s(&db)]));
    ok_status(lookalike(&["remove", "WJ03", "--db", s(&db)]));
    let rerun = lookalike(&["recommend-all", "--db", s(&db), "-k", "5", "--out", s(&out)]);
    let t = text(&rerun);
    assert!(t.contains("only against the 2 new or changed"), "{t}");
    let full: usize = t
        .split(" computed against")
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(full < 30, "{t}");
    let fresh = dir.path().join("fresh.jsonl");
    ok_status(lookalike(&[
        "recommend-all",
        "--db",
        s(&db),
        "-k",
        "5",
        "--out",
        s(&fresh),
    ]));
    let from_scratch: Vec<(String, Vec<String>)> = std::fs::read_to_string(&fresh)
        .unwrap()
        .lines()
        .map(|line| {
            let row: Value = serde_json::from_str(line).unwrap();
            let scores: Vec<f64> = row["related"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["score"].as_f64().unwrap())
                .collect();
            assert_eq!(scores.len(), 5, "{row}");
            assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{row}");
            let ids = row["related"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_string());
            (row["id"].as_str().unwrap().to_string(), ids.collect())
        })
        .collect();
    let incremental = related_csv(&out);
    assert_eq!(incremental, from_scratch);
    assert_eq!(incremental.len(), DEMO_PRODUCTS + 1);
    assert!(incremental.iter().all(|(_, skus)| !skus.iter().any(|s| s == "WJ03")));
    assert_eq!(incremental.iter().find(|(sku, _)| sku == "MH01").unwrap().1[0], "NEW-1");
    let out = lookalike(&[
        "recommend-all",
        "--db",
        s(&db),
        "--out",
        s(&dir.path().join("related.txt")),
    ]);
    assert!(
        !out.status.success() && text(&out).contains(".csv or a .jsonl"),
        "{}",
        text(&out)
    );
}

fn luma_shop() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/luma-shop")
}

#[test]
fn shop_exports_with_several_photos_per_product_index_and_search_by_product() {
    let dir = tempfile::tempdir().unwrap();
    let shop = dir.path().join("shop");
    copy_tree(&luma_shop(), &shop);
    let db = dir.path().join("magento.db");
    let out = ok_text(lookalike(&["index", s(&shop.join("magento.csv")), "--db", s(&db)]));
    assert!(
        out.contains("indexed 10 products") && out.contains("26 embedded"),
        "{out}"
    );
    let store = SqliteStore::open(&db).unwrap();
    let mh01 = store.product("MH01").unwrap().unwrap();
    assert_eq!(mh01.more_images.len(), 2);
    assert_eq!(mh01.info.category.as_deref(), Some("Men/Tops/Hoodies & Sweatshirts"));
    assert!(!mh01.info.description.as_deref().unwrap().contains("<p>"));

    // Another colour of the hoodie: found through its views, once, with the view that matched.
    let query = shop.join("queries/mh01-orange_main.jpg");
    let hits = results(&lookalike(&["search", s(&query), "--db", s(&db), "-k", "5", "--json"]));
    let hits = hits.as_array().unwrap();
    assert_eq!(hits[0]["id"], "MH01", "{hits:?}");
    assert_eq!(hits[0]["images"].as_array().unwrap().len(), 3);
    assert!(hits[0]["matched_image"].as_str().unwrap().contains("mh01-"));
    let ids: Vec<&str> = hits.iter().map(|h| h["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids.len(),
        ids.iter().collect::<std::collections::HashSet<_>>().len(),
        "no product twice"
    );
    let jacket = results(&lookalike(&[
        "search",
        s(&shop.join("queries/wj01-red_main.jpg")),
        "--db",
        s(&db),
        "-k",
        "1",
        "--json",
    ]));
    assert_eq!(jacket[0]["id"], "WJ01", "{jacket}");
    let similar = results(&lookalike(&["similar", "MH01", "--db", s(&db), "-k", "3", "--json"]));
    assert_eq!(similar.as_array().unwrap().len(), 3, "{similar}");
    assert!(similar.as_array().unwrap().iter().all(|h| h["id"] != "MH01"));

    // The Shopify shape of the same shop: the same products, one row per photo.
    let shopify_db = dir.path().join("shopify.db");
    let out = ok_text(lookalike(&[
        "index",
        s(&shop.join("shopify.csv")),
        "--db",
        s(&shopify_db),
    ]));
    assert!(
        out.contains("indexed 10 products") && out.contains("26 embedded"),
        "{out}"
    );
    let hits = results(&lookalike(&[
        "search",
        s(&query),
        "--db",
        s(&shopify_db),
        "-k",
        "1",
        "--json",
    ]));
    assert_eq!(hits[0]["id"], "chaz-kangeroo-hoodie");
    assert_eq!(hits[0]["price"], 52.0);

    // Per-image incremental indexing: a dropped view costs no embedding, a new one one.
    let magento = std::fs::read_to_string(shop.join("magento.csv")).unwrap();
    let fewer = magento.replace("/m/h/mh01-gray_alt1.jpg,", "");
    assert_ne!(fewer, magento);
    std::fs::write(shop.join("magento.csv"), &fewer).unwrap();
    let out = ok_text(lookalike(&["index", s(&shop.join("magento.csv")), "--db", s(&db)]));
    assert!(out.contains("0 embedded, 9 unchanged, 1 metadata updated"), "{out}");
    assert_eq!(
        SqliteStore::open(&db)
            .unwrap()
            .product("MH01")
            .unwrap()
            .unwrap()
            .more_images
            .len(),
        1
    );
    let more = fewer.replace(
        "/m/h/mh01-gray_back.jpg",
        "/m/h/mh01-gray_back.jpg,/queries/mh01-orange_main.jpg",
    );
    std::fs::write(shop.join("magento.csv"), &more).unwrap();
    let out = ok_text(lookalike(&["index", s(&shop.join("magento.csv")), "--db", s(&db)]));
    assert!(out.contains("1 embedded, 9 unchanged"), "{out}");
    let hits = results(&lookalike(&["search", s(&query), "--db", s(&db), "-k", "1", "--json"]));
    // Its own photo now (cosine 1), averaged with the product's next best view.
    let before = results(&lookalike(&[
        "search",
        s(&query),
        "--db",
        s(&shopify_db),
        "-k",
        "1",
        "--json",
    ]));
    assert!(
        hits[0]["score"].as_f64().unwrap() > before[0]["score"].as_f64().unwrap() + 0.05,
        "{hits} vs {before}"
    );
    assert!(hits[0]["matched_image"]
        .as_str()
        .unwrap()
        .ends_with("mh01-orange_main.jpg"));
}

#[test]
fn product_folders_and_groups_show_one_entry_per_product_family() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("folders");
    for (product, photos) in [
        (
            "hoodies/mh01",
            &["m/h/mh01-gray_main.jpg", "m/h/mh01-gray_back.jpg"][..],
        ),
        (
            "jackets/mj01",
            &["m/j/mj01-yellow_main.jpg", "m/j/mj01-yellow_back.jpg"],
        ),
        ("bags/mb01", &["m/b/mb01-blue-0.jpg"]),
    ] {
        std::fs::create_dir_all(root.join(product)).unwrap();
        for photo in photos {
            let name = Path::new(photo).file_name().unwrap();
            std::fs::copy(luma_shop().join(photo), root.join(product).join(name)).unwrap();
        }
    }
    let db = dir.path().join("folders.db");
    let out = ok_text(lookalike(&[
        "index",
        s(&root),
        "--db",
        s(&db),
        "--layout",
        "product-folders",
    ]));
    assert!(
        out.contains("indexed 3 products") && out.contains("5 embedded"),
        "{out}"
    );
    let hits = results(&lookalike(&[
        "search",
        s(&luma_shop().join("queries/mh01-orange_main.jpg")),
        "--db",
        s(&db),
        "-k",
        "3",
        "--json",
    ]));
    assert_eq!(hits[0]["id"], "hoodies/mh01");
    assert_eq!(hits[0]["category"], "hoodies");

    // Colours as products of one group: one entry per group unless all are asked for.
    let jsonl = dir.path().join("variants.jsonl");
    let shop = luma_shop();
    let line = |id: &str, group: &str, photo: &str| {
        format!(
            "{{\"id\": \"{id}\", \"group\": \"{group}\", \"image\": \"{}\"}}\n",
            shop.join(photo).display()
        )
    };
    std::fs::write(
        &jsonl,
        [
            line("MP01-black", "MP01", "m/p/mp01-black_main.jpg"),
            line("MP01-gray", "MP01", "m/p/mp01-gray_main.jpg"),
            line("MS01-black", "MS01", "m/s/ms01-black_main.jpg"),
            line("MT01-red", "MT01", "m/t/mt01-red_main.jpg"),
        ]
        .concat(),
    )
    .unwrap();
    let db = dir.path().join("variants.db");
    ok_text(lookalike(&["index", s(&jsonl), "--db", s(&db)]));
    let photo = shop.join("m/p/mp01-gray_back.jpg");
    let grouped = results(&lookalike(&["search", s(&photo), "--db", s(&db), "-k", "4", "--json"]));
    let grouped: Vec<&str> = grouped
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["group"].as_str().unwrap())
        .collect();
    assert_eq!(grouped.len(), 3, "{grouped:?}");
    assert_eq!(grouped[0], "MP01");
    let all = results(&lookalike(&[
        "search",
        s(&photo),
        "--db",
        s(&db),
        "-k",
        "4",
        "--all-variants",
        "--json",
    ]));
    assert_eq!(all.as_array().unwrap().len(), 4);
    let similar = results(&lookalike(&[
        "similar",
        "MP01-black",
        "--db",
        s(&db),
        "-k",
        "4",
        "--json",
    ]));
    assert_eq!(
        similar.as_array().unwrap().len(),
        2,
        "the two other families: {similar}"
    );
    assert!(
        similar.as_array().unwrap().iter().all(|h| h["group"] != "MP01"),
        "a product's own colours are not similar products: {similar}"
    );
}

fn ok_text(out: Output) -> String {
    assert!(out.status.success(), "{}", text(&out));
    text(&out)
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in walkdir(from) {
        let target = to.join(entry.strip_prefix(from).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &target).unwrap();
    }
}

fn walkdir(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walkdir(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn words_find_products_alone_and_beside_a_photo() {
    let dir = tempfile::tempdir().unwrap();
    let shop = luma_shop();
    let db = dir.path().join("magento.db");
    ok_text(lookalike(&["index", s(&shop.join("magento.csv")), "--db", s(&db)]));
    let ids = |hits: &Value| -> Vec<String> {
        hits.as_array()
            .unwrap()
            .iter()
            .map(|h| h["id"].as_str().unwrap().to_string())
            .collect()
    };

    // Words alone: stemmed, any of them, the title counting most; no photo model is loaded.
    let tees = results(&lookalike(&["search", "--text", "TEES", "--db", s(&db), "--json"]));
    assert_eq!(ids(&tees).len(), 2, "{tees}");
    assert!(
        ids(&tees).iter().all(|id| ["MS01", "WS01"].contains(&id.as_str())),
        "{tees}"
    );
    let answer = json(&lookalike(&["search", "--text", "TEES", "--db", s(&db), "--json"]));
    assert_eq!(answer["metric"], "relevance");
    let women = results(&lookalike(&[
        "search",
        "--text",
        "jacket",
        "--category",
        "women/tops/JACKETS",
        "--db",
        s(&db),
        "--json",
    ]));
    assert_eq!(ids(&women), ["WJ01"]);
    let nothing = results(&lookalike(&["search", "--text", "zebra", "--db", s(&db), "--json"]));
    assert_eq!(nothing, serde_json::json!([]));

    // A photo of the orange hoodie with words: the words move products that have them up, the
    // photo still decides among them.
    let query = shop.join("queries/mh01-orange_main.jpg");
    let photo = results(&lookalike(&["search", s(&query), "--db", s(&db), "-k", "10", "--json"]));
    let fused = results(&lookalike(&[
        "search",
        s(&query),
        "--text",
        "women hoodie",
        "--db",
        s(&db),
        "-k",
        "10",
        "--json",
    ]));
    assert_eq!(ids(&photo)[0], "MH01");
    let rank = |hits: &Value, id: &str| ids(hits).iter().position(|x| x == id).unwrap();
    assert!(rank(&fused, "WH01") < rank(&photo, "WH01"), "{photo}\n{fused}");
    assert_eq!(
        &ids(&fused)[..2]
            .iter()
            .map(String::as_str)
            .collect::<std::collections::BTreeSet<_>>(),
        &["MH01", "WH01"].into_iter().collect()
    );

    // Diversity keeps the best first and returns as many results.
    let diverse = results(&lookalike(&[
        "search",
        s(&query),
        "--diversity",
        "0.7",
        "--db",
        s(&db),
        "-k",
        "5",
        "--json",
    ]));
    assert_eq!(ids(&diverse)[0], "MH01");
    assert_eq!(ids(&diverse).len(), 5);
    let similar = results(&lookalike(&[
        "similar",
        "WJ01",
        "--diversity",
        "0.5",
        "--db",
        s(&db),
        "-k",
        "4",
        "--json",
    ]));
    assert_eq!(ids(&similar).len(), 4);

    // Neither photo nor words, or words that are no words: clear errors.
    let out = lookalike(&["search", "--db", s(&db)]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = lookalike(&["search", "--text", " -- ", "--db", s(&db)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no words"), "{out:?}");
    let out = lookalike(&["search", "--text", "x", "--diversity", "1.5", "--db", s(&db)]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_colour_signature_is_kept_with_the_catalogue_and_used_by_every_query() {
    let dir = tempfile::tempdir().unwrap();
    let shop = luma_shop();
    let db = dir.path().join("colour.db");
    let catalogue = shop.join("magento.csv");
    ok_text(lookalike(&["index", s(&catalogue), "--db", s(&db), "--colour", "0.4"]));
    let manifest = SqliteStore::open(&db).unwrap().manifest().unwrap().unwrap();
    assert_eq!((manifest.colour, manifest.dimension), (Some(0.4), 1280 + 512));
    // A catalogue photo as the query finds itself: queries get the same signature.
    let photo = shop.join("w/j/wj01-red_back.jpg");
    let hits = results(&lookalike(&["search", s(&photo), "--db", s(&db), "-k", "3", "--json"]));
    assert_eq!(hits[0]["id"], "WJ01");
    assert!(
        hits[0]["matched_image"]
            .as_str()
            .unwrap()
            .ends_with("wj01-red_back.jpg"),
        "{hits}"
    );
    // The orange hoodie against the grey one's photos still finds it.
    let query = shop.join("queries/mh01-orange_main.jpg");
    let hits = results(&lookalike(&["search", s(&query), "--db", s(&db), "-k", "3", "--json"]));
    assert_eq!(hits[0]["id"], "MH01", "{hits}");
    // A re-index keeps the catalogue's signature; another weight, or none on a new file, is refused.
    let out = ok_text(lookalike(&["index", s(&catalogue), "--db", s(&db)]));
    assert!(out.contains("10 unchanged"), "{out}");
    let out = lookalike(&["index", s(&catalogue), "--db", s(&db), "--colour", "0.5"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("colour weight 0.4"),
        "{out:?}"
    );
    for bad in ["0", "-1", "nan", "5"] {
        let out = lookalike(&["index", s(&catalogue), "--db", s(&db), "--colour", bad]);
        assert_eq!(out.status.code(), Some(2), "--colour {bad}");
    }
}

#[test]
fn a_catalogue_stays_on_the_backbone_that_built_it() {
    let dir = tempfile::tempdir().unwrap();
    let shop = luma_shop();
    let db = dir.path().join("lite2.db");
    ok_text(lookalike(&[
        "--backbone",
        "lite2",
        "index",
        s(&shop.join("magento.csv")),
        "--db",
        s(&db),
    ]));
    let manifest = SqliteStore::open(&db).unwrap().manifest().unwrap().unwrap();
    assert_eq!(manifest.model, "efficientnet-lite2");
    assert!(
        manifest.preprocessing.contains("center-crop=260"),
        "{}",
        manifest.preprocessing
    );
    // Queries and re-indexing take the catalogue's backbone without being told.
    let query = shop.join("queries/mh01-orange_main.jpg");
    let hits = results(&lookalike(&["search", s(&query), "--db", s(&db), "-k", "1", "--json"]));
    assert_eq!(hits[0]["id"], "MH01");
    let out = ok_text(lookalike(&["index", s(&shop.join("magento.csv")), "--db", s(&db)]));
    assert!(out.contains("10 unchanged"), "{out}");
    // Another backbone is refused with the reason; an unknown one is a usage error.
    let out = lookalike(&["--backbone", "lite0", "search", s(&query), "--db", s(&db)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("built with efficientnet-lite2"), "{}", text(&out));
    let out = lookalike(&["--backbone", "lite9", "embed", s(&query)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("lite0, lite1, lite2"), "{}", text(&out));
}

#[test]
fn an_int8_catalogue_answers_like_fp32_and_is_never_mixed_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let shop = luma_shop();
    let catalogue = shop.join("magento.csv");
    let (int8, fp32) = (dir.path().join("int8.db"), dir.path().join("fp32.db"));
    ok_text(lookalike(&[
        "--precision",
        "int8",
        "index",
        s(&catalogue),
        "--db",
        s(&int8),
    ]));
    ok_text(lookalike(&["index", s(&catalogue), "--db", s(&fp32)]));
    let manifest = SqliteStore::open(&int8).unwrap().manifest().unwrap().unwrap();
    assert!(
        manifest
            .precision
            .as_deref()
            .is_some_and(|p| p.starts_with("int8 (calibration ")),
        "{manifest:?}"
    );
    // Queries take the catalogue's precision without being told, and find what fp32 finds.
    for query in ["mh01-orange_main.jpg", "wj01-red_main.jpg"] {
        let query = shop.join("queries").join(query);
        let ids = |db: &Path| {
            let hits = results(&lookalike(&["search", s(&query), "--db", s(db), "-k", "3", "--json"]));
            hits.as_array()
                .unwrap()
                .iter()
                .map(|h| h["id"].clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&int8)[0], ids(&fp32)[0], "{}", query.display());
    }
    // The other precision is refused with the reason, for queries and for writes.
    let query = shop.join("queries/mh01-orange_main.jpg");
    let out = lookalike(&["--precision", "fp32", "search", s(&query), "--db", s(&int8)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("in int8"), "{}", text(&out));
    let out = lookalike(&["--precision", "int8", "index", s(&catalogue), "--db", s(&fp32)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("in fp32"), "{}", text(&out));
    let out = lookalike(&["--precision", "int4", "embed", s(&query)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("fp32, int8"), "{}", text(&out));
}

#[test]
fn bench_ann_measures_held_out_queries_against_exact_search() {
    let out = ok_text(lookalike(&[
        "bench",
        "ann",
        "--db",
        s(demo_db()),
        "--queries",
        "10",
        "-k",
        "5",
    ]));
    assert!(out.contains("50 products, 1280-d, 10 held-out queries"), "{out}");
    let recall = |setting: &str| -> f64 {
        let row = out
            .lines()
            .find(|l| l.contains(setting))
            .unwrap_or_else(|| panic!("{out}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        cells[cells.len() - 3].parse().unwrap()
    };
    assert_eq!(recall("exact f32 scan"), 1.0, "{out}");
    assert_eq!(recall("int8 shortlist"), 1.0, "{out}");
    // Too few products for the queries asked is a clear error.
    let out = lookalike(&["bench", "ann", "--db", s(demo_db()), "--queries", "40"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("too few"), "{}", text(&out));
}

#[test]
fn knn_statistics_tell_noisy_copies_from_real_vectors_and_cluster_samples() {
    let dir = tempfile::tempdir().unwrap();
    let synthetic = |generator: &str| {
        let db = dir.path().join(format!("{generator}.db"));
        synth_catalogue(demo_db(), &db, 600, generator);
        db
    };
    let (copies, clusters) = (synthetic("copies"), synthetic("clusters"));
    let out = ok_text(lookalike(&[
        "bench",
        "knn-stats",
        s(demo_db()),
        s(&copies),
        s(&clusters),
        "--sample",
        "300",
        "-k",
        "5",
    ]));
    let cosine_to_first = |db: &Path| -> f64 {
        let row = out
            .lines()
            .find(|l| l.contains(s(db)))
            .unwrap_or_else(|| panic!("{out}"));
        row.split_whitespace().nth(3).unwrap().parse().unwrap()
    };
    let real = cosine_to_first(demo_db());
    // Ten noisy copies of each demo product: a sample of 300 of them meets its twins.
    assert!(cosine_to_first(&copies) > real + 0.05, "{out}");
    // Samples of the fitted Gaussians have no twins: their neighbours are as far as real ones'.
    assert!(cosine_to_first(&clusters) < cosine_to_first(&copies) - 0.1, "{out}");
    assert!((cosine_to_first(&clusters) - real).abs() < 0.1, "{out}");
    assert!(out.contains("N5 skewness"), "{out}");
}

/// Starts `lookalike args` and SIGKILLs it as soon as a temporary file appears in `dir` (the
/// index file being written), then deletes that file; false if it finished first.
fn killed_while_writing(args: &[&str], dir: &Path) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lookalike"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let temporary = || {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(".part"))
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if !temporary().is_empty() {
            child.kill().unwrap(); // SIGKILL on Unix
            child.wait().unwrap();
            temporary().iter().for_each(|p| std::fs::remove_file(p).unwrap());
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    panic!("lookalike {args:?} neither wrote nor finished");
}

#[test]
fn an_index_file_killed_while_written_is_never_used_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("clusters.db");
    synth_catalogue(demo_db(), &db, 4000, "clusters");
    let index = dir.path().join("clusters.db.index");
    let out = lookalike(&[
        "search",
        s(&demo().join("images/mh01.jpg")),
        "--db",
        s(&db),
        "--json",
        "-k",
        "12",
    ]);
    let built = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        built.contains("built the search index of 4000 products (no index file yet)"),
        "{built}"
    );
    let first = results(&out);
    let ids: Vec<&str> = first
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    let similar = |mode: &str| {
        let out = lookalike(&[
            "similar",
            ids[0],
            "--db",
            s(&db),
            "--json",
            "--search",
            mode,
            "-k",
            "10",
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let hits: Vec<(String, f64)> = results(&out)
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h["id"].as_str().unwrap().to_string(), h["score"].as_f64().unwrap()))
            .collect();
        (hits, String::from_utf8_lossy(&out.stderr).to_string())
    };
    let approximate = ["similar", ids[0], "--db", s(&db), "--search", "approximate"];
    // The catalogue moves on, and approximate search wants the graph the file lacks: killed while
    // writing the file again, the old one stays whole.
    let kept = std::fs::read(&index).unwrap();
    ok_text(lookalike(&["remove", ids[1], ids[2], "--db", s(&db)]));
    let mut kills = 0;
    for _ in 0..5 {
        if killed_while_writing(&approximate, dir.path()) {
            kills += 1;
            assert_eq!(std::fs::read(&index).unwrap(), kept, "the old index file stays whole");
            break;
        }
        std::fs::write(&index, &kept).unwrap();
    }
    let (_, rewritten) = similar("approximate");
    assert!(
        rewritten.contains(
            "wrote the search index and search graph of 3998 products again (2 changed since it was written)"
        ),
        "{rewritten}"
    );
    // Killed while writing a first file: there is none, the next run builds it.
    for _ in 0..5 {
        std::fs::remove_file(&index).unwrap();
        if killed_while_writing(&approximate, dir.path()) {
            kills += 1;
            assert!(!index.exists(), "an index file appears whole or not at all");
            break;
        }
    }
    assert!(kills >= 2, "never caught an index file being written");
    let (found, rebuilt) = similar("approximate");
    assert!(
        rebuilt.contains("built the search index of 3998 products (no index file yet)"),
        "{rebuilt}"
    );
    let (exact, _) = similar("exact");
    assert!(
        found.iter().all(|(id, _)| id != ids[1] && id != ids[2]),
        "removed products never come back"
    );
    let shared = found.iter().filter(|f| exact.contains(f)).count();
    assert!(shared >= 9, "approximate {found:?}\nexact {exact:?}");
    let (again, quiet) = similar("approximate");
    assert!(!quiet.contains("search index"), "the file was kept: {quiet}");
    assert_eq!(again, found, "read from the file, the same answers");
}

#[test]
fn bench_prep_times_each_stage_of_a_photo_and_the_indexing_ceiling() {
    let out = ok_text(lookalike(&[
        "--backbone",
        "lite0",
        "bench",
        "prep",
        s(&demo().join("images")),
        "--per-folder",
        "12",
        "--seconds",
        "0.2",
    ]));
    assert!(out.contains("12 photos, efficientnet-lite0 input"), "{out}");
    let ms = |stage: &str| -> f64 {
        let row = out
            .lines()
            .find(|l| l.contains(stage))
            .unwrap_or_else(|| panic!("{out}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        let at = cells.iter().position(|c| c.parse::<f64>().is_ok()).unwrap();
        cells[at].parse().unwrap()
    };
    let stages = ["read file", "content hash", "decode", "resize + crop + tensor"].map(ms);
    assert!(stages.iter().all(|&v| v > 0.0), "{out}");
    assert!((stages.iter().sum::<f64>() - ms("total")).abs() < 0.005, "{out}");
    // One ceiling row per precision of each backbone whose weights are present, below the network.
    for precision in ["fp32", "int8"] {
        let row = out
            .lines()
            .find(|l| l.contains("efficientnet-lite0") && l.contains(precision))
            .unwrap_or_else(|| panic!("{out}"));
        let share: f64 = row.split_whitespace().nth_back(1).unwrap().parse().unwrap();
        assert!(share > 0.0 && share < 1.0, "{out}");
    }
    // A photo that does not decode is left out and named; a folder without photos is a clear error.
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(folder.path().join("broken.jpg"), b"\xFF\xD8 not a JPEG").unwrap();
    let out = lookalike(&["bench", "prep", s(folder.path()), "--no-ceiling"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("left out") && text(&out).contains("broken.jpg"),
        "{}",
        text(&out)
    );
    std::fs::copy(demo().join("images/24-mb01.jpg"), folder.path().join("bag.jpg")).unwrap();
    let out = ok_text(lookalike(&["bench", "prep", s(folder.path()), "--no-ceiling"]));
    assert!(out.contains("1 photo,"), "{out}");
}

// The real `lookalike serve` on a free loopback port, exercised endpoint by endpoint,
// every error status included. One server per test binary, indexed from the demo catalogue.
// Included by tests/http.rs (SQLite) and tests/http_postgres.rs (PostgreSQL), which set POSTGRES.

use std::sync::OnceLock;

use reqwest::blocking::{multipart, Client};
use reqwest::StatusCode;
use serde_json::{json, Value};

const TOKEN: &str = "test-token";
const UPLOAD_LIMIT_MB: usize = 1;

use common::{demo, demo_classifier, Server};
use std::process::Command;

/// The real binary over a fresh copy of the demo catalogue (a new SQLite file, or a new
/// PostgreSQL database), with `extra` serve flags.
fn start_server(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let db = if POSTGRES {
        common::postgres_db()
    } else {
        dir.path().join("demo.db").to_str().unwrap().to_string()
    };
    let mut args = vec!["--catalogue", demo().join("catalogue.csv").to_str().unwrap()]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    args.extend(extra.iter().map(|s| s.to_string()));
    common::serve(&db, &args, TOKEN, dir)
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| start_server(&["--max-upload-mb", &UPLOAD_LIMIT_MB.to_string()]))
}

fn url(path: &str) -> String {
    format!("{}{path}", server().base)
}

fn client() -> Client {
    Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .unwrap()
}

fn image_part(bytes: Vec<u8>, name: &str) -> multipart::Part {
    multipart::Part::bytes(bytes)
        .file_name(name.to_string())
        .mime_str("image/jpeg")
        .unwrap()
}

fn demo_image(name: &str) -> Vec<u8> {
    std::fs::read(demo().join("images").join(name)).unwrap()
}

/// Status and JSON body; error bodies must have the documented shape.
fn send(request: reqwest::blocking::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().unwrap();
    let status = response.status();
    let text = response.text().unwrap();
    let body: Value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    };
    if !status.is_success() {
        assert!(
            body["error"]["code"].is_string() && body["error"]["message"].is_string(),
            "{status}: {body}"
        );
    }
    (status, body)
}

fn get_status(path: &str) -> StatusCode {
    send(client().get(url(path))).0
}

fn result_ids(body: &Value) -> Vec<&str> {
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect()
}

fn search(form: multipart::Form) -> (StatusCode, Value) {
    send(client().post(url("/v1/search")).multipart(form))
}

#[test]
fn health_stats_openapi_and_page() {
    assert_eq!(send(client().get(url("/healthz"))).1["status"], "ok");
    let (_, stats) = send(client().get(url("/v1/stats")));
    assert_eq!(stats["model"], "efficientnet-lite0");
    assert_eq!(stats["dimension"], 1280);
    assert!(stats["products"].as_u64().unwrap() >= 59);
    let (_, openapi) = send(client().get(url("/openapi.json")));
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3."));
    assert!(openapi["paths"]["/v1/search"]["post"].is_object());
    let page = client().get(url("/")).send().unwrap().text().unwrap();
    assert!(page.contains("<script type=\"module\" src=\"/app.js\">"));
    assert_eq!(client().get(url("/app.js")).send().unwrap().status(), StatusCode::OK);
    assert_eq!(get_status("/nope"), StatusCode::NOT_FOUND);
}

#[test]
fn search_by_upload_ranks_the_same_product_first() {
    let form = multipart::Form::new()
        .part("image", image_part(demo_image("mh01.jpg"), "q.jpg"))
        .text("k", "5");
    let (status, body) = search(form);
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    assert_eq!(results[0]["id"], "MH01");
    assert_eq!(results[0]["price"], 52.0);
    assert_eq!(results[0]["image_url"], "/v1/products/MH01/image");
    let form = multipart::Form::new()
        .part("image", image_part(demo_image("mh01.jpg"), "q.jpg"))
        .text("category", "Gear/Bags")
        .text("max_price", "40");
    let (_, body) = search(form);
    for r in body["results"].as_array().unwrap() {
        assert_eq!(r["category"], "Gear/Bags");
        assert!(r["price"].as_f64().unwrap() <= 40.0);
    }
}

#[test]
fn search_errors_have_the_right_status() {
    let jpeg = demo_image("mh02.jpg");
    let cases: Vec<(multipart::Form, StatusCode, &str)> = vec![
        (
            multipart::Form::new().text("k", "3"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            multipart::Form::new()
                .part("image", image_part(jpeg.clone(), "a.jpg"))
                .text("k", "ten"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            multipart::Form::new()
                .part("image", image_part(jpeg.clone(), "a.jpg"))
                .text("k", "0"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            multipart::Form::new().part("image", image_part(b"hello".to_vec(), "a.jpg")),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not_an_image",
        ),
        (
            multipart::Form::new().part("image", image_part(jpeg[..jpeg.len() / 2].to_vec(), "a.jpg")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "undecodable_image",
        ),
        (
            multipart::Form::new().part(
                "image",
                image_part(vec![0xFF; UPLOAD_LIMIT_MB * 1024 * 1024 + 10_000], "big.jpg"),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "upload_too_large",
        ),
    ];
    for (form, status, code) in cases {
        let (got, body) = search(form);
        assert_eq!(got, status, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
    }
    let (_, body) = search(multipart::Form::new().part(
        "image",
        image_part(vec![0xFF; UPLOAD_LIMIT_MB * 1024 * 1024 + 1], "big.jpg"),
    ));
    assert!(body["error"]["message"].as_str().unwrap().contains("limit"), "{body}");
    assert_eq!(get_status("/healthz"), StatusCode::OK, "still serving");
}

#[test]
fn similar_and_recommend() {
    let (status, body) = send(client().get(url("/v1/products/24-MG01/similar?k=3")));
    assert_eq!(status, StatusCode::OK);
    let results = body["results"].as_array().unwrap();
    assert!(results.iter().all(|r| r["category"] == "Gear/Watches"), "{body}");
    assert_eq!(get_status("/v1/products/NOPE/similar"), StatusCode::NOT_FOUND);
    assert_eq!(
        get_status("/v1/products/24-MG01/similar?min_price=9&max_price=1"),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(get_status("/v1/products/24-MG01/similar?k=-1"), StatusCode::BAD_REQUEST);

    let rec = |body: Value| send(client().post(url("/v1/recommend")).json(&body));
    let (status, body) = rec(json!({ "positive": ["24-MG01", "24-MG02"], "negative": ["24-MB01"], "k": 4 }));
    assert_eq!(status, StatusCode::OK, "{body}");
    let ids = result_ids(&body);
    assert_eq!(ids.len(), 4);
    assert!(!ids.contains(&"24-MG01") && !ids.contains(&"24-MB01"));
    assert_eq!(body["results"][0]["category"], "Gear/Watches");
    assert_eq!(rec(json!({ "positive": [] })).0, StatusCode::BAD_REQUEST);
    assert_eq!(rec(json!({ "positive": ["NOPE"] })).0, StatusCode::NOT_FOUND);
    let (status, _) = send(
        client()
            .post(url("/v1/recommend"))
            .header("content-type", "application/json")
            .body("{oops"),
    );
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[test]
fn browsing_products_and_images() {
    let (status, body) = send(client().get(url("/v1/products?category=gear/watches&per_page=2&page=2")));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["total"], 4);
    assert_eq!(body["items"].as_array().unwrap().len(), 2);
    assert_eq!(body["items"][0]["id"], "24-MG03");
    assert!(body["categories"].as_array().unwrap().len() >= 15);
    assert_eq!(get_status("/v1/products?page=0"), StatusCode::BAD_REQUEST);
    assert_eq!(get_status("/v1/products?per_page=5000"), StatusCode::BAD_REQUEST);
    let (status, p) = send(client().get(url("/v1/products/24-MG02")));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(p["title"], "Dash Digital Watch");
    let image = client().get(url("/v1/products/24-MG02/image")).send().unwrap();
    assert_eq!(image.status(), StatusCode::OK);
    assert_eq!(image.headers()["content-type"], "image/jpeg");
    assert_eq!(image.bytes().unwrap().to_vec(), demo_image("24-mg02.jpg"));
    assert_eq!(get_status("/v1/products/NOPE"), StatusCode::NOT_FOUND);
}

#[test]
fn hostile_ids_reach_neither_files_nor_sql() {
    for id in [
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "%27%3B%20DROP%20TABLE%20products%3B--",
        "MH01%27%20OR%20%271%27%3D%271",
    ] {
        assert_eq!(
            get_status(&format!("/v1/products/{id}/image")),
            StatusCode::NOT_FOUND,
            "{id}"
        );
        assert_eq!(get_status(&format!("/v1/products/{id}")), StatusCode::NOT_FOUND, "{id}");
    }
    assert_eq!(get_status("/v1/products/24-MG02"), StatusCode::OK);
}

#[test]
fn writes_need_the_token_and_take_effect_at_once() {
    let form = || {
        multipart::Form::new()
            .part("image", image_part(demo_image("wb04.jpg"), "n.jpg"))
            .text("id", "NEW-1")
            .text("title", "New bra")
            .text("price", "19.5")
            .text("category", "Women/Tops/Bras & Tanks")
    };
    assert_eq!(
        send(client().post(url("/v1/products")).multipart(form())).0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(
            client()
                .post(url("/v1/products"))
                .bearer_auth("wrong")
                .multipart(form())
        )
        .0,
        StatusCode::FORBIDDEN
    );
    let (status, created) = send(client().post(url("/v1/products")).bearer_auth(TOKEN).multipart(form()));
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        send(client().post(url("/v1/products")).bearer_auth(TOKEN).multipart(form())).0,
        StatusCode::CONFLICT
    );
    // Searchable at once: its own photo finds it with similarity 1 (the demo's WB04 shares the photo).
    let (_, body) = search(
        multipart::Form::new()
            .part("image", image_part(demo_image("wb04.jpg"), "q.jpg"))
            .text("k", "2"),
    );
    let ids = result_ids(&body);
    assert!(ids.contains(&"NEW-1"), "{body}");
    let bad_price = multipart::Form::new().text("price", "free");
    assert_eq!(
        send(
            client()
                .put(url("/v1/products/NEW-1"))
                .bearer_auth(TOKEN)
                .multipart(bad_price)
        )
        .0,
        StatusCode::BAD_REQUEST
    );
    let rename = multipart::Form::new().text("title", "Renamed bra");
    let (status, updated) = send(
        client()
            .put(url("/v1/products/NEW-1"))
            .bearer_auth(TOKEN)
            .multipart(rename),
    );
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["title"], "Renamed bra");
    assert_eq!(updated["price"], 19.5);
    let not_image = multipart::Form::new().part("image", image_part(b"GIF89a but not really".to_vec(), "x.gif"));
    assert_eq!(
        send(
            client()
                .put(url("/v1/products/NEW-1"))
                .bearer_auth(TOKEN)
                .multipart(not_image)
        )
        .0
        .as_u16()
            / 100,
        4
    );
    assert_eq!(
        send(
            client()
                .put(url("/v1/products/NOPE"))
                .bearer_auth(TOKEN)
                .multipart(multipart::Form::new())
        )
        .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        send(client().delete(url("/v1/products/NEW-1"))).0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(client().delete(url("/v1/products/NEW-1")).bearer_auth(TOKEN)).0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(get_status("/v1/products/NEW-1"), StatusCode::NOT_FOUND);
    assert_eq!(
        send(client().delete(url("/v1/products/NEW-1")).bearer_auth(TOKEN)).0,
        StatusCode::NOT_FOUND
    );
}

#[test]
fn a_writable_server_without_a_token_refuses_to_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_lookalike"))
        .args(["serve", "--db", "/nonexistent/x.db", "--port", "0"])
        .env_remove("LOOKALIKE_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--read-only"));
}

#[test]
fn overload_is_refused_with_503_and_the_server_recovers() {
    // One image per forward pass and nobody allowed to wait: concurrent searches must overflow.
    let server = start_server(&["--max-batch", "1", "--queue", "0"]);
    let photo = demo_image("24-mb01.jpg");
    let statuses: Vec<(StatusCode, Value)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..16)
            .map(|_| {
                let photo = photo.clone();
                let search = format!("{}/v1/search", server.base);
                scope.spawn(move || {
                    let form = multipart::Form::new().part("image", image_part(photo, "bag.jpg"));
                    send(client().post(search).multipart(form))
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let refused: Vec<&Value> = statuses
        .iter()
        .filter(|(status, _)| *status == StatusCode::SERVICE_UNAVAILABLE)
        .map(|(_, body)| body)
        .collect();
    assert!(
        !refused.is_empty(),
        "16 concurrent searches with no queue: none refused"
    );
    assert!(
        refused.iter().all(|b| b["error"]["code"] == "overloaded"),
        "{refused:?}"
    );
    assert!(statuses
        .iter()
        .all(|(s, _)| *s == StatusCode::OK || *s == StatusCode::SERVICE_UNAVAILABLE));

    let form = multipart::Form::new().part("image", image_part(photo, "bag.jpg"));
    let (status, body) = send(client().post(format!("{}/v1/search", server.base)).multipart(form));
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["id"], "24-MB01");
}

#[test]
fn hybrid_search_needs_a_classifier_and_then_stays_in_the_predicted_category() {
    let form = |hybrid: &str| {
        multipart::Form::new()
            .part("image", image_part(demo_image("24-mb01.jpg"), "bag.jpg"))
            .text("hybrid", hybrid.to_string())
    };
    let (status, body) = search(form("true"));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("--classifier"));

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let indexed = Command::new(env!("CARGO_BIN_EXE_lookalike"))
        .arg("index")
        .arg(demo().join("catalogue.csv"))
        .arg("--db")
        .arg(&db)
        .output()
        .unwrap();
    assert!(indexed.status.success());
    let head = dir.path().join("classifier.safetensors");
    demo_classifier(&db, &head);
    let server = start_server(&["--classifier", head.to_str().unwrap()]);
    let post = |form| send(client().post(format!("{}/v1/search", server.base)).multipart(form));
    let (status, body) = post(form("yes"));
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["predicted"][0]["category"], "Gear/Bags", "{body}");
    let predicted: Vec<&Value> = body["predicted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["category"])
        .collect();
    let results = body["results"].as_array().unwrap();
    assert_eq!(results[0]["id"], "24-MB01");
    assert!(results.iter().all(|r| predicted.contains(&&r["category"])), "{body}");
    let (status, body) = post(form("perhaps"));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = post(form("false"));
    assert_eq!(status, StatusCode::OK);
    assert!(body.get("predicted").is_none());
}

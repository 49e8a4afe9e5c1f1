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
    start_server_with(&demo().join("catalogue.csv"), extra)
}

/// The real binary over a fresh database indexed from `catalogue`, with `extra` serve flags.
fn start_server_with(catalogue: &std::path::Path, extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let db = if POSTGRES {
        common::postgres_db()
    } else {
        dir.path().join("demo.db").to_str().unwrap().to_string()
    };
    let mut args = vec!["--catalogue".to_string(), catalogue.to_str().unwrap().to_string()];
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
/// Sends `request`; its answer must be what /openapi.json declares for it ([`check_against_openapi`]).
fn send(request: reqwest::blocking::RequestBuilder) -> (StatusCode, Value) {
    let (client, request) = request.build_split();
    let request = request.unwrap();
    let (method, path) = (request.method().to_string(), request.url().path().to_string());
    let response = client.execute(request).unwrap();
    let status = response.status();
    let is_json = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .is_some_and(|v| v.to_str().unwrap_or_default().starts_with("application/json"));
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
    if is_json {
        check_against_openapi(&method, &path, status, &body);
    }
    (status, body)
}

/// The API's description, as the server gives it.
fn openapi() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| client().get(url("/openapi.json")).send().unwrap().json().unwrap())
}

/// Whether `path` is an instance of the path template `template` (`{name}`: one segment).
fn fits_template(template: &str, path: &str) -> bool {
    let (template, path): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    template.len() == path.len()
        && template
            .iter()
            .zip(&path)
            .all(|(t, p)| t == p || (t.starts_with('{') && !p.is_empty()))
}

/// `body`, the JSON answer to `method path` with `status`, validates against the schema that
/// /openapi.json declares for that operation and status. A success must be declared; an error
/// status that the operation does not declare must still be the API's error body.
fn check_against_openapi(method: &str, path: &str, status: StatusCode, body: &Value) {
    let document = openapi();
    let operation = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(template, _)| fits_template(template, path))
        // A literal segment before a `{name}` one: /v1/products/{id} is not /v1/products/x/similar.
        .min_by_key(|(template, _)| template.matches('{').count())
        .map(|(_, item)| &item[method.to_lowercase()])
        .filter(|operation| operation.is_object());
    let declared = operation.map(|operation| &operation["responses"][status.as_str()]);
    let schema = match declared.filter(|response| !response.is_null()) {
        Some(response) => {
            let response = match response["$ref"].as_str() {
                Some(reference) => document.pointer(&reference[1..]).expect("a declared response"),
                None => response,
            };
            response.pointer("/content/application~1json/schema").cloned()
        }
        None => {
            assert!(
                !status.is_success() && (operation.is_some() || status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED),
                "{method} {path} answered {status}, which /openapi.json does not declare"
            );
            Some(json!({ "$ref": "#/components/schemas/Error" }))
        }
    };
    let Some(mut schema) = schema else { return };
    schema["components"] = document["components"].clone();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(body).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status}: the answer does not fit /openapi.json: {errors:?}\n{body}"
    );
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
#[should_panic(expected = "does not fit /openapi.json")]
fn an_answer_that_does_not_fit_its_declared_schema_is_caught() {
    let result = json!({ "rank": 1, "id": 3, "score": 0.5, "image": "x", "images": [], "matched_image": "x" });
    check_against_openapi(
        "POST",
        "/v1/search",
        StatusCode::OK,
        &json!({ "metric": "cosine", "results": [result] }),
    );
}

#[test]
fn health_stats_openapi_and_page() {
    assert_eq!(send(client().get(url("/healthz"))).1["status"], "ok");
    let (_, stats) = send(client().get(url("/v1/stats")));
    assert_eq!(stats["model"], "efficientnet-lite1", "the default backbone");
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
    assert_eq!(results[0]["image"], "/v1/products/MH01/image");
    assert_eq!(results[0]["image_url"], results[0]["image"], "kept for clients written before `image`");
    assert_eq!(results[0]["rank"], 1);
    assert!(body.get("searched_box").is_none(), "a packshot is searched whole: {body}");
    // Every key a result carries is declared in /openapi.json.
    let (_, openapi) = send(client().get(url("/openapi.json")));
    let schemas = &openapi["components"]["schemas"];
    let declared: Vec<&String> = schemas["Product"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .chain(schemas["Hit"]["allOf"][1]["properties"].as_object().unwrap().keys())
        .collect();
    for key in results[0].as_object().unwrap().keys() {
        assert!(declared.contains(&key), "{key} is not in /openapi.json");
    }
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
fn a_box_searches_that_part_of_the_photo_and_bad_boxes_are_400() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two.jpg");
    common::two_products_photo("24-mb01.jpg", "mh03.jpg", &path);
    let photo = std::fs::read(&path).unwrap();
    let with_box = |region: &str| {
        multipart::Form::new()
            .part("image", image_part(photo.clone(), "two.jpg"))
            .text("k", "3")
            .text("box", region.to_string())
    };
    for (region, expected) in [("50,50,450,450", "24-MB01"), ("[550, 50, 950, 450]", "MH03")] {
        let (status, body) = search(with_box(region));
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(result_ids(&body)[0], expected, "{region}: {body}");
    }
    for (region, says) in [
        ("1,2,3", "four numbers"),
        ("10,10,5,20", "x0 < x1"),
        ("0,0,NaN,1", "finite"),
        ("5000,0,5100,10", "lies outside the photo (1000x500 pixels)"),
    ] {
        let (status, body) = search(with_box(region));
        assert_eq!(status, StatusCode::BAD_REQUEST, "{region}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(says), "{region}: {body}");
    }
    let (status, body) = search(multipart::Form::new().text("q", "bag").text("box", "0,0,10,10"));
    assert_eq!(status, StatusCode::BAD_REQUEST, "a box needs a photo: {body}");
    assert_eq!(get_status("/healthz"), StatusCode::OK, "still serving");
}

#[test]
fn regions_find_each_product_with_its_own_results_and_bad_combinations_are_400() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two.jpg");
    common::two_products_photo("24-mb01.jpg", "mh03.jpg", &path);
    let photo = std::fs::read(&path).unwrap();
    let form = |fields: &[(&str, &str)]| {
        fields.iter().fold(
            multipart::Form::new().part("image", image_part(photo.clone(), "two.jpg")),
            |form, (name, value)| form.text(name.to_string(), value.to_string()),
        )
    };
    let (status, body) = search(form(&[("regions", "true"), ("k", "3")]));
    assert_eq!(status, StatusCode::OK, "{body}");
    let regions = body["regions"].as_array().unwrap();
    assert!((1..=3).contains(&regions.len()), "{body}");
    let mut found = Vec::new();
    for region in regions {
        let corners: Vec<f64> = region["box"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert!(corners.len() == 4 && corners[0] < corners[2] && corners[1] < corners[3], "{region}");
        assert!(corners[2] <= 1000.0 && corners[3] <= 500.0, "{region}");
        let results = region["results"].as_array().unwrap();
        assert!(!results.is_empty() && results.len() <= 3, "{region}");
        found.extend(results.iter().map(|r| r["id"].as_str().unwrap().to_string()));
    }
    assert!(found.iter().any(|id| id == "24-MB01" || id == "MH03"), "{body}");

    let (status, body) = search(form(&[("whole", "true"), ("k", "3")]));
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("searched_box").is_none(), "the whole photo: {body}");
    for (fields, says) in [
        (&[("regions", "true"), ("box", "0,0,10,10")][..], "regions=true"),
        (&[("whole", "true"), ("box", "0,0,10,10")][..], "not both"),
        (&[("regions", "maybe")][..], "regions must be true or false"),
    ] {
        let (status, body) = search(form(fields));
        assert_eq!(status, StatusCode::BAD_REQUEST, "{fields:?}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(says), "{fields:?}: {body}");
    }
    let (status, body) = search(multipart::Form::new().text("q", "bag").text("regions", "true"));
    assert_eq!(status, StatusCode::BAD_REQUEST, "regions need a photo: {body}");

    let mut tiny = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(1, 1, image::Rgb([200, 30, 30]))
        .write_to(&mut tiny, image::ImageFormat::Png)
        .unwrap();
    let tiny = multipart::Form::new()
        .part("image", image_part(tiny.into_inner(), "tiny.png"))
        .text("regions", "true");
    let (status, body) = search(tiny);
    assert_eq!(status, StatusCode::OK, "{body}");
    let regions = body["regions"].as_array().unwrap();
    assert_eq!(regions.len(), 1, "a 1x1 photo is one region, all of it: {body}");
    assert_eq!(regions[0]["box"], json!([0.0, 0.0, 1.0, 1.0]), "{body}");
    assert_eq!(get_status("/healthz"), StatusCode::OK, "still serving");
}

/// The share of a heat map's mass in its left half.
fn left_share(heatmap: &Value) -> f64 {
    let width = heatmap["width"].as_u64().unwrap() as usize;
    let values: Vec<f64> = heatmap["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(values.len(), width * heatmap["height"].as_u64().unwrap() as usize, "{heatmap}");
    assert!(values.iter().all(|v| v.is_finite() && *v >= 0.0), "{heatmap}");
    let left: f64 = values.iter().enumerate().filter(|(i, _)| i % width < width / 2).map(|(_, v)| v).sum();
    left / values.iter().sum::<f64>()
}

#[test]
fn explanations_say_where_each_product_matched_and_bad_requests_are_400() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two.jpg");
    common::two_products_photo("24-mb01.jpg", "mh03.jpg", &path);
    let photo = std::fs::read(&path).unwrap();
    let form = |fields: &[(&str, &str)]| {
        fields.iter().fold(
            multipart::Form::new().part("image", image_part(photo.clone(), "two.jpg")),
            |form, (name, value)| form.text(name.to_string(), value.to_string()),
        )
    };
    let explain = |form: multipart::Form| send(client().post(url("/v1/explain")).multipart(form));
    // The photo whole (on white, so the network sees all of it): each product's heat lies on its half.
    for (id, on_left) in [("24-MB01", true), ("MH03", false)] {
        let (status, body) = explain(form(&[("id", id), ("box", "0,0,1000,500")]));
        assert_eq!(status, StatusCode::OK, "{body}");
        let left = left_share(&body["query_heatmap"]);
        assert_eq!(left > 0.6, on_left, "{id}: {left:.2} of the heat on the left: {body}");
        let centre = (body["query_box"][0].as_f64().unwrap() + body["query_box"][2].as_f64().unwrap()) / 2.0;
        assert_eq!(centre < 500.0, on_left, "{id}: {body}");
        assert_eq!(body["searched_box"], json!([0.0, 0.0, 1000.0, 500.0]), "{body}");
        let matched = body["matched_image"].as_str().unwrap();
        assert!(matched.starts_with("/v1/products/") && matched.contains("/image"), "{body}");
    }
    // By default the part most like the product is explained.
    let (status, body) = explain(form(&[("id", "MH03")]));
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["query_box"][0].as_f64().unwrap() >= 400.0, "{body}");

    let (status, body) = search(form(&[("explain", "true"), ("k", "3"), ("whole", "true")]));
    assert_eq!(status, StatusCode::OK, "{body}");
    for hit in body["results"].as_array().unwrap() {
        let explanation = &hit["explanation"];
        assert_eq!(explanation["matched_image"], hit["matched_image"], "{hit}");
        left_share(&explanation["query_heatmap"]);
        left_share(&explanation["match_heatmap"]);
        let cosine = explanation["backbone_cosine"].as_f64().unwrap();
        assert!((cosine - hit["score"].as_f64().unwrap()).abs() < 0.02, "no head: the score itself: {hit}");
    }
    let (status, body) = send(client().get(url("/v1/products/24-MG01/similar?k=2&explain=true")));
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["results"].as_array().unwrap().iter().all(|hit| hit["explanation"].is_object()), "{body}");

    let mut tiny = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(1, 1, image::Rgb([200, 30, 30]))
        .write_to(&mut tiny, image::ImageFormat::Png)
        .unwrap();
    let tiny = multipart::Form::new()
        .part("image", image_part(tiny.into_inner(), "tiny.png"))
        .text("id", "24-MB01");
    let (status, body) = explain(tiny);
    assert_eq!(status, StatusCode::OK, "a 1x1 photo is explained whole: {body}");
    left_share(&body["query_heatmap"]);

    let (status, body) = explain(form(&[("id", "NOPE")]));
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    for (form, says) in [
        (form(&[]), "`id`"),
        (multipart::Form::new().text("id", "24-MB01"), "`image`"),
        (form(&[("id", "24-MB01"), ("box", "2000,2000,3000,3000")]), "outside the photo"),
        (form(&[("id", "24-MB01"), ("box", "0,0,10,10"), ("whole", "true")]), "not both"),
    ] {
        let (status, body) = explain(form);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{says}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(says), "{says}: {body}");
    }
    for (form, says) in [
        (multipart::Form::new().text("q", "bag").text("explain", "true"), "words alone"),
        (form(&[("explain", "true"), ("regions", "true")]), "leave out regions"),
        (form(&[("explain", "maybe")]), "explain must be true or false"),
    ] {
        let (status, body) = search(form);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{says}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(says), "{says}: {body}");
    }
    assert_eq!(
        get_status("/v1/products/24-MG01/similar?explain=maybe"),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(get_status("/healthz"), StatusCode::OK, "still serving");
}

#[test]
fn similar_and_recommend() {
    let (status, body) = send(client().get(url("/v1/products/24-MG01/similar?k=3")));
    assert_eq!(status, StatusCode::OK);
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{body}");
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
    let server = start_server(&[]);
    let at = |path: &str| format!("{}{path}", server.base);
    let photo = demo_image("mh03.jpg");
    for (id, encoded) in [
        ("../../../etc/passwd", "..%2F..%2F..%2Fetc%2Fpasswd"),
        ("'; DROP TABLE products;--", "%27%3B%20DROP%20TABLE%20products%3B--"),
        ("MH01' OR '1'='1", "MH01%27%20OR%20%271%27%3D%271"),
    ] {
        // Absent: 404, whatever they would mean to a file system or to SQL.
        assert_eq!(send(client().get(at(&format!("/v1/products/{encoded}/image")))).0, StatusCode::NOT_FOUND, "{id}");
        assert_eq!(send(client().get(at(&format!("/v1/products/{encoded}")))).0, StatusCode::NOT_FOUND, "{id}");
        // Present: exactly that product and its own image, and it goes when deleted.
        let form = form_with_image(id, "hostile", &photo);
        let (status, created) = send(client().post(at("/v1/products")).bearer_auth(TOKEN).multipart(form));
        assert_eq!((status, created["id"].as_str()), (StatusCode::CREATED, Some(id)), "{created}");
        let (status, found) = send(client().get(at(&format!("/v1/products/{encoded}"))));
        assert_eq!((status, found["id"].as_str()), (StatusCode::OK, Some(id)), "{found}");
        let image = client().get(at(&format!("/v1/products/{encoded}/image"))).send().unwrap();
        assert_eq!(image.status(), StatusCode::OK, "{id}");
        assert_eq!(image.bytes().unwrap().to_vec(), photo, "{id}");
        let (status, _) = send(client().delete(at(&format!("/v1/products/{encoded}"))).bearer_auth(TOKEN));
        assert_eq!(status, StatusCode::NO_CONTENT, "{id}");
        assert_eq!(send(client().get(at(&format!("/v1/products/{encoded}")))).0, StatusCode::NOT_FOUND, "{id}");
    }
    let (_, stats) = send(client().get(at("/v1/stats")));
    assert_eq!(stats["products"], 60, "the catalogue is whole: {stats}");
    assert_eq!(send(client().get(at("/v1/products/24-MG02"))).0, StatusCode::OK);
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
    let server = start_server(&["--max-batch", "1", "--queue", "0", "--queue-wait-ms", "0"]);
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
fn photos_searched_in_parts_are_bounded_and_a_busy_server_searches_whole() {
    // One photo in parts at once and nobody waiting for a place: concurrent busy photos overflow it,
    // and are searched whole.
    let server = start_server(&["--photos-in-parts", "1", "--queue-wait-ms", "0"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two.jpg");
    common::two_products_photo("24-mb01.jpg", "mh03.jpg", &path);
    let photo = std::fs::read(&path).unwrap();
    let search = format!("{}/v1/search", server.base);
    let post = |fields: &[(&str, &str)]| {
        let form = fields.iter().fold(
            multipart::Form::new().part("image", image_part(photo.clone(), "two.jpg")),
            |form, (name, value)| form.text(name.to_string(), value.to_string()),
        );
        send(client().post(&search).multipart(form))
    };
    let at_once = |fields: &[(&str, &str)]| -> Vec<(StatusCode, Value)> {
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..8).map(|_| scope.spawn(|| post(fields))).collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        })
    };
    let (status, alone) = post(&[]);
    assert_eq!(status, StatusCode::OK, "{alone}");
    assert!(alone.get("searched_box").is_some(), "alone, the product is looked for: {alone}");
    assert!(alone.get("searched_whole_when_busy").is_none(), "{alone}");
    let when_busy = |body: &Value| body["searched_whole_when_busy"] == json!(true);

    let searches = at_once(&[]);
    assert!(searches.iter().all(|(s, _)| *s == StatusCode::OK), "{searches:?}");
    assert!(
        searches.iter().any(|(_, body)| body.get("searched_box").is_none()),
        "8 busy photos at once, one place: some are searched whole"
    );
    // Each answer says which: the part it searched, or that the server was too busy to look.
    for (_, body) in &searches {
        assert_ne!(body.get("searched_box").is_some(), when_busy(body), "{body}");
    }
    let looks = at_once(&[("regions", "true")]);
    assert!(looks.iter().all(|(s, _)| *s == StatusCode::OK), "{looks:?}");
    let whole = json!([0.0, 0.0, 1000.0, 500.0]);
    let searched_whole = |body: &Value| body["regions"].as_array().is_some_and(|r| r.len() == 1 && r[0]["box"] == whole);
    assert!(
        looks.iter().any(|(_, body)| searched_whole(body)),
        "8 at once, one place, no wait: some answered with the whole photo as one region"
    );
    for (_, body) in &looks {
        assert_eq!(searched_whole(body), when_busy(body), "{body}");
    }
    let metrics = client().get(format!("{}/metrics", server.base)).send().unwrap().text().unwrap();
    assert!(
        metrics.contains("lookalike_searched_whole_when_busy_total "),
        "counted in\n{metrics}"
    );
    let (status, body) = post(&[("regions", "true")]);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!searched_whole(&body), "alone again, the products are looked for: {body}");
    assert!(!when_busy(&body), "{body}");
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
    assert!(results.len() >= 3, "{body}");
    assert!(results.iter().all(|r| predicted.contains(&&r["category"])), "{body}");
    let (status, body) = post(form("perhaps"));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = post(form("false"));
    assert_eq!(status, StatusCode::OK);
    assert!(body.get("predicted").is_none());
}

fn form_with_image(id: &str, title: &str, photo: &[u8]) -> multipart::Form {
    multipart::Form::new()
        .part("image", image_part(photo.to_vec(), "p.jpg"))
        .text("id", id.to_string())
        .text("title", title.to_string())
}

#[test]
fn every_error_is_json_with_a_reason_and_writes_check_the_token_first() {
    let photo = demo_image("mh02.jpg");
    let garbage = || "not a form at all".to_string();
    let nul_id = form_with_image("A\0B", "nul id", &photo);
    let inf_price = form_with_image("INF-1", "inf price", &photo).text("price", "inf");
    let cases: Vec<(reqwest::blocking::RequestBuilder, StatusCode)> = vec![
        (client().get(url("/nope")), StatusCode::NOT_FOUND),
        (client().delete(url("/v1/search")), StatusCode::METHOD_NOT_ALLOWED),
        (client().get(url("/v1/search")), StatusCode::BAD_REQUEST),
        (client().put(url("/v1/search")), StatusCode::METHOD_NOT_ALLOWED),
        (
            client()
                .post(url("/v1/search"))
                .header("content-type", "text/plain")
                .body(garbage()),
            StatusCode::BAD_REQUEST,
        ),
        (
            client().get(url("/v1/products/24-MG01/similar?k=1&k=2")),
            StatusCode::BAD_REQUEST,
        ),
        (client().get(url("/v1/products/%FF%FE/similar")), StatusCode::BAD_REQUEST),
        (
            client().get(url("/v1/products/24-MG01/similar?min_price=NaN")),
            StatusCode::BAD_REQUEST,
        ),
        (
            client().get(url("/v1/products/24-MG01/similar?max_price=inf")),
            StatusCode::BAD_REQUEST,
        ),
        (
            client().get(url("/v1/products/24-MG01/similar?min_price=1e400")),
            StatusCode::BAD_REQUEST,
        ),
        (
            client().get(url("/v1/products?page=18446744073709551615")),
            StatusCode::BAD_REQUEST,
        ),
        (client().get(url("/v1/products/A%00B")), StatusCode::NOT_FOUND),
        (client().get(url("/v1/products/A%00B/image")), StatusCode::NOT_FOUND),
        (client().get(url("/v1/products?category=a%00b")), StatusCode::BAD_REQUEST),
        (
            client().get(url("/v1/products/24-MG01/similar?category=a%00b")),
            StatusCode::BAD_REQUEST,
        ),
        (
            client().post(url("/v1/recommend")).json(&json!({ "positive": ["A\u{0}B"] })),
            StatusCode::NOT_FOUND,
        ),
        (
            client()
                .post(url("/v1/products"))
                .header("content-type", "text/plain")
                .body(garbage()),
            StatusCode::UNAUTHORIZED,
        ),
        (
            client().put(url("/v1/products/24-MG01")).body(garbage()),
            StatusCode::UNAUTHORIZED,
        ),
        (
            client().delete(url("/v1/products/A%00B")).bearer_auth(TOKEN),
            StatusCode::NOT_FOUND,
        ),
        (
            client().post(url("/v1/products")).bearer_auth(TOKEN).multipart(nul_id),
            StatusCode::BAD_REQUEST,
        ),
        (
            client().post(url("/v1/products")).bearer_auth(TOKEN).multipart(inf_price),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (request, expected) in cases {
        let response = request.send().unwrap();
        let described = format!("{} {}", response.status(), response.url());
        assert_eq!(
            response.headers()["content-type"], "application/json",
            "{described}"
        );
        let status = response.status();
        let body: Value = response.json().unwrap();
        assert_eq!(status, expected, "{described}: {body}");
        assert!(
            body["error"]["code"].is_string() && !body["error"]["message"].as_str().unwrap().is_empty(),
            "{described}: {body}"
        );
    }
    // Far beyond the last page is an empty page, not an error.
    let (status, body) = send(client().get(url("/v1/products?page=99999999999")));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["items"], json!([]));
    // Every answer carries a request id, and a caller's own id is echoed.
    let response = client().get(url("/healthz")).send().unwrap();
    assert!(!response.headers()["x-request-id"].is_empty());
    let response = client().get(url("/healthz")).header("x-request-id", "abc-123").send().unwrap();
    assert_eq!(response.headers()["x-request-id"], "abc-123");
    assert_eq!(get_status("/healthz"), StatusCode::OK, "still serving");
}

#[test]
fn creating_one_id_at_once_gives_one_201_and_store_and_memory_agree() {
    let photo = demo_image("mt01.jpg");
    let statuses: Vec<(StatusCode, String)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8)
            .map(|i| {
                let photo = photo.clone();
                scope.spawn(move || {
                    let title = format!("racer {i}");
                    let form = form_with_image("RACE-1", &title, &photo);
                    let status = send(client().post(url("/v1/products")).bearer_auth(TOKEN).multipart(form)).0;
                    (status, title)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let winners: Vec<&String> = statuses
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .map(|(_, t)| t)
        .collect();
    assert_eq!(winners.len(), 1, "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|(s, _)| *s == StatusCode::CONFLICT).count(),
        7,
        "{statuses:?}"
    );
    let (_, served) = send(client().get(url("/v1/products/RACE-1")));
    assert_eq!(&served["title"], winners[0]);
    let stored = lookalike::store::open_store(&server().db)
        .unwrap()
        .product("RACE-1")
        .unwrap()
        .unwrap();
    assert_eq!(stored.info.title.as_ref(), Some(winners[0]));
    let deleted = send(client().delete(url("/v1/products/RACE-1")).bearer_auth(TOKEN)).0;
    assert_eq!(deleted, StatusCode::NO_CONTENT);
}

#[test]
fn an_acknowledged_delete_is_never_undone_by_a_racing_update() {
    let (first, second) = (demo_image("mt02.jpg"), demo_image("mt03.jpg"));
    for round in 0..6 {
        let id = format!("RACE-D{round}");
        let created = send(
            client()
                .post(url("/v1/products"))
                .bearer_auth(TOKEN)
                .multipart(form_with_image(&id, "before", &first)),
        );
        assert_eq!(created.0, StatusCode::CREATED, "{}", created.1);
        let (put, delete) = std::thread::scope(|scope| {
            let put = scope.spawn(|| {
                let form = multipart::Form::new()
                    .part("image", image_part(second.clone(), "new.jpg"))
                    .text("title", "after");
                send(client().put(url(&format!("/v1/products/{id}"))).bearer_auth(TOKEN).multipart(form)).0
            });
            let delete = scope.spawn(|| send(client().delete(url(&format!("/v1/products/{id}"))).bearer_auth(TOKEN)).0);
            (put.join().unwrap(), delete.join().unwrap())
        });
        assert_eq!(delete, StatusCode::NO_CONTENT, "round {round}");
        assert!(put == StatusCode::OK || put == StatusCode::NOT_FOUND, "round {round}: {put}");
        assert_eq!(get_status(&format!("/v1/products/{id}")), StatusCode::NOT_FOUND, "round {round}");
        let stored = lookalike::store::open_store(&server().db).unwrap().product(&id).unwrap();
        assert!(stored.is_none(), "round {round}: the database still has {id}");
    }
}

#[test]
fn identical_uploads_at_once_share_one_file_that_goes_with_its_last_product() {
    let server = start_server(&[]);
    let post = |form| send(client().post(format!("{}/v1/products", server.base)).bearer_auth(TOKEN).multipart(form));
    let delete = |id: &str| send(client().delete(format!("{}/v1/products/{id}", server.base)).bearer_auth(TOKEN)).0;
    let files = || {
        let mut names: Vec<String> = std::fs::read_dir(server.upload_dir())
            .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    };
    let photo = demo_image("wj01.jpg");
    let statuses: Vec<StatusCode> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8)
            .map(|i| {
                let photo = photo.clone();
                scope.spawn(move || post(form_with_image(&format!("DUP-{i}"), "same photo", &photo)).0)
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| *s == StatusCode::CREATED), "{statuses:?}");
    assert_eq!(files().len(), 1, "{:?}", files());
    for i in 0..7 {
        assert_eq!(delete(&format!("DUP-{i}")), StatusCode::NO_CONTENT);
    }
    assert_eq!(files().len(), 1, "still used by DUP-7");
    // Replacing the image lets the old file go.
    let form = multipart::Form::new().part("image", image_part(demo_image("wj02.jpg"), "new.jpg"));
    let (status, _) = send(
        client()
            .put(format!("{}/v1/products/DUP-7", server.base))
            .bearer_auth(TOKEN)
            .multipart(form),
    );
    assert_eq!(status, StatusCode::OK);
    let after = files();
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(after[0].starts_with(&lookalike::content_hash(&demo_image("wj02.jpg"))));
    assert_eq!(delete("DUP-7"), StatusCode::NO_CONTENT);
    assert!(files().is_empty(), "{:?}", files());
}

#[test]
fn sixteen_bombs_at_once_keep_the_server_small_and_answering() {
    let server = start_server(&["--max-upload-mb", "16"]);
    let search = format!("{}/v1/search", server.base);
    let mut slowest = (0.0, "");
    for (name, bytes) in lookalike::image::hostile::bombs() {
        let answers: Vec<(StatusCode, Value, f64)> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..16)
                .map(|_| {
                    let (bytes, search) = (bytes.clone(), search.clone());
                    scope.spawn(move || {
                        let started = std::time::Instant::now();
                        let form = multipart::Form::new().part("image", image_part(bytes, "bomb"));
                        let (status, body) = send(client().post(search).multipart(form));
                        (status, body, started.elapsed().as_secs_f64())
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        for (status, body, seconds) in &answers {
            assert!(
                [200, 413, 415, 422].contains(&status.as_u16()),
                "{name}: {status} {body}"
            );
            if *seconds > slowest.0 {
                slowest = (*seconds, name);
            }
        }
    }
    let peak = server.peak_rss();
    eprintln!(
        "bombs: server peak RSS {} MiB, slowest answer {:.2} s ({})",
        peak >> 20,
        slowest.0,
        slowest.1
    );
    assert!(peak < 1 << 30, "peak RSS {} MiB", peak >> 20);
    assert_eq!(
        send(client().get(format!("{}/healthz", server.base))).0,
        StatusCode::OK
    );
}

#[test]
fn slow_clients_are_cut_off_and_the_rest_are_served() {
    use std::io::{Read, Write};
    let server = start_server(&["--client-timeout-s", "1"]);
    let address = server.base.trim_start_matches("http://").to_string();
    let connect = || {
        let stream = std::net::TcpStream::connect(&address).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        stream
    };
    let answer = |mut stream: std::net::TcpStream| {
        let started = std::time::Instant::now();
        let mut text = Vec::new();
        let _ = stream.read_to_end(&mut text);
        (String::from_utf8_lossy(&text).into_owned(), started.elapsed())
    };
    // Headers that never finish, and a connection that never sends anything: closed.
    let mut partial = connect();
    partial.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
    let idle = connect();
    for (stream, what) in [(partial, "partial headers"), (idle, "idle connection")] {
        let (text, waited) = answer(stream);
        assert!(waited.as_secs_f64() < 8.0, "{what}: held {waited:?}");
        assert!(!text.contains("200 OK"), "{what}: {text}");
    }
    // A body that stops arriving: 408 with the JSON error.
    let mut stalled = connect();
    stalled
        .write_all(
            b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=X\r\n\
              Content-Length: 100000\r\n\r\n--X\r\n",
        )
        .unwrap();
    let (text, _) = answer(stalled);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"request_timeout\""), "{text}");
    assert_eq!(
        send(client().get(format!("{}/healthz", server.base))).0,
        StatusCode::OK
    );
}

#[test]
fn metrics_count_requests_by_route_and_status() {
    let _ = get_status("/healthz");
    let _ = get_status("/no/such/route");
    let (status, _) = search(multipart::Form::new().part("image", image_part(b"definitely text".to_vec(), "x.jpg")));
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let response = client().get(url("/metrics")).send().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = response.text().unwrap();
    for expected in [
        "lookalike_http_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"}",
        "lookalike_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"}",
        "lookalike_http_requests_total{route=\"/v1/search\",method=\"POST\",status=\"415\"}",
        "lookalike_http_request_duration_seconds_bucket{le=",
        "lookalike_image_decode_failures_total{reason=\"not_an_image\"}",
        // A gauge of the shared server, which other tests load at the same time: only its presence.
        "lookalike_images_in_flight ",
        "lookalike_products ",
    ] {
        assert!(text.contains(expected), "{expected} missing in\n{text}");
    }
}

#[test]
fn a_server_sees_what_another_process_indexes_and_removes() {
    if POSTGRES {
        return; // every read is a query there; two_servers_on_one_database covers replicas
    }
    let server = start_server(&[]);
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("extra.csv");
    std::fs::write(
        &csv,
        format!(
            "id,title,category,image\nEXT-1,Indexed beside the server,Gear/Bags,{}\n",
            demo().join("images/24-mb04.jpg").display()
        ),
    )
    .unwrap();
    let lookalike = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_lookalike")).args(args).output().unwrap();
    let indexed = lookalike(&["index", csv.to_str().unwrap(), "--db", &server.db]);
    assert!(indexed.status.success(), "{}", String::from_utf8_lossy(&indexed.stderr));
    let (status, body) = send(client().get(format!("{}/v1/products/EXT-1", server.base)));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["title"], "Indexed beside the server");
    let (_, similar) = send(client().get(format!("{}/v1/products/24-MB04/similar?k=1", server.base)));
    assert_eq!(similar["results"][0]["id"], "EXT-1", "{similar}");
    let clash = send(
        client()
            .post(format!("{}/v1/products", server.base))
            .bearer_auth(TOKEN)
            .multipart(form_with_image("EXT-1", "overwrite?", &demo_image("mh03.jpg"))),
    );
    assert_eq!(clash.0, StatusCode::CONFLICT, "{}", clash.1);
    let removed = lookalike(&["remove", "EXT-1", "--db", &server.db]);
    assert!(removed.status.success());
    let (status, _) = send(client().get(format!("{}/v1/products/EXT-1", server.base)));
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[test]
fn cors_headers_only_for_configured_origins_and_the_widget_script_is_served() {
    let origin_of = |response: &reqwest::blocking::Response| {
        response
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_string())
    };
    let shop = "http://shop.example:8000";
    let plain = client().get(url("/v1/products/MH01/similar?k=2")).header("origin", shop).send().unwrap();
    assert_eq!(origin_of(&plain), None, "no CORS headers unless configured");
    let widget = client().get(url("/widget.js")).send().unwrap();
    assert_eq!(widget.status(), StatusCode::OK);
    assert_eq!(widget.headers()["content-type"], "text/javascript");
    assert!(widget.text().unwrap().contains("data-lookalike-product"));
    let (_, product) = send(client().get(url("/v1/products/MH01")));
    assert_eq!(product["url"], "https://luma.example/chaz-kangeroo-hoodie.html");

    let server = start_server(&["--cors-origin", shop, "--cors-origin", "https://other.example"]);
    let get = |origin: &str| {
        client()
            .get(format!("{}/v1/products/MH01/similar?k=2", server.base))
            .header("origin", origin)
            .send()
            .unwrap()
    };
    let allowed = get(shop);
    assert_eq!(allowed.status(), StatusCode::OK);
    assert_eq!(origin_of(&allowed).as_deref(), Some(shop));
    assert_eq!(origin_of(&get("https://evil.example")), None);
    let preflight = client()
        .request(reqwest::Method::OPTIONS, format!("{}/v1/search", server.base))
        .header("origin", "https://other.example")
        .header("access-control-request-method", "POST")
        .send()
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(origin_of(&preflight).as_deref(), Some("https://other.example"));
    let bad = Command::new(env!("CARGO_BIN_EXE_lookalike"))
        .args(["serve", "--read-only", "--db", &server.db, "--cors-origin", "shop.example/page"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
}

#[test]
fn products_of_several_photos_answer_with_the_view_that_matched() {
    let shop = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/luma-shop");
    let server = start_server_with(&shop.join("magento.csv"), &[]);
    let at = |path: &str| format!("{}{path}", server.base);
    let query = std::fs::read(shop.join("queries/mh01-orange_main.jpg")).unwrap();
    let form = multipart::Form::new().part("image", image_part(query.clone(), "q.jpg")).text("k", "4");
    let (status, body) = send(client().post(at("/v1/search")).multipart(form));
    assert_eq!(status, StatusCode::OK, "{body}");
    let first = &body["results"][0];
    assert_eq!(first["id"], "MH01");
    let images: Vec<&str> = first["images"].as_array().unwrap().iter().map(|i| i.as_str().unwrap()).collect();
    assert_eq!(images, ["/v1/products/MH01/image", "/v1/products/MH01/images/1", "/v1/products/MH01/images/2"]);
    assert!(images.contains(&first["matched_image"].as_str().unwrap()), "{first}");
    let back = client().get(at("/v1/products/MH01/images/2")).send().unwrap();
    assert_eq!(back.status(), StatusCode::OK);
    assert_eq!(back.bytes().unwrap().to_vec(), std::fs::read(shop.join("m/h/mh01-gray_back.jpg")).unwrap());
    assert_eq!(send(client().get(at("/v1/products/MH01/images/3"))).0, StatusCode::NOT_FOUND);
    let (_, similar) = send(client().get(at("/v1/products/MH01/similar?k=3")));
    assert_eq!(result_ids(&similar).len(), 3, "{similar}");
    assert!(result_ids(&similar).iter().all(|id| *id != "MH01"), "{similar}");
    assert_eq!(send(client().get(at("/v1/products/MH01/similar?variants=some"))).0, StatusCode::BAD_REQUEST);
    let (_, diverse) = send(client().get(at("/v1/products/MH01/similar?k=4&diversity=0.6")));
    assert_eq!(result_ids(&diverse).len(), 4, "{diverse}");
    assert_eq!(send(client().get(at("/v1/products/MH01/similar?diversity=2"))).0, StatusCode::BAD_REQUEST);
    words_beside_photos(&server, &query);
    // A new main photo keeps the product's other views.
    let form = multipart::Form::new().part("image", image_part(demo_image("mh01.jpg"), "new.jpg"));
    let (status, updated) = send(client().put(at("/v1/products/MH01")).bearer_auth(TOKEN).multipart(form));
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["images"].as_array().unwrap().len(), 3);
    let (_, fetched) = send(client().get(at("/v1/products/MH01")));
    assert_eq!(fetched["images"].as_array().unwrap().len(), 3);
}

/// Search by words (GET and in the form), fused with a photo, and following writes at once.
fn words_beside_photos(server: &Server, photo: &[u8]) {
    let at = |path: &str| format!("{}{path}", server.base);
    let (status, hoodies) = send(client().get(at("/v1/search?q=Hoodies")));
    assert_eq!(status, StatusCode::OK, "{hoodies}");
    assert_eq!(hoodies["metric"], "relevance");
    let mut found = result_ids(&hoodies);
    found.sort();
    assert_eq!(found, ["MH01", "WH01"]);
    let women = "/v1/search?q=hoodie&category=women%2Ftops%2Fhoodies%20%26%20sweatshirts";
    assert_eq!(result_ids(&send(client().get(at(women))).1), ["WH01"]);
    let photo_form = |words: Option<&str>| {
        let form = multipart::Form::new()
            .part("image", image_part(photo.to_vec(), "q.jpg"))
            .text("k", "10");
        match words {
            Some(words) => form.text("q", words.to_string()),
            None => form,
        }
    };
    let (_, by_photo) = send(client().post(at("/v1/search")).multipart(photo_form(None)));
    let (status, fused) = send(client().post(at("/v1/search")).multipart(photo_form(Some("women hoodie"))));
    assert_eq!(status, StatusCode::OK, "{fused}");
    let rank = |body: &Value, id: &str| result_ids(body).iter().position(|x| *x == id).unwrap();
    assert!(rank(&fused, "WH01") < rank(&by_photo, "WH01"), "{by_photo}\n{fused}");
    // The photo's own product stays on top with the other hoodie (their order is the text
    // engine's: BM25 and ts_rank differ).
    assert!(rank(&fused, "MH01") < 2, "{fused}");
    let words_only = multipart::Form::new().text("q", "jacket");
    let (status, jackets) = send(client().post(at("/v1/search")).multipart(words_only));
    assert_eq!(status, StatusCode::OK, "{jackets}");
    assert!(result_ids(&jackets).contains(&"WJ01"), "{jackets}");
    for (form, reason) in [
        (multipart::Form::new().text("k", "3"), "both"),
        (multipart::Form::new().text("q", " -- "), "no words"),
        (multipart::Form::new().text("q", "x").text("diversity", "-1"), "diversity"),
    ] {
        let (status, body) = send(client().post(at("/v1/search")).multipart(form));
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(reason), "{body}");
    }
    // Words of a new product are found at once, and gone with it.
    let form = form_with_image("ZEBRA-1", "Zebra parka", photo);
    let (status, created) = send(client().post(at("/v1/products")).bearer_auth(TOKEN).multipart(form));
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(result_ids(&send(client().get(at("/v1/search?q=zebra"))).1), ["ZEBRA-1"]);
    let (status, _) = send(client().delete(at("/v1/products/ZEBRA-1")).bearer_auth(TOKEN));
    assert!(status.is_success(), "{status}");
    assert!(result_ids(&send(client().get(at("/v1/search?q=zebra"))).1).is_empty());
}

#[test]
fn approximate_search_answers_like_exact_search_and_follows_writes() {
    if POSTGRES {
        return; // the database searches itself there; --search only steers memory
    }
    // 3,000 products sampled from Gaussians fitted to the demo's real vectors (their neighbours as
    // near as real ones'), served twice from one file: exact and approximate.
    let dir = tempfile::tempdir().unwrap();
    let (demo_db, db) = (dir.path().join("demo.db"), dir.path().join("clusters.db"));
    common::ok(common::lookalike(&[
        "index",
        demo().join("catalogue.csv").to_str().unwrap(),
        "--db",
        demo_db.to_str().unwrap(),
    ]));
    common::synth_catalogue(&demo_db, &db, 3000, "clusters");
    let db = db.to_str().unwrap();
    let exact = common::serve(db, &[], TOKEN, tempfile::tempdir().unwrap());
    let approximate = common::serve(
        db,
        &["--search".into(), "approximate".into(), "--ef".into(), "64".into()],
        TOKEN,
        tempfile::tempdir().unwrap(),
    );
    let ask = |server: &Server, photo: &str, category: Option<&str>| -> Vec<(String, f64)> {
        let mut form = multipart::Form::new()
            .part("image", image_part(demo_image(photo), "q.jpg"))
            .text("k", "10")
            .text("variants", "all");
        if let Some(category) = category {
            form = form.text("category", category.to_string());
        }
        let (status, body) = send(client().post(format!("{}/v1/search", server.base)).multipart(form));
        assert_eq!(status, StatusCode::OK, "{body}");
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["id"].as_str().unwrap().to_string(), r["score"].as_f64().unwrap()))
            .collect()
    };
    let photos = ["mh01.jpg", "wb04.jpg", "24-mb04.jpg", "24-mg01.jpg", "mj02.jpg", "ws03.jpg"];
    let agreement = |category: Option<&str>| {
        let (mut shared, mut total) = (0, 0);
        for photo in photos {
            let truth = ask(&exact, photo, category);
            let found = ask(&approximate, photo, category);
            assert_eq!(found.len(), truth.len(), "{photo}");
            for (id, score) in &found {
                if let Some((_, exact_score)) = truth.iter().find(|(t, _)| t == id) {
                    assert_eq!(score, exact_score, "scores stay exact");
                    shared += 1;
                }
            }
            total += truth.len();
        }
        shared as f64 / total as f64
    };
    let recall = agreement(None);
    assert!(recall >= 0.9, "recall@10 {recall}");
    let first = ask(&approximate, "mh01.jpg", None)[0].0.clone();
    let (_, product) = send(client().get(format!("{}/v1/products/{first}", exact.base)));
    let category = product["category"].as_str().unwrap().to_string();
    let recall = agreement(Some(&category));
    assert!(recall >= 0.9, "recall@10 within {category}: {recall}");

    // A deleted product is never answered again; a new one is found at once.
    let (status, _) = send(
        client()
            .delete(format!("{}/v1/products/{first}", approximate.base))
            .bearer_auth(TOKEN),
    );
    assert!(status.is_success(), "{status}");
    let after = ask(&approximate, "mh01.jpg", None);
    assert!(!after.is_empty() && after.iter().all(|(id, _)| *id != first), "{after:?}");
    let (status, body) = send(
        client()
            .post(format!("{}/v1/products", approximate.base))
            .bearer_auth(TOKEN)
            .multipart(form_with_image("NEW-ANN", "Just added", &demo_image("mh01.jpg"))),
    );
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(ask(&approximate, "mh01.jpg", None)[0].0, "NEW-ANN");
    assert_eq!(ask(&exact, "mh01.jpg", None)[0].0, "NEW-ANN", "the other server reads the change too");
}

/// Sends `request` as it is on a new connection, then `then` as far as the server reads it; the
/// server's whole answer as text (until it closes, or 10 s pass).
fn raw_exchange(request: &[u8], then: &[u8]) -> String {
    use std::io::{Read, Write};
    let address = server().base.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let _ = stream.write_all(then);
    let mut text = Vec::new();
    let _ = stream.read_to_end(&mut text);
    String::from_utf8_lossy(&text).into_owned()
}

/// The status and JSON body of the last answer in `text`, whose error body must have the
/// documented shape.
fn last_answer(text: &str) -> (u16, Value) {
    let (at, status) = text
        .match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| Some((at, text.get(at + 9..at + 12)?.parse::<u16>().ok()?)))
        .last()
        .unwrap_or_else(|| panic!("no answer in {text:?}"));
    let answer = &text[at..];
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let body: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {answer:?}"));
    if status >= 400 {
        assert!(
            body["error"]["code"].is_string() && body["error"]["message"].is_string(),
            "{answer}"
        );
    }
    (status, body)
}

fn metric(server: &Server, name_and_labels: &str) -> f64 {
    let text = client()
        .get(format!("{}/metrics", server.base))
        .send()
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn slow_bodies_no_route_or_token_accepts_hold_no_memory_and_searches_go_through() {
    use std::io::Write;
    // A server of its own: its gauge of bodies held then counts only what this test sends.
    let server = start_server(&["--max-upload-mb", &UPLOAD_LIMIT_MB.to_string()]);
    let address = server.base.trim_start_matches("http://").to_string();
    // Each declares a 1 MiB body and sends a byte now and then: 300 of them declared more than
    // the server's 256 MiB budget for bodies, which was reserved from what they declared.
    let requests = [
        "POST /no/such/route HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n",
        "PUT /v1/products/24-MG01 HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n",
        "POST /v1/products HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\nContent-Length: 1048576\r\n\r\n",
    ];
    let mut trickling: Vec<std::net::TcpStream> = (0..300)
        .map(|n| {
            let mut stream = std::net::TcpStream::connect(&address).unwrap();
            stream.write_all(requests[n % requests.len()].as_bytes()).unwrap();
            stream
        })
        .collect();
    for round in 0..3 {
        for stream in &mut trickling {
            let _ = stream.write_all(b"x");
        }
        let form = multipart::Form::new().part("image", image_part(demo_image("mh01.jpg"), "q.jpg"));
        let (status, body) = send(client().post(format!("{}/v1/search", server.base)).multipart(form));
        assert_eq!(status, StatusCode::OK, "round {round}: {body}");
        assert!(
            metric(&server, "lookalike_request_body_bytes") < 1024.0 * 1024.0,
            "bodies no route or token accepts hold no memory"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

#[test]
fn bodies_in_tiny_chunks_are_refused_before_they_cost_the_server() {
    let mut chunked = Vec::new();
    for _ in 0..200_000 {
        chunked.extend_from_slice(b"1\r\nx\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let text = raw_exchange(
        b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=X\r\n\
          Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        &chunked,
    );
    let (status, body) = last_answer(&text);
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("body_too_fragmented")), "{body}");
    assert_eq!(get_status("/healthz"), StatusCode::OK);
}

#[test]
fn a_write_without_the_token_is_refused_before_its_body_is_asked_for() {
    let text = raw_exchange(
        b"POST /v1/products HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=X\r\n\
          Expect: 100-continue\r\nContent-Length: 5000000\r\n\r\n",
        b"",
    );
    assert!(text.starts_with("HTTP/1.1 401"), "no 100 Continue first: {text}");
    assert_eq!(last_answer(&text).0, 401);
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let (status, body) = send(
            client()
                .delete(url("/v1/products/NO-SUCH-PRODUCT"))
                .header("authorization", format!("{scheme}  {TOKEN}")),
        );
        assert_eq!(status, StatusCode::NOT_FOUND, "{scheme}: {body}");
    }
    let (status, _) = send(
        client()
            .delete(url("/v1/products/NO-SUCH-PRODUCT"))
            .header("authorization", format!("Basic {TOKEN}")),
    );
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[test]
fn invented_methods_and_request_ids_leave_metrics_and_logs_bounded() {
    let series = "lookalike_http_requests_total{route=\"unmatched\",method=\"other\",status=\"405\"}";
    let before = metric(server(), series);
    for n in 0..40 {
        let method = format!("INVENTED{n}{}", "X".repeat(2000));
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let (status, _) = send(client().request(method, url("/v1/stats")));
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }
    let text = client().get(url("/metrics")).send().unwrap().text().unwrap();
    assert!(!text.contains("INVENTED"), "a series per invented method");
    let after = metric(server(), series);
    assert!(after - before >= 40.0, "{before} -> {after}");
    // A request id too long (or not printable) to copy into every log line is replaced.
    let response = client()
        .get(url("/healthz"))
        .header("x-request-id", "r".repeat(4000))
        .send()
        .unwrap();
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert!(!id.is_empty() && id.len() <= 128, "{id}");
}

#[test]
fn requests_hyper_cannot_parse_get_json_errors_too() {
    let many_headers: String = (0..200).map(|n| format!("X-Header-{n}: y\r\n")).collect();
    let cases = [
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".to_vec(), 400),
        (b"NOT HTTP AT ALL\r\n\r\n".to_vec(), 400),
        (
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000)).into_bytes(),
            414,
        ),
        (
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(),
            431,
        ),
        (
            // After an answered request on the same connection.
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nBad Header\r\n\r\n".to_vec(),
            400,
        ),
    ];
    for (request, expected) in cases {
        let text = raw_exchange(&request, b"");
        assert_eq!(last_answer(&text).0, expected, "{text}");
    }
    assert_eq!(get_status("/healthz"), StatusCode::OK);
}

#[test]
fn categories_match_whatever_their_case_in_every_query() {
    let server = start_server(&[]);
    let base = &server.base;
    let create = |id: &str, category: &str, photo: &str| {
        let form = form_with_image(id, "Coffee beans", &demo_image(photo)).text("category", category.to_string());
        let (status, body) = send(client().post(format!("{base}/v1/products")).bearer_auth(TOKEN).multipart(form));
        assert_eq!(status, StatusCode::CREATED, "{body}");
    };
    create("CAFE-1", "Épicerie Fine", "mh01.jpg");
    create("CAFE-2", "Straße", "mh02.jpg");
    for (category, id) in [
        ("épicerie fine", "CAFE-1"),
        ("ÉPICERIE FINE", "CAFE-1"),
        ("STRASSE", "CAFE-2"),
    ] {
        let form = multipart::Form::new()
            .part("image", image_part(demo_image("mh01.jpg"), "q.jpg"))
            .text("category", category.to_string());
        let (status, body) = send(client().post(format!("{base}/v1/search")).multipart(form));
        assert_eq!((status, result_ids(&body)), (StatusCode::OK, vec![id]), "photo, {category}: {body}");
        let encoded = percent_encoding::utf8_percent_encode(category, percent_encoding::NON_ALPHANUMERIC);
        let (_, body) = send(client().get(format!("{base}/v1/search?q=coffee&category={encoded}")));
        assert_eq!(result_ids(&body), vec![id], "words, {category}: {body}");
        let (_, body) = send(client().get(format!("{base}/v1/products?category={encoded}")));
        let listed: Vec<&str> = body["items"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
        assert_eq!(listed, vec![id], "listing, {category}: {body}");
        let (_, body) = send(client().get(format!("{base}/v1/products/24-MG01/similar?category={encoded}")));
        assert_eq!(result_ids(&body), vec![id], "similar, {category}: {body}");
    }
}

#[test]
fn words_match_whatever_their_accents() {
    let server = start_server(&[]);
    let base = &server.base;
    for (id, title, photo) in [("ACCENT-1", "Café crème mug", "mh01.jpg"), ("ACCENT-2", "Cafe au lait bowl", "mh02.jpg")] {
        let (status, body) = send(
            client()
                .post(format!("{base}/v1/products"))
                .bearer_auth(TOKEN)
                .multipart(form_with_image(id, title, &demo_image(photo))),
        );
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    for asked in ["cafe", "café", "CAFÉ", "Cafe"] {
        let encoded = percent_encoding::utf8_percent_encode(asked, percent_encoding::NON_ALPHANUMERIC);
        let (status, body) = send(client().get(format!("{base}/v1/search?q={encoded}")));
        let mut found = result_ids(&body);
        found.sort();
        assert_eq!((status, found), (StatusCode::OK, vec!["ACCENT-1", "ACCENT-2"]), "{asked}: {body}");
    }
    let (_, body) = send(client().get(format!("{base}/v1/search?q=creme")));
    assert_eq!(result_ids(&body), vec!["ACCENT-1"], "{body}");
}

/// A file that has stood untouched long enough for the start-up sweep to consider it.
fn age(path: &std::path::Path) {
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 3600);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(old)
        .unwrap();
}

#[test]
fn a_server_deletes_only_files_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let shop = dir.path().join("shop");
    std::fs::create_dir_all(shop.join("images")).unwrap();
    std::fs::copy(demo().join("catalogue.csv"), shop.join("catalogue.csv")).unwrap();
    for entry in std::fs::read_dir(demo().join("images")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), shop.join("images").join(entry.file_name())).unwrap();
    }
    let images = shop.join("images");
    let db = if POSTGRES {
        common::postgres_db()
    } else {
        dir.path().join("shop.db").to_str().unwrap().to_string()
    };
    // A file named as uploads are but never written by the server, and one that was (recorded,
    // no product uses it): both untouched for hours, so the start-up sweep looks at them.
    let foreign = images.join(format!("{}.jpg", "a".repeat(64)));
    std::fs::write(&foreign, b"the shop's own file").unwrap();
    let orphan = images.join(format!("{}.png", "b".repeat(64)));
    std::fs::write(&orphan, b"an upload no product uses").unwrap();
    lookalike::store::open_store(&db)
        .unwrap()
        .record_upload(orphan.to_str().unwrap())
        .unwrap();
    age(&foreign);
    age(&orphan);
    let args: Vec<String> = ["--catalogue", shop.join("catalogue.csv").to_str().unwrap()]
        .iter()
        .map(|s| s.to_string())
        .chain(["--upload-dir".to_string(), images.to_str().unwrap().to_string()])
        .collect();
    let server = common::serve(&db, &args, TOKEN, tempfile::tempdir().unwrap());
    let swept = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        !orphan.exists()
    });
    assert!(swept, "the recorded, unused upload is swept");
    assert!(foreign.exists(), "a file the server did not write is kept");
    let (status, _) = send(
        client()
            .delete(format!("{}/v1/products/MH01", server.base))
            .bearer_auth(TOKEN),
    );
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(images.join("mh01.jpg").exists(), "the shop's photo outlives its product");
    let photos = std::fs::read_dir(&images).unwrap().count();
    assert_eq!(photos, 61, "the 60 photos and the foreign file");

    if !POSTGRES {
        // An upload folder that holds the database is refused: the server deletes files there.
        let refused = Command::new(env!("CARGO_BIN_EXE_lookalike"))
            .args(["serve", "--port", "0", "--threads", "1", "--db", &db, "--upload-dir"])
            .arg(dir.path())
            .env("LOOKALIKE_TOKEN", TOKEN)
            .env("LOOKALIKE_EXIT_ON_STDIN_EOF", "1")
            .output()
            .unwrap();
        let text = common::text(&refused);
        assert!(!refused.status.success(), "{text}");
        assert!(text.contains("holds the catalogue's database"), "{text}");
    }
}

#[test]
fn a_vector_damaged_in_the_index_file_never_ranks_nor_shows_as_null() {
    if POSTGRES {
        return; // no index file: pgvector refuses vectors that are not finite
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    common::ok(common::lookalike(&[
        "index",
        demo().join("catalogue.csv").to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]));
    // A search writes the index file; then one float of a product's vector turns into a NaN
    // there: the second product in id order, which the check at start-up does not sample.
    common::ok(common::lookalike(&[
        "search",
        demo().join("images/mh02.jpg").to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]));
    let stored = lookalike::store::open_store(db.to_str().unwrap())
        .unwrap()
        .products()
        .unwrap()
        .swap_remove(1);
    let index_file = dir.path().join("demo.db.index");
    let mut bytes = std::fs::read(&index_file).unwrap();
    let vector: Vec<u8> = stored.vector.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let at = bytes
        .windows(vector.len())
        .position(|w| w == vector)
        .expect("the vector in the file");
    bytes[at + 40..at + 44].copy_from_slice(&f32::NAN.to_ne_bytes());
    std::fs::write(&index_file, bytes).unwrap();

    let server = common::serve(db.to_str().unwrap(), &[], TOKEN, tempfile::tempdir().unwrap());
    let photo = std::fs::read(&stored.image_path).unwrap();
    let query = || {
        let form = multipart::Form::new()
            .part("image", image_part(photo.clone(), "q.jpg"))
            // One search per query: finding the product would search once before.
            .text("whole", "true")
            .text("k", "60");
        let (status, body) = send(client().post(format!("{}/v1/search", server.base)).multipart(form));
        assert_eq!(status, StatusCode::OK, "{body}");
        for r in body["results"].as_array().unwrap() {
            assert!(r["score"].as_f64().is_some_and(f64::is_finite), "{r}");
        }
        result_ids(&body).into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let first = query();
    assert!(!first.contains(&stored.id), "the damaged product is left out: {first:?}");
    let second = query();
    assert_eq!(second[0], stored.id, "read again from the database: {second:?}");
}

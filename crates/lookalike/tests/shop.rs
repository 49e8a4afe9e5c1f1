//! The front door as a program embedding lookalike uses it: index the demo catalogue, ask every
//! kind of question, and get each kind of mistake back as its typed error.

use std::path::PathBuf;

use lookalike::error::{Error, ImageProblem};
use lookalike::image::Photo;
use lookalike::index::category_vote::{voted, votes};
use lookalike::index::local_cells::StoredCells;
use lookalike::model::{BackboneSpec, Precision};
use lookalike::scenes::mirrored_search;
use lookalike::shop::{Framing, IndexRequest, OpenOptions, SearchRequest, Shop};
use lookalike::types::{Filter, Metric, PhotoBox, Words};

fn demo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../demo/catalogue.csv")
}

fn writable() -> OpenOptions {
    OpenOptions {
        threads: 2,
        read_only: false,
        ..OpenOptions::default()
    }
}

/// The demo catalogue indexed into a new SQLite file in `dir`.
fn indexed(dir: &tempfile::TempDir) -> String {
    let db = dir.path().join("shop.db").to_string_lossy().into_owned();
    let shop = Shop::open(&db, writable()).unwrap();
    let mut calls = 0;
    let summary = shop.index(&IndexRequest::new(demo()), &mut |_, _| calls += 1).unwrap();
    assert_eq!(summary.report.total, 60);
    assert_eq!(summary.report.embedded, 60);
    assert!(!summary.skipped_any());
    assert!(
        calls >= 2,
        "progress is told before and after each batch, got {calls} calls"
    );
    shop.finish();
    db
}

#[test]
fn a_program_indexes_searches_and_changes_a_catalogue_through_the_front_door() {
    let dir = tempfile::tempdir().unwrap();
    let db = indexed(&dir);
    let shop = Shop::open(&db, OpenOptions::default()).unwrap();
    assert_eq!(shop.len().unwrap(), 60);

    // A product's own photo finds it first.
    let photo = shop.embed_file(&demo().with_file_name("images/24-mb01.jpg")).unwrap();
    let answer = shop.search(&SearchRequest::photo(&photo, 5)).unwrap();
    assert_eq!(answer.hits.len(), 5);
    assert_eq!(answer.hits[0].product.id, "24-MB01");
    assert_eq!(answer.scored_by, Some(Metric::Cosine));

    // Words rank by relevance; a category filter keeps to its category whatever its case.
    let words = Words::parse("duffle bag").unwrap();
    let filter = Filter {
        category: Some("GEAR/BAGS".into()),
        ..Filter::default()
    };
    let by_words = shop
        .search(&SearchRequest {
            photo: None,
            words: Some(&words),
            filter,
            ..SearchRequest::photo(&photo, 5)
        })
        .unwrap();
    assert!(!by_words.hits.is_empty());
    assert!(by_words
        .hits
        .iter()
        .all(|hit| hit.product.info.category.as_deref() == Some("Gear/Bags")));
    assert_eq!(by_words.scored_by, None);

    let similar = shop
        .similar("24-MB01", 3, Metric::Cosine, &Filter::default(), 0.0)
        .unwrap();
    assert_eq!(similar.len(), 3);
    assert!(similar.iter().all(|hit| hit.product.id != "24-MB01"));
    let recommended = shop
        .recommend(&["24-MB01".into()], &["24-MB02".into()], 4, &Filter::default())
        .unwrap();
    assert_eq!(recommended.len(), 4);
    assert!(recommended
        .iter()
        .all(|hit| hit.product.id != "24-MB01" && hit.product.id != "24-MB02"));
    shop.finish();

    // Writes: create, conflict, update, remove, not found.
    let shop = Shop::open_existing(&db, writable()).unwrap();
    let mut product = shop.product("24-MB01").unwrap();
    product.id = "copy-of-24-MB01".into();
    shop.create(product.clone()).unwrap();
    assert!(matches!(shop.create(product.clone()), Err(Error::Conflict(_))));
    product.info.title = Some("Renamed".into());
    shop.update(product).unwrap();
    assert_eq!(
        shop.product("copy-of-24-MB01").unwrap().info.title.as_deref(),
        Some("Renamed")
    );
    shop.remove("copy-of-24-MB01").unwrap();
    assert!(matches!(shop.remove("copy-of-24-MB01"), Err(Error::NotFound(_))));
    assert!(matches!(shop.product("copy-of-24-MB01"), Err(Error::NotFound(_))));

    // Whole-catalogue jobs.
    let out = dir.path().join("related.jsonl");
    let report = shop.recommend_all(3, &out, &dir.path().join("state.json")).unwrap();
    assert_eq!(report.products, 60);
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 60);
    let duplicates = shop.duplicates(0.999).unwrap();
    assert_eq!(duplicates.products, 60);
    assert!(duplicates
        .groups
        .iter()
        .all(|g| g.ids.len() >= 2 && g.ids.iter().all(|id| duplicates.members.contains_key(id))));
    let npy = dir.path().join("vectors.npy");
    assert_eq!(shop.export(Some(&npy), None).unwrap(), 60);
    assert!(npy.is_file());
}

#[test]
fn every_mistake_comes_back_as_its_kind() {
    let dir = tempfile::tempdir().unwrap();
    let db = indexed(&dir);
    let shop = Shop::open(&db, OpenOptions::default()).unwrap();
    let photo = shop.embed_file(&demo().with_file_name("images/24-mb02.jpg")).unwrap();

    fn kind<T>(result: lookalike::error::Result<T>) -> &'static str {
        match result {
            Ok(_) => "ok",
            Err(Error::NotFound(_)) => "NotFound",
            Err(Error::InvalidInput(_)) => "InvalidInput",
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        kind(shop.similar("no-such-id", 3, Metric::Cosine, &Filter::default(), 0.0)),
        "NotFound"
    );
    assert_eq!(kind(shop.search(&SearchRequest::photo(&photo, 0))), "InvalidInput");
    assert_eq!(
        kind(shop.search(&SearchRequest {
            diversity: 1.5,
            ..SearchRequest::photo(&photo, 3)
        })),
        "InvalidInput"
    );
    assert_eq!(
        kind(shop.search(&SearchRequest {
            likely_categories: Some(0.9),
            ..SearchRequest::photo(&photo, 3)
        })),
        "InvalidInput",
        "a search kept to likely categories without a classifier"
    );
    assert_eq!(kind(shop.recommend(&[], &[], 3, &Filter::default())), "InvalidInput");
    assert_eq!(
        kind(shop.create(shop.product("24-MB01").unwrap())),
        "InvalidInput",
        "read-only"
    );
    // A photo that is not one, and one that is broken.
    let not_a_photo = dir.path().join("notes.jpg");
    std::fs::write(&not_a_photo, b"just some words").unwrap();
    assert!(matches!(
        shop.embed_file(&not_a_photo),
        Err(Error::Image {
            problem: ImageProblem::NotAnImage,
            ..
        })
    ));
    let mut broken = std::fs::read(demo().with_file_name("images/24-mb02.jpg")).unwrap();
    broken.truncate(400);
    let broken_path = dir.path().join("broken.jpg");
    std::fs::write(&broken_path, broken).unwrap();
    assert!(matches!(
        shop.embed_file(&broken_path),
        Err(Error::Image {
            problem: ImageProblem::Undecodable,
            ..
        })
    ));
    shop.finish();

    // The catalogue was built by Lite1 in fp32: another backbone or precision is the wrong model.
    for options in [
        OpenOptions {
            backbone: Some("lite0".parse::<BackboneSpec>().unwrap()),
            ..OpenOptions::default()
        },
        OpenOptions {
            precision: Some(Precision::Int8),
            ..OpenOptions::default()
        },
    ] {
        let shop = Shop::open(&db, options).unwrap();
        let err = shop.embedder().map(|_| ()).unwrap_err();
        assert!(matches!(err, Error::WrongModel(_)), "{err:?}");
    }

    // No catalogue there, or an empty one.
    let missing = dir.path().join("missing.db").to_string_lossy().into_owned();
    assert!(matches!(
        Shop::open(&missing, OpenOptions::default()),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        Shop::open_existing(&missing, writable()),
        Err(Error::NotFound(_))
    ));
    let empty = dir.path().join("empty.db").to_string_lossy().into_owned();
    Shop::open(&empty, writable()).unwrap().finish();
    assert!(matches!(
        Shop::open(&empty, OpenOptions::default()),
        Err(Error::NotFound(_))
    ));
    // A database another process holds locked is unavailable, not broken.
    let holder = rusqlite::Connection::open(&db).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let locked = Shop::open_existing(&db, writable()).and_then(|shop| {
        let mut product = shop.product("24-MB01")?;
        product.id = "while-locked".into();
        shop.create(product)
    });
    assert!(matches!(locked, Err(Error::StoreUnavailable(_))), "{locked:?}");
}

/// `eval scenes` re-creates search's decisions over stored vectors (it must leave photos out of
/// every best match); over the whole catalogue it looks where search looks and finds the regions
/// "shop the look" finds, so its figures are search's own. The catalogue has products of several
/// photos, which search scores by their two best.
/// The Luma fixture (several photos per product), its photos and the photos of it that it does
/// not list.
fn luma_fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../lookalike-cli/tests/fixtures/luma-shop")
}

/// `paths` as tiles of `side` pixels on a white square, in rows: a busy photo.
fn collage(paths: &[PathBuf], side: u32) -> Photo {
    let columns = (paths.len() as f64).sqrt().ceil() as u32;
    let mut canvas = image::RgbImage::from_pixel(columns * side, columns * side, image::Rgb([255, 255, 255]));
    for (i, path) in paths.iter().enumerate() {
        let tile = image::open(path).unwrap().to_rgb8();
        let tile = image::imageops::resize(&tile, side, side, image::imageops::FilterType::Triangle);
        let (x, y) = ((i as u32 % columns) * side, (i as u32 / columns) * side);
        image::imageops::replace(&mut canvas, &tile, x.into(), y.into());
    }
    Photo {
        width: canvas.width(),
        height: canvas.height(),
        pixels: canvas,
    }
}

/// A photo of the Luma shop's orange hoodie it does not list, among three products of the demo.
fn orange_hoodie_among_others() -> Photo {
    let other = |name: &str| demo().with_file_name("images").join(name);
    let hoodie = luma_fixture().join("queries/mh01-orange_main.jpg");
    collage(
        &[hoodie, other("24-ug03.jpg"), other("wb01.jpg"), other("wsh02.jpg")],
        250,
    )
}

/// A photo of the Luma shop's red jacket it does not list, after three products of the demo.
fn red_jacket_among_others() -> Photo {
    let other = |name: &str| demo().with_file_name("images").join(name);
    let jacket = luma_fixture().join("queries/wj01-red_main.jpg");
    collage(
        &[other("24-mg03.jpg"), other("wp04.jpg"), other("24-mb02.jpg"), jacket],
        250,
    )
}

#[test]
fn eval_scenes_looks_where_search_and_shop_the_look_look() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("luma.db").to_string_lossy().into_owned();
    let fixture = luma_fixture();
    let shop = Shop::open(&db, writable()).unwrap();
    shop.index(&IndexRequest::new(fixture.join("magento.csv")), &mut |_, _| ())
        .unwrap();
    let store = lookalike::store::open_store_read_only(&db).unwrap();
    let embedder = shop.embedder().unwrap();
    // Photos of the shop's products it does not list, among other things (the demo's photos).
    let queries = |name: &str| fixture.join("queries").join(name);
    let other = |name: &str| demo().with_file_name("images").join(name);
    let photos = [
        Shop::read_photo(&demo().with_file_name("../tests/web/fixtures/two-products.jpg")).unwrap(),
        orange_hoodie_among_others(),
        red_jacket_among_others(),
        collage(
            &[
                other("wb01.jpg"),
                other("24-ug01.jpg"),
                other("24-mg03.jpg"),
                other("wsh04.jpg"),
                queries("wj01-red_main.jpg"),
                other("24-ug02.jpg"),
                other("wb03.jpg"),
                queries("mh01-orange_main.jpg"),
                other("24-mb04.jpg"),
            ],
            200,
        ),
    ];
    let same = |a: &PhotoBox, b: &PhotoBox| {
        [(a.x0, b.x0), (a.y0, b.y0), (a.x1, b.x1), (a.y1, b.y1)]
            .iter()
            .all(|(a, b)| (a - b).abs() < 1.0)
    };
    let (mut in_a_part, mut regions_found) = (0, 0);
    for (i, photo) in photos.iter().enumerate() {
        let located = shop.locate(photo, &Framing::FindProduct, false).unwrap();
        let searched = located.region;
        // Its kind is read from the whole photo too (see the kinds test below).
        assert_eq!(located.whole_photo.is_some(), searched.is_some(), "photo {i}");
        let found: Vec<PhotoBox> = shop.products_in(photo).unwrap().iter().map(|r| r.region).collect();
        let (mirrored, mirrored_regions) = mirrored_search(&*store, &embedder, photo).unwrap();
        match (searched, mirrored) {
            (None, None) => {}
            (Some(a), Some(b)) => {
                assert!(same(&a, &b), "photo {i}: search looked in {a:?}, eval scenes in {b:?}");
                in_a_part += 1;
            }
            other => panic!("photo {i}: search looked in / eval scenes looked in {other:?}"),
        }
        assert!(
            found.len() == mirrored_regions.len() && found.iter().zip(&mirrored_regions).all(|(a, b)| same(a, b)),
            "photo {i}: shop the look found {found:?}, eval scenes {mirrored_regions:?}"
        );
        regions_found += found.len();
    }
    assert!(
        in_a_part >= 1,
        "no photo was searched in a part: the test would prove nothing"
    );
    assert!(
        regions_found > photos.len(),
        "no photo had several regions: {regions_found}"
    );
}

/// A part found in a busy photo, or a box, has its 20 best products ordered again by their score
/// plus their most alike photo's local likeness to the part (each photo's cells kept by `index`); a
/// catalogue indexed without cells answers as before; a product added through the front door
/// keeps its photo's cells.
#[test]
fn a_part_found_in_a_busy_photo_reranks_its_products_by_their_photos_cells() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = luma_fixture();
    let index = |name: &str, local_cells: bool| {
        let db = dir.path().join(name).to_string_lossy().into_owned();
        let shop = Shop::open(&db, writable()).unwrap();
        let request = IndexRequest {
            local_cells,
            ..IndexRequest::new(fixture.join("magento.csv"))
        };
        shop.index(&request, &mut |_, _| ()).unwrap();
        shop
    };
    let (shop, plain_shop) = (index("cells.db", true), index("plain.db", false));
    let other = |name: &str| demo().with_file_name("images").join(name);
    let queries = |name: &str| fixture.join("queries").join(name);
    let photos = [
        orange_hoodie_among_others(),
        red_jacket_among_others(),
        collage(
            &[
                other("wb01.jpg"),
                queries("wj01-red_main.jpg"),
                other("24-ug02.jpg"),
                other("wsh04.jpg"),
            ],
            250,
        ),
        collage(
            &[
                other("wp04.jpg"),
                other("24-ug01.jpg"),
                queries("mh01-orange_main.jpg"),
                other("24-mb04.jpg"),
            ],
            250,
        ),
    ];
    let store = lookalike::store::open_store_read_only(&shop.location()).unwrap();
    let ids = |hits: &[lookalike::types::Scored]| hits.iter().map(|h| h.product.id.clone()).collect::<Vec<_>>();
    // `located`'s products with and without its cells, checked against what the order must be:
    // the plain order's products by the key their categories' vote ordered them by (their score
    // where the part matches a product closely) plus their most alike photo's likeness.
    let reranked_and_plain = |located: &lookalike::shop::Located| {
        let part = located.cells.as_ref().expect("cells");
        let reranked = shop.search(&SearchRequest::located(located, 20)).unwrap().hits;
        let plain = shop
            .search(&SearchRequest {
                part_cells: None,
                ..SearchRequest::located(located, 20)
            })
            .unwrap()
            .hits;
        assert!(
            plain.len() >= 5 && plain.len() == reranked.len(),
            "every product of the fixture"
        );
        let plain_ids = ids(&plain);
        let cells = store
            .cells_of(&plain_ids.iter().map(String::as_str).collect::<Vec<_>>())
            .unwrap();
        let mut by_score = plain.clone();
        by_score.sort_by(|a, b| b.score.total_cmp(&a.score));
        let mut expected: Vec<(String, f32)> = voted(by_score, |_| Some(0.0))
            .into_iter()
            .map(|(hit, key)| {
                let photos = &cells[&hit.product.id];
                assert_eq!(
                    photos.len(),
                    hit.product.image_paths().count(),
                    "every photo has its cells"
                );
                let likeness = photos
                    .iter()
                    .map(|photo| part.likeness_to(&StoredCells::from_bytes(&photo.cells).unwrap()))
                    .fold(f32::MIN, f32::max);
                (hit.product.id.clone(), key + likeness)
            })
            .collect();
        expected.sort_by(|a, b| b.1.total_cmp(&a.1));
        let expected: Vec<String> = expected.into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids(&reranked), expected);
        let voted_on = votes(plain.iter().map(|hit| hit.score).reduce(f32::max));
        (ids(&reranked), plain_ids, voted_on)
    };
    let (mut in_a_part, mut changed) = (0, 0);
    for (i, photo) in photos.iter().enumerate() {
        let located = shop.locate(photo, &Framing::FindProduct, false).unwrap();
        let Some(region) = located.region else {
            assert!(located.cells.is_none(), "photo {i}: searched whole, nothing to re-rank");
            continue;
        };
        in_a_part += 1;
        let (reranked, plain, _) = reranked_and_plain(&located);
        changed += usize::from(reranked != plain);

        // Indexed without cells: the same part, its products in their plain order.
        let located_there = plain_shop.locate(photo, &Framing::FindProduct, false).unwrap();
        assert_eq!(located_there.region, located.region, "photo {i}");
        let there = plain_shop
            .search(&SearchRequest::located(&located_there, 20))
            .unwrap()
            .hits;
        assert_eq!(ids(&there), plain, "photo {i}");

        // The same part drawn as a box by the shopper is re-ranked the same way.
        let boxed = shop.locate(photo, &Framing::Box(region), false).unwrap();
        assert!(boxed.feature_map.is_none(), "kept only when asked for");
        reranked_and_plain(&boxed);
    }
    assert!(
        in_a_part >= 1 && changed >= 1,
        "{in_a_part} photos searched in a part, {changed} re-ordered: else this proves nothing"
    );
    // Boxes around the demo's products, which the fixture does not list, match none closely:
    // their products are voted on, and re-ranked from the keys the vote ordered them by.
    let busy = orange_hoodie_among_others();
    let mut voted_on = 0;
    for (x, y) in [(250.0, 0.0), (0.0, 250.0), (250.0, 250.0)] {
        let tile = PhotoBox::new(x, y, x + 250.0, y + 250.0).unwrap();
        let boxed = shop.locate(&busy, &Framing::Box(tile), false).unwrap();
        voted_on += usize::from(reranked_and_plain(&boxed).2);
    }
    assert!(voted_on >= 1, "no box voted on: else this proves nothing");

    // A product added through the front door keeps its photo's cells.
    let path = fixture.join("queries/mh01-orange_main.jpg");
    let product = lookalike::types::StoredProduct {
        id: "NEW-MH01".into(),
        info: Default::default(),
        image_path: path.to_string_lossy().into_owned(),
        content_hash: lookalike::content_hash(&std::fs::read(&path).unwrap()),
        vector: shop.embed_file(&path).unwrap().features,
        more_images: Vec::new(),
    };
    shop.create(product).unwrap();
    let kept = store.cells_of(&["NEW-MH01"]).unwrap();
    assert_eq!(kept["NEW-MH01"].len(), 1);
    assert!(StoredCells::from_bytes(&kept["NEW-MH01"][0].cells).is_some());
}

/// A catalogue of folders, each one product of a kind of its own (the demo's first 8 photos).
fn lone_kinds(dir: &tempfile::TempDir) -> String {
    let images = demo().with_file_name("images");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&images).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    for (i, photo) in names.iter().take(8).enumerate() {
        let folder = dir.path().join(format!("lone/kind-{i}"));
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::copy(photo, folder.join(photo.file_name().unwrap())).unwrap();
    }
    let db = dir.path().join("lone.db").to_string_lossy().into_owned();
    let shop = Shop::open(&db, writable()).unwrap();
    shop.index(&IndexRequest::new(dir.path().join("lone")), &mut |_, _| ())
        .unwrap();
    shop.finish();
    db
}

/// `train kinds` on a catalogue it cannot learn kinds from (each kind one product, so a
/// held-out product's kind is learnt from nothing) refuses, with the figures, and keeps nothing;
/// a head that knows the kinds, once kept with the catalogue, brings shoppers' photos' kind
/// first (photos of its products it does not list, on floors and beds, that match no product
/// closely).
#[test]
fn kinds_are_kept_only_when_learnt_well_and_then_bring_a_shoppers_photos_kind_first() {
    use lookalike::learn::kinds::{kind_of, Backgrounds, KindExamples};
    use lookalike::store::HeadRole;

    let dir = tempfile::tempdir().unwrap();
    let db = indexed(&dir);
    let backgrounds = Backgrounds::bundled().unwrap();
    // The Luma fixture's photos, each of a product's kind, on a bundled background.
    let fixture = luma_fixture();
    let mut kind_of_sku = std::collections::HashMap::new();
    for row in csv::Reader::from_path(fixture.join("magento.csv")).unwrap().records() {
        let row = row.unwrap();
        let category = row[3].rsplit(',').next().unwrap().to_string();
        // Gear's photos are named without the SKU's `24-`.
        kind_of_sku.insert(row[0].trim_start_matches("24-").to_lowercase(), kind_of(&category));
    }
    let mut rng = fastrand::Rng::with_seed(7);
    let mut photos = Vec::new();
    for entry in walkdir::WalkDir::new(&fixture).sort_by_file_name() {
        let path = entry.unwrap().into_path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| n.ends_with(".jpg"))
        else {
            continue;
        };
        let sku = name.split(['-', '_']).next().unwrap();
        let pixels = backgrounds.view(&image::open(&path).unwrap().to_rgb8(), &mut rng);
        let photo = Photo {
            width: pixels.width(),
            height: pixels.height(),
            pixels,
        };
        photos.push((photo, kind_of_sku[sku].clone()));
    }
    assert_eq!(photos.len(), 28);
    let shop = Shop::open(&db, writable()).unwrap();
    let vectors: Vec<Vec<f32>> = photos
        .iter()
        .map(|(photo, _)| shop.locate(photo, &Framing::Whole, false).unwrap().embedding.features)
        .collect();
    let embedding = |features: &[f32]| lookalike::model::ImageEmbedding {
        features: features.to_vec(),
        logits: Vec::new(),
        classifier_input: Vec::new(),
    };
    let first_kind =
        |answer: lookalike::shop::Answer| kind_of(answer.hits[0].product.info.category.as_deref().unwrap());
    let right_first = |shop: &Shop| {
        vectors
            .iter()
            .zip(&photos)
            .filter(|(vector, (_, kind))| {
                first_kind(shop.search(&SearchRequest::photo(&embedding(vector), 5)).unwrap()) == *kind
            })
            .count()
    };
    let before = right_first(&shop);
    shop.finish();

    let lone = lone_kinds(&dir);
    let refused = Shop::open(&lone, writable())
        .unwrap()
        .learn_kinds(&backgrounds, 42, &mut |_, _| ())
        .unwrap_err();
    assert!(
        matches!(&refused, Error::InvalidInput(why) if why.contains("not learnt well enough to keep")),
        "{refused}"
    );
    let lone = lookalike::store::open_store(&lone).unwrap();
    assert!(lone.head(HeadRole::Kinds).unwrap().is_none(), "nothing kept");
    let store = lookalike::store::open_store(&db).unwrap();

    // A reader already answering, as a running server would be.
    let running = Shop::open(&db, OpenOptions::default()).unwrap();
    assert_eq!(right_first(&running), before);

    // A head that knows these photos' kinds, and every kind of the catalogue as `train kinds`
    // learns it, kept with the catalogue by another process: the running reader uses it from its
    // next query, and a reader opened later too.
    let mut examples = KindExamples::default();
    for (product, (vector, (_, kind))) in vectors.iter().zip(&photos).enumerate() {
        examples.add_view(product, kind, vector);
    }
    let mut stored = photos.len();
    store
        .each_product(&mut |product| {
            if let Some(category) = &product.info.category {
                examples.add_stored(stored, &kind_of(category), &product.vector);
                stored += 1;
            }
            Ok(())
        })
        .unwrap();
    let knowing = examples
        .fit(&store.manifest().unwrap().unwrap().weights_sha256, 1)
        .unwrap();
    store.set_head(HeadRole::Kinds, &knowing.trained.head).unwrap();
    drop(store);
    let learnt = right_first(&running);
    assert!(learnt > before + 3, "kind first: {learnt} of 28 against {before}");
    let shop = Shop::open(&db, OpenOptions::default()).unwrap();
    assert_eq!(right_first(&shop), learnt);

    // A part search found in a busy photo has its kind read from the whole photo too: a part
    // that shows no product (a bare background) brings each photo's kind first far more often
    // with its whole photo beside it than alone.
    let bare = Shop::read_photo(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/backgrounds/000.jpg")).unwrap();
    let part = shop.locate(&bare, &Framing::Whole, false).unwrap().embedding;
    let alone = shop.search(&SearchRequest::photo(&part, 5)).unwrap();
    assert!(alone.hits[0].score < 0.70, "the bare part matches no product closely");
    let alone_kind = first_kind(alone);
    let alone_right = photos.iter().filter(|(_, kind)| *kind == alone_kind).count();
    let beside_right = vectors
        .iter()
        .zip(&photos)
        .filter(|(vector, (_, kind))| {
            let whole = embedding(vector);
            let request = SearchRequest {
                whole_photo: Some(&whole),
                ..SearchRequest::photo(&part, 5)
            };
            first_kind(shop.search(&request).unwrap()) == *kind
        })
        .count();
    assert!(
        beside_right > alone_right + 10,
        "kind first: {beside_right} of 28 with the whole photo, {alone_right} without"
    );
}

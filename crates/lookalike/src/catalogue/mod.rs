//! Reading a shop's catalogue: an ImageFolder tree, a CSV or a JSONL file.

pub mod export;
pub mod indexer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::types::{check_id, CatalogueEntry, ProductInfo};

/// Image file extensions picked up when walking a folder.
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

/// Column (or JSON key) names accepted for each field, lower-case. Magento 2's product export
/// (`sku`, `name`, `price`, `categories`, `description`, `base_image`, `additional_images`,
/// `url_key`) and Shopify's (`Handle`, `Title`, `Body (HTML)`, `Type`, `Variant Price`,
/// `Image Src`) are read as they come.
const IMAGE_KEYS: &[&str] = &[
    "image",
    "image_path",
    "path",
    "file",
    "filename",
    "image_file",
    "base_image",
    "image src",
];
const MORE_IMAGE_KEYS: &[(&str, char)] = &[("images", '|'), ("additional_images", ',')];
const ID_KEYS: &[&str] = &["id", "sku", "product_id", "handle"];
const TITLE_KEYS: &[&str] = &["title", "name"];
const PRICE_KEYS: &[&str] = &["price", "variant price"];
const CATEGORY_KEYS: &[&str] = &["category", "categories", "product category", "type"];
const DESCRIPTION_KEYS: &[&str] = &["description", "body (html)", "body"];
const URL_KEYS: &[&str] = &["url", "link", "product_url"];
const GROUP_KEYS: &[&str] = &["group", "parent", "parent_sku", "group_id"];
/// Columns whose image paths are relative to the catalogue even with a leading `/`, as Magento
/// writes them (relative to its media folder).
const MEDIA_RELATIVE_KEYS: &[&str] = &["base_image", "additional_images"];

/// How a folder catalogue is laid out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Layout {
    /// Every image is a product; its folder is its category.
    #[default]
    Images,
    /// Every folder holding images is one product (its images in name order, the first the
    /// main one); the folder above it is its category.
    ProductFolders,
}

impl std::str::FromStr for Layout {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "images" => Ok(Self::Images),
            "product-folders" => Ok(Self::ProductFolders),
            _ => bail!("unknown layout {s:?} (images or product-folders)"),
        }
    }
}

/// Largest catalogue file read (CSV or JSONL); a million products take a few hundred MB.
pub const MAX_CATALOGUE_BYTES: u64 = 2 << 30;

/// A catalogue as read: its products, and what could not be read at all (each with why).
#[derive(Debug, Default)]
pub struct Catalogue {
    pub entries: Vec<CatalogueEntry>,
    /// Paths the folder walk had to leave out: symlink loops, unreadable folders.
    pub unreadable: Vec<(PathBuf, String)>,
}

/// A folder (laid out as `layout` says), `.csv`, or `.jsonl`/`.ndjson`. Image paths come out
/// absolute (relative ones resolve against the catalogue file's folder), so a catalogue indexed
/// from one working directory is served from any other.
pub fn read_catalogue(path: &Path, layout: Layout) -> Result<Catalogue> {
    let path = &std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))?;
    let catalogue = if path.is_dir() {
        read_image_folder(path, layout)?
    } else {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let base = path.parent().unwrap_or(Path::new("/"));
        let bytes = crate::files::read_regular_file(path, MAX_CATALOGUE_BYTES)
            .with_context(|| format!("cannot read catalogue {}", path.display()))?;
        let text = String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", path.display()))?;
        let entries = match ext.as_str() {
            "csv" => parse_csv(&text, base),
            "jsonl" | "ndjson" => parse_jsonl(&text, base),
            _ => bail!("{}: a catalogue is a folder, a .csv or a .jsonl file", path.display()),
        }
        .with_context(|| format!("in {}", path.display()))?;
        Catalogue {
            entries,
            unreadable: Vec::new(),
        }
    };
    if catalogue.entries.is_empty() {
        bail!("{}: the catalogue has no images", path.display());
    }
    Ok(catalogue)
}

/// Every image under `root`, in name order (as [`read_image_folder`] finds them).
pub fn image_files(root: &Path) -> Result<Vec<PathBuf>> {
    Ok(read_image_folder(root, Layout::Images)?
        .entries
        .into_iter()
        .map(|entry| entry.image_path)
        .collect())
}

/// The images of a labelled folder (`root/**/<class>/<image>`), each with its class's index in
/// `classes`; a class not there yet is added when `grow`, else its images are left out.
pub fn labelled_images(root: &Path, classes: &mut Vec<String>, grow: bool) -> Result<Vec<(PathBuf, usize)>> {
    let mut images = Vec::new();
    for entry in read_image_folder(root, Layout::Images)?.entries {
        let Some(class) = entry.info.category else { continue };
        let label = match classes.iter().position(|c| *c == class) {
            Some(label) => label,
            None if grow => {
                classes.push(class);
                classes.len() - 1
            }
            None => continue,
        };
        images.push((entry.image_path, label));
    }
    Ok(images)
}

pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// A folder catalogue: `root/**/<category>/<image>` (one product per image, id the path without
/// extension, e.g. `shoes/red-sneaker`; split layouts such as `train/shoes/` work too), or with
/// [`Layout::ProductFolders`] `root/**/<category>/<product>/<images>`. Two files that would
/// share an id (`red.jpg` and `red.png`) are an error naming both. Links are followed; a loop or
/// an unreadable folder is left out and reported, not fatal.
pub fn read_image_folder(root: &Path, layout: Layout) -> Result<Catalogue> {
    let mut catalogue = Catalogue::default();
    let mut origins = Vec::new();
    for item in walkdir::WalkDir::new(root).sort_by_file_name().follow_links(true) {
        let item = match item {
            Ok(item) => item,
            Err(err) => {
                let path = err.path().unwrap_or(root).to_path_buf();
                let why = match err.loop_ancestor() {
                    Some(ancestor) => format!("a link loop back to {}", ancestor.display()),
                    None => err.io_error().map_or_else(|| err.to_string(), |e| e.to_string()),
                };
                catalogue.unreadable.push((path, why));
                continue;
            }
        };
        if !is_image_file(item.path()) || item.file_type().is_dir() {
            continue;
        }
        if !item.file_type().is_file() {
            catalogue
                .unreadable
                .push((item.path().to_path_buf(), "not a regular file".into()));
            continue;
        }
        let rel = item.path().strip_prefix(root).expect("walkdir stays under its root");
        let folder_name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
        let (id, category) = match layout {
            Layout::Images => (rel.with_extension(""), rel.parent().and_then(folder_name)),
            Layout::ProductFolders => {
                let Some(product) = rel.parent().filter(|p| !p.as_os_str().is_empty()) else {
                    catalogue
                        .unreadable
                        .push((item.path().to_path_buf(), "not inside a product folder".into()));
                    continue;
                };
                (product.to_path_buf(), product.parent().and_then(folder_name))
            }
        };
        let id = id.to_string_lossy().replace('\\', "/");
        match catalogue.entries.last_mut() {
            // Walked in name order, so a product folder's images come together.
            Some(last) if layout == Layout::ProductFolders && last.id == id => {
                last.more_images.push(item.path().to_path_buf());
            }
            _ => {
                origins.push(rel.display().to_string());
                catalogue.entries.push(CatalogueEntry {
                    id,
                    info: ProductInfo {
                        category,
                        ..Default::default()
                    },
                    image_path: item.path().to_path_buf(),
                    more_images: Vec::new(),
                });
            }
        }
    }
    reject_duplicate_ids(&origins, &catalogue.entries)?;
    Ok(catalogue)
}

fn pick<'a>(row: &'a HashMap<String, String>, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .filter_map(|k| row.get(*k))
        .map(|v| v.trim())
        .find(|v| !v.is_empty())
}

/// Text of an HTML description (Magento's and Shopify's exports hold HTML): tags dropped,
/// entities decoded, runs of white space (no-break spaces too) made one.
fn html_text(html: &str) -> String {
    let mut text = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' if in_tag => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    // Entities after tags, so an escaped `&lt;b&gt;` stays text.
    let decoded = html_escape::decode_html_entities(&text);
    decoded.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Magento lists every category path of a product (`Default Category/Men/Tops,Default
/// Category/Men/Tops/Hoodies`): the most specific one, without the root category.
fn category_of(value: &str) -> String {
    let path = value
        .split(',')
        .map(str::trim)
        .max_by_key(|p| p.matches('/').count())
        .unwrap_or(value);
    path.strip_prefix("Default Category/").unwrap_or(path).to_string()
}

/// A path from the catalogue: relative to `base`; from Magento's media columns also with a
/// leading `/`. Web addresses are refused: images are read from disk, not downloaded.
fn image_path(base: &Path, key: &str, value: &str, line: usize) -> Result<PathBuf> {
    let value = value.trim();
    if value.starts_with("http://") || value.starts_with("https://") {
        bail!("line {line}: image {value:?} is a web address; download the images and give their paths");
    }
    let relative = if MEDIA_RELATIVE_KEYS.contains(&key) {
        value.trim_start_matches('/')
    } else {
        value
    };
    Ok(base.join(relative))
}

/// One record (CSV row or JSON object, keys lower-cased; JSON arrays of images joined with `|`)
/// into an entry; `line` is for messages.
fn entry_from_record(row: &HashMap<String, String>, base: &Path, line: usize) -> Result<CatalogueEntry> {
    let Some((image_key, image)) = IMAGE_KEYS
        .iter()
        .filter_map(|k| row.get(*k).map(|v| (*k, v.trim())))
        .find(|(_, v)| !v.is_empty())
        .or_else(|| {
            // Only an `images` list: its first is the main image.
            pick(row, &["images"])
                .and_then(|v| v.split('|').next())
                .map(|v| ("images", v))
        })
    else {
        bail!(
            "line {line}: no image path (expected one of the fields {}, or images)",
            IMAGE_KEYS.join(", ")
        );
    };
    let price = match pick(row, PRICE_KEYS) {
        None => None,
        Some(p) => match p.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Some(v),
            _ => bail!("line {line}: price {p:?} is not a non-negative number"),
        },
    };
    let main = image_path(base, image_key, image, line)?;
    let mut more_images = Vec::new();
    for (key, separator) in MORE_IMAGE_KEYS {
        for value in pick(row, &[key]).into_iter().flat_map(|v| v.split(*separator)) {
            let path = image_path(base, key, value, line)?;
            if !value.trim().is_empty() && path != main && !more_images.contains(&path) {
                more_images.push(path);
            }
        }
    }
    let entry = CatalogueEntry {
        id: pick(row, ID_KEYS).unwrap_or(image).to_string(),
        info: ProductInfo {
            title: pick(row, TITLE_KEYS).map(str::to_string),
            price,
            category: pick(row, CATEGORY_KEYS).map(category_of),
            description: pick(row, DESCRIPTION_KEYS).map(html_text).filter(|d| !d.is_empty()),
            url: pick(row, URL_KEYS)
                .map(str::to_string)
                .or_else(|| pick(row, &["url_key"]).map(|key| format!("/{key}.html"))),
            group: pick(row, GROUP_KEYS).map(str::to_string),
        },
        image_path: main,
        more_images,
    };
    check_id(&entry.id)
        .and_then(|()| entry.info.check())
        .with_context(|| format!("line {line}"))?;
    Ok(entry)
}

/// Rows that name the same id are one product, as Shopify exports it (one row per image): a later
/// row adds its images, and may repeat the product's fields but not contradict them.
fn merge_rows(rows: Vec<(usize, CatalogueEntry)>) -> Result<Vec<CatalogueEntry>> {
    let mut entries: Vec<CatalogueEntry> = Vec::new();
    let mut first_line: HashMap<String, (usize, usize)> = HashMap::new();
    for (line, row) in rows {
        let Some(&(at, first)) = first_line.get(&row.id) else {
            first_line.insert(row.id.clone(), (entries.len(), line));
            entries.push(row);
            continue;
        };
        let product = &mut entries[at];
        let (mine, theirs) = (&row.info, &product.info);
        let clash = [
            ("title", mine.title.as_ref(), theirs.title.as_ref()),
            ("category", mine.category.as_ref(), theirs.category.as_ref()),
            ("description", mine.description.as_ref(), theirs.description.as_ref()),
            ("url", mine.url.as_ref(), theirs.url.as_ref()),
            ("group", mine.group.as_ref(), theirs.group.as_ref()),
        ]
        .into_iter()
        .find(|(_, mine, theirs)| mine.is_some() && mine != theirs)
        .map(|(field, ..)| field)
        .or((mine.price.is_some() && mine.price != theirs.price).then_some("price"));
        if let Some(field) = clash {
            bail!(
                "product id {:?} is used twice: line {first} ({}) and line {line} ({}) give it different {field}s",
                row.id,
                product.image_path.display(),
                row.image_path.display()
            );
        }
        for path in row.images() {
            if !product.images().any(|p| p == path) {
                product.more_images.push(path.clone());
            }
        }
    }
    Ok(entries)
}

/// Every id once; a repeat names both places it comes from (`origins[i]` is where entry i is).
fn reject_duplicate_ids(origins: &[String], entries: &[CatalogueEntry]) -> Result<()> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if let Some(first) = seen.insert(&e.id, i) {
            bail!(
                "product id {:?} is used twice: {} ({}) and {} ({})",
                e.id,
                origins[first],
                entries[first].image_path.display(),
                origins[i],
                e.image_path.display()
            );
        }
    }
    Ok(())
}

/// CSV with a header row; relative image paths resolve against `base`.
pub fn parse_csv(text: &str, base: &Path) -> Result<Vec<CatalogueEntry>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::Headers)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = reader.headers()?.iter().map(|h| h.to_ascii_lowercase()).collect();
    if !headers
        .iter()
        .any(|h| IMAGE_KEYS.contains(&h.as_str()) || h == "images")
    {
        bail!(
            "the header has no image column (expected one of {}, or images; found {})",
            IMAGE_KEYS.join(", "),
            headers.join(", ")
        );
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.context("malformed CSV")?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let row: HashMap<String, String> = headers.iter().cloned().zip(record.iter().map(str::to_string)).collect();
        rows.push((line, entry_from_record(&row, base, line)?));
    }
    merge_rows(rows)
}

/// One JSON object per line; `images` may be an array; blank lines are ignored.
pub fn parse_jsonl(text: &str, base: &Path) -> Result<Vec<CatalogueEntry>> {
    let mut rows = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(raw).with_context(|| format!("line {line}: not valid JSON"))?;
        let Some(object) = value.as_object() else {
            bail!("line {line}: expected a JSON object");
        };
        let mut row = HashMap::new();
        for (k, v) in object {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Null => continue,
                serde_json::Value::Array(items) if k.eq_ignore_ascii_case("images") => {
                    let paths: Option<Vec<&str>> = items.iter().map(|i| i.as_str()).collect();
                    let Some(paths) = paths else {
                        bail!("line {line}: images must be a list of paths");
                    };
                    if paths.iter().any(|p| p.contains('|')) {
                        bail!("line {line}: an image path holds '|'");
                    }
                    paths.join("|")
                }
                other => other.to_string(),
            };
            row.insert(k.to_ascii_lowercase(), text);
        }
        rows.push((line, entry_from_record(&row, base, line)?));
    }
    merge_rows(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(result: Result<Vec<CatalogueEntry>>) -> String {
        format!("{:#}", result.unwrap_err())
    }

    #[test]
    fn csv_with_all_fields_resolves_relative_paths() {
        let text =
            "SKU,Name,Price,Category,Description,Image\nMH01,Chaz Hoodie,52.00,Hoodies,\"Warm, soft\",img/mh01.jpg\n";
        let e = &parse_csv(text, Path::new("/shop")).unwrap()[0];
        assert_eq!(e.id, "MH01");
        assert_eq!(e.info.title.as_deref(), Some("Chaz Hoodie"));
        assert_eq!(e.info.price, Some(52.0));
        assert_eq!(e.info.description.as_deref(), Some("Warm, soft"));
        assert_eq!(e.image_path, Path::new("/shop/img/mh01.jpg"));
    }

    #[test]
    fn csv_without_id_uses_the_image_path_and_absolute_paths_stay() {
        let e = &parse_csv("image\n/abs/a.png\n", Path::new("/shop")).unwrap()[0];
        assert_eq!(e.id, "/abs/a.png");
        assert_eq!(e.image_path, Path::new("/abs/a.png"));
    }

    #[test]
    fn csv_errors_name_the_problem_and_line() {
        assert!(err(parse_csv("id,title\n1,x\n", Path::new("."))).contains("no image column"));
        assert!(err(parse_csv("id,image,price\n1,a.jpg,cheap\n", Path::new("."))).contains("line 2: price \"cheap\""));
        assert!(err(parse_csv("id,image\n1,a.jpg\n2,\n", Path::new("."))).contains("line 3: no image path"));
        assert!(
            err(parse_csv("id,image,title\n1,a.jpg,x\n1,b.jpg,y\n", Path::new("."))).contains(
                "product id \"1\" is used twice: line 2 (./a.jpg) and line 3 (./b.jpg) give it different titles"
            )
        );
        assert!(err(parse_csv("id,image\n1,a.jpg,extra\n", Path::new("."))).contains("malformed CSV"));
    }

    #[test]
    fn jsonl_accepts_numbers_and_skips_blank_lines() {
        let text = "{\"id\": 7, \"image\": \"a.jpg\", \"price\": 9.5, \"category\": null}\n\n{\"image\": \"b.jpg\"}\n";
        let entries = parse_jsonl(text, Path::new("/c")).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, "7");
        assert_eq!(entries[0].info.price, Some(9.5));
        assert_eq!(entries[0].info.category, None);
        assert_eq!(entries[1].id, "b.jpg");
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        assert!(err(parse_jsonl("{\"image\": \"a.jpg\"}\n{oops\n", Path::new("."))).contains("line 2: not valid JSON"));
        assert!(err(parse_jsonl("[1,2]\n", Path::new("."))).contains("line 1: expected a JSON object"));
        assert!(err(parse_jsonl("{\"image\": \"a.jpg\", \"price\": -3}\n", Path::new("."))).contains("line 1: price"));
    }

    #[test]
    fn image_folder_categories_come_from_sub_folders() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("shoes")).unwrap();
        std::fs::create_dir_all(dir.path().join("test/bags")).unwrap();
        std::fs::write(dir.path().join("shoes/red.JPG"), b"x").unwrap();
        std::fs::write(dir.path().join("test/bags/tote.webp"), b"x").unwrap();
        std::fs::write(dir.path().join("loose.png"), b"x").unwrap();
        std::fs::write(dir.path().join("shoes/notes.txt"), b"x").unwrap();
        let entries = read_image_folder(dir.path(), Layout::Images).unwrap().entries;
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[2].id, "test/bags/tote");
        assert_eq!(entries[2].info.category.as_deref(), Some("bags"));
        assert_eq!(entries[0].id, "loose");
        assert_eq!(entries[0].info.category, None);
        assert_eq!(entries[1].id, "shoes/red");
        assert_eq!(entries[1].info.category.as_deref(), Some("shoes"));
    }

    #[test]
    fn files_sharing_an_id_are_an_error_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("shoes")).unwrap();
        std::fs::write(dir.path().join("shoes/red.jpg"), b"x").unwrap();
        std::fs::write(dir.path().join("shoes/red.png"), b"x").unwrap();
        let err = format!("{:#}", read_image_folder(dir.path(), Layout::Images).unwrap_err());
        assert!(err.contains("\"shoes/red\" is used twice"), "{err}");
        assert!(err.contains("red.jpg") && err.contains("red.png"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_link_loop_is_left_out_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bags")).unwrap();
        std::fs::write(dir.path().join("bags/tote.jpg"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("bags/again")).unwrap();
        let catalogue = read_image_folder(dir.path(), Layout::Images).unwrap();
        assert_eq!(catalogue.entries.len(), 1);
        assert_eq!(catalogue.unreadable.len(), 1, "{:?}", catalogue.unreadable);
        assert!(catalogue.unreadable[0].1.contains("loop"), "{:?}", catalogue.unreadable);
    }

    #[test]
    fn relative_catalogues_give_absolute_image_paths_and_bad_text_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("c.csv"),
            "id,image,title\nA,img/a.jpg,x\nB,b.jpg,\"bad\0title\"\n",
        )
        .unwrap();
        let err = format!(
            "{:#}",
            read_catalogue(&dir.path().join("c.csv"), Layout::Images).unwrap_err()
        );
        assert!(err.contains("line 3") && err.contains("NUL"), "{err}");
        std::fs::write(dir.path().join("c.csv"), "id,image\nA,img/a.jpg\n").unwrap();
        let cwd = std::env::current_dir().unwrap();
        let relative = pathdiff(dir.path(), &cwd).join("c.csv");
        let catalogue = read_catalogue(&relative, Layout::Images).unwrap();
        assert!(
            catalogue.entries[0].image_path.is_absolute(),
            "{:?}",
            catalogue.entries[0].image_path
        );
        assert!(catalogue.entries[0].image_path.ends_with("img/a.jpg"));
    }

    /// `path` relative to `from` (both absolute), through `..` as needed.
    fn pathdiff(path: &Path, from: &Path) -> PathBuf {
        let common = path
            .components()
            .zip(from.components())
            .take_while(|(a, b)| a == b)
            .count();
        let ups = from.components().count() - common;
        let mut out: PathBuf = std::iter::repeat_n("..", ups).collect();
        out.extend(path.components().skip(common));
        out
    }

    #[cfg(unix)]
    #[test]
    fn a_catalogue_that_is_not_a_regular_file_is_refused() {
        let err = format!(
            "{:#}",
            read_catalogue(Path::new("/dev/zero"), Layout::Images).unwrap_err()
        );
        assert!(
            err.contains("not a regular file") || err.contains("a catalogue is"),
            "{err}"
        );
    }

    #[test]
    fn shopify_rows_per_image_make_one_product() {
        let text = "Handle,Title,Body (HTML),Type,Variant Price,Image Src,Image Position\n\
            chaz-hoodie,Chaz Hoodie,<p>It&#x27;s warm &amp;&nbsp;<b>soft</b> &lt;b&gt;</p>,Hoodies,52.00,img/front.jpg,1\n\
            chaz-hoodie,,,,,img/back.jpg,2\n\
            chaz-hoodie,,,,,img/side.jpg,3\n\
            bag,Duffle,,Bags,34,img/bag.jpg,1\n";
        let entries = parse_csv(text, Path::new("/shop")).unwrap();
        assert_eq!(entries.len(), 2);
        let hoodie = &entries[0];
        assert_eq!(hoodie.id, "chaz-hoodie");
        assert_eq!(hoodie.info.description.as_deref(), Some("It's warm & soft <b>"));
        assert_eq!(hoodie.info.category.as_deref(), Some("Hoodies"));
        assert_eq!(hoodie.info.price, Some(52.0));
        assert_eq!(hoodie.image_path, Path::new("/shop/img/front.jpg"));
        assert_eq!(
            hoodie.more_images,
            [Path::new("/shop/img/back.jpg"), Path::new("/shop/img/side.jpg")]
        );
        let remote = "Handle,Title,Image Src\nx,X,https://cdn.shopify.com/x.jpg\n";
        assert!(err(parse_csv(remote, Path::new("."))).contains("web address"));
    }

    #[test]
    fn magento_exports_read_as_they_come() {
        let text = "sku,name,price,categories,description,base_image,additional_images,url_key\n\
            MH01,Chaz Hoodie,52,\"Default Category/Men/Tops,Default Category/Men/Tops/Hoodies & Sweatshirts\",\
            <p>Warm.</p>,/m/h/mh01-gray_main.jpg,\"/m/h/mh01-gray_alt1.jpg,/m/h/mh01-gray_back.jpg\",chaz-hoodie\n";
        let e = &parse_csv(text, Path::new("/shop")).unwrap()[0];
        assert_eq!(e.info.category.as_deref(), Some("Men/Tops/Hoodies & Sweatshirts"));
        assert_eq!(e.info.url.as_deref(), Some("/chaz-hoodie.html"));
        assert_eq!(e.image_path, Path::new("/shop/m/h/mh01-gray_main.jpg"));
        assert_eq!(e.more_images.len(), 2);
        assert_eq!(e.more_images[1], Path::new("/shop/m/h/mh01-gray_back.jpg"));
    }

    #[test]
    fn image_lists_and_groups_in_csv_and_jsonl() {
        let csv = "id,images,group\nTEE-RED,red-front.jpg|red-back.jpg,TEE\n";
        let e = &parse_csv(csv, Path::new("/c")).unwrap()[0];
        assert_eq!(e.image_path, Path::new("/c/red-front.jpg"));
        assert_eq!(e.more_images, [Path::new("/c/red-back.jpg")]);
        assert_eq!(e.info.group.as_deref(), Some("TEE"));
        let jsonl = "{\"id\": \"TEE-BLUE\", \"images\": [\"b1.jpg\", \"b2.jpg\"], \"group\": \"TEE\"}\n";
        let e = &parse_jsonl(jsonl, Path::new("/c")).unwrap()[0];
        assert_eq!(e.images().count(), 2);
        assert!(err(parse_jsonl(
            "{\"image\": \"a.jpg\", \"images\": [1, 2]}\n",
            Path::new(".")
        ))
        .contains("list of paths"));
        // A second row may add images; it may not describe the product differently.
        let merged = parse_csv(
            "id,image,title\n1,a.jpg,Shirt\n1,b.jpg,\n1,c.jpg,Shirt\n",
            Path::new("/c"),
        )
        .unwrap();
        assert_eq!(merged[0].images().count(), 3);
    }

    #[test]
    fn product_folders_are_products_of_several_images() {
        let dir = tempfile::tempdir().unwrap();
        for file in [
            "tops/mh01/1-front.jpg",
            "tops/mh01/2-back.jpg",
            "tops/mh02/main.png",
            "bags/wb01/a.jpg",
        ] {
            let path = dir.path().join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
        std::fs::write(dir.path().join("loose.jpg"), b"x").unwrap();
        let catalogue = read_image_folder(dir.path(), Layout::ProductFolders).unwrap();
        let ids: Vec<&str> = catalogue.entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["bags/wb01", "tops/mh01", "tops/mh02"]);
        let mh01 = &catalogue.entries[1];
        assert_eq!(mh01.info.category.as_deref(), Some("tops"));
        assert!(mh01.image_path.ends_with("1-front.jpg"));
        assert_eq!(mh01.more_images.len(), 1);
        assert_eq!(catalogue.unreadable.len(), 1, "an image outside any product folder");
    }
}

//! Reading a shop's catalogue: an ImageFolder tree, a CSV or a JSONL file.

pub mod export;
pub mod indexer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::types::{check_id, CatalogueEntry, ProductInfo};

/// Image file extensions picked up when walking a folder.
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

/// Column (or JSON key) names accepted for each field, lower-case.
const IMAGE_KEYS: &[&str] = &["image", "image_path", "path", "file", "filename", "image_file"];
const ID_KEYS: &[&str] = &["id", "sku", "product_id"];
const TITLE_KEYS: &[&str] = &["title", "name"];
const URL_KEYS: &[&str] = &["url", "link", "product_url"];
const GROUP_KEYS: &[&str] = &["group", "parent", "parent_sku", "group_id"];

/// Largest catalogue file read (CSV or JSONL); a million products take a few hundred MB.
pub const MAX_CATALOGUE_BYTES: u64 = 2 << 30;

/// A catalogue as read: its products, and what could not be read at all (each with why).
#[derive(Debug, Default)]
pub struct Catalogue {
    pub entries: Vec<CatalogueEntry>,
    /// Paths the folder walk had to leave out: symlink loops, unreadable folders.
    pub unreadable: Vec<(PathBuf, String)>,
}

/// A folder (sub-folders are categories), `.csv`, or `.jsonl`/`.ndjson`. Image paths come out
/// absolute (relative ones resolve against the catalogue file's folder), so a catalogue indexed
/// from one working directory is served from any other.
pub fn read_catalogue(path: &Path) -> Result<Catalogue> {
    let path = &std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))?;
    let catalogue = if path.is_dir() {
        read_image_folder(path)?
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

pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// ImageFolder: `root/**/<category>/<image>`; the category is the image's own folder, so split
/// layouts such as `train/shoes/` work too. Images directly under `root` have no category.
/// The id is the path relative to `root` without its extension, e.g. `shoes/red-sneaker`; two
/// files that would share an id (`red.jpg` and `red.png`) are an error naming both. Links are
/// followed; a loop or an unreadable folder is left out and reported, not fatal.
pub fn read_image_folder(root: &Path) -> Result<Catalogue> {
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
        let category = rel
            .parent()
            .and_then(|dir| dir.file_name())
            .map(|name| name.to_string_lossy().into_owned());
        let id = rel.with_extension("").to_string_lossy().replace('\\', "/");
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
    reject_duplicate_ids(&origins, &catalogue.entries)?;
    Ok(catalogue)
}

fn pick<'a>(row: &'a HashMap<String, String>, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .filter_map(|k| row.get(*k))
        .map(|v| v.trim())
        .find(|v| !v.is_empty())
}

/// One record (CSV row or JSON object, keys lower-cased) into an entry; `line` is for messages.
fn entry_from_record(row: &HashMap<String, String>, base: &Path, line: usize) -> Result<CatalogueEntry> {
    let Some(image) = pick(row, IMAGE_KEYS) else {
        bail!(
            "line {line}: no image path (expected one of the fields {})",
            IMAGE_KEYS.join(", ")
        );
    };
    let price = match pick(row, &["price"]) {
        None => None,
        Some(p) => match p.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Some(v),
            _ => bail!("line {line}: price {p:?} is not a non-negative number"),
        },
    };
    let image_path = base.join(image);
    let entry = CatalogueEntry {
        id: pick(row, ID_KEYS).unwrap_or(image).to_string(),
        info: ProductInfo {
            title: pick(row, TITLE_KEYS).map(str::to_string),
            price,
            category: pick(row, &["category"]).map(str::to_string),
            description: pick(row, &["description"]).map(str::to_string),
            url: pick(row, URL_KEYS).map(str::to_string),
            group: pick(row, GROUP_KEYS).map(str::to_string),
        },
        image_path,
        more_images: Vec::new(),
    };
    check_id(&entry.id)
        .and_then(|()| entry.info.check())
        .with_context(|| format!("line {line}"))?;
    Ok(entry)
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
    if !headers.iter().any(|h| IMAGE_KEYS.contains(&h.as_str())) {
        bail!(
            "the header has no image column (expected one of {}; found {})",
            IMAGE_KEYS.join(", "),
            headers.join(", ")
        );
    }
    let (mut origins, mut entries) = (Vec::new(), Vec::new());
    for record in reader.records() {
        let record = record.context("malformed CSV")?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let row: HashMap<String, String> = headers.iter().cloned().zip(record.iter().map(str::to_string)).collect();
        entries.push(entry_from_record(&row, base, line)?);
        origins.push(format!("line {line}"));
    }
    reject_duplicate_ids(&origins, &entries)?;
    Ok(entries)
}

/// One JSON object per line; blank lines are ignored.
pub fn parse_jsonl(text: &str, base: &Path) -> Result<Vec<CatalogueEntry>> {
    let (mut origins, mut entries) = (Vec::new(), Vec::new());
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
        let row = object
            .iter()
            .filter_map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::Null => return None,
                    other => other.to_string(),
                };
                Some((k.to_ascii_lowercase(), text))
            })
            .collect();
        entries.push(entry_from_record(&row, base, line)?);
        origins.push(format!("line {line}"));
    }
    reject_duplicate_ids(&origins, &entries)?;
    Ok(entries)
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
        assert!(err(parse_csv("id,image\n1,a.jpg\n1,b.jpg\n", Path::new(".")))
            .contains("product id \"1\" is used twice: line 2 (./a.jpg) and line 3 (./b.jpg)"));
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
        let entries = read_image_folder(dir.path()).unwrap().entries;
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
        let err = format!("{:#}", read_image_folder(dir.path()).unwrap_err());
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
        let catalogue = read_image_folder(dir.path()).unwrap();
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
        let err = format!("{:#}", read_catalogue(&dir.path().join("c.csv")).unwrap_err());
        assert!(err.contains("line 3") && err.contains("NUL"), "{err}");
        std::fs::write(dir.path().join("c.csv"), "id,image\nA,img/a.jpg\n").unwrap();
        let cwd = std::env::current_dir().unwrap();
        let relative = pathdiff(dir.path(), &cwd).join("c.csv");
        let catalogue = read_catalogue(&relative).unwrap();
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
        let err = format!("{:#}", read_catalogue(Path::new("/dev/zero")).unwrap_err());
        assert!(
            err.contains("not a regular file") || err.contains("a catalogue is"),
            "{err}"
        );
    }
}

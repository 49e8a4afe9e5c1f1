//! Exporting a catalogue's vectors the way notebook users keep them (a NumPy `.npy` matrix, rows
//! in id order, and a JSON list describing each row), and related-product lists the way shops
//! import them (CSV `sku,related_skus` as Magento's import takes it, JSON lines with scores).

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Result};
use npyz::WriterBuilder;
use serde::Serialize;

use crate::types::{RelatedIds, StoredProduct};

#[derive(Serialize)]
struct RowInfo<'a> {
    id: &'a str,
    image_path: &'a str,
    title: Option<&'a str>,
    category: Option<&'a str>,
    price: Option<f64>,
    url: Option<&'a str>,
}

/// `vectors` as one `rows × dimension` f32 array.
pub fn export_npy(vectors: &[&[f32]], path: &Path) -> Result<()> {
    let dimension = vectors.first().map_or(0, |v| v.len());
    if vectors.iter().any(|v| v.len() != dimension) {
        bail!("vectors of different dimensions in one catalogue");
    }
    crate::files::write_atomically(path, |out| {
        let mut writer = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&[vectors.len() as u64, dimension as u64])
            .writer(out)
            .begin_nd()?;
        for v in vectors {
            writer.extend(v.iter().copied())?;
        }
        writer.finish()?;
        Ok(())
    })
}

pub fn export_json(products: &[StoredProduct], path: &Path) -> Result<()> {
    let rows: Vec<RowInfo> = products
        .iter()
        .map(|p| RowInfo {
            id: &p.id,
            image_path: &p.image_path,
            title: p.info.title.as_deref(),
            category: p.info.category.as_deref(),
            price: p.info.price,
            url: p.info.url.as_deref(),
        })
        .collect();
    crate::files::write_atomically(path, |out| {
        serde_json::to_writer_pretty(&mut *out, &rows)?;
        out.write_all(b"\n")?;
        Ok(())
    })
}

/// `sku,related_skus` with the related SKUs comma-separated in one field, best first.
pub fn export_related_csv(related: &[(String, RelatedIds)], path: &Path) -> Result<()> {
    crate::files::write_atomically(path, |out| {
        let mut writer = csv::Writer::from_writer(out);
        writer.write_record(["sku", "related_skus"])?;
        for (id, neighbours) in related {
            let skus: Vec<&str> = neighbours.iter().map(|(n, _)| n.as_str()).collect();
            writer.write_record([id.as_str(), &skus.join(",")])?;
        }
        writer.flush()?;
        Ok(())
    })
}

/// One JSON object per product: `{"id", "related": [{"id", "score"}, ...]}`.
pub fn export_related_jsonl(related: &[(String, RelatedIds)], path: &Path) -> Result<()> {
    crate::files::write_atomically(path, |out| {
        for (id, neighbours) in related {
            let related: Vec<serde_json::Value> = neighbours
                .iter()
                .map(|(n, score)| serde_json::json!({ "id": n, "score": score }))
                .collect();
            serde_json::to_writer(&mut *out, &serde_json::json!({ "id": id, "related": related }))?;
            out.write_all(b"\n")?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ProductInfo;

    #[test]
    fn related_lists_are_written_as_shops_import_them() {
        let dir = tempfile::tempdir().unwrap();
        let related = vec![
            (
                "A".to_string(),
                vec![("B".to_string(), 0.9), ("C, with comma".to_string(), 0.5)],
            ),
            ("B".to_string(), vec![]),
        ];
        let csv_path = dir.path().join("related.csv");
        export_related_csv(&related, &csv_path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&csv_path).unwrap(),
            "sku,related_skus\nA,\"B,C, with comma\"\nB,\n"
        );
        let jsonl = dir.path().join("related.jsonl");
        export_related_jsonl(&related, &jsonl).unwrap();
        let first: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(&jsonl).unwrap().lines().next().unwrap()).unwrap();
        assert_eq!(first["related"][0]["id"], "B");
        assert!((first["related"][0]["score"].as_f64().unwrap() - 0.9).abs() < 1e-6);
    }

    #[test]
    fn npy_round_trips_with_shape() {
        let dir = tempfile::tempdir().unwrap();
        let products: Vec<StoredProduct> = (0..3)
            .map(|i| StoredProduct {
                id: format!("p{i}"),
                info: ProductInfo::default(),
                image_path: format!("{i}.jpg"),
                content_hash: String::new(),
                vector: vec![i as f32, 0.5, -1.0],
                more_images: Vec::new(),
            })
            .collect();
        let npy = dir.path().join("e.npy");
        export_npy(&products.iter().map(|p| p.vector.as_slice()).collect::<Vec<_>>(), &npy).unwrap();
        let bytes = std::fs::read(&npy).unwrap();
        let file = npyz::NpyFile::new(&bytes[..]).unwrap();
        assert_eq!(file.shape(), &[3, 3]);
        assert_eq!(file.into_vec::<f32>().unwrap()[6..], [2.0, 0.5, -1.0]);
        let json = dir.path().join("p.json");
        export_json(&products, &json).unwrap();
        let rows: serde_json::Value = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
        assert_eq!(rows[2]["image_path"], "2.jpg");
    }
}

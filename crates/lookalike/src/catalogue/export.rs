//! Exporting a catalogue's vectors the way notebook users keep them: a NumPy
//! `.npy` matrix (rows in id order) and a JSON list describing each row.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Result};
use npyz::WriterBuilder;
use serde::Serialize;

use crate::types::StoredProduct;

#[derive(Serialize)]
struct RowInfo<'a> {
    id: &'a str,
    image_path: &'a str,
    title: Option<&'a str>,
    category: Option<&'a str>,
    price: Option<f64>,
    url: Option<&'a str>,
}

pub fn export_npy(products: &[StoredProduct], path: &Path) -> Result<()> {
    let dimension = products.first().map_or(0, |p| p.vector.len());
    if products.iter().any(|p| p.vector.len() != dimension) {
        bail!("vectors of different dimensions in one catalogue");
    }
    crate::files::write_atomically(path, |out| {
        let mut writer = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&[products.len() as u64, dimension as u64])
            .writer(out)
            .begin_nd()?;
        for p in products {
            writer.extend(p.vector.iter().copied())?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ProductInfo;

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
            })
            .collect();
        let npy = dir.path().join("e.npy");
        export_npy(&products, &npy).unwrap();
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

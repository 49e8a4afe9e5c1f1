//! Duplicate products in a catalogue: the same image bytes (exact) or images whose features are
//! nearly identical (near: cosine similarity at or above a threshold), grouped transitively.

use std::collections::HashMap;

use anyhow::Result;
use rayon::prelude::*;
use serde::Serialize;

use crate::index::VectorIndex;
use crate::types::{Filter, Metric};

/// Neighbours examined per product; a group larger than this is still found through its members.
const NEIGHBOURS: usize = 16;

#[derive(Debug, Clone, Serialize)]
pub struct DuplicateGroup {
    /// `exact` when every member has the same image bytes, else `near`.
    pub kind: &'static str,
    pub ids: Vec<String>,
    /// The lowest similarity of the pairs that joined the group.
    pub min_similarity: f32,
}

struct UnionFind(Vec<usize>);

impl UnionFind {
    fn find(&mut self, mut i: usize) -> usize {
        while self.0[i] != i {
            self.0[i] = self.0[self.0[i]];
            i = self.0[i];
        }
        i
    }

    fn join(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        if a != b {
            self.0[a.max(b)] = a.min(b);
        }
    }
}

pub fn duplicate_groups(index: &VectorIndex, threshold: f32) -> Result<Vec<DuplicateGroup>> {
    let products = index.products();
    let position: HashMap<&str, usize> = products.iter().enumerate().map(|(i, p)| (p.id.as_str(), i)).collect();
    let mut pairs: Vec<(usize, usize, f32)> = products
        .par_iter()
        .enumerate()
        .map(|(i, p)| -> Result<Vec<(usize, usize, f32)>> {
            let hits = index.search(
                index.main_vector(i),
                NEIGHBOURS,
                Metric::Cosine,
                &Filter::default(),
                Some(&p.id),
            )?;
            Ok(hits
                .into_iter()
                .filter(|h| h.score >= threshold || h.product.content_hash == p.content_hash)
                .map(|h| (i, position[h.product.id.as_str()], h.score))
                .filter(|&(a, b, _)| a < b)
                .collect())
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    // Identical bytes are duplicates even where a large group pushes them out of the neighbour list.
    let mut by_hash: HashMap<&str, usize> = HashMap::new();
    for (i, p) in products.iter().enumerate() {
        if let Some(&first) = by_hash.get(p.content_hash.as_str()) {
            pairs.push((first, i, 1.0));
        } else {
            by_hash.insert(&p.content_hash, i);
        }
    }
    let mut groups = UnionFind((0..products.len()).collect());
    for &(a, b, _) in &pairs {
        groups.join(a, b);
    }
    let mut members: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut lowest: HashMap<usize, f32> = HashMap::new();
    for &(a, _, score) in &pairs {
        let root = groups.find(a);
        let low = lowest.entry(root).or_insert(score);
        *low = low.min(score);
    }
    for i in 0..products.len() {
        let root = groups.find(i);
        if lowest.contains_key(&root) {
            members.entry(root).or_default().push(i);
        }
    }
    let mut out: Vec<DuplicateGroup> = members
        .into_iter()
        .map(|(root, ids)| {
            let exact = ids
                .iter()
                .all(|&i| products[i].content_hash == products[ids[0]].content_hash);
            let mut ids: Vec<String> = ids.iter().map(|&i| products[i].id.clone()).collect();
            ids.sort();
            DuplicateGroup {
                kind: if exact { "exact" } else { "near" },
                ids,
                min_similarity: lowest[&root],
            }
        })
        .collect();
    out.sort_by(|a, b| {
        a.kind
            .cmp(b.kind)
            .then(b.ids.len().cmp(&a.ids.len()))
            .then(a.ids.cmp(&b.ids))
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::StoredProduct;

    fn product(id: &str, hash: &str, v: Vec<f32>) -> StoredProduct {
        StoredProduct {
            id: id.into(),
            info: Default::default(),
            image_path: String::new(),
            content_hash: hash.into(),
            vector: v,
            more_images: Vec::new(),
        }
    }

    #[test]
    fn exact_and_near_duplicates_are_grouped_apart_from_the_rest() {
        let index = VectorIndex::new(vec![
            product("a", "h1", vec![1.0, 0.0, 0.0]),
            product("a-copy", "h1", vec![1.0, 0.0, 0.0]),
            product("b", "h2", vec![0.0, 1.0, 0.0]),
            product("b-cropped", "h3", vec![0.0, 1.0, 0.05]),
            product("c", "h4", vec![0.0, 0.0, 1.0]),
            product("d", "h5", vec![0.7, 0.7, 0.0]),
        ])
        .unwrap();
        let groups = duplicate_groups(&index, 0.99).unwrap();
        assert_eq!(groups.len(), 2, "{groups:?}");
        assert_eq!(
            (groups[0].kind, groups[0].ids.clone()),
            ("exact", vec!["a".into(), "a-copy".into()])
        );
        assert_eq!(
            (groups[1].kind, groups[1].ids.clone()),
            ("near", vec!["b".into(), "b-cropped".into()])
        );
        assert!(groups[1].min_similarity >= 0.99 && groups[1].min_similarity < 1.0);
    }
}

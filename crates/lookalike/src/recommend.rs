//! A stored catalogue ready to answer "what looks like this?": the one interface the CLI and
//! the server use, whatever the store. Over SQLite the products are loaded into a
//! [`VectorIndex`] and searched in memory (writes go to both); over PostgreSQL every read is a
//! query, so several servers on one database see each other's writes at once.

use std::sync::{Mutex, MutexGuard, RwLock};

use anyhow::Result;

use crate::index::VectorIndex;
use crate::store::{ProductWrite, Store};
use crate::types::{CatalogueEntry, Filter, Metric, Page, Scored, StoredProduct};

pub struct Recommender {
    store: Mutex<Box<dyn Store>>,
    /// The products in memory, when the store cannot search itself.
    memory: Option<RwLock<VectorIndex>>,
}

impl Recommender {
    pub fn new(store: Box<dyn Store>) -> Result<Self> {
        let memory = if store.has_vector_index() {
            None
        } else {
            Some(RwLock::new(VectorIndex::new(store.products()?)?))
        };
        Ok(Self {
            store: Mutex::new(store),
            memory,
        })
    }

    pub fn store(&self) -> MutexGuard<'_, Box<dyn Store>> {
        self.store.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn memory(&self) -> Option<std::sync::RwLockReadGuard<'_, VectorIndex>> {
        self.memory
            .as_ref()
            .map(|m| m.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    pub fn len(&self) -> Result<usize> {
        match self.memory() {
            Some(index) => Ok(index.len()),
            None => self.store().count(),
        }
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Bytes the vector index takes: in this process (memory) or in the database (HNSW).
    pub fn index_bytes(&self) -> Result<usize> {
        match self.memory() {
            Some(index) => Ok(index.vector_bytes()),
            None => self.store().vector_index_bytes(),
        }
    }

    pub fn find(&self, id: &str) -> Result<Option<StoredProduct>> {
        match self.memory() {
            Some(index) => Ok(index.find(id).cloned()),
            None => self.store().product(id),
        }
    }

    /// The `k` best products for `query` that pass `filter`, best first; `exclude` drops one id.
    /// Products found by the database come without their vectors.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        metric: Metric,
        filter: &Filter,
        exclude: Option<&str>,
    ) -> Result<Vec<Scored>> {
        match self.memory() {
            Some(index) => Ok(index
                .search(query, k, metric, filter, exclude)?
                .into_iter()
                .map(|hit| (hit.product.clone(), hit.score))
                .collect()),
            None => self.store().nearest(query, k, metric, filter, exclude),
        }
    }

    /// Products that look like product `id` (itself excluded); `None` if there is no such product.
    pub fn similar(&self, id: &str, k: usize, metric: Metric, filter: &Filter) -> Result<Option<Vec<Scored>>> {
        let Some(product) = self.find(id)? else {
            return Ok(None);
        };
        self.search(&product.vector, k, metric, filter, Some(id)).map(Some)
    }

    /// Products in id order, optionally of one category (case-insensitive); `page` starts at 1.
    pub fn page(&self, category: Option<&str>, page: usize, per_page: usize) -> Result<Page> {
        let offset = page.saturating_sub(1) * per_page;
        let Some(index) = self.memory() else {
            return self.store().page(category, offset, per_page);
        };
        let filter = Filter {
            category: category.map(str::to_string),
            ..Default::default()
        };
        let mut matching: Vec<&StoredProduct> = index.products().iter().filter(|p| filter.accepts(p)).collect();
        matching.sort_by(|a, b| a.id.cmp(&b.id));
        let mut categories: Vec<String> = index
            .products()
            .iter()
            .filter_map(|p| p.info.category.clone())
            .collect();
        categories.sort_unstable();
        categories.dedup();
        Ok(Page {
            total: matching.len(),
            items: matching.into_iter().skip(offset).take(per_page).cloned().collect(),
            categories,
        })
    }

    /// Stores `product` (insert or replace), then makes it searchable.
    pub fn upsert(&self, product: StoredProduct) -> Result<()> {
        let entry = CatalogueEntry {
            id: product.id.clone(),
            info: product.info.clone(),
            image_path: product.image_path.clone().into(),
        };
        self.store().write_batch(&[ProductWrite {
            entry: &entry,
            content_hash: &product.content_hash,
            vector: Some(&product.vector),
        }])?;
        if let Some(memory) = &self.memory {
            memory.write().unwrap_or_else(|p| p.into_inner()).upsert(product)?;
        }
        Ok(())
    }

    /// Deletes product `id`; false if there was none.
    pub fn remove(&self, id: &str) -> Result<bool> {
        let removed = self.store().remove(&[id.to_string()])? > 0;
        if let Some(memory) = &self.memory {
            memory.write().unwrap_or_else(|p| p.into_inner()).remove(id);
        }
        Ok(removed)
    }
}

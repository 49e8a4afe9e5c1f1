//! Where each product sits in the index's list, by id. The table holds positions only and hashes
//! the ids the products already hold: a map from id strings would hold a million ids twice.
//! foldhash, not SipHash (twice as fast here); its seed is random per process.

use std::hash::BuildHasher;

use hashbrown::HashTable;

use crate::types::StoredProduct;

pub struct Positions {
    table: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
}

impl Positions {
    pub fn of(products: &[StoredProduct]) -> Self {
        let mut positions = Self {
            table: HashTable::with_capacity(products.len()),
            hasher: Default::default(),
        };
        for p in 0..products.len() {
            positions.insert(products, p);
        }
        positions
    }

    fn hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    pub fn get(&self, products: &[StoredProduct], id: &str) -> Option<usize> {
        let found = self.table.find(self.hash(id), |&p| products[p as usize].id == id)?;
        Some(*found as usize)
    }

    /// Records the place of `products[p]`, whose id no other place has.
    pub fn insert(&mut self, products: &[StoredProduct], p: usize) {
        let hash = self.hash(&products[p].id);
        let hasher = &self.hasher;
        self.table
            .insert_unique(hash, p as u32, |&q| hasher.hash_one(&products[q as usize].id));
    }

    /// Forgets product `id`'s place and says where it was.
    pub fn remove(&mut self, products: &[StoredProduct], id: &str) -> Option<usize> {
        let entry = self.table.find_entry(self.hash(id), |&p| products[p as usize].id == id);
        Some(entry.ok()?.remove().0 as usize)
    }

    /// Product `products[from]` is to move to place `to`.
    pub fn moving(&mut self, products: &[StoredProduct], from: usize, to: usize) {
        let hash = self.hash(&products[from].id);
        if let Some(place) = self.table.find_mut(hash, |&p| p as usize == from) {
            *place = to as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(id: &str) -> StoredProduct {
        StoredProduct {
            id: id.into(),
            info: Default::default(),
            image_path: String::new(),
            content_hash: String::new(),
            vector: Vec::new(),
            more_images: Vec::new(),
        }
    }

    #[test]
    fn positions_follow_inserts_removals_and_moves() {
        let mut products: Vec<StoredProduct> = (0..1000).map(|i| product(&format!("p{i}"))).collect();
        let mut positions = Positions::of(&products);
        assert_eq!(positions.get(&products, "p517"), Some(517));
        assert_eq!(positions.get(&products, "p1000"), None);
        // Removal as the index does it: the last product takes the removed one's place.
        assert_eq!(positions.remove(&products, "p3"), Some(3));
        assert_eq!(positions.remove(&products, "p3"), None);
        positions.moving(&products, 999, 3);
        products.swap_remove(3);
        products.push(product("new"));
        positions.insert(&products, 999);
        assert_eq!(
            (
                positions.get(&products, "p999"),
                positions.get(&products, "p3"),
                positions.get(&products, "new")
            ),
            (Some(3), None, Some(999))
        );
        assert!((0..products.len()).all(|p| positions.get(&products, &products[p].id) == Some(p)));
    }
}

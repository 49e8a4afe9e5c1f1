//! The store and the products in memory, and the one order their locks are taken in: the store,
//! then memory. The types only allow that order: memory is written only through a held store
//! ([`StoreHeld::index_mut`]), read by giving the store up ([`StoreHeld::into_current`]), and
//! the store is taken back from a reader by giving the reading up ([`IndexRead::then_store`]).
//! What types cannot stop — a thread holding a reader asking the catalogue for its store, which
//! would wait forever on a writer that waits for the reader — panics instead ([`Locks::store`]).

use std::cell::Cell;
use std::ops::Deref;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use anyhow::{bail, Result};

use super::{apply_changes, load_memory, repair, IndexLoad};
use crate::index::{SearchMode, VectorIndex};
use crate::store::{ChangeLog, Changes, SearchSide, Store, VectorSearch};

/// The store and how far into its change log memory is.
struct Logged {
    store: Box<dyn Store>,
    position: u64,
}

/// Where a catalogue's vectors are searched.
enum Searched {
    /// The store searches itself (PostgreSQL with pgvector).
    InDatabase,
    /// A [`VectorIndex`] in this process, kept up to date with the store's change log.
    InMemory {
        index: Box<RwLock<VectorIndex>>,
        load: IndexLoad,
    },
}

pub(super) struct Locks {
    store: Mutex<Logged>,
    searched: Searched,
}

thread_local! {
    /// Readers of memory this thread holds (see [`Locks::store`]).
    static READING: Cell<usize> = const { Cell::new(0) };
}

impl Locks {
    /// `store`, with its products in memory, searched in `mode`, where it cannot search itself.
    pub(super) fn new(store: Box<dyn Store>, mode: SearchMode) -> Result<Self> {
        let (searched, position) = match store.search_side() {
            SearchSide::InDatabase(_) => (Searched::InDatabase, 0),
            SearchSide::InMemory(log) => {
                // The position first: a write landing between it and the load is read again, never lost.
                let position = log.change_position()?;
                let (index, load) = load_memory(&*store, log, mode, position)?;
                (
                    Searched::InMemory {
                        index: Box::new(RwLock::new(index)),
                        load,
                    },
                    position,
                )
            }
        };
        Ok(Self {
            store: Mutex::new(Logged { store, position }),
            searched,
        })
    }

    /// Memory, for the caller to drop or leak; the store is closed.
    pub(super) fn into_memory(self) -> Option<VectorIndex> {
        drop(self.store);
        match self.searched {
            Searched::InMemory { index, .. } => Some(index.into_inner().unwrap_or_else(|p| p.into_inner())),
            Searched::InDatabase => None,
        }
    }

    pub(super) fn index_load(&self) -> Option<&IndexLoad> {
        match &self.searched {
            Searched::InMemory { load, .. } => Some(load),
            Searched::InDatabase => None,
        }
    }

    /// The store, held until the guard drops.
    ///
    /// # Panics
    /// When this thread holds an [`IndexRead`] of any catalogue: a writer holding the store and
    /// waiting for memory would wait for this thread, and this thread for it.
    pub(super) fn store(&self) -> StoreHeld<'_> {
        assert_eq!(
            READING.get(),
            0,
            "lock order: a reader of memory asked for the store; use IndexRead::then_store"
        );
        StoreHeld {
            logged: self.store.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
            locks: self,
        }
    }

    /// What answers a search now: memory brought up to date with what other processes wrote, or
    /// the database.
    pub(super) fn side(&self) -> Result<Side<'_>> {
        let held = self.store();
        match self.searched {
            Searched::InDatabase => Ok(Side::Database(held)),
            Searched::InMemory { .. } => Ok(Side::Memory(held.into_current()?)),
        }
    }

    /// Where whole products (with their vectors) are read: memory, unless it is slim (read from
    /// an index file, leaving in the store what it does not need), or the store.
    pub(super) fn products(&self) -> Result<Products<'_>> {
        Ok(match self.side()? {
            Side::Memory(index) if !index.is_slim() => Products::Memory(index),
            Side::Memory(index) => Products::Store(index.then_store()),
            Side::Database(held) => Products::Store(held),
        })
    }
}

pub(super) enum Side<'a> {
    Memory(IndexRead<'a>),
    Database(StoreHeld<'a>),
}

pub(super) enum Products<'a> {
    Memory(IndexRead<'a>),
    Store(StoreHeld<'a>),
}

impl Products<'_> {
    pub(super) fn get(&self, id: &str) -> Result<Option<crate::types::StoredProduct>> {
        match self {
            Products::Memory(index) => Ok(index.product_with_vectors(id)),
            Products::Store(held) => held.product(id),
        }
    }
}

/// The store, locked; memory can be written only through it.
pub(super) struct StoreHeld<'a> {
    logged: MutexGuard<'a, Logged>,
    locks: &'a Locks,
}

impl Deref for StoreHeld<'_> {
    type Target = dyn Store;
    fn deref(&self) -> &(dyn Store + 'static) {
        &*self.logged.store
    }
}

impl<'a> StoreHeld<'a> {
    pub(super) fn store_mut(&mut self) -> &mut dyn Store {
        &mut *self.logged.store
    }

    /// The database that searches this catalogue.
    pub(super) fn database(&self) -> Result<&dyn VectorSearch> {
        match self.logged.store.search_side() {
            SearchSide::InDatabase(database) => Ok(database),
            SearchSide::InMemory(_) => bail!("a catalogue searched in memory was asked to search its store"),
        }
    }

    /// Memory, for writing, while the store is held; `None` when the database searches.
    pub(super) fn index_mut(&mut self) -> Option<RwLockWriteGuard<'_, VectorIndex>> {
        match &self.locks.searched {
            Searched::InMemory { index, .. } => Some(index.write().unwrap_or_else(|p| p.into_inner())),
            Searched::InDatabase => None,
        }
    }

    /// Memory, brought up to date with the store's change log and with damaged products read
    /// again, for reading; the store is given up.
    fn into_current(mut self) -> Result<IndexRead<'a>> {
        let locks = self.locks;
        let Searched::InMemory { index: memory, .. } = &locks.searched else {
            bail!("a catalogue its database searches has nothing in memory");
        };
        let store = &*self.logged.store;
        let SearchSide::InMemory(log) = store.search_side() else {
            bail!("a catalogue searched in memory over a store that searches itself");
        };
        let moved_to = catch_up(memory, store, log, self.logged.position)?;
        if let Some(position) = moved_to {
            self.logged.position = position;
        }
        let damaged = memory.read().unwrap_or_else(|p| p.into_inner()).take_damaged();
        if !damaged.is_empty() {
            let mut index = memory.write().unwrap_or_else(|p| p.into_inner());
            repair(&mut index, &*self.logged.store, &damaged)?;
        }
        // Memory taken for reading before the store is let go: store, then memory, the order kept.
        let index = memory.read().unwrap_or_else(|p| p.into_inner());
        drop(self);
        READING.set(READING.get() + 1);
        Ok(IndexRead { index, locks })
    }
}

/// Applies what the change log holds after `position` to `memory`; the position it reached.
fn catch_up(
    memory: &RwLock<VectorIndex>,
    store: &dyn Store,
    log: &dyn ChangeLog,
    position: u64,
) -> Result<Option<u64>> {
    Ok(match log.changes_since(position)? {
        Changes::Nothing => None,
        Changes::Products { ids, position } => {
            let mut index = memory.write().unwrap_or_else(|p| p.into_inner());
            apply_changes(&mut index, store, &ids)?;
            Some(position)
        }
        Changes::Everything { position } => {
            let mode = memory.read().unwrap_or_else(|p| p.into_inner()).mode();
            let (reloaded, _) = load_memory(store, log, mode, position)?;
            *memory.write().unwrap_or_else(|p| p.into_inner()) = reloaded;
            Some(position)
        }
    })
}

/// Memory, for reading; the store is not held.
pub(super) struct IndexRead<'a> {
    index: RwLockReadGuard<'a, VectorIndex>,
    locks: &'a Locks,
}

impl<'a> IndexRead<'a> {
    /// Gives memory up and takes the store.
    pub(super) fn then_store(self) -> StoreHeld<'a> {
        let locks = self.locks;
        drop(self);
        locks.store()
    }
}

impl Drop for IndexRead<'_> {
    fn drop(&mut self) {
        READING.set(READING.get() - 1);
    }
}

impl Deref for IndexRead<'_> {
    type Target = VectorIndex;
    fn deref(&self) -> &VectorIndex {
        &self.index
    }
}

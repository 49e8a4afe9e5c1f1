//! The index file beside an SQLite catalogue (`DB.index`): what [`VectorIndex`] holds, so that a
//! start maps it instead of reading every vector from the database (and, in approximate mode, the
//! graph, so that a start does not build it).
//!
//! Layout, in the machine's byte order: magic, header words, a meta part (products with what
//! searches read of them: id, category, price, group; each row's product and image; scales and
//! norms; the graph's links and each node's row) under a crc32, then 64-byte-aligned sections read
//! in place through a memory map: f32 vectors, their int8 codes, the graph's int8 codes. The big
//! sections carry no checksum (hashing gigabytes would cost the start the file saves): the file
//! is written to a temporary file, synced and renamed, so a crash leaves the old file or the new
//! one, never a mix, and [`crate::recommend`] compares a sample of rows with the database at each
//! load. The file is only ever replaced, never written in place, so a process mapping it keeps
//! reading the file it opened.
//!
//! The file records the change-log position it reflects: [`crate::recommend`] applies what
//! changed since, or rebuilds it when the log no longer reaches back that far.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use memmap2::Mmap;

use super::ann::Bytes;
use super::records::Records;
use super::row_graph::RowGraph;
use super::{SearchMode, VectorIndex};
use crate::files::{folder_of, sweep_abandoned_writes, write_atomically};
use crate::types::{ProductImage, ProductInfo, StoredProduct};

const MAGIC: &[u8; 8] = b"LKINDEX1";
const VERSION: u64 = 1;
const HEADER_WORDS: usize = 10;
const HEADER_BYTES: usize = MAGIC.len() + 8 * HEADER_WORDS;
/// Where the sections read in place start: a cache line, so every record is aligned.
const ALIGN: usize = 64;
/// A missing string's length.
const NONE: u32 = u32::MAX;

fn aligned(at: usize) -> usize {
    at.next_multiple_of(ALIGN)
}

/// Zeros from `at` up to `to`.
fn pad(out: &mut impl Write, at: &mut usize, to: usize) -> Result<()> {
    out.write_all(&vec![0; to - *at])?;
    *at = to;
    Ok(())
}

fn put_str(meta: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(s) => {
            meta.extend_from_slice(&(s.len() as u32).to_ne_bytes());
            meta.extend_from_slice(s.as_bytes());
        }
        None => meta.extend_from_slice(&NONE.to_ne_bytes()),
    }
}

fn take_str(bytes: &mut Bytes) -> Result<Option<String>> {
    match bytes.value::<u32>()? {
        NONE => Ok(None),
        len => Ok(Some(
            String::from_utf8(bytes.take(len as usize)?).context("a string that is not UTF-8")?,
        )),
    }
}

impl VectorIndex {
    /// Writes the index to `path` as reflecting the catalogue at change-log `position`.
    pub fn write_file(&self, path: &Path, position: u64) -> Result<()> {
        // A writer killed mid-way leaves a temporary file as big as the index.
        sweep_abandoned_writes(folder_of(path));
        let (d, rows) = (self.dimension, self.rows.len());
        let mut meta = Vec::new();
        for p in &self.products {
            put_str(&mut meta, Some(&p.id));
            put_str(&mut meta, p.info.category.as_deref());
            put_str(&mut meta, p.info.group.as_deref());
            meta.push(p.info.price.is_some() as u8);
            meta.extend_from_slice(&p.info.price.unwrap_or(0.0).to_ne_bytes());
        }
        let slots = || self.row_slot.iter().map(|&s| s as usize);
        let owners: Vec<u32> = self.rows.iter().map(|&(p, _)| p).collect();
        let images: Vec<u16> = self.rows.iter().map(|&(_, image)| image).collect();
        let scales: Vec<f32> = slots().map(|s| self.scales[s]).collect();
        let norms: Vec<f32> = slots().map(|s| self.norms[s]).collect();
        meta.extend_from_slice(bytemuck::cast_slice(&owners));
        meta.extend_from_slice(bytemuck::cast_slice(&images));
        meta.extend_from_slice(bytemuck::cast_slice(&scales));
        meta.extend_from_slice(bytemuck::cast_slice(&norms));
        if let Some(graph) = &self.graph {
            graph.write_links(&mut meta)?;
        }
        let vectors_at = aligned(HEADER_BYTES + meta.len() + 4);
        let codes_at = aligned(vectors_at + rows * d * 4);
        let (graph_at, graph_nodes) = match &self.graph {
            Some(graph) => (aligned(codes_at + rows * d), graph.nodes()),
            None => (0, 0),
        };
        let header: [u64; HEADER_WORDS] = [
            VERSION,
            d as u64,
            self.products.len() as u64,
            rows as u64,
            position,
            meta.len() as u64,
            vectors_at as u64,
            codes_at as u64,
            graph_at as u64,
            graph_nodes as u64,
        ];
        write_atomically(path, |out| {
            let mut crc = crc32fast::Hasher::new();
            crc.update(bytemuck::cast_slice(&header));
            crc.update(&meta);
            out.write_all(MAGIC)?;
            out.write_all(bytemuck::cast_slice(&header))?;
            out.write_all(&meta)?;
            out.write_all(&crc.finalize().to_ne_bytes())?;
            let mut at = HEADER_BYTES + meta.len() + 4;
            pad(out, &mut at, vectors_at)?;
            for slot in slots() {
                out.write_all(bytemuck::cast_slice(self.vectors.get(slot)))?;
            }
            at += rows * d * 4;
            pad(out, &mut at, codes_at)?;
            for slot in slots() {
                out.write_all(bytemuck::cast_slice(self.codes.get(slot)))?;
            }
            at += rows * d;
            if let Some(graph) = &self.graph {
                pad(out, &mut at, graph_at)?;
                graph.write_codes(out)?;
            }
            Ok(())
        })
    }

    /// The index written at `path` by [`Self::write_file`], searched in `mode`, and the change-log
    /// position it reflects. Its products are slim ([`Self::is_slim`]); vectors and codes are
    /// read from the file as searches need them. In approximate mode the graph comes from the
    /// file; a file without one gives an index in exact mode, for the caller to build it
    /// ([`Self::set_mode`]) and write it.
    pub fn read_file(path: &Path, mode: SearchMode) -> Result<(Self, u64)> {
        let file = Arc::new(File::open(path).with_context(|| format!("cannot open {}", path.display()))?);
        // SAFETY: lookalike only ever replaces this file by a rename, never changes it in place, so
        // the mapped bytes stay those of the file opened (see the module notes).
        let map = Arc::new(unsafe { Mmap::map(&*file) }.with_context(|| format!("cannot map {}", path.display()))?);
        ensure!(
            map.len() >= HEADER_BYTES && map.starts_with(MAGIC),
            "not a lookalike index file"
        );
        let header: Vec<u64> = Bytes::new(&map[MAGIC.len()..HEADER_BYTES]).take(HEADER_WORDS)?;
        let [version, d, products, rows, position, meta_len, vectors_at, codes_at, graph_at, graph_nodes] = header[..]
        else {
            unreachable!("the header's words taken");
        };
        ensure!(version == VERSION, "an index file of another version ({version})");
        ensure!(
            d <= 1 << 16 && (d > 0 || rows == 0) && products <= rows && rows < u32::MAX as u64,
            "a header out of range"
        );
        let meta_end = (meta_len as usize)
            .checked_add(HEADER_BYTES)
            .filter(|&end| end + 4 <= map.len())
            .context("the file ends early")?;
        let crc = crc32fast::hash(&map[MAGIC.len()..meta_end]);
        ensure!(
            map[meta_end..meta_end + 4] == crc.to_ne_bytes(),
            "its checksum does not match (damaged or cut short)"
        );
        let (d, rows) = (d as usize, rows as usize);
        let mut index = Self::empty(d, SearchMode::Exact);
        let mut meta = Bytes::new(&map[HEADER_BYTES..meta_end]);
        for _ in 0..products {
            let id = take_str(&mut meta)?.context("a product without an id")?;
            let (category, group) = (take_str(&mut meta)?, take_str(&mut meta)?);
            let price = (meta.value::<u8>()? == 1, meta.value::<f64>()?);
            index.products.push(StoredProduct {
                id,
                info: ProductInfo {
                    category,
                    group,
                    price: price.0.then_some(price.1),
                    ..ProductInfo::default()
                },
                image_path: String::new(),
                content_hash: String::new(),
                vector: Vec::new(),
                more_images: Vec::new(),
            });
            index.product_rows.push(Default::default());
        }
        let owners: Vec<u32> = meta.take(rows)?;
        let images: Vec<u16> = meta.take(rows)?;
        index.scales = meta.take(rows)?;
        index.norms = meta.take(rows)?;
        for (row, (&p, &image)) in owners.iter().zip(&images).enumerate() {
            let rows_of = index.product_rows.get_mut(p as usize).context("a row of no product")?;
            rows_of.push(row as u32);
            index.rows.push((p, image));
        }
        for (p, rows_of) in index.product_rows.iter().enumerate() {
            let mut numbers: Vec<u16> = rows_of.iter().map(|&r| images[r as usize]).collect();
            numbers.sort_unstable();
            ensure!(
                !numbers.is_empty() && numbers.iter().enumerate().all(|(n, &image)| n == image as usize),
                "product {:?} without its images numbered from 0",
                index.products[p].id
            );
            index.products[p].more_images = vec![
                ProductImage {
                    path: String::new(),
                    content_hash: String::new(),
                    vector: Vec::new(),
                };
                numbers.len() - 1
            ];
        }
        index.row_slot = (0..rows as u32).collect();
        index.vectors = Records::mapped(d, map.clone(), file.clone(), vectors_at as usize, rows)?;
        index.codes = Records::mapped(d, map.clone(), file.clone(), codes_at as usize, rows)?;
        // A search re-scores a few dozen scattered vectors and walks a few thousand scattered graph
        // nodes: reading ahead, or mapping the pages around each one read, would only fill memory.
        let _ = map.advise_range(memmap2::Advice::Random, vectors_at as usize, rows * d * 4);
        // SAFETY: a plain hint on a descriptor this function opened and still holds.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
        index.slim = true;
        if let (SearchMode::Approximate { .. }, true) = (mode, graph_at != 0) {
            let codes = Records::mapped(d, map.clone(), file.clone(), graph_at as usize, graph_nodes as usize)?;
            let _ = map.advise_range(memmap2::Advice::Random, graph_at as usize, graph_nodes as usize * d);
            index.graph = Some(RowGraph::read(&mut meta, codes, rows)?);
            ensure!(meta.is_empty(), "bytes after the graph");
            index.mode = mode;
        }
        // The meta part is copied out; its pages (tens of MB per 100k products) need not stay
        // counted as the process's.
        // SAFETY: a read-only map of a file that is never changed in place: dropped pages read back
        // the same bytes, and nothing borrows them any more.
        let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, 0, meta_end + 4) };
        Ok((index, position))
    }
}

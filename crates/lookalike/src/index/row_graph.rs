//! The approximate-search graph over a catalogue's rows: in step with them while they move,
//! and kept in a file beside the catalogue so that a restart reuses it instead of building it.
//!
//! The file is trusted for nothing: each node names its row by product id and image number, and
//! keeps its node only if the row's vector still encodes to the node's codes. Rows that changed or
//! arrived since the file was written get new nodes, nodes of rows gone are dropped; a file that
//! is damaged, of another dimension, or mostly out of date is rebuilt. A crc32 over the whole file
//! catches damage; it is written to a temporary file and renamed, so a crash leaves the old one.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;

use super::ann::{Bytes, GraphParams, HnswGraph};
use crate::files::{folder_of, sweep_abandoned_writes, write_atomically};

const MAGIC: &[u8; 8] = b"LKGRAPH1";

/// An [`HnswGraph`] over the rows of a catalogue whose rows move: removing a row moves the last
/// one into its place (as [`super::VectorIndex`] does), while graph nodes never move. A removed
/// row's node stays in the graph as a waypoint that is never answered, until removals pass a
/// quarter of the nodes and the graph is built again.
pub struct RowGraph {
    graph: HnswGraph,
    node_row: Vec<u32>,
    row_node: Vec<u32>,
    removed: usize,
}

const REMOVED: u32 = u32::MAX;

impl RowGraph {
    /// The graph of `rows` (vectors of `dimension`), in order, on the threads of the current
    /// rayon pool.
    pub fn build<'a>(rows: impl Iterator<Item = &'a [f32]>, dimension: usize, params: GraphParams) -> Result<Self> {
        let rows: Vec<&[f32]> = rows.collect();
        let graph = HnswGraph::build(&rows, dimension, params)?;
        let count = graph.len() as u32;
        Ok(Self {
            graph,
            node_row: (0..count).collect(),
            row_node: (0..count).collect(),
            removed: 0,
        })
    }

    /// Adds row number [`Self::rows`] with `vector`.
    pub fn push_row(&mut self, vector: &[f32]) -> Result<()> {
        let node = self.graph.insert(vector)? as u32;
        self.node_row.push(self.row_node.len() as u32);
        self.row_node.push(node);
        Ok(())
    }

    /// Removes `row`; the last row takes its number.
    pub fn swap_remove_row(&mut self, row: usize) {
        let node = self.row_node.swap_remove(row);
        self.node_row[node as usize] = REMOVED;
        self.removed += 1;
        if let Some(&moved) = self.row_node.get(row) {
            self.node_row[moved as usize] = row as u32;
        }
    }

    pub fn rows(&self) -> usize {
        self.row_node.len()
    }

    /// Whether enough rows were removed that walking their nodes costs more than a rebuild.
    pub fn worn(&self) -> bool {
        self.removed > 1000 && self.removed * 4 > self.graph.len()
    }

    /// Up to `ef` rows near `query` that `accepted` takes, nearest first by approximate cosine.
    pub fn candidates(&self, query: &[f32], ef: usize, accepted: &dyn Fn(usize) -> bool) -> Result<Vec<usize>> {
        let allowed = |node: usize| {
            let row = self.node_row[node];
            row != REMOVED && accepted(row as usize)
        };
        let found = self.graph.search(query, ef, ef, Some(&allowed))?;
        Ok(found
            .into_iter()
            .map(|(node, _)| self.node_row[node] as usize)
            .collect())
    }

    pub fn memory_bytes(&self) -> usize {
        self.graph.memory_bytes() + 4 * (self.node_row.len() + self.row_node.len())
    }
}

/// What loading a graph file found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GraphLoad {
    /// Rows whose node the file held, unchanged.
    pub reused: usize,
    /// Rows that got a new node: new or changed since the file was written.
    pub added: usize,
    /// Nodes of the file that no row holds any more.
    pub dropped: usize,
    /// Why the file was not used, when the graph was built instead.
    pub rebuilt: Option<String>,
    /// Why the changed graph could not be written back (a read-only folder): the next start
    /// repairs or builds it again.
    pub unsaved: Option<String>,
}

impl GraphLoad {
    /// Whether the graph differs from the file, which is then worth writing again.
    pub fn changed(&self) -> bool {
        self.added > 0 || self.dropped > 0 || self.rebuilt.is_some()
    }
}

/// A writer that sums what passes through it.
struct Summed<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for Summed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A tombstone's key length: its row was removed.
const NO_ROW: u32 = u32::MAX;

impl RowGraph {
    /// Writes the graph to `path` with each node's key from `key_of(row)`: product id and image.
    pub fn save<'a>(&self, path: &Path, key_of: &dyn Fn(usize) -> (&'a str, u16)) -> Result<()> {
        // A graph killed while written leaves a temporary copy as big as the graph.
        sweep_abandoned_writes(folder_of(path));
        write_atomically(path, |out| {
            let mut out = Summed {
                inner: out,
                crc: crc32fast::Hasher::new(),
            };
            out.write_all(MAGIC)?;
            self.graph.write(&mut out)?;
            for &row in &self.node_row {
                if row == REMOVED {
                    out.write_all(bytemuck::bytes_of(&0u16))?;
                    out.write_all(bytemuck::bytes_of(&NO_ROW))?;
                } else {
                    let (id, image) = key_of(row as usize);
                    out.write_all(bytemuck::bytes_of(&image))?;
                    out.write_all(bytemuck::bytes_of(&(id.len() as u32)))?;
                    out.write_all(id.as_bytes())?;
                }
            }
            let crc = out.crc.finalize();
            out.inner.write_all(&crc.to_le_bytes())?;
            Ok(())
        })
    }

    /// The graph of `rows` rows of `dimension`, from the file at `path` where it still fits them
    /// (see the module's notes), else built. `row_of` finds the row of a product id and image
    /// number; `vector_of` gives a row's vector.
    pub fn load<'a>(
        path: &Path,
        dimension: usize,
        rows: usize,
        row_of: &(dyn Fn(&str, u16) -> Option<usize> + Sync),
        vector_of: &(dyn Fn(usize) -> &'a [f32] + Sync),
    ) -> Result<(Self, GraphLoad)> {
        let build = |why: String| -> Result<(Self, GraphLoad)> {
            let graph = Self::build((0..rows).map(vector_of), dimension, GraphParams::default())?;
            let load = GraphLoad {
                added: rows,
                rebuilt: Some(why),
                ..GraphLoad::default()
            };
            Ok((graph, load))
        };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return build("no graph file yet".into()),
            Err(err) => return build(format!("cannot read {}: {err}", path.display())),
        };
        let (graph, keys) = match read_file(&bytes, dimension) {
            Ok(parts) => parts,
            Err(err) => return build(format!("{} is not usable: {err:#}", path.display())),
        };
        drop(bytes);
        // Each node's row, if the row is still there and its vector still makes the node's codes.
        let mut node_row: Vec<u32> = keys
            .par_iter()
            .enumerate()
            .map(|(node, key)| {
                let row = key.as_ref().and_then(|(id, image)| row_of(id, *image));
                match row {
                    Some(row) if graph.holds(node, vector_of(row)) => row as u32,
                    _ => REMOVED,
                }
            })
            .collect();
        let mut row_node = vec![REMOVED; rows];
        let mut load = GraphLoad::default();
        let mut tombstones = 0;
        for (node, row) in node_row.iter_mut().enumerate() {
            if *row == REMOVED {
                tombstones += 1;
                // A tombstone in the file was dropped before it was written.
                if keys[node].is_some() {
                    load.dropped += 1;
                }
            } else if row_node[*row as usize] != REMOVED {
                // Two nodes claim one row (a key repeated): the first keeps it.
                *row = REMOVED;
                tombstones += 1;
                load.dropped += 1;
            } else {
                row_node[*row as usize] = node as u32;
                load.reused += 1;
            }
        }
        load.added = rows - load.reused;
        // Past a quarter either way, a parallel build is faster than walking and patching.
        if 4 * load.added > rows.max(1000) || 4 * tombstones > keys.len().max(1000) {
            return build(format!(
                "{} is out of date: {} of {rows} rows changed, {} of its nodes gone",
                path.display(),
                load.added,
                load.dropped
            ));
        }
        let mut graph = Self {
            graph,
            node_row,
            row_node,
            removed: tombstones,
        };
        for row in 0..rows {
            if graph.row_node[row] == REMOVED {
                let node = graph.graph.insert(vector_of(row))?;
                graph.node_row.push(row as u32);
                graph.row_node[row] = node as u32;
            }
        }
        Ok((graph, load))
    }
}

/// The graph and each node's key (product id and image; `None`: removed) from a file's bytes.
#[allow(clippy::type_complexity)]
fn read_file(bytes: &[u8], dimension: usize) -> Result<(HnswGraph, Vec<Option<(String, u16)>>)> {
    ensure!(
        bytes.len() >= MAGIC.len() + 4 && bytes.starts_with(MAGIC),
        "not a lookalike graph file"
    );
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    ensure!(
        crc32fast::hash(body).to_le_bytes() == crc,
        "its checksum does not match (damaged or cut short)"
    );
    let mut cursor = Bytes::new(&body[MAGIC.len()..]);
    let graph = HnswGraph::read(&mut cursor)?;
    if graph.dimension() != dimension {
        bail!("it holds {}-d vectors, the catalogue {dimension}-d", graph.dimension());
    }
    let mut keys = Vec::with_capacity(graph.len());
    for _ in 0..graph.len() {
        let image: u16 = cursor.value()?;
        let len: u32 = cursor.value()?;
        if len == NO_ROW {
            keys.push(None);
            continue;
        }
        let id = String::from_utf8(cursor.take(len as usize)?).context("a product id that is not UTF-8")?;
        keys.push(Some((id, image)));
    }
    ensure!(cursor.is_empty(), "bytes after the last node");
    Ok((graph, keys))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::ann::tests::clustered;

    #[test]
    fn row_graph_follows_rows_that_move_and_never_answers_a_removed_one() {
        let d = 32;
        let mut rows: Vec<Vec<f32>> = clustered(600, d, 5).chunks(d).map(<[f32]>::to_vec).collect();
        let mut graph = RowGraph::build(rows.iter().map(Vec::as_slice), d, GraphParams::default()).unwrap();
        // Remove as a VectorIndex does: the last row takes the removed one's number.
        for row in [0, 17, 250, 596, 3] {
            rows.swap_remove(row);
            graph.swap_remove_row(row);
        }
        for extra in clustered(50, d, 6).chunks(d) {
            graph.push_row(extra).unwrap();
            rows.push(extra.to_vec());
        }
        assert_eq!(graph.rows(), rows.len());
        for (row, vector) in rows.iter().enumerate().step_by(13) {
            let found = graph.candidates(vector, 16, &|_| true).unwrap();
            assert_eq!(found[0], row, "row {row} finds itself under its current number");
        }
        let even = |row: usize| row.is_multiple_of(2);
        for vector in rows.iter().step_by(29) {
            let found = graph.candidates(vector, 16, &even).unwrap();
            assert!(!found.is_empty() && found.iter().all(|&r| r < rows.len() && even(r)));
        }
        assert!(!graph.worn());
    }
}

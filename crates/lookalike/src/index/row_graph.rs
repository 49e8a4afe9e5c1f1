//! The approximate-search graph over a catalogue's rows, in step with them while they move; kept
//! in the index file ([`super::file`]) with the rows it was built over.

use std::io::Write;

use anyhow::{ensure, Context, Result};

use super::ann::{Bytes, GraphParams, HnswGraph};
use super::records::Records;

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

    #[cfg(test)]
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

impl RowGraph {
    /// The graph without its codes, and each node's row (`u32::MAX`: removed), for [`Self::read`];
    /// the codes go with [`Self::write_codes`].
    pub fn write_links(&self, out: &mut impl Write) -> Result<()> {
        self.graph.write_links(out)?;
        out.write_all(bytemuck::cast_slice(&self.node_row))?;
        Ok(())
    }

    pub fn write_codes(&self, out: &mut impl Write) -> Result<()> {
        self.graph.write_codes(out)
    }

    pub fn nodes(&self) -> usize {
        self.graph.len()
    }

    /// A graph from [`Self::write_links`]'s bytes and its nodes' `codes`, over `rows` rows:
    /// checked so that every live node names its own row and every row has one node.
    pub fn read(bytes: &mut Bytes, codes: Records<i8>, rows: usize) -> Result<Self> {
        let graph = HnswGraph::read(bytes, codes)?;
        let node_row: Vec<u32> = bytes.take(graph.len())?;
        let mut row_node = vec![REMOVED; rows];
        let mut removed = 0;
        for (node, &row) in node_row.iter().enumerate() {
            if row == REMOVED {
                removed += 1;
                continue;
            }
            let slot = row_node
                .get_mut(row as usize)
                .context("a node of a row past the last")?;
            ensure!(*slot == REMOVED, "two nodes of one row");
            *slot = node as u32;
        }
        ensure!(
            graph.len() - removed == rows,
            "{} rows without a node",
            rows - (graph.len() - removed)
        );
        Ok(Self {
            graph,
            node_row,
            row_node,
            removed,
        })
    }
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

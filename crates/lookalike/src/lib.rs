//! lookalike: visual product recommendation.
//!
//! The pipeline: [`preprocess`] (image -> tensor) -> [`model`] (tensor -> embedding)
//! -> [`store`] (catalogue + vectors in SQLite, or [`pgstore`] in PostgreSQL) -> [`recommend`]
//! (top-k: [`search`] in memory, or pgvector's index in the database).
//! [`indexer`] drives a catalogue through it; the CLI and server are shells over these.

pub mod augment;
pub mod catalogue;
pub mod dedup;
pub mod eval;
pub mod export;
pub mod head;
pub mod indexer;
pub mod model;
pub mod pgstore;
pub mod preprocess;
pub mod recommend;
pub mod scratch;
pub mod search;
pub mod store;
pub mod train;
pub mod trunk;

/// SHA-256 of `bytes` as lower-case hex: how images and weights are identified.
pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}
pub mod batcher;

//! lookalike: visual product recommendation.
//!
//! The pipeline, one folder per stage: [`image`] (bytes -> bounded decode -> network input) ->
//! [`model`] (input -> embedding) -> [`store`] (catalogue + vectors in SQLite or PostgreSQL) ->
//! [`index`] (top-k in memory) -> [`recommend`] (what the CLI and server query, whatever the store).
//! [`catalogue`] reads a shop's catalogue and drives it through the pipeline; [`learn`] trains
//! heads on top of the backbone. [`types`] holds what every stage shares and imports none of them.
//! [`shop`] is the front door: a catalogue opened with the rules for its model, answering
//! searches, `similar` and `recommend` the same way for the CLI, the server and other programs.

pub mod catalogue;
pub mod error;
pub mod explain;
pub mod feature_cache;
pub mod files;
pub mod image;
pub mod index;
pub mod learn;
pub mod linalg;
pub mod locate;
pub mod model;
pub mod recommend;
pub mod scenes;
pub mod shop;
pub mod store;
pub mod types;

/// SHA-256 of `bytes` as lower-case hex: how images and weights are identified.
pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

//! The HTTP suite on a SQLite catalogue.

const POSTGRES: bool = false;
mod common;
include!("suites/http.rs");

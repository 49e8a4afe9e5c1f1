//! The HTTP suite on a PostgreSQL + pgvector catalogue (scripts/pg.sh starts one).

const POSTGRES: bool = true;
mod common;
include!("suites/http.rs");

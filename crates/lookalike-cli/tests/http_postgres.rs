//! The HTTP suite on a PostgreSQL + pgvector catalogue (scripts/pg.sh starts one and builds these
//! tests to run; without it the suite reports as one ignored test).

#[cfg(lookalike_pg_tests)]
const POSTGRES: bool = true;
#[cfg(lookalike_pg_tests)]
mod common;
#[cfg(lookalike_pg_tests)]
include!("suites/http.rs");

#[cfg(not(lookalike_pg_tests))]
#[test]
#[ignore = "needs PostgreSQL: run through scripts/pg.sh run cargo test"]
fn the_http_suite_on_postgresql() {}

//! `scripts/pg.sh run` sets `LOOKALIKE_PG_TESTS`: the PostgreSQL tests then run; without it they
//! report as ignored, so a plain `cargo test` passes on a machine without PostgreSQL. (A constant
//! of its own rather than the server's URL, whose port changes every run and would rebuild us.)
fn main() {
    println!("cargo::rustc-check-cfg=cfg(lookalike_pg_tests)");
    println!("cargo::rerun-if-env-changed=LOOKALIKE_PG_TESTS");
    if std::env::var_os("LOOKALIKE_PG_TESTS").is_some() {
        println!("cargo::rustc-cfg=lookalike_pg_tests");
    }
}

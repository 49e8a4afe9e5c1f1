#!/usr/bin/env bash
# The whole test suite: fetches the model files it needs, then format, lint, Rust tests
# and the web page in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
LOOKALIKE_SKIP_BUILD=1 LOOKALIKE_BACKBONES=lite2 ./scripts/setup.sh
cargo fmt --all --check
cargo clippy --locked --all-targets -- -D warnings
# PostgreSQL tests need a server: pg.sh starts a throw-away one around the whole Rust suite.
./scripts/pg.sh run cargo test --locked --workspace
./scripts/web-test.sh

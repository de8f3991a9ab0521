#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every crate's tests against a real
# PostgreSQL server that this script installs (if missing) and starts.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/pg.sh env)"
export DATABASE_URL

if [ "${CI:-}" = "true" ]; then
  export CARGO_TERM_COLOR=never
  # A fresh clone builds once: incremental caches would only cost disk.
  export CARGO_INCREMENTAL=0
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test (DATABASE_URL=$DATABASE_URL)"
cargo test --workspace --no-fail-fast "$@"

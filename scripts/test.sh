#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every crate's tests against a real
# PostgreSQL server that this script installs (if missing) and starts.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/pg.sh env)"
export DATABASE_URL

if [ "${CI:-}" = "true" ]; then
  export CARGO_TERM_COLOR=never
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test (DATABASE_URL=$DATABASE_URL)"
cargo test --workspace --no-fail-fast "$@"

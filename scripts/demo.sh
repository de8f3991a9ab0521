#!/usr/bin/env bash
# Runs the engine's demo: installs and starts PostgreSQL if needed, builds the
# release binary, and runs `commerce demo` against the local server.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/pg.sh env)"
export DATABASE_URL

cargo build --release --quiet --bin commerce
exec target/release/commerce demo "$@"

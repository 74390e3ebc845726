#!/usr/bin/env bash
# Sets everything up and serves the FHIR Bulk Data API locally with sample data loaded:
# PostgreSQL (installed from apt and started when needed), a database and role `fhir_bulk`,
# the release build of `bulk-export`, migrations, the sample data (loaded once), then
# `bulk-export serve` on http://127.0.0.1:${PORT:-8080} with files under ./data-local/exports.
#
#   scripts/run-local.sh                       # Ctrl-C stops it
#   PORT=9000 DATA=/path/to/ndjson scripts/run-local.sh
#
# Environment: PORT, HOST (default 127.0.0.1), DATA (what to load into an empty database;
# default infra/sample-data/synthea-10), DATABASE_URL (use this database instead of the local
# one), STORAGE_PATH and every other setting in README.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"

command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
ensure_cc

if [[ -z "${DATABASE_URL:-}" ]]; then
  pg_ensure_running
  as_postgres psql -X -q -v ON_ERROR_STOP=1 <<'SQL'
SELECT 'CREATE ROLE fhir_bulk LOGIN PASSWORD ''fhir_bulk'''
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'fhir_bulk') \gexec
SELECT 'CREATE DATABASE fhir_bulk OWNER fhir_bulk'
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'fhir_bulk') \gexec
SQL
  export DATABASE_URL="postgres://fhir_bulk:fhir_bulk@127.0.0.1:5432/fhir_bulk"
fi
export STORAGE_PATH="${STORAGE_PATH:-$ROOT/data-local/exports}"
export REPEAT_PERIOD="${REPEAT_PERIOD:-5000}"

# cargo's own output shows what happens: a progress bar on a terminal, one "Compiling …" line per
# crate otherwise (a log, CI).
# cargo's target directory (CARGO_TARGET_DIR, when a developer keeps one for all checkouts).
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
if [[ -x "$TARGET_DIR/release/bulk-export" ]]; then
  echo "run-local: building bulk-export (release; seconds when up to date, a minute or two after source changes)" >&2
else
  echo "run-local: building bulk-export (release; about 8 minutes the first time on 2 cores, seconds afterwards)" >&2
fi
cargo build --release -p shared --bin bulk-export
BIN="$TARGET_DIR/release/bulk-export"

"$BIN" migrate
loaded="$(psql "$DATABASE_URL" -X -A -t -c 'SELECT count(*) FROM resources')"
if [[ "$loaded" == "0" ]]; then
  "$BIN" load "${DATA:-$ROOT/infra/sample-data/synthea-10}"
else
  echo "database already holds $loaded resources; not loading sample data" >&2
fi
# SMART Backend Services authorization is on unless INSECURE=1 (then anyone who can reach the
# port can export everything: keep HOST at 127.0.0.1).
if [[ "${INSECURE:-0}" == "1" ]]; then
  exec "$BIN" serve --port "${PORT:-8080}" --host "${HOST:-127.0.0.1}" --insecure
fi
exec "$BIN" serve --port "${PORT:-8080}" --host "${HOST:-127.0.0.1}"

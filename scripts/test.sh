#!/usr/bin/env bash
# Runs every test: the generated-table check, the whole cargo workspace (unit, contract,
# integration and end-to-end tests), the template lint and its deploy to LocalStack (no Docker).
#
#   scripts/test.sh                    # from any directory
#   scripts/test.sh -- --nocapture     # extra arguments go to `cargo test`
#   scripts/test.sh -p integration-tests --test it -- storage_contract::
#
# Needs: Debian (or similar) with cargo on PATH; root or sudo only when something must be
# installed or started. No Docker: S3 and SQS come from a moto server started here, and an
# s3s-fs server (S3 that checks SigV4 signatures) for the presigned-URL tests.
#
# Environment:
#   TEST_DATABASE_URL  admin connection for the per-test databases
#                      (default postgres://postgres@127.0.0.1:5432/postgres, a local Postgres this
#                      script installs/starts when needed; when set, it is used as is)
#   TOOLS_DIR          where the Python tools venv lives (default ~/.cache/fhir-bulk-tools)
#   MOTO_PORT          port for the moto server (default: a free one)
#   TEST_WITHOUT_SHARED=1  behave as on a user's clone: ignore ../shared (the Synthea data and the
#                      FHIR definitions beside the checkout); the tests then generate their data
#                      and take the R4 definitions from npm. .ci/run runs the integration tests
#                      both ways.
# Exported for the tests: TEST_AWS_ENDPOINT_URL (moto), TEST_S3S_ENDPOINT_URL,
# TEST_S3S_ACCESS_KEY, TEST_S3S_SECRET_KEY (s3s-fs, on a free port over a temp directory).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TOOLS_DIR="${TOOLS_DIR:-$HOME/.cache/fhir-bulk-tools}"
VENV="$TOOLS_DIR/venv"
DEFAULT_DB_URL="postgres://postgres@127.0.0.1:5432/postgres"

log() { echo "test.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# as_root, pg_version, pg_reload, pg_ensure_running (shared with scripts/run-local.sh)
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"

# Everything started or changed for this run is undone here.
MOTO_PID=""
S3S_PID=""
S3S_DIR=""
S3S_LOG=""
HBA_FILE=""
HBA_MARK="# fhir-bulk test run: temporary, removed on exit"
DROP_DBS_ON_EXIT=false
MOTO_LOG=""
RUN_TMP=""
cleanup() {
  local rc=$?
  if [[ -n "$MOTO_PID" ]] && kill -0 "$MOTO_PID" 2>/dev/null; then
    kill "$MOTO_PID" 2>/dev/null || true
    wait "$MOTO_PID" 2>/dev/null || true
  fi
  if [[ $rc -eq 0 && -n "$MOTO_LOG" ]]; then rm -f "$MOTO_LOG"; fi
  if [[ -n "$S3S_PID" ]] && kill -0 "$S3S_PID" 2>/dev/null; then
    kill "$S3S_PID" 2>/dev/null || true
    wait "$S3S_PID" 2>/dev/null || true
  fi
  if [[ -n "$S3S_DIR" ]]; then rm -rf "$S3S_DIR"; fi
  if [[ $rc -eq 0 && -n "$S3S_LOG" ]]; then rm -f "$S3S_LOG"; fi
  # Each test drops its own database; anything a killed test binary left goes here.
  if $DROP_DBS_ON_EXIT; then drop_test_databases 2>/dev/null || true; fi
  if [[ -n "$RUN_TMP" && $rc -eq 0 ]]; then
    rm -rf "$RUN_TMP"
  elif [[ -n "$RUN_TMP" ]]; then
    log "temporary files of this run kept in $RUN_TMP"
  fi
  if [[ -n "$HBA_FILE" ]]; then
    as_root sed -i "/^host .*$HBA_MARK\$/d" "$HBA_FILE" || true
    pg_reload || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Every temporary file and directory of this run (the tests' data sets, export folders, the
# servers' logs) goes under one directory, removed at the end when the run passed (kept for
# inspection when it failed; the path is printed).
RUN_TMP="$(mktemp -d "${TMPDIR:-/tmp}/fhir-bulk-test.XXXXXX")"
export TMPDIR="$RUN_TMP"

command -v cargo >/dev/null 2>&1 \
  || die "cargo not found: install Rust with rustup (https://rustup.rs), then rerun"
ensure_cc

# --- Python tools (and s3s-fs) ------------------------------------------------------------
TOOLS_DIR="$TOOLS_DIR" "$ROOT/scripts/setup-tools.sh"
export TOOLS_VENV="$VENV"   # scripts/validate-template.sh takes cfn-lint and sam from here
export SMART_FETCH="$TOOLS_DIR/smart-fetch-venv/bin/smart-fetch"   # tests/tests/it/smart_fetch.rs

# --- Postgres -----------------------------------------------------------------------------
psql_admin() { psql "$TEST_DATABASE_URL" -w -X -q -v ON_ERROR_STOP=1 "$@"; }

if [[ -n "${TEST_DATABASE_URL:-}" ]]; then
  # A database chosen by the caller: use it, change nothing about the server.
  command -v psql >/dev/null 2>&1 || die "psql not found (apt-get install postgresql-client)"
  psql_admin -c 'select 1' >/dev/null || die "cannot connect to TEST_DATABASE_URL"
else
  export TEST_DATABASE_URL="$DEFAULT_DB_URL"
  pg_ensure_running || die "no Postgres on 127.0.0.1:5432"
  # The tests connect as `postgres` over TCP without a password. A fresh Debian install uses
  # peer (socket) and scram-sha-256 (TCP) instead; then a `trust` line for postgres@127.0.0.1 is
  # put first in pg_hba.conf for the duration of this run and removed again on exit (cleanup).
  if ! psql_admin -c 'select 1' >/dev/null 2>&1; then
    HBA_FILE="/etc/postgresql/$(pg_version)/main/pg_hba.conf"
    [[ -f "$HBA_FILE" ]] || die "cannot connect as postgres and $HBA_FILE does not exist"
    log "allowing trust auth for postgres@127.0.0.1 during this run ($HBA_FILE)"
    as_root sed -i "1i host all postgres 127.0.0.1/32 trust $HBA_MARK" "$HBA_FILE"
    pg_reload
    psql_admin -c 'select 1' >/dev/null || die "still cannot connect to $TEST_DATABASE_URL"
  fi
fi

# Per-test databases (bulkt_<pid>_*) are dropped by the tests themselves (TestDb's Drop; the
# template when its test binary exits). Drop those a killed run left; those of a test binary
# still running (another run in progress here) are kept, one in use is skipped, not forced.
drop_test_databases() {
  local db pid n=0
  while read -r db; do
    [[ -n "$db" ]] || continue
    # bulkt_<pid>_<uuid>: the test binary that made it is still running (another test run on
    # this machine, whose template database is idle between tests): keep it.
    pid="$(sed -nE 's/^bulkt_([0-9]+)_.*/\1/p' <<<"$db")"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
      continue
    fi
    if psql_admin -c "drop database if exists \"$db\"" >/dev/null 2>&1; then
      n=$((n + 1))
    fi
  done < <(psql_admin -A -t -c "select datname from pg_database where datname like 'bulkt\_%'")
  if ((n)); then log "dropped $n test database(s)"; fi
}
drop_test_databases
DROP_DBS_ON_EXIT=true

# --- moto (S3 + SQS) ----------------------------------------------------------------------
port_free() {
  "$VENV/bin/python" - "$1" <<'PY'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
}
free_port() {
  "$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

if [[ -n "${MOTO_PORT:-}" ]]; then
  port_free "$MOTO_PORT" || die "MOTO_PORT=$MOTO_PORT is in use"
  port="$MOTO_PORT"
else
  port="$(free_port)"
fi
MOTO_LOG="$(mktemp "${TMPDIR:-/tmp}/fhir-bulk-moto.XXXXXX.log")"
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$MOTO_LOG" 2>&1 &
MOTO_PID=$!
# Whether something answers HTTP at $1 (any status: an error status still means it is serving).
http_answers() {
  "$VENV/bin/python" - "$1" >/dev/null 2>&1 <<'PY'
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=1)
except urllib.error.HTTPError:
    pass  # any HTTP answer means it is serving
PY
}
moto_up=false
for _ in $(seq 1 150); do
  kill -0 "$MOTO_PID" 2>/dev/null || { cat "$MOTO_LOG" >&2; die "moto server exited"; }
  if http_answers "http://127.0.0.1:$port/moto-api/"; then moto_up=true; break; fi
  sleep 0.2
done
$moto_up || { cat "$MOTO_LOG" >&2; die "moto server did not answer on port $port"; }
log "moto server on 127.0.0.1:$port (pid $MOTO_PID, log $MOTO_LOG)"
export TEST_AWS_ENDPOINT_URL="http://127.0.0.1:$port"
# Nothing in the tests should look for EC2 instance credentials.
export AWS_EC2_METADATA_DISABLED=true

# --- s3s-fs (S3 that checks signatures) -------------------------------------------------------
# moto accepts any signature; tests/tests/presigned_s3s.rs needs a server that refuses a tampered
# or expired presigned URL. Keys differ from moto's so that a test mixing the two up fails.
S3S_FS="$TOOLS_DIR/cargo/bin/s3s-fs"   # installed by scripts/setup-tools.sh
[[ -x "$S3S_FS" ]] || die "$S3S_FS missing: scripts/setup-tools.sh should have installed it"
S3S_ACCESS_KEY="s3s-test-access"
S3S_SECRET_KEY="s3s-test-secret"
S3S_DIR="$(mktemp -d "${TMPDIR:-/tmp}/fhir-bulk-s3s.XXXXXX")"
S3S_LOG="$(mktemp "${TMPDIR:-/tmp}/fhir-bulk-s3s.XXXXXX.log")"
s3s_port="$(free_port)"
"$S3S_FS" --host 127.0.0.1 --port "$s3s_port" \
  --access-key "$S3S_ACCESS_KEY" --secret-key "$S3S_SECRET_KEY" "$S3S_DIR" >"$S3S_LOG" 2>&1 &
S3S_PID=$!
s3s_up=false
for _ in $(seq 1 150); do
  kill -0 "$S3S_PID" 2>/dev/null || { cat "$S3S_LOG" >&2; die "s3s-fs exited"; }
  if http_answers "http://127.0.0.1:$s3s_port/"; then s3s_up=true; break; fi
  sleep 0.2
done
$s3s_up || { cat "$S3S_LOG" >&2; die "s3s-fs did not answer on port $s3s_port"; }
log "s3s-fs on 127.0.0.1:$s3s_port over $S3S_DIR (pid $S3S_PID, log $S3S_LOG)"
export TEST_S3S_ENDPOINT_URL="http://127.0.0.1:$s3s_port"
export TEST_S3S_ACCESS_KEY="$S3S_ACCESS_KEY"
export TEST_S3S_SECRET_KEY="$S3S_SECRET_KEY"

# --- the tests ----------------------------------------------------------------------------
without_shared=false
if [[ -n "${TEST_WITHOUT_SHARED:-}" && "${TEST_WITHOUT_SHARED}" != "0" ]]; then
  without_shared=true
  export TEST_WITHOUT_SHARED=1
  log "TEST_WITHOUT_SHARED: ignoring ../shared (generated test data, R4 definitions from npm)"
fi
# The R4 definitions (npm, pinned by checksum) into the tools dir: both generated tables are
# checked against them, so a clone without ../shared checks them too.
R4_DEFS=""
if R4_DEFS="$(TOOLS_DIR="$TOOLS_DIR" infra/fetch-r4-definitions.sh)"; then
  export FHIR_R4_DEFINITIONS="$R4_DEFS"   # tests/src/data.rs reads the CompartmentDefinition there
else
  R4_DEFS=""
fi
if ! $without_shared && [[ -d ../shared/fhir/r4 ]]; then
  log "python3 infra/gen_compartment.py --check (../shared/fhir/r4)"
  python3 infra/gen_compartment.py --check --fhir-dir ../shared/fhir/r4
fi
if [[ -n "$R4_DEFS" ]]; then
  log "python3 infra/gen_compartment.py --check (R4 definitions from npm)"
  python3 infra/gen_compartment.py --check --fhir-dir "$R4_DEFS"
else
  log "SKIPPED: gen_compartment --check against the npm R4 definitions (npm unavailable)"
fi
log "python3 infra/gen_search_tables.py --check"
python3 infra/gen_search_tables.py --check 2> >(grep -v '^note: ' >&2)

# The CLI tests run the `bulk-export` binary, which `cargo test` alone does not build.
log "cargo build --workspace --bins"
cargo build --workspace --bins

log "cargo test --workspace --no-fail-fast $*"
CARGO_TEST_LOG="$(mktemp "${TMPDIR:-/tmp}/fhir-bulk-cargo-test.XXXXXX.log")"
set +e
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$CARGO_TEST_LOG"
test_rc=${PIPESTATUS[0]}
set -e
# One closing line for the whole run: the sum of every test binary's "test result" line.
read -r passed failed < <(awk '/^test result:/ {
    for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) }
  } END { print p + 0, f + 0 }' "$CARGO_TEST_LOG")
rm -f "$CARGO_TEST_LOG"
if [[ $test_rc -ne 0 ]]; then
  echo "cargo: $passed passed, $failed failed"
  exit "$test_rc"
fi

log "scripts/validate-template.sh"
scripts/validate-template.sh

# The stack deployed to LocalStack without Docker (every resource but Lambda's, read back):
# part of every full run, skipped when only some tests were asked for.
if [[ $# -eq 0 ]]; then
  log "scripts/check-localstack-deploy.py"
  "$VENV/bin/python" scripts/check-localstack-deploy.py
  # The functions under the real `sam local invoke` / `start-api` (Docker; release binaries).
  # Prints "sam-local: SKIPPED: <reason>" and passes where Docker cannot run.
  log "scripts/sam-local.sh"
  TOOLS_DIR="$TOOLS_DIR" scripts/sam-local.sh
fi

log "all tests passed"
echo "cargo: $passed passed, $failed failed"

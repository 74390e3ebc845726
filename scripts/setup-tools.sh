#!/usr/bin/env bash
# Installs the Python tools the tests and the template checks use into one venv:
#   moto[server]  S3 + SQS emulator the integration tests talk to (scripts/test.sh starts it)
#   cfn-lint      template linter          (scripts/validate-template.sh)
#   aws-sam-cli   `sam validate --lint`    (scripts/validate-template.sh)
#   smart-fetch   a real bulk-export client for the end-to-end tests (own venv)
#   pyarrow, duckdb  independent readers of the view exports' Parquet files (the view tests,
#                 the README's DuckDB example and bench-export's DuckDB comparison)
#   localstack    LocalStack (community) without Docker, for the template's deploy test
#                 (scripts/check-localstack-deploy.py; own venv)
# and one Rust tool, with `cargo install` under $TOOLS_DIR/cargo:
#   s3s-fs        S3 server over a directory that checks SigV4 signatures (presigned-URL tests)
#
#   scripts/setup-tools.sh          # idempotent; installs only what is missing
#
# The venv is $TOOLS_DIR/venv (TOOLS_DIR defaults to ~/.cache/fhir-bulk-tools), outside the
# repository so that it survives `git clean` and is shared between checkouts. Python 3 and its
# venv module come from apt when missing (as root, or through sudo).
set -euo pipefail

TOOLS_DIR="${TOOLS_DIR:-$HOME/.cache/fhir-bulk-tools}"
VENV="$TOOLS_DIR/venv"

# Versions known to install and work together on Python 3.11.
MOTO_SPEC="moto[server]==5.2.5"
MOTO_VERSION="5.2.5"
CFN_LINT_SPEC="cfn-lint==1.58.0"
SAM_SPEC="aws-sam-cli==1.170.0"
PYARROW_SPEC="pyarrow==26.0.1"
DUCKDB_SPEC="duckdb==2.0.1"

log() { echo "setup-tools: $*" >&2; }

# shellcheck source=scripts/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

venv_works() {
  [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1
}

if ! venv_works; then
  # Debian's python3 has no ensurepip (so no `-m venv`) without the python3-venv package.
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install python3 python3-venv
  fi
  if [[ -e "$VENV" ]]; then
    log "recreating broken venv $VENV"
    rm -rf "$VENV"
  fi
  log "creating venv $VENV"
  mkdir -p "$TOOLS_DIR"
  python3 -m venv "$VENV"
fi

missing=()
if ! "$VENV/bin/python" - "$MOTO_VERSION" >/dev/null 2>&1 <<'PY'
import sys, importlib.metadata
import moto, moto.server  # moto.server needs the [server] extra (flask, ...)
sys.exit(importlib.metadata.version("moto") != sys.argv[1])
PY
then
  missing+=("$MOTO_SPEC")
fi
[[ -x "$VENV/bin/cfn-lint" ]] || missing+=("$CFN_LINT_SPEC")
[[ -x "$VENV/bin/sam" ]] || missing+=("$SAM_SPEC")
"$VENV/bin/python" -c 'import pyarrow' >/dev/null 2>&1 || missing+=("$PYARROW_SPEC")
"$VENV/bin/python" -c 'import duckdb' >/dev/null 2>&1 || missing+=("$DUCKDB_SPEC")

if ((${#missing[@]})); then
  log "installing ${missing[*]} into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${missing[@]}"
else
  log "tools present in $VENV"
fi

# A package whose metadata is present but whose command was deleted is "already satisfied" for
# pip; reinstall it alone to get the command back.
for tool in "cfn-lint:$CFN_LINT_SPEC" "sam:$SAM_SPEC" "moto_server:$MOTO_SPEC"; do
  if [[ ! -x "$VENV/bin/${tool%%:*}" ]]; then
    log "reinstalling ${tool#*:} (no ${tool%%:*} command)"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
      --force-reinstall --no-deps "${tool#*:}"
  fi
done

# smart-fetch, the SMART on FHIR team's bulk-export client, in a venv of its own (its pins must
# not meet moto's or sam's). The end-to-end tests run it unmodified against `bulk-export serve`.
SMART_FETCH_SPEC="smart-fetch==1.0.3"
SF_VENV="$TOOLS_DIR/smart-fetch-venv"
if [[ ! -x "$SF_VENV/bin/smart-fetch" ]]; then
  log "installing $SMART_FETCH_SPEC into $SF_VENV"
  rm -rf "$SF_VENV"
  python3 -m venv "$SF_VENV"
  "$SF_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$SMART_FETCH_SPEC"
fi

# LocalStack's community edition, run as a plain Python process (no Docker): the deploy test of
# template.yaml (scripts/check-localstack-deploy.py). 4.13.1 is the last release that runs on
# Python 3.11; the pins are what it installs and starts with here.
LOCALSTACK_SPECS=("localstack-core[runtime]==4.13.1" "cbor2<6" "pyopenssl==25.1.0" "cryptography>=45,<46" "service_identity")
LS_VENV="$TOOLS_DIR/localstack-venv"
if ! "$LS_VENV/bin/python" -c 'import localstack.runtime.main' >/dev/null 2>&1; then
  log "installing ${LOCALSTACK_SPECS[*]} into $LS_VENV"
  rm -rf "$LS_VENV"
  python3 -m venv "$LS_VENV"
  "$LS_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${LOCALSTACK_SPECS[@]}"
fi

# s3s-fs, an S3 server over a directory that checks SigV4 signatures: moto accepts any signature,
# so tests/tests/presigned_s3s.rs runs against this one to prove that a tampered or expired
# presigned URL is refused. Built from crates.io once (~2 min); 0.17 needs a newer rustc.
S3S_FS_VERSION="0.14.1"
S3S_FS_ROOT="$TOOLS_DIR/cargo"
if [[ ! -x "$S3S_FS_ROOT/bin/s3s-fs" ]]; then
  command -v cargo >/dev/null 2>&1 \
    || { log "cargo not found: install Rust with rustup (https://rustup.rs), then rerun"; exit 1; }
  log "installing s3s-fs $S3S_FS_VERSION into $S3S_FS_ROOT"
  mkdir -p "$S3S_FS_ROOT"
  cargo install --quiet --locked --features binary --root "$S3S_FS_ROOT" "s3s-fs@$S3S_FS_VERSION"
fi

#!/usr/bin/env bash
# Applies the views of sof/tools/sof-js/views.json to an NDJSON directory with this crate and
# with the specification's reference implementation (sof-js, at the commit the test suite is
# pinned to, with fhirpath 3.9.0 from npm as its package.json asks), and compares the rows.
#
#   sof/tools/compare-with-sof-js.sh [DATA_DIR] [VIEWS.json]
#
# DATA_DIR defaults to ../shared/data/synthea-bulk-data-server-100. Needs git, node, npm,
# python3, the npm registry, and GitHub unless SOF_V2_GIT_DIR names a local git directory of
# FHIR/sql-on-fhir-v2 that has the pinned commit. Not part of CI.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DATA="$(realpath "${1:-$ROOT/../shared/data/synthea-bulk-data-server-100}")"
VIEWS="$(realpath "${2:-$ROOT/sof/tools/sof-js/views.json}")"
COMMIT="$(sed -n 's/^ *commit: *\([0-9a-f]*\).*/\1/p' "$ROOT/sof/tests/suite/PINNED")"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
GIT_DIR_SOF="${SOF_V2_GIT_DIR:-}"
if [[ -z "$GIT_DIR_SOF" ]]; then
  git clone --quiet --bare https://github.com/FHIR/sql-on-fhir-v2 "$work/repo.git"
  GIT_DIR_SOF="$work/repo.git"
fi
mkdir "$work/js"
for f in index.js path.js validate.js; do
  git --git-dir="$GIT_DIR_SOF" show "$COMMIT:sof-js/src/$f" > "$work/js/$f"
done
cp "$ROOT/sof/tools/sof-js/run.mjs" "$work/js/"
echo '{"type": "module"}' > "$work/js/package.json"
(cd "$work/js" && npm install --silent fhirpath@3.9.0 ajv@8 >/dev/null)
# sof-js prints a debugging line for some ofType calls; only its output file matters.
(cd "$work/js" && node run.mjs "$VIEWS" "$DATA" "$work/js.json" >/dev/null)
(cd "$ROOT" && cargo run --quiet --release -p sof --example view_rows -- \
  "$VIEWS" "$DATA" "$work/sof.json")
python3 "$ROOT/sof/tools/sof-js/compare.py" "$work/js.json" "$work/sof.json"

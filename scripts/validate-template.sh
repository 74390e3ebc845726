#!/usr/bin/env bash
# Lint template.yaml offline: cfn-lint, then `sam validate --lint`, then least privilege per
# function (scripts/check-functions.py: each function's environment and IAM actions are exactly
# what infra/functions.json declares).
# Tools come from PATH, or from the tools venv ($TOOLS_VENV, default
# /root/.cache/fhir-bulk-tools/venv) when that has them; TOOLS_VENV wins when set.
#
#   scripts/validate-template.sh [template]   (default: template.yaml at the repo root)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TEMPLATE="${1:-$ROOT/template.yaml}"
DEFAULT_VENV=/root/.cache/fhir-bulk-tools/venv

find_tool() {
  local name="$1"
  if [[ -n "${TOOLS_VENV:-}" ]]; then
    if [[ -x "$TOOLS_VENV/bin/$name" ]]; then echo "$TOOLS_VENV/bin/$name"; return 0; fi
    echo "validate-template: $name not found in TOOLS_VENV=$TOOLS_VENV" >&2
    return 1
  fi
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
  if [[ -x "$DEFAULT_VENV/bin/$name" ]]; then echo "$DEFAULT_VENV/bin/$name"; return 0; fi
  echo "validate-template: $name not found on PATH or in $DEFAULT_VENV (set TOOLS_VENV)" >&2
  return 1
}

CFN_LINT="$(find_tool cfn-lint)"
SAM="$(find_tool sam)"

# Offline: a region is needed by the SAM translator; no credentials are used.
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
export SAM_CLI_TELEMETRY=0

cd "$(dirname "$TEMPLATE")"
template="$(basename "$TEMPLATE")"

status=0
echo "==> cfn-lint $template"
if "$CFN_LINT" -- "$template"; then echo "cfn-lint: ok"; else status=1; fi

echo "==> sam validate --lint --template $template"
if "$SAM" validate --lint --template "$template"; then :; else status=1; fi

echo "==> scripts/check-functions.py $template"
# cfn-lint's own interpreter has its YAML loader (cfnlint.decode).
PYTHON="$(head -n 1 "$CFN_LINT" | sed -n 's/^#!//p')"
if [[ -z "$PYTHON" || ! -x "$PYTHON" ]]; then PYTHON="$(dirname "$CFN_LINT")/python3"; fi
if "$PYTHON" "$ROOT/scripts/check-functions.py" "$template" "$ROOT/infra/functions.json"; then :; else status=1; fi

if [[ $status -ne 0 ]]; then
  echo "validate-template: FAILED" >&2
fi
exit $status

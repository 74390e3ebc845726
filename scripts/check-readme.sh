#!/usr/bin/env bash
# Runs the shell commands of README.md's "Run it", "Authorization", "What an export contains" and
# "Run the functions as Lambda runs them" sections exactly as written (extracted from README.md,
# not copied), in README order, and checks what they produce.
#
#   scripts/check-readme.sh            # from any directory; ends with `readme: N passed, M failed`
#
# Every ```sh block in those sections has a marker line just before it saying how it is run:
#   <!-- readme-check: run-local -->   starts the server: runs in the background (PORT, DATABASE_URL
#                                      and STORAGE_PATH set by this script); must answer GET /metadata
#   <!-- readme-check: run CHECK... --> runs in one `bash -euo pipefail` session shared by all blocks
#                                      (variables carry over), then CHECKs the results (below)
#   <!-- readme-check: serve -->       like run, but its last line is a server: it runs in the
#                                      background and must answer GET /metadata on its --port
#   <!-- readme-check: skip REASON --> not run (only where it cannot be helped: say why)
# CHECKs: http=CODE[xN]   every HTTP status line the block prints is CODE (and there are N)
#         kickoff         $KICKOFF's status line is 202; $STATUS is $B/$exportstatus?_id=$JOB
#         manifest        $CODE is 200; manifest.json has output[] with $exportfilerequest URLs
#         download        the file $NAME is ndjson: one or more lines, each a Patient
#         deleted         the status URL now answers 404 (or 410) to the client
#         ndjson-dir=DIR  DIR holds <Type>.*.ndjson[.gz] files, every line a resource of that type
#         lambda=C1,C2…   the Lambda answers the block prints ({"statusCode":N,…}) are C1, C2, … in order
# Each block counts once in the closing line; a failure names the README line that failed.
#
# Isolation: a throwaway role and database bulkreadme_<random> on the local Postgres (started like
# scripts/run-local.sh does; DATABASE_URL points there), free ports, STORAGE_PATH in a temporary
# directory. The commands run in the checkout (they use target/, infra/, ./my-client, ...), so the
# check refuses to start when the files they write there exist already. On exit, pass or fail, it
# stops the servers it started, drops the database and role, and removes its temporary directory
# and the new files and directories in the checkout's top level that the blocks name (./my-client,
# manifest.json, ...; never one git tracks or ignores, so target/ stays).
# Needs smart-fetch in ${TOOLS_DIR:-~/.cache/fhir-bulk-tools}/smart-fetch-venv (scripts/setup-tools.sh).
#
# Environment: README_CHECK_TIMEOUT        seconds to wait for each server (default 2700: the
#                                          first release build of run-local.sh is part of it)
#              README_CHECK_BLOCK_TIMEOUT  seconds a `run` block may take (default 900)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"

# README_CHECK_FILE: another file to check instead (for testing this script).
README="$(realpath "${README_CHECK_FILE:-$ROOT/README.md}")"
RN="$(basename "$README")"
SECTIONS=("Run it" "Authorization" "What an export contains" "Run the functions as Lambda runs them")
TOOLS_DIR="${TOOLS_DIR:-$HOME/.cache/fhir-bulk-tools}"
SERVER_TIMEOUT="${README_CHECK_TIMEOUT:-2700}"
BLOCK_TIMEOUT="${README_CHECK_BLOCK_TIMEOUT:-900}"
STARTED_AT=$(date +%s)

log() { echo "check-readme: $*" >&2; }

WORK=""
DB=""
BLOCKS_TOTAL=0
BEFORE_TOP=""
SETUP_ERROR=""

# --- cleanup and the closing line -------------------------------------------------------------
stop_servers() {
  [[ -f "$WORK/pids" ]] || return 0
  local pid
  while read -r pid; do
    [[ -n "$pid" ]] || continue
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done <"$WORK/pids"
  for _ in $(seq 1 50); do
    local alive=false
    while read -r pid; do
      [[ -n "$pid" ]] || continue
      if kill -0 -- "-$pid" 2>/dev/null; then alive=true; fi
    done <"$WORK/pids"
    $alive || return 0
    sleep 0.2
  done
  while read -r pid; do
    [[ -n "$pid" ]] || continue
    kill -KILL -- "-$pid" 2>/dev/null || true
  done <"$WORK/pids"
}

cleanup() {
  local rc=$?
  set +e
  trap - ERR
  if [[ -n "$WORK" ]]; then
    stop_servers
  fi
  if [[ -n "$DB" ]]; then
    as_postgres psql -X -q -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 \
      || log "could not drop database $DB"
    as_postgres psql -X -q -c "DROP ROLE IF EXISTS \"$DB\"" >/dev/null 2>&1 \
      || log "could not drop role $DB"
  fi
  # What the README's commands wrote into the checkout (./my-client, manifest.json, ...): new
  # top-level entries that git neither tracks nor ignores (target/ stays) and that the checked
  # blocks or their output name as a relative path (someone else's new file stays).
  if [[ -n "$BEFORE_TOP" ]]; then
    local entry named
    named=$(cat "$WORK"/block-*.sh "$WORK"/out-* 2>/dev/null \
      | grep -oE '(^|[^[:alnum:]_./$-])(\./)?[[:alnum:]_.-]+' | sed -E 's#^[^[:alnum:]_.]?(\./)?##' | sort -u)
    while IFS= read -r entry; do
      [[ -n "$entry" ]] || continue
      if ! grep -qxF -- "$entry" <<<"$BEFORE_TOP" \
        && grep -qxF -- "$entry" <<<"$named" \
        && [[ -z "$(git -C "$ROOT" ls-files -- "$entry" 2>/dev/null)" ]] \
        && ! git -C "$ROOT" check-ignore -q -- "$entry"; then
        rm -rf -- "${ROOT:?}/$entry" && log "removed ./$entry (written by the README's commands)"
      fi
    done < <(ls -A "$ROOT")
  fi
  local passed=0 failed=0
  if [[ -n "$WORK" && -f "$WORK/passed" ]]; then passed=$(wc -l <"$WORK/passed"); fi
  failed=$((BLOCKS_TOTAL - passed))
  if ((rc != 0 && failed == 0)); then failed=1; fi
  if [[ -n "$WORK" ]]; then rm -rf "$WORK"; fi
  [[ -n "$SETUP_ERROR" ]] && log "$SETUP_ERROR"
  local took=$(($(date +%s) - STARTED_AT))
  log "took $((took / 60))m$((took % 60))s"
  echo "readme: $passed passed, $failed failed"
  if ((failed > 0 && rc == 0)); then rc=1; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

setup_fail() { SETUP_ERROR="FAILED: $*"; exit 1; }

# --- parse README.md --------------------------------------------------------------------------
mapfile -t LINES <"$README"
NLINES=${#LINES[@]}
# Per block: kind, checks, first line (the fence), last line (the closing fence); 1-based.
B_KIND=() B_ARGS=() B_OPEN=() B_CLOSE=()
in_scope=false in_fence=false marker="" marker_line=0 parse_errors=() open=""
re_heading='^## (.*)$'
re_fence='^```'
re_fence_close='^```[[:space:]]*$'
re_fence_sh='^```(sh|bash|shell)[[:space:]]*$'
re_marker='^<!-- readme-check: (.*) -->$'
for ((i = 0; i < NLINES; i++)); do
  line="${LINES[i]}" n=$((i + 1))
  if $in_fence; then
    if [[ "$line" =~ $re_fence_close ]]; then
      in_fence=false
      if [[ -n "$open" ]]; then B_CLOSE+=("$n"); open=""; fi
    fi
    continue
  fi
  if [[ "$line" =~ $re_heading ]]; then
    in_scope=false
    for s in "${SECTIONS[@]}"; do [[ "${BASH_REMATCH[1]}" == "$s" ]] && in_scope=true; done
    [[ -z "$marker" ]] || parse_errors+=("$RN:$marker_line: marker without a \`\`\`sh block after it")
    marker=""
    continue
  fi
  if [[ "$line" =~ $re_fence ]]; then
    in_fence=true open=""
    if $in_scope && [[ "$line" =~ $re_fence_sh ]]; then
      if [[ -z "$marker" ]]; then
        parse_errors+=("$RN:$n: \`\`\`sh block without a '<!-- readme-check: ... -->' line before it")
      else
        read -r kind rest <<<"$marker"
        case "$kind" in
          run | run-local | serve | skip) ;;
          *) parse_errors+=("$RN:$marker_line: unknown readme-check kind '$kind'") ;;
        esac
        B_KIND+=("$kind") B_ARGS+=("$rest") B_OPEN+=("$n")
        open=$n
      fi
    elif [[ -n "$marker" ]]; then
      parse_errors+=("$RN:$marker_line: marker before a block that is not \`\`\`sh")
    fi
    marker=""
    continue
  fi
  if $in_scope && [[ "$line" =~ $re_marker ]]; then
    marker="${BASH_REMATCH[1]}" marker_line=$n
    continue
  fi
  if [[ -n "$marker" && -n "${line// /}" ]]; then
    parse_errors+=("$RN:$marker_line: marker not followed by a \`\`\`sh block")
    marker=""
  fi
done
$in_fence && parse_errors+=("$RN: unclosed code fence")
NBLOCKS=${#B_OPEN[@]}
for ((b = 0; b < NBLOCKS; b++)); do
  [[ "${B_KIND[b]}" == skip ]] || BLOCKS_TOTAL=$((BLOCKS_TOTAL + 1))
done
if ((${#parse_errors[@]})); then
  for e in "${parse_errors[@]}"; do log "$e"; done
  setup_fail "$RN does not parse (${#parse_errors[@]} problem(s) above)"
fi
((NBLOCKS > 0)) || setup_fail "no \`\`\`sh blocks found in the sections: ${SECTIONS[*]}"
[[ "${B_OPEN[0]}" -gt 1 ]] || setup_fail "$RN's first line must not be in a block"

# --- preconditions ----------------------------------------------------------------------------
for tool in curl python3 psql awk sed grep; do
  command -v "$tool" >/dev/null 2>&1 || setup_fail "$tool not found"
done
[[ -x "$TOOLS_DIR/smart-fetch-venv/bin/smart-fetch" ]] \
  || setup_fail "smart-fetch missing: $TOOLS_DIR/smart-fetch-venv/bin/smart-fetch (run scripts/setup-tools.sh)"
# Files the README's commands write in the checkout: left over from following the README by hand,
# they would be reused or refused (keygen does not overwrite a key), so stop here instead.
for f in my-client smart-fetch-out manifest.json Patient-0001.ndjson view.json views.json views; do
  [[ ! -e "$ROOT/$f" ]] \
    || setup_fail "./$f exists (from following the README?): the README's commands write it; move it away first"
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/readme-check.XXXXXX")"
BEFORE_TOP="$(ls -A "$ROOT")"
: >"$WORK/pids"

# --- a throwaway database ---------------------------------------------------------------------
pg_ensure_running || setup_fail "no PostgreSQL on 127.0.0.1:5432"
DB="bulkreadme_$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
as_postgres psql -X -q -v ON_ERROR_STOP=1 \
  -c "CREATE ROLE \"$DB\" LOGIN PASSWORD '$DB'" \
  -c "CREATE DATABASE \"$DB\" OWNER \"$DB\"" >/dev/null \
  || setup_fail "could not create role and database $DB"
export DATABASE_URL="postgres://$DB:$DB@127.0.0.1:5432/$DB"
psql "$DATABASE_URL" -X -q -c 'select 1' >/dev/null 2>&1 \
  || setup_fail "cannot connect to the throwaway database as $DB over TCP (password auth)"
log "database $DB (dropped on exit); work directory $WORK"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
export PORT
PORT="$(free_port)"
export STORAGE_PATH="$WORK/exports"
# curl without a terminal prints a progress meter on stderr: noise here, so off (output unchanged).
mkdir -p "$WORK/curl-home"
echo "no-progress-meter" >"$WORK/curl-home/.curlrc"
export CURL_HOME="$WORK/curl-home"
# Settings that would change what the README shows come from the README's defaults here.
unset AUTH INSECURE DATA HOST PUBLIC_BASE_URL QUEUE_URL CANCELLED_STATUS_CODE MIN_POLL_INTERVAL_MS \
  MAX_CONCURRENT_EXPORTS MAX_FILE_BYTES JOB_RETENTION_HOURS TOKEN_SIGNING_KEY \
  TOKEN_SIGNING_KEY_SECRET ACCESS_TOKEN_TTL_SECONDS REPEAT_PERIOD ADDITIONAL_RESOURCES DATABASE_SECRET \
  AWS_ENDPOINT_URL B A BIN
log "PORT=$PORT STORAGE_PATH=$STORAGE_PATH"

# --- the session: README.md with every line outside the checked blocks blanked ----------------
# Its line N is README.md's line N, so $LINENO names the README line that failed. The fences and
# line 1 (never in a block) carry the calls into the helpers below.
for ((b = 0; b < NBLOCKS; b++)); do
  o=${B_OPEN[b]} c=${B_CLOSE[b]}
  printf '%s\n' "${LINES[@]:o:c-o-1}" >"$WORK/block-$b.sh"
  printf '%s\t%s\t%s\t%s\n' "${B_KIND[b]}" "$o" "$c" "${B_ARGS[b]}" >"$WORK/block-$b.meta"
done

cat >"$WORK/lib.sh" <<'LIB'
# Helpers for the session (sourced on its line 1). Names start with __rc_ to stay out of the
# README's way; they never rely on set -e (errors inside functions would end the session silently).
__rc_current=-1
__rc_failed=false
__rc_captured=false
__rc_watchdog=""

__rc_say() { echo "check-readme: $*" >&2; }
__rc_meta() { IFS=$'\t' read -r __rc_kind __rc_open __rc_close __rc_args <"$__RC_WORK/block-$1.meta"; }
__rc_where() { __rc_meta "$1"; echo "$__RC_RN:$__rc_open-$__rc_close ($__rc_kind${__rc_args:+ $__rc_args})"; }

# Back to the real stdout; show what the block printed.
__rc_release_stdout() {
  if $__rc_captured; then
    __rc_captured=false
    exec 1>&3 3>&-
    # awk ends the last line too (curl -i leaves the body without a newline).
    if [[ -s "$__RC_WORK/out-$__rc_current" ]]; then awk '{print "  | " $0}' "$__RC_WORK/out-$__rc_current"; fi
  fi
}

# A block that runs longer than its limit is stopped (TERM to the session, trapped below).
__rc_stop_watchdog() {
  if [[ -n "$__rc_watchdog" ]]; then
    kill -TERM -- "-$__rc_watchdog" 2>/dev/null || true
    __rc_watchdog=""
  fi
}
__rc_start_watchdog() {
  __rc_stop_watchdog
  __rc_limit=$1
  setsid bash -c 'sleep "$1"; kill -TERM "$2"' _ "$1" "$$" </dev/null >/dev/null 2>&1 3>&- &
  __rc_watchdog=$!
  echo "$__rc_watchdog" >>"$__RC_WORK/pids"
}
__rc_timed_out() { __rc_fail "still running after $__rc_limit s: stopped"; }

__rc_fail() {
  __rc_failed=true
  __rc_release_stdout
  __rc_say "FAILED $(__rc_where "$__rc_current"): $*"
  exit 1
}

# ERR trap: a README command failed; $1 is its line in README.md (the session's line).
__rc_err() {
  local rc=$1 n=$2
  __rc_fail "$__RC_RN:$n exited with status $rc: $(sed -n "${n}p" "$__RC_README")"
}

__rc_on_exit() {
  local rc=$?
  __rc_stop_watchdog
  if ((rc != 0)) && ! $__rc_failed && ((__rc_current >= 0)); then
    __rc_release_stdout
    __rc_say "FAILED $(__rc_where "$__rc_current"): the session ended with status $rc"
  fi
}

__rc_begin() {
  __rc_current=$1
  __rc_say "block $(__rc_where "$1")"
  __rc_meta "$1"
  if [[ "$__rc_kind" == run ]]; then
    __rc_start_watchdog "$__RC_BLOCK_TIMEOUT"
  else
    __rc_start_watchdog "$((__RC_TIMEOUT + 60))"
  fi
  exec 3>&1 1>"$__RC_WORK/out-$1"
  __rc_captured=true
}

__rc_pass() {
  __rc_stop_watchdog
  echo "$__rc_current" >>"$__RC_WORK/passed"
  __rc_say "ok $(__rc_where "$__rc_current")${1:+: $1}"
}

# Whether GET $1 answers 200.
__rc_answers() { [[ "$(curl -s -o /dev/null -m 5 -w '%{http_code}' "$1" 2>/dev/null)" == 200 ]]; }

# Shows what log $1 got since the last call.
__rc_show_log() {
  local size=0
  if [[ -f "$1" ]]; then size=$(wc -c <"$1"); fi
  if ((size > __rc_shown)); then
    tail -c +"$((__rc_shown + 1))" "$1" | head -c "$((size - __rc_shown))" | sed 's/^/  server| /' >&2
    __rc_shown=$size
  fi
}

# Waits until URL $2 answers 200 while process group $1 lives; streams log $3 meanwhile.
__rc_wait_server() {
  local pid=$1 url=$2 logf=$3 start=$SECONDS
  __rc_shown=0
  while :; do
    __rc_show_log "$logf"
    if __rc_answers "$url"; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      __rc_show_log "$logf"
      __rc_fail "the server exited before answering $url (its output is above)"
    fi
    if ((SECONDS - start > __RC_TIMEOUT)); then
      __rc_fail "$url did not answer within $__RC_TIMEOUT s"
    fi
    sleep 2
  done
}

# A block of kind run-local: the whole block in the background, then wait for GET /metadata.
__rc_run_local() {
  local logf="$__RC_WORK/server-$1.log"
  __rc_say "running it in the background (log $logf; the first release build takes minutes)"
  setsid bash -euo pipefail "$__RC_WORK/block-$1.sh" </dev/null >"$logf" 2>&1 3>&- &
  local pid=$!
  echo "$pid" >>"$__RC_WORK/pids"
  __rc_wait_server "$pid" "http://127.0.0.1:$PORT/metadata" "$logf"
  __rc_release_stdout
  __rc_pass "serves http://127.0.0.1:$PORT/metadata after $((SECONDS - __rc_t0)) s"
}

__rc_port_free() {
  python3 - "$1" <<'PY'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
}

# A serve block's last line: the server, in the background, with the variables exported so far.
__rc_serve() {
  local line=$1 port newport logf="$__RC_WORK/server-$__rc_current.log"
  port=$(grep -oE -- '--port[ =][0-9]+' <<<"$line" | grep -oE '[0-9]+$') \
    || __rc_fail "its last line has no --port N: $line"
  if ! __rc_port_free "$port"; then
    newport=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    __rc_say "port $port is taken on this machine: serving on $newport instead"
    line=${line/--port $port/--port $newport}
    port=$newport
  fi
  setsid bash -c "$line" </dev/null >"$logf" 2>&1 3>&- &
  local pid=$!
  echo "$pid" >>"$__RC_WORK/pids"
  __rc_wait_server "$pid" "http://127.0.0.1:$port/metadata" "$logf"
  __rc_serve_port=$port
}

# --- checks (run by __rc_end with the README's variables) ---
__rc_check_http() {
  local spec=$1 want n codes count
  want=${spec%%x*}
  [[ "$spec" == *x* ]] && n=${spec#*x}
  # A status line starts a line, or follows the previous answer's body (curl -i adds no newline).
  codes=$(grep -aoE '(^|\})HTTP/[0-9.]+ [0-9]{3}( |$)' "$__RC_WORK/out-$__rc_current" \
    | awk '$2 != 100 {print $2}' | tr '\n' ' ')
  count=$(wc -w <<<"$codes")
  ((count > 0)) || { echo "no HTTP status line printed (expected $want)"; return 1; }
  for c in $codes; do
    [[ "$c" == "$want" ]] || { echo "HTTP answers were $codes; expected all $want"; return 1; }
  done
  if [[ -n "${n:-}" ]] && ((count != n)); then
    echo "$count HTTP answers ($codes); expected $n"; return 1
  fi
  echo "$count HTTP answer(s) $want"
}

__rc_check_lambda() {
  local want=$1 codes
  codes=$(grep -aoE '"statusCode": ?[0-9]{3}' "$__RC_WORK/out-$__rc_current" | grep -oE '[0-9]{3}' \
    | paste -sd, -)
  [[ "$codes" == "$want" ]] || { echo "the functions answered '${codes:-nothing}', not $want"; return 1; }
  echo "Lambda answers $codes"
}

__rc_check_kickoff() {
  local first
  first=$(printf '%s\n' "${KICKOFF:-}" | sed -n 1p)
  [[ "$first" =~ ^HTTP/[0-9.]+\ 202 ]] || { echo "the kick-off answered '$first', not 202"; return 1; }
  [[ "${JOB:-}" =~ ^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$ ]] \
    || { echo "JOB='${JOB:-}' is not a job id"; return 1; }
  [[ "${STATUS:-}" == "${B:-}/\$exportstatus?_id=$JOB" ]] \
    || { echo "STATUS='${STATUS:-}' is not \$B/\$exportstatus?_id=\$JOB"; return 1; }
  [[ -n "${CLIENT_ID:-}" && "$CLIENT_ID" != "$JOB" ]] \
    || { echo "CLIENT_ID='${CLIENT_ID:-}' should be the client id, apart from JOB"; return 1; }
  echo "kick-off 202, status URL $STATUS"
}

__rc_check_manifest() {
  [[ "${CODE:-}" == 200 ]] || { echo "the status URL answered ${CODE:-nothing}, not 200"; return 1; }
  python3 - manifest.json "${JOB:-}" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
out = m.get("output") or []
if not out:
    sys.exit("manifest.json has no output[]")
for o in out:
    if "$exportfilerequest?_id=" + sys.argv[2] + "&filename=" not in o.get("url", ""):
        sys.exit("output url %r is not a $exportfilerequest URL of the job" % o.get("url"))
print("manifest 200 with %d output file(s)" % len(out))
PY
}

__rc_check_download() {
  [[ -n "${NAME:-}" && -f "$NAME" ]] || { echo "no downloaded file (NAME='${NAME:-}')"; return 1; }
  python3 - "$NAME" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
if not lines:
    sys.exit("%s is empty" % sys.argv[1])
for i, l in enumerate(lines, 1):
    try:
        r = json.loads(l)
    except ValueError as e:
        sys.exit("%s:%d is not JSON: %s" % (sys.argv[1], i, e))
    if r.get("resourceType") != "Patient":
        sys.exit("%s:%d is a %s, not a Patient" % (sys.argv[1], i, r.get("resourceType")))
print("%s: ndjson, %d Patients" % (sys.argv[1], len(lines)))
PY
}

__rc_check_deleted() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' "${STATUS:-}" -H "${A:-}")
  [[ "$code" == 404 || "$code" == 410 ]] || { echo "after DELETE the status URL answers $code, not 404"; return 1; }
  echo "after DELETE the status URL answers $code"
}

__rc_check_ndjson_dir() {
  python3 - "$1" <<'PY'
import gzip, json, os, sys
d = sys.argv[1]
if not os.path.isdir(d):
    sys.exit("%s was not written" % d)
files, total = 0, 0
for name in sorted(os.listdir(d)):
    path = os.path.join(d, name)
    rtype = name.split(".", 1)[0]
    if not os.path.isfile(path) or rtype == "log" or not (name.endswith(".ndjson") or name.endswith(".ndjson.gz")):
        continue
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt") as f:
        for i, line in enumerate(f, 1):
            r = json.loads(line)
            if r.get("resourceType") != rtype:
                sys.exit("%s:%d holds a %s" % (path, i, r.get("resourceType")))
            total += 1
    files += 1
if files == 0 or total == 0:
    sys.exit("%s holds no ndjson data files: %s" % (d, sorted(os.listdir(d))))
print("%s: %d ndjson file(s), %d resources" % (d, files, total))
PY
}

# "README.md:N: text" of the block's first line matching ERE $1 (the line a failed check is about).
__rc_line_of() {
  local hit
  hit=$(grep -nE -m 1 -- "$1" "$__RC_WORK/block-$__rc_current.sh") || return 0
  echo " (${__RC_RN}:$((__rc_open + ${hit%%:*})): ${hit#*:})"
}

__rc_end() {
  local what=() msg spec about
  __rc_meta "$1"
  if [[ "$__rc_kind" == serve ]]; then
    what+=("serves http://127.0.0.1:$__rc_serve_port/metadata")
  fi
  for spec in $__rc_args; do
    case "$spec" in
      http=*) about='curl -i' msg=$(__rc_check_http "${spec#http=}") ;;
      kickoff) about='^KICKOFF=' msg=$(__rc_check_kickoff) ;;
      manifest) about='CODE=' msg=$(__rc_check_manifest 2>&1) ;;
      download) about='curl .*\$NAME' msg=$(__rc_check_download 2>&1) ;;
      deleted) about='-X DELETE' msg=$(__rc_check_deleted) ;;
      ndjson-dir=*) about="${spec#ndjson-dir=}" msg=$(__rc_check_ndjson_dir "${spec#ndjson-dir=}" 2>&1) ;;
      lambda=*) about='^invoke ' msg=$(__rc_check_lambda "${spec#lambda=}") ;;
      *) __rc_fail "unknown check '$spec'" ;;
    esac || __rc_fail "check $spec$(__rc_line_of "$about"): $msg"
    what+=("$msg")
  done
  __rc_release_stdout
  local joined="" part
  for part in "${what[@]}"; do joined+="${joined:+; }$part"; done
  __rc_pass "$joined"
}
LIB

{
  for ((n = 1; n <= NLINES; n++)); do S[n]=""; done
  # shellcheck disable=SC2016  # expanded in the session, not here
  S[1]='set -euo pipefail; . "$__RC_WORK/lib.sh"; __rc_t0=$SECONDS; trap '"'"'__rc_err $? $LINENO'"'"' ERR; trap __rc_on_exit EXIT; trap __rc_timed_out TERM'
  for ((b = 0; b < NBLOCKS; b++)); do
    o=${B_OPEN[b]} c=${B_CLOSE[b]}
    case "${B_KIND[b]}" in
      skip)
        S[o]="__rc_say 'skipped $RN:$o-$c: ${B_ARGS[b]//\'/}'"
        ;;
      run-local)
        S[o]="__rc_begin $b"
        S[c]="__rc_run_local $b"
        ;;
      run | serve)
        S[o]="__rc_begin $b"
        for ((n = o + 1; n < c; n++)); do S[n]="${LINES[n - 1]}"; done
        if [[ "${B_KIND[b]}" == serve ]]; then
          last=$((c - 1))
          [[ "${LINES[last - 2]}" != *\\ ]] || setup_fail "$RN:$last: a serve block's last line must be a whole command"
          S[last]="__rc_serve $(printf '%q' "${LINES[last - 1]}")"
        fi
        S[c]="__rc_end $b"
        ;;
    esac
  done
  for ((n = 1; n <= NLINES; n++)); do printf '%s\n' "${S[n]}"; done
} >"$WORK/session.sh"

log "running $BLOCKS_TOTAL block(s) of $RN (${SECTIONS[*]}) in one bash session"
__RC_WORK="$WORK" __RC_README="$README" __RC_RN="$RN" __RC_TIMEOUT="$SERVER_TIMEOUT" \
  __RC_BLOCK_TIMEOUT="$BLOCK_TIMEOUT" \
  bash "$WORK/session.sh" </dev/null

# Shared by the scripts in scripts/ (source it; it defines functions only): running as root,
# apt installs, a C compiler for the Rust build, and a local PostgreSQL on 127.0.0.1:5432.

pg_log() { echo "postgres: $*" >&2; }

as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    pg_log "need root or sudo to run: $*"
    return 1
  fi
}

apt_install() {
  echo "apt-get install $*" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# The Rust build needs a C compiler and linker.
ensure_cc() {
  command -v cc >/dev/null 2>&1 || apt_install build-essential
}

# Runs a command as the `postgres` OS user (peer authentication over the socket).
as_postgres() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    sudo -u postgres "$@"
  fi
}

pg_version() { ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1; }
pg_reload() { as_root pg_ctlcluster --skip-systemctl-redirect "$(pg_version)" main reload; }

# Installs PostgreSQL from apt when absent and starts the cluster when it is not answering.
pg_ensure_running() {
  if ! command -v pg_isready >/dev/null 2>&1 || [[ -z "$(pg_version)" ]]; then
    apt_install postgresql
  fi
  if pg_isready -q -h 127.0.0.1 -p 5432; then
    return 0
  fi
  local ver
  ver="$(pg_version)"
  [[ -n "$ver" ]] || { pg_log "no cluster configuration under /etc/postgresql"; return 1; }
  [[ -d "/etc/postgresql/$ver/main" ]] || as_root pg_createcluster "$ver" main
  pg_log "starting PostgreSQL $ver/main"
  as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p 5432 && return 0
    sleep 0.5
  done
  pg_log "PostgreSQL did not come up on 127.0.0.1:5432"
  return 1
}

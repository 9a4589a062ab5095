#!/usr/bin/env bash
# Start Azurite's blob service (Azure Blob Storage emulator) on 127.0.0.1 for integration tests.
#
# usage: start-azurite.sh DATA_DIR [PORT]
#   PORT            default $AZURITE_PORT, else 10000 (Azurite's usual blob port)
#   AZURITE_BIN     an azurite-blob executable to use; default: this project's node_modules/.bin/azurite-blob,
#                   and when that is missing Azurite 3.35.0 is installed once with npm into $AZURITE_PREFIX
#                   (default ~/.cache/test-servers/azurite-3.35.0) and shared by all DATA_DIRs
#   AZURITE_EXTRA_ARGS  more options for azurite-blob, e.g. "--loose" or "--debug /tmp/az-debug.log"
#
# Needs Node.js and npm (3.35.0 is the newest Azurite that runs on Node 20; 3.36 needs Node 21+).
# Blobs go to DATA_DIR/blob, the pid file and log to DATA_DIR/run. Idempotent: when this DATA_DIR's
# Azurite already runs on PORT it only prints the details. stop-azurite.sh DATA_DIR stops it.
#
# stdout carries only KEY='value' lines, ready for eval (also written to DATA_DIR/endpoints.env):
#   AZURE_ACCOUNT_NAME AZURE_ACCOUNT_KEY AZURE_BLOB_HOST AZURE_BLOB_PORT AZURE_BLOB_URL
#   AZURE_CONNECTION_STRING
# Progress and errors go to stderr.
set -euo pipefail

version=3.35.0
log() { printf 'start-azurite: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [ $# -lt 1 ] || [ $# -gt 2 ]; then echo "usage: start-azurite.sh DATA_DIR [PORT]" >&2; exit 2; fi
port=${2:-${AZURITE_PORT:-10000}}
if ! [[ $port =~ ^[0-9]+$ ]] || [ "$port" -lt 1024 ] || [ "$port" -gt 65535 ]; then
  die "PORT must be a number from 1024 to 65535, not '$port'"
fi
mkdir -p "$1"
data=$(cd "$1" && pwd -P)
run=$data/run
mkdir -p "$run" "$data/blob"

# one start or stop at a time per DATA_DIR (parallel test workers may all call this script)
exec 8>"$run/lock"
flock -w 300 8 || die "waited 5 minutes for another start or stop of $data"
kit=start-azurite
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
t0=$EPOCHREALTIME


# ---- Azurite itself
command -v node >/dev/null || die "node is not in PATH (Node.js 20 or newer is needed)"
# this project's devDependency (node_modules/.bin/azurite-blob) is the default when present
repo_bin=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../.." && pwd)/node_modules/.bin/azurite-blob
if [ -z "${AZURITE_BIN:-}" ] && [ -x "$repo_bin" ]; then AZURITE_BIN=$repo_bin; fi
if [ -n "${AZURITE_BIN:-}" ]; then
  [ -x "$AZURITE_BIN" ] || die "AZURITE_BIN=$AZURITE_BIN is not executable"
  bin=$AZURITE_BIN
else
  prefix=${AZURITE_PREFIX:-${XDG_CACHE_HOME:-$HOME/.cache}/test-servers/azurite-$version}
  bin=$prefix/node_modules/azurite/dist/src/blob/main.js
  installed() { [ -f "$bin" ] && [ "$(node -p "require('$prefix/node_modules/azurite/package.json').version" 2>/dev/null)" = "$version" ]; }
  if ! installed; then
    command -v npm >/dev/null || die "npm is not in PATH"
    mkdir -p "$prefix"
    exec 9>"$prefix.lock"
    flock 9 # one install at a time when several test workers start at once
    if ! installed; then
      log "installing azurite@$version with npm into $prefix (once; log: $prefix/npm.log)"
      printf '{"private": true, "dependencies": {"azurite": "%s"}}\n' "$version" >"$prefix/package.json"
      (cd "$prefix" && npm install --no-audit --no-fund --loglevel=error) >"$prefix/npm.log" 2>&1 \
        || { tail -n 20 "$prefix/npm.log" >&2; die "npm install azurite@$version failed"; }
      installed || die "azurite@$version is not usable after the install (see $prefix/npm.log)"
    fi
    flock -u 9
    exec 9>&-
  fi
fi

# ---- already running on this port? then only report
if alive azurite && [ "$(cat "$run/azurite.port" 2>/dev/null)" = "$port" ]; then
  log "already running (pid $(cat "$run/azurite.pid"))"
else
  stop_one azurite
  port_busy "$port" && die "port $port is already in use; pass another PORT"
  # --disableTelemetry: otherwise Azurite contacts an outside host at start-up.
  # --skipApiVersionCheck: current SDKs send a newer x-ms-version than this Azurite knows.
  # shellcheck disable=SC2086
  setsid node "$bin" --blobHost 127.0.0.1 --blobPort "$port" --location "$data/blob" \
    --disableTelemetry --skipApiVersionCheck ${AZURITE_EXTRA_ARGS:-} </dev/null >"$run/azurite.log" 2>&1 8>&- &
  pid=$!
  echo "$pid" >"$run/azurite.pid"
  starttime "$pid" >"$run/azurite.starttime" || true
  echo "$port" >"$run/azurite.port"
  for _ in $(seq 300); do
    alive azurite || { tail -n 15 "$run/azurite.log" >&2; rm -f "$run/azurite.pid" "$run/azurite.starttime"; die "Azurite exited"; }
    grep -q "successfully listens" "$run/azurite.log" 2>/dev/null && port_busy "$port" && break
    sleep 0.1
  done
  grep -q "successfully listens" "$run/azurite.log" || { stop_one azurite; die "Azurite did not start listening in 30 s"; }
  log "ready in $(elapsed) s on 127.0.0.1:$port (log: $run/azurite.log)"
fi
# Azurite's fixed development account and key (public, the same in every Azurite)
key='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
url=http://127.0.0.1:$port/devstoreaccount1
cat <<EOF | tee "$data/endpoints.env"
AZURE_ACCOUNT_NAME='devstoreaccount1'
AZURE_ACCOUNT_KEY='$key'
AZURE_BLOB_HOST='127.0.0.1'
AZURE_BLOB_PORT='$port'
AZURE_BLOB_URL='$url'
AZURE_CONNECTION_STRING='DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=$key;BlobEndpoint=$url;'
EOF

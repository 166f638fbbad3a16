#!/usr/bin/env bash
# Make sure the peers of `make bench PEERS=1` can run (idempotent):
#  - redis-server (Debian package; `apt-get update` only if the install fails without it). Nothing is
#    started here: bench/peers/run_all.py starts its own redis-server on a free loopback port and stops it.
#  - a virtualenv (first argument, default .venv-peers) with Celery, RQ and Dask from
#    bench/peers/requirements.txt, reinstalled when that file changes.
# Prints one line saying what it did; exits non-zero with a clear message if it can't.
set -u
VENV=${1:-.venv-peers}
REQS=bench/peers/requirements.txt
PYTHON=${PYTHON:-python3}

die() { echo "ensure-peers: ERROR: $*" >&2; exit 1; }

did=()
if ! command -v redis-server >/dev/null 2>&1; then
    [ "$(id -u)" -eq 0 ] || die "redis-server is not installed and this is not root: apt-get install redis-server"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q redis-server >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -q redis-server >/dev/null 2>&1; } \
        || die "apt-get install redis-server failed"
    command -v redis-server >/dev/null 2>&1 || die "redis-server still not found after installing it"
    did+=("installed redis-server")
fi
STAMP=$VENV/.installed-stamp
if [ ! -f "$STAMP" ] || [ "$REQS" -nt "$STAMP" ]; then
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV" || die "cannot create $VENV"
    "$VENV/bin/python" -m pip install -q -r "$REQS" || die "pip install -r $REQS into $VENV failed"
    touch "$STAMP"
    did+=("installed the peers into $VENV")
fi
if [ ${#did[@]} -eq 0 ]; then
    echo "ensure-peers: redis-server and $VENV already there"
else
    echo "ensure-peers: $(IFS=';'; echo "${did[*]}")"
fi

#!/usr/bin/env bash
# Make a Toxiproxy server available for the harness and its tests (idempotent; run as root to build).
#
# The order and the build live in harness/toxiserver.py (one implementation): toxiproxy-server on PATH,
# else the cache (~/.cache/jobgrid/toxiproxy-2.12.0), else built there once from shared/toxiproxy/build.sh
# beside the repository (Debian's Go toolchain, offline, about a minute); else one clear error.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
exec "$PY" -m harness.toxiserver

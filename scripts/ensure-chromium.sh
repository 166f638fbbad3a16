#!/usr/bin/env bash
# Install Debian's Chromium for the dashboard's browser test, if it is missing. Idempotent.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  echo "ensure-chromium: /usr/bin/chromium present"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "ensure-chromium: /usr/bin/chromium is missing and we are not root: apt-get install chromium" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
echo "ensure-chromium: installed $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"

#!/usr/bin/env bash
# Install Debian's `chromium` (headless browser) for the HTML report test (tests/integration/
# test_diagnose_html.py renders `stream-monitor diagnose --html` and screenshots it). Nothing is started.
#
#   scripts/install_chromium.sh      no-op when `chromium` (or chromium-browser) is on PATH
#
# Needs root (or passwordless sudo) for apt-get. On a system without apt-get it says what is missing and
# exits 0: the test then skips locally, and fails under CI=true.
set -euo pipefail

log() { printf '[chromium] %s\n' "$*" >&2; }

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  log "chromium is missing and this is not a Debian/Ubuntu system: install chromium for the HTML report test"
  exit 0
fi
sudo=()
if [[ "$(id -u)" != 0 ]]; then
  if ! command -v sudo >/dev/null 2>&1 || ! sudo -n true 2>/dev/null; then
    log "chromium is missing and installing it needs root: run 'apt-get install -y chromium' as root"
    exit 0
  fi
  sudo=(sudo -n)
fi
export DEBIAN_FRONTEND=noninteractive
if ! ${sudo[@]+"${sudo[@]}"} apt-get install -y -q --no-install-recommends chromium </dev/null >&2; then
  log "apt-get install chromium failed; running apt-get update and retrying"
  ${sudo[@]+"${sudo[@]}"} apt-get update -q </dev/null >&2
  ${sudo[@]+"${sudo[@]}"} apt-get install -y -q --no-install-recommends chromium </dev/null >&2
fi
command -v chromium >/dev/null 2>&1 || { log "ERROR: chromium still not on PATH after installing"; exit 1; }

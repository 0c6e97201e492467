#!/usr/bin/env bash
# Install Debian's `chromium` (headless browser) for the HTML report test (tests/unit/test_diagnose_html.py
# renders `stream-monitor diagnose --html` and screenshots it). Nothing is started.
#
#   scripts/install_chromium.sh          no-op when `chromium` (or chromium-browser) is on PATH
#   scripts/install_chromium.sh --plan   print "install: ..." (or a "note: ..."), nothing when chromium is there
#
# It installs system-wide with apt-get: chromium and the libraries it needs, ~124 MB download and
# ~414 MB on disk (`apt-get install --assume-no --no-install-recommends chromium` on Debian 12,
# 2026-12-04). Needs root (or passwordless sudo). On a system without apt-get, or without root, it says
# what is missing and exits 0: the test then skips locally, and fails under CI=true.
#
# SM_SKIP_BROWSER_TESTS=1 skips the install (and the test skips, saying why); under CI=true the switch is
# ignored, CI always runs the browser test (.ci/run refuses to start with it set).
set -euo pipefail

log() { printf '[chromium] %s\n' "$*" >&2; }

SIZE="~124 MB download, ~414 MB on disk"

have_chromium() {
  command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1
}

skipped() { # the user's switch, never under CI
  [[ "${SM_SKIP_BROWSER_TESTS:-}" == 1 && "${CI:-}" != true ]]
}

can_install() { # -> 0 with apt-get and root (or passwordless sudo); sets sudo
  sudo=()
  command -v apt-get >/dev/null 2>&1 || return 1
  if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null || return 1
    sudo=(sudo -n)
  fi
  return 0
}

if [[ "${1:-}" == "--plan" ]]; then
  if have_chromium; then
    exit 0
  elif skipped; then
    echo "note: chromium is not installed (SM_SKIP_BROWSER_TESTS=1) and the HTML report test is skipped"
  elif can_install; then
    echo "install: Debian's chromium and the libraries it needs, system-wide with apt-get ($SIZE); SM_SKIP_BROWSER_TESTS=1 skips it and the HTML report test"
  else
    echo "note: chromium is missing and cannot be installed here (needs apt-get and root): the HTML report test will skip"
  fi
  exit 0
fi

if have_chromium; then
  exit 0
fi
if skipped; then
  log "SM_SKIP_BROWSER_TESTS=1: not installing chromium; the HTML report test is skipped"
  exit 0
fi
if [[ "${SM_SKIP_BROWSER_TESTS:-}" == 1 ]]; then
  log "SM_SKIP_BROWSER_TESTS=1 is ignored under CI=true: CI runs the browser test"
fi
if ! can_install; then
  if command -v apt-get >/dev/null 2>&1; then
    log "chromium is missing and installing it needs root: run 'apt-get install -y chromium' as root"
  else
    log "chromium is missing and this is not a Debian/Ubuntu system: install chromium for the HTML report test"
  fi
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
log "installing Debian's chromium with apt-get ($SIZE, system-wide)"
if ! ${sudo[@]+"${sudo[@]}"} apt-get install -y -q --no-install-recommends chromium </dev/null >&2; then
  log "apt-get install chromium failed; running apt-get update and retrying"
  ${sudo[@]+"${sudo[@]}"} apt-get update -q </dev/null >&2
  ${sudo[@]+"${sudo[@]}"} apt-get install -y -q --no-install-recommends chromium </dev/null >&2
fi
command -v chromium >/dev/null 2>&1 || {
  log "ERROR: chromium still not on PATH after installing"
  exit 1
}

#!/usr/bin/env bash
# Install promtool and amtool (Prometheus / Alertmanager command-line tools) for the rule tests, WITHOUT
# installing or starting a Prometheus or Alertmanager daemon.
#
#   scripts/install_promtool.sh          install into $STREAM_MONITOR_CACHE/bin (default ~/.cache/stream-monitor/bin)
#   scripts/install_promtool.sh --path   print the directory the tools are in (install first if missing)
#   scripts/install_promtool.sh --plan   print what an install would add ("install: ..."; nothing when both are there)
#
# Debian's `prometheus` and `prometheus-alertmanager` packages ship the tools, but installing them with
# apt-get also creates a system user and starts daemons listening on 0.0.0.0 (9090, 9093/9094). So this
# script only downloads the two .deb files (`apt-get download`, no root needed for that) and extracts the
# two binaries with `dpkg-deb -x`: no maintainer script runs, nothing listens. Both are Go binaries that
# need nothing but libc. A promtool/amtool already on PATH is used as is.
set -euo pipefail

CACHE_DIR="${STREAM_MONITOR_CACHE:-${HOME:?HOME is not set; set STREAM_MONITOR_CACHE}/.cache/stream-monitor}"
BIN_DIR="$CACHE_DIR/bin"

log() { printf '[promtool] %s\n' "$*" >&2; }
die() {
  printf '[promtool] ERROR: %s\n' "$*" >&2
  exit 1
}

have() { # tool -> 0 when on PATH or already installed here
  command -v "$1" >/dev/null 2>&1 || [[ -x "$BIN_DIR/$1" ]]
}

download() { # package -> .deb in the current directory; apt-get update once when the lists are stale
  apt-get download -q "$1" </dev/null >&2 && return 0
  log "apt-get download $1 failed; running apt-get update and retrying"
  local sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "apt-get update needs root; run it as root, then retry"
    sudo=(sudo -n)
  fi
  ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >&2 ||
    die "apt-get update failed"
  apt-get download -q "$1" </dev/null >&2 || die "apt-get download $1 failed"
}

install_tools() {
  if have promtool && have amtool; then
    return 0
  fi
  command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1 ||
    die "promtool/amtool are missing and this is not a Debian/Ubuntu system; install Prometheus' promtool and Alertmanager's amtool and put them on PATH"
  local tmp
  tmp="$(mktemp -d)"
  chmod 755 "$tmp" # apt-get download fetches as the _apt user when it can
  # shellcheck disable=SC2064  # expand now: tmp is local
  trap "rm -rf '$tmp'" RETURN
  mkdir -p "$BIN_DIR"
  local tool package
  for tool in promtool amtool; do
    have "$tool" && continue
    case "$tool" in
      promtool) package=prometheus ;;
      amtool) package=prometheus-alertmanager ;;
    esac
    log "extracting $tool from Debian's $package package (no daemon is installed or started)"
    (cd "$tmp" && download "$package")
    local deb
    deb="$(find "$tmp" -maxdepth 1 -name "${package}_*.deb" | head -n 1)"
    [[ -n "$deb" ]] || die "no ${package}_*.deb downloaded"
    dpkg-deb -x "$deb" "$tmp/$package"
    [[ -x "$tmp/$package/usr/bin/$tool" ]] || die "$deb has no usr/bin/$tool"
    install -m 0755 "$tmp/$package/usr/bin/$tool" "$BIN_DIR/$tool.tmp"
    mv -f "$BIN_DIR/$tool.tmp" "$BIN_DIR/$tool"
  done
}

# Sizes: `apt-cache show prometheus prometheus-alertmanager` (Size) and `du -sh` of the two binaries,
# Debian 12, 2026-12-04.
if [[ "${1:-}" == "--plan" ]]; then
  if ! have promtool || ! have amtool; then
    echo "install: promtool + amtool into $BIN_DIR, taken out of Debian's prometheus and prometheus-alertmanager .debs (~30 MB download, ~64 MB on disk; no daemon is installed)"
  fi
  exit 0
fi

install_tools
for tool in promtool amtool; do
  if command -v "$tool" >/dev/null 2>&1; then
    log "$tool: $(command -v "$tool") ($("$tool" --version 2>&1 | head -n 1))"
  else
    log "$tool: $BIN_DIR/$tool ($("$BIN_DIR/$tool" --version 2>&1 | head -n 1))"
  fi
done
if [[ "${1:-}" == "--path" ]]; then
  echo "$BIN_DIR"
fi

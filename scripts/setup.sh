#!/usr/bin/env bash
# One idempotent set-up for a Debian/Ubuntu host: system packages, tracefs/debugfs,
# kernel headers for bcc, and the project venv (.venv, sees the system's bcc).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*" >&2; }

[ "$(id -u)" -eq 0 ] || { echo "setup: must run as root (apt, mounts, headers)" >&2; exit 1; }

# System packages: bcc's Python module comes from the distribution (python3-bpfcc), not
# PyPI; nftables and iproute2 drive the real-kernel tests, prometheus (server and
# promtool) checks the exporter, dashboard and alert rules.
scripts/apt-install.sh python3-bpfcc python3-venv nftables iproute2 util-linux openssl prometheus

scripts/mount-tracefs.sh
scripts/kernel-headers.sh

# The venv must see /usr/lib/python3/dist-packages (bcc), so it is built from Debian's
# python3 with --system-site-packages, whatever python3 comes first on PATH.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
  log "creating .venv"
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$stamp" ]; then
  log "installing tcptrace-bpf into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  rm -f .venv/.installed-*; touch "$stamp"
fi
log "ready: .venv/bin/tcptrace-bpf"

#!/usr/bin/env bash
# One idempotent set-up for a Debian/Ubuntu host: system packages, tracefs/debugfs,
# kernel headers for bcc, and the project venv (.venv, sees the system's bcc).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*" >&2; }

[ "$(id -u)" -eq 0 ] || { echo "setup: must run as root (apt, mounts, headers)" >&2; exit 1; }

# System packages. bcc's Python module comes from the distribution (python3-bpfcc), not
# PyPI. The rest is every external program `make test` runs (audited from tests/, bench/,
# scripts/; a test that finds one missing fails under CI=true):
#   nft (nftables), ip (iproute2)             - scenarios shape handshakes in their own netns
#   unshare, nsenter, setpriv (util-linux)    - namespaces, least-privilege test
#   openssl                                   - TLS certificate for the exporter test
#   prometheus, promtool (prometheus)         - real scrape, dashboard queries, alert rules
#   bpftool                                   - nothing of ours stays loaded; bench's foreign-program check
#   gcc, libc6-dev                            - bench smoke test builds bench/churn.c; the
#                                               compiled --json consumer (tcptrace_bpf/_fastpath.c)
#   python3-dev                               - Python.h for that consumer
#   tcpstates-bpfcc (bpfcc-tools)             - bench smoke test's reference row
#   git                                       - bench records the revision it measured
#   systemd-analyze (systemd)                 - verifies deploy/systemd's unit
# (`make image-test` installs what only it needs: mmdebstrap, podman, runc.)
scripts/apt-install.sh python3-bpfcc python3-venv nftables iproute2 util-linux openssl \
  prometheus bpftool gcc libc6-dev python3-dev bpfcc-tools git systemd

scripts/mount-tracefs.sh
scripts/kernel-headers.sh

# The venv must see /usr/lib/python3/dist-packages (bcc), so it is built from Debian's
# python3 with --system-site-packages, whatever python3 comes first on PATH.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
  log "creating .venv"
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
# keyed by what the install builds too (the compiled consumer and the header it includes):
# a change to either rebuilds it
stamp=.venv/.installed-$(cat pyproject.toml setup.py tcptrace_bpf/_fastpath.c bpf/tcptrace.h \
  | sha256sum | cut -c1-16)
if [ ! -e "$stamp" ]; then
  log "installing tcptrace-bpf into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  rm -f .venv/.installed-*; touch "$stamp"
fi
log "ready: .venv/bin/tcptrace-bpf"

#!/usr/bin/env bash
# `make image-test`: build the image (deploy/container/build.sh), then run tests/container
# against it: the exporter under podman with only what deploy/container/podman-run.sh gives it,
# a real Prometheus scraping it while real handshakes run, and both ways to kernel headers.
# Usage: scripts/image-test.sh [PYTEST ARGS]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
log() { printf 'image-test: %s\n' "$*" >&2; }
TCPTRACE_IMAGE=$(bash deploy/container/build.sh)
export TCPTRACE_IMAGE

# This host's own needs, found by trial, not assumed (README "Fleet"): crun refuses a cgroup
# v1/v2 hybrid layout ("cgroups in hybrid mode not supported"), runc runs it; and a sandbox may
# refuse to raise RLIMIT_NPROC/NOFILE to podman's defaults (setrlimit EPERM), when the caller's
# own open-files limit and a small process limit do.
global=() run=()
try() { podman "${global[@]}" run --rm "${run[@]}" "$TCPTRACE_IMAGE" --help >/dev/null 2>"$err"; }
err=$(mktemp); trap 'rm -f "$err"' EXIT
for _ in 1 2 3; do  # each failure names one need; crun reports the rlimit one first
  try && break
  if grep -q "hybrid mode" "$err"; then global=(--runtime runc)
  elif grep -q "setrlimit\|rlimits" "$err"; then
    run=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096)
  else break; fi
done
try || { log "podman cannot run $TCPTRACE_IMAGE here: $(tail -n1 "$err")"; exit 1; }
export PODMAN_GLOBAL_OPTS="${global[*]}" PODMAN_RUN_OPTS="${run[*]}"
log "running $TCPTRACE_IMAGE with podman ${PODMAN_GLOBAL_OPTS:-(defaults)} run ${PODMAN_RUN_OPTS:-(defaults)}"
.venv/bin/python -m pytest -ra -p no:cacheprovider tests/container "$@"

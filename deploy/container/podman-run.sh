#!/usr/bin/env bash
# Run the tcptrace-bpf image with the least it needs (README "Fleet": each item measured by
# `make image-test`, which runs this script):
#   --cap-drop all --cap-add CAP_BPF,CAP_PERFMON  load programs and maps; attach, read kernel memory
#   seccomp: the runtime's default profile plus bpf (with CAP_BPF) and perf_event_open (with
#            CAP_PERFMON) - deploy/container/seccomp.py; older profiles grant them only with SYS_ADMIN
#   /sys/kernel/debug (ro)  tracepoint ids (bcc reads debugfs/tracing); the container's own sysfs
#                       already has /sys/kernel/btf
#   headers cache (ro)  a tree for bcc on hosts without packaged headers (`headers` builds it)
#   /lib/modules, /usr/src (ro, if the host has them)  the distro's own headers
# Usage: podman-run.sh [PODMAN RUN OPTIONS...] [-- TOOL ARGS...]; TCPTRACE_IMAGE picks the image,
# PODMAN_GLOBAL_OPTS adds options before `run` (e.g. --runtime runc), PODMAN_RUN_OPTS after it
# (a host's own needs, such as --ulimit: scripts/image-test.sh says when).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
image=$("$here/image-name.sh")
cache=${TCPTRACE_HEADERS_ROOT:-/var/cache/tcptrace-bpf/kernel-headers}

opts=() args=()
while [ $# -gt 0 ]; do
  if [ "$1" = -- ]; then shift; args=("$@"); break; fi
  opts+=("$1"); shift
done

profile=/run/tcptrace-bpf/seccomp.json
mkdir -p "$(dirname "$profile")" "$cache"
python3 "$here/seccomp.py" > "$profile.tmp" && mv "$profile.tmp" "$profile"

mounts=(-v /sys/kernel/debug:/sys/kernel/debug:ro -v "$cache:/var/cache/tcptrace-bpf/kernel-headers:ro")
for d in /lib/modules /usr/src; do [ -d "$d" ] && mounts+=(-v "$d:$d:ro"); done

# shellcheck disable=SC2086  # the PODMAN_*_OPTS are lists of words
exec podman ${PODMAN_GLOBAL_OPTS:-} run ${PODMAN_RUN_OPTS:-} --cap-drop all \
  --cap-add CAP_BPF,CAP_PERFMON --security-opt "seccomp=$profile" "${mounts[@]}" "${opts[@]}" \
  "$image" "${args[@]}"

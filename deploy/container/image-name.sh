#!/usr/bin/env bash
# The image's name, for build.sh and podman-run.sh alike: TCPTRACE_IMAGE, else
# localhost/tcptrace-bpf:<the version in pyproject.toml>.
set -euo pipefail
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$(dirname "$0")/../../pyproject.toml")
echo "${TCPTRACE_IMAGE:-localhost/tcptrace-bpf:$version}"

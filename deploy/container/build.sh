#!/usr/bin/env bash
# `make image`: an OCI image of tcptrace-bpf built only from Debian packages and this repo, no
# base image from a registry. mmdebstrap makes a trixie root (trixie ships bcc, typer and
# prometheus-client in versions the project accepts, so nothing comes from PyPI), the
# project's wheel is unpacked into it, and `podman import` turns the tarball into an image.
# (Building that wheel fetches setuptools, a build tool, from PyPI; nothing of it is in the image.)
# Prints the image name on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
log() { printf 'image: %s\n' "$*" >&2; }
[ "$(id -u)" -eq 0 ] || { log "must run as root (mmdebstrap --mode=root, podman)"; exit 1; }

"$repo/scripts/apt-install.sh" mmdebstrap debian-archive-keyring podman runc
image=$("$here/image-name.sh")
version=${image##*:}
mirror=$("$repo/scripts/debian-mirror.sh")
work=$(mktemp -d /var/tmp/tcptrace-image.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The package exactly as `pip install .` ships it (the BPF C files are package data).
"$repo/.venv/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps \
  -w "$work" "$repo" >&2
wheel=$(ls "$work"/tcptrace_bpf-*.whl)

# File times come from the commit being built, not the build's clock.
SOURCE_DATE_EPOCH=$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)
export SOURCE_DATE_EPOCH
install_hook='set -e
site="$1/usr/local/lib/python3/dist-packages"
mkdir -p "$site"
python3 -m zipfile -e "'"$wheel"'" "$site"
rm -rf "$site"/tcptrace_bpf-*.dist-info/RECORD
install -m 0755 "'"$here"'/entrypoint.sh" "$1/usr/local/bin/tcptrace-bpf-image"
mkdir -p "$1/usr/local/lib/tcptrace-bpf"
install -m 0755 "'"$repo"'"/scripts/kernel-headers.sh "'"$repo"'"/scripts/apt-install.sh \
  "'"$repo"'"/scripts/debian-mirror.sh "$1/usr/local/lib/tcptrace-bpf/"'
log "building a trixie root from $mirror with $(basename "$wheel")"
mmdebstrap --quiet --variant=minbase --mode=root --format=tar \
  --include=python3,python3-bpfcc,python3-typer,python3-rich,python3-prometheus-client \
  --customize-hook="$install_hook" \
  --customize-hook='rm -rf "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/usr/share/locale/* "$1"/var/cache/apt/*.bin' \
  trixie "$work/root.tar" "$mirror"

# Debian's site dir for /usr/local is dist-packages under python3.X; a version-free path plus
# PYTHONPATH keeps the image independent of trixie's Python minor version.
previous=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
podman import --quiet \
  --change 'ENV PYTHONPATH=/usr/local/lib/python3/dist-packages' \
  --change 'ENV TCPTRACE_HEADERS_ROOT=/var/cache/tcptrace-bpf/kernel-headers' \
  --change 'ENTRYPOINT ["/usr/local/bin/tcptrace-bpf-image"]' \
  --change 'CMD ["export", "--listen", "0.0.0.0:9725"]' \
  --change 'EXPOSE 9725/tcp' \
  --change "LABEL org.opencontainers.image.title=tcptrace-bpf org.opencontainers.image.version=$version" \
  "$work/root.tar" "$image" >/dev/null
# the tag moved to the new image: the old one would stay behind, 366 MB each build
if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "$image")" ]; then
  podman rmi "$previous" >/dev/null 2>&1 || log "kept the previous image $previous (in use)"
fi
log "built $image ($(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
echo "$image"

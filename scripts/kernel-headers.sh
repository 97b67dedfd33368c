#!/usr/bin/env bash
# Give bcc a kernel headers tree. Order of preference:
#   1. /lib/modules/$KV/build already exists (distro headers installed): nothing to do.
#   2. The distribution ships linux-headers-$KV: install it.
#   3. Otherwise (custom kernels, like the CI machine): build a headers tree from Debian's
#      linux-source with the running kernel's /proc/config.gz, into $TCPTRACE_HEADERS_DIR.
# Struct layouts in such a tree may differ from the running kernel; the tracer reads every
# struct offset from BTF instead, so the tree only has to make bcc's compile work.
set -euo pipefail
KV=$(uname -r)
ROOT=${TCPTRACE_HEADERS_ROOT:-/var/cache/tcptrace-bpf/kernel-headers}
DEST=$ROOT/$KV
SRC_PKG=${TCPTRACE_LINUX_SOURCE:-linux-source-6.12}
SUITE=${TCPTRACE_SOURCE_SUITE:-trixie}
log() { printf 'kernel-headers: %s\n' "$*" >&2; }

# The test tcptrace_bpf/loader.py kernel_headers() makes: Debian's split packages put only
# include/{config,generated} under build/ (the rest is in build/../*-common, which bcc finds).
if [ -d "/lib/modules/$KV/build/include" ]; then
  log "using /lib/modules/$KV/build"; exit 0
fi
if [ -e "$DEST/.ready" ]; then log "using $DEST"; exit 0; fi
# In the image (deploy/container/entrypoint.sh) a package would go into the container's own
# throw-away root, never reaching the host: only a tree built into the cache helps there.
if [ -z "${TCPTRACE_HEADERS_NO_INSTALL:-}" ] && apt-cache show "linux-headers-$KV" >/dev/null 2>&1; then
  "$(dirname "$0")/apt-install.sh" "linux-headers-$KV"
  exit 0
fi
[ -r /proc/config.gz ] || { log "no headers for $KV and no /proc/config.gz to build them from: install the distribution's linux-headers-$KV on this host"; exit 1; }

log "no headers packaged for $KV: building a tree from $SUITE's $SRC_PKG (about a minute)"
"$(dirname "$0")/apt-install.sh" make gcc flex bison bc libelf-dev libssl-dev xz-utils ca-certificates
work=$(mktemp -d /var/tmp/tcptrace-headers.XXXXXX)
trap 'rm -rf "$work"' EXIT
# A private apt configuration for $SUITE: nothing is installed on the system from it.
# The mirror is the one this host already uses for Debian.
mirror=$("$(dirname "$0")/debian-mirror.sh")
mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $SUITE main" > "$work/apt/sources.list"
aptopts=(-o Dir::Etc::SourceList="$work/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
         -o Dir::State::Lists="$work/apt/lists" -o Dir::Cache="$work/apt/cache"
         -o APT::Get::List-Cleanup=0 -qq)
apt-get "${aptopts[@]}" update
(cd "$work" && apt-get "${aptopts[@]}" download "$SRC_PKG")
dpkg-deb --fsys-tarfile "$work"/${SRC_PKG}_*.deb | tar -x -C "$work" --wildcards '*.tar.xz'
tarball=$(find "$work/usr/src" -name 'linux-source-*.tar.xz' | head -n1)
tar -xJf "$tarball" -C "$work"
tree=$(find "$work" -maxdepth 1 -type d -name 'linux-source-*' | head -n1)
zcat /proc/config.gz > "$tree/.config"
make -s -C "$tree" olddefconfig >/dev/null
make -s -C "$tree" -j"$(nproc)" prepare >/dev/null
# libbcc force-includes its own (older) uapi/linux/bpf.h; newer include/linux/bpf.h then
# misses types. Pull in the tree's uapi bpf.h first when compiling BPF programs.
cat >> "$tree/include/linux/kconfig.h" <<'KC'
#if defined(__BPF_TRACING__) && !defined(__ASSEMBLY__)
#include <uapi/linux/bpf.h>
#endif
KC
rm -rf "$DEST.tmp"; mkdir -p "$DEST.tmp/arch/x86"
cp -a "$tree/include" "$DEST.tmp/"
cp -a "$tree/arch/x86/include" "$DEST.tmp/arch/x86/"
cp -a "$tree/.config" "$tree/Makefile" "$DEST.tmp/"
echo "$SRC_PKG from $SUITE, config of $KV" > "$DEST.tmp/.ready"
rm -rf "$DEST"; mv "$DEST.tmp" "$DEST"
log "headers tree ready at $DEST"

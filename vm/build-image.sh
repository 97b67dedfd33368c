#!/usr/bin/env bash
# Build (once, cached outside the repo) the VM that runs the real-kernel tests on Debian's
# own kernel: a trixie root file system with bcc, the project's Python deps, iproute2 and
# nftables, plus Debian's newest linux-image-*-cloud-amd64 and its exactly matching headers.
# Prints the image directory (vmlinuz, root.img, kernel-version) on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CACHE=${TCPTRACE_VM_CACHE:-/var/cache/tcptrace-bpf/vm}
SUITE=trixie
log() { printf 'vm-build: %s\n' "$*" >&2; }

# The cache key covers everything that goes into the image: change a script, get a new image.
key=$(cat "$here/build-image.sh" "$here/guest-boot.sh" | sha256sum | cut -c1-16)
out=$CACHE/image-$key
if [ -e "$out/.ready" ]; then log "cached image $out"; echo "$out"; exit 0; fi

"$here/../scripts/apt-install.sh" mmdebstrap e2fsprogs debian-archive-keyring
# The Debian mirror this host already uses (its trixie suite; bookworm's keyring signs it).
mirror=${TCPTRACE_VM_MIRROR:-$("$here/../scripts/debian-mirror.sh")}
work=$(mktemp -d /var/tmp/tcptrace-vm.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root

# Kernel image and headers are unpacked with dpkg-deb -x, not installed: installing the
# headers through apt drags in initramfs-tools, udev and gcc (200 MB more, nothing used).
# The kernel is booted directly (-kernel): root on NVMe and ext4 are built in, no initrd.
kernel_hook='set -e
kv=$(chroot "$1" apt-cache depends linux-image-cloud-amd64 | sed -n "s/.*Depends: linux-image-\(.*-cloud-amd64\)$/\1/p" | head -n1)
[ -n "$kv" ] || { echo "no linux-image-*-cloud-amd64 in trixie" >&2; exit 1; }
common=${kv%-cloud-amd64}-common
mkdir -p "$1/tmp/k" && chmod 777 "$1/tmp/k"  # apt downloads as _apt
chroot "$1" sh -c "cd /tmp/k && apt-get download -qq linux-image-$kv linux-headers-$kv linux-headers-$common"
for deb in "$1"/tmp/k/*.deb; do dpkg-deb -x "$deb" "$1"; done
rm -rf "$1/tmp/k"
chroot "$1" depmod -a "$kv"
echo "$kv" > "$1/kernel-version"'

log "building a $SUITE root file system from $mirror (a minute or two)"
# python3-typer/-prometheus-client/-pytest: trixie ships versions the project accepts
# (typer>=0.12, prometheus-client>=0.17, pytest>=7), so the offline VM needs no pip.
mmdebstrap --quiet --variant=minbase --mode=root \
  --include=python3,python3-bpfcc,python3-typer,python3-rich,python3-prometheus-client,python3-pytest,iproute2,nftables,kmod,procps,util-linux \
  --customize-hook="$kernel_hook" \
  --customize-hook="install -m 0755 '$here/guest-boot.sh' \"\$1/sbin/tcptrace-vm-init\"" \
  --customize-hook='rm -rf "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/var/cache/apt/*.bin' \
  "$SUITE" "$root" "$mirror"

kv=$(cat "$root/kernel-version")
rm -rf "$out.tmp"; mkdir -p "$out.tmp"
cp "$root/boot/vmlinuz-$kv" "$out.tmp/vmlinuz"
echo "$kv" > "$out.tmp/kernel-version"
size_mb=$(( $(du -sm "$root" | cut -f1) * 13 / 10 + 256 ))
mkfs.ext4 -q -L tcptrace-vm -d "$root" "$out.tmp/root.img" "${size_mb}M" >&2
touch "$out.tmp/.ready"
rm -rf "$out"; mv "$out.tmp" "$out"
# Older images are of no further use: keep one.
find "$CACHE" -maxdepth 1 -name 'image-*' ! -name "image-$key" -exec rm -rf {} +
log "image ready: $out (kernel $kv)"
echo "$out"

#!/usr/bin/env bash
# `make fresh-test` (issue 10): what a new user gets from `git clone` + `sudo make test`. A
# used machine proves nothing (an earlier `make bench` once hid a missing bpftool), so this
# runs `make test` in a clean Debian bookworm root (mmdebstrap minbase + git make
# ca-certificates python3) holding a fresh clone of HEAD: set-up must install everything.
# Of this host only its network client configuration goes in (trust store, pip configuration,
# resolv.conf, certificate variables). Fails unless pytest reports passes only.
# Usage: scripts/fresh-test.sh [ARGS]   (ARGS goes to `make test ARGS=...`, e.g. "-k cli")
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
CACHE=${TCPTRACE_FRESH_CACHE:-/var/cache/tcptrace-bpf/fresh-root}
PASS_VARS=(SSL_CERT_FILE SSL_CERT_DIR PIP_CERT REQUESTS_CA_BUNDLE CURL_CA_BUNDLE)
log() { printf 'fresh-test: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root (mmdebstrap, mounts, BPF)"
command -v unshare >/dev/null || die "unshare (util-linux) is missing"

# The template: built once per version of the scripts that build it, kept as a read-only
# tarball so that no run can change what the next one starts from.
key=$(cat "$here/fresh-test.sh" "$here/debian-mirror.sh" | sha256sum | cut -c1-16)
template=$CACHE/$key/root.tar
mkdir -p "$CACHE"
exec 9>"$CACHE/build.lock"
flock 9  # one build at a time: a concurrent run waits, then finds the template
if [ ! -e "$template" ]; then
  "$here/apt-install.sh" mmdebstrap debian-archive-keyring
  mirror=$("$here/debian-mirror.sh")
  # mmdebstrap adds -updates and -security by itself only for its default mirror; do the
  # same with the host's, so the fresh root sees the package versions a new host would.
  sources=("deb $mirror bookworm main" "deb $mirror bookworm-updates main")
  if security=$("$here/debian-mirror.sh" debian-security 2>/dev/null); then
    sources+=("deb $security bookworm-security main")
  fi
  log "building a clean bookworm root from the host's Debian mirror (about half a minute)"
  rm -rf "$CACHE/$key"; mkdir -p "$CACHE/$key"
  mmdebstrap --quiet --variant=minbase --mode=root --format=tar \
    --include=git,make,ca-certificates,python3 bookworm "$template.tmp" "${sources[@]}" \
    || die "mmdebstrap failed to build the bookworm root"
  chmod 0444 "$template.tmp"; mv "$template.tmp" "$template"
  # Templates of older scripts are of no further use.
  find "$CACHE" -mindepth 1 -maxdepth 1 -type d ! -name "$key" -exec rm -rf {} +
  log "root template ready in ${SECONDS}s: $template"
fi
exec 9>&-

# Every run starts from the template: the test run installs packages into its copy.
run=$(mktemp -d /var/tmp/tcptrace-fresh.XXXXXX)
root=$run/root
cleanup() {
  # Anything the run left running keeps the private mounts (netns, bpffs pins) and its BPF
  # programs alive: end every process whose root is the copy (also those in a further mount
  # namespace, e.g. under `ip netns exec`), then remove the copy. The mounts were never
  # visible out here, and --one-file-system keeps rm on the copy itself whatever happens.
  local p
  for p in /proc/[0-9]*; do
    if [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ]; then kill -KILL "${p#/proc/}" 2>/dev/null || true; fi
  done
  rm -rf --one-file-system "$run"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir "$root"
tar -xf "$template" -C "$root"
git clone -q --no-hardlinks "$repo" "$root/root/tcptrace-bpf" || die "git clone of $repo failed"

# Network client configuration, copied to the same paths; dereferenced, since a host link
# may point where the fresh root has nothing.
copy_in() {
  local p
  for p; do
    [ -e "$p" ] || continue
    mkdir -p "$root$(dirname "$p")"; rm -rf "$root$p"; cp -aL "$p" "$root$p"
  done
}
pipconf=(/etc/pip.conf /etc/xdg/pip /root/.config/pip)
copy_in /etc/resolv.conf /etc/ssl/certs/ca-certificates.crt /usr/local/share/ca-certificates "${pipconf[@]}"
# Files pip's configuration names (cert=, constraint=...) go in too; directories it names are
# local package stores, not configuration (pip ignores a missing one with a warning).
for ref in $(cat /etc/pip.conf /etc/xdg/pip/*.conf /root/.config/pip/*.conf 2>/dev/null \
             | grep -oE '(file://)?/[^[:space:]]+' | sed 's#^file://##' | sort -u); do
  if [ -f "$ref" ]; then copy_in "$ref"
  elif [ -d "$ref" ]; then log "pip configuration names $ref: a package store, not copied"; fi
done
passenv=()
for v in "${PASS_VARS[@]}"; do
  if [ -n "${!v:-}" ]; then passenv+=("$v=${!v}"); copy_in "${!v}"; fi
done

# Runs in a private mount namespace: mount what a host has, then chroot and run the README's
# `make test` as root in a bare environment. Every mount ends with the namespace.
inside() {
  set -euo pipefail
  local root=$1 args=$2; shift 2
  mount --bind "$root" "$root"  # / must be a mount point: `ip netns exec` remounts it as a slave
  mount -t proc proc "$root/proc"
  mount -t sysfs sysfs "$root/sys"
  mount -t devtmpfs devtmpfs "$root/dev"
  mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$root/dev/pts"
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
  mount -t cgroup2 cgroup2 "$root/sys/fs/cgroup"
  mount -t debugfs debugfs "$root/sys/kernel/debug"
  mount -t tracefs tracefs "$root/sys/kernel/tracing"
  mount -t bpf bpf "$root/sys/fs/bpf"
  mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/run"  # /run/netns is created in here
  mkdir -m 1777 "$root/run/lock"
  exec chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root CI=true LANG=C.UTF-8 "$@" make -C /root/tcptrace-bpf test ARGS="$args"
}
log "running make test in a fresh bookworm root, clone of $(git -C "$repo" rev-parse --short HEAD) (HEAD)"
rc=0
unshare --mount --propagation private bash -c "$(declare -f inside); inside \"\$@\"" inside \
  "$root" "${1:-}" "${passenv[@]}" 2>&1 | tee "$run/test.log" || rc=$?

# pytest's closing line, e.g. "==== 151 passed in 251.02s (0:04:11) ====".
summary=$(grep -E '^=+ .* in [0-9.]+s( \([0-9:]+\))? =+$' "$run/test.log" | tail -n1 | sed -E 's/^=+ //; s/ =+$//')
[ -n "$summary" ] || die "no pytest summary (make test exited $rc)"
log "pytest in the fresh root: $summary"
if [ "$rc" -ne 0 ] || ! grep -q ' passed' <<<"$summary" || grep -qE 'failed|error|skipped|no tests ran' <<<"$summary"; then
  die "make test in the fresh root did not pass cleanly (exit $rc, after $((SECONDS / 60))m$((SECONDS % 60))s; every test must pass, none skip)"
fi
log "passed, in $((SECONDS / 60))m$((SECONDS % 60))s"

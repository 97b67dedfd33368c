#!/usr/bin/env bash
# `make vm-test`: the real-kernel tests on Debian's own 6.12 cloud kernel, where kprobes and
# fentry work, under qemu TCG (KVM cannot run guests on the CI host). Image: vm/build-image.sh
# (cached). The guest has no network device at all, only its own loopback.
# Ends with one line per backend and exits non-zero if check or any backend failed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
CACHE=${TCPTRACE_VM_CACHE:-/var/cache/tcptrace-bpf/vm}
BACKENDS=(kprobe fentry auto)
t0=$SECONDS

[ "$(id -u)" -eq 0 ] || { echo "vm-test: must run as root (builds a root file system)" >&2; exit 1; }
"$repo/scripts/apt-install.sh" qemu-system-x86
img=$("$here/build-image.sh")
kv=$(cat "$img/kernel-version")
built_s=$((SECONDS - t0))

# Per-run files (outside the repo): the project as a tar the guest unpacks, an empty disk it
# writes its results to as a tar, the serial console log.
run=$CACHE/last-run
rm -rf "$run"; mkdir -p "$run/results"
# Only what the guest runs: the package, the BPF C, the tests and these scripts.
tar -c -f "$run/project.tar" -C "$repo" --exclude=__pycache__ pyproject.toml bpf tcptrace_bpf tests vm

boot() {
  truncate -s 0 "$run/results.img"; truncate -s 64M "$run/results.img"
  # -cpu max,-cx16: with cmpxchg16b some TCG boots die in __kmalloc (bookworm's qemu 7.2).
  # Root is the only NVMe disk (built into the kernel, so no initrd), snapshot=on: the
  # cached image is never written. Project and results are virtio disks found by serial.
  timeout -k 10 "${TCPTRACE_VM_TIMEOUT:-1200}" qemu-system-x86_64 \
    -accel tcg,thread=multi -cpu "${TCPTRACE_VM_CPU:-max,-cx16}" -smp "$(nproc)" -m 4096 \
    -nodefaults -no-reboot -display none -nic none -serial stdio \
    -kernel "$img/vmlinuz" \
    -append "console=ttyS0 root=/dev/nvme0n1 rootwait rw quiet panic=-1 init=/sbin/tcptrace-vm-init" \
    -drive "file=$img/root.img,if=none,id=root,format=raw,snapshot=on" \
    -device nvme,serial=root,drive=root \
    -drive "file=$run/project.tar,if=none,id=project,format=raw,readonly=on" \
    -device virtio-blk-pci,serial=project,drive=project \
    -drive "file=$run/results.img,if=none,id=results,format=raw" \
    -device virtio-blk-pci,serial=results,drive=results \
    < /dev/null 2>&1 | sed -u 's/\r$//' | tee "$run/console.log" || true
}

# A TCG guest can die early (double fault) without reporting: retry such a run once.
status=""
for attempt in 1 2; do
  echo "vm-test: booting Debian $kv under qemu TCG (attempt $attempt)"
  boot
  status=$(grep -a -o 'TCPTRACE-VM-STATUS .*' "$run/console.log" | tail -n1 || true)
  [ -n "$status" ] && break
  echo "vm-test: the guest died without reporting a status"
done
tar -x -f "$run/results.img" -C "$run/results" 2>/dev/null || true

# What failed: the end of its log here; everything stays in $run/results.
for b in "${BACKENDS[@]}" check; do
  [ -e "$run/results/$b.rc" ] || continue
  read -r code _ < "$run/results/$b.rc"
  [ "$code" = 0 ] && continue
  log=$run/results/$b.log; [ "$b" = check ] && log=$run/results/check.err
  echo "---- $b exited $code; end of $log"; tail -n 40 "$log"
done

echo "vm-test: Debian $kv, qemu TCG; image ready after ${built_s}s, total $((SECONDS - t0))s; logs in $run"
rc=0
[ "$status" = "TCPTRACE-VM-STATUS done rc=0" ] || { rc=1; echo "vm-test: guest status: ${status:-none}"; }
python3 "$here/summary.py" "$run/results" "${BACKENDS[@]}" || rc=1
exit "$rc"

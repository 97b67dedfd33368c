#!/bin/bash
# PID 1 of the test VM (baked into the image as /sbin/tcptrace-vm-init). Mounts the kernel
# file systems, unpacks the project from the virtio disk with serial "project" and hands over
# to the project's own vm/guest-run.sh, so changing that script needs no image rebuild.
# Whatever happens, the VM powers off: the host reads the status from the serial console.
set -uo pipefail
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root
status() { echo "TCPTRACE-VM-STATUS $*"; sync; echo o > /proc/sysrq-trigger; sleep 30; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null || true
echo 1 > /proc/sys/kernel/sysrq

# Root is the only NVMe disk (built in); the others are virtio disks (a module), found by
# the serial vm/run.sh gave them, as they may probe in any order.
modprobe virtio_blk
disk() {
  local b
  for _ in $(seq 50); do
    for b in /sys/block/vd*; do
      [ "$(cat "$b/serial" 2>/dev/null)" = "$1" ] && { echo "/dev/${b##*/}"; return 0; }
    done
    sleep 0.1
  done
  return 1
}
proj=$(disk project) || status "fail no-project-disk"
export TCPTRACE_VM_RESULTS_DISK; TCPTRACE_VM_RESULTS_DISK=$(disk results) || status "fail no-results-disk"
mkdir -p /project && tar -x -f "$proj" -C /project || status "fail project-unpack"
bash /project/vm/guest-run.sh
status "done rc=$?"

#!/usr/bin/env bash
# bcc reads tracepoint formats under /sys/kernel/debug/tracing; mount what is missing.
set -euo pipefail
mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing

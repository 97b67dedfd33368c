#!/bin/sh
# The image's entry point. `headers` prepares a kernel headers tree for bcc in the mounted
# host cache (a one-shot run with default capabilities and network: it installs build tools
# into its own throw-away container and downloads Debian's linux-source); anything else is
# tcptrace-bpf's own command line, run with only the capabilities the container was given.
set -e
if [ "${1:-}" = headers ]; then
  TCPTRACE_HEADERS_NO_INSTALL=1 exec /usr/local/lib/tcptrace-bpf/kernel-headers.sh
fi
exec python3 -m tcptrace_bpf.cli "$@"

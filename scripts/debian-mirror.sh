#!/usr/bin/env bash
# Print the URI of the Debian archive this host's apt is configured with (one-line
# sources.list or deb822 *.sources), so that private apt configurations and mmdebstrap use
# the host's mirror and no mirror name is written into the repo. Reads the files, not apt's
# lists: works before any `apt-get update`. An argument picks another archive by its last
# path part, e.g. `debian-mirror.sh debian-security`. Exit 1 if there is none.
set -euo pipefail
archive=${1:-debian}
mirror=$( (cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true) \
         | grep -oE "^(URIs:|deb) +(\[[^]]*\] +)?(http|https)://[^ ]+/$archive/?( |$)" \
         | grep -oE '(http|https)://[^ ]+' | sed -n 1p || true)
[ -n "$mirror" ] || { echo "debian-mirror: no '$archive' archive in /etc/apt/sources.list*" >&2; exit 1; }
echo "$mirror"

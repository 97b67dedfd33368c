#!/usr/bin/env python3
"""Print the container runtime's default seccomp profile, changed only so that `bpf` is allowed
to a container holding CAP_BPF and `perf_event_open` to one holding CAP_PERFMON.

Why: the profile of Debian's containers-common (podman 4.3, bookworm) allows both calls only
with CAP_SYS_ADMIN, so a container given exactly CAP_BPF + CAP_PERFMON gets EPERM creating its
first map (measured). Newer runtime profiles grant them by those capabilities themselves; this
makes the same change to whatever profile the host has, instead of turning seccomp off.

Usage: seccomp.py [DEFAULT_PROFILE] > profile.json
"""

import json
import sys

GRANTS = {"bpf": "CAP_BPF", "perf_event_open": "CAP_PERFMON"}


def widened(profile: dict) -> dict:
    for rule in profile["syscalls"]:
        excluded = rule.get("excludes", {}).get("caps")
        if rule["action"] != "SCMP_ACT_ALLOW" and excluded:
            # the "deny unless CAP_SYS_ADMIN" rule: with the default action a deny already,
            # dropping the two calls from it leaves them denied unless a grant below applies
            rule["names"] = [n for n in rule["names"] if n not in GRANTS]
    profile["syscalls"] = [r for r in profile["syscalls"] if r["names"]]
    for name, cap in GRANTS.items():
        profile["syscalls"].append({"names": [name], "action": "SCMP_ACT_ALLOW", "args": [],
                                    "includes": {"caps": [cap]}, "excludes": {}})
    return profile


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/containers/seccomp.json"
    try:
        with open(path) as f:
            profile = json.load(f)
    except (OSError, ValueError) as exc:
        print(f"seccomp.py: cannot read the default profile {path}: {exc}", file=sys.stderr)
        return 1
    if profile.get("defaultAction") not in ("SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS"):
        print(f"seccomp.py: {path} is not an allow-list profile", file=sys.stderr)
        return 1
    json.dump(widened(profile), sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

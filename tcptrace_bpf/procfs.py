"""Who owns the listening sockets that existed before tracing began, read from /proc.

The kernel side learns a listener's owner at listen(); for older listeners this is the only
source. Netns- and cgroup-aware: one read of /proc/PID/net/tcp{,6} per network namespace."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


@dataclass(frozen=True)
class Owner:
    netns: int
    port: int
    pid: int
    comm: str
    cgroup: int
    family: int = 4
    addr: str = ""
    accept_queue: int = 0    # rx_queue of a listener: sk_ack_backlog, now


def _address(hexaddr: str) -> tuple[int, str]:
    """/proc/net/tcp{,6}'s local address (32-bit words in host order) as (family, text)."""
    import socket
    import struct
    words = [int(hexaddr[i:i + 8], 16) for i in range(0, len(hexaddr), 8)]
    raw = struct.pack(f"={len(words)}I", *words)
    fam = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return (4 if len(raw) == 4 else 6), socket.inet_ntop(fam, raw)


def cgroup2_mount() -> str | None:
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                if line.split(" - ")[1].startswith("cgroup2 "):
                    return line.split()[4]
    except (OSError, IndexError):
        pass
    return None


def cgroup_id(pid: int | str, mount: str | None) -> int:
    """cgroup v2 id of a process (its cgroup directory's inode), 0 if unknown."""
    if mount is None:
        return 0
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            rel = next((line[3:].strip() for line in f if line.startswith("0::")), None)
        return os.stat(mount + rel).st_ino if rel is not None else 0
    except OSError:
        return 0


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def listener_owners() -> Iterator[Owner]:
    socket_owner: dict[int, str] = {}  # socket inode -> pid holding an fd to it
    netns_member: dict[int, str] = {}  # netns inode -> a pid inside it
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            netns_member.setdefault(os.stat(f"/proc/{pid}/ns/net").st_ino, pid)
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    socket_owner.setdefault(int(link[8:-1]), pid)
        except OSError:
            continue  # the process went away, or is not ours to read
    mount = cgroup2_mount()
    for netns, member in netns_member.items():
        for table in ("tcp", "tcp6"):
            try:
                lines = _read(f"/proc/{member}/net/{table}").splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                f = line.split()
                if len(f) < 10 or f[3] != _LISTEN:
                    continue
                pid = socket_owner.get(int(f[9]))
                if pid is None:
                    continue
                try:
                    comm = _read(f"/proc/{pid}/comm")
                except OSError:
                    continue
                hexaddr, hexport = f[1].rsplit(":", 1)
                family, addr = _address(hexaddr)
                yield Owner(netns, int(hexport, 16), int(pid), comm, cgroup_id(pid, mount),
                            family, addr, int(f[4].split(":")[1], 16))

"""The tool as `pip install .` gives it: a wheel built from the tree, installed into a fresh
venv, run from `/` so nothing can be found relative to the source tree. And the lowest Python
that `requires-python` claims, where this machine has one."""

import glob
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

from tests.background import ROOT
from tests.conftest import require
from tests.test_recording import RECORDINGS

PIP = ["-m", "pip", "--disable-pip-version-check", "-q"]


def claimed_minimum() -> tuple[int, int]:
    spec = re.search(r'^requires-python = ">=(\d+)\.(\d+)"', (ROOT / "pyproject.toml").read_text(),
                     re.M)
    assert spec, "pyproject.toml: requires-python must read >=X.Y"
    return int(spec[1]), int(spec[2])


def interpreters() -> dict[str, str]:
    """The lowest Python this machine has that the claim admits, by version: the claimed
    minimum itself where it is installed (on PATH or under pyenv), else the next one up."""
    found = {}
    names = [f"python3.{minor}" for minor in range(claimed_minimum()[1], 20)]
    for name in names:
        # pyenv's shims answer to every name but run only the selected version: skip them
        paths = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{name[6:]}*/bin/{name}")))
        paths.append(shutil.which(name))
        for path in paths:
            if path and "/shims/" not in path:
                found.setdefault(name[6:], path)
    lowest = min(found, key=lambda v: int(v.split(".")[1]))
    return {lowest: found[lowest]}


def run(cmd: list, cwd: str = "/", timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"{cmd}: exit {out.returncode}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, *PIP, "wheel", "--no-deps", "-w", out, ROOT])
    (whl,) = out.glob("tcptrace_bpf-*.whl")
    return whl


def venv(where: Path, python: str, wheel: Optional[Path], system_site: bool) -> Path:
    """A venv of `python` (its pip is ensurepip's: a distro Python has none of its own unless
    python3-pip is installed, and a fresh machine does not have it), with `wheel` in it."""
    run([python, "-m", "venv", *(["--system-site-packages"] if system_site else []), where])
    if wheel:
        run([where / "bin" / "python", *PIP, "install", wheel])
    return where / "bin"


def test_wheel_carries_the_bpf_programs_and_licenses(wheel):
    names = subprocess.run([sys.executable, "-m", "zipfile", "-l", wheel], capture_output=True,
                           text=True, check=True).stdout
    for member in ("tcptrace_bpf/bpf/tcptrace.bpf.c", "tcptrace_bpf/bpf/tcptrace.h",
                   "licenses/LICENSE", "licenses/LICENSES/GPL-2.0-only.txt"):
        assert member in names, f"{member} missing from {wheel.name}:\n{names}"


@pytest.mark.kernel
def test_installed_tool_checks_from_root(wheel, tmp_path):
    """check compiles and loads the real programs: from the installed package, not the tree."""
    require(os.geteuid() == 0, "needs root")
    require(Path("/usr/lib/python3/dist-packages/bcc").exists(), "needs python3-bpfcc")
    bin_ = venv(tmp_path / "venv", "/usr/bin/python3", wheel, system_site=True)
    where = run([bin_ / "python", "-c",
                 "from tcptrace_bpf import loader; print(loader.BPF_SOURCE)"]).stdout.strip()
    assert where.startswith(str(tmp_path / "venv")) and Path(where).is_file(), where
    out = run([bin_ / "tcptrace-bpf", "check", "--json"])
    doc = json.loads(out.stdout)
    assert doc["ok"] is True, out.stdout


@pytest.mark.parametrize("version,python", sorted(interpreters().items()))
def test_lowest_claimed_python_replays_a_recording(tmp_path, version, python):
    """replay needs neither root nor bcc, so it runs on any Python the claim admits. The
    wheel is that Python's own: it carries a compiled module (tcptrace_bpf._fastpath)."""
    bin_ = venv(tmp_path / "venv", python, None, system_site=False)
    run([bin_ / "python", *PIP, "wheel", "--no-deps", "-w", tmp_path / "wheel", ROOT])
    (wheel,) = (tmp_path / "wheel").glob("tcptrace_bpf-*.whl")
    run([bin_ / "python", *PIP, "install", wheel])
    run([bin_ / "python", "-c", "import sys; assert sys.version_info[:2] == "
         f"({version.replace('.', ', ')}), sys.version"])
    expect = json.loads((RECORDINGS / "wire1-normal4.expect.json").read_text())["expect"]
    out = run([bin_ / "tcptrace-bpf", "replay", RECORDINGS / "wire1-normal4.rec", "--json"])
    got = [json.loads(line) for line in out.stdout.splitlines()]
    assert [{k: rec[k] for k in exp} for rec, exp in zip(got, expect)] == expect
    assert len(got) == len(expect)

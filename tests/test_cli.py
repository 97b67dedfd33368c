"""Bad input ends in one line on stderr and a non-zero exit, never a traceback."""

import subprocess

import pytest

from tests.background import TOOL


@pytest.mark.parametrize("args,word", [
    (["trace", "--attach", "foo"], "--attach"),
    (["trace", "--port", "0"], "--port"),
    (["trace", "--port", "http"], "--port"),
    (["trace", "--family", "5"], "--family"),
    (["trace", "--duration", "-1"], "--duration"),
    (["trace", "--bogus"], "--bogus"),
    (["nosuchcommand"], "nosuchcommand"),
    (["trace", "--pid", "0"], "--pid"),
    (["trace", "--netns", "/nonexistent/ns"], "--netns"),
    (["trace", "--cgroup", "web"], "--cgroup"),
    (["replay"], "file"),
    (["record"], "file"),
    (["replay", "x.rec", "--half-open-timeout", "5"], "--half-open-timeout"),
    (["trace", "--half-open-timeout", "0"], "--half-open-timeout"),
])
def test_bad_flags_are_one_line_exit_2(args, word):
    out = subprocess.run(TOOL + args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tcptrace-bpf: error: ") and word in lines[0]
    assert "Traceback" not in out.stderr


def test_help_ends_with_examples():
    out = subprocess.run(TOOL + ["trace", "--help"], capture_output=True, text=True, timeout=60,
                         env={"COLUMNS": "100", "TERM": "dumb"})
    assert out.returncode == 0
    assert "Examples" in out.stdout and "--json" in out.stdout

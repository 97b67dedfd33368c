"""Tests only for the VM of `make vm-test` (Debian's own kernel: kprobes and fentry attach).
vm/guest-run.sh sets TCPTRACE_VM=1; anywhere else nothing here is collected, so the host's
`make test` neither runs nor skips (under CI=true: fails) them."""

import os

import pytest

from tests.kernel.conftest import session_tracer, stop_session_tracer

if os.environ.get("TCPTRACE_VM") != "1":
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def tracer():
    """The same live tracer as tests/kernel's (one compile per run)."""
    yield session_tracer()
    stop_session_tracer()

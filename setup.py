"""The compiled part: tcptrace_bpf._fastpath (tcptrace_bpf/_fastpath.c), the `--json`
consumer. Everything else is declared in pyproject.toml. Optional: where it cannot be built
(no compiler or Python headers), the install goes on and the Python path is used."""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "tcptrace_bpf._fastpath", ["tcptrace_bpf/_fastpath.c"],
    depends=["bpf/tcptrace.h"], extra_compile_args=["-O2", "-Wall"], optional=True)])

"""The kernel-side C sources, installed as package data of `tcptrace_bpf.bpf` (pyproject.toml
maps this directory there), so an installed tool finds them wherever it runs from."""

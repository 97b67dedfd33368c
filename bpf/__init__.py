"""The kernel-side C sources, as package data of `tcptrace_bpf.bpf` (tcptrace_bpf/bpf links
here), so an installed tool finds them wherever it runs from."""

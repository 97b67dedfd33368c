"""tcptrace-bpf: how every TCP connection on this host was opened, and why a handshake failed."""

__version__ = "0.1.0"

"""Sinks: consume tracker output (OpenRecord / ProbeEvent), never produce it."""

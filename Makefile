# tcptrace-bpf: `make run` sets up and starts the live tracer; `make test` sets up and runs
# the whole suite (as root: real-kernel tests load BPF programs).
VENV := .venv
ARGS ?=

.PHONY: setup run test unit clean
setup:
	bash scripts/setup.sh

run: setup
	$(VENV)/bin/tcptrace-bpf trace $(ARGS)

test: setup
	$(VENV)/bin/python -m pytest -ra $(ARGS)

unit:
	$(VENV)/bin/python -m pytest -ra -m "not kernel" $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache tcptrace_bpf/*.so

# A new user's `make test` (issue 10): in a clean bookworm root (mmdebstrap, cached in
# /var/cache/tcptrace-bpf/fresh-root) with a fresh clone of HEAD, set-up from nothing and no
# skips allowed (scripts/fresh-test.sh). ARGS passes through to that `make test`.
.PHONY: fresh-test
fresh-test:
	bash scripts/fresh-test.sh "$(ARGS)"

# Real distro kernel: the real-kernel tests with --attach kprobe, fentry and auto on Debian's
# 6.12 cloud kernel under qemu (vm/run.sh; image cached in /var/cache/tcptrace-bpf/vm).
.PHONY: vm-test
vm-test:
	bash vm/run.sh

# Performance (issues 5, 13): connection churn untraced / export / trace --json (unfiltered,
# --failed, --port 1) / bcc tcpstates, paired and alternated, one table; then steady RSS after
# 1 M connections and --attach auto start time (bench/run.py; bench/RESULTS.md). BENCH_ARGS=--quick for a
# short smoke run, BENCH_ARGS=--profile adds bpf_stats and py-spy. Set-up installs gcc, bpftool and
# bpfcc-tools (the bench smoke test in `make test` needs them too); py-spy only here.
BENCH_ARGS ?=
.PHONY: bench
bench: setup
	test -x $(VENV)/bin/py-spy || $(VENV)/bin/pip install -q --disable-pip-version-check py-spy
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)

# Fleet (issue 14): the OCI image from Debian packages and this repo (deploy/container), and
# its test: the exporter under podman with CAP_BPF + CAP_PERFMON only, scraped by a real
# Prometheus while real handshakes run (scripts/image-test.sh; README "Fleet").
.PHONY: image image-test
image: setup
	bash deploy/container/build.sh

image-test: setup
	bash scripts/image-test.sh $(ARGS)

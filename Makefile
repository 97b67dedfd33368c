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
	rm -rf $(VENV) build *.egg-info .pytest_cache

# Two commands do everything on a fresh machine: `make demo` and `make test` (plus
# `make slurm-test`, the workflow on a real SLURM cluster). They create the virtual
# environment if it is missing, install the project into it and fetch the bundled default
# data (Debian's dataset-fashion-mnist) before they act.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= $(shell nproc)
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test test-fast test-kernels slurm-test setup data bench generate clean

demo: setup data
	$(VENV)/bin/snakemake --cores $(CORES)
	@echo; cat reports/summary.md

test: setup data
	$(PY) -m pytest -q

# The suite without the tests that start or kill processes (workflow, DDP, killed dumps,
# DataLoader workers): a quick check while editing. `make test` stays the full one.
test-fast: setup data
	$(PY) -m pytest -q -m "not slow and not slurm"

# The suite again under the kernels other x86-64 CPUs get: torch (ATen), oneDNN and MKL pick
# their kernels by CPU, so float32 results round differently from one machine to the next. A
# tolerance fitted to this CPU's rounding fails here (AVX2, then SSE4.1), not on a user's
# machine. A CPU cannot be asked for more than it has: on an AVX2-only CPU the first run
# repeats its own kernels. Tests marked `once` (workflow plans and config errors, the docs
# walkthrough, a fine-tuning margin over seeds: nothing kernel-dependent) run in `make test` only.
test-kernels: setup data
	@if [ "$$(uname -m)" != x86_64 ]; then echo "test-kernels: x86-64 kernel sets only; skipped on $$(uname -m)"; exit 0; fi; \
	set -e; \
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 $(PY) -m pytest -q -m "not once"; \
	ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2 $(PY) -m pytest -q -m "not once"

# The workflow on a one-node SLURM cluster started here if none runs (and stopped again):
# Debian's slurm-wlm, Snakemake's SLURM plugin, cancel-and-resume checks. Needs root or sudo.
slurm-test: setup
	PY=$(PY) tests/slurm/run.sh

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $@

# Fashion-MNIST from Debian (the demo's data, and a test set); needs root or sudo.
data:
	@if [ ! -d $(FASHION_MNIST) ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	fi

# Throughput ratios measured side by side (not part of the tests).
bench: setup
	$(PY) bench/bench_dump.py
	$(PY) bench/bench_student.py
	$(PY) bench/bench_ensemble.py
	$(PY) bench/bench_gpu.py
	$(PY) bench/bench_help.py

# Rewrite what is made from the method registry (config/schema.yaml's loss block, docs/methods.md).
generate: setup
	$(PY) tools/generate.py

# Remove workflow outputs (teachers, stores, students, reports, logs); keeps the venv.
clean:
	rm -rf teachers students reports logs benchmarks .snakemake cache/logits

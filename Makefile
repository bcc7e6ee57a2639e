# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create the virtual environment if it is missing, install the project into it and
# fetch the bundled default data (Debian's dataset-fashion-mnist) before they act.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= $(shell nproc)
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test setup data bench clean

demo: setup data
	$(VENV)/bin/snakemake --cores $(CORES)
	@echo; cat reports/summary.md

test: setup data
	$(PY) -m pytest -q

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

# Remove workflow outputs (teachers, stores, students, reports, logs); keeps the venv.
clean:
	rm -rf teachers students reports logs benchmarks .snakemake cache/logits

# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv, install the CPU build of torch and the pinned project, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_CPU ?= torch==2.13.0
STAMP := $(VENV)/.trl-opd-installed
PYTEST_ARGS ?=

.PHONY: bootstrap demo lab test lint bench clean

bootstrap: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_CPU)"
	$(PIP) install --quiet -e ".[dev,eval]"
	$(PY) -m trl_opd.eval.offline --prepare
	touch $(STAMP)

demo: bootstrap
	$(VENV)/bin/trl-opd demo --output-dir demo_output

# The sweeps whose results are committed under benchmarks/results (each file is headed by its exact command).
LAB_SEEDS ?= 0,1,2
LAB_STEPS ?= 100
LAB := $(VENV)/bin/trl-opd lab --seeds $(LAB_SEEDS) --steps $(LAB_STEPS) --output-dir benchmarks/results

lab: bootstrap
	$(LAB) --world arith --methods opd,sft,motab
	$(VENV)/bin/trl-opd lab --seeds $(LAB_SEEDS) --steps $(LAB_STEPS) --output-dir benchmarks/results/arith-tropd --world arith --methods opd,tropd
	$(LAB) --world mismatch --methods opd,tropd
	$(LAB) --world long-chains --methods opd,motab
# Not yet run (CPU time): gkd and sft on long-chains and mismatch, gkd on arith, the ambiguous and privileged worlds.

test: bootstrap
	$(VENV)/bin/ruff check trl_opd tests benchmarks
	$(PY) -m pytest $(PYTEST_ARGS)

lint: bootstrap
	$(VENV)/bin/ruff check trl_opd tests benchmarks
	$(VENV)/bin/ruff format --check trl_opd tests benchmarks

bench: bootstrap
	$(PY) benchmarks/bench_loss_memory.py

clean:
	rm -rf $(VENV) demo_output lab_output .pytest_cache

# dip-bench. `make setup` once, then `make bench`; `make test` runs the tests, `make check` the CI regression check.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch build: with an NVIDIA driver (nvidia-smi on PATH) the newest CUDA wheel; without one the pinned
# 2.13.0 (a CPU wheel where one is on a local wheelhouse, as on CI). Override: make setup TORCH="torch==X".
TORCH ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch,torch==2.13.0)
# `make bench` runs the paper profile on a CUDA machine and the quick profile without one.
PROFILE ?= $(if $(shell command -v nvidia-smi 2>/dev/null),paper,quick)
TOLERANCE ?= 0.5
MIN_SPEEDUP ?= 1.8

.PHONY: setup test bench ablations check baseline speed clean-runs

setup:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	@$(PY) -c "import torch; print('torch', torch.__version__, '| CUDA available:', torch.cuda.is_available())"

test:
	$(PY) -m pytest

# The main job: the seed reproduction's recipe, then the paper's with the seed recipe as a column, and
# the published outputs at full size. Writes reports/$(PROFILE).md, reports/$(PROFILE)-seed.md, reports/published.md.
bench:
	$(PY) -m bench run --profile $(PROFILE) --recipe seed --publish
	$(PY) -m bench run --profile $(PROFILE) --publish --with "Seed recipe=runs/$(PROFILE)-seed"
	$(PY) -m bench published

# The recipe ambiguities as variants (quick profile, 3 images x 3 seeds); writes reports/ablations.md
ablations:
	$(PY) -m bench ablate

# CI's regression check: the smoke profile against the committed baseline, then the speed-ratio gate
check:
	rm -rf runs/smoke-check
	$(PY) -m bench run --profile smoke --no-progress --results-dir runs/smoke-check
	$(PY) -m bench check --results-dir runs/smoke-check --baseline reports/baselines/smoke.json --tolerance $(TOLERANCE)
	$(PY) -m bench speed --size 256 --min-ratio $(MIN_SPEEDUP)

# one training iteration, reference vs fast path, at 128x128 and 256x256 (pytest-benchmark)
speed:
	$(PY) -m pytest bench/bench_speed.py -p no:cacheprovider --benchmark-only --benchmark-json=reports/speed.json -o addopts=""
	$(PY) -m bench speed-report --json reports/speed.json --out reports/speed.md

# re-record the smoke baseline (commit the result with the reason in the message)
# (in a fresh directory: records of other seeds or flags left in runs/smoke must not enter the baseline)
baseline:
	rm -rf runs/smoke-baseline
	$(PY) -m bench run --profile smoke --no-progress --results-dir runs/smoke-baseline
	$(PY) -m bench baseline --results-dir runs/smoke-baseline --out reports/baselines/smoke.json

clean-runs:
	rm -rf runs

# dip-bench. `make setup` once, then `make bench`; `make test` runs the tests, `make check` the CI regression check.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch build: with an NVIDIA driver (nvidia-smi on PATH) the newest CUDA wheel; without one the pinned
# 2.13.0 (a CPU wheel where one is on a local wheelhouse, as on CI). Override: make setup TORCH="torch==X".
TORCH ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch,torch==2.13.0)
# `make bench` runs the paper profile on a CUDA machine and the quick profile without one.
PROFILE ?= $(if $(shell command -v nvidia-smi 2>/dev/null),paper,quick)

.PHONY: setup test bench ablations check spread power baseline speed clean-runs

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

# CI's regression check: recipe fingerprint and outcome against reports/baselines (tolerances measured by
# `make spread`), then the speed-ratio gate (its threshold follows the fast path's precision on this CPU)
check:
	$(PY) -m bench check
	$(PY) -m bench speed --size 256 --gate

# how far CPU kernels and thread counts move the check's numbers: reports/regression-spread.md (~10 min)
spread:
	$(PY) -m bench spread

# every mutation of bench/mutations.py through both parts of the check: reports/regression-power.md (~15 min)
power:
	$(PY) -m bench power

# one training iteration, reference vs fast path, at 128x128 and 256x256 (pytest-benchmark)
speed:
	$(PY) -m pytest bench/bench_speed.py -p no:cacheprovider --benchmark-only --benchmark-json=reports/speed.json -o addopts=""
	$(PY) -m bench speed-report --json reports/speed.json --out reports/speed.md

# re-record both goldens after an intended change of the recipe's math (commit them with the reason)
baseline:
	$(PY) -m bench check --record

clean-runs:
	rm -rf runs

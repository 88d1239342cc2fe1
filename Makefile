# dip-bench. `make setup` once, then `make bench`; `make test` runs the tests, `make check` the CI regression check.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch build: with an NVIDIA driver (nvidia-smi on PATH) the newest torch of the pip index (CUDA on PyPI);
# without one the pinned 2.13.0 from the pip index: a CPU wheel only where the index or a local wheelhouse
# serves one (as on CI); PyPI's Linux wheel is a CUDA build. Overrides: make setup TORCH="torch==X", and
# TORCH_INDEX=https://download.pytorch.org/whl/cpu for PyTorch's CPU wheels.
TORCH ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch,torch==2.13.0)
TORCH_INDEX ?=
# `make bench` runs the paper profile on a CUDA machine and the brief profile (minutes) without one.
HAS_GPU := $(if $(shell command -v nvidia-smi 2>/dev/null),yes,)

.PHONY: setup test bench bench-brief bench-quick bench-paper campaign campaign-report readme ablations check spread power baseline speed gpu-check clean-runs

setup:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	@$(PY) -c "import torch; print('torch', torch.__version__, '| CUDA available:', torch.cuda.is_available())"

test:
	$(PY) -m pytest

# The main job. With a GPU: the paper profile (Table 1's protocol) with the seed reproduction's recipe as a
# column; without one: the brief profile, then what to run next. Both also score the published outputs.
bench: $(if $(HAS_GPU),bench-paper,bench-brief)

# All 11 images once, 64x64 crops, 500 iterations: reports/brief.md and the README's results table.
bench-brief:
	$(PY) -m bench run --profile brief --publish
	$(PY) -m bench published
	$(PY) -m bench readme
	@echo
	@echo "That was the 'brief' profile: every image once, on crops, with a short budget; not comparable to Table 1."
	@echo "Next: 'make bench-quick' (3 seeds at 128x128, both recipes; about an hour on a 2-core CPU),"
	@echo "      'make bench-paper' (the paper's protocol; a GPU job, days on a CPU: 'python -m bench estimate --profile paper' says how long here)."

# Both recipes at 128x128 crops, 600 iterations, seeds 0-2: reports/quick.md and reports/quick-seed.md.
bench-quick:
	$(PY) -m bench run --profile quick --recipe seed --publish
	$(PY) -m bench run --profile quick --publish --with "Seed recipe=runs/quick-seed"

# The paper's protocol (full images, 11000 iterations, backtracking), with the seed recipe as a column.
bench-paper:
	$(PY) -m bench run --profile paper --recipe seed --publish
	$(PY) -m bench run --profile paper --publish --with "Seed recipe=runs/paper-seed"
	$(PY) -m bench published

# Table 1 at the paper's protocol on a CPU, over as many sessions as it takes (docs/long-runs.md, "A campaign
# on a CPU"): run it from a worktree pinned to one commit, records and checkpoints under $DIP_RUNS_DIR (outside
# the checkout); run it again to resume. Fast path on CAMPAIGN_IMAGES, then House on the reference path.
CAMPAIGN_IMAGES ?= house,cman,peppers,montage
CAMPAIGN_FLAGS := --profile paper --seeds 0 --checkpoint-every 250 --no-progress --log-every 600
campaign:
	@test -n "$$DIP_RUNS_DIR" || { echo "error: set DIP_RUNS_DIR to a directory outside the checkout, e.g. DIP_RUNS_DIR=~/dip-runs" >&2; exit 2; }
	$(PY) -m bench run $(CAMPAIGN_FLAGS) --images $(CAMPAIGN_IMAGES) --results-dir "$$DIP_RUNS_DIR/paper"
	$(PY) -m bench run $(CAMPAIGN_FLAGS) --images house --path reference --results-dir "$$DIP_RUNS_DIR/paper-reference"

# Publish what the campaign has finished (run from the main checkout): reports/paper.md with its coverage of
# Table 1, and reports/paper-reference.md; records are snapshotted beside them, checkpoints never.
campaign-report:
	@test -n "$$DIP_RUNS_DIR" || { echo "error: set DIP_RUNS_DIR to the campaign's directory" >&2; exit 2; }
	$(PY) -m bench report --results-dir "$$DIP_RUNS_DIR/paper" --out reports/paper.md
	$(PY) -m bench report --results-dir "$$DIP_RUNS_DIR/paper-reference" --out reports/paper-reference.md

# Rewrite the README's results table from the committed records of reports/brief/ (`--check` compares only).
readme:
	$(PY) -m bench readme

# The recipe ambiguities as variants (quick profile, 3 images x 3 seeds); writes reports/ablations.md
ablations:
	$(PY) -m bench ablate

# CI's regression check: recipe fingerprint and outcome against reports/baselines (tolerances measured by
# `make spread`), then the speed-ratio gate (its threshold follows the fast path's precision on this CPU),
# which also prints the speed-up over the authors' code (bench/authors.py) timed in the same rounds
check:
	$(PY) -m bench check
	$(PY) -m bench speed --size 256 --steps 1 --gate --authors --device cpu

# how far CPU kernels and thread counts move the check's numbers: reports/regression-spread.md (~10 min)
spread:
	$(PY) -m bench spread

# every mutation of bench/mutations.py through both parts of the check: reports/regression-power.md (~15 min)
power:
	$(PY) -m bench power

# one training iteration: the authors' code, the reference and the fast path, at 128x128 and 256x256 (pytest-benchmark)
speed:
	$(PY) -m pytest bench/bench_speed.py -p no:cacheprovider --benchmark-only --benchmark-json=reports/speed.json -o addopts=""
	$(PY) -m bench speed-report --json reports/speed.json --out reports/speed.md

# re-record both goldens after an intended change of the recipe's math (commit them with the reason)
baseline:
	$(PY) -m bench check --record

# the first thing to run on a new GPU: CUDA vs the CPU baseline, CUDA graphs and batched cells vs eager single cells,
# speed, fraction of peak and what batching gains;
# writes runs/gpu-check/gpu-check.json (attach it to an issue). Refuses with one line where no CUDA device is seen.
gpu-check:
	$(PY) -m bench gpu-check

clean-runs:
	rm -rf runs

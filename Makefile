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
# `make bench` runs the paper profile where torch sees a CUDA device and the brief profile (minutes) elsewhere.
# Torch is asked when the recipe runs, not nvidia-smi: under a CPU build of torch, or a driver too old for the
# installed wheel, nvidia-smi is there and the paper profile would run on the CPU for days.
TORCH_CUDA = $(PY) -c 'import torch; print(torch.__version__, torch.cuda.is_available())'
# Where `python -m bench run` puts its results ($DIP_RUNS_DIR, else runs/), for targets that read one run in another.
RUNS_DIR = $(or $(DIP_RUNS_DIR),runs)

.PHONY: setup methods bench-methods test bench bench-brief bench-quick bench-paper campaign campaign-report readme ablations check spread power baseline speed speed-avx2 speed-report gpu-check gpu-session wheelhouse clean-runs

setup:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	@$(PY) -c "import torch; print('torch', torch.__version__, '| CUDA available:', torch.cuda.is_available())"

# The optional methods extra (deepinv, for --method convdecoder), pinning the torch already installed: torchvision's
# newest release would otherwise pull its own torch (on PyPI a CUDA build) in place of a CPU one.
methods:
	$(PY) -m pip install --quiet -e ".[methods]" "torch==$$($(PY) -c 'import torch; print(torch.__version__)')"

test:
	$(PY) -m pytest

# The committed comparison of methods (docs/methods.md): deepinv's ConvDecoder at the quick budget (11 images x 3
# seeds), as written (linear head) and with DIP's sigmoid head, against the built-in method's committed quick run
# (reports/quick/records: `make bench-quick` re-runs it), as reports/quick-convdecoder.md with every run's records
# beside it. About 10 minutes on a 2-core CPU; needs `make methods`. Finished cells are skipped on a re-run.
bench-methods:
	$(PY) -m bench run --profile quick --method convdecoder --head sigmoid --no-progress --results-dir $(RUNS_DIR)/quick-convdecoder-sigmoid
	$(PY) -m bench run --profile quick --method convdecoder --no-progress --publish --with "dip-bench=reports/quick/records" \
		--with "convdecoder-sigmoid=$(RUNS_DIR)/quick-convdecoder-sigmoid"

# The main job. Where torch sees a GPU: the paper profile (Table 1's protocol) with the seed reproduction's recipe
# as a column; elsewhere: the brief profile, then what to run next. Both also score the published outputs.
bench:
	@set -- $$($(TORCH_CUDA)); \
	if [ "$$2" = True ]; then $(MAKE) --no-print-directory bench-paper; \
	else \
	  if command -v nvidia-smi >/dev/null 2>&1; then \
	    echo "nvidia-smi found but torch $$1 sees no CUDA device (CPU build, or a driver too old for it): running the brief profile; see README"; \
	  fi; \
	  $(MAKE) --no-print-directory bench-brief; \
	fi

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
# the checkout); run it again to resume (finished cells are skipped). Fast path on CAMPAIGN_IMAGES, then House
# on the reference path, then the 512x512 images (CAMPAIGN_LARGE), one after another.
CAMPAIGN_IMAGES ?= house,cman,peppers,montage
CAMPAIGN_LARGE ?= barbara,boat,lena,couple,fingerprint,hill,man
CAMPAIGN_FLAGS := --profile paper --seeds 0 --checkpoint-every 250 --no-progress --log-every 600
campaign:
	@test -n "$$DIP_RUNS_DIR" || { echo "error: set DIP_RUNS_DIR to a directory outside the checkout, e.g. DIP_RUNS_DIR=~/dip-runs" >&2; exit 2; }
	$(PY) -m bench run $(CAMPAIGN_FLAGS) --images $(CAMPAIGN_IMAGES) --results-dir "$$DIP_RUNS_DIR/paper"
	$(PY) -m bench run $(CAMPAIGN_FLAGS) --images house --path reference --results-dir "$$DIP_RUNS_DIR/paper-reference"
	$(PY) -m bench run $(CAMPAIGN_FLAGS) --images $(CAMPAIGN_LARGE) --results-dir "$$DIP_RUNS_DIR/paper"

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

# One iteration of the authors' code and both paths on this CPU (reports/speed-<CPU kind>.json), and
# reports/speed.md from every reports/speed-*.json there is: one section per CPU kind (and per cap).
SPEED_BENCH = $(PY) -m pytest bench/bench_speed.py -p no:cacheprovider --benchmark-only -o addopts=""
AVX2_CAP = ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2
CPU_KIND = $$($(PY) -c "from bench.provenance import cpu_kind_slug; print(cpu_kind_slug())")
speed:
	$(SPEED_BENCH) --benchmark-json=reports/speed-$(CPU_KIND).json
	$(MAKE) speed-report

speed-report:
	$(PY) -m bench speed-report $$(for f in reports/speed-*.json; do printf -- '--json %s ' "$$f"; done) --out reports/speed.md

# The same under an AVX2 cap (oneDNN, ATen and MKL): the stand-in for an AVX2-only CPU on a newer x86 one.
speed-avx2:
	$(AVX2_CAP) $(SPEED_BENCH) --benchmark-json=reports/speed-$(CPU_KIND)-avx2cap.json
	$(MAKE) speed-report

# re-record both goldens after an intended change of the recipe's math (commit them with the reason)
baseline:
	$(PY) -m bench check --record

# the first thing to run on a new GPU: CUDA vs the CPU baseline, CUDA graphs and batched cells vs eager single cells,
# speed, fraction of peak and what batching gains;
# writes runs/gpu-check/gpu-check.json (attach it to an issue). Refuses with one line where no CUDA device is seen.
gpu-check:
	$(PY) -m bench gpu-check

# The one command for a short GPU window, without network (docs/gpu-session.md): gpu-check's parts, then the paper
# table (seed 0) in the fastest mode they showed correct, until GPU_SESSION_BUDGET seconds; all it produced goes into
# $(GPU_SESSION_OUT)/gpu-session.tar.gz (at most 16 MB). Without a .venv it runs the machine's python3 on the checkout
# (PYTHONPATH=.: nothing installed). GPU_SESSION_FLAGS=--rehearse: the same flow on the CPU, under a minute, one thread
# each for OpenMP and OpenBLAS (on a shared CPU their spinning threads slow it several-fold).
GPU_SESSION_OUT ?= runs/gpu-session
GPU_SESSION_BUDGET ?= 540
GPU_SESSION_FLAGS ?=
SESSION_PY := $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-session:
	$(if $(filter --rehearse,$(GPU_SESSION_FLAGS)),OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1) PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} \
	  $(SESSION_PY) -m bench gpu-session --out $(GPU_SESSION_OUT) --budget $(GPU_SESSION_BUDGET) $(GPU_SESSION_FLAGS)

# On a connected machine: the pure-Python wheels a GPU machine's Python may lack or have too old for the session
# (filelock 4.x for the cell locks, py-cpuinfo2 for provenance; tabulate and tqdm in case), for PYTHON_VERSION, into
# wheelhouse/ (git-ignored); carry it over and install from it there (docs/gpu-session.md).
PYTHON_VERSION ?= 3.12
WHEEL_PLATFORM ?= manylinux2014_x86_64
WHEELHOUSE_PACKAGES ?= "filelock>=4.3" "py-cpuinfo2>=10" "tabulate>=0.9" "tqdm>=4.60"
wheelhouse:
	$(PYTHON) -m pip download --only-binary=:all: --no-deps --python-version $(PYTHON_VERSION) \
	  --platform $(WHEEL_PLATFORM) --dest wheelhouse $(WHEELHOUSE_PACKAGES)

clean-runs:
	rm -rf runs

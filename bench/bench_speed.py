"""pytest-benchmark suite: one training iteration of the paper network, the authors' code as the anchor,
then dip-bench's reference and fast paths, each in a process of its own.

Run with ``make speed`` (it writes reports/speed-<CPU kind>.json and reports/speed.md from all of them). Not part of ``make test``:
benchmarks measure, they do not assert.
"""

import os

import pytest

from bench.isolated import StepperProcess
from bench.provenance import cpu_kind, isa_caps
from bench.train import gflop_per_iteration
from dip.nets import SkipNetConfig

ROUNDS = {128: int(os.environ.get("SPEED_ROUNDS_128", 10)), 256: int(os.environ.get("SPEED_ROUNDS_256", 5))}
# (variant, size): the anchor and both paths at both sizes; torch.compile at 128 only (its warm-up takes
# over a minute here)
CASES = [("authors", 128), ("reference", 128), ("fast", 128), ("fast+compile", 128),
         ("authors", 256), ("reference", 256), ("fast", 256)]


@pytest.mark.parametrize("path, size", CASES, ids=[f"{p}-{s}" for p, s in CASES])
def test_train_step(benchmark, path: str, size: int) -> None:
    benchmark.group = f"{size}x{size}"
    # Each case in a process of its own (bench.isolated): a heap shared with the other cases' trainers
    # moved their times by up to half. The authors' code runs as written (bench/authors.py).
    with StepperProcess(path, size) as stepper:
        benchmark.extra_info.update(
            path=path,
            size=size,
            **stepper.execution,
            cpu_kind=cpu_kind(),
            isa_caps=isa_caps(),  # a stand-in for another kind
            gflop_per_iter=gflop_per_iteration(SkipNetConfig(), size, size),
            isolated=True,
        )
        benchmark.pedantic(stepper.step, rounds=ROUNDS[size], iterations=1, warmup_rounds=2)

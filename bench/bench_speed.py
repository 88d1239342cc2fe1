"""pytest-benchmark suite: one training iteration of the paper network, the authors' code as the anchor,
then dip-bench's reference and fast paths.

Run with ``make speed`` (it writes reports/speed-<CPU kind>.json and reports/speed.md from all of them). Not part of ``make test``:
benchmarks measure, they do not assert.
"""

import os

import pytest

from bench.provenance import cpu_kind, isa_caps
from bench.speed import anchor_step, make_anchor, make_trainer, train_step
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
    if path == "authors":
        # The authors' code as written: fp32, contiguous, eager, plain Adam (bench/authors.py).
        stepper, step = make_anchor(size), anchor_step
        how = {"precision": "fp32", "channels_last": False, "fused_adam": False, "compile": False, "winograd": False,
               "matmul_1x1": False, "keep_heap": False}
    else:
        stepper, step = make_trainer(path, size), train_step
        config = stepper.config
        how = {"precision": config.precision, "channels_last": config.channels_last,
               "fused_adam": config.fused_adam, "compile": config.compile, "winograd": config.winograd,
               "matmul_1x1": config.matmul_1x1, "keep_heap": config.keep_heap}
    benchmark.extra_info.update(
        path=path,
        size=size,
        device=str(stepper.device),
        cpu_kind=cpu_kind(),
        isa_caps=isa_caps(),  # a stand-in for another kind
        gflop_per_iter=gflop_per_iteration(SkipNetConfig(), size, size),
        **how,
    )
    benchmark.pedantic(step, args=(stepper,), rounds=ROUNDS[size], iterations=1, warmup_rounds=2)

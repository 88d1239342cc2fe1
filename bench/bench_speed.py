"""pytest-benchmark suite: one training iteration of the paper network, reference vs fast path.

Run with ``make speed`` (it writes reports/speed.json and reports/speed.md). Not part of ``make test``:
benchmarks measure, they do not assert.
"""

import os

import pytest

from bench.speed import make_trainer, train_step
from bench.train import gflop_per_iteration

ROUNDS = {128: int(os.environ.get("SPEED_ROUNDS_128", 10)), 256: int(os.environ.get("SPEED_ROUNDS_256", 5))}
# (variant, size): both paths at both sizes; torch.compile at 128 only (its warm-up takes over a minute here)
CASES = [("reference", 128), ("fast", 128), ("fast+compile", 128), ("reference", 256), ("fast", 256)]


@pytest.mark.parametrize("path, size", CASES, ids=[f"{p}-{s}" for p, s in CASES])
def test_train_step(benchmark, path: str, size: int) -> None:
    trainer = make_trainer(path, size)
    config = trainer.config
    benchmark.group = f"{size}x{size}"
    benchmark.extra_info.update(
        path=path,
        size=size,
        device=str(trainer.device),
        precision=config.precision,
        channels_last=config.channels_last,
        fused_adam=config.fused_adam,
        compile=config.compile,
        gflop_per_iter=gflop_per_iteration(config.net, size, size),
    )
    benchmark.pedantic(train_step, args=(trainer,), rounds=ROUNDS[size], iterations=1, warmup_rounds=2)

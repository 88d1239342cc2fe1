"""`--cells-per-gpu K`: the harness trains cells of one size K at a time as one batched model
(dip.restore.restore_batch), each with its own seed, mask, record, failure and checkpoint."""

import json
import os
import signal

import pytest

from bench.analysis.report import render
from bench.config import build_config
from bench.errors import RunStopped
from bench.execution import resolve_device
from bench.plan import bytes_needed, plan_cells
from bench.runner import batches, run
from dip.batched import BatchedTrainer
from dip.nets.config import SkipNetConfig

SMALL_NET = SkipNetConfig(channels_down=8, channels_up=8)
# 4 cells (two images x two seeds), 64x64 crops, a small network: batches of 3 and 1. fp32 on every CPU
# kind (the fast path would pick bf16 where it is fast, with channels_last alone but not batched).
SMALL = {"run.device": "cpu", "run.precision": "fp32", "run.images": ("house", "cman"), "run.seeds": (0, 1), "run.crop": 64,
         "recipe.iterations": 12, "recipe.eval_every": 4, "recipe.timer_warmup": 1,
         "net.channels_down": SMALL_NET.channels_down, "net.channels_up": SMALL_NET.channels_up}


@pytest.fixture(scope="module")
def alone(data_dir, tmp_path_factory) -> dict[str, dict]:
    """The records of the same cells trained one at a time."""
    outcome = run(build_config("smoke", SMALL), data_dir, tmp_path_factory.mktemp("alone"), progress=False)
    return {f"{r.image}_seed{r.seed}": r for r in outcome.records}


def test_cells_train_in_batches_with_their_own_seeds_and_masks(alone, data_dir, tmp_path):
    config = build_config("smoke", {**SMALL, "run.cells_per_gpu": 3})
    outcome = run(config, data_dir, tmp_path, progress=False)
    records = {f"{r.image}_seed{r.seed}": r for r in outcome.records}
    first_three = ["house_seed0", "house_seed1", "cman_seed0"]
    assert [r.batch for r in outcome.records] == [tuple(first_three)] * 3 + [("cman_seed1",)]
    for stem, record in records.items():
        single = alone[stem]
        assert record.config.cells_per_gpu == 3 and single.config.cells_per_gpu == 1
        assert "cells_per_gpu" not in single.config.to_dict()  # as records before batching existed
        assert record.mask_sha256 == single.mask_sha256
        # iteration 0 is before any update: the same weights, z and noise as alone, up to the grouped rounding
        assert record.curve[0].loss == pytest.approx(single.curve[0].loss, rel=1e-5)
        assert [p.iteration for p in record.curve] == [0, 4, 8, 11]
        assert record.psnr == pytest.approx(single.psnr, abs=0.3)  # measured: 0.09 dB apart at most
    assert records["house_seed0"].curve[0].loss != records["house_seed1"].curve[0].loss
    assert "up to 3 cells trained at once as one batched model" in render(outcome.records)


def test_batches_group_cells_by_size(data_dir, tmp_path):
    config = build_config("smoke", {**SMALL, "run.crop": 0, "run.images": ("house", "barbara", "cman"),
                                    "run.seeds": (0,)})
    cells = plan_cells(config, data_dir, tmp_path, resolve_device("cpu"))
    assert [[c.stem for c in b] for b in batches(cells, 2)] == [["house_seed0", "cman_seed0"], ["barbara_seed0"]]


def test_a_stopped_batch_resumes_from_its_checkpoints_to_the_same_records(data_dir, tmp_path, monkeypatch):
    config = build_config("smoke", {**SMALL, "run.cells_per_gpu": 3, "run.seeds": (0,),
                                    "run.images": ("house", "cman")})
    whole = run(config, data_dir, tmp_path / "whole", progress=False).records
    forward_backward = BatchedTrainer.forward_backward
    calls = []

    def stop_at_step_5(self):
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGTERM)  # caught by the run's StopRequest: stop after this step
        return forward_backward(self)

    monkeypatch.setattr(BatchedTrainer, "forward_backward", stop_at_step_5)
    results = tmp_path / "stopped"
    with pytest.raises(RunStopped, match="stopped by SIGTERM after iteration 5 of 12 of House seed 0, C.man seed 0"):
        run(config, data_dir, results, progress=False)
    assert sorted(p.name for p in (results / "checkpoints").iterdir()) == ["cman_seed0.pt", "house_seed0.pt"]
    assert not list(results.glob("*_seed*.json"))  # nothing that looks finished
    monkeypatch.setattr(BatchedTrainer, "forward_backward", forward_backward)
    resumed = run(config, data_dir, results, progress=False).records
    for r, w in zip(resumed, whole):
        assert r.resumed_at == (5,) and r.psnr == w.psnr and r.curve == w.curve
    assert not list((results / "checkpoints").iterdir())
    assert json.loads((results / "house_seed0.json").read_text())["batch"] == ["house_seed0", "cman_seed0"]



def test_the_space_check_counts_the_checkpoints_of_a_whole_batch(data_dir, tmp_path):
    cells = plan_cells(build_config("smoke", SMALL), data_dir, tmp_path, resolve_device("cpu"))
    alone, by_three = bytes_needed(cells), bytes_needed(cells, together=3)
    checkpoint = bytes_needed(cells[:1], together=1) - bytes_needed(cells[:1], together=0)
    assert by_three - alone == 2 * checkpoint > 0  # three cells' checkpoints and a replacement, not one and one
    assert bytes_needed(cells, together=99) == bytes_needed(cells, together=len(cells))

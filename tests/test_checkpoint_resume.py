"""dip.restore's checkpoints: a resumed loop ends exactly where an uninterrupted one does (CPU)."""

import dataclasses
import io
from collections.abc import Callable
from functools import partial

import numpy as np
import pytest
import torch

from dip.masks import bernoulli_mask
from dip.nets import SkipNetConfig, build_network
from dip.recipe import RestoreConfig
from dip.restore import Checkpointing, TrainingStopped, restore

TINY_NET = SkipNetConfig(scales=3, channels_down=16, channels_up=16)
IMAGE = np.random.default_rng(3).random((32, 32), dtype=np.float32)
MASK = bernoulli_mask((32, 32), seed=0, name="resume")


def net_of(config: RestoreConfig) -> Callable[[], torch.nn.Module]:
    """The recipe's network as the harness passes it: a factory, built right after seeding."""
    return partial(build_network, config.net)


def serialised(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def loaded(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), weights_only=True)


# The paper's fixed noise and the seed recipe's walking z; fp32 eager and the CPU fast path.
CASES = {
    "fixed-fp32": RestoreConfig(iterations=40, backtrack_every=10, eval_every=10, ema_decay=0.9, net=TINY_NET),
    "cumulative-bf16-fast": RestoreConfig(iterations=40, backtrack_every=10, eval_every=10, input_noise="cumulative",
                                          precision="bf16", channels_last=True, fused_adam=True, net=TINY_NET),
    "backtracking-every-check": RestoreConfig(iterations=40, backtrack_every=10, eval_every=10,
                                              backtrack_drop_db=-1e9, net=TINY_NET),
}


@pytest.mark.parametrize("name", CASES)
def test_resuming_from_any_checkpoint_gives_the_uninterrupted_result(name):
    config = CASES[name]
    saved: list[bytes] = []
    whole = restore(IMAGE, MASK, config, net_of(config), seed=0, reference=IMAGE,
                    checkpointing=Checkpointing(every=15, save=lambda s: saved.append(serialised(s))))
    assert len(saved) == 2  # after 15 and 30 iterations; none at the end
    for data in saved:
        state = loaded(data)
        resumed = restore(IMAGE, MASK, config, net_of(config), seed=0, reference=IMAGE, checkpointing=Checkpointing(resume=state))
        np.testing.assert_array_equal(resumed.output, whole.output)
        np.testing.assert_array_equal(resumed.output_ema, whole.output_ema)
        assert resumed.curve == whole.curve
        assert resumed.backtrack_iterations == whole.backtrack_iterations
        assert resumed.final_loss == whole.final_loss
        assert resumed.resumed_at == [state["loop"]["next_iteration"]]
        assert resumed.timing.timed_iterations > 0


def test_a_stop_request_saves_and_raises_after_the_current_step():
    config = CASES["fixed-fp32"]
    seen, saved = [], []
    stop = Checkpointing(save=lambda s: saved.append(serialised(s)), stop_requested=lambda: len(seen) >= 7)
    with pytest.raises(TrainingStopped) as stopped:
        restore(IMAGE, MASK, config, net_of(config), seed=0, callback=lambda i, p: seen.append(i), checkpointing=stop)
    assert stopped.value.iteration == 7 and seen == list(range(7)) and len(saved) == 1
    state = loaded(saved[0])
    assert state["loop"]["next_iteration"] == 7 and state["trainer"]["steps"] == 7
    resumed = restore(IMAGE, MASK, config, net_of(config), seed=0, checkpointing=Checkpointing(resume=state))
    np.testing.assert_array_equal(resumed.output, restore(IMAGE, MASK, config, net_of(config), seed=0).output)


def test_a_stop_requested_during_the_last_step_just_finishes():
    config = dataclasses.replace(CASES["fixed-fp32"], iterations=5)
    saved, seen = [], []
    stop = Checkpointing(save=saved.append, stop_requested=lambda: len(seen) == 5)
    result = restore(IMAGE, MASK, config, net_of(config), seed=0, callback=lambda i, p: seen.append(i), checkpointing=stop)
    assert np.isfinite(result.output).all() and saved == []

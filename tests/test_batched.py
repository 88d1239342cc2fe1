"""K cells as one batched model give each cell what it gets alone (the basis of many cells per GPU)."""

import dataclasses
import io
from functools import partial

import numpy as np
import pytest
import torch

from bench.data import centre_crop, load_image, load_images
from dip.batched import BatchedTrainer
from dip.masks import bernoulli_mask
from dip.nets import SkipNetConfig, build_network
from dip.recipe import RestoreConfig
from dip.restore import (
    MAX_RESTORES_PER_CHECK,
    CellInput,
    Checkpointing,
    DivergenceError,
    TrainingStopped,
    restore,
    restore_batch,
)
from dip.trainer import Trainer
from tests.test_restore import poison_gradient

TINY_NET = SkipNetConfig(scales=3, channels_down=16, channels_up=16)
CONFIG = RestoreConfig(net=TINY_NET)
CPU = torch.device("cpu")


def load_cells(data_dir, side: int) -> list[tuple]:
    """(image, mask, seed) of three cells: two seeds of House, one of C.man, side x side crops."""
    images = load_images()
    out = []
    for name, seed in (("house", 0), ("house", 1), ("cman", 0)):
        image = centre_crop(load_image(images[name], "GT", data_dir), side)
        out.append((image, bernoulli_mask(image.shape, seed=seed, name=name), seed))
    return out


@pytest.fixture(scope="module")
def cells64(data_dir):
    return load_cells(data_dir, 64)


@pytest.fixture(scope="module")
def cells(data_dir):
    return load_cells(data_dir, 32)  # small: the loop tests train several batches


def trainers(cells, config=CONFIG) -> list[Trainer]:
    return [Trainer(image, mask, config, partial(build_network, config.net), seed=seed, device=CPU)
            for image, mask, seed in cells]


def test_each_cell_gets_its_own_gradient(cells64):
    alone = trainers(cells64)
    batched = BatchedTrainer(trainers(cells64))
    for k, trainer in enumerate(alone):  # each cell starts from the weights its seed gives it alone
        for name, param in trainer.net.named_parameters():
            assert torch.equal(batched.cell_parameters(k)[name], param.detach())
    _, losses = batched.forward_backward()
    for k, trainer in enumerate(alone):
        _, loss = trainer.forward_backward()
        torch.testing.assert_close(losses[k], loss, rtol=1e-6, atol=0)
        for (name, param) in trainer.net.named_parameters():
            torch.testing.assert_close(batched.params[name].grad[k], param.grad, rtol=1e-4, atol=1e-7)


def test_batched_training_follows_each_cell_trained_alone(cells64):
    """Three steps of Adam: each cell's losses and outputs match its training alone (not every
    parameter: the biases before a BatchNorm have a zero gradient up to rounding, which Adam turns
    into steps of +-lr that the BatchNorm then removes). The grouped
    arithmetic rounds differently (about 1e-6 relative in the gradients), and Adam's normalised update
    amplifies that in the parameters whose gradient is near zero, so the trajectories part slowly, as
    any two roundings of this chaotic optimisation do (measured here: outputs 1e-5 apart after 3 steps,
    1e-3 after 10). The cells themselves differ by far more than the tolerance."""
    alone = trainers(cells64)
    batched = BatchedTrainer(trainers(cells64))
    for _ in range(3):
        outputs, losses = batched.forward_backward()
        batched.optimizer_step()
        for k, trainer in enumerate(alone):
            out, loss = trainer.forward_backward()
            trainer.optimizer_step()
            torch.testing.assert_close(losses[k], loss, rtol=2e-5, atol=0)
            torch.testing.assert_close(outputs[k], out, rtol=0, atol=2e-4)
    assert (outputs[0] - outputs[1]).abs().max() > 100 * 2e-4  # the cells really are different


def test_cells_of_different_sizes_or_recipes_are_refused(cells):
    small = trainers(cells[:1])
    image, mask, seed = cells[1]
    other_size = Trainer(image[:16, :16], mask[:16, :16], CONFIG, partial(build_network, TINY_NET), seed=seed, device=CPU)
    with pytest.raises(ValueError, match="one input shape and one recipe"):
        BatchedTrainer(small + [other_size])
    with pytest.raises(ValueError, match="at least one trainer"):
        BatchedTrainer([])


# --- restore_batch: the whole restoration loop, per cell, on one batched model ---

# At the paper's lr 1e-3 Adam amplifies the rounding difference of the grouped arithmetic (a chaotic
# trajectory: measured 0.01-0.5 dB apart after 200 iterations of the paper network at 64x64, about what the
# fast and reference paths differ by); at lr 1e-6 the trajectories stay together, so every line of the
# loop can be compared tightly, as the fingerprint check does (measured: outputs 4e-6 apart after 60 iterations).
SLOW = RestoreConfig(iterations=40, lr=1e-6, backtrack_every=10, eval_every=20, ema_decay=0.9, fused_adam=True,
                     net=TINY_NET)


def inputs(cells) -> list[CellInput]:
    return [CellInput(image, mask, seed, reference=image) for image, mask, seed in cells]


def alone(cells, config) -> list:
    return [restore(image, mask, config, partial(build_network, config.net), seed=seed, reference=image)
            for image, mask, seed in cells]


def assert_same_cell(batched, single, atol=1e-5) -> None:
    np.testing.assert_allclose(batched.output, single.output, rtol=0, atol=atol)
    np.testing.assert_allclose(batched.output_ema, single.output_ema, rtol=0, atol=atol)
    assert [p.iteration for p in batched.curve] == [p.iteration for p in single.curve]
    for b, s in zip(batched.curve, single.curve):
        assert b.loss == pytest.approx(s.loss, rel=1e-4) and b.psnr == pytest.approx(s.psnr, abs=1e-3)
    assert batched.final_loss == pytest.approx(single.final_loss, rel=1e-4)
    assert batched.backtrack_iterations == single.backtrack_iterations
    assert batched.divergences == single.divergences


def test_a_batch_restores_each_cell_as_it_is_restored_alone(cells):
    """With backtracking at every check (the threshold set so that every check counts as a drop), so
    that the per-cell restores of the kept state are compared too."""
    config = dataclasses.replace(SLOW, backtrack_drop_db=-1e9)
    seen: list[list[int]] = [[] for _ in cells]
    callbacks = [lambda i, point, k=k: seen[k].append(i) for k in range(len(cells))]
    results = restore_batch(inputs(cells), config, partial(build_network, config.net), callbacks=callbacks)
    for batched, single in zip(results, alone(cells, config)):
        assert_same_cell(batched, single)
    assert results[0].backtrack_iterations == list(range(config.iterations))  # a drop holds the check counter
    assert seen == [list(range(40))] * 3
    assert abs(results[0].curve[-1].psnr - results[2].curve[-1].psnr) > 1  # the cells really are different


def _poison_cell_gradient(monkeypatch, cell: int, at_step: int) -> None:
    """Make one cell's gradients of step number ``at_step`` (0-based) hold a NaN, once."""
    poison_gradient(monkeypatch, BatchedTrainer, at_step, lambda batch: next(iter(batch.params.values())).grad[cell])


def test_a_non_finite_gradient_of_one_cell_is_skipped_for_that_cell_alone(cells, monkeypatch):
    """Fused Adam's guard, per cell: cell 1's step 12 is skipped on the device; the other cells take
    exactly the steps they take in a clean batch, and cell 1 ends near its clean self (one step fewer)."""
    clean = restore_batch(inputs(cells), SLOW, partial(build_network, SLOW.net))
    _poison_cell_gradient(monkeypatch, cell=1, at_step=12)
    poisoned = restore_batch(inputs(cells), SLOW, partial(build_network, SLOW.net))
    for k in (0, 2):
        np.testing.assert_array_equal(poisoned[k].output, clean[k].output)
    assert poisoned[1].divergences == [] and not np.array_equal(poisoned[1].output, clean[1].output)
    np.testing.assert_allclose(poisoned[1].output, clean[1].output, atol=1e-3)  # measured 2.7e-4


def test_with_plain_adam_a_cells_nan_update_is_restored_at_its_next_read(cells, monkeypatch):
    """Plain Adam applies the NaN update to cell 1 (as alone): its steps 13-19 are non-finite, the read at
    check 20 restores cell 1's state kept at check 10, and it trains on; the other cells are untouched."""
    plain = dataclasses.replace(SLOW, fused_adam=False)
    clean = restore_batch(inputs(cells), plain, partial(build_network, plain.net))
    _poison_cell_gradient(monkeypatch, cell=1, at_step=12)
    poisoned = restore_batch(inputs(cells), plain, partial(build_network, plain.net))
    for k in (0, 2):
        np.testing.assert_array_equal(poisoned[k].output, clean[k].output)
    assert poisoned[1].divergences == list(range(13, 21)) and np.isfinite(poisoned[1].output).all()
    assert [p.iteration for p in poisoned[1].curve] == [0, 39]  # no point at 20: its loss was not finite


def test_a_cell_that_diverges_beyond_repair_fails_alone(cells):
    """A NaN in one cell's observed pixels: that cell gives up as it does alone; the others finish as
    in a batch without it."""
    image, mask, seed = cells[1]
    broken = image.copy()
    broken[mask == 1] = np.nan
    batch = inputs(cells)
    batch[1] = CellInput(broken, mask, seed, reference=image)
    results = restore_batch(batch, SLOW, partial(build_network, SLOW.net))
    assert isinstance(results[1], DivergenceError)
    assert str(results[1]).endswith(f"the {MAX_RESTORES_PER_CHECK + 1}th since the last good state was kept; "
                                    f"restoring it does not help")
    for k in (0, 2):
        assert_same_cell(results[k], alone([cells[k]], SLOW)[0])
    one_step = dataclasses.replace(SLOW, iterations=1)
    failed = restore_batch(batch, one_step, partial(build_network, SLOW.net), on_divergence="fail")
    assert str(failed[1]) == "training diverged: non-finite loss at iteration 0"
    assert not isinstance(failed[0], DivergenceError)
    everyone = restore_batch([batch[1], batch[1]], SLOW, partial(build_network, SLOW.net), on_divergence="fail")
    assert [str(e) for e in everyone] == ["training diverged: non-finite loss at iteration 0"] * 2  # ends at once


def test_a_stopped_batch_resumes_exactly_in_a_batch_and_alone(cells):
    """A stop after 25 iterations saves each cell in restore()'s checkpoint format: resumed as a batch the
    cells end bit-identical to the uninterrupted batch; a cell resumed alone ends within rounding of it."""
    config = SLOW
    network = partial(build_network, config.net)
    whole = restore_batch(inputs(cells), config, network)
    saved: list[bytes] = [b""] * len(cells)
    done = [0]

    def save(state, k):
        saved[k] = serialised(state)

    ckpts = [Checkpointing(save=partial(save, k=k), stop_requested=lambda: done[0] >= 25) for k in range(len(cells))]
    callbacks = [lambda i, point: done.__setitem__(0, i + 1)] + [None] * (len(cells) - 1)
    with pytest.raises(TrainingStopped) as stopped:
        restore_batch(inputs(cells), config, network, checkpointing=ckpts, callbacks=callbacks)
    assert stopped.value.iteration == 25 and all(saved)
    states = [torch.load(io.BytesIO(data), weights_only=True) for data in saved]
    resumed = restore_batch(inputs(cells), config, network, checkpointing=[Checkpointing(resume=s) for s in states])
    for r, w in zip(resumed, whole):
        np.testing.assert_array_equal(r.output, w.output)
        assert r.curve == w.curve and r.final_loss == w.final_loss and r.resumed_at == [25]
    image, mask, seed = cells[2]
    one = restore(image, mask, config, network, seed=seed, reference=image,
                  checkpointing=Checkpointing(resume=states[2]))
    assert_same_cell(one, whole[2])


def test_cells_resuming_at_different_iterations_are_refused(cells):
    resume = {"loop": {"next_iteration": 5}}
    with pytest.raises(ValueError, match=r"must resume at one iteration, got \[0, 5\]"):
        restore_batch(inputs(cells[:2]), SLOW, partial(build_network, SLOW.net),
                      checkpointing=[Checkpointing(), Checkpointing(resume=resume)])


def serialised(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()

import dataclasses
from collections.abc import Callable
from functools import partial

import numpy as np
import pytest
import torch

from bench.data import centre_crop, load_image, load_images
from dip.masks import bernoulli_mask
from dip.metrics import psnr
from dip.nets import SkipNetConfig, build_network
from dip.recipe import RestoreConfig
from dip.restore import MAX_RESTORES_PER_CHECK, DivergenceError, restore
from dip.trainer import Trainer, to_numpy

TINY_NET = SkipNetConfig(scales=3, channels_down=16, channels_up=16)


def net_of(config: RestoreConfig) -> Callable[[], torch.nn.Module]:
    """The recipe's network as the harness passes it: a factory, built right after seeding."""
    return partial(build_network, config.net)


@pytest.fixture(scope="module")
def house64(data_dir):
    image = centre_crop(load_image(load_images()["house"], "GT", data_dir), 64)
    return image, bernoulli_mask(image.shape, seed=0, name="house")


def test_short_training_run_beats_the_masked_input(house64):
    image, mask = house64
    config = RestoreConfig(iterations=30, eval_every=10)
    result = restore(image, mask, config, net_of(config), seed=0, reference=image)
    assert result.output.shape == (64, 64)
    assert psnr(image, result.output) > psnr(image, image * mask) + 10  # House's smoke crop: +13.3 dB after 20 steps
    # the curve is recorded at 0, 10, 20 and the last iteration, and PSNR rises along it
    assert [p.iteration for p in result.curve] == [0, 10, 20, 29]
    assert result.curve[-1].psnr > result.curve[0].psnr


def test_same_seed_same_output_different_seed_different_output(house64):
    image, mask = house64
    config = RestoreConfig(iterations=5, net=TINY_NET)
    a = restore(image, mask, config, net_of(config), seed=1).output
    b = restore(image, mask, config, net_of(config), seed=1).output
    c = restore(image, mask, config, net_of(config), seed=2).output
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_dropped_pixels_are_never_seen(house64):
    """The loss only sees x * m: changing the dropped pixels changes nothing."""
    image, mask = house64
    config = RestoreConfig(iterations=3, net=TINY_NET)
    scrambled = np.where(mask == 1, image, np.random.default_rng(0).random(image.shape, dtype=np.float32))
    np.testing.assert_array_equal(restore(image, mask, config, net_of(config), seed=0).output, restore(scrambled, mask, config, net_of(config), seed=0).output)


def test_backtracking_restores_kept_parameters_at_each_check(house64):
    """With the threshold set so every check counts as a drop, every check restores the kept copy, and
    since a drop holds the notebook's counter back, every step after the first is a check too."""
    image, mask = house64
    config = RestoreConfig(iterations=30, backtrack_every=10, backtrack_drop_db=-1e9, net=TINY_NET)
    result = restore(image, mask, config, net_of(config), seed=0)
    assert result.backtrack_iterations == list(range(30))
    no_backtracking = restore(image, mask, dataclasses.replace(config, backtracking=False), net_of(config), seed=0)
    assert no_backtracking.backtracks == 0
    assert not np.array_equal(result.output, no_backtracking.output)


def set_read_loss(monkeypatch, losses: dict[int, float]) -> None:
    """Replace the loss that the loop reads at the given 0-based iterations (not the one that was
    differentiated: the gradients and the step are unchanged), so that the check sees a chosen PSNR."""
    forward_backward = Trainer.forward_backward

    def replaced(self):
        out, loss = forward_backward(self)
        i = self.steps - 1
        return out, (loss * 0 + losses[i]) if i in losses else loss

    monkeypatch.setattr(Trainer, "forward_backward", replaced)


def test_a_drop_is_checked_again_at_the_next_step_and_shifts_the_later_checks(house64, monkeypatch):
    """The notebook's closure returns before ``i += 1`` after a drop. Drops at 20 and 21 (checks at 0, 10,
    20, then 21 and 22 since the counter stayed at 20): 22 is accepted, so the counter reads 30 at step
    32, a drop again; 33 is accepted and the next check is at 43, so the drop put at 40 is not seen.
    (A cadence taken from the step count would have seen [20, 40].)"""
    image, mask = house64
    config = RestoreConfig(iterations=50, backtrack_every=10, net=TINY_NET)
    set_read_loss(monkeypatch, {20: 1.0, 21: 1.0, 32: 1.0, 40: 1.0})  # 0 dB: far below any kept check
    result = restore(image, mask, config, net_of(config), seed=0)
    assert result.backtrack_iterations == [20, 21, 32]


@pytest.mark.parametrize(("below_db", "drops"), [(4.9, []), (5.1, [20])])
def test_the_drop_threshold_is_five_db(house64, monkeypatch, below_db, drops):
    """At the paper's threshold: a check 4.9 dB below the last accepted one is accepted, 5.1 dB is a drop."""
    image, mask = house64
    config = RestoreConfig(iterations=30, backtrack_every=10, net=TINY_NET)
    assert config.backtrack_drop_db == 5.0
    kept_loss = 1e-2  # 20 dB at the check of iteration 10
    set_read_loss(monkeypatch, {10: kept_loss, 20: kept_loss * 10 ** (below_db / 10)})
    assert restore(image, mask, config, net_of(config), seed=0).backtrack_iterations == drops


@pytest.mark.parametrize("fused", [False, True])
def test_the_optimiser_is_torchs_adam_with_its_defaults(fused):
    """The authors' torch.optim.Adam(lr=1e-3): betas (0.9, 0.999), eps 1e-8, no weight decay, no AMSGrad,
    on both paths (plain and fused). Asserted, since a changed beta2 or a weight decay of 1e-2 moves the
    regression check's short runs by less than its tolerance (bench.mutations: adam-beta2-0.99,
    adamw-weight-decay)."""
    config = RestoreConfig(fused_adam=fused, net=TINY_NET)
    trainer = Trainer(np.zeros((32, 32), np.float32), np.ones((32, 32), np.float32), config, net_of(config), seed=0,
                      device=torch.device("cpu"))
    assert type(trainer.optimizer) is torch.optim.Adam  # not a subclass: AdamW is one
    (group,) = trainer.optimizer.param_groups
    assert group["params"] == trainer.params and group["lr"] == 1e-3
    assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8 and group["weight_decay"] == 0
    assert group["amsgrad"] is False and group["maximize"] is False
    assert group.get("decoupled_weight_decay", False) is False
    assert bool(group["fused"]) is fused


def test_backtracking_keeps_parameters_while_psnr_does_not_drop(house64):
    image, mask = house64
    config = RestoreConfig(iterations=30, backtrack_every=10, net=TINY_NET)
    result = restore(image, mask, config, net_of(config), seed=0)
    assert result.backtracks == 0


def test_non_finite_loss_fails_at_once_or_gives_up_after_repeated_restores(house64):
    image, mask = house64
    poisoned = image.copy()
    poisoned[mask == 1] = np.nan  # a NaN in an observed pixel reaches the loss at once
    config = RestoreConfig(iterations=30, net=TINY_NET)
    with pytest.raises(DivergenceError, match="non-finite loss at iteration 0$"):
        restore(poisoned, mask, config, net_of(config), seed=0, on_divergence="fail")
    # restoring cannot help when every step is non-finite: given up after MAX_RESTORES_PER_CHECK
    with pytest.raises(DivergenceError, match=f"at iteration {MAX_RESTORES_PER_CHECK}, the {MAX_RESTORES_PER_CHECK + 1}th since"):
        restore(poisoned, mask, config, net_of(config), seed=0, on_divergence="backtrack")
    with pytest.raises(ValueError, match="unknown on_divergence"):
        restore(image, mask, config, net_of(config), seed=0, on_divergence="ignore")


def _poison_step(monkeypatch, at_step: int) -> None:
    """Make the optimiser step number ``at_step`` (0-based) write a NaN into a weight, once."""
    step = Trainer.optimizer_step
    calls = []

    def poisoned(self):
        step(self)
        if len(calls) == at_step:
            with torch.no_grad():
                self.params[0].view(-1)[0] = float("nan")
        calls.append(1)

    monkeypatch.setattr(Trainer, "optimizer_step", poisoned)


def test_a_nan_weight_is_caught_at_the_next_read_and_undone(house64, monkeypatch):
    """Step 12 writes a NaN into a weight: iterations 13 to 19 are non-finite, unseen (their losses stay
    on the device); the read at check 20 finds 20 non-finite too, so the state kept at check 10 comes back
    (parameters and Adam's moments), step 20 is skipped, and training goes on to a finite result."""
    image, mask = house64
    config = RestoreConfig(iterations=40, backtrack_every=10, eval_every=10, net=TINY_NET)
    _poison_step(monkeypatch, 12)
    result = restore(image, mask, config, net_of(config), seed=0, reference=image)
    assert result.divergences == list(range(13, 21)) and result.backtracks == 0
    assert np.isfinite(result.output).all() and np.isfinite(result.final_loss)
    assert [p.iteration for p in result.curve] == [0, 10, 30, 39]  # no point at 20: its loss was not finite
    assert psnr(image, result.output) > psnr(image, image * mask) + 3  # trained on, from the kept state
    _poison_step(monkeypatch, 12)
    with pytest.raises(DivergenceError, match="non-finite loss at iteration 13$"):
        restore(image, mask, config, net_of(config), seed=0, on_divergence="fail")


def poison_gradient(monkeypatch, trainer_class: type, at_step: int, gradient_of: Callable) -> None:
    """Make a gradient of step number ``at_step`` (0-based) hold a NaN, once: ``gradient_of(trainer)``
    names it (a Trainer's, or one cell's of a BatchedTrainer)."""
    forward_backward = trainer_class.forward_backward
    calls = []

    def poisoned(self):
        out, loss = forward_backward(self)
        if len(calls) == at_step:
            gradient_of(self).view(-1)[0] = float("nan")
            if self.skips_non_finite_steps:
                self._find_non_finite(loss)  # the guard sees the gradient as the backward pass left it
        calls.append(1)
        return out, loss

    monkeypatch.setattr(trainer_class, "forward_backward", poisoned)


def _poison_gradient(monkeypatch, at_step: int) -> None:
    poison_gradient(monkeypatch, Trainer, at_step, lambda trainer: trainer.params[0].grad)


def test_fused_adam_skips_a_non_finite_gradient_on_the_device(house64, monkeypatch):
    """A NaN gradient at step 12 (a finite loss): fused Adam's update is skipped on the device (found_inf,
    no host read), so nothing needs restoring; plain Adam applies it and the next read restores."""
    image, mask = house64
    fused = RestoreConfig(iterations=40, backtrack_every=10, eval_every=10, fused_adam=True, net=TINY_NET)
    _poison_gradient(monkeypatch, 12)
    seen = []
    result = restore(image, mask, fused, net_of(fused), seed=0, reference=image,
                     callback=lambda i, point: seen.append(i))
    assert result.divergences == [] and result.backtracks == 0  # a finite loss: the read sees nothing wrong
    assert np.isfinite(result.output).all() and len(seen) == 40
    plain = dataclasses.replace(fused, fused_adam=False)
    _poison_gradient(monkeypatch, 12)
    result = restore(image, mask, plain, net_of(plain), seed=0, reference=image)
    assert result.divergences == list(range(13, 21)) and np.isfinite(result.output).all()


def test_fused_adam_step_is_a_no_op_when_found_inf_is_set(house64):
    config = RestoreConfig(iterations=1, fused_adam=True, net=TINY_NET)
    trainer = Trainer(*house64, config, net_of(config), seed=0, device=torch.device("cpu"))
    trainer.forward_backward()
    before = trainer.kept_parameters()
    trainer.found_inf.fill_(1.0)
    trainer.optimizer_step()
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.params))
    assert all(int(state["step"]) == 0 for state in trainer.optimizer.state.values())
    trainer.forward_backward()
    assert float(trainer.found_inf) == 0.0  # recomputed from the new loss and gradients
    trainer.optimizer_step()
    assert not all(torch.equal(a, b) for a, b in zip(before, trainer.params))


def test_a_huge_learning_rate_diverges_for_real(house64):
    """lr 1e10: every step from the kept state overflows, while the restored state itself is finite
    (every other loss is NaN). Backtracking gives up after 10 restores without reaching the next check
    rather than finish with the untrained network's output."""
    image, mask = house64
    config = RestoreConfig(iterations=80, lr=1e10, net=TINY_NET)
    with pytest.raises(DivergenceError, match="non-finite loss at iteration 1$"):
        restore(image, mask, config, net_of(config), seed=0, on_divergence="fail")
    with pytest.raises(DivergenceError, match="restoring it does not help"):
        restore(image, mask, config, net_of(config), seed=0, on_divergence="backtrack")


def test_bf16_autocast_with_channels_last_trains(house64):
    """A small network: on a CPU without bf16 instructions bf16 is emulated (the paper network took 56 s
    for these 40 steps on an AVX2-only EPYC; this one 4 s, and it gains about 15 dB)."""
    image, mask = house64
    config = RestoreConfig(iterations=40, precision="bf16", channels_last=True, net=TINY_NET)
    result = restore(image, mask, config, net_of(config), seed=0)
    assert result.precision == "bf16"
    assert psnr(image, result.output) > psnr(image, image * mask) + 5


def test_fp16_autocast_runs_with_a_grad_scaler(house64):
    """fp16 is the GPU fallback where bf16 is missing; on a CPU it is slow, so only a few steps here."""
    image, mask = house64
    config = RestoreConfig(iterations=3, precision="fp16", net=TINY_NET)
    result = restore(image, mask, config, net_of(config), seed=0)
    assert result.precision == "fp16" and np.isfinite(result.output).all()


def test_rgb_image_trains_with_three_output_channels():
    rng = np.random.default_rng(0)
    image = rng.random((64, 64, 3), dtype=np.float32)
    mask = bernoulli_mask((64, 64), seed=0, name="rgb")
    config = RestoreConfig(iterations=2, net=dataclasses.replace(TINY_NET, out_channels=3))
    assert restore(image, mask, config, net_of(config), seed=0).output.shape == (64, 64, 3)


def test_input_validation():
    # Sizes the network cannot take are the caller's to refuse (dip.nets.check_input_size): it built the network.
    image = np.zeros((64, 64), np.float32)
    config = RestoreConfig(iterations=1)
    with pytest.raises(ValueError, match="channels"):
        restore(np.zeros((64, 64, 3), np.float32), np.ones((64, 64), np.float32), config, net_of(config), seed=0)
    with pytest.raises(ValueError, match="differ in size"):
        restore(image, np.ones((32, 64), np.float32), config, net_of(config), seed=0)
    with pytest.raises(ValueError, match="iterations must be positive"):
        RestoreConfig(iterations=0)
    with pytest.raises(ValueError, match="precision"):
        RestoreConfig(precision="fp8")
    for bad in ({"lr": float("inf")}, {"input_noise_std": float("nan")}, {"lr": 1e31}):
        with pytest.raises(ValueError, match="must be finite|lr must be in"):
            RestoreConfig(**bad)


def test_weights_and_input_do_not_depend_on_the_device_generator_state(house64):
    """Everything random is drawn after seeding, so prior use of the global RNG changes nothing."""
    image, mask = house64
    config = RestoreConfig(iterations=2, net=TINY_NET)
    a = restore(image, mask, config, net_of(config), seed=5).output
    torch.rand(1000)
    np.random.rand(10)
    np.testing.assert_array_equal(a, restore(image, mask, config, net_of(config), seed=5).output)


def test_a_factory_is_built_right_after_seeding_and_a_module_is_trained_as_given(house64):
    image, mask = house64
    config = RestoreConfig(iterations=1, net=TINY_NET)
    seeds = []

    def factory() -> torch.nn.Module:
        seeds.append(torch.initial_seed())  # the seed torch's global generator was last given
        return build_network(TINY_NET)

    Trainer(image, mask, config, factory, seed=7, device=torch.device("cpu"))
    assert seeds == [7]
    net = build_network(TINY_NET)
    assert Trainer(image, mask, config, net, seed=7, device=torch.device("cpu")).net is net


def test_ema_is_the_moving_average_of_the_outputs(house64):
    """With decay 0.5 over 2 steps the EMA is (out_0 + out_1) / 2; the curve carries its PSNR."""
    image, mask = house64
    config = RestoreConfig(iterations=2, ema_decay=0.5, eval_every=1, net=TINY_NET)
    seen = []
    result = restore(image, mask, config, net_of(config), seed=0, reference=image)
    assert result.output_ema is not None and result.curve[-1].psnr_ema is not None
    # replay the two training outputs with the same seed: the EMA must equal their mean
    from dip.trainer import Trainer, to_numpy

    trainer = Trainer(image, mask, config, net_of(config), seed=0, device=torch.device("cpu"))
    for _ in range(2):
        out, _ = trainer.forward_backward()
        seen.append(to_numpy(out))
        trainer.optimizer_step()
    np.testing.assert_allclose(result.output_ema, (seen[0] + seen[1]) / 2, rtol=1e-6, atol=1e-7)
    assert restore(image, mask, dataclasses.replace(config, ema_decay=0.0), net_of(config), seed=0).output_ema is None


def record_outputs(monkeypatch) -> list[torch.Tensor]:
    """Every training step's output (1, C, H, W), in order, as the loop received it from the Trainer."""
    outputs: list[torch.Tensor] = []
    forward_backward = Trainer.forward_backward

    def recorded(self):
        out, loss = forward_backward(self)
        outputs.append(out.detach().clone())
        return out, loss

    monkeypatch.setattr(Trainer, "forward_backward", recorded)
    return outputs


def test_the_ema_takes_every_step_on_the_deferred_path_too(house64, monkeypatch):
    """The EMA of a real run: checks every 4, curve points every 5, so 6 of the 12 steps (1, 2, 3, 6, 7
    and 9) never read their loss on the host and take the deferred update (dip.restore._CellLoop._unseen),
    as 49 of every 50 steps do at the paper's cadence. The result's EMA
    must equal the moving average of every step's output, computed here in float64 from the outputs
    themselves, to fp32 rounding."""
    import dip.restore

    image, mask = house64
    decay = 0.7  # far from 0 and 1: a swapped weight or a skipped step moves the EMA by O(1) of an output
    config = RestoreConfig(iterations=12, backtrack_every=4, eval_every=5, ema_decay=decay, net=TINY_NET)
    outputs = record_outputs(monkeypatch)
    deferred: list[int] = []
    unseen = dip.restore._CellLoop._unseen

    def counted(self, i, out, loss):
        deferred.append(i)
        return unseen(self, i, out, loss)

    monkeypatch.setattr(dip.restore._CellLoop, "_unseen", counted)
    result = restore(image, mask, config, net_of(config), seed=0, reference=image)
    assert deferred == [1, 2, 3, 6, 7, 9] and len(outputs) == 12 and result.backtracks == 0
    ema = outputs[0].double()
    for out in outputs[1:]:
        ema = decay * ema + (1 - decay) * out.double()
    np.testing.assert_allclose(result.output_ema, to_numpy(ema), rtol=1e-5, atol=1e-6)
    # the curve's EMA PSNR at the last point is the PSNR of that same average
    assert result.curve[-1].psnr_ema == pytest.approx(psnr(image, to_numpy(ema)), abs=1e-4)


def test_cumulative_input_noise_walks_z_and_fixed_noise_does_not(house64):
    image, mask = house64
    for kind in ("fixed", "cumulative"):
        config = RestoreConfig(iterations=1, input_noise=kind, input_noise_std=0.5, net=TINY_NET)
        trainer = Trainer(image, mask, config, net_of(config), seed=0, device=torch.device("cpu"))
        deviations = []
        for _ in range(5):
            trainer.forward_backward()
            deviations.append(float((trainer.net_input - trainer.z).std()))
            trainer.optimizer_step()
        if kind == "fixed":  # fresh noise of std 0.5 around z at every step
            assert all(abs(d - 0.5) < 0.02 for d in deviations)
        else:  # the first step sees z itself; after k more, z has walked by std 0.5 * sqrt(k)
            assert deviations[0] == 0.0
            for k in range(1, 5):
                assert abs(deviations[k] - 0.5 * k**0.5) < 0.03 * k**0.5


def test_unknown_input_noise_is_refused():
    with pytest.raises(ValueError, match="unknown input_noise"):
        RestoreConfig(input_noise="walk")


HOST_READS = ("item", "__float__", "__int__", "__index__", "__bool__", "tolist", "numpy")


def test_the_host_reads_the_loss_only_at_checks_evaluation_points_and_the_end(house64, monkeypatch):
    """No host read of a tensor (the CPU stand-in for a device synchronisation) in the steps between
    the looks: checks every 10, evaluation points every 15, the last iteration (fused Adam guards the steps)."""
    image, mask = house64
    config = RestoreConfig(iterations=30, backtrack_every=10, eval_every=15, fused_adam=True, ema_decay=0.99,
                           net=TINY_NET)
    iteration = [0]  # the iteration running now: set by the callback, which runs after each one
    reads: list[int] = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            reads.append(iteration[0])
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def callback(i, point):
        iteration[0] = i + 1

    result = restore(image, mask, config, net_of(config), seed=0, reference=image, callback=callback)
    read_in = {i for i in reads if i < config.iterations}
    assert read_in == {0, 10, 15, 20, 29}, sorted(read_in)
    assert [p.iteration for p in result.curve] == [0, 15, 29] and np.isfinite(result.final_loss)


@pytest.mark.parametrize("input_noise", ["fixed", "cumulative"])
def test_the_input_noise_does_not_depend_on_the_memory_layout(house64, input_noise):
    """channels_last changes where the input lives in memory, not what it holds: for one seed the fast
    and the reference layouts see the same z and the same noise, element for element, at every step."""
    image, mask = house64
    inputs = {}
    for channels_last in (False, True):
        config = RestoreConfig(channels_last=channels_last, input_noise=input_noise, net=TINY_NET)
        trainer = Trainer(image, mask, config, net_of(config), seed=3, device=torch.device("cpu"))
        inputs[channels_last] = [trainer.next_input().clone() for _ in range(3)]
    assert inputs[True][0].is_contiguous(memory_format=torch.channels_last)
    for reference, fast in zip(inputs[False], inputs[True]):
        assert torch.equal(reference, fast)

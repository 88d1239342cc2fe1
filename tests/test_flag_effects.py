"""Every recipe and network flag takes effect. Given on the command line (parsed by bench's own parser,
through build_config and cell_recipe, into the network build_network makes, as bench.train trains it),
each changes what is computed: the first step's output or loss differs from the default's, or the loop
behaves differently, and in the way the changed module computes it. A flag that reached the record's
configuration but not the computation would leave reports/ablations.md wrong with every other test green.

Everything here is a tiny network (2 scales, 8 channels) on a 32x32 image, for at most a dozen steps.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

import dip.restore
from bench.cli import build_parser
from bench.commands.common import config_overrides
from bench.config import build_config
from bench.execution import cell_recipe
from bench.flags import field_dests
from dip.masks import bernoulli_mask
from dip.nets import build_network
from dip.nets.blocks import ReflectionPad
from dip.nets.seednet import SeedNet
from dip.nets.skipnet import Scale, SkipNet
from dip.recipe import RestoreConfig
from dip.restore import restore
from dip.trainer import Trainer, to_numpy
from tests.test_restore import set_read_loss

CPU = torch.device("cpu")
# The smoke profile on the reference path (eager fp32, plain Adam: exact comparisons), made tiny.
BASE = ["run", "--profile", "smoke", "--path", "reference", "--device", "cpu", "--iterations", "2",
        "--scales", "2", "--channels-down", "8", "--channels-up", "8"]
_rows = np.linspace(0.1, 0.9, 32, dtype=np.float32)
IMAGE = np.clip(np.add.outer(_rows, _rows[::-1]) / 2 + 0.1 * np.sin(np.arange(32 * 32).reshape(32, 32)), 0, 1)
IMAGE = IMAGE.astype(np.float32)
MASK = bernoulli_mask(IMAGE.shape, seed=0, name="flags")


def recipe_of(*argv: str) -> RestoreConfig:
    """The recipe one cell trains with, from ``python -m bench run`` with BASE and ``argv``."""
    args = build_parser().parse_args([*BASE, *argv])
    return cell_recipe(build_config(args.profile, config_overrides(args)), CPU, out_channels=1)


def trainer_of(recipe: RestoreConfig, seed: int = 0) -> Trainer:
    """A Trainer as bench.train makes one: the network a factory of the recipe's, built after seeding."""
    return Trainer(IMAGE, MASK, recipe, partial(build_network, recipe.net), seed=seed, device=CPU)


def first_step(trainer: Trainer) -> tuple[torch.Tensor, float]:
    out, loss = trainer.forward_backward()
    return out.detach(), float(loss)


def modules(net: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, kind)]


def scales(net: nn.Module) -> list[Scale]:
    return modules(net, Scale)


def kernels(block: nn.Module) -> list[tuple[int, int]]:
    return [m.kernel_size for m in modules(block, nn.Conv2d)]


def out_channels(block: nn.Module) -> set[int]:
    return {m.out_channels for m in modules(block, nn.Conv2d)}


# ---------------------------------------------------------------------------------------------------
# Network flags: the module the flag configures is built as it says, and the first output changes.

NET_FLAGS = {
    "net.in_channels": (["--in-channels", "8"],
                        lambda t: t.z.shape[1] == 8 and modules(t.net, nn.Conv2d)[0].in_channels == 8),
    "net.scales": (["--scales", "3"], lambda t: len(scales(t.net)) == 3 and len(modules(t.net, nn.Upsample)) == 3),
    "net.channels_down": (["--channels-down", "6"], lambda t: all(out_channels(s.down) == {6} for s in scales(t.net))),
    "net.channels_up": (["--channels-up", "6"],
                        lambda t: all(out_channels(s.merge) == {6} for s in scales(t.net)) and t.net.head.in_channels == 6),
    "net.channels_skip": (["--channels-skip", "2"], lambda t: all(out_channels(s.skip) == {2} for s in scales(t.net))),
    "net.kernel_down": (["--kernel-down", "5"], lambda t: all(kernels(s.down) == [(5, 5)] * 2 for s in scales(t.net))),
    "net.kernel_up": (["--kernel-up", "5"], lambda t: all(kernels(s.merge) == [(5, 5), (1, 1)] for s in scales(t.net))),
    "net.kernel_skip": (["--kernel-skip", "3"], lambda t: all(kernels(s.skip) == [(3, 3)] for s in scales(t.net))),
    "net.upsample_mode": (["--upsample-mode", "nearest"],
                          lambda t: {m.mode for m in modules(t.net, nn.Upsample)} == {"nearest"}),
    "net.padding": (["--padding", "zeros"],
                    lambda t: not modules(t.net, nn.ReflectionPad2d)
                    and all(m.padding == ((m.kernel_size[0] - 1) // 2,) * 2 for m in modules(t.net, nn.Conv2d))),
    "net.negative_slope": (["--negative-slope", "0.05"],
                           lambda t: {m.negative_slope for m in modules(t.net, nn.LeakyReLU)} == {0.05}),
    "net.layout": (["--layout", "seed"], lambda t: type(t.net) is SeedNet),
}


@pytest.mark.parametrize("dest", sorted(NET_FLAGS))
def test_a_network_flag_builds_what_it_says_and_changes_the_first_output(dest):
    argv, built_as_said = NET_FLAGS[dest]
    default, flagged = trainer_of(recipe_of()), trainer_of(recipe_of(*argv))
    assert not built_as_said(default), f"{dest}: the default network already looks like {argv}"
    assert built_as_said(flagged), f"{' '.join(argv)} did not reach the network"
    (out_default, loss_default), (out_flagged, loss_flagged) = first_step(default), first_step(flagged)
    assert out_flagged.shape == out_default.shape == (1, 1, 32, 32)
    assert not torch.equal(out_flagged, out_default) and loss_flagged != loss_default


def same_weights(a: Trainer, b: Trainer) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.params, b.params)) and len(a.params) == len(b.params)


def test_negative_slope_computes_what_leaky_relus_of_that_slope_compute():
    """--negative-slope 0.05 gives the output of the default network (same seed, same weights) with every
    LeakyReLU's slope set to 0.05 by hand."""
    flagged, by_hand = trainer_of(recipe_of("--negative-slope", "0.05")), trainer_of(recipe_of())
    assert same_weights(flagged, by_hand)
    for m in modules(by_hand.net, nn.LeakyReLU):
        m.negative_slope = 0.05
    assert torch.equal(first_step(flagged)[0], first_step(by_hand)[0])


def test_zero_padding_computes_what_zero_padded_convolutions_compute():
    """--padding zeros gives the output of the default network (same weights) with each reflection pad
    replaced by a zero pad of the same width."""
    flagged, by_hand = trainer_of(recipe_of("--padding", "zeros")), trainer_of(recipe_of())
    assert same_weights(flagged, by_hand)
    replaced = 0
    for seq in modules(by_hand.net, nn.Sequential):
        for index, child in enumerate(seq):
            if isinstance(child, ReflectionPad):
                seq[index] = nn.ZeroPad2d(child.padding)
                replaced += 1
    assert replaced == len([m for m in modules(flagged.net, nn.Conv2d) if m.kernel_size != (1, 1)]) > 0
    torch.testing.assert_close(first_step(flagged)[0], first_step(by_hand)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["nearest", "bicubic"])
def test_upsample_mode_computes_what_upsampling_in_that_mode_computes(mode):
    """--upsample-mode gives the output of the default network (same weights) with every Upsample set to
    that mode by hand."""
    flagged, by_hand = trainer_of(recipe_of("--upsample-mode", mode)), trainer_of(recipe_of())
    assert same_weights(flagged, by_hand)
    for m in modules(by_hand.net, nn.Upsample):
        m.mode, m.align_corners = mode, None if mode == "nearest" else False
    assert torch.equal(first_step(flagged)[0], first_step(by_hand)[0])


def test_the_seed_recipe_builds_its_own_network():
    """--recipe seed: the seed reproduction's wiring, slope 0.01 and bicubic upsampling, in the modules."""
    trainer = trainer_of(recipe_of("--recipe", "seed"))
    assert type(trainer.net) is SeedNet
    assert {m.negative_slope for m in modules(trainer.net, nn.LeakyReLU)} == {0.01}
    assert {m.mode for m in modules(trainer.net, nn.Upsample)} == {"bicubic"}
    assert type(trainer_of(recipe_of()).net) is SkipNet


# ---------------------------------------------------------------------------------------------------
# Recipe flags: what the step or the loop does with each.


def test_lr_scales_adams_first_update():
    """Adam's first update is lr * g / (|g| + eps): --lr 0.01 moves every weight 10x as far as the default
    1e-3, from the same weights and gradients."""
    default, flagged = trainer_of(recipe_of()), trainer_of(recipe_of("--lr", "0.01"))
    assert flagged.optimizer.param_groups[0]["lr"] == 0.01 and default.optimizer.param_groups[0]["lr"] == 1e-3
    moves = []
    for trainer in (default, flagged):
        before = trainer.kept_parameters()
        trainer.forward_backward()
        trainer.optimizer_step()
        moves.append(torch.cat([(p.detach() - b).flatten() for p, b in zip(trainer.params, before)]))
    assert moves[0].abs().max() > 0
    # (atol: a few float32 ulps of a weight near 1, what p_after - p_before rounds to)
    torch.testing.assert_close(moves[1], 10 * moves[0], rtol=1e-3, atol=3e-7)


def test_input_scale_scales_z():
    default, flagged = trainer_of(recipe_of()), trainer_of(recipe_of("--input-scale", "0.5"))
    torch.testing.assert_close(flagged.z, default.z * 5, rtol=1e-6, atol=0)  # the same U[0, 1) draw, x 0.5 not 0.1
    assert first_step(flagged)[1] != first_step(default)[1]


def test_input_noise_std_scales_the_perturbation():
    default, flagged = trainer_of(recipe_of()), trainer_of(recipe_of("--input-noise-std", "0.09"))
    noise = [t.next_input() - t.z for t in (default, flagged)]
    torch.testing.assert_close(noise[1], noise[0] * 3, rtol=1e-4, atol=1e-6)  # the same N(0, 1) draw, x 0.09 not 0.03
    assert first_step(flagged)[1] != first_step(default)[1]


def test_cumulative_input_noise_starts_from_z_itself():
    default, flagged = trainer_of(recipe_of()), trainer_of(recipe_of("--input-noise", "cumulative"))
    assert torch.equal(flagged.next_input(), flagged.z) and not torch.equal(default.next_input(), default.z)
    flagged, default = trainer_of(recipe_of("--input-noise", "cumulative")), trainer_of(recipe_of())
    assert first_step(flagged)[1] != first_step(default)[1]


def run_of(*argv: str, monkeypatch=None, read_losses: dict[int, float] | None = None, **kwargs):
    """restore() with the recipe of ``argv``; ``read_losses`` replaces the loss the loop reads at those
    0-based steps (not the one differentiated), so that a backtracking check sees a chosen PSNR."""
    recipe = recipe_of(*argv)
    if read_losses:
        set_read_loss(monkeypatch, read_losses)
    return restore(IMAGE, MASK, recipe, partial(build_network, recipe.net), seed=0, reference=IMAGE, **kwargs)


def test_iterations_sets_the_number_of_steps():
    default, flagged = run_of(), run_of("--iterations", "3")
    assert [p.iteration for p in default.curve] == [0, 1] and [p.iteration for p in flagged.curve] == [0, 2]
    assert default.timing.timed_iterations + default.timing.warmup_iterations == 2
    assert flagged.timing.timed_iterations + flagged.timing.warmup_iterations == 3


def test_eval_every_sets_the_curve_points():
    assert [p.iteration for p in run_of("--iterations", "8").curve] == [0, 7]
    assert [p.iteration for p in run_of("--iterations", "8", "--eval-every", "3").curve] == [0, 3, 6, 7]


DROP = {4: 1e-2, 8: 1e-1}  # 20 dB at the check of step 4, then 10 dB at step 8: a 10 dB drop


def test_backtrack_every_sets_the_checks(monkeypatch):
    """Checks every 4 see the drop at step 8; the default's checks (every 50: only step 0 here) do not."""
    assert run_of("--iterations", "12", monkeypatch=monkeypatch, read_losses=DROP).backtrack_iterations == []
    flagged = run_of("--iterations", "12", "--backtrack-every", "4", monkeypatch=monkeypatch, read_losses=DROP)
    assert flagged.backtrack_iterations == [8]


def test_no_backtracking_turns_the_checks_off(monkeypatch):
    argv = ("--iterations", "12", "--backtrack-every", "4")
    assert run_of(*argv, "--no-backtracking", monkeypatch=monkeypatch, read_losses=DROP).backtrack_iterations == []
    assert run_of(*argv, "--backtracking", monkeypatch=monkeypatch, read_losses=DROP).backtrack_iterations == [8]


@pytest.mark.parametrize(("threshold", "drop_db", "drops"), [("5", 7.0, [8]), ("8", 7.0, []), ("8", 9.0, [8])])
def test_backtrack_drop_db_sets_the_threshold(monkeypatch, threshold, drop_db, drops):
    """A 7 dB drop backtracks at the default 5 dB and not at --backtrack-drop-db 8, where 9 dB does."""
    losses = {4: 1e-2, 8: 1e-2 * 10 ** (drop_db / 10)}
    argv = ("--iterations", "12", "--backtrack-every", "4", "--backtrack-drop-db", threshold)
    assert run_of(*argv, monkeypatch=monkeypatch, read_losses=losses).backtrack_iterations == drops


def test_ema_decay_sets_the_moving_average(monkeypatch):
    """--ema-decay 0.5 over 3 steps: out_2 / 2 + out_1 / 4 + out_0 / 4, from the outputs recorded as trained."""
    outputs = []
    forward_backward = Trainer.forward_backward

    def recorded(self):
        out, loss = forward_backward(self)
        outputs.append(to_numpy(out))
        return out, loss

    monkeypatch.setattr(Trainer, "forward_backward", recorded)
    flagged = run_of("--iterations", "3", "--ema-decay", "0.5")
    np.testing.assert_allclose(flagged.output_ema, outputs[2] / 2 + outputs[1] / 4 + outputs[0] / 4, rtol=1e-5, atol=1e-6)
    outputs.clear()
    default = run_of("--iterations", "3")
    np.testing.assert_allclose(default.output_ema, 0.99**2 * outputs[0] + 0.99 * 0.01 * outputs[1] + 0.01 * outputs[2],
                               rtol=1e-5, atol=1e-6)
    assert run_of("--iterations", "3", "--ema-decay", "0").output_ema is None


def test_timer_warmup_and_window_reach_the_timer(monkeypatch):
    timers = []
    real = dip.restore.IterationTimer

    def kept(*args, **kwargs):
        timers.append(real(*args, **kwargs))
        return timers[-1]

    monkeypatch.setattr(dip.restore, "IterationTimer", kept)
    default = run_of("--iterations", "8")
    flagged = run_of("--iterations", "8", "--timer-warmup", "1", "--timer-window", "3")
    assert (default.timing.warmup_iterations, flagged.timing.warmup_iterations) == (5, 1)
    assert (timers[0].window, timers[1].window) == (50, 3)
    assert timers[1].window_sizes == [3, 3, 1] and timers[0].window_sizes == [3]


def test_compile_wraps_the_network_and_cuda_graphs_reach_the_trainer():
    """Execution switches: they change nothing beyond rounding, so here only that the trainer got them
    (compiling is left lazy, not run: that takes seconds)."""
    compiled = trainer_of(recipe_of("--compile"))
    assert compiled.model is not compiled.net and compiled.model._orig_mod is compiled.net
    plain = trainer_of(recipe_of())
    assert plain.model is plain.net
    with pytest.raises(ValueError, match="^cuda_graphs needs a CUDA device$"):
        trainer_of(recipe_of("--cuda-graphs"))


# Recipe and network fields whose flag has a test above (the run's own fields, and the execution fields
# set through them, are the command line's tests' business).
COVERED = set(NET_FLAGS) | {
    "recipe.lr", "recipe.input_scale", "recipe.input_noise_std", "recipe.input_noise", "recipe.iterations",
    "recipe.eval_every", "recipe.backtrack_every", "recipe.backtracking", "recipe.backtrack_drop_db",
    "recipe.ema_decay", "recipe.timer_warmup", "recipe.timer_window", "recipe.compile", "recipe.cuda_graphs",
}


def test_every_recipe_and_network_flag_has_an_effect_test():
    flags = {dest for dest in field_dests() if dest.split(".")[0] in ("recipe", "net")}
    assert flags == COVERED, f"without an effect test: {sorted(flags - COVERED)}; gone: {sorted(COVERED - flags)}"

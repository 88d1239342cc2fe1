"""Deep Image Prior inpainting: fit a randomly initialised network to the observed pixels of one image.

The recipe (docs/protocol.md, "Training"): a fixed input z ~ 0.1 * U[0, 1) of shape (1, 32, H, W); at
every iteration the network sees z + 0.03 * N(0, 1) (fresh noise around the fixed z); the loss is
the MSE between out * m and x * m over all pixels; Adam with lr 1e-3. The authors' runs also
backtracked: every 50 iterations, if the PSNR of out * m against x * m fell by more than 5 dB since
the last accepted check, the parameters kept at that check are copied back. Beyond the paper: a
non-finite loss is caught at the step it happens (restore the last good state, or fail), and the
loop's whole state can be checkpointed and resumed. One step of training is dip.trainer.Trainer.

The recipe's numbers live in :mod:`dip.recipe`; the network is the caller's (e.g.
``dip.nets.build_network``), handed over as a module or a factory, so this module knows no architecture.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from dip.recipe import DIVERGENCE_POLICIES, CurvePoint, RestoreConfig
from dip.timing import IterationTimer, TimingSummary
from dip.trainer import Network, Trainer, to_numpy, to_tensor


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss or output."""


@dataclass
class RestoreResult:
    output: np.ndarray  # (H, W) or (H, W, C), float32 in [0, 1]
    output_ema: np.ndarray | None  # moving average of the training outputs (None if ema_decay is 0)
    curve: list[CurvePoint]
    final_loss: float
    backtracks: int
    backtrack_iterations: list[int]
    timing: TimingSummary
    precision: str
    divergences: list[int] = field(default_factory=list)  # iterations with a non-finite loss, each undone
    resumed_at: list[int] = field(default_factory=list)  # iterations this result was resumed from


def psnr_from_mse(mse: float) -> float:
    return -10.0 * math.log10(mse) if mse > 0 else math.inf


@dataclass
class Checkpointing:
    """Saving and resuming the state of :func:`restore`'s loop; where a state goes is the caller's
    business. ``save(state)`` must serialise ``state`` before it returns (it holds live tensors)."""

    every: int = 0  # save after every this many iterations; 0: only when a stop is requested
    save: Callable[[dict], None] | None = None
    resume: dict | None = None  # a state given to ``save`` earlier: training continues from it
    stop_requested: Callable[[], bool] = field(default=lambda: False)  # polled after every step


class TrainingStopped(Exception):
    """A stop was requested; the state after ``iteration`` iterations was saved (if a ``save`` was given)."""

    def __init__(self, iteration: int) -> None:
        super().__init__(f"stopped after iteration {iteration}")
        self.iteration = iteration


# A kept state restored this many times before training gets past the next check is given up on: it
# diverges again whatever the step (e.g. a learning rate so large that every step from it overflows).
MAX_RESTORES_PER_CHECK = 10


@dataclass
class _LoopState:
    """Everything of the loop besides the Trainer that a resumed run needs to finish identically."""

    kept: list[torch.Tensor]  # parameters at the last accepted check
    kept_optimizer: dict  # Adam's state there: restored (with the parameters) after a non-finite loss
    next_iteration: int = 0
    kept_psnr: float = 0.0  # the notebook's psnr_masked_last starts at 0
    final_loss: float = math.nan
    ema: torch.Tensor | None = None  # (1, C, H, W), updated on the device without syncs
    curve: list[CurvePoint] = field(default_factory=list)
    backtrack_iterations: list[int] = field(default_factory=list)
    divergences: list[int] = field(default_factory=list)  # iterations whose loss was not finite
    restores_since_check: int = 0  # of ``kept``, since it was taken
    resumed_at: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        state = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        state["curve"] = [asdict(p) for p in self.curve]
        return state

    @classmethod
    def from_dict(cls, state: dict, device: torch.device) -> _LoopState:
        loop = cls(**{k: v for k, v in state.items() if k != "curve"})
        loop.curve = [CurvePoint(**p) for p in state["curve"]]
        loop.kept = [t.to(device) for t in loop.kept]
        loop.ema = None if loop.ema is None else loop.ema.to(device)
        return loop


def restore(
    observed: np.ndarray,
    mask: np.ndarray,
    config: RestoreConfig,
    network: Network,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    reference: np.ndarray | None = None,
    callback: Callable[[int, CurvePoint | None], None] | None = None,
    on_divergence: str = "backtrack",
    checkpointing: Checkpointing | None = None,
) -> RestoreResult:
    """Inpaint ``observed`` (H, W[, C], floats in [0, 1]) where ``mask`` (H, W) is 0.

    Pixels where the mask is 0 are zeroed before training, so the method never sees them. ``network``
    is the network to fit, or a zero-argument factory of it (see :class:`Trainer`); with a factory the
    result depends on ``seed`` alone. A resumed run loads the saved weights into it.
    ``reference`` (the ground truth) only feeds the PSNR curve. ``callback(i, point)`` is called after
    every iteration i, with a :class:`CurvePoint` at evaluation iterations and None otherwise.

    The host reads the loss only at the checks (every ``backtrack_every``), the evaluation points and
    the last iteration: one synchronisation there reads every loss since the last one. Between them a
    non-finite loss or gradient is guarded on the device: fused Adam (and a GradScaler) skip that update;
    plain Adam applies it, which leaves NaN in the parameters until the next read (a NaN anywhere in the
    output makes the masked loss NaN too, since NaN * 0 is NaN). ``on_divergence``: "fail" raises
    :class:`DivergenceError` at the next read, naming the first non-finite iteration; "backtrack" records
    those iterations, and where the step read is itself non-finite restores the parameters and Adam's
    state of the last accepted check, skips that step and reads every step until a check accepts again,
    giving up after :data:`MAX_RESTORES_PER_CHECK` restores of one kept state. ``checkpointing`` saves
    the loop's state every so many iterations and when a stop is requested (then raises :class:`TrainingStopped`), and
    resumes from a saved state: on a CPU the resumed run ends bit-identical to an uninterrupted one.
    """
    if on_divergence not in DIVERGENCE_POLICIES:
        raise ValueError(f"unknown on_divergence {on_divergence!r}; choose from {', '.join(DIVERGENCE_POLICIES)}")
    device = torch.device(device)
    ckpt = checkpointing or Checkpointing()
    trainer = Trainer(observed, mask, config, network, seed=seed, device=device)
    ref = None if reference is None else to_tensor(reference, device)
    if ckpt.resume is not None:
        trainer.load_state_dict(ckpt.resume["trainer"])
        loop = _LoopState.from_dict(ckpt.resume["loop"], device)
        loop.resumed_at.append(loop.next_iteration)
    else:
        loop = _LoopState(kept=trainer.kept_parameters(), kept_optimizer=trainer.kept_optimizer_state())
    # Snapshots for a non-finite loss are taken at the checks even when the recipe does not backtrack.
    checks = config.backtracking or on_divergence == "backtrack"

    remaining = config.iterations - loop.next_iteration
    timer = IterationTimer(device, warmup=min(config.timer_warmup, remaining - 1), window=config.timer_window)
    if ckpt.resume is not None:
        timer.load_state_dict(ckpt.resume["timer"])
    timer.start()
    pending: list[tuple[int, torch.Tensor]] = []  # (iteration, loss) of the steps not yet read on the host
    for i in range(loop.next_iteration, config.iterations):
        out, loss = trainer.forward_backward()
        point = None
        if _is_look(i, config, loop, checks):
            _read_pending(pending, loop, on_divergence)
            point = _step_seen(trainer, loop, config, i, out, loss, ref, checks, on_divergence)
        else:
            _step_unseen(trainer, loop, config, out, loss)
            pending.append((i, loss))
        timer.tick()
        if callback is not None:
            callback(i, point)
        _maybe_checkpoint(trainer, loop, timer, ckpt, i + 1, config.iterations,
                          read_pending=lambda: _read_pending(pending, loop, on_divergence))
    timing = timer.summary()
    if loop.restores_since_check > 0:
        # The last look restored the kept state and no check has accepted one since: the result would be
        # an earlier state's (the untrained network's if nothing was accepted), not this run's training.
        raise DivergenceError(
            f"training diverged: non-finite loss at iteration {loop.divergences[-1]}, and the run ended before a "
            f"check accepted the restored state"
        )

    final = trainer.final_output()
    if not torch.isfinite(final).all():
        raise DivergenceError("the network's final output is not finite")
    return RestoreResult(
        output=to_numpy(final),
        output_ema=None if loop.ema is None else to_numpy(loop.ema),
        curve=loop.curve,
        final_loss=loop.final_loss,
        backtracks=len(loop.backtrack_iterations),
        backtrack_iterations=loop.backtrack_iterations,
        timing=timing,
        precision=config.precision,
        divergences=loop.divergences,
        resumed_at=loop.resumed_at,
    )


def _is_look(i: int, config: RestoreConfig, loop: _LoopState, checks: bool) -> bool:
    """Whether iteration i reads its loss on the host: at the checks, the evaluation points and the last
    iteration; at every step while recovering from a restored state; and before the first EMA exists."""
    return (
        (checks and i % config.backtrack_every == 0)
        or i % config.eval_every == 0
        or i == config.iterations - 1
        or loop.restores_since_check > 0
        or (config.ema_decay > 0 and loop.ema is None)
    )


def _step_unseen(trainer: Trainer, loop: _LoopState, config: RestoreConfig, out: torch.Tensor,
                 loss: torch.Tensor) -> None:
    """A step whose loss stays on the device: the optimiser step (skipped on the device if the loss or a
    gradient is not finite, where the optimiser can) and the EMA (only from finite outputs)."""
    trainer.optimizer_step()
    if config.ema_decay > 0:
        finite = torch.isfinite(loss)
        loop.ema = torch.where(finite, loop.ema.lerp(out.detach(), 1.0 - config.ema_decay), loop.ema)


def _read_pending(pending: list[tuple[int, torch.Tensor]], loop: _LoopState, on_divergence: str) -> None:
    """Read the losses of the unseen steps (one host synchronisation) and record the non-finite ones.

    Their updates were skipped on the device (fused Adam, GradScaler) or, with plain Adam, wrote NaN into
    the parameters: then the step read next is non-finite too, and :func:`_step_seen` restores."""
    if not pending:
        return
    values = torch.stack([loss for _, loss in pending]).tolist()
    bad = [i for (i, _), value in zip(pending, values) if not math.isfinite(value)]
    finite = [value for value in values if math.isfinite(value)]
    pending.clear()
    if bad and on_divergence == "fail":
        raise DivergenceError(f"training diverged: non-finite loss at iteration {bad[0]}")
    loop.divergences.extend(bad)
    if finite:
        loop.final_loss = finite[-1]


def _step_seen(trainer: Trainer, loop: _LoopState, config: RestoreConfig, i: int, out: torch.Tensor, loss: torch.Tensor,
               ref: torch.Tensor | None, checks: bool, on_divergence: str) -> CurvePoint | None:
    """A step whose loss is read on the host: a non-finite one restores the last good state (or fails);
    a finite one gets the check, the curve point and the optimiser step."""
    loss_value = float(loss)
    if not math.isfinite(loss_value):
        if on_divergence == "fail":
            raise DivergenceError(f"training diverged: non-finite loss at iteration {i}")
        loop.restores_since_check += 1
        if loop.restores_since_check > MAX_RESTORES_PER_CHECK:
            raise DivergenceError(
                f"training diverged: non-finite loss at iteration {i}, the {MAX_RESTORES_PER_CHECK + 1}th since "
                f"the last good state was kept; restoring it does not help"
            )
        trainer.restore_parameters(loop.kept)
        trainer.restore_optimizer_state(loop.kept_optimizer)
        loop.divergences.append(i)  # no optimiser step: its gradients are not finite
        return None
    loop.final_loss = loss_value
    if config.ema_decay > 0:
        o = out.detach()
        loop.ema = o.clone() if loop.ema is None else loop.ema.lerp_(o, 1.0 - config.ema_decay)
    point = _check_and_evaluate(trainer, loop, config, i, loss_value, out, ref, checks)
    # As in the notebook, the step runs even after a backtrack, with the gradients just computed.
    trainer.optimizer_step()
    return point


def _check_and_evaluate(trainer: Trainer, loop: _LoopState, config: RestoreConfig, i: int, loss_value: float,
                        out: torch.Tensor, ref: torch.Tensor | None, checks: bool) -> CurvePoint | None:
    """The authors' backtracking check (every ``backtrack_every``) and a curve point (every ``eval_every``)."""
    psnr_masked = psnr_from_mse(loss_value)
    if checks and i % config.backtrack_every == 0:
        if config.backtracking and psnr_masked - loop.kept_psnr < -config.backtrack_drop_db:
            trainer.restore_parameters(loop.kept)
            loop.backtrack_iterations.append(i)
        else:
            loop.kept, loop.kept_psnr = trainer.kept_parameters(), psnr_masked
            loop.kept_optimizer = trainer.kept_optimizer_state()
            loop.restores_since_check = 0
    if not (i % config.eval_every == 0 or i == config.iterations - 1):
        return None
    psnr = psnr_ema = None
    if ref is not None:
        psnr = psnr_from_mse(F.mse_loss(out.detach(), ref).item())
        psnr_ema = None if loop.ema is None else psnr_from_mse(F.mse_loss(loop.ema, ref).item())
    point = CurvePoint(i, loss_value, psnr_masked, psnr, psnr_ema)
    loop.curve.append(point)
    return point


def _maybe_checkpoint(trainer: Trainer, loop: _LoopState, timer: IterationTimer, ckpt: Checkpointing,
                      done: int, iterations: int, read_pending: Callable[[], None]) -> None:
    """Save after ``done`` iterations if one is due or a stop was requested; raise TrainingStopped on a stop."""
    stop = ckpt.stop_requested()
    due = ckpt.every > 0 and done % ckpt.every == 0 and done < iterations
    if ckpt.save is not None and (due or (stop and done < iterations)):
        read_pending()  # a saved state holds no unread steps
        loop.next_iteration = done
        with timer.paused():  # writing the file is not an iteration's time
            ckpt.save({"trainer": trainer.state_dict(), "loop": loop.to_dict(), "timer": timer.state_dict()})
    if stop and done < iterations:
        raise TrainingStopped(done)

"""Deep Image Prior inpainting: fit a randomly initialised network to the observed pixels of one image.

The recipe (docs/protocol.md, "Training"): a fixed input z ~ 0.1 * U[0, 1) of shape (1, 32, H, W); at
every iteration the network sees z + 0.03 * N(0, 1) (fresh noise around the fixed z); the loss is
the MSE between out * m and x * m over all pixels; Adam with lr 1e-3. The authors' runs also
backtracked: every 50 iterations, if the PSNR of out * m against x * m fell by more than 5 dB since
the last accepted check, the parameters kept at that check are copied back. Beyond the paper: a
non-finite loss is caught at the next read of the loss on the host (restore the last good state, or
fail), and the loop's whole state can be checkpointed and resumed. One step of training is
dip.trainer.Trainer; :func:`restore_batch` trains several cells as one batched model (dip.batched).

The recipe's numbers live in :mod:`dip.recipe`; the network is the caller's (e.g.
``dip.nets.build_network``), handed over as a module or a factory, with the shape and distribution of
its input z (:class:`dip.inputs.NetInput`, the paper's by default), so this module knows no architecture.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from dip.batched import BatchedTrainer
from dip.inputs import NetInput
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
    net_input: NetInput | None = None,
) -> RestoreResult:
    """Inpaint ``observed`` (H, W[, C], floats in [0, 1]) where ``mask`` (H, W) is 0.

    Pixels where the mask is 0 are zeroed before training, so the method never sees them. ``network``
    is the network to fit, or a zero-argument factory of it (see :class:`Trainer`); with a factory the
    result depends on ``seed`` alone. A resumed run loads the saved weights into it.
    ``reference`` (the ground truth) only feeds the PSNR curve. ``callback(i, point)`` is called after
    every iteration i, with a :class:`CurvePoint` at evaluation iterations and None otherwise.

    The host reads the loss only at the checks (every ``backtrack_every`` of the notebook's counter, which
    a drop holds back: the step after a drop is checked again), the evaluation points and
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
    ``net_input``: the shape and distribution of z, for a network that takes another input than the
    paper's (:meth:`dip.inputs.NetInput.paper`, the default), e.g. a decoder's small code.
    """
    _check_policy(on_divergence)
    device = torch.device(device)
    ckpt = checkpointing or Checkpointing()
    trainer = Trainer(observed, mask, config, network, seed=seed, device=device, net_input=net_input)
    if ckpt.resume is not None:
        trainer.load_state_dict(ckpt.resume["trainer"])
    cell = _CellLoop.start(trainer, config, reference, on_divergence, ckpt.resume, device)
    timer = _start_timer(config, cell.loop.next_iteration, device, ckpt.resume)
    for i in range(cell.loop.next_iteration, config.iterations):
        out, loss = trainer.forward_backward()
        point, take_step = cell.advance(i, out, loss)
        if take_step:
            trainer.optimizer_step()
        timer.tick()
        if callback is not None:
            callback(i, point)
        _maybe_checkpoint([cell], [ckpt], timer, i + 1, config.iterations)
    timing = timer.summary()
    cell.check_ended()
    return cell.result(trainer.final_output(), timing)


@dataclass(frozen=True)
class CellInput:
    """One cell of :func:`restore_batch`: what :func:`restore` takes per image."""

    observed: np.ndarray  # (H, W[, C]) floats in [0, 1]
    mask: np.ndarray  # (H, W), 1 = observed
    seed: int
    reference: np.ndarray | None = None


def restore_batch(
    cells: list[CellInput],
    config: RestoreConfig,
    network: Callable[[], torch.nn.Module],
    *,
    device: torch.device | str = "cpu",
    callbacks: list[Callable[[int, CurvePoint | None], None] | None] | None = None,
    on_divergence: str = "backtrack",
    checkpointing: list[Checkpointing] | None = None,
    net_input: NetInput | None = None,
) -> list[RestoreResult | DivergenceError]:
    """:func:`restore` for K cells of one image size at once, trained as one batched model
    (:class:`dip.batched.BatchedTrainer`); each cell gets what it gets alone, up to rounding.

    Everything :func:`restore` does per cell is done per cell here: its own weights, z and noise from
    its seed, the reads of its loss, its backtracking, the restore of its kept state after a non-finite
    loss, its curve, its checkpoint (in :func:`restore`'s format: a cell stopped here resumes alone or
    in a batch). A cell that diverges beyond repair gets its :class:`DivergenceError` in the returned
    list, its updates stop, and the others go on. One timer times the batched step: each result's
    timing is the whole batch's. Resumed cells must all resume at the same iteration. ``network`` is a
    factory (called once per cell, right after seeding); ``net_input`` is :func:`restore`'s, for every
    cell. A stop request saves every cell that is still training and raises :class:`TrainingStopped`.
    """
    _check_policy(on_divergence)
    device = torch.device(device)
    count = len(cells)
    ckpts = checkpointing or [Checkpointing() for _ in cells]
    callbacks = callbacks or [None] * count
    if not (len(ckpts) == len(callbacks) == count):
        raise ValueError(f"{count} cells need {count} checkpointings and callbacks")
    starts = {0 if c.resume is None else c.resume["loop"]["next_iteration"] for c in ckpts}
    if len(starts) > 1:
        raise ValueError(f"batched cells must resume at one iteration, got {sorted(starts)}")
    trainers = []
    for cell_input, ckpt in zip(cells, ckpts):
        trainer = Trainer(cell_input.observed, cell_input.mask, config, network, seed=cell_input.seed, device=device,
                          net_input=net_input)
        if ckpt.resume is not None:
            trainer.load_state_dict(ckpt.resume["trainer"])
        trainers.append(trainer)
    batch = BatchedTrainer(trainers)
    loops = [_CellLoop.start(batch.cell(k), config, c.reference, on_divergence, ckpt.resume, device)
             for k, (c, ckpt) in enumerate(zip(cells, ckpts))]
    outcome: list[RestoreResult | DivergenceError | None] = [None] * count
    start = loops[0].loop.next_iteration
    timer = _start_timer(config, start, device, ckpts[0].resume)
    for i in range(start, config.iterations):
        outs, losses = batch.forward_backward()  # (K, 1, C, H, W), (K,)
        skip, points = [True] * count, {}
        for k, loop in enumerate(loops):
            if outcome[k] is not None:
                continue  # given up on: its updates stay skipped
            try:
                points[k], take_step = loop.advance(i, outs[k], losses[k])
            except DivergenceError as exc:
                outcome[k] = exc.with_traceback(None)  # its traceback would hold this frame: batch and all
                continue
            skip[k] = not take_step
        batch.optimizer_step(skip)
        timer.tick()
        for k, point in points.items():
            if callbacks[k] is not None and outcome[k] is None:
                callbacks[k](i, point)
        live = [k for k in range(count) if outcome[k] is None]
        if not live:
            break  # every cell given up on
        _maybe_checkpoint([loops[k] for k in live], [ckpts[k] for k in live], timer, i + 1, config.iterations)
    if all(result is not None for result in outcome):
        return outcome  # type: ignore[return-value]  # every cell failed: nothing to time or output
    timing = timer.summary()
    finals = batch.final_outputs()
    for k, loop in enumerate(loops):
        if outcome[k] is None:
            try:
                loop.check_ended()
                outcome[k] = loop.result(finals[k], timing)
            except DivergenceError as exc:
                outcome[k] = exc.with_traceback(None)  # its traceback would hold this frame: batch and all
    return outcome  # type: ignore[return-value]


def _check_policy(on_divergence: str) -> None:
    if on_divergence not in DIVERGENCE_POLICIES:
        raise ValueError(f"unknown on_divergence {on_divergence!r}; choose from {', '.join(DIVERGENCE_POLICIES)}")


def _start_timer(config: RestoreConfig, start: int, device: torch.device, resume: dict | None) -> IterationTimer:
    remaining = config.iterations - start
    timer = IterationTimer(device, warmup=min(config.timer_warmup, remaining - 1), window=config.timer_window)
    if resume is not None:
        timer.load_state_dict(resume["timer"])
    timer.start()
    return timer


class _CellLoop:
    """One cell's side of the restoration loop: which iterations read its loss on the host, what a read
    loss does (divergence, the backtracking check, a curve point), the EMA, and its saved state.

    ``trainer`` is a :class:`Trainer` or one cell of a batched trainer (:class:`dip.batched.BatchedCell`):
    anything with ``kept_parameters``, ``restore_parameters``, ``kept_optimizer_state``,
    ``restore_optimizer_state`` and ``state_dict``. The optimiser step is the caller's: :meth:`advance`
    says whether this cell takes it.
    """

    def __init__(self, trainer, config: RestoreConfig, loop: _LoopState, ref: torch.Tensor | None,
                 on_divergence: str) -> None:
        self.trainer, self.config, self.loop, self.ref, self.on_divergence = trainer, config, loop, ref, on_divergence
        # Snapshots for a non-finite loss are taken at the checks even when the recipe does not backtrack.
        self.checks = config.backtracking or on_divergence == "backtrack"
        self.pending: list[tuple[int, torch.Tensor]] = []  # (iteration, loss) of the steps not yet read

    @classmethod
    def start(cls, trainer, config: RestoreConfig, reference: np.ndarray | None, on_divergence: str,
              resume: dict | None, device: torch.device) -> _CellLoop:
        """A fresh loop, or the saved one of ``resume`` (the trainer's own state is the caller's to load)."""
        ref = None if reference is None else to_tensor(reference, device)
        if resume is None:
            loop = _LoopState(kept=trainer.kept_parameters(), kept_optimizer=trainer.kept_optimizer_state())
        else:
            loop = _LoopState.from_dict(resume["loop"], device)
            loop.resumed_at.append(loop.next_iteration)
        return cls(trainer, config, loop, ref, on_divergence)

    def is_look(self, i: int) -> bool:
        """Whether iteration i reads its loss on the host: at the checks, the evaluation points and the last
        iteration; at every step while recovering from a restored state; and before the first EMA exists."""
        config, loop = self.config, self.loop
        return (
            (self.checks and self.is_check(i))
            or i % config.eval_every == 0
            or i == config.iterations - 1
            or loop.restores_since_check > 0
            or (config.ema_decay > 0 and loop.ema is None)
        )

    def is_check(self, i: int) -> bool:
        """Whether iteration i runs the backtracking check. The notebook counts its checks with its own
        counter, which a drop does not advance (its closure returns before ``i += 1``): the step after a
        drop is checked again, and every later check comes one step later per drop. The optimiser still
        takes ``iterations`` steps; ``i`` here counts those steps, so the notebook's counter is i - drops."""
        return (i - len(self.loop.backtrack_iterations)) % self.config.backtrack_every == 0

    def advance(self, i: int, out: torch.Tensor, loss: torch.Tensor) -> tuple[CurvePoint | None, bool]:
        """Iteration i's bookkeeping, after its forward and backward and before its optimiser step.
        Returns (the curve point taken, whether the optimiser step is to be taken)."""
        if self.is_look(i):
            self.read_pending()
            return self._seen(i, out, loss)
        self._unseen(i, out, loss)
        return None, True

    def _unseen(self, i: int, out: torch.Tensor, loss: torch.Tensor) -> None:
        """A step whose loss stays on the device (its optimiser step is skipped on the device if the loss or
        a gradient is not finite, where the optimiser can); the EMA takes only finite outputs."""
        if self.config.ema_decay > 0:
            finite = torch.isfinite(loss)
            self.loop.ema = torch.where(finite, self.loop.ema.lerp(out.detach(), 1.0 - self.config.ema_decay),
                                        self.loop.ema)
        self.pending.append((i, loss))

    def read_pending(self) -> None:
        """Read the losses of the unseen steps (one host synchronisation) and record the non-finite ones.

        Their updates were skipped on the device (fused Adam, GradScaler) or, with plain Adam, wrote NaN into
        the parameters: then the step read next is non-finite too, and :meth:`_seen` restores."""
        if not self.pending:
            return
        values = torch.stack([loss for _, loss in self.pending]).tolist()
        bad = [i for (i, _), value in zip(self.pending, values) if not math.isfinite(value)]
        finite = [value for value in values if math.isfinite(value)]
        self.pending.clear()
        if bad and self.on_divergence == "fail":
            raise DivergenceError(f"training diverged: non-finite loss at iteration {bad[0]}")
        self.loop.divergences.extend(bad)
        if finite:
            self.loop.final_loss = finite[-1]

    def _seen(self, i: int, out: torch.Tensor, loss: torch.Tensor) -> tuple[CurvePoint | None, bool]:
        """A step whose loss is read on the host: a non-finite one restores the last good state (or fails)
        and skips the step; a finite one gets the check, the curve point and the optimiser step."""
        config, loop = self.config, self.loop
        loss_value = float(loss)
        if not math.isfinite(loss_value):
            if self.on_divergence == "fail":
                raise DivergenceError(f"training diverged: non-finite loss at iteration {i}")
            loop.restores_since_check += 1
            if loop.restores_since_check > MAX_RESTORES_PER_CHECK:
                raise DivergenceError(
                    f"training diverged: non-finite loss at iteration {i}, the {MAX_RESTORES_PER_CHECK + 1}th since "
                    f"the last good state was kept; restoring it does not help"
                )
            self.trainer.restore_parameters(loop.kept)
            self.trainer.restore_optimizer_state(loop.kept_optimizer)
            loop.divergences.append(i)  # no optimiser step: its gradients are not finite
            return None, False
        loop.final_loss = loss_value
        if config.ema_decay > 0:
            o = out.detach()
            loop.ema = o.clone() if loop.ema is None else loop.ema.lerp_(o, 1.0 - config.ema_decay)
        # As in the notebook, the step runs even after a backtrack, with the gradients just computed.
        return self._check_and_evaluate(i, loss_value, out), True

    def _check_and_evaluate(self, i: int, loss_value: float, out: torch.Tensor) -> CurvePoint | None:
        """The authors' backtracking check (every ``backtrack_every`` of the notebook's counter, see
        :meth:`is_check`) and a curve point (every ``eval_every`` steps)."""
        config, loop = self.config, self.loop
        psnr_masked = psnr_from_mse(loss_value)
        if self.checks and self.is_check(i):
            if config.backtracking and psnr_masked - loop.kept_psnr < -config.backtrack_drop_db:
                self.trainer.restore_parameters(loop.kept)
                loop.backtrack_iterations.append(i)
            else:
                loop.kept, loop.kept_psnr = self.trainer.kept_parameters(), psnr_masked
                loop.kept_optimizer = self.trainer.kept_optimizer_state()
                loop.restores_since_check = 0
        if not (i % config.eval_every == 0 or i == config.iterations - 1):
            return None
        psnr = psnr_ema = None
        if self.ref is not None:
            psnr = psnr_from_mse(F.mse_loss(out.detach(), self.ref).item())
            psnr_ema = None if loop.ema is None else psnr_from_mse(F.mse_loss(loop.ema, self.ref).item())
        point = CurvePoint(i, loss_value, psnr_masked, psnr, psnr_ema)
        loop.curve.append(point)
        return point

    def saved_state(self, done: int) -> dict:
        """The state after ``done`` iterations, for a checkpoint (it holds no unread steps)."""
        self.read_pending()
        self.loop.next_iteration = done
        return {"trainer": self.trainer.state_dict(), "loop": self.loop.to_dict()}

    def check_ended(self) -> None:
        if self.loop.restores_since_check > 0:
            # The last look restored the kept state and no check has accepted one since: the result would be
            # an earlier state's (the untrained network's if nothing was accepted), not this run's training.
            raise DivergenceError(
                f"training diverged: non-finite loss at iteration {self.loop.divergences[-1]}, and the run ended "
                f"before a check accepted the restored state"
            )

    def result(self, final: torch.Tensor, timing: TimingSummary) -> RestoreResult:
        """The result from the network's final output (1, C, H, W) or (C, H, W)."""
        if not torch.isfinite(final).all():
            raise DivergenceError("the network's final output is not finite")
        loop = self.loop
        return RestoreResult(
            output=to_numpy(final.reshape(1, *final.shape[-3:])),
            output_ema=None if loop.ema is None else to_numpy(loop.ema.reshape(1, *loop.ema.shape[-3:])),
            curve=loop.curve,
            final_loss=loop.final_loss,
            backtracks=len(loop.backtrack_iterations),
            backtrack_iterations=loop.backtrack_iterations,
            timing=timing,
            precision=self.config.precision,
            divergences=loop.divergences,
            resumed_at=loop.resumed_at,
        )


def _maybe_checkpoint(cells: list[_CellLoop], ckpts: list[Checkpointing], timer: IterationTimer, done: int,
                      iterations: int) -> None:
    """Save each cell after ``done`` iterations if one is due or a stop was requested; raise TrainingStopped
    on a stop. (One stop request serves all: the cells of a batch share it.)"""
    if not ckpts:
        return
    stop = ckpts[0].stop_requested()
    for cell, ckpt in zip(cells, ckpts):
        due = ckpt.every > 0 and done % ckpt.every == 0 and done < iterations
        if ckpt.save is not None and (due or (stop and done < iterations)):
            state = cell.saved_state(done)
            with timer.paused():  # writing the file is not an iteration's time
                ckpt.save(state | {"timer": timer.state_dict()})
    if stop and done < iterations:
        raise TrainingStopped(done)

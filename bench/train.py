"""Training one cell, or a batch of cells as one model (--cells-per-gpu): restore the image, score it,
and write its record (or its failed record).

The record is what every report is recomputed from: PSNRs, the curve, timing, the mask's digest, the
resolved configuration and the provenance (commit, software, machine).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial

import numpy as np
import torch

from bench.checkpoints import load_checkpoint, save_checkpoint
from bench.config import RunConfig
from bench.errors import RunStopped
from bench.hardware import peak_tflops
from bench.panels import write_panel
from bench.methods import Method
from bench.plan import Cell, cell_input, cell_network
from bench.progress import Progress
from bench.provenance import device_name, provenance, utc_timestamp
from bench.record import COMPLETE, FAILED, Provenance, Record, ReferenceScores, Timing
from bench.records import write_record
from bench.stop import StopRequest
from dip.baselines import interpolate_missing
from dip.masks import apply_mask, mask_digest
from dip.metrics import psnr, psnr_pasted
from dip.inputs import NetInput
from dip.nets import SkipNetConfig, build_network
from dip.recipe import RestoreConfig
from dip.restore import (
    CellInput,
    Checkpointing,
    DivergenceError,
    RestoreResult,
    TrainingStopped,
    restore,
    restore_batch,
)
from dip.seeding import derived_seed
from dip.timing import count_flops, peak_memory_bytes, reset_peak_memory


@dataclass(frozen=True)
class Session:
    """What every cell of one run shares while it trains."""

    config: RunConfig
    device: torch.device
    progress: Progress
    stop: StopRequest


@lru_cache(maxsize=None)
def gflop_per_iteration(net: SkipNetConfig, height: int, width: int) -> float:
    """GFLOP of one training iteration of the built-in network (the speed benchmark's and gpu-check's)."""
    return count_flops(lambda: build_network(net), (1, net.in_channels, height, width)) / 1e9


def cell_gflop(cell: Cell) -> float:
    """GFLOP of one training iteration of the cell's network (forward and backward), counted once per
    method, recipe and image shape."""
    return _gflop(cell.method, cell.recipe, cell.image.shape)


@lru_cache(maxsize=None)
def _gflop(method: Method, recipe: RestoreConfig, shape: tuple[int, ...]) -> float:
    return count_flops(lambda: cell_network(method, recipe, shape), cell_input(method, recipe, shape).shape) / 1e9


def network_factory(cell: Cell) -> Callable[[], torch.nn.Module]:
    """The cell's network, built by its method when called: after seeding, so the weights come from the seed alone."""
    return partial(cell_network, cell.method, cell.recipe, cell.image.shape)


def network_input(cell: Cell) -> NetInput | None:
    """The cell's network input if its method feeds another than the paper's (None: restore's default)."""
    return cell.method.net_input(cell.recipe, *cell.image.shape[:2])


def reference_scores(cell: Cell) -> ReferenceScores:
    """PSNR of reference rows computed here, on this cell's crop: the authors' published outputs
    (restored from their own masks) and classical interpolation of the missing pixels (this cell's mask)."""
    scores = {f"{kind}_published": psnr(cell.image, output) for kind, output in cell.published.items()}
    for method in ("nearest", "linear"):
        scores[f"interp_{method}"] = psnr(cell.image, interpolate_missing(apply_mask(cell.image, cell.mask), cell.mask, method))
    # An exact reconstruction (e.g. linear interpolation of a ramp) has infinite PSNR, which JSON cannot hold.
    return ReferenceScores(**{key: value if math.isfinite(value) else None for key, value in scores.items()})


def run_cell(
    cell: Cell,
    device: torch.device,
    callback: Callable | None = None,
    *,
    on_divergence: str = "backtrack",
    checkpointing: Checkpointing | None = None,
) -> tuple[Record, np.ndarray]:
    """Train one cell; return its record (not yet written) and the restored image."""
    gc.collect()  # the last cell's trainer may sit in a cycle (e.g. torch's lazy imports): free it before measuring
    reset_peak_memory(device)
    result = restore(
        cell.image,
        cell.mask,
        cell.recipe,
        network_factory(cell),  # built after seeding: weights from the seed alone
        net_input=network_input(cell),
        seed=cell_seed(cell),
        device=device,
        reference=cell.image,
        callback=callback,
        on_divergence=on_divergence,
        checkpointing=checkpointing,
    )
    return cell_record(cell, result, device, on_divergence), result.output


def cell_seed(cell: Cell) -> int:
    """The seed of the cell's network weights, z and input noise."""
    return derived_seed(cell.seed, f"net/{cell.info.key}")


def cell_record(cell: Cell, result: RestoreResult, device: torch.device, on_divergence: str,
                batch: list[Cell] | None = None, started: str | None = None) -> Record:
    """The complete record of a cell restored as ``result``; ``batch``: the cells it was trained with as
    one batched model (its timing is then the batched step's, for all of them)."""
    timing = result.timing
    best = max(result.curve, key=lambda p: p.psnr)
    height, width = cell.image.shape[:2]
    gflop = cell_gflop(cell)
    cells_per_step = len(batch) if batch else 1
    gflops = gflop * cells_per_step / (timing.median_ms_per_iter / 1e3)  # what the device did per second
    peak = peak_tflops(device_name(device), cell.recipe.precision, cell.recipe.tf32) if device.type == "cuda" else None
    memory, memory_kind = peak_memory_bytes(device)
    return Record(
        status=COMPLETE,
        image=cell.info.key,
        name=cell.info.name,
        seed=cell.seed,
        size=(height, width),
        full_size=(cell.info.height, cell.info.width),
        psnr=psnr(cell.image, result.output),
        psnr_pasted=psnr_pasted(cell.image, result.output, cell.mask),
        psnr_ema=None if result.output_ema is None else psnr(cell.image, result.output_ema),
        psnr_best=best.psnr,  # what an oracle early stop at an evaluation point would get
        best_iteration=best.iteration,
        psnr_masked_input=psnr(cell.image, apply_mask(cell.image, cell.mask)),
        reference_psnr=reference_scores(cell),
        final_loss=result.final_loss,
        backtracks=result.backtracks,
        backtrack_iterations=tuple(result.backtrack_iterations),
        on_divergence=on_divergence,
        divergences=tuple(result.divergences),  # iterations with a non-finite loss, each undone (backtrack policy)
        resumed_at=tuple(result.resumed_at),  # iterations this cell was resumed from after a stop or a kill
        curve=tuple(result.curve),
        timing=Timing(**timing.to_dict()),
        # --cells-per-gpu: the cells of the batched model this cell trained in (its own stem among them)
        batch=tuple(c.stem for c in batch) if batch else None,
        gflop_per_iter=gflop,
        gflops_achieved=gflops,
        device_peak_tflops=peak,  # CUDA only, from bench.hardware's table; None if unknown
        peak_fraction=None if peak is None else gflops / (peak * 1e3),
        peak_memory_bytes=memory,
        peak_memory_kind=memory_kind,
        mask_sha256=mask_digest(cell.mask),
        keep_fraction=float(cell.mask.mean()),
        config=cell.config,
        provenance=Provenance(**provenance(device)),
        panel=cell.panel_path.relative_to(cell.run_dir.root).as_posix(),  # relative to the results directory
        started=started,
    )


def failure_record(cell: Cell, session: Session, reason: str) -> Record:
    """What is kept of a cell whose training diverged: why, and what it was run with (no results)."""
    return Record(status=FAILED, image=cell.info.key, name=cell.info.name, seed=cell.seed, reason=reason,
                  on_divergence=session.config.on_divergence, config=cell.config,
                  provenance=Provenance(**provenance(session.device)))


def train_and_write(cell: Cell, session: Session) -> None:
    """Train one cell (from its checkpoint if there is one) and write its record, or its failed record."""
    stop = session.stop
    if stop():
        raise RunStopped(f"stopped by {stop.name} before {cell.label}; complete records are kept; run the same "
                         f"command again to continue", stop.exit_code)
    ckpt_path = cell.run_dir.checkpoint(cell.stem)
    checkpointing, started = cell_checkpointing(cell, session)
    try:
        record, restored = train_with_progress(cell, session, checkpointing)
    except TrainingStopped as exc:
        raise RunStopped(f"stopped by {stop.name} after iteration {exc.iteration} of {cell.recipe.iterations} of "
                         f"{cell.label}; checkpoint in {ckpt_path}; run the same command again to resume",
                         stop.exit_code) from None
    except DivergenceError as exc:
        write_failure(cell, session, exc)
        return
    write_result(cell, session, dataclasses.replace(record, started=started), restored)


def cell_checkpointing(cell: Cell, session: Session) -> tuple[Checkpointing, str]:
    """How ``cell`` saves its training state, the state it resumes from (its checkpoint if one of
    exactly its configuration can be read; otherwise a note says why not), and when the cell started:
    now, or when the run that wrote its checkpoint started it (a resumed cell keeps its first start)."""
    path = cell.run_dir.checkpoint(cell.stem)
    state, note = load_checkpoint(path, cell.config, session.device)
    if note:
        session.progress.note(note)
    started = (state or {}).get("started") or utc_timestamp()
    save = partial(save_checkpoint, path, cell.config, started=started)
    return Checkpointing(every=session.config.checkpoint_every, save=save, resume=state,
                         stop_requested=session.stop), started


def write_failure(cell: Cell, session: Session, exc: DivergenceError) -> None:
    write_record(cell.path, failure_record(cell, session, str(exc)))
    cell.run_dir.checkpoint(cell.stem).unlink(missing_ok=True)
    session.progress.note(f"{cell.label}: FAILED, {exc} (--on-divergence {session.config.on_divergence}); "
                          f"the run goes on -> {cell.path}")


def write_result(cell: Cell, session: Session, record: Record, restored: np.ndarray) -> None:
    """The panel, then the record (last: a record marks the cell complete); the checkpoint goes."""
    write_panel(cell.panel_path, cell.image, cell.mask, restored)
    write_record(cell.path, record)
    cell.run_dir.checkpoint(cell.stem).unlink(missing_ok=True)
    restores = f", {len(record.divergences)} non-finite losses undone" if record.divergences else ""
    others = len(record.batch or ()) - 1
    batched = f", batched with {others} more" if others > 0 else ""
    session.progress.note(
        f"{cell.info.name:<12} seed {cell.seed}: PSNR {record.psnr:.2f} dB "
        f"(paste-back {record.psnr_pasted:.2f}), {record.ms_per_iter:.1f} ms/iter{batched}, "
        f"{record.backtracks} backtracks{restores} -> {cell.path}"
    )


def train_with_progress(cell: Cell, session: Session, checkpointing: Checkpointing) -> tuple[Record, np.ndarray]:
    start = checkpointing.resume["loop"]["next_iteration"] if checkpointing.resume else 0
    if start:
        session.progress.note(f"{cell.label}: resuming from its checkpoint at iteration {start}")
        session.progress.skip(start)
    with session.progress.cell(cell.label, cell.recipe.iterations, start) as callback:
        return run_cell(cell, session.device, callback, on_divergence=session.config.on_divergence, checkpointing=checkpointing)


def train_batch_and_write(cells: list[Cell], session: Session) -> None:
    """Train ``cells`` (one image size, one recipe) as batched models (dip.restore.restore_batch) and write
    each one's record or failed record, as :func:`train_and_write` does for one cell. Cells whose
    checkpoints resume at different iterations (or that start afresh) form one batch per iteration."""
    stop = session.stop
    if stop():
        raise RunStopped(f"stopped by {stop.name} before {cells[0].label} and {len(cells) - 1} more; complete "
                         f"records are kept; run the same command again to continue", stop.exit_code)
    by_start: dict[int, list[tuple[Cell, Checkpointing, str]]] = {}
    for cell in cells:
        ckpt, started = cell_checkpointing(cell, session)
        by_start.setdefault(ckpt.resume["loop"]["next_iteration"] if ckpt.resume else 0, []).append((cell, ckpt, started))
    for start, batch in sorted(by_start.items(), reverse=True):  # the furthest along first
        cells_, ckpts, starts = (list(column) for column in zip(*batch))
        _train_batch(cells_, ckpts, starts, start, session)


def _train_batch(cells: list[Cell], ckpts: list[Checkpointing], starts: list[str], start: int,
                 session: Session) -> None:
    stop, config, device = session.stop, session.config, session.device
    labels = ", ".join(c.label for c in cells)
    if start:
        session.progress.note(f"{labels}: resuming from {'their checkpoints' if len(cells) > 1 else 'its checkpoint'} "
                              f"at iteration {start}")
        session.progress.skip(start * len(cells))
    if len(cells) > 1:
        session.progress.note(f"training {len(cells)} cells as one batched model: {labels}")
    gc.collect()  # the last cell's trainer may sit in a cycle (e.g. torch's lazy imports): free it before measuring
    reset_peak_memory(device)
    inputs = [CellInput(c.image, c.mask, cell_seed(c), reference=c.image) for c in cells]
    with contextlib.ExitStack() as bars:
        callbacks = [bars.enter_context(session.progress.cell(c.label, c.recipe.iterations, start)) for c in cells]
        try:
            results = restore_batch(inputs, cells[0].recipe, network_factory(cells[0]), device=device,
                                    callbacks=callbacks, on_divergence=config.on_divergence, checkpointing=ckpts,
                                    net_input=network_input(cells[0]))
        except TrainingStopped as exc:
            folder = cells[0].run_dir.checkpoint(cells[0].stem).parent
            raise RunStopped(f"stopped by {stop.name} after iteration {exc.iteration} of {cells[0].recipe.iterations} "
                             f"of {labels}; checkpoints in {folder}; run the same command again to resume",
                             stop.exit_code) from None
    for cell, result, started in zip(cells, results, starts):
        if isinstance(result, DivergenceError):
            write_failure(cell, session, result)
        else:
            record = cell_record(cell, result, device, config.on_divergence, batch=cells, started=started)
            write_result(cell, session, record, result.output)

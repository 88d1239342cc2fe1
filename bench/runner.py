"""The harness loop: images x seeds, one restoration each, one JSON record each.

Everything that can fail on bad input (unknown image, missing or corrupt file, size the network
cannot take, unusable results directory) is checked for every cell before the first one trains.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bench.config import RunConfig, cell_recipe, resolve_device
from bench.data import ImageInfo, centre_crop, file_image_info, load_image, read_any_image, resolve_image, sha256_of
from bench.checkpoints import checkpoint_path, load_checkpoint, save_checkpoint
from bench.errors import BenchError, RunStopped
from bench.hardware import peak_tflops
from bench.locks import lock_path, try_lock
from bench.panels import write_panel
from bench.provenance import device_name, provenance
from bench.records import COMPLETE, FAILED, SCHEMA, read_record, record_path, write_bytes_atomic, write_json_atomic
from bench.stop import StopRequest
from dip.baselines import interpolate_missing
from dip.masks import apply_mask, bernoulli_mask, mask_digest, paper_mask
from dip.metrics import psnr, psnr_pasted
from dip.restore import Checkpointing, DivergenceError, RestoreConfig, TrainingStopped, check_device, restore
from dip.seeding import derived_seed
from dip.skipnet import SkipNetConfig, build_network, check_input_size, count_parameters
from dip.timing import count_flops, peak_memory_bytes, reset_peak_memory


PUBLISHED = ("deep_prior", "papyan")


@dataclass(frozen=True)
class Source:
    """One image to restore, loaded, verified and cropped: a Table 1 image or a user's file."""

    info: ImageInfo
    image: np.ndarray  # (h, w) or (h, w, 3) float32 ground truth, cropped
    published: dict[str, np.ndarray]  # the authors' published DIP and Papyan et al. outputs, cropped alike
    published_mask: np.ndarray | None  # the paper's full-size mask (Table 1 images only)
    origin: dict  # where a user's file came from ({"file": ..., "file_sha256": ...}); {} for Table 1 images


@dataclass(frozen=True)
class Cell:
    """One (image, seed) unit of work, with its data loaded and checked."""

    info: ImageInfo
    seed: int
    image: np.ndarray  # (h, w) or (h, w, 3) float32 ground truth, cropped
    mask: np.ndarray  # (h, w) float32, 1 = kept
    published: dict[str, np.ndarray]
    config: dict  # the fully resolved configuration this cell trains with (JSON-ready)
    recipe: RestoreConfig
    path: Path

    @property
    def panel_path(self) -> Path:
        return self.path.parent / PANELS_DIR / self.path.with_suffix(".png").name


PANELS_DIR = "panels"  # beside the records, in the results directory (git-ignored: the test images)


def run_fields(config: RunConfig, device: torch.device, recipe: RestoreConfig) -> dict:
    """The configuration all cells of a run share: a record's ``config`` without image, seed and file
    (what bench.report.shared_config reads back), JSON-ready (tuples -> lists, as a stored record has them)."""
    fields = {"profile": config.profile, "crop": config.crop, "mask": config.mask}
    if config.mask == "bernoulli":
        fields["keep"] = config.keep
    fields |= {"device": str(device), "recipe_name": config.recipe_name, "recipe": recipe.to_dict()}
    return json.loads(json.dumps(fields))


def cell_config(config: RunConfig, source: Source, seed: int, device: torch.device, recipe: RestoreConfig) -> dict:
    shared = run_fields(config, device, recipe)
    return {"profile": shared.pop("profile"), "image": source.info.key, **source.origin, "seed": seed, **shared}


def table_source(info: ImageInfo, config: RunConfig, data_dir: Path) -> Source:
    image = centre_crop(load_image(info, "GT", data_dir), config.crop)
    published = {kind: centre_crop(load_image(info, kind, data_dir), config.crop) for kind in PUBLISHED}
    published_mask = paper_mask(load_image(info, "masked", data_dir)) if config.mask == "paper" else None
    return Source(info, image, published, published_mask, {})


def file_source(path: str, config: RunConfig) -> Source:
    full = read_any_image(Path(path))
    info = file_image_info(Path(path), full)
    if float(full.max()) == float(full.min()):
        raise BenchError(f"{path}: the image is constant; there is nothing to restore and PSNR is undefined")
    origin = {"file": str(Path(path).resolve()), "file_sha256": sha256_of(Path(path))}
    return Source(info, centre_crop(full, config.crop), {}, None, origin)


def plan_cells(config: RunConfig, data_dir: Path, results_dir: Path, device: torch.device) -> list[Cell]:
    """Load, verify and check every cell up front; raises BenchError on the first problem."""
    sources = [table_source(resolve_image(name), config, data_dir) for name in config.images]
    sources += [file_source(path, config) for path in config.files]
    keys = [s.info.key for s in sources]
    if len(set(keys)) != len(keys):
        raise BenchError(f"two images would share record names: {', '.join(k for k in keys if keys.count(k) > 1)}")
    cells = []
    for source in sources:
        info, image = source.info, source.image
        recipe = cell_recipe(config, device, out_channels=1 if image.ndim == 2 else image.shape[2])
        try:
            check_input_size(*image.shape[:2], recipe.net)
            check_device(recipe, device)
        except ValueError as exc:
            raise BenchError(f"{info.key}: {exc}") from None
        for seed in config.seeds:
            if config.mask == "bernoulli":
                full_mask = bernoulli_mask((info.height, info.width), config.keep, seed=seed, name=info.key)
            else:
                full_mask = source.published_mask
            # Drawn at full size, then cropped: a crop's mask is the same window of the full mask.
            mask = centre_crop(full_mask, config.crop)
            if mask.all() or not mask.any():
                # Nothing missing (PSNR of the input is infinite) or nothing observed (nothing to fit).
                raise BenchError(f"{info.key} seed {seed}: the mask keeps {'every' if mask.all() else 'no'} pixel "
                                 f"of the {mask.shape[1]}x{mask.shape[0]} image; there is nothing to restore")
            cfg = cell_config(config, source, seed, device, recipe)
            cells.append(Cell(info, seed, image, mask, source.published, cfg, recipe, record_path(results_dir, info.key, seed)))
    return cells


def check_writable(results_dir: Path, cells: list[Cell]) -> None:
    """Refuse, before any training, a results directory that cannot be written or lacks the space
    for this run. Permission bits are not asked (root passes them on a read-only mount): a probe file
    is written and removed."""
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"cannot create results directory {results_dir}: {exc.strerror}") from None
    try:  # a file of this process's own: runs starting side by side must not trip over each other's probe
        with tempfile.NamedTemporaryFile(dir=results_dir, prefix=".write-probe-") as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError:
        raise BenchError(f"results directory {results_dir} is not writable (tried writing a file there)") from None
    needed, free = bytes_needed(cells), shutil.disk_usage(results_dir).free
    if free < needed:
        raise BenchError(
            f"results directory {results_dir} has {free / 2**20:.1f} MiB free; this run needs about "
            f"{needed / 2**20:.0f} MiB (records, panels, a checkpoint and its replacement)"
        )


def bytes_needed(cells: list[Cell]) -> int:
    """An upper bound on what the cells write: per cell a record (< 256 KiB) and an uncompressed
    panel; the largest checkpoint twice (an atomic replacement holds old and new at once):
    parameters x 6 (weights, Adam's two moments, and the kept copies of all three) plus z, the
    network input and the EMA."""
    if not cells:
        return 0
    params = max(count_parameters(build_network(net)) for net in {c.recipe.net for c in cells})
    pixels = max(c.image.shape[0] * c.image.shape[1] for c in cells)
    channels = max(c.recipe.net.in_channels for c in cells)
    checkpoint = 4 * (6 * params + (2 * channels + 3) * pixels)
    per_cell = 256 * 2**10 + 4 * pixels * 3
    return 2 * checkpoint + len(cells) * per_cell


def is_done(cell: Cell) -> bool:
    """A complete record with exactly this configuration exists (a changed flag means re-run)."""
    record = read_record(cell.path)
    return record is not None and record.get("config") == cell.config


def failed_record(cell: Cell) -> dict | None:
    """The failed record of exactly this configuration, if training gave up on the cell."""
    record = read_record(cell.path, FAILED)
    return record if record is not None and record.get("config") == cell.config else None


# Resolved on the machine that trains (auto precision depends on the GPU): a Slurm submission planned on
# a login node compares records without them; the job itself then checks exactly (is_done).
NODE_FIELDS = ("device", "recipe.precision", "recipe.channels_last", "recipe.fused_adam", "recipe.tf32",
               "recipe.cudnn_benchmark")


def is_done_on_any_node(cell: Cell) -> bool:
    """A complete record exists whose configuration equals this one but for :data:`NODE_FIELDS`."""
    record = read_record(cell.path)
    return record is not None and _without_node_fields(record.get("config", {})) == _without_node_fields(cell.config)


def _without_node_fields(config: dict) -> dict:
    config = json.loads(json.dumps(config))
    for name in NODE_FIELDS:
        *parents, leaf = name.split(".")
        holder = config
        for key in parents:
            holder = holder.get(key, {})
        holder.pop(leaf, None)
    return config


@lru_cache(maxsize=None)
def gflop_per_iteration(net: SkipNetConfig, height: int, width: int) -> float:
    return count_flops(lambda: build_network(net), (1, net.in_channels, height, width)) / 1e9


def reference_scores(cell: Cell) -> dict[str, float]:
    """PSNR of reference rows computed here, on this cell's crop: the authors' published outputs
    (restored from their own masks) and classical interpolation of the missing pixels (this cell's mask)."""
    scores = {f"{kind}_published": psnr(cell.image, output) for kind, output in cell.published.items()}
    for method in ("nearest", "linear"):
        scores[f"interp_{method}"] = psnr(cell.image, interpolate_missing(apply_mask(cell.image, cell.mask), cell.mask, method))
    # An exact reconstruction (e.g. linear interpolation of a ramp) has infinite PSNR, which JSON cannot hold.
    return {key: value if math.isfinite(value) else None for key, value in scores.items()}


def run_cell(
    cell: Cell,
    device: torch.device,
    callback: Callable | None = None,
    *,
    on_divergence: str = "backtrack",
    checkpointing: Checkpointing | None = None,
) -> tuple[dict, np.ndarray]:
    """Train one cell; return its record (not yet written) and the restored image."""
    reset_peak_memory(device)
    result = restore(
        cell.image,
        cell.mask,
        cell.recipe,
        seed=derived_seed(cell.seed, f"net/{cell.info.key}"),
        device=device,
        reference=cell.image,
        callback=callback,
        on_divergence=on_divergence,
        checkpointing=checkpointing,
    )
    timing = result.timing
    best = max(result.curve, key=lambda p: p.psnr)
    height, width = cell.image.shape[:2]
    gflop = gflop_per_iteration(cell.recipe.net, height, width)
    gflops = gflop / (timing.median_ms_per_iter / 1e3)
    peak = peak_tflops(device_name(device), cell.recipe.precision, cell.recipe.tf32) if device.type == "cuda" else None
    memory, memory_kind = peak_memory_bytes(device)
    record = {
        "schema": SCHEMA,
        "status": COMPLETE,
        "image": cell.info.key,
        "name": cell.info.name,
        "seed": cell.seed,
        "size": [height, width],
        "full_size": [cell.info.height, cell.info.width],
        "psnr": psnr(cell.image, result.output),
        "psnr_pasted": psnr_pasted(cell.image, result.output, cell.mask),
        "psnr_ema": None if result.output_ema is None else psnr(cell.image, result.output_ema),
        "psnr_best": best.psnr,  # what an oracle early stop at an evaluation point would get
        "best_iteration": best.iteration,
        "psnr_masked_input": psnr(cell.image, apply_mask(cell.image, cell.mask)),
        "reference_psnr": reference_scores(cell),
        "final_loss": result.final_loss,
        "backtracks": result.backtracks,
        "backtrack_iterations": result.backtrack_iterations,
        "on_divergence": on_divergence,
        "divergences": result.divergences,  # iterations with a non-finite loss, each undone (backtrack policy)
        "resumed_at": result.resumed_at,  # iterations this cell was resumed from after a stop or a kill
        "curve": [dataclasses.asdict(p) for p in result.curve],
        "timing": timing.to_dict(),
        "gflop_per_iter": gflop,
        "gflops_achieved": gflops,
        "device_peak_tflops": peak,  # CUDA only, from bench.hardware's table; None if unknown
        "peak_fraction": None if peak is None else gflops / (peak * 1e3),
        "peak_memory_bytes": memory,
        "peak_memory_kind": memory_kind,
        "mask_sha256": mask_digest(cell.mask),
        "keep_fraction": float(cell.mask.mean()),
        "config": cell.config,
        "provenance": provenance(device),
        "panel": f"{PANELS_DIR}/{cell.panel_path.name}",  # relative to the results directory
    }
    return record, result.output


def adopt(cell: Cell, source_dir: Path) -> bool:
    """Copy ``cell``'s record (and panel) from another results directory if one with exactly this
    configuration is there; True if it was."""
    record = read_record(record_path(source_dir, cell.info.key, cell.seed))
    if record is None or record.get("config") != cell.config:
        return False
    panel = source_dir / PANELS_DIR / cell.panel_path.name
    if panel.is_file():
        write_bytes_atomic(cell.panel_path, panel.read_bytes())
    write_json_atomic(cell.path, record)
    return True


@dataclass(frozen=True)
class RunOutcome:
    records: list[dict]  # the complete records of the run's cells, in cell order
    failures: list[dict]  # the failed records of its cells (training diverged beyond repair)


def plan_run(config: RunConfig, data_dir: Path, results_dir: Path, *, reuse_from: Path | None = None,
             device: torch.device | None = None, done=is_done) -> tuple[list[Cell], list[Cell]]:
    """All cells of ``config``, loaded and checked, and those still to train (``done`` says which are
    finished); the results directory is checked for writes and space. Raises BenchError."""
    device = device or resolve_device(config.device)
    cells = plan_cells(config, data_dir, results_dir, device)
    check_writable(results_dir, cells)
    todo = [c for c in cells if not done(c) and not (reuse_from is not None and adopt(c, reuse_from))]
    skipped = len(cells) - len(todo)
    if skipped:
        tqdm.write(f"{skipped} of {len(cells)} cells already have complete records (in {results_dir}"
                   f"{' or ' + str(reuse_from) if reuse_from else ''}); skipping them")
    return cells, todo


def collect(cells: list[Cell]) -> RunOutcome:
    """The complete and the failed records of ``cells`` now on disk, whoever wrote them."""
    failures = [r for c in cells if (r := failed_record(c)) is not None]
    return RunOutcome([r for c in cells if (r := read_record(c.path)) is not None], failures)


def run(config: RunConfig, data_dir: Path, results_dir: Path, *, progress: bool = True, reuse_from: Path | None = None,
        wait_for_others: bool = True) -> RunOutcome:
    """Run every cell of ``config`` that has no complete record yet; return the run's records.

    ``reuse_from``: another results directory whose records of identical cells are copied, not re-run.
    A cell locked by another process (a second run into the same directory) is left to it and, with
    ``wait_for_others``, waited for at the end. A cell whose training diverges beyond repair gets a
    failed record and the run goes on. SIGINT/SIGTERM stop the run after the current step with a
    checkpoint (raises RunStopped).
    """
    device = resolve_device(config.device)
    cells, todo = plan_run(config, data_dir, results_dir, reuse_from=reuse_from, device=device)
    iterations = cells[0].recipe.iterations
    with StopRequest() as stop, tqdm(total=len(todo) * iterations, desc="all cells", unit="it", disable=not progress or None) as overall:
        session = Session(config, device, overall, progress, stop)
        busy = [cell for cell in todo if not train_if_free(cell, session)]
        for cell in busy:
            wait_and_train(cell, session, patience=None if wait_for_others else LOCK_PATIENCE_S)
    return collect(cells)


# How long a job waits for a cell someone else holds before leaving it to them: long enough that a
# momentary holder (`bench status` testing the lock) does not make a job skip its cell.
LOCK_PATIENCE_S = 5.0


@dataclass(frozen=True)
class Session:
    """What every cell of one run shares while it trains."""

    config: RunConfig
    device: torch.device
    overall: tqdm
    progress: bool
    stop: StopRequest


def label(cell: Cell) -> str:
    return f"{cell.info.name} seed {cell.seed}"


def train_if_free(cell: Cell, session: Session, *, settled_ok: bool = False) -> bool:
    """Train ``cell`` unless another process holds its lock (then False). Once the lock is held, a
    record of this configuration written meanwhile by another process counts (a failed one too when
    ``settled_ok``: that process already gave the cell its try)."""
    with try_lock(lock_path(cell.path)) as held:
        if not held:
            return False
        if is_done(cell) or (settled_ok and failed_record(cell) is not None):
            session.overall.update(cell.recipe.iterations)
        else:
            train_and_write(cell, session)
        return True


def wait_and_train(cell: Cell, session: Session, patience: float | None = None) -> None:
    """Wait for another process to release ``cell``, then train it unless that process settled it;
    after ``patience`` seconds (None: no limit) leave the cell to that process."""
    deadline = None if patience is None else time.monotonic() + patience
    if patience is None:
        tqdm.write(f"{label(cell)}: another process is training it; waiting for it to finish")
    while not train_if_free(cell, session, settled_ok=True):
        if deadline is not None and time.monotonic() > deadline:
            tqdm.write(f"{label(cell)}: another process is training it; leaving it to that process")
            return
        if session.stop():
            raise RunStopped(f"stopped by {session.stop.name} while waiting for {label(cell)} (trained by another "
                             f"process); complete records are kept; run the same command again to continue",
                             session.stop.exit_code)
        time.sleep(0.5)


def train_and_write(cell: Cell, session: Session) -> None:
    """Train one cell (from its checkpoint if there is one) and write its record, or its failed record."""
    stop = session.stop
    if stop():
        raise RunStopped(f"stopped by {stop.name} before {label(cell)}; complete records are kept; run the same "
                         f"command again to continue", stop.exit_code)
    ckpt_path = checkpoint_path(cell.path)
    state, note = load_checkpoint(ckpt_path, cell.config, session.device)
    if note:
        tqdm.write(note)
    checkpointing = Checkpointing(every=session.config.checkpoint_every, save=partial(save_checkpoint, ckpt_path, cell.config),
                                  resume=state, stop_requested=stop)
    try:
        record, restored = train_with_progress(cell, session, checkpointing)
    except TrainingStopped as exc:
        raise RunStopped(f"stopped by {stop.name} after iteration {exc.iteration} of {cell.recipe.iterations} of "
                         f"{label(cell)}; checkpoint in {ckpt_path}; run the same command again to resume",
                         stop.exit_code) from None
    except DivergenceError as exc:
        write_json_atomic(cell.path, failure_record(cell, session, str(exc)))
        ckpt_path.unlink(missing_ok=True)
        tqdm.write(f"{label(cell)}: FAILED, {exc} (--on-divergence {session.config.on_divergence}); "
                   f"the run goes on -> {cell.path}")
        return
    write_panel(cell.panel_path, cell.image, cell.mask, restored)
    write_json_atomic(cell.path, record)  # last: a record marks the cell complete
    ckpt_path.unlink(missing_ok=True)
    restores = f", {len(record['divergences'])} non-finite losses undone" if record["divergences"] else ""
    tqdm.write(
        f"{cell.info.name:<12} seed {cell.seed}: PSNR {record['psnr']:.2f} dB "
        f"(paste-back {record['psnr_pasted']:.2f}), {record['timing']['median_ms_per_iter']:.1f} ms/iter, "
        f"{record['backtracks']} backtracks{restores} -> {cell.path}"
    )


def failure_record(cell: Cell, session: Session, reason: str) -> dict:
    """What is kept of a cell whose training diverged: why, and what it was run with (no results)."""
    return {
        "schema": SCHEMA,
        "status": FAILED,
        "image": cell.info.key,
        "name": cell.info.name,
        "seed": cell.seed,
        "reason": reason,
        "on_divergence": session.config.on_divergence,
        "config": cell.config,
        "provenance": provenance(session.device),
    }


def train_with_progress(cell: Cell, session: Session, checkpointing: Checkpointing) -> tuple[dict, np.ndarray]:
    start = checkpointing.resume["loop"]["next_iteration"] if checkpointing.resume else 0
    if start:
        tqdm.write(f"{label(cell)}: resuming from its checkpoint at iteration {start}")
        session.overall.update(start)
    bar = tqdm(total=cell.recipe.iterations, initial=start, desc=label(cell), unit="it", leave=False,
               disable=not session.progress or None)
    with bar:

        def callback(i: int, point) -> None:
            bar.update(1)
            session.overall.update(1)
            if point is not None:
                bar.set_postfix(loss=f"{point.loss:.2e}", psnr=f"{point.psnr:.2f}", refresh=False)

        return run_cell(cell, session.device, callback, on_divergence=session.config.on_divergence, checkpointing=checkpointing)


def measure_ms_per_iter(config: RunConfig, timed_iterations: int = 2) -> dict[tuple[int, int], float]:
    """Median ms per iteration of ``config``'s recipe on this machine, per distinct (height, width).

    A few real iterations of the profile's own recipe (after one warm-up) on a random image of each
    size the run will train at.
    """
    device = resolve_device(config.device)
    recipe = cell_recipe(config, device, out_channels=1)
    probe = dataclasses.replace(recipe, iterations=timed_iterations + 1, timer_warmup=1)
    rng = np.random.default_rng(0)
    measured = {}
    for shape in sorted({train_shape(config, resolve_image(name)) for name in config.images}):
        image = rng.random(shape, dtype=np.float32)
        measured[shape] = restore(image, np.ones(shape, np.float32), probe, seed=0, device=device).timing.median_ms_per_iter
    return measured


def train_shape(config: RunConfig, info: ImageInfo) -> tuple[int, int]:
    return (info.height, info.width) if config.crop == 0 else (config.crop, config.crop)


def estimate_seconds(config: RunConfig, ms_per_iter: dict[tuple[int, int], float]) -> float:
    """Run time of ``config`` from measured per-iteration times: images x seeds x iterations."""
    per_seed_ms = sum(ms_per_iter[train_shape(config, resolve_image(n))] for n in config.images)
    return per_seed_ms * config.recipe.iterations * len(config.seeds) / 1e3

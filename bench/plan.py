"""Planning a run: every (image, seed) cell loaded, verified and checked before the first one trains.

Everything that can fail on bad input (unknown image, missing or corrupt file, a size the network
cannot take, a mask with nothing to restore, an unusable results directory) fails here, in one line.
Which cells are already done is decided here too, from the records on disk.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bench.config import RunConfig
from bench.data import (
    ImageInfo,
    centre_crop,
    file_image_info,
    load_image,
    read_any_image,
    resolve_image,
    sha256_of,
)
from bench.errors import BenchError
from bench.execution import cell_recipe, resolve_device
from bench.methods import Method
from bench.record import MethodSpec, RecordConfig
from bench.records import FAILED, Record, read_record, write_bytes_atomic, write_record
from bench.rundir import RunDir, cell_stem
from dip.batched import check_batchable
from dip.execution import PATH_CHOSEN_FIELDS
from dip.masks import bernoulli_mask, paper_mask
from dip.inputs import NetInput
from dip.nets import count_parameters
from dip.recipe import RestoreConfig
from dip.trainer import check_device

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
    config: RecordConfig  # the fully resolved configuration this cell trains with, as its record holds it
    recipe: RestoreConfig
    run_dir: RunDir
    method: Method  # what builds the network and its input (bench.methods), with its fields set

    @property
    def stem(self) -> str:
        return cell_stem(self.info.key, self.seed)

    @property
    def path(self) -> Path:
        """The cell's record."""
        return self.run_dir.record(self.stem)

    @property
    def panel_path(self) -> Path:
        return self.run_dir.panel(self.stem)

    @property
    def label(self) -> str:
        return f"{self.info.name} seed {self.seed}"


def method_spec(config: RunConfig) -> MethodSpec:
    """The method as records store it: name, fields (JSON values) and, for one loaded from a path, where from."""
    loaded = config.loaded_method()
    return MethodSpec(loaded.method.name, loaded.method.field_values(), loaded.source)


def run_fields(config: RunConfig, device: torch.device, recipe: RestoreConfig) -> RecordConfig:
    """The configuration all cells of a run share: a record's ``config`` without image, seed and file
    (what bench.analysis.summary.shared_config reads back)."""
    return RecordConfig(
        profile=config.profile, crop=config.crop, mask=config.mask, device=str(device), recipe=recipe,
        keep=config.keep if config.mask == "bernoulli" else None, recipe_name=config.recipe_name,
        method=method_spec(config), cells_per_gpu=config.cells_per_gpu,
    )


def cell_config(config: RunConfig, source: Source, seed: int, device: torch.device,
                recipe: RestoreConfig) -> RecordConfig:
    return dataclasses.replace(run_fields(config, device, recipe), image=source.info.key, seed=seed,
                               file=source.origin.get("file"), file_sha256=source.origin.get("file_sha256"))


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
    method = config.loaded_method().method
    try:
        method.require()  # a missing optional package: one line naming the install command
    except ValueError as exc:
        raise BenchError(f"--method {config.method}: {exc}") from None
    cells = []
    for source in sources:
        info, image = source.info, source.image
        recipe = cell_recipe(config, device, out_channels=1 if image.ndim == 2 else image.shape[2])
        try:
            method.check(recipe, *image.shape[:2])
            check_device(recipe, device)
            if config.cells_per_gpu > 1:
                check_batchable(recipe)
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
            cells.append(Cell(info, seed, image, mask, source.published, cfg, recipe, RunDir(results_dir), method))
    return cells


def check_writable(results_dir: Path, cells: list[Cell], together: int = 1) -> None:
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
    needed, free = bytes_needed(cells, together), shutil.disk_usage(results_dir).free
    if free < needed:
        raise BenchError(
            f"results directory {results_dir} has {free / 2**20:.1f} MiB free; this run needs about "
            f"{needed / 2**20:.0f} MiB (records, panels, a checkpoint and its replacement)"
        )


def bytes_needed(cells: list[Cell], together: int = 1) -> int:
    """An upper bound on what the cells write: per cell a record (< 256 KiB) and an uncompressed
    panel; the checkpoints of the ``together`` cells trained at once (--cells-per-gpu) and one more
    (an atomic replacement holds old and new at once), each at most parameters x 6 (weights, Adam's
    two moments, and the kept copies of all three) plus z, the network input and the EMA."""
    if not cells:
        return 0
    shapes = {(c.recipe, c.image.shape) for c in cells}  # one network (and input) per recipe and image size
    params = max(count_parameters(cell_network(cells[0].method, recipe, shape)) for recipe, shape in shapes)
    inputs = max(math.prod(cell_input(cells[0].method, recipe, shape).shape) for recipe, shape in shapes)
    pixels = max(c.image.shape[0] * c.image.shape[1] for c in cells)
    checkpoint = 4 * (6 * params + 2 * inputs + 3 * pixels)
    per_cell = 256 * 2**10 + 4 * pixels * 3
    return (min(together, len(cells)) + 1) * checkpoint + len(cells) * per_cell


def cell_network(method: Method, recipe: RestoreConfig, shape: tuple[int, ...]) -> torch.nn.Module:
    """The network ``method`` builds for an image of ``shape`` ((h, w) or (h, w, c))."""
    return method.build(recipe, 1 if len(shape) == 2 else shape[2], shape[0], shape[1])


def cell_input(method: Method, recipe: RestoreConfig, shape: tuple[int, ...]) -> NetInput:
    """The network input ``method`` feeds for an image of ``shape``: its own, or the paper's."""
    return method.net_input(recipe, shape[0], shape[1]) or NetInput.paper(recipe, shape[0], shape[1])


def is_done(cell: Cell) -> bool:
    """A complete record with exactly this configuration exists (a changed flag means re-run)."""
    record = read_record(cell.path)
    return record is not None and record.config == cell.config


def failed_record(cell: Cell) -> Record | None:
    """The failed record of exactly this configuration, if training gave up on the cell."""
    record = read_record(cell.path, FAILED)
    return record if record is not None and record.config == cell.config else None


# Resolved on the machine that trains (auto precision depends on the GPU): a Slurm submission planned on
# a login node compares records without them; the job itself then checks exactly (is_done).
NODE_FIELDS = ("device", *(f"recipe.{name}" for name in PATH_CHOSEN_FIELDS))


def is_done_on_any_node(cell: Cell) -> bool:
    """A complete record exists whose configuration equals this one but for :data:`NODE_FIELDS`."""
    record = read_record(cell.path)
    return record is not None and _without_node_fields(record.config) == _without_node_fields(cell.config)


def leaves_execution_to_the_machine(config: RunConfig) -> bool:
    """Whether ``config`` sets none of :data:`NODE_FIELDS` itself: device "auto", precision "auto" and every
    other path-chosen switch unset. Its cells then run as the machine at hand resolves them, and a
    record of the same cell resolved on another machine (a campaign whose sessions land on different CPU
    kinds, say) is the same measurement: it counts as done instead of being trained again and replaced."""
    switches = [name for name in PATH_CHOSEN_FIELDS if name != "precision"]
    return (config.device == "auto" and config.precision == "auto"
            and all(getattr(config, name) is None for name in switches))


def _without_node_fields(config: RecordConfig) -> dict:
    config = config.to_dict()
    for name in NODE_FIELDS:
        *parents, leaf = name.split(".")
        holder = config
        for key in parents:
            holder = holder.get(key, {})
        holder.pop(leaf, None)
    return config


def adopt(cell: Cell, source_dir: Path) -> bool:
    """Copy ``cell``'s record (and panel) from another results directory if one with exactly this
    configuration is there; True if it was."""
    source = RunDir(source_dir)
    record = read_record(source.record(cell.stem))
    if record is None or record.config != cell.config:
        return False
    panel = source.panel(cell.stem)
    if panel.is_file():
        write_bytes_atomic(cell.panel_path, panel.read_bytes())
    write_record(cell.path, record)
    return True


def plan_run(config: RunConfig, data_dir: Path, results_dir: Path, *, reuse_from: Path | None = None,
             device: torch.device | None = None, done=None) -> tuple[list[Cell], list[Cell]]:
    """All cells of ``config``, loaded and checked, and those still to train (``done`` says which are
    finished: by default :func:`is_done`, or :func:`is_done_on_any_node` where ``config`` leaves the
    execution to the machine); the results directory is checked for writes and space. Raises BenchError."""
    if done is None:
        done = is_done_on_any_node if leaves_execution_to_the_machine(config) else is_done
    device = device or resolve_device(config.device)
    cells = plan_cells(config, data_dir, results_dir, device)
    check_writable(results_dir, cells, config.cells_per_gpu)
    todo = [c for c in cells if not done(c) and not (reuse_from is not None and adopt(c, reuse_from))]
    skipped = len(cells) - len(todo)
    if skipped:
        tqdm.write(f"{skipped} of {len(cells)} cells already have complete records (in {results_dir}"
                   f"{' or ' + str(reuse_from) if reuse_from else ''}); skipping them")
    return cells, todo

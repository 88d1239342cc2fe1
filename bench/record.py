"""The record of one (image, seed) cell as a typed object: its fields, its schema version, how it is
read from JSON (validated, older schemas migrated) and written back. Torch-free: every report is
recomputed from these objects, never from a live run.

Schema history (``Record.schema``):

1. the first schema; fields were added over time (``divergences``, ``started``, ``psnr_ema``, the
   recipe's ``input_noise`` and ``ema_decay``, the network's ``layout``, ``recipe_name``...), each
   absent from the records written before it. A schema-1 record reads as what its code ran: no EMA
   (``ema_decay`` 0), fixed input noise, the paper's wiring and recipe, the built-in method.
2. ``config.method``: the method that trained the cell (:mod:`bench.methods`), its hyper-parameters
   and, for one loaded from a Python path, where from.

A record of a newer schema, or one that is not a record (a missing or mistyped field, an unknown
field), is refused with one line (:class:`RecordError`): nothing is guessed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field

from bench.errors import BenchError
from dip.nets.config import SkipNetConfig
from dip.recipe import CurvePoint, RestoreConfig

SCHEMA = 2
COMPLETE = "complete"
FAILED = "failed"  # a cell whose training diverged under --on-divergence fail: its reason, no results
STATUSES = (COMPLETE, FAILED)
BUILTIN_METHOD = "dip-bench"


class RecordError(BenchError):
    """A file that is not a record this dip-bench can read (malformed, or of a newer schema)."""


# What a schema-1 recipe without a field ran with: the code of its time had no other value.
_SCHEMA1_RECIPE = {"input_noise": "fixed", "ema_decay": 0.0}
_SCHEMA1_NET = {"layout": "paper"}


@dataclass(frozen=True)
class MethodSpec:
    """The method a cell was trained with (bench.methods): its name, its hyper-parameters as stored
    (JSON values; the built-in method has none, its network is ``recipe.net``) and, for a method loaded
    from a Python path, that path."""

    name: str = BUILTIN_METHOD
    fields: dict[str, typing.Any] = field(default_factory=dict)
    source: str | None = None

    @property
    def is_builtin(self) -> bool:
        return self.name == BUILTIN_METHOD and self.source is None

    def to_dict(self) -> dict:
        return {"name": self.name, "fields": dict(self.fields), **({"source": self.source} if self.source else {})}

    @classmethod
    def from_dict(cls, data: typing.Any) -> MethodSpec:
        data = _object(data, "config.method")
        _no_unknown(data, cls, "config.method")
        name = _typed(data.get("name"), str, "config.method.name")
        fields = _object(data.get("fields", {}), "config.method.fields")
        source = data.get("source")
        return cls(name, dict(fields), None if source is None else _typed(source, str, "config.method.source"))


@dataclass(frozen=True)
class RecordConfig:
    """The resolved configuration a cell ran with. ``image``, ``seed``, ``file`` and ``file_sha256``
    are the cell's own; :meth:`shared` is what the cells of one run have in common."""

    profile: str
    crop: int
    mask: str
    device: str
    recipe: RestoreConfig
    keep: float | None = None  # the bernoulli mask's keep-probability (None with the published masks)
    recipe_name: str = "paper"
    method: MethodSpec = field(default_factory=MethodSpec)
    cells_per_gpu: int = 1
    image: str | None = None
    seed: int | None = None
    file: str | None = None  # an image file outside the manifest (--image), and its digest
    file_sha256: str | None = None

    def shared(self) -> RecordConfig:
        return dataclasses.replace(self, image=None, seed=None, file=None, file_sha256=None)

    def to_dict(self) -> dict:
        """The JSON form, as every record stores it (absent: the cell's own fields of a shared config,
        keep with the published masks, cells_per_gpu at 1)."""
        out: dict[str, typing.Any] = {"profile": self.profile}
        out |= {k: v for k, v in (("image", self.image), ("file", self.file), ("file_sha256", self.file_sha256),
                                  ("seed", self.seed)) if v is not None}
        out |= {"crop": self.crop, "mask": self.mask}
        if self.keep is not None:
            out["keep"] = self.keep
        out |= {"device": self.device, "recipe_name": self.recipe_name, "method": self.method.to_dict(),
                "recipe": self.recipe.to_dict()}
        if self.cells_per_gpu != 1:
            out["cells_per_gpu"] = self.cells_per_gpu
        return out

    @classmethod
    def from_dict(cls, data: typing.Any, schema: int = SCHEMA) -> RecordConfig:
        """A stored configuration (of a record, a baseline or a golden), older schemas migrated."""
        data = dict(_object(data, "config"))
        if schema < 2:
            data.setdefault("method", MethodSpec().to_dict())
        method = MethodSpec.from_dict(data.pop("method", MethodSpec().to_dict()))
        recipe = _recipe(data.pop("recipe", None), schema)
        return _build(cls, data, "config", {"recipe": recipe, "method": method})


def _recipe(data: typing.Any, schema: int) -> RestoreConfig:
    data = dict(_object(data, "config.recipe"))
    net = dict(_object(data.pop("net", {}), "config.recipe.net"))
    if schema < 2:
        data = _SCHEMA1_RECIPE | data
        net = _SCHEMA1_NET | net
    try:
        return _build(RestoreConfig, data, "config.recipe", {"net": _build(SkipNetConfig, net, "config.recipe.net")})
    except ValueError as exc:  # the dataclass's own checks
        raise RecordError(f"config.recipe: {exc}") from None


@dataclass(frozen=True)
class Timing:
    """dip.timing.TimingSummary as stored."""

    median_ms_per_iter: float
    mean_ms_per_iter: float | None = None
    iters_per_s: float | None = None
    timed_iterations: int | None = None
    warmup_iterations: int | None = None
    total_s: float | None = None
    clock: str | None = None


@dataclass(frozen=True)
class ReferenceScores:
    """PSNR of the reference rows on the cell's crop; None where there is none (no published output for
    a user's file) or where it is infinite (an exact interpolation), which JSON cannot hold."""

    deep_prior_published: float | None = None
    papyan_published: float | None = None
    interp_nearest: float | None = None
    interp_linear: float | None = None


@dataclass(frozen=True)
class Provenance:
    """Where and with what a record was made (bench.provenance); fields added over time read as None."""

    commit: str | None = None
    dirty: bool | None = None
    timestamp: str | None = None  # when the record was written: the cell's end
    host: str | None = None
    python: str | None = None
    torch: str | None = None
    numpy: str | None = None
    cuda: str | None = None
    cudnn: int | None = None
    device: str | None = None
    device_name: str | None = None
    cpu_model: str | None = None
    cpu_vendor: str | None = None
    cpu_capability: str | None = None
    cpu_amx: bool | None = None
    cpu_avx512_bf16: bool | None = None
    isa_caps: dict[str, str] | None = None
    cpu_count: int | None = None
    torch_threads: int | None = None

    @property
    def commit_label(self) -> str:
        """The short commit, marked -dirty where the tree was."""
        return (self.commit or "unknown")[:12] + ("-dirty" if self.dirty else "")


@dataclass(frozen=True)
class Record:
    """One cell's record: complete (its results) or failed (its ``reason``, no results)."""

    status: str
    image: str
    seed: int
    config: RecordConfig
    provenance: Provenance
    name: str | None = None  # the image's display name (absent in a few early records: the key is shown)
    schema: int = SCHEMA
    # complete records
    size: tuple[int, int] | None = None  # (h, w) trained on: the crop
    full_size: tuple[int, int] | None = None
    psnr: float | None = None
    psnr_pasted: float | None = None
    psnr_ema: float | None = None
    psnr_best: float | None = None  # what an oracle early stop at an evaluation point would get
    best_iteration: int | None = None
    psnr_masked_input: float | None = None
    reference_psnr: ReferenceScores | None = None
    final_loss: float | None = None
    backtracks: int = 0
    backtrack_iterations: tuple[int, ...] = ()
    on_divergence: str | None = None
    divergences: tuple[int, ...] = ()  # iterations with a non-finite loss, each undone (backtrack policy)
    resumed_at: tuple[int, ...] = ()  # iterations the cell was resumed from after a stop or a kill
    curve: tuple[CurvePoint, ...] = ()
    timing: Timing | None = None
    batch: tuple[str, ...] | None = None  # --cells-per-gpu: the stems of the cells trained as one model
    gflop_per_iter: float | None = None
    gflops_achieved: float | None = None
    device_peak_tflops: float | None = None
    peak_fraction: float | None = None
    peak_memory_bytes: int | None = None
    peak_memory_kind: str | None = None
    mask_sha256: str | None = None
    keep_fraction: float | None = None
    panel: str | None = None  # relative to the results directory
    started: str | None = None  # when the cell's training began, kept across resumes
    # failed records
    reason: str | None = None

    @property
    def label(self) -> str:
        """The image's display name (its key in records that lack one)."""
        return self.name or self.image

    @property
    def ms_per_iter(self) -> float:
        return self.timing.median_ms_per_iter

    def to_dict(self) -> dict:
        """The JSON form; fields that are None (or absent from this kind of record) are left out."""
        out: dict[str, typing.Any] = {}
        first = ("schema", "status", "image", "name", "seed")  # in the order records have always had
        last = ("reason", "config", "provenance", "panel", "started")
        names = [*first, *(f.name for f in dataclasses.fields(self) if f.name not in first + last), *last]
        for name in names:
            value = getattr(self, name)
            if value is None:
                continue
            if name == "config":
                value = value.to_dict()
            elif name == "curve":
                value = [dataclasses.asdict(p) for p in value]
            elif dataclasses.is_dataclass(value):
                value = {k: v for k, v in dataclasses.asdict(value).items() if v is not None}
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        return out

    @classmethod
    def from_dict(cls, data: typing.Any) -> Record:
        """A stored record, validated; raises :class:`RecordError` naming what is wrong."""
        data = dict(_object(data, "record"))
        schema = data.get("schema")
        if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
            raise RecordError(f"no schema version (got {schema!r})")
        if schema > SCHEMA:
            raise RecordError(f"schema {schema} is newer than this dip-bench reads (up to {SCHEMA}); update dip-bench")
        if data.get("status") not in STATUSES:
            raise RecordError(f"status must be one of {', '.join(STATUSES)}, got {data.get('status')!r}")
        nested = {
            "schema": SCHEMA,  # read: migrated to this schema
            "config": RecordConfig.from_dict(data.pop("config", None), schema),
            "provenance": _build(Provenance, _object(data.pop("provenance", None), "provenance"), "provenance"),
        }
        if "timing" in data:
            nested["timing"] = _build(Timing, _object(data.pop("timing"), "timing"), "timing")
        if "reference_psnr" in data:
            nested["reference_psnr"] = _build(ReferenceScores, _object(data.pop("reference_psnr"), "reference_psnr"),
                                              "reference_psnr")
        if "curve" in data:
            points = data.pop("curve")
            if not isinstance(points, list):
                raise RecordError("curve is not a list")
            nested["curve"] = tuple(_build(CurvePoint, _object(p, "curve point"), "curve point") for p in points)
        record = _build(cls, data, "record", nested)
        if record.status == COMPLETE:
            missing = [n for n in ("size", "full_size", "psnr", "psnr_pasted", "timing") if getattr(record, n) is None]
            if missing:
                raise RecordError(f"a complete record needs {', '.join(missing)}")
        return record


def _object(value: typing.Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise RecordError(f"{where} is {'missing' if value is None else 'not an object'}")
    return value


def _no_unknown(data: dict, cls: type, where: str) -> None:
    unknown = sorted(data.keys() - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise RecordError(f"{where} has unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")


def _build(cls: type, data: dict, where: str, nested: dict | None = None):
    """``cls`` from the JSON object ``data``: unknown fields refused, missing ones take their defaults
    (a missing required one is refused), each value checked against its annotation."""
    _no_unknown(data, cls, where)
    hints = typing.get_type_hints(cls)
    values = dict(nested or {})
    for f in dataclasses.fields(cls):
        if f.name in values:
            continue
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecordError(f"{where} lacks {f.name}")
            continue
        values[f.name] = _typed(data[f.name], hints[f.name], f"{where}.{f.name}")
    return cls(**values)


def _typed(value: typing.Any, hint: typing.Any, where: str) -> typing.Any:
    """``value`` if it has the JSON form of ``hint`` (lists become tuples for tuple fields); else RecordError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _typed(value, inner, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise RecordError(f"{where} is not a list")
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            raise RecordError(f"{where} has {len(value)} items, not {len(items)}")
        return tuple(_typed(v, t, where) for v, t in zip(value, items))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise RecordError(f"{where} is not an object")
        return dict(value)
    if hint is typing.Any:
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecordError(f"{where} is not a number: {value!r}")
        return float(value) if isinstance(value, int) else value
    if hint in (int, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise RecordError(f"{where} is not {'an' if hint is int else 'a'} {hint.__name__}: {value!r}")
        return value
    raise TypeError(f"no reader for {hint!r} ({where})")

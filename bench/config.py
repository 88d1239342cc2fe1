"""Run configuration: typed dataclasses, the three profiles, command-line overrides, auto resolution.

A run is images x seeds cells. Each field of :class:`RunConfig`, of the recipe
(:class:`dip.restore.RestoreConfig`) and of the network (:class:`dip.skipnet.SkipNetConfig`) is a
command-line flag (``--iterations``, ``--crop``, ``--upsample-mode``, ...); the profile supplies the
defaults and a flag overrides one field.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from dataclasses import dataclass, field

import torch

from bench.data import load_images
from bench.errors import BenchError
from dip.restore import DIVERGENCE_POLICIES, PRECISIONS, RestoreConfig
from dip.skipnet import SkipNetConfig

ALL_IMAGES = tuple(load_images())
MASKS = ("bernoulli", "paper")
PATHS = ("fast", "reference")

# Training recipes (network + training), chosen with --recipe; the profile then sets the iterations.
RECIPES: dict[str, RestoreConfig] = {
    # The paper's: the authors' notebook and models/skip.py (REFERENCE.md section 2).
    "paper": RestoreConfig(),
    # The seed reproduction's, as its text describes it (REFERENCE.md section 4), adapted to
    # grayscale: their network wiring, nn.LeakyReLU()'s default slope 0.01, bicubic upsampling,
    # lr 0.01, z <- z + N(0, 1) / 30 after every step, no backtracking. Their masks
    # (scipy.sparse.random, exactly half the pixels) are not copied: the run's own masks are used,
    # so that a comparison with the paper recipe changes network and training only.
    "seed": RestoreConfig(
        lr=0.01,
        input_noise="cumulative",
        input_noise_std=1 / 30,
        backtracking=False,
        net=SkipNetConfig(layout="seed", upsample_mode="bicubic", negative_slope=0.01),
    ),
}


@dataclass(frozen=True)
class RunConfig:
    profile: str
    images: tuple[str, ...] = ALL_IMAGES
    files: tuple[str, ...] = ()  # image files outside the manifest (--image PATH, repeatable)
    seeds: tuple[int, ...] = (0,)
    crop: int = 0  # side of a centred square crop; 0 = the full image (as in Table 1)
    mask: str = "bernoulli"  # "bernoulli": seeded from (seed, image); "paper": the published mask
    keep: float = 0.5  # keep-probability of the bernoulli mask
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:N"
    # Execution path: "reference" runs the recipe exactly as written (eager fp32, contiguous tensors,
    # plain Adam); "fast" uses what the device offers. The fields below default (None / "auto") to the
    # path's choice; setting one explicitly overrides it, and every record stores what ran.
    path: str = "fast"
    precision: str = "auto"  # fp32 | bf16 | fp16
    channels_last: bool | None = None
    fused_adam: bool | None = None
    tf32: bool | None = None  # CUDA only
    cudnn_benchmark: bool | None = None  # CUDA only
    # Reliability. Neither changes what a finished cell computes, so neither is part of a record's config.
    checkpoint_every: int = 1000  # iterations between a cell's checkpoints; 0 = only on SIGINT/SIGTERM
    on_divergence: str = "backtrack"  # non-finite loss: "backtrack" (restore the last good state) | "fail" the cell
    recipe_name: str = "paper"  # the preset of RECIPES that ``recipe`` started from (--recipe)
    recipe: RestoreConfig = field(default_factory=RestoreConfig)

    def __post_init__(self) -> None:
        if not self.images and not self.files:
            raise ValueError("no images selected")
        if self.files and self.mask == "paper":
            raise ValueError("--mask paper needs the published masks, which files given with --image do not have")
        if not self.seeds:
            raise ValueError("no seeds selected")
        if any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be >= 0, got {self.seeds}")
        if self.crop < 0:
            raise ValueError(f"crop must be >= 0, got {self.crop}")
        if self.mask not in MASKS:
            raise ValueError(f"unknown mask {self.mask!r}; choose from {', '.join(MASKS)}")
        if self.recipe_name not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe_name!r}; choose from {', '.join(RECIPES)}")
        if self.path not in PATHS:
            raise ValueError(f"unknown path {self.path!r}; choose from {', '.join(PATHS)}")
        if self.precision != "auto" and self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose from auto, {', '.join(PRECISIONS)}")
        if not 0.0 < self.keep < 1.0:
            raise ValueError(f"keep must be in (0, 1) (1 keeps every pixel: nothing to restore), got {self.keep}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0 (0: only on a stop signal), got {self.checkpoint_every}")
        if self.on_divergence not in DIVERGENCE_POLICIES:
            raise ValueError(f"unknown on_divergence {self.on_divergence!r}; choose from {', '.join(DIVERGENCE_POLICIES)}")


PROFILES: dict[str, RunConfig] = {
    # The paper's protocol: 11 full-size images, 11000 iterations, backtracking. A GPU job, checkpointed
    # every 1000 iterations (the default).
    "paper": RunConfig(profile="paper"),
    # All 11 images x 3 seeds, 128x128 centre crops, 600 iterations: about 25 minutes on a 2-core AMX CPU.
    "quick": RunConfig(profile="quick", seeds=(0, 1, 2), crop=128, checkpoint_every=200, recipe=RestoreConfig(iterations=600)),
    # CI's regression run: 3 images, 64x64 crops, 400 iterations: about 40 s on a 2-core AMX CPU.
    # At 200 iterations PSNR still climbs ~0.7 dB per 50 steps and seeds spread by 0.7 dB; at 400 it has
    # levelled. The regression check's outcome part (bench.regression) and the parity test run it.
    "smoke": RunConfig(profile="smoke", images=("house", "cman", "peppers"), crop=64, checkpoint_every=0,
                       recipe=RestoreConfig(iterations=400)),
    # The regression check's recipe fingerprint (bench.fingerprint): the smoke images, 24 iterations on the
    # reference path, a curve point at every iteration, and lr 1e-6. At the paper's lr 1e-3 Adam's first
    # steps amplify the rounding differences between CPU kernels (measured: 0.4% in the loss after one
    # step, 0.8 dB after five); at 1e-6 the trajectory stays smooth, so a fixed golden can be compared
    # tightly on any CPU, while every line of the training code still runs. About 10 s.
    "fingerprint": RunConfig(profile="fingerprint", images=("house", "cman", "peppers"), crop=64, path="reference",
                             checkpoint_every=0, recipe=RestoreConfig(iterations=24, lr=1e-6, eval_every=1)),
}


# ---------------------------------------------------------------------------------------------------
# Command-line flags generated from the dataclasses

# Fields that are not flags: the profile is chosen with --profile, out_channels follows the image,
# and the recipe's precision/channels_last are resolved from RunConfig's fields of the same name.
_NOT_FLAGS = {
    RunConfig: {"profile", "recipe", "recipe_name", "files"},
    RestoreConfig: {"net", "precision", "channels_last", "fused_adam", "tf32", "cudnn_benchmark"},
    SkipNetConfig: {"out_channels"},
}
_SECTIONS = (("run", RunConfig), ("recipe", RestoreConfig), ("net", SkipNetConfig))


def parse_int_list(text: str) -> tuple[int, ...]:
    """'3' -> (3,); '0-4' -> (0, 1, 2, 3, 4); '0,2,5-6' -> (0, 2, 5, 6)."""
    values: list[int] = []
    try:
        for part in text.split(","):
            lo, sep, hi = part.strip().partition("-")
            values.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers or ranges like 0-4, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"empty list {text!r}")
    return tuple(dict.fromkeys(values))


def parse_name_list(text: str) -> tuple[str, ...]:
    """'house,cman' -> ('house', 'cman'); 'all' -> every image of Table 1."""
    if text.strip().lower() == "all":
        return ALL_IMAGES
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"empty list {text!r}")
    return names


def _parser_for(hint: typing.Any) -> dict:
    """argparse keyword arguments for a field's type hint."""
    if hint is bool or hint == (bool | None):
        return {"action": argparse.BooleanOptionalAction}
    if hint == tuple[int, ...]:
        return {"type": parse_int_list, "metavar": "LIST"}
    if hint == tuple[str, ...]:
        return {"type": parse_name_list, "metavar": "LIST"}
    if hint in (int, float, str):
        return {"type": hint, "metavar": hint.__name__.upper()}
    raise TypeError(f"no command-line parser for {hint!r}")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per configurable field; only flags given on the command line override the profile."""
    parser.add_argument("--recipe", dest="run.recipe_name", choices=RECIPES, default=argparse.SUPPRESS,
                        help="training recipe to start from (default paper); field flags then override it")
    parser.add_argument("--image", dest="run.files", action="append", metavar="PATH", default=argparse.SUPPRESS,
                        help="run on this image file (grayscale or RGB; repeatable) instead of the Table 1 images")
    for section, cls in _SECTIONS:
        group = parser.add_argument_group(f"{section} fields (override the profile)")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in _NOT_FLAGS[cls]:
                continue
            flag = "--" + f.name.replace("_", "-")
            group.add_argument(flag, dest=f"{section}.{f.name}", default=argparse.SUPPRESS, **_parser_for(hints[f.name]))


def build_config(profile: str, overrides: dict[str, typing.Any]) -> RunConfig:
    """The profile with ``overrides`` ({"run.crop": 64, "recipe.iterations": 20, ...}) applied.

    "run.recipe_name" swaps the profile's recipe for that preset of :data:`RECIPES`, keeping the
    profile's iteration count; the other overrides then apply on top.
    """
    if profile not in PROFILES:
        raise BenchError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    base = PROFILES[profile]
    recipe_name = overrides.get("run.recipe_name", base.recipe_name)
    if recipe_name not in RECIPES:
        raise BenchError(f"unknown recipe {recipe_name!r}; choose from {', '.join(RECIPES)}")
    if recipe_name != base.recipe_name:  # another preset: the profile keeps only its iteration count
        base = dataclasses.replace(base, recipe_name=recipe_name,
                                   recipe=dataclasses.replace(RECIPES[recipe_name], iterations=base.recipe.iterations))
    overrides = dict(overrides)
    if "run.files" in overrides:
        overrides["run.files"] = tuple(overrides["run.files"])
        overrides.setdefault("run.images", ())  # own files replace the Table 1 images unless --images says otherwise
    by_section: dict[str, dict] = {"run": {}, "recipe": {}, "net": {}}
    for dest, value in overrides.items():
        section, name = dest.split(".", 1)
        by_section[section][name] = value
    try:
        net = dataclasses.replace(base.recipe.net, **by_section["net"])
        recipe = dataclasses.replace(base.recipe, net=net, **by_section["recipe"])
        return dataclasses.replace(base, recipe=recipe, **by_section["run"])
    except ValueError as exc:
        raise BenchError(str(exc)) from None


# ---------------------------------------------------------------------------------------------------
# Resolution of "auto" fields for the machine at hand


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BenchError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"device {name!r} asked for, but this torch build sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise BenchError(f"device type {device.type!r} is not supported; use cpu or cuda")
    return device


# oneDNN's instruction-set levels (the values ONEDNN_MAX_CPU_ISA takes) and their rank; the AVX10 names
# are aliases of the AVX-512 ones. A cap below AVX512_CORE_BF16 leaves oneDNN without bf16 instructions:
# its bf16 convolutions then fall back to emulation (measured here: 28x slower than native at 64x64
# under ONEDNN_MAX_CPU_ISA=AVX2).
ONEDNN_ISA_RANK = {"SSE41": 0, "AVX": 1, "AVX2": 2, "AVX2_VNNI": 3, "AVX2_VNNI_2": 4, "AVX512_CORE": 5,
                   "AVX512_CORE_VNNI": 6, "AVX512_CORE_BF16": 7, "AVX512_CORE_FP16": 8, "AVX10_1_512": 8,
                   "AVX512_CORE_AMX": 9, "AVX10_1_512_AMX": 9, "AVX512_CORE_AMX_FP16": 10, "AVX10_1_512_AMX_FP16": 10}


def onednn_isa_cap() -> str | None:
    """The instruction-set cap set through ONEDNN_MAX_CPU_ISA (or its old name DNNL_MAX_CPU_ISA), if any."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    return cap if cap in ONEDNN_ISA_RANK else None  # ALL, DEFAULT or unset: no cap


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX-512-BF16 that oneDNN may use: bf16 convolutions then run at several times the fp32
    rate. The CPU flags alone are not enough: an instruction-set cap below AVX512_CORE_BF16 hides them."""
    cap = onednn_isa_cap()
    allows = (lambda level: cap is None or ONEDNN_ISA_RANK[cap] >= ONEDNN_ISA_RANK[level])
    amx = torch.cpu._is_amx_tile_supported() and allows("AVX512_CORE_AMX")
    avx512_bf16 = torch.cpu._is_avx512_bf16_supported() and allows("AVX512_CORE_BF16")
    return bool(amx or avx512_bf16)


def resolve_precision(config: RunConfig, device: torch.device) -> str:
    if config.precision != "auto":
        return config.precision
    if config.path == "reference":
        return "fp32"
    if device.type == "cuda":  # (planning a Slurm submission on a node without CUDA: a guess, see NODE_FIELDS)
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


# The execution fields and their values on the reference path (the recipe exactly as written).
REFERENCE_EXECUTION = {"precision": "fp32", "channels_last": False, "fused_adam": False, "tf32": False,
                       "cudnn_benchmark": False, "compile": False, "cuda_graphs": False}


def execution_path(recipe: dict) -> str:
    """'reference' if a resolved recipe (as stored in a record) ran exactly as written, else 'fast'."""
    return "reference" if all(recipe.get(k, v) == v for k, v in REFERENCE_EXECUTION.items()) else "fast"


def cell_recipe(config: RunConfig, device: torch.device, out_channels: int) -> RestoreConfig:
    """The concrete recipe one (image, seed) cell trains with: no "auto" left."""
    fast = config.path == "fast"
    on_cuda = device.type == "cuda"
    precision = resolve_precision(config, device)

    def pick(value: bool | None, fast_default: bool) -> bool:
        return (fast and fast_default) if value is None else value

    return dataclasses.replace(
        config.recipe,
        precision=precision,
        channels_last=pick(config.channels_last, precision != "fp32"),
        fused_adam=pick(config.fused_adam, True),
        tf32=pick(config.tf32, on_cuda),
        cudnn_benchmark=pick(config.cudnn_benchmark, on_cuda),
        net=dataclasses.replace(config.recipe.net, out_channels=out_channels),
    )

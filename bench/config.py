"""Run configuration: typed dataclasses, the profiles and recipes, overrides, auto resolution.

A run is images x seeds cells. Each field of :class:`RunConfig`, of the recipe
(:class:`dip.recipe.RestoreConfig`) and of the network (:class:`dip.nets.config.SkipNetConfig`) is a
command-line flag (``--iterations``, ``--crop``, ``--upsample-mode``, ...; generated in
:mod:`bench.flags`); the profile supplies the defaults and a flag overrides one field.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

from bench.data import load_images, resolve_image
from bench.errors import BenchError, unknown_choice
from bench.methods import BUILTIN as BUILTIN_METHOD
from bench.methods import LoadedMethod, configured_method
from dip.nets.config import SkipNetConfig
from dip.recipe import DIVERGENCE_POLICIES, PRECISIONS, RestoreConfig

TABLE1_IMAGES = load_images()
ALL_IMAGES = tuple(TABLE1_IMAGES)
MASKS = ("bernoulli", "paper")
PATHS = ("fast", "reference")

# Training recipes (network + training), chosen with --recipe; the profile then sets the iterations.
RECIPES: dict[str, RestoreConfig] = {
    # The paper's: the authors' notebook and models/skip.py (docs/protocol.md).
    "paper": RestoreConfig(),
    # The seed reproduction's, as its text describes it (docs/protocol.md), adapted to
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
    winograd: bool | None = None  # fp32 3x3 convolutions by Winograd F(4x4, 3x3); the fast path's on an AVX2 CPU (fp32)
    matmul_1x1: bool | None = None  # fp32 1x1 convolutions as one matmul; the fast path's where Winograd is
    keep_heap: bool | None = None  # CPU, glibc: malloc keeps freed memory during steps; the fast path's in fp32
    # Cells of one image size trained at a time as one batched model (dip.batched); 1: each cell alone.
    # What fills a large GPU; on a CPU the grouped convolutions are slower than one cell at a time.
    cells_per_gpu: int = 1
    # Reliability. Neither changes what a finished cell computes, so neither is part of a record's config.
    checkpoint_every: int = 1000  # iterations between a cell's checkpoints; 0 = only on SIGINT/SIGTERM
    on_divergence: str = "backtrack"  # non-finite loss: "backtrack" (restore the last good state) | "fail" the cell
    recipe_name: str = "paper"  # the preset of RECIPES that ``recipe`` started from (--recipe)
    recipe: RestoreConfig = field(default_factory=RestoreConfig)
    # The method (bench.methods): a registered name or a Python path (--method), and the fields its flags
    # set, as (name, value) pairs: the spec, not the instance, so that a job loads the method again.
    method: str = BUILTIN_METHOD
    method_fields: tuple[tuple[str, typing.Any], ...] = ()

    def loaded_method(self) -> LoadedMethod:
        """The method with its fields set (bench.methods.configured_method)."""
        return configured_method(self.method, self.method_fields)

    def __post_init__(self) -> None:
        # Aliases (cameraman, lena512) become keys here, so that runs compare and cells dedupe by key.
        keys = tuple(dict.fromkeys(resolve_image(name, TABLE1_IMAGES).key for name in self.images))
        object.__setattr__(self, "images", keys)
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
        if self.cells_per_gpu < 1:
            raise ValueError(f"cells_per_gpu must be >= 1, got {self.cells_per_gpu}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0 (0: only on a stop signal), got {self.checkpoint_every}")
        if self.on_divergence not in DIVERGENCE_POLICIES:
            raise ValueError(f"unknown on_divergence {self.on_divergence!r}; choose from {', '.join(DIVERGENCE_POLICIES)}")


PROFILES: dict[str, RunConfig] = {
    # The paper's protocol: 11 full-size images, 11000 iterations, backtracking. A GPU job, checkpointed
    # every 1000 iterations (the default).
    "paper": RunConfig(profile="paper"),
    # What `make bench` runs without a GPU: every image once, small crops, a short budget, so that a CPU
    # gives an honestly labelled table in minutes (not comparable to Table 1).
    "brief": RunConfig(profile="brief", crop=64, checkpoint_every=0, recipe=RestoreConfig(iterations=500)),
    # All 11 images x 3 seeds, 128x128 centre crops, 600 iterations: about 25 minutes on a 2-core AMX CPU.
    "quick": RunConfig(profile="quick", seeds=(0, 1, 2), crop=128, checkpoint_every=200, recipe=RestoreConfig(iterations=600)),
    # CI's regression run: 3 images, 64x64 crops, 400 iterations: about 40 s on a 2-core AMX CPU.
    # At 200 iterations PSNR still climbs ~0.7 dB per 50 steps and seeds spread by 0.7 dB; at 400 it has
    # levelled. The regression check's outcome part (bench.regression) runs it, and House on the reference path too.
    "smoke": RunConfig(profile="smoke", images=("house", "cman", "peppers"), crop=64, checkpoint_every=0,
                       recipe=RestoreConfig(iterations=400)),
    # The regression check's recipe fingerprint (bench.fingerprint): the smoke images, 24 iterations on the
    # reference path, a curve point at every iteration, and lr 1e-6. At the paper's lr 1e-3 Adam's first
    # steps amplify the rounding differences between CPU kernels (measured: 0.4% in the loss after one
    # step, 0.8 dB after five); at 1e-6 the trajectory stays smooth, so a fixed golden can be compared
    # tightly on any CPU, while every line of the training code still runs. About 15 s.
    "fingerprint": RunConfig(profile="fingerprint", images=("house", "cman", "peppers"), crop=64, path="reference",
                             checkpoint_every=0, recipe=RestoreConfig(iterations=24, lr=1e-6, eval_every=1)),
}


def build_config(profile: str, overrides: dict[str, typing.Any]) -> RunConfig:
    """The profile with ``overrides`` ({"run.crop": 64, "recipe.iterations": 20, ...}) applied.

    "run.recipe_name" swaps the profile's recipe for that preset of :data:`RECIPES`, keeping the
    profile's iteration count; the other overrides then apply on top.
    """
    if profile not in PROFILES:
        raise BenchError(unknown_choice("unknown profile", profile, PROFILES))
    base = PROFILES[profile]
    recipe_name = overrides.get("run.recipe_name", base.recipe_name)
    if recipe_name not in RECIPES:
        raise BenchError(unknown_choice("unknown recipe", recipe_name, RECIPES))
    if recipe_name != base.recipe_name:  # another preset: the profile keeps only its iteration count
        base = dataclasses.replace(base, recipe_name=recipe_name,
                                   recipe=dataclasses.replace(RECIPES[recipe_name], iterations=base.recipe.iterations))
    overrides = dict(overrides)
    method = configured_method(overrides.get("run.method", base.method))  # an unknown method fails here
    if "run.files" in overrides:
        overrides["run.files"] = tuple(overrides["run.files"])
        overrides.setdefault("run.images", ())  # own files replace the Table 1 images unless --images says otherwise
    by_section: dict[str, dict] = {"run": {}, "recipe": {}, "net": {}, "method": {}}
    for dest, value in overrides.items():
        section, name = dest.split(".", 1)
        by_section[section][name] = value
    if by_section["net"] and method.method.name != BUILTIN_METHOD:
        flags = ", ".join("--" + name.replace("_", "-") for name in by_section["net"])
        raise BenchError(f"{flags}: the built-in network's field{'s' if len(by_section['net']) > 1 else ''}, "
                         f"not method {method.method.name!r}'s "
                         f"(see python -m bench run --method {overrides['run.method']} --help)")
    fields = tuple(by_section["method"].items())
    configured_method(overrides.get("run.method", base.method), fields)  # the method refuses a bad value here
    by_section["run"]["method_fields"] = fields
    try:
        net = dataclasses.replace(base.recipe.net, **by_section["net"])
        recipe = dataclasses.replace(base.recipe, net=net, **by_section["recipe"])
        return dataclasses.replace(base, recipe=recipe, **by_section["run"])
    except ValueError as exc:
        raise BenchError(str(exc)) from None


# The regression check's two parts and the profile each trains (bench.regression).
CHECK_PARTS = {"fingerprint": "fingerprint", "outcome": "smoke"}

"""Command-line flags generated from the configuration's dataclasses.

Each field of :class:`bench.config.RunConfig`, of the recipe (:class:`dip.recipe.RestoreConfig`) and of
the network (:class:`dip.nets.config.SkipNetConfig`) is a flag (``--iterations``, ``--crop``,
``--upsample-mode``, ...) with dest ``"<section>.<field>"`` ("run.crop", "recipe.lr", "net.layout");
only the flags given on the command line override the profile. Each flag's help comes from
:data:`HELP` and a string field's allowed values from :data:`CHOICES`, both keyed by dest: building
the flags fails for a field without help, so a new field cannot ship undocumented. The parser class
(:class:`OneLineParser`) is here too: usage errors are one line, with the nearest choice suggested.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from bench.config import ALL_IMAGES, MASKS, PATHS, PROFILES, RECIPES, RunConfig
from bench.errors import BenchError, unknown_choice
from bench.methods import BUILTIN, REGISTERED, LoadedMethod
from dip.execution import PATH_CHOSEN_FIELDS
from dip.nets.config import LAYOUTS, PADDINGS, UPSAMPLE_MODES, SkipNetConfig
from dip.recipe import DIVERGENCE_POLICIES, INPUT_NOISES, PRECISIONS, RestoreConfig

# Fields that are not flags: the profile is chosen with --profile, the recipe preset with --recipe,
# files with --image, out_channels follows the image, and the recipe's execution fields are resolved
# from RunConfig's fields of the same name.
_NOT_FLAGS = {
    RunConfig: {"profile", "recipe", "recipe_name", "files", "method", "method_fields"},
    RestoreConfig: {"net", *PATH_CHOSEN_FIELDS},  # set through RunConfig's fields of the same names
    SkipNetConfig: {"out_channels"},
}
_SECTIONS = (("run", RunConfig), ("recipe", RestoreConfig), ("net", SkipNetConfig))

# The string fields with a fixed set of values, as the dataclasses define and validate them.
CHOICES: dict[str, tuple[str, ...]] = {
    "run.mask": MASKS,
    "run.path": PATHS,
    "run.precision": ("auto", *PRECISIONS),
    "run.on_divergence": tuple(DIVERGENCE_POLICIES),
    "recipe.input_noise": INPUT_NOISES,
    "net.upsample_mode": UPSAMPLE_MODES,
    "net.padding": PADDINGS,
    "net.layout": LAYOUTS,
}
# Open-ended values, shown as a pattern rather than checked by argparse.
METAVARS = {"run.device": "{auto,cpu,cuda,cuda:N}"}

# One line per flag, keyed by dest. The paper profile's value is appended by add_config_flags.
HELP: dict[str, str] = {
    # run
    "run.images": f"Table 1 images, comma-separated, or all ({', '.join(ALL_IMAGES)}); "
                  "case-insensitive, aliases such as cameraman, lenna or peppers256 work",
    "run.seeds": "seeds, each a run of every image: e.g. 0, 0-2 or 0,3,5",
    "run.crop": "side in pixels of a centred square crop; 0 = the full image, as in Table 1",
    "run.mask": "bernoulli: drawn from (seed, image) with --keep; paper: the published mask",
    "run.keep": "probability that the bernoulli mask keeps a pixel, in (0, 1)",
    "run.device": "auto (cuda if available, else cpu), cpu, cuda or cuda:N",
    "run.path": "reference: the recipe exactly as written (eager fp32, contiguous, plain Adam); "
                "fast: what the device offers; the execution flags below override single choices",
    "run.precision": "arithmetic precision; auto: fp32 on the reference path, else bf16 where the device "
                     "runs it fast, fp16 on other CUDA devices, fp32 on other CPUs",
    "run.channels_last": "channels-last memory layout; the fast path uses it below fp32",
    "run.fused_adam": "Adam's update as one fused kernel; the fast path uses it",
    "run.tf32": "CUDA only: TF32 tensor cores for fp32 convolutions; the fast path uses them",
    "run.cudnn_benchmark": "CUDA only: autotune cuDNN's convolution algorithms; the fast path does",
    "run.winograd": "fp32 3x3 convolutions with outputs of at least 64x64 pixels by Winograd F(4x4, 3x3), "
                    "4x fewer multiplications; the fast path uses it where a CPU runs them fp32 with AVX2 (no AVX-512)",
    "run.matmul_1x1": "fp32 1x1 convolutions as one matrix product; the fast path uses it where it uses Winograd",
    "run.keep_heap": "CPU, glibc: malloc keeps freed memory during each step instead of unmapping the large "
                     "fp32 tensors (no page faults; the process keeps its peak memory); the fast path uses it in fp32",
    "run.cells_per_gpu": "cells of one image size trained at once as one batched model (fills a GPU; "
                         "fp32 or bf16, contiguous, not compiled); 1 = each cell alone",
    "run.checkpoint_every": "iterations between a cell's checkpoints; 0 = only on SIGINT/SIGTERM",
    "run.on_divergence": "on a non-finite loss: backtrack (restore the last good state and go on) or fail the cell",
    # recipe
    "recipe.iterations": "training iterations per cell",
    "recipe.lr": "Adam's learning rate",
    "recipe.input_scale": "scale of the fixed network input: z ~ input_scale * U[0, 1)",
    "recipe.input_noise_std": "std of the noise added to the input z",
    "recipe.input_noise": "fixed: fresh noise around a fixed z at each iteration (the paper's code); "
                          "cumulative: z itself walks, z += std * N(0, 1) after every step",
    "recipe.backtracking": "restore the last accepted parameters when the masked PSNR drops by more than "
                           "--backtrack-drop-db between checks",
    "recipe.backtrack_every": "iterations between backtracking checks",
    "recipe.backtrack_drop_db": "drop of the masked PSNR (dB) since the last accepted check that backtracks",
    "recipe.eval_every": "iterations between curve points (loss, PSNRs); one host sync each",
    "recipe.ema_decay": "decay of the moving average of the output (a second estimate), in [0, 1); 0 = off",
    "recipe.cuda_graphs": "CUDA only: replay the whole step (input noise, forward, loss, backward, Adam) as "
                          "CUDA graphs (not with fp16 or --compile)",
    "recipe.compile": "torch.compile the network",
    "recipe.timer_warmup": "first iterations left out of the timing (allocator growth, kernel autotuning)",
    "recipe.timer_window": "iterations per timing window (one host sync each on CUDA)",
    # net
    "net.in_channels": "channels of the network input z",
    "net.scales": "encoder and decoder levels; image sides must be multiples of 2**scales and at least 2 * 2**scales",
    "net.channels_down": "channels of each downsampling (encoder) block",
    "net.channels_up": "channels of each upsampling (decoder) block",
    "net.channels_skip": "channels of each skip connection; 0 = no skips",
    "net.kernel_down": "kernel size of the encoder's convolutions",
    "net.kernel_up": "kernel size of the decoder's convolutions",
    "net.kernel_skip": "kernel size of the skip connections' convolutions",
    "net.upsample_mode": "interpolation of the decoder's upsampling",
    "net.padding": "padding of the convolutions",
    "net.negative_slope": "negative slope of the LeakyReLUs",
    "net.layout": "paper: the authors' skip network; seed: the seed reproduction's wiring (skips after "
                  "downsampling, convolution before upsampling)",
}

_GROUP_NOTE = "Each flag overrides the profile's value (and --recipe's); (paper: X) is the paper profile's value."


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line rather than the usage block plus a line, and a flag must be
    spelt out: a prefix (``--results`` for ``--results-dir``) is an error, not a guess."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def _check_value(self, action: argparse.Action, value: object) -> None:
        # argparse's own message lists the choices but does not point at the near miss of a typo.
        if action.choices is not None and value not in action.choices:
            raise argparse.ArgumentError(action, unknown_choice("invalid choice:", str(value), map(str, action.choices)))


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


def parse_comma_list(text: str) -> tuple[str, ...]:
    """'a, b,,c' -> ('a', 'b', 'c'): a comma-separated flag value, blanks dropped."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


def parse_name_list(text: str) -> tuple[str, ...]:
    """'house,cman' -> ('house', 'cman'); 'all' -> every image of Table 1. Names are resolved (aliases,
    typos) by RunConfig."""
    if text.strip().lower() == "all":
        return ALL_IMAGES
    names = parse_comma_list(text)
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


def _paper_value(section: str, name: str) -> str:
    """The paper profile's value of a field, as the help shows it."""
    owner = {"run": PROFILES["paper"], "recipe": PROFILES["paper"].recipe, "net": PROFILES["paper"].recipe.net}[section]
    value = getattr(owner, name)
    if value is None:  # the execution switches: unset, --path decides
        return "unset, the path's choice"
    if isinstance(value, bool):
        return "on" if value else "off"
    if value == ALL_IMAGES:
        return "all"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def flag_help(dest: str) -> str:
    """A field flag's help line; a field without an entry in HELP is a bug caught here."""
    if not HELP.get(dest):
        raise KeyError(f"bench.flags.HELP has no help for {dest!r}: add a one-line entry for the new field")
    section, name = dest.split(".", 1)
    # argparse %-formats help strings: a literal % must be doubled.
    return f"{HELP[dest]} (paper: {_paper_value(section, name)})".replace("%", "%%")


def field_dests() -> list[str]:
    """The dest of every field flag, in the order the flags are added."""
    return [f"{section}.{f.name}" for section, cls in _SECTIONS for f in dataclasses.fields(cls) if f.name not in _NOT_FLAGS[cls]]


def _field_kwargs(dest: str, hint: typing.Any) -> dict:
    kwargs = _parser_for(hint)
    if dest in CHOICES:
        kwargs = {"type": str, "choices": CHOICES[dest]}  # argparse then lists them as the metavar
    if dest in METAVARS:
        kwargs["metavar"] = METAVARS[dest]
    return kwargs | {"dest": dest, "default": argparse.SUPPRESS, "help": flag_help(dest)}


def add_config_flags(parser: argparse.ArgumentParser, method: LoadedMethod | None = None) -> None:
    """One flag per configurable field; only flags given on the command line override the profile. With
    ``method`` (``run``): --method, and that method's fields in place of the built-in network's."""
    if method is not None:
        parser.add_argument("--method", dest="run.method", metavar="NAME", default=argparse.SUPPRESS,
                            help=f"the method to train: {', '.join(REGISTERED)} (default {BUILTIN}), or a Python "
                                 f"path, package.module:make_method or path/to/file.py[:make_method] (docs/methods.md); "
                                 f"its fields are flags: see --method NAME --help")
    parser.add_argument("--recipe", dest="run.recipe_name", choices=RECIPES, default=argparse.SUPPRESS,
                        help="training recipe to start from (default paper); field flags then override it")
    parser.add_argument("--image", dest="run.files", action="append", metavar="PATH", default=argparse.SUPPRESS,
                        help="run on this image file (grayscale or RGB; repeatable) instead of the Table 1 images")
    builtin = method is None or method.method.name == BUILTIN
    for section, cls in _SECTIONS if builtin else _SECTIONS[:2]:
        group = parser.add_argument_group(f"{section} fields", _GROUP_NOTE if section == _SECTIONS[0][0] else None)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in _NOT_FLAGS[cls]:
                dest = f"{section}.{f.name}"
                group.add_argument("--" + f.name.replace("_", "-"), **_field_kwargs(dest, hints[f.name]))
    if not builtin:
        add_method_flags(parser, method)


def add_method_flags(parser: argparse.ArgumentParser, loaded: LoadedMethod) -> None:
    """One flag per field of a method other than the built-in (dest "method.<field>"); a field named like
    another flag is refused in one line."""
    method = loaded.method
    group = parser.add_argument_group(f"method fields ({method.name})", "Each overrides the method's default.")
    hints = typing.get_type_hints(type(method))
    for f in dataclasses.fields(method):
        kwargs = _parser_for(hints[f.name])
        if hints[f.name] == tuple[str, ...]:  # not image names: a plain comma-separated list
            kwargs["type"] = lambda text: tuple(x.strip() for x in text.split(",") if x.strip())
        default = getattr(method, f.name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        text = method.field_help.get(f.name, f"field {f.name} of method {method.name}")
        try:
            group.add_argument("--" + f.name.replace("_", "-"), dest=f"method.{f.name}", default=argparse.SUPPRESS,
                               help=f"{text} (default {shown})".replace("%", "%%"), **kwargs)
        except argparse.ArgumentError:
            raise BenchError(f"method {method.name!r}: its field {f.name!r} has the name of another flag "
                             f"(--{f.name.replace('_', '-')}); rename the field") from None

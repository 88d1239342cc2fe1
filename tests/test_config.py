import argparse

import pytest
import torch

from bench.config import (
    ALL_IMAGES,
    PROFILES,
    build_config,
)
from bench.errors import BenchError
from bench.execution import cell_recipe, cpu_has_fast_bf16, resolve_precision
from bench.flags import (
    CHOICES,
    HELP,
    OneLineParser,
    add_config_flags,
    field_dests,
    parse_int_list,
)
from dip.execution import execution_path


def parse(*argv: str) -> dict:
    parser = OneLineParser(prog="t")
    add_config_flags(parser)
    return {k: v for k, v in vars(parser.parse_args(list(argv))).items()}


def test_paper_profile_holds_the_papers_recipe():
    paper = PROFILES["paper"]
    assert paper.images == ALL_IMAGES and len(paper.images) == 11
    assert paper.crop == 0 and paper.mask == "bernoulli" and paper.keep == 0.5
    recipe = paper.recipe
    assert (recipe.iterations, recipe.lr, recipe.input_scale, recipe.input_noise_std) == (11000, 1e-3, 0.1, 0.03)
    assert recipe.backtracking and recipe.backtrack_every == 50 and recipe.backtrack_drop_db == 5.0
    net = recipe.net
    assert (net.in_channels, net.scales, net.channels_down, net.channels_up, net.channels_skip) == (32, 5, 128, 128, 4)
    assert (net.upsample_mode, net.padding, net.negative_slope) == ("bilinear", "reflection", 0.2)


def test_smoke_and_quick_profiles():
    assert len(PROFILES["smoke"].images) == 3 and PROFILES["smoke"].recipe.iterations <= 400
    assert len(PROFILES["quick"].images) == 11 and PROFILES["quick"].crop > 0


@pytest.mark.parametrize(
    "text, expected",
    [("3", (3,)), ("0-4", (0, 1, 2, 3, 4)), ("0,2,5-6", (0, 2, 5, 6)), ("1,1,2", (1, 2))],
)
def test_parse_int_list(text, expected):
    assert parse_int_list(text) == expected


@pytest.mark.parametrize("text", ["", "a", "1-", "x-3"])
def test_parse_int_list_rejects_garbage(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_int_list(text)


def test_flags_override_only_what_is_given():
    overrides = parse("--iterations", "20", "--images", "house,cman", "--seeds", "0-2", "--no-backtracking", "--upsample-mode", "nearest")
    config = build_config("paper", overrides)
    assert config.images == ("house", "cman") and config.seeds == (0, 1, 2)
    assert config.recipe.iterations == 20 and not config.recipe.backtracking
    assert config.recipe.net.upsample_mode == "nearest"
    assert config.recipe.lr == 1e-3 and config.crop == 0  # untouched fields keep the profile's values
    assert build_config("paper", parse()) == PROFILES["paper"]


def test_unknown_flag_is_a_one_line_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse("--iteration", "5", "--bogus")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unrecognized arguments" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--iterations", "0"], "iterations must be positive"),
        (["--iterations", "-5"], "iterations must be positive"),
        (["--crop", "-1"], "crop must be >= 0"),
        (["--keep", "1.5"], "keep must be in"),
        (["--keep", "1"], "nothing to restore"),
        (["--lr", "0"], r"lr must be in \(0, 1e30\]"),
    ],
)
def test_bad_values_are_rejected(argv, message):
    with pytest.raises(BenchError, match=message):
        build_config("smoke", parse(*argv))


@pytest.mark.parametrize("dest", sorted(CHOICES))
def test_choices_agree_with_the_dataclasses_validation(dest):
    """argparse refuses what is not in CHOICES; the dataclasses (configs built in code) accept exactly those."""
    for value in CHOICES[dest]:
        build_config("smoke", {dest: value})
    with pytest.raises(BenchError, match="unknown"):
        build_config("smoke", {dest: "bogus"})


@pytest.mark.parametrize("argv", [["--mask", "random"], ["--precision", "fp64"], ["--upsample-mode", "area"],
                                  ["--path", "turbo"], ["--on-divergence", "ignore"], ["--layout", "unet"]])
def test_values_outside_a_fixed_set_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"invalid choice: {argv[1]!r}" in err and err.count("\n") == 1


def test_a_near_miss_choice_is_suggested(capsys):
    with pytest.raises(SystemExit):
        parse("--upsample-mode", "bilinaer")
    assert "invalid choice: 'bilinaer'; did you mean 'bilinear'? (choose from bilinear, bicubic, nearest)" in capsys.readouterr().err


def test_every_field_has_exactly_one_help_entry():
    assert set(field_dests()) == set(HELP), "bench.flags.HELP and the dataclasses' fields disagree"


def test_a_field_without_help_fails_loudly(monkeypatch):
    monkeypatch.delitem(HELP, "recipe.lr")
    with pytest.raises(KeyError, match="no help for 'recipe.lr'"):
        add_config_flags(argparse.ArgumentParser())


def test_help_shows_allowed_values_and_the_paper_default():
    parser = OneLineParser(prog="t")
    add_config_flags(parser)
    text = " ".join(parser.format_help().split())  # argparse wraps lines
    for dest, values in CHOICES.items():
        assert "{" + ",".join(values) + "}" in text, dest
    assert "--device {auto,cpu,cuda,cuda:N}" in text
    assert "training iterations per cell (paper: 11000)" in text and "Adam's learning rate (paper: 0.001)" in text
    assert "(paper: all)" in text  # --images


def test_image_aliases_resolve_to_keys():
    config = build_config("smoke", parse("--images", "cameraman,C.man,Lena512,PEPPERS256"))
    assert config.images == ("cman", "lena", "peppers")  # keys, each once


def test_unknown_image_suggests_the_nearest():
    with pytest.raises(BenchError, match=r"unknown image 'hous'; did you mean 'house'\? \(choose from barbara, boat, "):
        build_config("smoke", parse("--images", "hous"))


def test_unknown_profile():
    with pytest.raises(BenchError, match="unknown profile 'fast'; choose from paper, brief, quick"):
        build_config("fast", {})
    with pytest.raises(BenchError, match="unknown profile 'smok'; did you mean 'smoke'"):
        build_config("smok", {})


def test_reference_path_is_the_recipe_as_written():
    cpu = torch.device("cpu")
    reference = build_config("smoke", parse("--path", "reference"))
    assert resolve_precision(reference, cpu) == "fp32"
    recipe = cell_recipe(reference, cpu, out_channels=1)
    assert (recipe.precision, recipe.channels_last, recipe.fused_adam, recipe.tf32, recipe.cudnn_benchmark) == ("fp32", False, False, False, False)
    assert (recipe.compile, recipe.cuda_graphs) == (False, False)


def test_fast_path_resolves_every_auto_field_for_the_device():
    cpu = torch.device("cpu")
    fast = cell_recipe(PROFILES["smoke"], cpu, out_channels=1)
    assert fast.precision == ("bf16" if cpu_has_fast_bf16() else "fp32")
    assert fast.channels_last == (fast.precision != "fp32") and fast.fused_adam
    assert not fast.tf32 and not fast.cudnn_benchmark  # CUDA-only switches stay off on a CPU


def test_explicit_flags_override_the_paths_choice():
    cpu = torch.device("cpu")
    explicit = cell_recipe(build_config("smoke", parse("--precision", "fp32", "--channels-last", "--no-fused-adam")), cpu, 1)
    assert (explicit.precision, explicit.channels_last, explicit.fused_adam) == ("fp32", True, False)
    mixed = cell_recipe(build_config("smoke", parse("--path", "reference", "--precision", "bf16")), cpu, 1)
    assert (mixed.precision, mixed.channels_last) == ("bf16", False)  # the reference path keeps the rest as written


def test_unknown_path():
    with pytest.raises(BenchError, match="unknown path 'turbo'"):
        build_config("smoke", {"run.path": "turbo"})


def test_execution_path_is_read_off_the_resolved_recipe():
    cpu = torch.device("cpu")
    reference = cell_recipe(build_config("smoke", parse("--path", "reference")), cpu, 1).to_dict()
    assert execution_path(reference) == "reference"
    assert execution_path({**reference, "fused_adam": True}) == "fast"
    assert execution_path(cell_recipe(PROFILES["smoke"], cpu, 1).to_dict()) == "fast"  # fused Adam at least


def test_recipe_and_image_flags():
    config = build_config("smoke", parse("--recipe", "seed", "--image", "a.png", "--image", "b.jpg"))
    assert config.recipe_name == "seed" and config.recipe.net.layout == "seed"
    assert config.files == ("a.png", "b.jpg") and config.images == ()  # own files replace Table 1's images
    both = build_config("smoke", parse("--image", "a.png", "--images", "house"))
    assert both.files == ("a.png",) and both.images == ("house",)
    assert build_config("smoke", parse()).files == ()


def test_unknown_recipe_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        parse("--recipe", "mine")
    assert "invalid choice: 'mine'" in capsys.readouterr().err

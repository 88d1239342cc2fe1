"""Bad input tried for real (hypothesis): random command lines and random image files through
``bench.cli.main``. Whatever comes in, the answer is a correct run with complete records, a one-line
error with exit 2 and no record, or (a training that truly diverges) exit 1 with failed records;
never a traceback, never a record that is not whole.

Every run is tiny (at most 3 iterations, images at most 65 pixels a side).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from bench.cli import main
from bench.record import Record

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run_main(argv: list[str]) -> tuple[int, str]:
    """``main(argv)`` as a shell would see it: exit status and stderr (argparse exits via SystemExit)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


def check_outcome(code: int, err: str, results: Path) -> None:
    records = [Record.from_dict(json.loads(p.read_text())) for p in sorted(results.glob("*.json"))] if results.is_dir() else []
    lines = err.strip().splitlines()
    event(f"exit {code}")  # the spread of outcomes, in --hypothesis-show-statistics
    assert "Traceback" not in err
    assert not list(results.rglob("*.tmp")) if results.is_dir() else True
    if code == 0:
        assert records and all(r.status == "complete" and math.isfinite(r.psnr) for r in records)
        assert (results / "report.md").is_file()
    elif code == 1:  # real divergence under the drawn recipe: each cell has a record, complete or failed
        assert records and all(r.status in ("complete", "failed") for r in records)
        assert lines[-1].startswith("error: ") and "failed" in lines[-1]
    else:
        assert code == 2, err
        # argparse's own errors end with "<prog>: error: ..." after its usage; ours are a single line
        assert lines and (len(lines) == 1 and lines[0].startswith("error: ") or ": error: " in lines[-1]), err
        assert records == []


# Values a user might type: valid ones, edge ones and wrong ones, for the flags that shape a run.
FLAG_VALUES = {
    "--images": st.sampled_from(["house", "cman", "House,C.man", "nope", "", "house,house", ",", "HOUSE"]),
    "--seeds": st.sampled_from(["0", "1,2", "-1", "", "a", "0,0", "3.5", "99999999999"]),
    "--crop": st.sampled_from(["0", "32", "64", "33", "-1", "1000", "x"]),
    "--iterations": st.sampled_from(["1", "2", "3", "0", "-2", "two", "1e3"]),
    "--mask": st.sampled_from(["bernoulli", "paper", "random", ""]),
    "--keep": st.sampled_from(["0.5", "0.99", "1e-9", "1", "0", "1.5", "nan", "inf", "-0.2", "half"]),
    "--lr": st.sampled_from(["0.01", "0", "-1", "nan", "inf", "1e10", "1e40"]),
    "--precision": st.sampled_from(["auto", "fp32", "bf16", "fp16", "fp64"]),
    "--on-divergence": st.sampled_from(["backtrack", "fail", "ignore"]),
    "--checkpoint-every": st.sampled_from(["0", "1", "-1", "x"]),
    "--backtrack-every": st.sampled_from(["1", "100", "0", "-3"]),
    "--eval-every": st.sampled_from(["1", "0", "-1"]),
    "--ema-decay": st.sampled_from(["0", "0.99", "1", "1.5", "nan"]),
    "--input-noise-std": st.sampled_from(["0", "0.03", "-1", "inf"]),
    "--channels-down": st.sampled_from(["8", "8,8,8,8,8", "8,8", "0", "-8", "a,b"]),
    "--scales": st.sampled_from(["5", "1", "0", "9"]),
    "--upsample-mode": st.sampled_from(["bilinear", "nearest", "area"]),
    "--padding": st.sampled_from(["reflection", "zero", "circular"]),
    "--device": st.sampled_from(["cpu", "cuda", "tpu", "cuda:7"]),
    "--executor": st.sampled_from(["inline", "slurm", "local-ish"]),  # (local starts subprocesses: tested elsewhere)
    "--jobs": st.sampled_from(["1", "0", "-1", "x"]),
    "--slurm-time": st.sampled_from(["60", "0", "x"]),
    "--slurm-param": st.sampled_from(["account=lab", "nokey", "=x"]),
    "--bogus": st.just("1"),
}


@st.composite
def command_lines(draw) -> list[str]:
    flags = draw(st.lists(st.sampled_from(sorted(FLAG_VALUES)), max_size=4, unique=True))
    argv = []
    for flag in flags:
        argv += [flag, draw(FLAG_VALUES[flag])]
    return argv


@SETTINGS
@given(argv=command_lines())
def test_any_command_line_gives_a_run_or_a_clean_error(argv, data_dir):
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results"
        base = ["run", "--profile", "smoke", "--images", "house", "--iterations", "2", "--no-progress",
                "--data-dir", str(data_dir), "--results-dir", str(results)]
        iterations = argv[argv.index("--iterations") + 1] if "--iterations" in argv else "2"
        if iterations.isdigit() and int(iterations) > 3:
            return  # keep each example tiny
        with mock.patch.dict(os.environ, {"PATH": tmp}):  # no srun or sbatch here, even on a cluster's login node
            code, err = run_main([*base, *argv])
        check_outcome(code, err, results)


# Valid values only: every combination of these must train and write its record. A tiny network, 1 or 2
# steps, few examples: what is asserted is that a valid command line runs, not what it learns.
VALID_VALUES = {
    "--images": st.sampled_from(["house", "cman", "C.man", "PEPPERS"]),
    "--seeds": st.sampled_from(["0", "3"]),
    "--iterations": st.sampled_from(["1", "2"]),
    "--mask": st.sampled_from(["bernoulli", "paper"]),
    "--keep": st.sampled_from(["0.5", "0.3"]),
    "--precision": st.sampled_from(["fp32", "auto"]),
    "--on-divergence": st.sampled_from(["backtrack", "fail"]),
    "--upsample-mode": st.sampled_from(["bilinear", "bicubic", "nearest"]),
    "--padding": st.sampled_from(["reflection", "zeros"]),
    "--negative-slope": st.sampled_from(["0.2", "0.01"]),
    "--layout": st.sampled_from(["paper", "seed"]),
    "--ema-decay": st.sampled_from(["0", "0.9"]),
}
IMAGE_KEYS = {"house": "house", "cman": "cman", "C.man": "cman", "PEPPERS": "peppers"}


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.fixed_dictionaries({flag: strategy for flag, strategy in VALID_VALUES.items()}))
def test_a_valid_command_line_runs_and_writes_its_record(values, data_dir):
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results"
        argv = ["run", "--profile", "smoke", "--no-progress", "--device", "cpu", "--channels-down", "8",
                "--channels-up", "8", "--data-dir", str(data_dir), "--results-dir", str(results)]
        for flag, value in values.items():
            argv += [flag, value]
        code, err = run_main(argv)
        assert code == 0, (argv, err)
        check_outcome(code, err, results)
        image, seed = IMAGE_KEYS[values["--images"]], int(values["--seeds"])
        record = json.loads((results / f"{image}_seed{seed}.json").read_text())
        assert [p.name for p in results.glob("*.json")] == [f"{image}_seed{seed}.json"]
        config = record["config"]
        assert (record["image"], record["seed"], config["mask"]) == (image, seed, values["--mask"])
        assert config["recipe"]["iterations"] == int(values["--iterations"])
        assert config["recipe"]["ema_decay"] == float(values["--ema-decay"])
        net = config["recipe"]["net"]
        assert (net["upsample_mode"], net["padding"], net["layout"]) == (
            values["--upsample-mode"], values["--padding"], values["--layout"])
        assert net["negative_slope"] == float(values["--negative-slope"]) and net["channels_down"] == 8
        assert (record.get("psnr_ema") is None) == (values["--ema-decay"] == "0")  # None is left out
        assert record["curve"][-1]["iteration"] == int(values["--iterations"]) - 1


# One bad value on an otherwise valid command line: exit 2, this one line on stderr (argparse's, or
# ours), and nothing written.
USAGE = "python -m bench run: error: argument "
INVALID = [
    (["--images", "nope"], "error: unknown image 'nope'; choose from barbara, boat, house, lena, peppers, cman, couple, "
                           "fingerprint, hill, man, montage"),
    (["--images", ","], USAGE + "--images: empty list ',' (see --help)"),
    (["--seeds", "-1"], USAGE + "--seeds: expected integers or ranges like 0-4, got '-1' (see --help)"),
    (["--crop", "33"], "error: house: image size 33x33 does not fit a 5-scale network: height and width must be "
                       "multiples of 32 and at least 64 (e.g. 256x256, 512x512); use --crop to take a centre crop"),
    (["--crop", "1000"], "error: crop 1000 is larger than the image (256x256)"),
    (["--iterations", "0"], "error: iterations must be positive, got 0"),
    (["--iterations", "1e3"], USAGE + "--iterations: invalid int value: '1e3' (see --help)"),
    (["--mask", "random"], USAGE + "--mask: invalid choice: 'random'; choose from bernoulli, paper (see --help)"),
    (["--keep", "1e-9"], "error: house seed 0: the mask keeps no pixel of the 64x64 image; there is nothing to restore"),
    (["--keep", "nan"], "error: keep must be in (0, 1) (1 keeps every pixel: nothing to restore), got nan"),
    (["--lr", "inf"], "error: lr must be finite"),
    (["--lr", "1e40"], "error: lr must be in (0, 1e30], got 1e+40"),
    (["--precision", "fp64"], USAGE + "--precision: invalid choice: 'fp64'; did you mean 'fp16'? (choose from auto, "
                                      "fp32, bf16, fp16) (see --help)"),
    (["--checkpoint-every", "-1"], "error: checkpoint_every must be >= 0 (0: only on a stop signal), got -1"),
    (["--eval-every", "0"], "error: eval_every must be >= 1, got 0"),
    (["--ema-decay", "1"], "error: ema_decay must be in [0, 1), got 1.0"),
    (["--channels-down", "0"], "error: channels_down must be >= 1, got 0"),
    (["--scales", "9"], "error: house: image size 64x64 does not fit a 9-scale network: height and width must be "
                        "multiples of 512 and at least 1024 (e.g. 256x256, 512x512); use --crop to take a centre crop"),
    (["--padding", "zero"], USAGE + "--padding: invalid choice: 'zero'; did you mean 'zeros'? (choose from reflection, "
                                    "zeros) (see --help)"),
    (["--device", "tpu"], "error: unknown device 'tpu'; use auto, cpu, cuda or cuda:N"),
    (["--jobs", "0"], "error: --jobs takes a positive number, with --executor local"),
    (["--slurm-time", "60"], "error: --slurm-partition, --slurm-time and --slurm-param need --executor slurm"),
    (["--bogus", "1"], "python -m bench: error: unrecognized arguments: --bogus 1 (see --help)"),
]


@pytest.mark.parametrize(("bad", "message"), INVALID, ids=[" ".join(bad) for bad, _ in INVALID])
def test_an_invalid_value_exits_2_with_its_one_line_message(bad, message, data_dir, tmp_path):
    results = tmp_path / "results"
    code, err = run_main(["run", "--profile", "smoke", "--images", "house", "--iterations", "1", "--no-progress",
                          "--data-dir", str(data_dir), "--results-dir", str(results), *bad])
    assert (code, err) == (2, message + "\n")
    assert not results.exists() or not any(results.rglob("*.json"))


SIDES = st.sampled_from([1, 2, 3, 17, 31, 32, 33, 64, 64, 64, 65, 96])  # 64 and 96 fit the network
MODES = st.sampled_from(["L", "LA", "RGB", "RGBA", "P", "I;16"])


def make_image(mode: str, height: int, width: int, seed: int, constant: bool) -> Image.Image:
    rng = np.random.default_rng(seed)
    gray = np.full((height, width), 128, np.uint8) if constant else rng.integers(0, 256, (height, width), dtype=np.uint8)
    if mode == "I;16":
        return Image.fromarray(gray.astype(np.uint16) * 257)
    if mode in ("L", "LA"):
        return Image.fromarray(gray).convert(mode)
    rgb = np.stack([gray, np.roll(gray, 1, axis=1), 255 - gray], axis=2)
    image = Image.fromarray(rgb)
    return image.quantize(64) if mode == "P" else image.convert(mode)


# Mostly real images; the rest files named .png that are not (or no longer) images.
FILE_KINDS = st.sampled_from(["image"] * 6 + ["text", "empty", "truncated"])


@SETTINGS
@given(kind=FILE_KINDS, mode=MODES, height=SIDES, width=SIDES, seed=st.integers(0, 2**16), constant=st.booleans(),
       crop=st.sampled_from(["0", "64"]))
def test_any_image_file_gives_a_run_or_a_clean_error(kind, mode, height, width, seed, constant, crop):
    with tempfile.TemporaryDirectory() as tmp:
        path, results = Path(tmp) / "picture.png", Path(tmp) / "results"
        if kind == "image":
            make_image(mode, height, width, seed, constant).save(path)
        elif kind == "truncated":
            buffer = io.BytesIO()
            make_image(mode, height, width, seed, constant).save(buffer, format="PNG")
            path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        else:
            path.write_bytes(b"" if kind == "empty" else b"P2 this is a text file, not a PNG\n")
        code, err = run_main(["run", "--profile", "smoke", "--image", str(path), "--crop", crop, "--iterations", "2",
                              "--no-progress", "--results-dir", str(results)])
        check_outcome(code, err, results)
        trained = (int(crop), int(crop)) if crop != "0" else (height, width)
        # the paper's 5-scale network takes sides that are multiples of 32 and at least 64
        fits = min(height, width) >= int(crop) and all(side % 32 == 0 and side >= 64 for side in trained)
        if kind == "image" and fits and not constant:
            assert code == 0, err  # a readable, varied image of a size the network takes must run
            (record,) = [Record.from_dict(json.loads(p.read_text())) for p in results.glob("*.json")]
            assert record.size == trained
        elif kind != "image":
            assert code == 2 and "not a readable image" in err

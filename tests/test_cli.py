"""The command line's answers to bad input: one line, non-zero exit, no traceback, no record."""

import argparse
import json
import os
import subprocess
import sys

import pytest

from bench.cli import build_parser, main
from bench.commands.common import config_overrides
from bench.config import build_config
from bench.flags import CHOICES
from bench.progress import human_duration
from tests.conftest import REPO_ROOT


@pytest.fixture
def results(tmp_path):
    return tmp_path / "results"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--images", "parrot"], "unknown image 'parrot'"),
        (["--images", "hous"], "unknown image 'hous'; did you mean 'house'? (choose from barbara, boat, house,"),
        (["--iterations", "0"], "iterations must be positive"),
        (["--crop", "80"], "must be multiples of 32"),
        (["--crop", "1024"], "larger than the image"),
        (["--keep", "1e-9"], "house seed 0: the mask keeps no pixel of the 64x64 image; there is nothing to restore"),
        (["--image", "/nonexistent/photo.png"], "image file /nonexistent/photo.png does not exist"),
        (["--image", "x.png", "--mask", "paper"], "--mask paper needs the published masks"),
        (["--with", "no-equals-sign"], "--with expects LABEL=DIR"),
        (["--with", "seed=/nonexistent/run"], "results directory /nonexistent/run does not exist"),
        (["--cells-per-gpu", "0"], "cells_per_gpu must be >= 1, got 0"),
        (["--cells-per-gpu", "2", "--channels-last"], "house: batched cells run fp32 or bf16, contiguous, eager or as "
                                                      "CUDA graphs; not with channels_last"),
        (["--cells-per-gpu", "2", "--precision", "fp16"], "not with fp16"),
        (["--cells-per-gpu", "2", "--executor", "local"], "--cells-per-gpu batches the cells of one process"),
    ],
)
def test_user_errors_are_one_line_and_write_nothing(argv, message, results, data_dir, capsys):
    code = main(["run", "--profile", "smoke", "--results-dir", str(results), "--data-dir", str(data_dir), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not results.exists() or not any(results.iterdir())


@pytest.mark.parametrize(
    "device, message",
    [
        ("tpu", "unknown device 'tpu'; use auto, cpu, cuda or cuda:N"),
        ("meta", "device type 'meta' is not supported; use cpu or cuda"),
        pytest.param("cuda:0", "device 'cuda:0' asked for, but this torch build sees no CUDA device",
                     marks=pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="cuda:0 is a device here")),
    ],
)
def test_an_unusable_device_is_refused_in_one_whole_line(device, message, results, data_dir, capsys):
    code = main(["run", "--profile", "smoke", "--results-dir", str(results), "--data-dir", str(data_dir), "--device", device])
    assert (code, capsys.readouterr().err) == (2, f"error: {message}\n")
    assert not results.exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CUDA switches are valid here")
@pytest.mark.parametrize("flags", [["--cuda-graphs"], ["--tf32", "--cudnn-benchmark"]])
def test_cuda_switches_on_a_cpu_are_refused_before_training(flags, results, data_dir, capsys):
    code = main(["run", "--profile", "smoke", "--device", "cpu", "--data-dir", str(data_dir), "--results-dir", str(results), *flags])
    err = capsys.readouterr().err
    assert code == 2 and "a CUDA device" in err and err.count("\n") == 1
    assert not results.exists()


def test_missing_data_dir(results, tmp_path, capsys):
    code = main(["run", "--profile", "smoke", "--results-dir", str(results), "--data-dir", str(tmp_path / "none")])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_corrupt_image_file_stops_before_training(results, tmp_path, data_dir, capsys):
    bad = tmp_path / "data"
    bad.mkdir()
    for stem in ("house", "Cameraman256", "peppers256"):
        for kind in ("GT", "deep_prior", "papyan"):
            name = f"{stem}_{kind}.png"
            (bad / name).write_bytes((data_dir / name).read_bytes())
    (bad / "peppers256_GT.png").write_bytes(b"\x89PNG garbage")
    code = main(["run", "--profile", "smoke", "--results-dir", str(results), "--data-dir", str(bad)])
    assert code == 2 and "peppers256_GT.png: sha256" in capsys.readouterr().err
    assert not results.exists()  # checked for every cell before the first one trains


def test_report_and_check_need_a_run(capsys):
    assert main(["report"]) == 2
    assert "--profile NAME or --results-dir" in capsys.readouterr().err


def test_process_exit_code_and_no_traceback(results):
    """For real, in a subprocess: what a user sees in a terminal."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--profile", "smoke", "--images", "house,nope", "--results-dir", str(results)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: unknown image 'nope'; choose from barbara, boat, house, lena, peppers, cman, couple, fingerprint, hill, man, montage"
    assert "Traceback" not in proc.stderr


def test_dip_runs_dir_moves_the_default_results_directory_out_of_the_checkout(tmp_path, data_dir):
    """A campaign's records and checkpoints outside the checkout: $DIP_RUNS_DIR/<profile> by default."""
    runs = tmp_path / "dip-runs"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--profile", "smoke", "--images", "house", "--iterations", "2",
         "--data-dir", str(data_dir), "--no-progress"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "DIP_RUNS_DIR": str(runs)},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((runs / "smoke" / "house_seed0.json").read_text())["status"] == "complete"


def test_unknown_subcommand_and_flag_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--profile", "smoke", "--iterations", "ten"])
    assert exit_info.value.code == 2
    assert "invalid int value: 'ten'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--profile", "smoke", "--bogus", "5"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "unrecognized arguments: --bogus 5" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as exit_info:  # a prefix of --results-dir is not taken for it
        main(["report", "--results", "somewhere"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "unrecognized arguments: --results somewhere" in err


def subcommands() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_option_of_every_subcommand_has_help():
    missing = [f"{name} {a.option_strings or a.dest}" for name, sub in subcommands().items()
               for a in sub._actions if not (a.help and a.help.strip()) or a.help == argparse.SUPPRESS]
    assert not missing, f"options without help: {missing}"
    for name, sub in subcommands().items():
        sub.format_help()  # a stray % in a help string fails only here


@pytest.mark.parametrize("command", ["run", "ablate", "estimate"])
def test_fixed_set_fields_show_their_values(command):
    text = " ".join(subcommands()[command].format_help().split())
    for values in CHOICES.values():
        assert "{" + ",".join(values) + "}" in text
    assert "--device {auto,cpu,cuda,cuda:N}" in text and "--profile {paper,brief,quick,smoke,fingerprint}" in text


def test_image_aliases_on_the_command_line():
    args = build_parser().parse_args(["run", "--profile", "smoke", "--images", "cameraman,lenna"])
    assert build_config(args.profile, config_overrides(args)).images == ("cman", "lena")


def test_a_mistyped_profile_gets_a_suggestion(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--profile", "smok"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "invalid choice: 'smok'; did you mean 'smoke'? (choose from paper, brief, quick, smoke, fingerprint)" in err


def test_human_duration():
    assert human_duration(42) == "42 s"
    assert human_duration(660) == "11 min"
    assert human_duration(3 * 3600) == "3.0 h"


def test_cpu_machine_runs_brief_and_says_what_paper_would_cost(monkeypatch, capsys):
    import bench.commands.run

    monkeypatch.setattr(bench.commands.run.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bench.commands.run, "measure_ms_per_iter", lambda config: {(256, 256): 250.0, (512, 512): 1000.0})
    args = build_parser().parse_args(["run"])
    assert bench.commands.run.choose_profile(args) == "brief"
    line = capsys.readouterr().out.strip()
    # 4 images at 256 and 7 at 512: (4 * 0.25 + 7 * 1.0) s x 11000 iterations = 88000 s
    assert line.count("\n") == 0 and "'python -m bench run --profile paper'" in line and "about 24.4 h" in line


def test_speed_size_the_network_cannot_take(capsys):
    assert main(["speed", "--size", "100"]) == 2
    assert "multiples of 32" in capsys.readouterr().err


def test_with_a_run_of_another_budget_is_refused_before_training(tmp_path, data_dir, capsys):
    other = tmp_path / "other"
    assert main(["run", "--profile", "smoke", "--images", "house", "--iterations", "3", "--results-dir", str(other),
                 "--data-dir", str(data_dir), "--no-progress"]) == 0
    results = tmp_path / "results"
    code = main(["run", "--profile", "smoke", "--images", "house", "--iterations", "4", "--results-dir", str(results),
                 "--data-dir", str(data_dir), "--with", f"short={other}"])
    err = capsys.readouterr().err
    assert code == 2 and "run 'short' cannot be a column of this report: it differs in recipe.iterations" in err
    assert not results.exists()


@pytest.mark.parametrize("policy", ["fail", "backtrack"])
def test_a_diverging_run_exits_1_with_failed_records_and_a_marked_report(policy, tmp_path, data_dir, capsys):
    """lr 1e10 diverges for real at the first step: 'fail' stops each image at once, 'backtrack' after
    restoring the last good state 10 times without reaching the next check. Either way every image is tried."""
    results = tmp_path / "results"
    code = main(["run", "--profile", "smoke", "--images", "house,cman", "--iterations", "12", "--lr", "1e10",
                 "--on-divergence", policy, "--results-dir", str(results), "--data-dir", str(data_dir), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().splitlines()[-1] == (f"error: 2 cells failed (House seed 0, C.man seed 0): training diverged; "
                                            f"reasons in their records in {results}")
    for key in ("house", "cman"):
        record = json.loads((results / f"{key}_seed0.json").read_text())
        assert record["status"] == "failed" and record["on_divergence"] == policy
        assert "non-finite loss" in record["reason"] and "psnr" not in record
    assert not (results / "report.md").exists()  # nothing complete to report
    assert main(["report", "--results-dir", str(results)]) == 2  # and `report` says so instead of a table of nothing
    assert "no complete records" in capsys.readouterr().err

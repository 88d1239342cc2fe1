"""Methods as plug-ins (bench/methods): the registry and Python paths, their fields as flags and in the
records, the decoder-only prior (deepinv's ConvDecoder, an optional extra), a user's method from a file
outside the repository, and the authors' network through the interface giving the built-in records."""

import dataclasses
import json
import math
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.config import build_config
from bench.errors import BenchError
from bench.methods import configured_method, load_method
from bench.methods.convdecoder import ConvDecoderMethod
from bench.methods.deepinv_import import import_deepinv
from bench.paths import run_name
from bench.records import load_records, read_record
from bench.runner import run
from dip.inputs import NetInput
from dip.recipe import RestoreConfig
from dip.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "examples" / "authors_method.py"
TINY = ["--profile", "smoke", "--images", "house", "--crop", "64", "--iterations", "6", "--eval-every", "3",
        "--no-progress"]


def has_deepinv() -> bool:
    try:
        import_deepinv()
    except ValueError:
        return False
    return True


needs_deepinv = pytest.mark.skipif(not has_deepinv(), reason="the methods extra (deepinv) is not installed: make methods")


# --- the registry and Python paths ----------------------------------------------------------------

def test_registered_methods_and_one_line_errors_for_the_rest(tmp_path):
    assert load_method("dip-bench").method.name == "dip-bench" and load_method("dip-bench").source is None
    assert load_method("convdecoder").method == ConvDecoderMethod()
    with pytest.raises(BenchError, match="unknown method 'convdecoda'.*did you mean 'convdecoder'"):
        load_method("convdecoda")
    with pytest.raises(BenchError, match="no Python file"):
        load_method(str(tmp_path / "missing.py"))
    (tmp_path / "not_a_method.py").write_text("def make_method():\n    return 42\n")
    with pytest.raises(BenchError, match="did not give a bench.methods.Method dataclass instance"):
        load_method(str(tmp_path / "not_a_method.py"))
    (tmp_path / "clash.py").write_text(textwrap.dedent("""\
        from dataclasses import dataclass
        from bench.methods import Method

        @dataclass(frozen=True)
        class Clash(Method):
            name = "convdecoder"
        make_method = Clash
        """))
    with pytest.raises(BenchError, match="is a registered method's"):
        load_method(str(tmp_path / "clash.py"))


def test_a_method_field_named_like_another_flag_is_refused(tmp_path, capsys):
    (tmp_path / "lr_method.py").write_text(textwrap.dedent("""\
        from dataclasses import dataclass
        from bench.methods import Method

        @dataclass(frozen=True)
        class WithLr(Method):
            name = "with-lr"
            lr: float = 0.1
        make_method = WithLr
        """))
    assert main(["run", "--method", str(tmp_path / "lr_method.py"), "--profile", "smoke"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "its field 'lr' has the name of another flag (--lr)" in err


def test_method_fields_are_flags_of_run_and_fields_of_the_config():
    config = build_config("quick", {"run.method": "convdecoder", "method.channels": 16, "method.head": "sigmoid"})
    assert config.loaded_method().method == ConvDecoderMethod(channels=16, head="sigmoid")
    with pytest.raises(BenchError, match="method 'convdecoder': unknown head 'tanh'"):
        build_config("quick", {"run.method": "convdecoder", "method.head": "tanh"})
    with pytest.raises(BenchError, match="--scales: the built-in network's field, not method 'convdecoder'"):
        build_config("quick", {"run.method": "convdecoder", "net.scales": 4})
    assert run_name("quick", "paper", "convdecoder") == "quick-convdecoder" and run_name("quick") == "quick"


def test_help_of_a_method_lists_its_fields_and_not_the_built_in_network(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--method", "convdecoder", "--help"])
    text = capsys.readouterr().out
    assert "method fields (convdecoder)" in text and "--in-size" in text and "--z-distribution" in text
    assert "--scales" not in text and "--channels-down" not in text
    with pytest.raises(SystemExit) as refused:  # the built-in network's flag: not one of this method's
        main(["run", "--method", "convdecoder", "--scales", "4"])
    assert refused.value.code == 2 and "unrecognized arguments: --scales 4" in capsys.readouterr().err


# --- the loop's inputs -----------------------------------------------------------------------------

def test_a_method_sets_the_shape_and_distribution_of_z():
    image, mask = torch.rand(16, 16).numpy(), torch.ones(16, 16).numpy()
    spec = NetInput(8, 4, 4, "normal", 1.0)
    trainer = Trainer(image, mask, RestoreConfig(), lambda: torch.nn.Conv2d(8, 1, 1), seed=3, device=torch.device("cpu"),
                      net_input=spec)
    assert trainer.z.shape == (1, 8, 4, 4) and trainer.noise_buffer.shape == (1, 8, 4, 4)
    assert trainer.z.min() < 0  # N(0, 1), not U[0, 1)
    paper = Trainer(image, mask, RestoreConfig(), lambda: torch.nn.Conv2d(32, 1, 1), seed=3, device=torch.device("cpu"))
    assert paper.z.shape == (1, 32, 16, 16) and 0 <= paper.z.min() and paper.z.max() < 0.1


def test_convdecoder_depth_doubles_the_resolution_per_layer():
    method = ConvDecoderMethod()
    assert [method.depth(s, s) for s in (64, 128, 256, 512)] == [5, 6, 7, 8]
    assert ConvDecoderMethod(layers=3).depth(512, 512) == 3 and ConvDecoderMethod(in_size=8).depth(256, 256) == 6
    with pytest.raises(ValueError, match="too small"):
        method.check(RestoreConfig(), 6, 64)


def test_a_missing_extra_is_one_line_naming_the_install_command(tmp_path, capsys, monkeypatch, data_dir):
    monkeypatch.setitem(sys.modules, "deepinv", None)  # as if not installed: import deepinv raises
    code = main(["run", "--method", "convdecoder", *TINY, "--data-dir", str(data_dir), "--results-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert 'needs deepinv, an optional extra: make methods (pip install -e ".[methods]"' in err
    assert not (tmp_path / "r").exists()  # refused before anything is written


@needs_deepinv
def test_convdecoder_trains_in_the_loop_and_its_fields_are_in_the_record(tmp_path, data_dir, capsys):
    results = tmp_path / "convdecoder"
    code = main(["run", "--method", "convdecoder", "--channels", "8", *TINY, "--data-dir", str(data_dir),
                 "--results-dir", str(results)])
    assert code == 0, capsys.readouterr().err
    record = read_record(results / "house_seed0.json")
    method = record.config.method
    assert method.name == "convdecoder" and method.source is None
    assert method.fields == {"channels": 8, "in_size": 4, "layers": 0, "head": "linear", "z_distribution": "normal",
                             "z_scale": 1.0}
    assert json.loads((results / "house_seed0.json").read_text())["config"]["method"]["fields"]["channels"] == 8
    assert math.isfinite(record.psnr) and record.gflop_per_iter > 0 and [p.iteration for p in record.curve] == [0, 3, 5]
    report = (results / "report.md").read_text()
    assert "method `convdecoder`" in report and "- Method: convdecoder (channels 8, in_size 4" in report
    assert "protocol also differs from the paper's in: method convdecoder" in report


@needs_deepinv
def test_convdecoder_is_a_column_beside_the_built_in_method(tmp_path, data_dir, capsys):
    builtin = tmp_path / "dip-bench"
    assert main(["run", *TINY, "--data-dir", str(data_dir), "--results-dir", str(builtin)]) == 0
    assert main(["run", "--method", "convdecoder", "--channels", "8", *TINY, "--data-dir", str(data_dir),
                 "--results-dir", str(tmp_path / "cd"), "--with", f"dip-bench={builtin}"]) == 0
    report = (tmp_path / "cd" / "report.md").read_text()
    assert "dip-bench (method dip-bench)" in report  # the column, titled with its method: two methods here
    assert "- Method: convdecoder" in report
    out = tmp_path / "compare.md"
    assert main(["compare", "--results-dir", str(tmp_path / "cd"), "--against", str(builtin),
                 "--labels", "convdecoder,dip-bench", "--out", str(out)]) == 0
    assert "- convdecoder: method convdecoder;" in out.read_text() and "- dip-bench: method dip-bench;" in out.read_text()


# --- a user's method, and the authors' network through the interface ------------------------------

USER_METHOD = '''\
"""A user's method outside dip-bench: a tiny decoder from an 8x8 code."""
from dataclasses import dataclass

from bench.methods import Method
from dip.inputs import NetInput


@dataclass(frozen=True)
class Tiny(Method):
    name = "tiny"
    width: int = 4

    def net_input(self, recipe, height, width):
        return NetInput(self.width, 8, 8, "uniform", 1.0)

    def build(self, recipe, channels, height, width):
        from torch import nn

        return nn.Sequential(nn.Upsample(size=(height, width)), nn.Conv2d(self.width, channels, 3, padding=1),
                             nn.Sigmoid())


def make_method():
    return Tiny()
'''


def test_a_user_method_from_a_file_outside_the_repository_runs(tmp_path, data_dir, capsys):
    path = tmp_path / "outside" / "tiny_method.py"
    path.parent.mkdir()
    path.write_text(USER_METHOD)
    assert not path.resolve().is_relative_to(REPO)
    results = tmp_path / "results"
    code = main(["run", "--method", f"{path}:make_method", "--width", "3", *TINY, "--data-dir", str(data_dir),
                 "--results-dir", str(results)])
    assert code == 0, capsys.readouterr().err
    (record,) = load_records(results)
    assert record.config.method.name == "tiny" and record.config.method.fields == {"width": 3}
    assert record.config.method.source == f"{path.resolve()}:make_method"
    assert record.psnr > 0


def test_a_methods_run_and_report_are_named_by_the_method_not_the_built_in_ones(tmp_path, data_dir, monkeypatch, capsys):
    """Without --results-dir a method's run goes to runs/<profile>-<name>/ and --publish writes
    reports/<profile>-<name>.md: the built-in method's runs/smoke/ and reports/smoke.md are not touched."""
    import bench.commands.run
    import bench.paths

    path = tmp_path / "tiny_method.py"
    path.write_text(USER_METHOD)
    monkeypatch.setattr(bench.commands.run, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(bench.paths, "REPORTS_DIR", tmp_path / "reports")
    code = main(["run", "--method", str(path), *TINY, "--data-dir", str(data_dir), "--publish"])
    assert code == 0, capsys.readouterr().err
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["smoke-tiny"]
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["smoke-tiny", "smoke-tiny.md"]
    assert load_records(tmp_path / "runs" / "smoke-tiny")[0].config.method.name == "tiny"


def test_the_docs_show_the_example_method_as_it_is():
    page = (REPO / "docs" / "methods.md").read_text()
    assert EXAMPLE.read_text() in page  # the page's code is the file the next test runs


def test_the_authors_network_through_the_interface_gives_the_built_in_records(tmp_path, data_dir):
    """The interface adds nothing of its own: the same network at the same seed, through --method, gives the
    built-in method's records (on the reference path: fp32, eager, plain Adam)."""
    shared = {"run.images": ("house",), "run.crop": 64, "run.path": "reference", "recipe.iterations": 8,
              "recipe.eval_every": 2}
    example = tmp_path / "authors_method.py"
    shutil.copy(EXAMPLE, example)  # from outside the repository, as a user would
    (builtin,) = run(build_config("smoke", shared), data_dir, tmp_path / "builtin", progress=False).records
    (authors,) = run(build_config("smoke", {**shared, "run.method": str(example)}), data_dir, tmp_path / "authors",
                     progress=False).records
    assert authors.config.method.name == "authors-skip" and builtin.config.method.is_builtin
    assert authors.config == dataclasses.replace(builtin.config, method=authors.config.method)
    assert authors.mask_sha256 == builtin.mask_sha256
    assert (authors.psnr, authors.psnr_pasted, authors.psnr_ema, authors.final_loss) == \
        (builtin.psnr, builtin.psnr_pasted, builtin.psnr_ema, builtin.final_loss)
    assert authors.curve == builtin.curve and authors.backtracks == builtin.backtracks
    assert configured_method(str(example)).method.name == "authors-skip"

"""The runner end to end on real images: records, resume, determinism, divergence handling."""

import dataclasses
import json

import pytest

import bench.train
from bench.analysis.report import render
from bench.config import build_config
from bench.estimate import estimate_seconds, measure_ms_per_iter
from bench.errors import BenchError
from bench.record import MethodSpec, Record
from bench.records import load_records, read_record, write_record
from bench.runner import run
from dip.nets.config import SkipNetConfig
from dip.restore import DivergenceError
from dip.seeding import derived_seed

SMALL_NET = SkipNetConfig(channels_down=8, channels_up=8)
# "run.device": "cpu" where a test compares bit for bit or sizes a tolerance on CPU numbers: on a CUDA host
# "auto" would train on the GPU.
TINY = {"run.device": "cpu", "run.images": ("house",), "run.crop": 64, "recipe.iterations": 12, "recipe.eval_every": 4}


def test_record_has_results_timing_config_and_provenance(tmp_path, data_dir):
    config = build_config("smoke", TINY)
    (record,) = run(config, data_dir, tmp_path, progress=False).records
    assert record == Record.from_dict(json.loads((tmp_path / "house_seed0.json").read_text()))
    assert record.status == "complete" and record.image == "house" and record.seed == 0
    assert record.size == (64, 64) and record.full_size == (256, 256)
    assert record.psnr > record.psnr_masked_input
    assert [p.iteration for p in record.curve] == [0, 4, 8, 11]
    assert record.timing.timed_iterations + record.timing.warmup_iterations == 12
    assert record.gflop_per_iter == pytest.approx(7.182319616)
    assert record.gflops_achieved > 0 and record.peak_memory_bytes > 0
    assert abs(record.keep_fraction - 0.5) < 0.05 and len(record.mask_sha256) == 64
    ref = record.reference_psnr
    assert ref.interp_linear > record.psnr_masked_input + 10
    assert ref.deep_prior_published > ref.interp_nearest
    assert record.config.recipe.iterations == 12 and record.config.recipe.precision in ("fp32", "bf16")
    prov = record.provenance
    assert None not in (prov.commit, prov.dirty, prov.torch, prov.device_name, prov.cpu_model, prov.torch_threads)
    assert record.config.method == MethodSpec("dip-bench", {})  # schema 2: the method, in every record


def test_rerun_skips_complete_records_and_reruns_changed_ones(tmp_path, data_dir, capsys):
    config = build_config("smoke", TINY)
    run(config, data_dir, tmp_path, progress=False)
    path = tmp_path / "house_seed0.json"
    first = path.stat().st_mtime_ns
    run(config, data_dir, tmp_path, progress=False)
    assert path.stat().st_mtime_ns == first
    assert "1 of 1 cells already have complete records" in capsys.readouterr().out
    changed = build_config("smoke", {**TINY, "recipe.iterations": 8})
    run(changed, data_dir, tmp_path, progress=False)
    assert read_record(path).config.recipe.iterations == 8


def test_a_record_resolved_on_another_machine_counts_as_done_unless_the_run_sets_the_execution(tmp_path, data_dir, capsys):
    """A campaign whose sessions land on different CPU kinds: a cell finished where bf16 is fast (its record
    says bf16, channels_last) is not trained again and replaced where the fast path runs fp32, as long as
    the run leaves the execution to the machine; a run that sets an execution flag itself re-runs it."""
    on_this_machine = {k: v for k, v in TINY.items() if k != "run.device"}  # device auto: no GPU on CI
    run(build_config("smoke", on_this_machine), data_dir, tmp_path, progress=False)
    path = tmp_path / "house_seed0.json"
    record = read_record(path)
    other_kind = "bf16" if record.config.recipe.precision == "fp32" else "fp32"
    elsewhere = dataclasses.replace(record, config=dataclasses.replace(record.config, recipe=dataclasses.replace(
        record.config.recipe, precision=other_kind, channels_last=other_kind == "bf16", winograd=False,
        matmul_1x1=False, keep_heap=False)))
    write_record(path, elsewhere)
    capsys.readouterr()
    run(build_config("smoke", on_this_machine), data_dir, tmp_path, progress=False)
    assert "1 of 1 cells already have complete records" in capsys.readouterr().out
    assert read_record(path) == elsewhere
    run(build_config("smoke", {**on_this_machine, "run.precision": record.config.recipe.precision}), data_dir,
        tmp_path, progress=False)
    assert read_record(path).config.recipe.precision == record.config.recipe.precision


def test_half_written_record_stops_the_run_in_one_line(tmp_path, data_dir):
    """Never taken as done, nor overwritten: a file that is not a record is the user's to look at (records are
    written atomically, so dip-bench itself never leaves one half-written)."""
    (tmp_path / "house_seed0.json").write_text('{"schema": 1, "status": "comp')
    with pytest.raises(BenchError, match="house_seed0.json is not valid JSON"):
        run(build_config("smoke", TINY), data_dir, tmp_path, progress=False)
    assert (tmp_path / "house_seed0.json").read_text() == '{"schema": 1, "status": "comp'


def test_a_failed_cell_gets_a_failed_record_and_the_run_goes_on(tmp_path, data_dir, monkeypatch):
    real = bench.train.restore

    def diverge_on_house(image, *args, **kwargs):
        if kwargs["seed"] == derived_seed(0, "net/house"):
            raise DivergenceError("training diverged: non-finite loss at iteration 7")
        return real(image, *args, **kwargs)

    monkeypatch.setattr(bench.train, "restore", diverge_on_house)
    config = build_config("smoke", {**TINY, "run.images": ("house", "cman"), "run.on_divergence": "fail"})
    outcome = run(config, data_dir, tmp_path, progress=False)
    assert [r.image for r in outcome.records] == ["cman"]
    (failed,) = outcome.failures
    assert failed.status == "failed" and failed.reason == "training diverged: non-finite loss at iteration 7"
    assert failed.on_divergence == "fail" and failed.config.image == "house"
    assert read_record(tmp_path / "house_seed0.json") is None  # never taken for a result
    assert load_records(tmp_path) == outcome.records
    text = render(outcome.records, failures=outcome.failures)
    assert "## † Diverged cells" in text and "- House seed 0: **failed**, no result: training diverged" in text
    # the next run of the same command tries the failed cell again (and only it)
    monkeypatch.setattr(bench.train, "restore", real)
    again = run(config, data_dir, tmp_path, progress=False)
    assert [r.image for r in again.records] == ["house", "cman"] and again.failures == []


def test_paper_mask_option_uses_the_published_mask(tmp_path, data_dir):
    (a,) = run(build_config("smoke", {**TINY, "run.mask": "paper", "recipe.iterations": 2}), data_dir, tmp_path / "a", progress=False).records
    (b,) = run(build_config("smoke", {**TINY, "recipe.iterations": 2}), data_dir, tmp_path / "b", progress=False).records
    assert a.mask_sha256 != b.mask_sha256
    assert a.config.mask == "paper" and a.config.keep is None


def test_smoke_profile_is_identical_across_two_runs_in_one_process(tmp_path, data_dir):
    """Determinism does not need the whole budget: two of the smoke images, 20 of its 400 iterations, twice."""
    short = build_config("smoke", {"run.device": "cpu", "recipe.iterations": 20, "run.images": ("house", "cman")})
    first = run(short, data_dir, tmp_path / "first", progress=False).records
    second = run(short, data_dir, tmp_path / "second", progress=False).records
    assert [r.image for r in first] == ["house", "cman"]
    for a, b in zip(first, second):
        assert (a.psnr, a.psnr_pasted, a.final_loss) == (b.psnr, b.psnr_pasted, b.final_loss)
        # it learns: measured after 20 steps +13.3 (House), +5.3 dB (C.man), fp32 on a 2-core AVX2 EPYC
        assert a.psnr > a.psnr_masked_input + 3


def test_estimate_multiplies_measured_times_by_the_work():
    config = build_config("paper", {"run.images": ("house", "lena", "cman"), "run.seeds": (0, 1), "recipe.iterations": 100})
    ms = {(256, 256): 500.0, (512, 512): 2000.0}
    # per seed: (500 + 2000 + 500) ms x 100 iterations = 300 s; two seeds
    assert estimate_seconds(config, ms) == pytest.approx(600.0)
    cropped = build_config("quick", {"run.images": ("house", "lena"), "recipe.iterations": 10})
    assert estimate_seconds(cropped, {(128, 128): 100.0}) == pytest.approx(6.0)  # the quick profile's 3 seeds


def test_measurement_times_each_distinct_training_size():
    config = build_config("smoke", {"run.images": ("house", "cman", "lena"), "run.crop": 0})
    measured = measure_ms_per_iter(dataclasses.replace(config, recipe=dataclasses.replace(config.recipe, net=SMALL_NET)))
    assert sorted(measured) == [(256, 256), (512, 512)]
    assert all(ms > 0 for ms in measured.values())


@pytest.mark.parametrize("channels", [1, 3])
def test_own_image_file_runs_the_same_protocol(channels, tmp_path, data_dir, capsys):
    import numpy as np
    from PIL import Image

    from bench.cli import main
    from bench.panels import PANEL_GAP, PANEL_LABEL_HEIGHT

    house = np.asarray(Image.open(data_dir / "house_GT.png"))[96:160, 96:160]  # (64, 64) uint8
    pixels = house if channels == 1 else np.stack([house, house[::-1], 255 - house], axis=2)
    path = tmp_path / "My Photo.png"
    Image.fromarray(pixels).save(path)
    results = tmp_path / "results"
    code = main(["run", "--profile", "smoke", "--image", str(path), "--iterations", "6", "--eval-every", "3",
                 "--results-dir", str(results), "--no-progress"])
    assert code == 0
    record = read_record(results / "file-my-photo_seed0.json")
    assert record.name == "My Photo.png" and record.size == (64, 64)
    assert record.config.file == str(path.resolve()) and len(record.config.file_sha256) == 64
    assert record.config.recipe.net.out_channels == channels
    ref = record.reference_psnr
    assert ref.deep_prior_published is ref.papyan_published is None and ref.interp_linear  # no published outputs
    assert record.psnr > record.psnr_masked_input
    with Image.open(results / record.panel) as panel:
        assert panel.size == (4 * 64 + 3 * PANEL_GAP, PANEL_LABEL_HEIGHT + 64)
        assert panel.mode == ("L" if channels == 1 else "RGB")
    report = (results / "report.md").read_text(encoding="utf-8")
    row = next(line for line in report.splitlines() if line.startswith("| My Photo.png"))
    assert [c.strip() for c in row.split("|")][3:6] == ["—", "—", "—"]  # no Table 1 values


def test_own_image_of_a_size_the_network_cannot_take(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from bench.cli import main

    path = tmp_path / "odd.png"
    Image.fromarray(np.arange(100 * 70).reshape(100, 70).astype(np.uint8)).save(path)
    code = main(["run", "--profile", "smoke", "--crop", "0", "--image", str(path), "--results-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "file-odd: image size 100x70" in err and "--crop" in err and err.count("\n") == 1
    flat = tmp_path / "flat.png"
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(flat)
    assert main(["run", "--profile", "smoke", "--image", str(flat), "--results-dir", str(tmp_path / "r")]) == 2
    assert "the image is constant" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()

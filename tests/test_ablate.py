"""Ablations: paired statistics on fixture records, the generated reading, and a tiny real sweep."""

import copy
import statistics

import pytest

from bench.ablate import VARIANTS, run_ablations, select_variants
from bench.analysis.ablations import (
    BASELINE,
    effect,
    paired_deltas,
    reading,
    render_ablations,
)
from bench.errors import BenchError
from bench.records import read_record
from tests.test_report import fixture_record, typed


def fixture_run(offset: float, ms: float = 90.0) -> list[dict]:
    records = []
    for image, base in (("house", 30.0), ("cman", 26.0)):
        for seed in (0, 1, 2):
            record = fixture_record(image, seed, base + seed * 0.5 + offset + (0.25 if image == "cman" and seed == 1 else 0.0), ms=ms)
            record["psnr_best"] = record["psnr"] + 0.5
            records.append(record)
    return records


def test_paired_deltas_and_effect_statistics():
    base = fixture_run(0.0)
    better = fixture_run(1.0, ms=45.0)
    better[0]["psnr"] += 0.6  # house seed 0: +1.6 instead of +1.0
    better, base = typed(better), typed(base)
    deltas = paired_deltas(better, base)
    assert sorted(deltas.round(6)) == [1.0] * 5 + [1.6]
    e = effect(better, base)
    assert e.delta == pytest.approx(1.1)
    assert e.delta_se == pytest.approx(deltas.std(ddof=1) / 6**0.5)
    assert (e.better, e.pairs) == (6, 6)
    assert e.ms_per_iter == 45.0 and e.best_psnr == pytest.approx(e.mean_psnr + 0.5 - 0.6 / 6)  # best set before the +0.6
    # per-seed means over the 2 images: seed 0 (31.6 + 27)/2, seed 1 (31.5 + 27.75)/2, seed 2 (32 + 28)/2
    assert e.mean_psnr == pytest.approx((29.3 + 29.625 + 30.0) / 3)
    assert e.std_over_seeds == pytest.approx(statistics.stdev([29.3, 29.625, 30.0]))


def test_baseline_without_a_cell_is_an_error():
    base = fixture_run(0.0)[1:]
    with pytest.raises(BenchError, match="baseline has no cell for house seed 0"):
        paired_deltas(typed(fixture_run(0.5)), typed(base))


def test_reading_separates_effects_from_seed_noise():
    base = fixture_run(0.0)
    noisy = fixture_run(0.0, ms=180.0)
    for record, sign in zip(noisy, (1, -1, 1, -1, 1, -1)):
        record["psnr"] += sign * 0.3
    base, noisy = typed(base), typed(noisy)
    text = reading({BASELINE: effect(base, base), "worse": effect(typed(fixture_run(-2.0)), base), "noisy": effect(noisy, base)})
    assert "*worse* lowers PSNR by 2.00 dB" in text and "higher in 0 of 6 paired cells" in text
    assert "*noisy* changes PSNR by +0.00 dB, within twice its standard error" in text
    assert "at 2.00x the baseline's time per iteration" in text


def test_report_table_names_what_each_variant_changes():
    base = fixture_run(0.0)
    lr = copy.deepcopy(fixture_run(-1.0))
    for record in lr:
        record["config"]["recipe"]["lr"] = 0.01
    text = render_ablations({BASELINE: typed(base), "lr-1e-2": typed(lr)})
    row = next(line for line in text.splitlines() if line.startswith("| lr-1e-2"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[1] == "recipe.lr" and cells[3] == "-1.00 ± 0.00" and cells[4] == "0/6" and cells[7] == "1.00x"
    assert "## Reading" in text and "## Per image" in text


def test_variant_selection():
    assert [v.name for v in select_variants(("lr-1e-2",))] == [BASELINE, "lr-1e-2"]
    assert len(select_variants(None)) == len(VARIANTS)
    with pytest.raises(BenchError, match="unknown ablation 'fast-lr'"):
        select_variants(("fast-lr",))


def test_a_variant_cannot_be_overridden_by_the_shared_flags(tmp_path, data_dir):
    with pytest.raises(BenchError, match="lr-1e-2 sets recipe.lr itself"):
        run_ablations("smoke", {"recipe.lr": 0.1}, select_variants(("lr-1e-2",)), data_dir, tmp_path, progress=False)


def test_tiny_sweep_reuses_the_profiles_own_baseline_cells(tmp_path, data_dir):
    from bench.config import build_config
    from bench.runner import run

    shared = {"run.images": ("house",), "run.seeds": (0,), "run.crop": 64, "recipe.iterations": 6, "recipe.eval_every": 3}
    (own,) = run(build_config("smoke", shared), data_dir, tmp_path / "smoke", progress=False).records
    results = run_ablations("smoke", shared, select_variants(("upsample-nearest",)), data_dir, tmp_path, progress=False)
    assert results[BASELINE] == [own]  # copied from runs/smoke, not re-run (a re-run has a new timestamp)
    assert read_record(tmp_path / "ablate" / "smoke-paper" / "house_seed0.json") == own
    assert (tmp_path / "ablate" / "smoke-paper" / "panels" / "house_seed0.png").is_file()
    (nearest,) = results["upsample-nearest"]
    assert nearest.config.recipe.net.upsample_mode == "nearest"
    assert "upsample-nearest" in render_ablations(results)

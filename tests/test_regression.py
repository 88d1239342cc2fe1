"""The regression check: fingerprint and outcome comparisons, tolerances, and the mutation suite's power."""

import ast
import dataclasses
import json
import math
import subprocess
import sys

import pytest

import bench.execution
import bench.regression
from bench.analysis import fingerprint as fp
from bench.analysis.check import compare, execution_note, make_baseline
from bench.analysis.summary import shared_config
from bench.data import REPO_ROOT
from bench.errors import BenchError
from bench.execution import cpu_has_fast_bf16, onednn_isa_cap
from bench.mutations import BLIND_SPOTS, MUTATIONS, _caught, _cell, mutated_tree, select_mutations, unit_tests_in
from bench.paths import SPREAD_PATH
from bench.regression import PARITY_IMAGE, PartResult, add_parity, check_fingerprint
from bench.spread import parity_tolerance_db
from bench.record import Record
from tests.test_report import fixture_record, typed


def fingerprint_record(image: str, losses: list[float], mask: str = "ab" * 32) -> Record:
    """A record of a 3-iteration fingerprint run: curve losses given, PSNRs derived from them."""
    curve = [{"iteration": i, "loss": loss, "psnr_masked": 0.0, "psnr": 20.0 + i, "psnr_ema": 19.0 + i}
             for i, loss in enumerate(losses)]
    record = fixture_record(image, 0, 23.0) | {
        "curve": curve, "mask_sha256": mask, "psnr_pasted": 25.0, "psnr_ema": 22.0, "psnr_masked_input": 8.0,
        "reference_psnr": {"interp_nearest": 24.0, "interp_linear": 26.0}}
    return Record.from_dict(record)


def test_image_fingerprint_is_every_series_in_db():
    got = fp.image_fingerprint(fingerprint_record("house", [0.1, 0.01, 0.001]))
    assert got["loss"] == pytest.approx([10.0, 20.0, 30.0])
    assert got["psnr"] == [20.0, 21.0, 22.0] and got["psnr_ema"] == [19.0, 20.0, 21.0]
    assert got["final"] == [23.0, 25.0, 22.0] and got["static"] == [8.0, 24.0, 26.0]
    assert got["mask_sha256"] == "ab" * 32


def test_a_fingerprint_needs_a_point_at_every_iteration():
    record = fingerprint_record("house", [0.1, 0.01, 0.001])
    record = dataclasses.replace(record, curve=record.curve[::2])
    with pytest.raises(ValueError, match="eval_every 1"):
        fp.image_fingerprint(record)


def test_tolerance_is_safety_times_the_running_max_of_measured_deviations_with_a_floor():
    measured = [{"loss": [0.0, 2e-4, 1e-4], "psnr": [1e-6, 0.0, 0.0], "psnr_ema": [0.0, 0.0, 0.0],
                 "final": [3e-3, 0.0, 1e-3], "static": [0.0, 0.0, 0.0]},
                {"loss": [1e-5, 0.0, 0.0], "psnr": [0.0, 0.0, 5e-4], "psnr_ema": [0.0, 0.0, 0.0],
                 "final": [0.0, 2e-3, 0.0], "static": [0.0, 0.0, 0.0]}]
    tol = fp.tolerances(measured, safety=10.0, floor=1e-5)
    assert tol["loss"] == pytest.approx([1e-4, 2e-3, 2e-3])  # curve: never below an earlier point's
    assert tol["psnr"] == pytest.approx([1e-5, 1e-5, 5e-3])
    assert tol["final"] == pytest.approx([3e-2, 2e-2, 1e-2])  # not a curve: point by point
    assert tol["static"] == [1e-5] * 3


def test_deviations_are_the_largest_over_images():
    a = fp.fingerprint([fingerprint_record("house", [0.1, 0.01]), fingerprint_record("cman", [0.1, 0.01])])
    b = fp.fingerprint([fingerprint_record("house", [0.1, 0.01 * 10 ** 0.0001]), fingerprint_record("cman", [0.1 * 10 ** 0.0003, 0.01])])
    dev = fp.deviations(a, b)
    assert dev["loss"] == pytest.approx([3e-3, 1e-3])
    assert dev["psnr"] == [0.0, 0.0] and dev["static"] == [0.0, 0.0, 0.0]


def _golden(records: list[Record], tol: float = 1e-3) -> dict:
    prints = fp.fingerprint(records)
    first = next(iter(prints.values()))
    return {"config": shared_config(_with_config(records)).to_dict(), "fingerprint": prints,
            "tolerance": {name: [tol] * len(first[name]) for name in fp.SERIES}}


def _with_config(records: list[Record], lr: float = 1e-6) -> list[Record]:
    return [dataclasses.replace(r, config=dataclasses.replace(r.config, recipe=dataclasses.replace(r.config.recipe, lr=lr)))
            for r in records]


def test_fingerprint_check_passes_within_tolerance_and_names_the_point_outside():
    golden = _golden([fingerprint_record("house", [0.1, 0.01, 0.001])])
    same = check_fingerprint(_with_config([fingerprint_record("house", [0.1, 0.01, 0.001])]), golden)
    assert same.ok and same.margin == 0.0
    moved = check_fingerprint(_with_config([fingerprint_record("house", [0.1, 0.01 * 10 ** -0.0005, 0.001])]), golden)
    assert not moved.ok and moved.margin == pytest.approx(5.0)
    assert moved.lines[0].startswith("house: loss at iteration 1 20.005000 dB vs golden 20.000000 (Δ +5.00e-03, tolerance ±1.0e-03, 5x)")
    assert moved.lines[-1] == "fingerprint: 15 points of 1 image, 1 outside tolerance; largest |Δ| = 5x its tolerance"


def test_fingerprint_check_fails_a_nan_another_mask_or_another_configuration():
    golden = _golden([fingerprint_record("house", [0.1, 0.01, 0.001])])
    nan = check_fingerprint(_with_config([fingerprint_record("house", [0.1, math.nan, 0.001])]), golden)
    assert not nan.ok and nan.margin == math.inf
    mask = check_fingerprint(_with_config([fingerprint_record("house", [0.1, 0.01, 0.001], mask="cd" * 32)]), golden)
    assert not mask.ok and mask.lines[0].startswith("house: the mask differs from the golden's")
    config = check_fingerprint(_with_config([fingerprint_record("house", [0.1, 0.01, 0.001])], lr=1e-3), golden)
    assert not config.ok and config.lines == ["configuration differs from the golden's in: recipe.lr"]
    assert config.to_dict()["margin"] is None  # JSON has no infinity


def test_a_golden_older_than_an_execution_field_ran_it_at_its_reference_value():
    """A golden recorded before ``winograd`` existed reads it at its default, the reference value (the typed
    record fills a missing field with the dataclass default)."""
    golden = _golden([fingerprint_record("house", [0.1, 0.01, 0.001])])
    del golden["config"]["recipe"]["winograd"]
    records = _with_config([fingerprint_record("house", [0.1, 0.01, 0.001])])
    assert check_fingerprint(records, golden).ok
    switched = [dataclasses.replace(r, config=dataclasses.replace(
        r.config, recipe=dataclasses.replace(r.config.recipe, winograd=True))) for r in records]
    assert check_fingerprint(switched, golden).lines == ["configuration differs from the golden's in: recipe.winograd"]


def test_outcome_check_has_a_per_image_and_a_mean_tolerance():
    records = [fixture_record("house", 0, 30.0), fixture_record("cman", 0, 25.0), fixture_record("lena", 0, 28.0)]
    baseline = make_baseline(typed(records), tolerance={"per_image_db": 1.0, "mean_db": 0.5, "basis": "test"})
    assert baseline["tolerance"]["mean_db"] == 0.5
    shifted = [fixture_record("house", 0, 30.9), fixture_record("cman", 0, 25.9), fixture_record("lena", 0, 27.9)]
    assert compare(typed(shifted), baseline, 1.0) == []  # each image within 1 dB
    assert compare(typed(shifted), baseline, 1.0, 0.5) == ["mean over 3 images: Δ +0.57 dB vs baseline (tolerance ±0.5)"]
    nan = [fixture_record("house", 0, math.nan)] + records[1:]
    assert compare(typed(nan), baseline, 1.0, 0.5)[0].startswith("house: nan dB vs baseline 30.00 dB")


def test_outcome_check_reports_but_does_not_fail_another_execution_of_the_recipe():
    records = [fixture_record("house", 0, 30.0), fixture_record("cman", 0, 25.0)]
    baseline = make_baseline(typed(records))
    fp32 = json.loads(json.dumps(records))
    for r in fp32:
        r["config"]["recipe"]["precision"] = "fp32"
    assert compare(typed(fp32), baseline, 0.5) == []
    assert execution_note(typed(fp32), baseline) == f"executed differently from the baseline: precision fp32 (baseline {records[0]['config']['recipe']['precision']})"
    assert execution_note(typed(records), baseline) is None


@pytest.mark.parametrize(
    ("cap", "amx", "avx512_bf16", "fast"),
    [(None, True, True, True), ("AVX512_CORE_BF16", True, True, True), ("AVX512_CORE", True, True, False),
     ("AVX2", False, True, False), ("avx512_core_amx", True, True, True), ("AVX10_1_512_AMX", True, False, True),
     ("AVX10_1_512", True, True, True), ("AVX512_CORE_BF16", True, False, False), ("ALL", False, True, True),
     (None, False, False, False)],
)
def test_fast_bf16_needs_the_cpu_and_the_instruction_set_cap_to_allow_it(monkeypatch, cap, amx, avx512_bf16, fast):
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    monkeypatch.setattr(bench.execution.torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(bench.execution.torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert cpu_has_fast_bf16() is fast
    assert onednn_isa_cap() == (None if cap in (None, "ALL") else cap.upper())


# ---------------------------------------------------------------------------------------------------
# The mutation suite: every mutation still applies, and the fingerprint check catches each one


def test_every_mutation_names_its_source_text_exactly_once():
    for mutation in MUTATIONS + BLIND_SPOTS:
        text = (REPO_ROOT / mutation.path).read_text(encoding="utf-8")
        assert text.count(mutation.old) == 1, mutation.name
    assert len({m.name for m in MUTATIONS}) == len(MUTATIONS) >= 10


# Regressions that neither part of the check sees (a path it never runs, a flag its profiles leave at the
# default, an effect below its resolution): each names the unit tests that catch it (issue 25).
UNIT_TESTED = ("ema-deferred-weights-swapped", "negative-slope-flag-ignored", "padding-flag-ignored",
               "upsample-mode-flag-ignored", "adam-beta2-0.99", "adamw-weight-decay", "backtrack-threshold-doubled")


def test_every_test_a_mutation_names_is_a_test_function_of_its_file():
    named = {m.name: m.tests for m in MUTATIONS + BLIND_SPOTS}
    assert all(named[name] for name in UNIT_TESTED), [name for name in UNIT_TESTED if not named[name]]
    for name, tests in named.items():
        for node in tests:
            path, _, function = node.partition("::")
            source = ast.parse((REPO_ROOT / path).read_text(encoding="utf-8"))
            functions = {n.name for n in source.body if isinstance(n, ast.FunctionDef)}
            assert path.startswith("tests/") and function.split("[")[0] in functions, (name, node)


def test_the_unit_test_part_counts_only_real_failures_as_catches(tmp_path):
    """Exit 1 (a test failed) is a catch; a node id that does not exist (exit 4) is an error, never a catch."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("def test_ok():\n    pass\n\n\ndef test_bad():\n    assert False\n")
    ok = unit_tests_in(tmp_path, ("tests/test_x.py::test_ok",), tmp_path)
    bad = unit_tests_in(tmp_path, ("tests/test_x.py::test_ok", "tests/test_x.py::test_bad"), tmp_path)
    gone = unit_tests_in(tmp_path, ("tests/test_x.py::test_gone",), tmp_path)
    assert ok == {"exit": 0, "result": {"ok": True, "failed": [], "named": 1}, "error": ""}
    assert bad == {"exit": 1, "result": {"ok": False, "failed": ["tests/test_x.py::test_bad"], "named": 2}, "error": ""}
    assert gone["exit"] == 4 and gone["result"] is None
    assert [_caught("tests", outcome) for outcome in (ok, bad, gone)] == [False, True, False]
    assert [_cell(outcome) for outcome in (ok, bad, gone, None)] == [
        "passes (1 named)", "**caught**: test_bad failed", f"error (exit 4): {gone['error']}", "—"]


def test_the_parity_tolerance_is_the_images_own_effect():
    """Each image's own seed std and reference-path Δ, not the largest of any image or CPU variant."""
    spread = {"outcome": {"seed_std_per_image": {"house": 0.2, "cman": 0.6},
                          "delta_vs_default": {"reference-path": {"house": -0.8, "cman": 0.1},
                                               "avx2": {"house": 5.0, "cman": 5.0}}}}
    assert parity_tolerance_db(spread, "house") == pytest.approx(1.2)  # 1.5 x |-0.8| > 3.5 x sqrt(2) x 0.2 = 0.99
    assert parity_tolerance_db(spread, "cman") == pytest.approx(3.5 * math.sqrt(2) * 0.6)
    # the committed report: House's tolerance is below the per-image one (which the noisiest image sets)
    committed = json.loads(SPREAD_PATH.read_text())
    assert parity_tolerance_db(committed, PARITY_IMAGE) < committed["tolerance"]["outcome"]["per_image_db"] / 2


def outcome_result(margin: float = 0.5) -> PartResult:
    return PartResult("outcome", True, ["outcome: 3 images after 400 iterations; ..."], margin, "cman: Δ +0.60 dB")


def test_parity_within_its_tolerance_adds_its_line_to_the_summary():
    result = add_parity(outcome_result(), typed([fixture_record("house", 0, 33.2)]), typed([fixture_record("house", 0, 33.0)]),
                        0.5)
    assert result.ok and result.margin == 0.5 and result.worst == "cman: Δ +0.60 dB"  # the outcome's 0.5 > parity's 0.4
    assert result.lines == ["outcome: 3 images after 400 iterations; ...; parity: house fast path 33.20 dB, reference "
                            "path 33.00 dB: Δ +0.20 dB (tolerance ±0.50, house's own effect)"]


def test_parity_outside_its_tolerance_fails_the_outcome_part():
    """A fast path 2 dB below the reference on House, inside the per-image 2.8 dB, outside House's own 0.93."""
    result = add_parity(outcome_result(), typed([fixture_record("house", 0, 31.0)]), typed([fixture_record("house", 0, 33.0)]),
                        0.93)
    line = "parity: house fast path 31.00 dB, reference path 33.00 dB: Δ -2.00 dB (tolerance ±0.93, house's own effect)"
    assert not result.ok and result.margin == pytest.approx(2 / 0.93) and result.worst == line
    assert result.lines[0] == line and result.lines[-1].endswith(line)


def test_the_outcome_part_trains_house_on_the_reference_path_too(monkeypatch, data_dir, tmp_path):
    runs = []

    def fresh_run(part, data_dir, work_dir, images=(), path=None):
        runs.append((part, images, path))
        if path == "reference":
            raise bench.regression.CellsFailed("stop here")
        return typed([fixture_record("house", 0, 33.0)])

    monkeypatch.setattr(bench.regression, "fresh_run", fresh_run)
    assert not bench.regression.run_check("outcome", data_dir, tmp_path).ok
    assert runs == [("outcome", (), None), ("outcome", ("house",), "reference")]


def test_an_unknown_mutation_is_refused():
    with pytest.raises(BenchError, match="unknown mutation 'nope'; choose from "):
        select_mutations(("nope",))


# One mutation per area of the recipe in CI (each a fingerprint check of its own tree); `make power` runs all
# of them (reports/regression-power.md).
CI_MUTATIONS = ("gradients-accumulate", "leaky-relu-default-slope", "merge-batchnorm-dropped", "input-noise-drawn-once",
                "loss-over-observed-pixels", "mask-shared-by-images", "final-output-eval-mode", "psnr-of-8-bit-output")
CI_MUTATION_LIST = [m for m in MUTATIONS if m.name in CI_MUTATIONS]


@pytest.fixture(scope="module")
def fingerprint_checks(tmp_path_factory, data_dir) -> dict[str, dict]:
    """The fingerprint check on House alone (a third of the training; every mutation moves House too:
    reports/regression-power.md) on the unmodified tree and on each CI mutation's, all in one fresh
    interpreter (tests/fixtures/check_trees.py: each tree's code imported afresh; a fresh interpreter
    per tree cost about 7 s of imports each on a 2-core AVX2 EPYC). The unmodified tree runs last: a
    broken copy, or state leaking from a mutated run into the next, shows as its check failing.
    {name: {"exit", "stdout", "stderr"}}."""
    root = tmp_path_factory.mktemp("fingerprint-checks")
    jobs = [{"name": m.name, "tree": str(mutated_tree(m, root / m.name))} for m in CI_MUTATION_LIST]
    jobs += [{"name": "unmodified", "tree": str(mutated_tree(None, root / "unmodified"))}]
    for job in jobs:
        job |= {"work_dir": str(root / "work" / job["name"]), "data_dir": str(data_dir)}
    (root / "jobs.json").write_text(json.dumps(jobs))
    done = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "fixtures" / "check_trees.py"), str(root / "jobs.json"),
                           str(root / "out.json")], cwd=root, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((root / "out.json").read_text())


@pytest.mark.slow
def test_unmodified_code_passes_the_fingerprint_check(fingerprint_checks):
    done = fingerprint_checks["unmodified"]
    assert done["exit"] == 0, done["stdout"] + done["stderr"]
    assert done["stdout"].splitlines()[-1].startswith("OK fingerprint: 78 points of 1 image, 0 outside tolerance")


def test_the_ci_mutations_are_real_mutations():
    assert set(CI_MUTATIONS) <= {m.name for m in MUTATIONS} and len(set(CI_MUTATIONS)) == len(CI_MUTATIONS)


@pytest.mark.slow
@pytest.mark.parametrize("mutation", CI_MUTATION_LIST, ids=lambda m: m.name)
def test_the_fingerprint_check_catches_the_mutation(mutation, fingerprint_checks):
    done = fingerprint_checks[mutation.name]
    assert done["exit"] == 1, done["stdout"] + done["stderr"]
    assert done["stdout"].splitlines()[-1].startswith("FAIL fingerprint")


def test_a_subset_of_images_applies_to_the_fingerprint_only(tmp_path, data_dir):
    from bench import regression

    with pytest.raises(BenchError, match="--images applies to the fingerprint part only"):
        regression.run_check("outcome", data_dir, tmp_path, images=("house",))
    with pytest.raises(BenchError, match="the fingerprint golden has no image 'lena'; it has house, cman, peppers"):
        regression.run_check("fingerprint", data_dir, tmp_path, images=("lena",))

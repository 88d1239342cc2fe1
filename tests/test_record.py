"""The typed record (bench/record.py): every committed record loads, older schemas are migrated, a
malformed or newer one is refused in one line, and what is written reads back equal."""

import copy
import json
from pathlib import Path

import pytest

from bench.analysis.check import baseline_config
from bench.errors import BenchError
from bench.record import SCHEMA, MethodSpec, Record, RecordConfig, RecordError
from bench.records import load_records, read_json, read_record, write_record
from tests.test_report import RECORDS, fixture_record

REPO = Path(__file__).resolve().parents[1]
COMMITTED = sorted(p for p in (REPO / "reports").rglob("*.json") if p.parent.name.startswith("records"))


def test_every_committed_record_loads_and_writes_back_what_it_read():
    assert len(COMMITTED) >= 200
    for path in COMMITTED:
        stored = json.loads(path.read_text())
        record = read_record(path)
        assert record.schema == SCHEMA and record.psnr == stored["psnr"], path
        assert Record.from_dict(record.to_dict()) == record, path
        written = record.to_dict()  # nothing the file held is lost (a None is left out: it reads back as None)
        assert [k for k, v in stored.items() if v is not None and k not in written] == [], path


def test_schema_1_records_are_the_built_in_method_and_what_their_code_ran():
    path = REPO / "reports" / "seed-spread" / "smoke200-fast" / "records" / "house_seed0.json"
    old, stored = read_record(path), json.loads(path.read_text())
    assert stored["schema"] == 1 and "ema_decay" not in stored["config"]["recipe"]
    assert old.config.method == MethodSpec("dip-bench", {}) and old.config.method.is_builtin
    assert old.config.recipe.ema_decay == 0.0  # before the EMA existed: no EMA
    assert old.config.recipe.input_noise == "fixed" and old.config.recipe.net.layout == "paper"
    assert old.config.recipe_name == "paper" and old.psnr_ema is None


def test_a_newer_schema_is_refused_in_one_line(tmp_path):
    path = tmp_path / "house_seed0.json"
    path.write_text(json.dumps({**RECORDS[0], "schema": SCHEMA + 1}))
    with pytest.raises(BenchError, match=f"house_seed0.json is not a record this dip-bench can read: schema {SCHEMA + 1} "
                                         f"is newer than this dip-bench reads"):
        read_record(path)


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("psnr"), "a complete record needs psnr"),
    (lambda r: r.update(psnr="high"), "record.psnr is not a number: 'high'"),
    (lambda r: r.update(colour="red"), "record has unknown field colour"),
    (lambda r: r["config"].pop("crop"), "config lacks crop"),
    (lambda r: r["config"]["recipe"].update(lr=-1.0), "config.recipe: lr must be in"),
    (lambda r: r["timing"].pop("median_ms_per_iter"), "timing lacks median_ms_per_iter"),
    (lambda r: r.update(status="done"), "status must be one of complete, failed"),
    (lambda r: r.update(size=[64]), "record.size has 1 items, not 2"),
])
def test_a_malformed_record_is_refused_naming_what_is_wrong(tmp_path, change, message):
    record = copy.deepcopy(RECORDS[0])
    change(record)
    path = tmp_path / "house_seed0.json"
    path.write_text(json.dumps(record))
    with pytest.raises(RecordError, match=message) as caught:
        load_records(tmp_path)
    assert "\n" not in str(caught.value)


def test_a_record_reads_back_equal_and_in_the_current_schema(tmp_path):
    record = Record.from_dict(fixture_record("house", 0, 30.0) | {"curve": [
        {"iteration": 0, "loss": 0.1, "psnr_masked": 10.0, "psnr": 12.0, "psnr_ema": None}]})
    write_record(tmp_path / "house_seed0.json", record)
    stored = json.loads((tmp_path / "house_seed0.json").read_text())
    assert stored["schema"] == SCHEMA and stored["config"]["method"] == {"name": "dip-bench", "fields": {}}
    assert list(stored)[:5] == ["schema", "status", "image", "seed", "size"]  # no name in the fixture
    assert read_record(tmp_path / "house_seed0.json") == record


def test_the_committed_goldens_read_as_configurations():
    for name in ("smoke", "fingerprint"):
        config = baseline_config(read_json(REPO / "reports" / "baselines" / f"{name}.json", "golden"))
        assert isinstance(config, RecordConfig) and config.method.is_builtin and config.profile == name

"""Panels and plots: files exist, with the sizes the layout promises."""

import numpy as np
import pytest
from PIL import Image

from bench.analysis.figures import plot_curves, plot_vs_reference
from bench.analysis.summary import summarise
from bench.panels import ERROR_GAIN, PANEL_GAP, PANEL_LABEL_HEIGHT, panel, write_panel
from bench.record import Record
from tests.test_report import fixture_record


@pytest.mark.parametrize("shape", [(32, 48), (32, 48, 3)])
def test_panel_tiles_truth_masked_restored_and_error(shape):
    rng = np.random.default_rng(0)
    truth = rng.random(shape)
    restored = np.clip(truth + 0.05, 0, 1)
    mask = (rng.random(shape[:2]) < 0.5).astype(np.float32)
    tiles = panel(truth, mask, restored)
    height, width = shape[:2]
    assert tiles.shape == (PANEL_LABEL_HEIGHT + height, 4 * width + 3 * PANEL_GAP) + shape[2:]
    assert tiles.dtype == np.uint8
    body = tiles[PANEL_LABEL_HEIGHT:]
    np.testing.assert_array_equal(body[:, :width], np.round(truth * 255))
    masked = body[:, width + PANEL_GAP : 2 * width + PANEL_GAP]
    dropped = mask == 0
    assert (masked[dropped] == 0).all()
    error = body[:, 3 * (width + PANEL_GAP) :]
    expected = np.round(np.clip(ERROR_GAIN * np.abs(restored - truth), 0, 1) * 255)
    np.testing.assert_array_equal(error, expected)
    assert (body[:, width : width + PANEL_GAP] == 255).all()  # white gap


def test_write_panel_writes_a_png_of_the_panel_size(tmp_path):
    truth = np.full((64, 64), 0.5)
    path = write_panel(tmp_path / "panels" / "house_seed0.png", truth, np.ones((64, 64)), truth)
    with Image.open(path) as image:
        assert image.size == (4 * 64 + 3 * PANEL_GAP, PANEL_LABEL_HEIGHT + 64)
        assert image.mode == "L"


def curve_record(image, seed, psnr):
    record = fixture_record(image, seed, psnr)
    record["name"] = {"house": "House", "cman": "C.man"}[image]
    record["curve"] = [{"iteration": i, "loss": 0.01, "psnr_masked": 20.0, "psnr": psnr - 5 + i / 100, "psnr_ema": psnr - 6 + i / 100}
                       for i in (0, 50, 100)]
    record["reference_psnr"] = {"interp_linear": psnr - 1, "interp_nearest": psnr - 3}
    return Record.from_dict(record)


def test_plots_are_written_with_their_figure_size(tmp_path):
    records = [curve_record("house", 0, 30.0), curve_record("house", 1, 31.0), curve_record("cman", 0, 25.0)]
    curves = plot_curves(records, tmp_path / "curves.png")
    with Image.open(curves) as image:
        assert image.size == (1280, 240)  # 4 columns x 3.2 in, 1 row x 2.4 in, at 100 dpi
    summary = summarise(records).assign(interp_linear=[29.5, 24.0])
    versus = plot_vs_reference(summary, {"interp_linear": "Interp. linear", "absent": "not drawn"}, tmp_path / "vs.png")
    with Image.open(versus) as image:
        assert image.size == (1000, 400)
    # Same numbers, same bytes: no timestamp in the file.
    again = plot_curves(records, tmp_path / "curves2.png")
    assert curves.read_bytes() == again.read_bytes()

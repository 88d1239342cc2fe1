import math

import numpy as np
import pytest

from bench.data import load_image, load_images
from dip.metrics import paste_back, psnr, psnr_pasted


def test_psnr_exact_values():
    zeros = np.zeros((8, 8))
    assert psnr(zeros, np.full((8, 8), 0.1)) == pytest.approx(20.0, abs=1e-12)
    assert psnr(zeros, np.full((8, 8), 0.01)) == pytest.approx(40.0, abs=1e-12)
    # MSE of 0.5 on half the pixels and 0 elsewhere is 0.125 -> 10*log10(8)
    half = np.zeros((4, 4))
    half[:2] = np.sqrt(0.25)
    assert psnr(zeros[:4, :4], half) == pytest.approx(10 * math.log10(1 / 0.125), abs=1e-12)


def test_psnr_identical_is_infinite_and_shape_checked():
    a = np.random.default_rng(0).random((5, 7))
    assert psnr(a, a) == math.inf
    with pytest.raises(ValueError, match="shape mismatch"):
        psnr(a, a[:, :6])


def test_psnr_is_on_data_range_one_not_dtype_range():
    # uint8 inputs would be scored on range 255 by skimage's default; we always convert to floats in [0, 1].
    a = np.zeros((4, 4), dtype=np.float32)
    b = np.full((4, 4), 0.5, dtype=np.float32)
    assert psnr(a, b) == pytest.approx(10 * math.log10(1 / 0.25))


def test_paste_back_uses_observed_pixels_only_where_kept():
    estimate = np.full((2, 2), 0.2)
    observed = np.full((2, 2), 0.9)
    mask = np.array([[1, 0], [0, 1]], dtype=np.float32)
    np.testing.assert_allclose(paste_back(estimate, observed, mask), [[0.9, 0.2], [0.2, 0.9]])
    # the error comes from the two dropped pixels only: MSE = 2 * 0.7**2 / 4
    assert psnr_pasted(observed, estimate, mask) == pytest.approx(-10 * math.log10(2 * 0.49 / 4))


def test_paste_back_broadcasts_mask_over_channels():
    estimate = np.zeros((2, 2, 3))
    mask = np.array([[1, 0], [0, 0]], dtype=np.float32)
    out = paste_back(estimate, np.ones((2, 2, 3)), mask)
    assert out[0, 0].tolist() == [1, 1, 1] and out[1, 1].tolist() == [0, 0, 0]


@pytest.mark.parametrize("key", list(load_images()))
def test_published_dip_outputs_score_within_0p2_db_of_table1(key, data_dir):
    """Our PSNR convention reproduces Table 1 from the authors' own published outputs."""
    info = load_images()[key]
    ground_truth = load_image(info, "GT", data_dir)
    published = load_image(info, "deep_prior", data_dir)
    assert abs(psnr(ground_truth, published) - info.dip_paper) <= 0.2


def test_paste_back_psnr_follows_from_raw_psnr_and_the_masked_loss():
    from dip.metrics import psnr_pasted_from_loss

    rng = np.random.default_rng(0)
    truth = rng.random((32, 32))
    output = np.clip(truth + rng.normal(0, 0.05, truth.shape), 0, 1)
    mask = (rng.random((32, 32)) < 0.5).astype(np.float64)
    loss = float(np.mean((mask * (output - truth)) ** 2))  # the training loss, MSE(out * m, x * m)
    assert psnr_pasted_from_loss(psnr(truth, output), loss) == pytest.approx(psnr_pasted(truth, output, mask), abs=1e-9)

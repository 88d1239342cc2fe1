import numpy as np
import pytest

from dip.baselines import interpolate_missing
from dip.masks import bernoulli_mask
from dip.metrics import psnr


def test_linear_interpolation_is_exact_on_a_plane():
    rows, cols = np.mgrid[0:32, 0:32]
    plane = (rows + 2 * cols) / 100.0  # in [0, 0.93]
    mask = bernoulli_mask((32, 32), seed=0, name="plane")
    mask[[0, 0, -1, -1], [0, -1, 0, -1]] = 1  # corners known: the hull covers the grid
    filled = interpolate_missing(plane * mask, mask, "linear")
    np.testing.assert_allclose(filled, plane, atol=1e-12)


def test_known_pixels_are_kept_and_the_rest_filled():
    rng = np.random.default_rng(0)
    image = rng.random((16, 16))
    mask = bernoulli_mask((16, 16), seed=1, name="x")
    for method in ("nearest", "linear", "cubic"):
        filled = interpolate_missing(image * mask, mask, method)
        assert np.isfinite(filled).all() and filled.min() >= 0 and filled.max() <= 1
        np.testing.assert_array_equal(filled[mask == 1], image[mask == 1])


def test_interpolation_beats_the_masked_input_on_a_smooth_image():
    rows, cols = np.mgrid[0:64, 0:64]
    image = 0.5 + 0.4 * np.sin(rows / 9.0) * np.cos(cols / 7.0)
    mask = bernoulli_mask((64, 64), seed=0, name="smooth")
    assert psnr(image, interpolate_missing(image * mask, mask, "linear")) > psnr(image, image * mask) + 20


def test_rgb_and_bad_input():
    image = np.random.default_rng(0).random((8, 8, 3))
    mask = bernoulli_mask((8, 8), seed=0, name="rgb")
    assert interpolate_missing(image, mask, "nearest").shape == (8, 8, 3)
    with pytest.raises(ValueError, match="unknown interpolation"):
        interpolate_missing(image, mask, "spline")
    with pytest.raises(ValueError, match="keeps no pixel"):
        interpolate_missing(image, np.zeros((8, 8)), "linear")

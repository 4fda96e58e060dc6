"""``normalize_intensity``: the formulas, bit for bit on ordinary images, and finite, correct
results on float32 images with values near float32's largest (1e37 gave NaN maps)."""

from __future__ import annotations

import numpy as np
import pytest

from diffuseg.data.transforms import normalize_intensity


def plain(image: np.ndarray, mode: str) -> np.ndarray:
    """The formulas of the docstring as written before the scaling, in the image's dtype."""
    axes = tuple(range(1, image.ndim))
    if mode == "zscore":
        return (image - image.mean(axis=axes, keepdims=True)) / np.maximum(
            image.std(axis=axes, keepdims=True), 1e-6)
    lo, hi = image.min(axis=axes, keepdims=True), image.max(axis=axes, keepdims=True)
    return (image - lo) / np.maximum(hi - lo, 1e-6)


@pytest.mark.parametrize("mode", ["zscore", "minmax"])
def test_ordinary_images_give_the_formula_bit_for_bit(mode):
    """Dividing by a power of two changes only exponents, so every float32 sum, square, square
    root and quotient rounds exactly as without it (no value here comes near the subnormals)."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        shape = (int(rng.integers(1, 3)), *rng.integers(1, 12, size=int(rng.integers(2, 4))))
        image = rng.normal(rng.normal(0, 300), 10 ** rng.uniform(-5, 4), size=shape)
        image = image.astype(np.float32)
        np.testing.assert_array_equal(normalize_intensity(image, mode), plain(image, mode))
    constant = np.full((1, 4, 4), 7.0, np.float32)  # std and range floored: all zeros
    assert not normalize_intensity(constant, mode).any()


@pytest.mark.parametrize("mode", ["zscore", "minmax"])
def test_values_near_the_float32_limit(mode):
    """A channel at +-3.4e38 (its sums, squares and range overflow float32) and a channel of
    ordinary values: each equals the float64 computation to float32 rounding (2^-24 relative
    per operation, a few operations: 1e-6), and the ordinary channel is untouched by the other."""
    rng = np.random.default_rng(1)
    small = rng.normal(0, 1, (5, 6))
    huge = rng.uniform(-1, 1, (5, 6)) * 3.4e38
    huge[0, :2] = [3.4e38, -3.4e38]
    image = np.stack([huge, small]).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # what float32 did before
        assert not np.isfinite(plain(image, mode)).all()
    got = normalize_intensity(image, mode)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    np.testing.assert_allclose(got, plain(image.astype(np.float64), mode), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got[1], plain(image[1:], mode)[0])

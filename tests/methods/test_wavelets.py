"""The Haar transform: a hand-computed 2x2 case, exact inverse and orthonormality in 2D and 3D."""

from __future__ import annotations

import pytest
import torch
from helpers import gen

from diffuseg.errors import DataError
from diffuseg.methods.wavelets import haar_forward, haar_inverse


def test_a_hand_computed_2x2_case():
    """[[a, b], [c, d]] -> LL (a+b+c+d)/2, LH (a-b+c-d)/2, HL (a+b-c-d)/2, HH (a-b-c+d)/2."""
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)[None, None]
    out = haar_forward(x)
    assert out.shape == (1, 4, 1, 1)
    torch.testing.assert_close(out.flatten(), torch.tensor([5.0, -1.0, -2.0, 0.0],
                                                           dtype=torch.float64))


def test_a_hand_computed_2x2x2_low_band_is_the_scaled_mean():
    x = torch.arange(8, dtype=torch.float64).reshape(1, 1, 2, 2, 2)
    out = haar_forward(x).flatten()
    assert out.shape == (8,)
    torch.testing.assert_close(out[0], x.sum() / 8 ** 0.5)
    # band 0b100: high-pass along the first axis only: (sum over x0=0) - (sum over x0=1)
    torch.testing.assert_close(out[4], (x[0, 0, 0].sum() - x[0, 0, 1].sum()) / 8 ** 0.5)


@pytest.mark.parametrize("shape, levels", [((2, 3, 8, 12), 1), ((2, 3, 8, 12), 2),
                                           ((1, 2, 4, 8, 6), 1), ((1, 1, 8, 8, 8), 2)])
def test_inverse_is_exact_and_the_transform_orthonormal(shape, levels):
    x = torch.randn(shape, generator=gen(0), dtype=torch.float64)
    c = haar_forward(x, levels)
    d = len(shape) - 2
    assert c.shape == (shape[0], shape[1] * 2 ** (d * levels),
                       *[s // 2 ** levels for s in shape[2:]])
    torch.testing.assert_close(haar_inverse(c, levels), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(c.pow(2).sum(), x.pow(2).sum())  # Parseval
    # the channels of input channel c come first, in one block of 2^(d levels)
    block = 2 ** (d * levels)
    torch.testing.assert_close(haar_forward(x[:, 1:2], levels), c[:, block:2 * block])


def test_float32_round_trip_of_a_mask_is_exact_after_rounding():
    m = (torch.rand((1, 1, 16, 16, 16), generator=gen(1)) > 0.5).float()
    back = haar_inverse(haar_forward(m * 2 - 1, 2), 2)
    assert torch.equal(((back + 1) / 2).round(), m)
    assert float((back - (m * 2 - 1)).abs().max()) < 1e-5


def test_odd_sizes_are_refused():
    with pytest.raises(DataError, match="even"):
        haar_forward(torch.zeros(1, 1, 6, 5))

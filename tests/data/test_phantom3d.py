"""The 3D phantom for GED: the raters' GED terms equal their closed form from the lesion field.

Rater k marks {f > t_k}, so the masks are nested and IoU(Y_i, Y_j) = V(max(t_i, t_j)) /
V(min(t_i, t_j)) with V(t) = |{x : f(x) > t}|, counted on the field alone. Hence (d = 1 - IoU, all
pairs including i = j):

    E[d(Y, Y')]        = mean_{i,j} (1 - V(max t) / V(min t)),
    GED(rater 0 alone) = 2 mean_j d(Y_0, Y_j) - 0 - E[d(Y, Y')],
    GED(raters, raters) = 0.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from diffuseg.data import Dataset, make_case, rater_thresholds
from diffuseg.metrics import ged


def closed_form(field: np.ndarray, thresholds) -> tuple[float, float]:
    volume = {t: int((field > t).sum()) for t in thresholds}

    def d(a, b):
        big, small = volume[min(a, b)], volume[max(a, b)]
        return 0.0 if big == 0 else 1.0 - small / big

    d_yy = float(np.mean([[d(a, b) for b in thresholds] for a in thresholds]))
    d_0y = float(np.mean([d(thresholds[0], b) for b in thresholds]))
    return d_yy, 2 * d_0y - d_yy


@pytest.mark.parametrize("n_raters, seed", [(3, 0), (5, 1)])
def test_ged_of_3d_phantom_raters_matches_the_closed_form(n_raters, seed):
    case = make_case(3, 32, n_raters, np.random.default_rng(seed))
    assert case.raters.shape == (n_raters, 32, 32, 32)
    d_yy, ged_rater0 = closed_form(case.lesion_field, rater_thresholds(n_raters))
    assert d_yy > 0.1  # the raters genuinely disagree
    same = ged(case.raters, case.raters)
    assert same["ged"] == pytest.approx(0.0, abs=1e-12)
    assert same["rater_diversity"] == pytest.approx(d_yy, abs=1e-12)
    one = ged(case.raters[:1], case.raters)
    assert one["sample_diversity"] == 0.0
    assert one["ged"] == pytest.approx(ged_rater0, abs=1e-12)


def test_cli_writes_a_3d_phantom_dataset(tmp_path, monkeypatch):
    from diffuseg.cli import main

    out = tmp_path / "ph3"
    monkeypatch.setattr(sys, "argv", ["diffuseg", "phantom", str(out), "--dims", "3",
                                      "--cases", "2", "--size", "16", "--raters", "4"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None)
    dataset = Dataset.open(out)
    assert dataset.info.spatial_dims == 3 and dataset.info.raters == 4 and len(dataset) == 2
    assert dataset.cases[0].load().raters.shape == (4, 16, 16, 16)

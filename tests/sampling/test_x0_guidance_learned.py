"""On briefly trained phantom models (slow: a few minutes of training each on one shared core):
the x0 guidance of the sdf target and LDSeg's decoder guidance move the samples into the mode the
marks are consistent with, beyond what the final projection alone does. The phantom's raters are
the known modes: rater 1 over-segments (threshold 0.3), rater 0 traces the boundary (0.5),
rater 2 under-segments (0.8). The samples are compared with the rater masks on the unmarked
pixels only: there the final projection of the marks changes nothing, so what moves the samples
is the guidance during sampling."""

from __future__ import annotations

import numpy as np
import pytest

from diffuseg.data import Dataset
from diffuseg.data.phantom import write_phantom_dataset
from diffuseg.inference.marks import Constraints
from diffuseg.inference.predictor import Predictor
from diffuseg.review.modes import iou_distances
from diffuseg.training.loop import train
from diffuseg.training.start import build_config

SMALL = ["network.channels=[16,32]", "network.attention_levels=[false,false]",
         "train.batch_size=4", "train.max_steps=150", "train.lr=0.001", "train.warmup_steps=20",
         "train.val_every=1000", "train.ema_decay=0.99", "train.device=cpu", "process.T=100",
         "sample.steps=5"]
# mask: ddpm with RePaint (diffuseg.sampling.repaint), the reference the other two are compared with
METHODS = {"sdf": ["method.target=sdf"], "ldseg": ["method.name=ldseg"], "mask": []}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("learned")
    path = write_phantom_dataset(root / "phantom", n_cases=64, size=32, n_raters=3, seed=3)
    cases = [c.load() for c in Dataset.open(path).cases[40:52]]
    return path, cases


@pytest.fixture(scope="module", params=sorted(METHODS))
def trained(request, data, tmp_path_factory):
    path, cases = data
    config = build_config(None, SMALL + METHODS[request.param], dataset=path)
    run = train(config, path, tmp_path_factory.mktemp(request.param) / "run", progress=False)
    return request.param, Predictor.from_run(run), cases


def nearest_rater(samples: np.ndarray, raters: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """Index of the rater mask closest (1 - IoU) to each sample, both restricted to the
    unmarked pixels ``rest`` (so the marks themselves, which every guided sample holds by
    projection, do not count)."""
    s, r = samples[:, rest], raters[:, rest]
    d = iou_distances(np.concatenate([s, r]))[: len(s), len(s):]
    return d.argmin(1)


def five_marks(region: np.ndarray, seed: int) -> np.ndarray | None:
    if region.sum() < 5:
        return None
    pick = np.random.default_rng(seed).choice(np.flatnonzero(region.ravel()), 5, replace=False)
    marked = np.zeros(region.shape, bool)
    marked.ravel()[pick] = True
    return marked


# direction -> (the rater the marks single out, marks from the raters [R, *sp])
SCENARIOS = {
    # five pixels inside rater 1's mask but outside rater 0's, marked inside
    "inside": (1, lambda r, i: five_marks(r[1] & ~r[0], i), True),
    # five pixels inside rater 0's mask but outside rater 2's, marked outside
    "outside": (2, lambda r, i: five_marks(r[0] & ~r[2], i), False),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_guidance_moves_the_unmarked_rest_into_the_marked_mode(trained, scenario):
    """Every guided sample holds the marks, and on the unmarked pixels the share of samples
    nearest to the rater the marks single out is higher with guidance than without (where the
    final projection alone changes nothing)."""
    method, predictor, cases = trained
    target, draw, inside = SCENARIOS[scenario]
    free_share, guided_share = [], []
    for i, case in enumerate(cases):
        raters = case.raters > 0
        marked = draw(raters, i)
        if marked is None:
            continue
        empty = np.zeros_like(marked)
        marks = Constraints(marked, empty) if inside else Constraints(empty, marked)
        free = predictor.segment(case.image, n_samples=16, steps=5, seed=i)
        guided = predictor.segment(case.image, n_samples=16, steps=5, seed=i, constraints=marks)
        s_free = free.sample_labels()[:, 0].numpy() > 0
        s_guided = guided.sample_labels()[:, 0].numpy() > 0
        assert (s_guided[:, marked] == inside).all()
        free_share.append((nearest_rater(s_free, raters, ~marked) == target).mean())
        guided_share.append((nearest_rater(s_guided, raters, ~marked) == target).mean())
    assert len(guided_share) >= 5
    print(f"{method}, marks {scenario}: share of samples nearest rater {target} on the unmarked "
          f"pixels: unguided {np.mean(free_share):.3f}, guided {np.mean(guided_share):.3f} "
          f"over {len(guided_share)} cases")
    assert np.mean(guided_share) > np.mean(free_share)

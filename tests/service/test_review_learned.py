"""On a briefly trained phantom model (slow: about 3 minutes of training on one shared core):
guided resampling moves the samples into the mode its marks are consistent with, and occlusion
sensitivity concentrates on the lesion. The phantom's raters are the known modes: rater 1
over-segments (threshold 0.3), rater 0 traces the boundary (0.5), rater 2 under-segments (0.8)."""

from __future__ import annotations

import numpy as np
import pytest

from diffuseg.data import Dataset
from diffuseg.data.phantom import over_segmenting_marks, write_phantom_dataset
from diffuseg.inference.marks import Constraints
from diffuseg.inference.predictor import Predictor
from diffuseg.review.explain import occlusion
from diffuseg.review.modes import iou_distances
from diffuseg.training.loop import train
from diffuseg.training.start import build_config

SMALL = ["network.channels=[16,32]", "network.attention_levels=[false,false]",
         "train.batch_size=4", "train.max_steps=150", "train.lr=0.001", "train.warmup_steps=20",
         "train.val_every=1000", "train.ema_decay=0.99", "train.device=cpu", "process.T=100",
         "sample.steps=5"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("learned")
    data = write_phantom_dataset(root / "phantom", n_cases=64, size=32, n_raters=3, seed=3)
    run = train(build_config(None, SMALL, dataset=data), data, root / "run", progress=False)
    cases = [c.load() for c in Dataset.open(data).cases[40:52]]  # not seen more than others
    return Predictor.from_run(run), cases


def nearest_rater(samples: np.ndarray, raters: np.ndarray) -> np.ndarray:
    """Index of the rater mask closest (1 - IoU) to each sample."""
    d = iou_distances(np.concatenate([samples, raters]))[: len(samples), len(samples):]
    return d.argmin(1)


def test_marks_inside_the_over_segmenting_mode_move_the_samples_there(trained):
    """Five pixels that only rater 1 marks (between the 0.3 and 0.5 contours) are fixed inside:
    every guided sample holds them, and the share of samples nearest to rater 1 rises to a
    majority."""
    predictor, cases = trained
    before, after = [], []
    for i, case in enumerate(cases):
        raters = case.raters > 0
        inside = over_segmenting_marks(raters, seed=i)
        if inside is None:
            continue
        marks = Constraints(inside, np.zeros_like(inside))
        free = predictor.segment(case.image, n_samples=16, steps=5, seed=i)
        guided = predictor.segment(case.image, n_samples=16, steps=5, seed=i, constraints=marks)
        s_free = free.sample_labels()[:, 0].numpy() > 0
        s_guided = guided.sample_labels()[:, 0].numpy() > 0
        assert s_guided[:, inside].all()
        before.append((nearest_rater(s_free, raters) == 1).mean())
        after.append((nearest_rater(s_guided, raters) == 1).mean())
    assert len(after) >= 5
    print(f"share of samples in rater 1's mode: {np.mean(before):.3f} -> {np.mean(after):.3f} "
          f"over {len(after)} cases")
    assert np.mean(after) > max(np.mean(before), 0.5)


def test_resampling_jumps_on_the_over_segmenting_mode(trained):
    """The marks of the test above with RePaint's resampling (r = 5 jumps per step) against one
    pass (r = 1), same cases and seeds: every sample holds the marks with both; the shares of
    samples nearest to rater 1 are printed (the measurement in docs/review.md), and r = 5 still
    moves the majority there."""
    predictor, cases = trained
    shares: dict[int, list[float]] = {1: [], 5: []}
    for i, case in enumerate(cases):
        raters = case.raters > 0
        inside = over_segmenting_marks(raters, seed=i)
        if inside is None:
            continue
        for r in shares:
            marks = Constraints(inside, np.zeros_like(inside), jumps=r)
            guided = predictor.segment(case.image, n_samples=16, steps=5, seed=i,
                                       constraints=marks)
            s_guided = guided.sample_labels()[:, 0].numpy() > 0
            assert s_guided[:, inside].all()
            shares[r].append((nearest_rater(s_guided, raters) == 1).mean())
    assert len(shares[1]) >= 5
    print(f"share of samples in rater 1's mode: r=1 {np.mean(shares[1]):.3f}, "
          f"r=5 {np.mean(shares[5]):.3f} over {len(shares[1])} cases "
          f"(per case r=1 {np.round(shares[1], 2).tolist()}, "
          f"r=5 {np.round(shares[5], 2).tolist()})")
    assert np.mean(shares[5]) > 0.5


def test_occlusion_concentrates_on_the_lesion(trained):
    predictor, cases = trained
    for case in cases[:2]:
        maps = occlusion(lambda im: predictor.segment(im, n_samples=4, steps=5, seed=0),
                         case.image, patch=8)
        rows, cols = np.nonzero(case.raters.max(0))
        box = np.zeros(case.raters.shape[1:], bool)
        box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
        for name, values in maps.items():
            ratio = values[box].mean() / values[~box].mean()
            print(f"{name}: mean in lesion box / outside = {ratio:.1f}")
            assert ratio > 3, name

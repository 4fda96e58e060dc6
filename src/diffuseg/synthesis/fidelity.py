"""Is a synthetic set faithful? Checks that need no downloaded network.

- Mask fidelity: a segmentor trained on real data only segments the synthetic images; the Dice
  of its consensus against each image's conditioning mask says whether the anatomy drawn
  follows the mask (DiffBoost's premise). Reported per case and as a mean.
- Intensity statistics: per channel, the 64-bin histograms of real and synthetic pixels over the
  real 0.5-99.5 percentile range, compared by histogram intersection (1 = identical) and the
  1-Wasserstein distance (in intensity units).
- Two-sample test: a logistic-regression classifier on simple image features (intensity
  histogram, gradient-magnitude histogram, radial power spectrum) separates real from synthetic
  images; its 5-fold cross-validated accuracy is reported (0.5 = indistinguishable to it). A
  linear classifier on hand-made features is a weak critic: a high accuracy shows a difference,
  a low one does not prove the sets are alike.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.stats import wasserstein_distance

from diffuseg.data import Dataset
from diffuseg.metrics import dice as dice_score

BINS = 64


def mask_fidelity(predictor, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], *,
                  n_samples: int = 4, seed: int = 0) -> dict:
    """Dice of ``predictor``'s consensus on each synthetic image against its mask."""
    scores = []
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        result = predictor.segment(image, n_samples=n_samples, seed=seed + i)
        scores.append(float(dice_score(result.consensus[0].numpy() > 0, np.asarray(mask) > 0)))
    return {"mean": float(np.mean(scores)), "per_case": scores, "n": len(scores)}


def intensity_statistics(real: Sequence[np.ndarray], synthetic: Sequence[np.ndarray]) -> dict:
    """Histogram intersection and W1 distance per channel (module docstring)."""
    out = []
    for c in range(real[0].shape[0]):
        r = np.concatenate([im[c].ravel() for im in real])
        s = np.concatenate([im[c].ravel() for im in synthetic])
        lo, hi = np.percentile(r, [0.5, 99.5])
        hr = np.histogram(np.clip(r, lo, hi), BINS, (lo, hi))[0] / r.size
        hs = np.histogram(np.clip(s, lo, hi), BINS, (lo, hi))[0] / s.size
        out.append({"channel": c, "intersection": float(np.minimum(hr, hs).sum()),
                    "wasserstein": float(wasserstein_distance(r, s)),
                    "real_mean": float(r.mean()), "synthetic_mean": float(s.mean())})
    return {"channels": out}


def features(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Intensity histogram (16 bins), gradient-magnitude histogram (16) and radial power
    spectrum (8 bands, log) of the first channel, normalised by the real range."""
    x = (np.asarray(image[0], np.float64) - lo) / max(hi - lo, 1e-6)
    hist = np.histogram(np.clip(x, 0, 1), 16, (0, 1))[0] / x.size
    grad = np.sqrt(sum(g ** 2 for g in np.gradient(x)))
    ghist = np.histogram(np.clip(grad, 0, 0.5), 16, (0, 0.5))[0] / x.size
    power = np.abs(np.fft.fftn(x - x.mean())) ** 2
    freq = np.sqrt(sum(f ** 2 for f in np.meshgrid(*[np.fft.fftfreq(s) for s in x.shape],
                                                    indexing="ij")))
    bands = np.digitize(freq, np.linspace(0, 0.5, 9)[1:-1])
    spectrum = np.log1p([power[bands == b].mean() if (bands == b).any() else 0.0
                         for b in range(8)])
    return np.concatenate([hist, ghist, spectrum])


def two_sample_accuracy(real: Sequence[np.ndarray], synthetic: Sequence[np.ndarray], *,
                        folds: int = 5, seed: int = 0) -> dict:
    """k-fold cross-validated accuracy of a logistic regression real vs synthetic on an equal
    number of each (the larger set is subsampled)."""
    n = min(len(real), len(synthetic))
    if n < folds:
        return {"accuracy": None, "n_per_class": n, "note": f"needs >= {folds} images per set"}
    rng = np.random.default_rng(seed)
    real = [real[i] for i in rng.choice(len(real), n, replace=False)]
    synthetic = [synthetic[i] for i in rng.choice(len(synthetic), n, replace=False)]
    lo, hi = np.percentile(np.concatenate([im[0].ravel() for im in real]), [0.5, 99.5])
    x = np.stack([features(im, lo, hi) for im in [*real, *synthetic]])
    y = np.concatenate([np.zeros(n), np.ones(n)])
    order = rng.permutation(2 * n)
    correct = 0
    for fold in np.array_split(order, folds):
        train = np.setdiff1d(order, fold)
        predict = fit_logistic(x[train], y[train])
        correct += int((predict(x[fold]) == y[fold]).sum())
    return {"accuracy": correct / (2 * n), "n_per_class": n, "folds": folds}


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 200):
    """L2-regularised logistic regression on standardised features (L-BFGS, torch)."""
    mean, std = x.mean(0), x.std(0) + 1e-8
    xt = torch.tensor((x - mean) / std, dtype=torch.float64)
    yt = torch.tensor(y, dtype=torch.float64)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt) \
            + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)

    def predict(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            zt = torch.tensor((z - mean) / std, dtype=torch.float64)
            return ((zt @ w + b) > 0).double().numpy()

    return predict


def fidelity_report(synthetic_root: str | Path, run: str | Path | None, *, device: str = "cpu",
                    seed: int = 0, max_cases: int = 200) -> dict:
    """All three checks for a synthetic dataset folder against its source's real training
    images; ``run`` (trained on real data only) gives the mask fidelity. Written to
    ``synthetic_root/fidelity.json``."""
    synthetic_root = Path(synthetic_root)
    synthetic = Dataset.open(synthetic_root)
    meta = synthetic.info.extra.get("synthetic") or {}
    source = Dataset.open(meta.get("source_dataset", ""))
    by_id = {case.case_id: case for case in source.cases}
    real = [by_id[c].load().image for c in meta.get("source_cases", [])[:max_cases]
            if c in by_id]
    loaded = [case.load() for case in synthetic.cases[:max_cases]]
    images = [d.image for d in loaded]
    report = {"synthetic": str(synthetic_root), "n_synthetic": len(images), "n_real": len(real),
              "intensity": intensity_statistics(real, images),
              "two_sample": two_sample_accuracy(real, images, seed=seed)}
    if run is not None:
        from diffuseg.inference.predictor import Predictor

        predictor = Predictor.from_run(run, device=device)
        report["mask_fidelity"] = mask_fidelity(predictor, images,
                                                [d.raters[0] for d in loaded], seed=seed)
        report["mask_fidelity"]["run"] = str(run)
    tmp = synthetic_root / "fidelity.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(synthetic_root / "fidelity.json")
    return report

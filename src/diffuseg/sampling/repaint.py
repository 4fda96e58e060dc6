"""Guided resampling: new samples that honour pixels a reviewer marked as certainly inside or
certainly outside the structure (or, for a multi-class run, one class). The marks themselves (files,
checks, the grid) are read in ``diffuseg.inference.marks``; this module holds the sampling maths.

The reverse process is conditioned on the known pixels as in RePaint (Lugmayr et al., CVPR 2022,
eq. 8): after every step t -> t_prev, the known region of x_{t_prev} is replaced by a forward-
noised copy of the known values, x_known ~ q(x_{t_prev} | x0_known), while the unknown region
keeps the model's step; at the last step (t_prev = -1) the known pixels get x0_known itself, so
every returned sample holds them exactly. For a Gaussian process q_sample draws
sqrt(ab) x0 + sqrt(1 - ab) eps; for a Bernoulli process it draws the known pixels' state from
B(ab x0 + (1 - ab) / 2) (or the process's own q(x_t | x0), e.g. HiDiff's anchored prior).

**Resampling jumps** (RePaint Alg. 1, U resamplings, here ``jumps`` = r): with r > 1, after the
step t -> t_prev (and the replacement) the state goes back to t by the process's forward
transition q(x_t | x_{t_prev}) (``process.forward_step``; Gaussian: sqrt(ab_t / ab_p) x +
sqrt(1 - ab_t / ab_p) eps; Bernoulli: B(a x + (1 - a) p), a = ab_t / ab_p) and the step is
redone, r times per step; the last step (to t = -1) is done once, as in RePaint's ``t > 1``.
The jump length is one sampler step (the strided DDIM / DDPM timesteps), not RePaint's j = 10
original steps. r = ``sample.resample_jumps`` (default 1: one pass per step) or
``Constraints.jumps``; each step then costs r network calls.

**Wavelet methods** (``wdm``): the Haar transform (diffuseg.methods.wavelets) is orthonormal, so the
forward-noised coefficients sqrt(ab) H x0 + sqrt(1 - ab) eps map back to pixels as
sqrt(ab) x0 + sqrt(1 - ab) H^T eps, with H^T eps again standard Gaussian: the pixels follow the
same Gaussian process. The replacement is therefore done exactly in pixel space: inverse-
transform x_{t_prev}, replace the known pixels by q_sample of their encoded values (2m - 1),
transform back (``repaint(..., to_pixels=, from_pixels=)``).

**Multi-class runs** (K = ``num_classes`` > 1, Gaussian one-hot target; the Bernoulli methods
are binary only): the K channels are diffused independently, so conditioning on a subset of the
channels of a pixel is exact RePaint. A pixel marked *inside* has every channel known: the one-hot
of ``label``. A pixel marked *outside* has only channel ``label`` known (= 0): "not this class",
the other classes stay free (it is not forced to background). With K = 1, ``label`` must be 1.

**The final projection** (``KnownPixels.hold``, applied to the returned probabilities): the
known channels get their values, and at an outside pixel of a K > 1 run the free channels are
rescaled to sum to one (uniform when they are all zero). After the exact last-step replacement
this only removes float round-off (the Haar round trip) and the decoder's uniform fallback where
all channels are zero. A run that resamples 3D inputs to ``data.spacing`` guides on the model
grid (the marks resampled there, nearest) and applies the projection again to the samples
mapped back (trilinear) to the input grid, so every returned sample holds the marks there too.

Which methods support it: every method that diffuses the mask itself, or an orthonormal
transform of it, with a Gaussian or Bernoulli process: ``ddpm``, ``cimd`` and ``medsegdiff_v2``
with ``method.target = mask``, ``wdm`` (binary or K > 1), ``berdiff``, ``hidiff`` (binary).
Methods that diffuse another space have no known value to paint in (``ldseg``: a partial mask
has no latent code; the ``sdf`` target: the signed distance of a pixel depends on the unknown
rest of the mask); they are guided through their x0 estimate instead, in
``diffuseg.sampling.x0_guidance`` (binary runs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from diffuseg.errors import ConfigError
from diffuseg.sampling.samplers import (
    Constrain,  # (x_{t_prev}, t_prev) -> x_{t_prev} with known set
)


@dataclass(frozen=True)
class KnownPixels:
    """Known values ``values`` in {0, 1} where ``mask`` is True; both ``[B, C, *sp]`` with C = 1
    (binary) or K (a per-channel mask, module docstring). ``jumps``: RePaint resamplings per
    sampler step (1 = none). ``scale``: step size of the decoder-guided methods (None: the
    run's own)."""

    values: Tensor
    mask: Tensor
    jumps: int = 1
    scale: float | None = None

    def pad(self, flat_pads: list[int]) -> KnownPixels:
        """Zero padding (padded pixels are unknown), as ``F.pad``'s flat list."""
        f = torch.nn.functional.pad
        return replace(self, values=f(self.values, flat_pads),
                       mask=f(self.mask.float(), flat_pads) > 0.5)

    def hold(self, probabilities: Tensor) -> Tensor:
        """The final projection (module docstring) of probabilities ``[S, B, C, *sp]`` (or
        ``[B, C, *sp]``): known channels take their values; with C > 1 the free channels of a
        marked pixel are rescaled to sum to 1 - (the known ones), uniform where they are all 0.
        Unmarked pixels are returned unchanged."""
        p = probabilities
        mask = self.mask.to(p.device)
        values = self.values.to(device=p.device, dtype=p.dtype)
        out = torch.where(mask, values, p)
        if p.shape[-mask.ndim + 1] == 1:
            return out
        axis = p.ndim - mask.ndim + 1  # the class axis of p (the mask's is 1)
        free = ~mask
        rest = (1 - (values * mask).sum(1, keepdim=True)).clamp(min=0)
        free_sum = (out * free).sum(axis, keepdim=True)
        n_free = free.sum(1, keepdim=True).clamp(min=1)
        scaled = torch.where(free_sum > 0, out * rest / free_sum.clamp_min(1e-12), rest / n_free)
        touched = mask.any(1, keepdim=True)  # a marked pixel
        return torch.where(free & touched, scaled, out)


def check_supported(method_name: str, num_classes: int, target: object | None) -> None:
    """Raise a ConfigError naming the reason when the method cannot be guided (multi-class runs
    can: per-channel marks; the Bernoulli methods refuse K > 1 when they are built)."""
    signed = getattr(target, "signed", False)  # the sdf target: diffuseg.sampling.x0_guidance
    if signed and num_classes != 1:
        raise ConfigError(f"guided resampling of the sdf target needs a binary model "
                          f"(num_classes=1); this '{method_name}' run has "
                          f"num_classes={num_classes}; use method.target=mask")
    if target is not None and not (getattr(target, "pointwise", False) or signed):
        raise ConfigError(f"guided resampling is not available for method '{method_name}' with "
                          f"target '{type(target).__name__}': the diffused value of a pixel "
                          "depends on unknown pixels; use method.target=mask")


def repaint(process, known: KnownPixels, n_samples: int, *,
            encode: Callable[[Tensor], Tensor] = lambda m: m,
            generator: torch.Generator | None = None,
            to_pixels: Callable[[Tensor], Tensor] | None = None,
            from_pixels: Callable[[Tensor], Tensor] | None = None) -> Constrain:
    """The RePaint replacement (module docstring) for ``n_samples`` chains per image, sample-major
    like the methods' batches; ``encode`` maps {0, 1} masks to the diffused space (Gaussian mask
    target: 2m - 1). ``to_pixels`` / ``from_pixels``: an orthonormal map from the diffused state
    to pixels and its inverse (wdm: the inverse and forward Haar transform); the replacement is
    done on the pixels."""
    reps = (n_samples, *([1] * (known.values.ndim - 1)))
    x0_known = encode(known.values.repeat(*reps))
    mask = known.mask.repeat(*reps)

    def constrain(x: Tensor, t_prev: int) -> Tensor:
        if t_prev < 0:
            value = x0_known
        else:
            value = process.q_sample(x0_known, t_prev, generator=generator)
        pixels = x if to_pixels is None else to_pixels(x)
        pixels = torch.where(mask.to(x.device), value.to(pixels.dtype).to(x.device), pixels)
        return pixels if from_pixels is None else from_pixels(pixels)

    return constrain

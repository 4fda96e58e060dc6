"""Guided resampling: new samples that honour pixels a reviewer marked as certainly inside or
certainly outside the structure.

The reverse process is conditioned on the known pixels as in RePaint (Lugmayr et al., CVPR 2022,
eq. 8): after every step t -> t_prev, the known region of x_{t_prev} is replaced by a forward-
noised copy of the known values, x_known ~ q(x_{t_prev} | x0_known), while the unknown region
keeps the model's step; at the last step (t_prev = -1) the known pixels get x0_known itself, so
every returned sample holds them exactly. For a Gaussian process q_sample draws
sqrt(ab) x0 + sqrt(1 - ab) eps; for a Bernoulli process it draws the known pixels' state from
B(ab x0 + (1 - ab) / 2) (or the process's own q(x_t | x0), e.g. HiDiff's anchored prior).
RePaint's resampling jumps (r > 1) are not applied: one pass per step.

Which methods support it: every method that diffuses the mask itself (binary, ``num_classes = 1``)
with a Gaussian or Bernoulli process: ``ddpm``, ``cimd`` and ``medsegdiff_v2`` with
``method.target = mask``, ``berdiff``, ``hidiff``. Methods that diffuse another space have no
known value to paint in (``ldseg``: a partial mask has no latent code; the ``sdf`` target: the
signed distance of a pixel depends on the unknown rest of the mask); they are guided through
their x0 estimate instead, in ``diffuseg.guidance_latent``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diffuseg.errors import ConfigError, DataError
from diffuseg.samplers import Constrain  # (x_{t_prev}, t_prev) -> x_{t_prev} with known set


@dataclass(frozen=True)
class Constraints:
    """Reviewer marks on the image grid (spatial shape, no channel axis): pixels certainly inside
    and certainly outside the foreground."""

    inside: np.ndarray
    outside: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, ...]) -> Constraints:
        return cls(np.zeros(shape, bool), np.zeros(shape, bool))

    def check(self, shape: tuple[int, ...]) -> None:
        for name, mask in (("inside", self.inside), ("outside", self.outside)):
            if tuple(mask.shape) != tuple(shape):
                raise DataError(f"the {name} mask has shape {tuple(mask.shape)} but the image is "
                                f"{tuple(shape)}; draw the marks on the image's own grid")
        both = int(np.logical_and(self.inside, self.outside).sum())
        if both:
            raise DataError(f"{both} pixel(s) are marked both inside and outside; clear one mark")

    def known(self, device: torch.device | str = "cpu") -> KnownPixels:
        """As tensors ``[1, 1, *spatial]`` (batch of one binary image)."""
        inside = torch.from_numpy(np.asarray(self.inside, bool))
        outside = torch.from_numpy(np.asarray(self.outside, bool))
        return KnownPixels(values=inside.float()[None, None].to(device),
                           mask=(inside | outside)[None, None].to(device))


@dataclass(frozen=True)
class KnownPixels:
    """Known foreground values ``values`` in {0, 1} where ``mask`` is True; both ``[B, 1, *sp]``."""

    values: Tensor
    mask: Tensor

    def pad(self, flat_pads: list[int]) -> KnownPixels:
        """Zero padding (padded pixels are unknown), as ``F.pad``'s flat list."""
        f = torch.nn.functional.pad
        return KnownPixels(f(self.values, flat_pads), f(self.mask.float(), flat_pads) > 0.5)


def check_supported(method_name: str, num_classes: int, target: object | None) -> None:
    """Raise a ConfigError naming the reason when the method cannot be guided."""
    if num_classes != 1:
        raise ConfigError(f"guided resampling needs a binary model (num_classes=1); this "
                          f"'{method_name}' run has num_classes={num_classes}")
    if target is not None and not (getattr(target, "pointwise", False)
                                   or getattr(target, "signed", False)):  # guidance_latent
        raise ConfigError(f"guided resampling is not available for method '{method_name}' with "
                          f"target '{type(target).__name__}': the diffused value of a pixel "
                          "depends on unknown pixels; use method.target=mask")


def repaint(process, known: KnownPixels, n_samples: int, *,
            encode: Callable[[Tensor], Tensor] = lambda m: m,
            generator: torch.Generator | None = None) -> Constrain:
    """The RePaint replacement (module docstring) for ``n_samples`` chains per image, sample-major
    like the methods' batches; ``encode`` maps {0, 1} masks to the diffused space (Gaussian mask
    target: 2m - 1)."""
    reps = (n_samples, *([1] * (known.values.ndim - 1)))
    x0_known = encode(known.values.repeat(*reps))
    mask = known.mask.repeat(*reps)

    def constrain(x: Tensor, t_prev: int) -> Tensor:
        if t_prev < 0:
            value = x0_known
        else:
            value = process.q_sample(x0_known, t_prev, generator=generator)
        return torch.where(mask.to(x.device), value.to(x.dtype).to(x.device), x)

    return constrain


def read_constraints(inside: str | Path | None, outside: str | Path | None
                     ) -> Constraints | None:
    """``--inside`` / ``--outside`` mask files (any mask format diffuseg reads; nonzero = marked);
    None when neither is given; a missing one is empty."""
    if inside is None and outside is None:
        return None
    from diffuseg.io import read_mask

    masks = {}
    for name, path in (("inside", inside), ("outside", outside)):
        if path is not None:
            if not Path(path).is_file():
                raise DataError(f"--{name} mask '{path}' does not exist; check the path")
            masks[name] = read_mask(path)[0] > 0
    shape = next(iter(masks.values())).shape
    return Constraints(masks.get("inside", np.zeros(shape, bool)),
                       masks.get("outside", np.zeros(shape, bool)))

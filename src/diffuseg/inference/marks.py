"""Reviewer marks for guided resampling: pixels certainly inside or certainly outside class
``label``, read from mask files (``--inside`` / ``--outside``) or sent by the review page, checked,
and handed to the methods as ``KnownPixels`` (the RePaint maths: ``diffuseg.sampling.repaint``;
the x0 guidance of latent and sdf methods: ``diffuseg.sampling.x0_guidance``)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffuseg.errors import ConfigError, DataError
from diffuseg.sampling.repaint import KnownPixels

MAX_JUMPS = 100  # RePaint resamplings per step; each costs one network call per step
MAX_SCALE = 100.0  # decoder-guidance step size (zeta); larger only overshoots the marks

@dataclass(frozen=True)
class Constraints:
    """Reviewer marks on the image grid (spatial shape, no channel axis): pixels certainly inside
    and certainly outside class ``label`` (the foreground, 1, for a binary run). ``jumps``: RePaint
    resamplings per step (None: the run's ``sample.resample_jumps``). ``scale``: the step size
    of decoder-guided methods (ldseg's DPS zeta, ``diffuseg.sampling.x0_guidance``; None: the run's
    ``method.options.guidance_scale``); methods that hold the marks by replacement have none."""

    inside: np.ndarray
    outside: np.ndarray
    label: int = 1
    jumps: int | None = None
    scale: float | None = None

    @classmethod
    def empty(cls, shape: tuple[int, ...]) -> Constraints:
        return cls(np.zeros(shape, bool), np.zeros(shape, bool))

    def check(self, shape: tuple[int, ...], num_classes: int = 1) -> None:
        for name, mask in (("inside", self.inside), ("outside", self.outside)):
            if tuple(mask.shape) != tuple(shape):
                raise DataError(f"the {name} mask has shape {tuple(mask.shape)} but the image is "
                                f"{tuple(shape)}; draw the marks on the image's own grid")
        both = int(np.logical_and(self.inside, self.outside).sum())
        if both:
            raise DataError(f"{both} pixel(s) are marked both inside and outside; clear one mark")
        check_label(self.label, num_classes)
        if self.jumps is not None:
            check_jumps(self.jumps)
        if self.scale is not None:
            check_scale(self.scale)

    def known(self, device: torch.device | str = "cpu", num_classes: int = 1,
              jumps: int = 1) -> KnownPixels:
        """As tensors ``[1, C, *spatial]`` (batch of one image; C = 1 for a binary run, else K):
        inside pixels know every channel (the one-hot of ``label``), outside pixels know channel
        ``label`` only (= 0); K = 1: the foreground channel, 1 inside and 0 outside.
        ``self.jumps`` wins over ``jumps``."""
        inside = torch.from_numpy(np.asarray(self.inside, bool))
        outside = torch.from_numpy(np.asarray(self.outside, bool))
        if num_classes == 1:
            values, mask = inside.float()[None], (inside | outside)[None]
        else:
            channel = (torch.arange(num_classes) == self.label).view(-1, *[1] * inside.ndim)
            values = (inside & channel).float()
            mask = inside | (outside & channel)
        return KnownPixels(values=values[None].to(device), mask=mask[None].to(device),
                           jumps=self.jumps if self.jumps is not None else jumps,
                           scale=self.scale)


def check_label(label: Any, num_classes: int) -> None:
    if num_classes == 1:
        if label != 1:
            raise ConfigError(f"label={label!r}: a binary run (num_classes=1) has one class, the "
                              "foreground; use label 1 (mark background as outside)")
    elif isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < num_classes:
        raise ConfigError(f"label={label!r} is not a class of this run; use 0..{num_classes - 1}")


def check_scale(scale: Any) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (
            0.0 <= float(scale) <= MAX_SCALE):
        raise ConfigError(f"guidance scale={scale!r} is out of range; use 0..{MAX_SCALE:g} "
                          "(0 = no guidance before the final projection; ldseg's default 1)")


def check_jumps(jumps: Any) -> None:
    if isinstance(jumps, bool) or not isinstance(jumps, int) or not 1 <= jumps <= MAX_JUMPS:
        raise ConfigError(f"resampling jumps={jumps!r} is out of range; use 1..{MAX_JUMPS} "
                          "(1 = one pass per step; RePaint used 10)")


def on_grid(constraints: Constraints, geometry, spacing) -> Constraints:
    """The marks resampled (nearest) onto the grid of ``spacing`` that the Predictor segments a
    ``data.spacing`` run on (``diffuseg.data.resample.resample_to_spacing``)."""
    from diffuseg.data.resample import resample_to_spacing

    stacked = np.stack([constraints.inside, constraints.outside]).astype(np.uint8)
    moved, _ = resample_to_spacing(stacked, geometry, spacing, "nearest")
    return replace(constraints, inside=moved[0] > 0, outside=moved[1] > 0)


def read_constraints(inside: str | Path | None, outside: str | Path | None, *,
                     label: int = 1, jumps: int | None = None,
                     scale: float | None = None) -> Constraints | None:
    """``--inside`` / ``--outside`` mask files (any mask format diffuseg reads; nonzero = marked);
    None when neither is given; a missing one is empty. ``label``: the class the marks are about
    (``--label``); ``jumps``: RePaint resamplings per step (``--jumps``); ``scale``: the
    decoder-guidance step size (``--guidance-scale``, ldseg only)."""
    if inside is None and outside is None:
        if jumps is not None or scale is not None:
            option = "--jumps" if jumps is not None else "--guidance-scale"
            raise DataError(f"{option} applies to guided resampling; give --inside and/or "
                            "--outside marks, or drop it")
        return None
    from diffuseg.io import read_mask

    masks = {}
    for name, path in (("inside", inside), ("outside", outside)):
        if path is not None:
            if not Path(path).is_file():
                raise DataError(f"--{name} mask '{path}' does not exist; check the path")
            masks[name] = read_mask(path)[0] > 0
    shape = next(iter(masks.values())).shape
    if jumps is not None:
        check_jumps(jumps)
    if scale is not None:
        check_scale(scale)
    return Constraints(masks.get("inside", np.zeros(shape, bool)),
                       masks.get("outside", np.zeros(shape, bool)), label=label, jumps=jumps,
                       scale=scale)

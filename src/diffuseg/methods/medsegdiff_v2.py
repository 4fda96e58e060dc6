"""MedSegDiff-V2: "Diffusion-based medical image segmentation with transformer" (Wu et al., AAAI
2024), as a method around ``networks/medsegdiff_v2.py``'s ``MedSegDiffV2``.

Training is that of ``ddpm`` (Gaussian process, mean squared error on the process's training target,
Ho et al. 2020 eq. 14) plus the supervision of the condition model's anchor:

    L = ||f(x_t, t, I) - target||^2 + anchor_weight * DiceCE(anchor_logits(I), Y)

(MONAI ``DiceCELoss``: sigmoid Dice + BCE for one channel, softmax Dice + CE for K labels). The
released code adds its anchor ("calibration") loss with weight 10, the default of ``anchor_weight``
(``MedSegDiffV2Options``). ``method.target`` picks what is diffused (the mask, or its signed
distance).

The network's spectral filters (FF-Parser, SS-Former) have one weight per frequency of the
training patch, so it accepts exactly ``data.patch_size``. ``sample`` pads smaller inputs up to the
patch (replicate padding) and covers larger ones with overlapping patch-sized windows (overlap 1/4,
Gaussian blending as MONAI's ``sliding_window_inference``), at every sampler step, so each sample is
one coherent x_t over the whole image. The image-only part (``MedSegDiffV2.encode_condition``: the
condition encoder, the anchor and the FF-parsed semantic features) is computed once per image and
window before the first step and reused by every step and every sample; only
``MedSegDiffV2.denoise`` runs per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map, dense_patch_slices
from torch import Tensor, nn

from diffuseg.config import RunConfig
from diffuseg.errors import DataError
from diffuseg.methods.base import Method, one_hot, register
from diffuseg.methods.parts import at_least, dice_ce, network_kwargs, noised, regression_loss
from diffuseg.methods.targets import build_target
from diffuseg.networks import MedSegDiffV2
from diffuseg.sampling.repaint import KnownPixels
from diffuseg.sampling.samplers import Denoise


@dataclass
class MedSegDiffV2Options:
    anchor_weight: float = 10.0  # weight of the anchor's DiceCE; the released code uses 10

    def __post_init__(self) -> None:
        at_least(self, 0, "anchor_weight")


OVERLAP = 0.25  # of the window, between neighbouring windows


def window_slices(spatial: Sequence[int], window: Sequence[int]) -> list[tuple[slice, ...]]:
    """Patch-sized windows covering ``spatial`` (each size >= the window's), overlapping by
    ``OVERLAP``, the last one flush with the far edge (MONAI's scan)."""
    interval = [w if s == w else max(int(w * (1 - OVERLAP)), 1)
                for s, w in zip(spatial, window, strict=True)]
    return [tuple(slice(int(s.start), int(s.stop)) for s in sl)
            for sl in dense_patch_slices(tuple(spatial), tuple(window), interval)]


def pad_to(image: Tensor, size: Sequence[int]) -> Tensor:
    """Replicate-pad every spatial axis at its end up to at least ``size``."""
    pads = [max(w - s, 0) for s, w in zip(image.shape[2:], size, strict=True)]
    if not any(pads):
        return image
    return F.pad(image, [v for p in reversed(pads) for v in (0, p)], mode="replicate")


def build_network(config: RunConfig) -> MedSegDiffV2:
    return MedSegDiffV2(**network_kwargs(
        config, in_channels=config.num_classes, cond_channels=config.in_channels,
        out_channels=config.num_classes, spatial_size=config.data.patch_size))


@register("medsegdiff_v2")
class MedSegDiffV2Method(Method):
    """Gaussian diffusion with the MedSegDiff-V2 denoiser and its anchor loss."""

    process_kind = "gaussian"
    onnx_exportable = True  # its per-step denoiser exports (diffuseg.inference.onnx)
    guidable = True  # sample(known=): guided resampling
    options_type = MedSegDiffV2Options

    def __init__(self, config: RunConfig):
        super().__init__(config)
        self.anchor_weight = self.options.anchor_weight
        self.patch = tuple(config.data.patch_size)
        self.target = build_target(config.method.target)
        self.denoiser = build_network(config)
        self.criterion = dice_ce(config.num_classes)

    def networks(self) -> dict[str, nn.Module]:
        return {"denoiser": self.denoiser}

    def loss(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None
             ) -> dict[str, Tensor]:
        image = batch["image"]
        if tuple(image.shape[2:]) != self.patch:
            raise DataError(f"training batch of spatial size {list(image.shape[2:])}: "
                            f"medsegdiff_v2 trains on data.patch_size={list(self.patch)} crops")
        y = one_hot(batch["mask"], self.config.num_classes)
        x0 = self.target.encode(y)
        t, noise, x_t = noised(self.process, x0, generator)
        out, anchor_logits = self.denoiser(x_t, t, image)
        mse = regression_loss(self.process, out, x0, noise, t)
        anchor = self.criterion(anchor_logits.float(), y)
        return {"loss": mse + self.anchor_weight * anchor, "mse": mse, "anchor": anchor}

    def denoise_fn(self, image: Tensor, n_samples: int) -> Denoise:
        """The sampler's ``(x_t, t) -> output`` over ``n_samples`` sample-major copies of
        ``image`` (spatial size >= the patch): the condition of every window is encoded here,
        once; each step runs ``denoise`` per window and blends the windows."""
        windows = window_slices(image.shape[2:], self.patch)
        conditions = [self.denoiser.encode_condition(image[(..., *w)]) for w in windows]
        weight = compute_importance_map(self.patch, mode="gaussian", device=image.device)
        reps = [n_samples] + [1] * image.ndim

        def repeat(condition: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
            return tuple(c.repeat(*reps[: c.ndim]) for c in condition)  # type: ignore[return-value]

        def denoise(x_t: Tensor, t: Tensor) -> Tensor:
            if len(windows) == 1:
                return self.denoiser.denoise(x_t, t, repeat(conditions[0])).to(x_t.dtype)
            out = torch.zeros(x_t.shape, device=x_t.device)
            total = torch.zeros(x_t.shape[2:], device=x_t.device)
            for w, condition in zip(windows, conditions, strict=True):
                pred = self.denoiser.denoise(x_t[(..., *w)], t, repeat(condition))
                out[(..., *w)] += weight * pred.float()
                total[w] += weight
            return (out / total).to(x_t.dtype)

        return denoise

    @torch.no_grad()
    def sample(self, image: Tensor, n_samples: int, *, steps: int | None = None,
               generator: torch.Generator | None = None,
               known: KnownPixels | None = None) -> Tensor:
        """``[S, B, K, *sp]`` probabilities; inputs of any size (padded up to the patch, or in
        windows); the sampler of ``config.sample``. ``known``: pixels every sample holds (guided
        resampling), padded with the image (padded pixels unknown)."""
        b, spatial = image.shape[0], image.shape[2:]
        padded = pad_to(image, self.patch)
        shape = (n_samples * b, self.config.num_classes, *padded.shape[2:])
        x_T = self.process.prior_sample(shape, generator=generator, device=image.device)
        if known is not None:
            extra = [w - s for s, w in zip(spatial, padded.shape[2:], strict=True)]
            known = known.pad([v for p in reversed(extra) for v in (0, p)])
        x0 = self.diffuse(self.denoise_fn(padded, n_samples), x_T, steps, generator=generator,
                          clip=self.target.clip, known=known)
        probs = self.target.decode(x0)[(..., *(slice(0, s) for s in spatial))]
        return probs.reshape(n_samples, b, *probs.shape[1:])

"""The parts every method is built from: networks from ``NetworkConfig`` (keyword arguments only),
the conditioned-denoiser closure, repeating an image for S samples, windows, the Gaussian loss
terms, Dice + cross-entropy, and checks of typed options.

Methods are leaves: a method module imports this module, ``base`` and ``targets``, never another
method module (tests/contracts/test_methods.py checks it), so that each paradigm reads on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from monai.losses import DiceCELoss
from torch import Tensor, nn

from diffuseg.config import RunConfig
from diffuseg.errors import ConfigError
from diffuseg.networks import ConditionalUNet, SegmentationUNet
from diffuseg.sampling.samplers import Denoise

if TYPE_CHECKING:
    from diffuseg.methods.base import Method

# -- networks ----------------------------------------------------------------------------------


def network_kwargs(config: RunConfig, **overrides: Any) -> dict[str, Any]:
    """The U-Net keyword arguments of ``config.network`` (and ``spatial_dims``), ``overrides``
    replacing any of them."""
    net = config.network
    return {"spatial_dims": config.spatial_dims, "channels": net.channels,
            "num_res_blocks": net.num_res_blocks, "attention_levels": net.attention_levels,
            "norm_groups": net.norm_groups, "dropout": net.dropout, "num_heads": net.num_heads,
            **overrides}


def build_denoiser(config: RunConfig, *, in_channels: int | None = None,
                   cond_channels: int | None = None, out_channels: int | None = None,
                   emb_channels: int = 0) -> ConditionalUNet:
    """The ``ConditionalUNet`` of ``config.network``: by default it denoises K = num_classes
    channels conditioned on the image's in_channels; ``emb_channels`` > 0 adds a vector input
    (FiLM through the time embedding)."""
    return ConditionalUNet(**network_kwargs(
        config, in_channels=config.num_classes if in_channels is None else in_channels,
        cond_channels=config.in_channels if cond_channels is None else cond_channels,
        out_channels=config.num_classes if out_channels is None else out_channels,
        emb_channels=emb_channels))


def build_segmentor(config: RunConfig, *, dropout: float | None = None) -> SegmentationUNet:
    """The discriminative ``SegmentationUNet`` of ``config.network`` (image -> K logits);
    ``dropout`` overrides ``network.dropout``."""
    extra = {} if dropout is None else {"dropout": dropout}
    return SegmentationUNet(**network_kwargs(config, in_channels=config.in_channels,
                                             out_channels=config.num_classes, **extra))


# -- sampling ----------------------------------------------------------------------------------


def repeat_samples(x: Tensor, n_samples: int) -> Tensor:
    """``[B, ...]`` -> ``[S*B, ...]``, sample-major (sample s is rows s*B .. s*B + B - 1)."""
    return x.repeat(n_samples, *([1] * (x.ndim - 1)))


def windowed(method: Method, fn: Callable[[Tensor, Tensor | None], Tensor], inputs: Tensor,
             emb: Tensor | None = None) -> Tensor:
    """``fn(inputs, emb)`` whole, or through ``method.windowed`` (``windows.sliding_blend``) when
    the input is larger than ``method.window``. A per-example embedding ``emb [B, E]`` cannot
    follow the windows (they mix examples in a window batch), so then each example is
    windowed on its own with its own row of ``emb``."""
    spatial = inputs.shape[2:]
    if method.window is None or all(s <= w for s, w in zip(spatial, method.window, strict=True)):
        return fn(inputs, emb)
    if emb is None:
        return method.windowed(lambda w: fn(w, None), inputs)
    outs = []
    for i in range(inputs.shape[0]):
        row = emb[i : i + 1]
        outs.append(method.windowed(lambda w, r=row: fn(w, r.expand(w.shape[0], -1)),
                                    inputs[i : i + 1]))
    return torch.cat(outs)


def conditioned_denoiser(method: Method, net: nn.Module, cond: Tensor,
                         emb: Tensor | None = None) -> Denoise:
    """The sampler's ``(x_t, t) -> net(x_t, t, cond[, emb=emb])`` with ``cond`` (and the
    per-example vector ``emb``) fixed, through ``windowed`` (sliding windows when the input is
    larger than ``method.window``)."""

    def denoise(x_t: Tensor, t: Tensor) -> Tensor:
        k = x_t.shape[1]

        def window(inputs: Tensor, e: Tensor | None) -> Tensor:
            tb = t[:1].expand(inputs.shape[0])  # the samplers give every example the same t
            extra = {} if e is None else {"emb": e}
            return net(inputs[:, :k], tb, inputs[:, k:], **extra).to(inputs.dtype)

        return windowed(method, window, torch.cat([x_t, cond.to(x_t.dtype)], dim=1), emb)

    return denoise


def probabilities(logits: Tensor) -> Tensor:
    """Sigmoid for one (foreground) channel, softmax over channels otherwise; float32."""
    logits = logits.float()
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


# -- losses ------------------------------------------------------------------------------------


def noised(process: Any, x0: Tensor, generator: torch.Generator | None
           ) -> tuple[Tensor, Tensor, Tensor]:
    """``(t, noise, x_t)`` for the Gaussian loss: t ~ U{0..T-1} per example, then eps ~ N(0, I),
    x_t = q_sample(x0, t, eps) (Ho et al. 2020, eq. 4); drawn in that order from ``generator``."""
    t = process.sample_t(x0.shape[0], generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device)
    return t, noise, process.q_sample(x0, t, noise=noise)


def regression_loss(process: Any, out: Tensor, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """Mean squared error of the network output against the process's training target (eps, x0
    or v): Ho et al. 2020, eq. 14, the "simple" loss."""
    return (out.float() - process.training_target(x0, noise, t)).pow(2).mean()


def dice_ce(num_classes: int) -> DiceCELoss:
    """Soft Dice (batch Dice, background excluded for K > 1, as nnU-Net) + cross-entropy
    (MONAI ``DiceCELoss``: sigmoid for one channel, softmax over K labels)."""
    binary = num_classes == 1
    return DiceCELoss(sigmoid=binary, softmax=not binary, include_background=binary, batch=True)


# -- self-conditioning (Chen, Zhang & Hinton 2023, "Analog Bits", section 3.2, Alg. 1 and 2) --


def self_condition_estimate(process: Any, net: Callable[[Tensor], Tensor], x_t: Tensor,
                            t: Tensor, clip: float, generator: torch.Generator | None,
                            rate: float = 0.5) -> Tensor:
    """Training (Alg. 1): the estimate fed back as the network's extra input. With probability
    ``rate`` (one coin per batch, as Alg. 1) a first pass ``net(zeros)`` without gradient gives
    x0_hat = predict_x0(x_t, t, out) clamped to [-clip, clip]; otherwise zeros, which is what the
    first sampling step sees. The coin is drawn from ``generator`` before anything else."""
    coin = torch.rand(1, generator=generator, device=x_t.device).item()
    previous = torch.zeros_like(x_t)
    if coin < rate:
        with torch.no_grad():
            previous = process.predict_x0(x_t, t, net(previous).float()).clamp(-clip, clip)
    return previous.detach()


class SelfConditioned:
    """Sampling (Alg. 2): a ``Denoise`` whose every call feeds ``net(x_t, t, previous)`` the
    x0 estimate of its previous call (zeros at the first call or when the batch changes shape),
    so the samplers stay stateless functions of ``denoise(x_t, t)``."""

    def __init__(self, process: Any, net: Callable[[Tensor, Tensor, Tensor], Tensor],
                 clip: float) -> None:
        self.process, self.net, self.clip = process, net, clip
        self.previous: Tensor | None = None

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        if self.previous is None or self.previous.shape != x_t.shape:
            self.previous = torch.zeros_like(x_t)
        out = self.net(x_t, t, self.previous)
        x0_hat = self.process.predict_x0(x_t, t, out.float()).clamp(-self.clip, self.clip)
        self.previous = x0_hat.to(x_t.dtype)
        return out


# -- options -----------------------------------------------------------------------------------


def at_least(options: Any, minimum: float, *names: str) -> None:
    """Refuse options below ``minimum`` (ConfigError naming the option and its value)."""
    for name in names:
        value = getattr(options, name)
        if value < minimum:
            bound = "at least 1" if minimum == 1 else f">= {minimum}"
            raise ConfigError(f"method.options.{name}={value} must be {bound}")

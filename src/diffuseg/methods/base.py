"""What every method shares: the mask encoding, the method protocol and the registry.

A method combines a process, a network and a loss. It never branches on the type of another
component; a method that needs another space (latent, signed distance) wraps the encoding.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffuseg.config import RunConfig, SampleConfig
from diffuseg.errors import ConfigError
from diffuseg.samplers import Denoise, ddim, ddpm, dpm_solver_pp, last
from diffuseg.windows import sliding_blend


def one_hot(mask: Tensor, num_classes: int) -> Tensor:
    """Label map ``[B, 1, *sp]`` or ``[B, *sp]`` -> ``[B, K, *sp]`` float (K = 1: foreground)."""
    if mask.ndim >= 2 and mask.shape[1] == num_classes and mask.is_floating_point():
        return mask
    labels = mask.squeeze(1) if mask.ndim >= 2 and mask.shape[1] == 1 else mask
    if num_classes == 1:
        return (labels > 0).float().unsqueeze(1)
    onehot = F.one_hot(labels.long(), num_classes)
    return onehot.movedim(-1, 1).float()


class Method(ABC):
    """A segmentation paradigm: ``loss(batch)`` for training, ``sample(image, n)`` for inference."""

    name: str = "method"

    def __init__(self, config: RunConfig):
        self.config = config
        self.window: tuple[int, ...] | None = None  # sliding-window size for large inputs

    @abstractmethod
    def networks(self) -> dict[str, nn.Module]:
        """Every trained module, by the name its weights are saved under."""

    @abstractmethod
    def loss(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None
             ) -> dict[str, Tensor]:
        """Named loss terms for one batch; ``"loss"`` is what is minimised."""

    @abstractmethod
    def sample(self, image: Tensor, n_samples: int, *, steps: int | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """``n_samples`` mask probabilities per image: ``[S, B, K, *spatial]`` in [0, 1]."""

    # -- helpers shared by methods -----------------------------------------------------------
    def parameters(self) -> list[nn.Parameter]:
        return [p for net in self.networks().values() for p in net.parameters()]

    def to(self, device: torch.device | str) -> Method:
        """Move every network; convolution weights go channels-last, which made small conv nets
        up to 10x faster on CPU (docs/performance.md) and suits CUDA autocast."""
        layout = (torch.channels_last if self.config.spatial_dims == 2
                  else torch.channels_last_3d)
        for net in self.networks().values():
            net.to(device)
            for module in net.modules():
                if isinstance(module, (nn.Conv2d, nn.Conv3d)) and module.weight.ndim == (
                        self.config.spatial_dims + 2):
                    module.to(memory_format=layout)
        return self

    def train(self, mode: bool = True) -> Method:
        for net in self.networks().values():
            net.train(mode)
        return self

    def eval(self) -> Method:
        return self.train(False)

    @property
    def device(self) -> torch.device:
        return self.parameters()[0].device

    def size_multiple(self) -> int:
        """Each spatial size the networks accept is a multiple of this: 2^(levels - 1)."""
        return 2 ** (len(self.config.network.channels) - 1)

    @torch.no_grad()
    def segment(self, image: Tensor, n_samples: int, *, steps: int | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """``sample`` on an image of any size: pads each spatial axis up to a multiple of
        ``size_multiple()`` (replicate padding), samples, and crops back."""
        factor = self.size_multiple()
        spatial = image.shape[2:]
        pads = [(-s) % factor for s in spatial]
        flat = [v for p in reversed(pads) for v in (0, p)]
        padded = F.pad(image, flat, mode="replicate") if any(pads) else image
        samples = self.sample(padded, n_samples, steps=steps, generator=generator)
        crop = tuple(slice(0, s) for s in spatial)
        return samples[(..., *crop)]

    def windowed(self, fn: Callable[[Tensor], Tensor], inputs: Tensor) -> Tensor:
        """Apply ``fn`` to ``inputs`` whole, or in overlapping windows blended with a Gaussian map
        when larger than the window (diffuseg.windows; called once per denoising step, so x_t
        stays one global field)."""
        if self.window is None:
            return fn(inputs)
        return sliding_blend(fn, inputs, self.window, overlap=0.25, batch_windows=4)


def run_sampler(s: SampleConfig, process, clip: float | None, denoise: Denoise, x_T: Tensor,
                steps: int | None, generator: torch.Generator | None) -> Tensor:
    """The final state of the sampler that ``sample.sampler`` names, over ``steps`` (default
    ``sample.steps``) respaced steps: DDPM (ancestral), DDIM (eta ``sample.eta``) or
    DPM-Solver++(2M) (deterministic)."""
    timesteps = process.timesteps(steps or s.steps)
    if s.sampler == "ddpm":
        return last(ddpm(denoise, process, x_T, timesteps, generator=generator, clip=clip))
    if s.sampler == "dpm_solver_pp":
        return last(dpm_solver_pp(denoise, process, x_T, timesteps, clip=clip))
    if s.sampler == "ddim":
        return last(ddim(denoise, process, x_T, timesteps, eta=s.eta, generator=generator,
                         clip=clip))
    raise ConfigError(f"sample.sampler={s.sampler!r} is unknown; use ddim, ddpm or dpm_solver_pp")


METHODS: dict[str, Callable[[RunConfig], Method]] = {}


def register(name: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        cls.name = name
        METHODS[name] = cls
        return cls

    return wrap


def build_method(config: RunConfig, **kwargs: Any) -> Method:
    if config.method.name not in METHODS:
        raise ConfigError(
            f"method.name='{config.method.name}' is unknown; choose one of {sorted(METHODS)}"
        )
    return METHODS[config.method.name](config, **kwargs)

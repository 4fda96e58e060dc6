"""The image generator: a Gaussian diffusion model of the image given a mask, its edge map and a
prompt (DiffBoost, Zhang et al. 2024), with classifier-free guidance (Ho & Salimans 2022).

The image x_0 (scaled to [-1, 1] per channel, ``to_unit``) is diffused by the project's Gaussian
process; the project's conditional U-Net sees x_t concatenated with the condition c = [one-hot
mask, edge map] and is modulated by the prompt embedding through its FiLM input (``emb``). At
training time the edge map and the prompt are each dropped (zeroed / null) with their own
probability, so the one network also learns the mask-only model. At sampling time the guided
prediction is (Ho & Salimans 2022, eq. 6, written with the scale s = 1 + w)

    eps~(x_t, c) = eps(x_t, mask) + s (eps(x_t, mask, edge, prompt) - eps(x_t, mask)),

so s = 1 is the plain conditional model and s > 1 pushes samples towards the edge and prompt.
The mask itself is never dropped: it is the anatomy the image must follow. We differ from
DiffBoost in three stated ways: no pretrained latent autoencoder (pixel space), no CLIP text
encoder (``prompts``), and edges of the mask rather than a separate edge detector on the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from diffuseg.config import NetworkConfig, ProcessConfig
from diffuseg.errors import ConfigError
from diffuseg.networks import ConditionalUNet
from diffuseg.processes import build_process
from diffuseg.sampling.samplers import ddim, last
from diffuseg.synthesis.edges import edge_map
from diffuseg.synthesis.prompts import PromptEncoder


@dataclass
class GeneratorTrainConfig:
    max_steps: int = 2000  # optimiser steps
    max_minutes: float | None = None  # wall-clock budget; stops early when reached
    batch_size: int = 8
    lr: float = 2e-4  # AdamW learning rate
    ema_decay: float = 0.999  # EMA of the weights used for generation
    grad_clip: float = 1.0
    seed: int = 0


@dataclass
class GeneratorConfig:
    spatial_dims: int = 2
    image_channels: int = 1  # channels of the generated image
    num_classes: int = 1  # mask channels: 1 = binary foreground, K >= 3 = one-hot labels
    patch_size: tuple[int, ...] = (64, 64)  # training crop; generation runs on the whole mask
    network: NetworkConfig = field(default_factory=lambda: NetworkConfig(
        channels=(32, 64, 128), attention_levels=(False, False, True)))
    process: ProcessConfig = field(default_factory=lambda: ProcessConfig(prediction="eps"))
    prompt_dim: int = 32  # width of the learned prompt embedding
    vocabulary: tuple[str, ...] = ()  # prompt tokens seen in the training prompts
    p_drop_prompt: float = 0.1  # classifier-free guidance: share of examples with a null prompt
    p_drop_edge: float = 0.1  # ... and with a zeroed edge map
    guidance: float = 1.5  # default guidance scale s (1 = no guidance)
    steps: int = 50  # default DDIM steps at generation
    intensity_lo: tuple[float, ...] = (0.0,)  # per channel: maps to -1 (0.5th percentile)
    intensity_hi: tuple[float, ...] = (255.0,)  # per channel: maps to +1 (99.5th percentile)
    integer_intensities: bool = True  # source images hold integers (PNG): round generated ones
    train: GeneratorTrainConfig = field(default_factory=GeneratorTrainConfig)
    dataset: str = ""  # the dataset folder it was trained on
    source_cases: tuple[str, ...] = ()  # the cases whose images and masks it saw (train split)

    def validate(self) -> GeneratorConfig:
        checks = [
            (self.spatial_dims in (2, 3), "spatial_dims", "2 or 3"),
            (self.image_channels >= 1, "image_channels", ">= 1"),
            (self.num_classes == 1 or self.num_classes >= 3, "num_classes", "1 or >= 3"),
            (0 <= self.p_drop_prompt < 1, "p_drop_prompt", "in [0, 1)"),
            (0 <= self.p_drop_edge < 1, "p_drop_edge", "in [0, 1)"),
            (np.isfinite(self.guidance) and self.guidance >= 0, "guidance", ">= 0"),
            (1 <= self.steps <= self.process.T, "steps", f"1..{self.process.T}"),
            (len(self.patch_size) == self.spatial_dims, "patch_size", "one size per axis"),
            (self.process.kind in (None, "gaussian"), "process.kind", "'gaussian' or null"),
        ]
        for ok, key, valid in checks:
            if not ok:
                raise ConfigError(f"generator config '{key}'={getattr(self, key.split('.')[0])!r}"
                                  f" is invalid; use {valid}")
        return self


def mask_channels(labels: Tensor, num_classes: int) -> Tensor:
    """Labels ``[B, *sp]`` -> ``[B, K, *sp]`` float: foreground for K = 1, one-hot otherwise."""
    if num_classes == 1:
        return (labels > 0).float().unsqueeze(1)
    return nn.functional.one_hot(labels.long(), num_classes).movedim(-1, 1).float()


def edges_of(labels: Tensor) -> Tensor:
    """Edge maps ``[B, 1, *sp]`` of label masks ``[B, *sp]`` (``edges.edge_map`` per mask)."""
    maps = [torch.from_numpy(edge_map(m.cpu().numpy())) for m in labels]
    return torch.stack(maps).unsqueeze(1).to(labels.device)


class ImageGenerator:
    """``loss(batch)`` for training, ``sample(masks, prompt_ids)`` for generation."""

    def __init__(self, config: GeneratorConfig) -> None:
        self.config = config.validate()
        self.process = build_process(config.process, "gaussian")
        net = config.network
        self.denoiser = ConditionalUNet(
            spatial_dims=config.spatial_dims, in_channels=config.image_channels,
            cond_channels=config.num_classes + 1, out_channels=config.image_channels,
            channels=net.channels, num_res_blocks=net.num_res_blocks,
            attention_levels=net.attention_levels, norm_groups=net.norm_groups,
            dropout=net.dropout, num_heads=net.num_heads, emb_channels=config.prompt_dim)
        self.prompt = PromptEncoder(len(config.vocabulary), config.prompt_dim)

    def networks(self) -> dict[str, nn.Module]:
        return {"denoiser": self.denoiser, "prompt": self.prompt}

    def parameters(self) -> list[nn.Parameter]:
        return [p for net in self.networks().values() for p in net.parameters()]

    def to(self, device: torch.device | str) -> ImageGenerator:
        for net in self.networks().values():
            net.to(device)
        return self

    def condition(self, labels: Tensor, edges: Tensor) -> Tensor:
        return torch.cat([mask_channels(labels, self.config.num_classes), edges], dim=1)

    def loss(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None
             ) -> dict[str, Tensor]:
        """Ho et al. 2020 eq. 14 ("simple" loss) with the conditions dropped per example."""
        x0, labels, ids = batch["image"], batch["mask"], batch["prompt"]
        b, device = x0.shape[0], x0.device
        keep_edge = torch.rand(b, generator=generator, device=device) >= self.config.p_drop_edge
        keep_prompt = torch.rand(b, generator=generator, device=device) >= \
            self.config.p_drop_prompt
        shape = (b, *([1] * (x0.ndim - 1)))
        cond = self.condition(labels, batch["edge"] * keep_edge.view(shape).float())
        ids = ids * keep_prompt.view(b, 1).long()  # NULL (0) tokens embed as zero
        t = self.process.sample_t(b, generator=generator, device=device)
        noise = torch.randn(x0.shape, generator=generator, device=device)
        x_t = self.process.q_sample(x0, t, noise=noise)
        out = self.denoiser(x_t, t, cond, emb=self.prompt(ids))
        mse = (out - self.process.training_target(x0, noise, t)).pow(2).mean()
        return {"loss": mse, "mse": mse}

    def guided(self, labels: Tensor, ids: Tensor, guidance: float):
        """The guided denoiser (x_t, t) -> output (module docstring, eq. 6); both branches run
        as one batch."""
        edges = edges_of(labels)
        cond = self.condition(labels, edges)
        bare = self.condition(labels, torch.zeros_like(edges))
        emb = self.prompt(ids)

        def denoise(x_t: Tensor, t: Tensor) -> Tensor:
            if guidance == 1.0:
                return self.denoiser(x_t, t, cond, emb=emb)
            both = self.denoiser(torch.cat([x_t, x_t]), torch.cat([t, t]),
                                 torch.cat([cond, bare]),
                                 emb=torch.cat([emb, torch.zeros_like(emb)]))
            full, plain = both.chunk(2)
            return plain + guidance * (full - plain)

        return denoise

    @torch.no_grad()
    def sample(self, labels: Tensor, ids: Tensor, *, steps: int | None = None,
               guidance: float | None = None, generator: torch.Generator | None = None
               ) -> Tensor:
        """Images ``[B, C, *sp]`` in [-1, 1] for label masks ``[B, *sp]`` (each spatial size a
        multiple of 2^(levels - 1)) and prompt ids ``[B, L]``; DDIM, eta = 0 (Song et al. 2021)."""
        c = self.config
        steps = c.steps if steps is None else steps
        guidance = c.guidance if guidance is None else guidance
        if not 1 <= steps <= c.process.T:
            raise ConfigError(f"--steps {steps} is out of range; use 1..{c.process.T}")
        if not (np.isfinite(guidance) and guidance >= 0):
            raise ConfigError(f"--guidance {guidance} must be a finite number >= 0 (1 = none)")
        shape = (labels.shape[0], c.image_channels, *labels.shape[1:])
        x_T = self.process.prior_sample(shape, generator=generator, device=labels.device)
        denoise = self.guided(labels, ids, float(guidance))
        return last(ddim(denoise, self.process, x_T, self.process.timesteps(steps),
                         generator=generator, clip=1.0))


def to_unit(image: np.ndarray, config: GeneratorConfig) -> np.ndarray:
    """Raw intensities ``[C, *sp]`` -> [-1, 1] per channel (clipped at the stored percentiles)."""
    lo = np.asarray(config.intensity_lo, np.float32).reshape(-1, *([1] * (image.ndim - 1)))
    hi = np.asarray(config.intensity_hi, np.float32).reshape(lo.shape)
    return np.clip(2 * (image - lo) / np.maximum(hi - lo, 1e-6) - 1, -1, 1).astype(np.float32)


def from_unit(image: np.ndarray, config: GeneratorConfig) -> np.ndarray:
    """The inverse of ``to_unit`` on [-1, 1]; rounded to integers when the source held them."""
    lo = np.asarray(config.intensity_lo, np.float32).reshape(-1, *([1] * (image.ndim - 1)))
    hi = np.asarray(config.intensity_hi, np.float32).reshape(lo.shape)
    raw = lo + (np.clip(image, -1, 1) + 1) / 2 * (hi - lo)
    return np.round(raw).astype(np.float32) if config.integer_intensities else raw

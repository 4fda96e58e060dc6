"""Explanations of a diffusion segmentation: what the model did and which image regions matter.

- ``trajectory``: the estimate of the clean mask x0_hat at every sampler step of one sample (the
  samplers compute it at each step, ``samplers.Step.x0_hat``; it is recorded at the process's
  ``predict_x0``), decoded to a foreground probability: one frame per step.
- ``attention_maps``: forward hooks on every attention layer (U-Net ``AttentionBlock`` levels and
  MedSegDiff-V2's SS-Former ``CrossAttention``) recompute the softmax weights of the layer's own
  q and k (mean over heads) and keep the attention each key position receives (mean over
  queries), averaged over the sampler steps and samples, upsampled to the image.
- ``occlusion``: image sensitivity by perturbation (Zeiler & Fergus 2014 occlusion, with the
  blur perturbation of Fong & Vedaldi 2017): each patch (side ``patch``, stride ``patch // 2``)
  is replaced by a Gaussian-blurred copy of the image (sigma = ``patch``), the model samples again
  with the same seed, and the patch scores mean |delta probability| (consensus sensitivity)
  and mean |delta entropy| (uncertainty sensitivity) over the whole image, both the maps a user
  sees (shares of the binarized samples, ``diffuseg.core.ensemble``); overlapping patches average.
- ``counterfactual``: the hypotheses under a stated perturbation: the lesion's contrast lowered by
  a fraction ``a`` (``LEVELS``: 0, 25 %, 50 %): inside the consensus, I' = I - a (I - b) with b
  the median intensity of a 3-pixel ring around it; the samples, consensus and modes side by side.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import binary_dilation, gaussian_filter

from diffuseg.core.ensemble import Result
from diffuseg.errors import ConfigError, DataError
from diffuseg.methods.base import methods_where
from diffuseg.sampling.samplers import on_step

LEVELS = (0.0, 0.25, 0.5)
KINDS = ("trajectory", "occlusion", "counterfactual", "attention")


# ------------------------------------------------------------------------------- trajectory
@torch.no_grad()
def trajectory(predictor, image: np.ndarray, *, steps: int | None = None, seed: int = 0
               ) -> np.ndarray:
    """``[n_steps, *spatial]`` foreground probability of x0_hat at each step of sample 0: the
    sampler's own ``Step.x0_hat`` (``sampling.samplers.on_step``), recorded while
    ``predictor.segment`` draws that very sample (same seed, same precision), so the method and
    its process are used as they are."""
    method = predictor.method
    if method.process is None or not method.guidable:
        names = ", ".join(methods_where(lambda m: m.guidable and m.process_kind is not None))
        raise ConfigError("the denoising trajectory is shown for methods that diffuse the mask "
                          f"itself ({names}); not '{method.name}'")
    frames: list[torch.Tensor] = []
    with on_step(lambda _k, step: frames.append(step.x0_hat.detach().float().cpu())):
        predictor.segment(image, n_samples=1, steps=steps, seed=seed)
    target = getattr(method, "target", None)
    spatial = image.shape[1:]
    out = []
    for x0 in frames:
        p = target.decode(x0) if target is not None else x0.clamp(0, 1)
        out.append(p[(0, 0, *(slice(0, s) for s in spatial))].numpy())
    return np.stack(out)


# ------------------------------------------------------------------------------- attention
def _weights(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) averaged over heads: ``[B, N, M]``."""
    b, n, c = q.shape
    d = c // heads
    qh = q.reshape(b, n, heads, d).transpose(1, 2)
    kh = k.reshape(b, k.shape[1], heads, d).transpose(1, 2)
    return torch.softmax(qh @ kh.transpose(-1, -2) / d ** 0.5, dim=-1).mean(1)


@torch.no_grad()
def attention_maps(predictor, image: np.ndarray, *, n_samples: int = 2,
                   steps: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Per attention layer, the attention each position receives, on the image grid."""
    from diffuseg.networks.blocks import AttentionBlock
    from diffuseg.networks.medsegdiff_v2 import SSFormer

    maps: dict[str, list] = {}
    grid: dict[str, tuple] = {}
    hooks = []

    def keep(name: str, w: torch.Tensor, spatial: tuple) -> None:
        received = w.float().mean(1).reshape(w.shape[0], 1, *spatial).mean(0, keepdim=True)
        maps.setdefault(name, []).append(received.cpu())

    def self_hook(name):
        def hook(module, inputs, output):
            x = inputs[0]
            b, c, *spatial = x.shape
            tokens = module.norm(x).reshape(b, c, -1).transpose(1, 2)
            q, k, _ = module.qkv(tokens).chunk(3, dim=2)
            keep(name, _weights(q, k, module.num_heads), tuple(spatial))
        return hook

    def cross_hook(name, owner):
        def hook(module, inputs, output):
            h, c = inputs
            k, _ = module.kv(module.norm_kv(c)).chunk(2, dim=-1)
            keep(name, _weights(module.q(module.norm_q(h)), k, module.num_heads), grid[owner])
        return hook

    def ss_pre(owner):
        def hook(module, inputs):
            grid[owner] = tuple(inputs[1].shape[2:])  # c: the keys' grid
        return hook

    for net_name, net in predictor.method.networks().items():
        for name, module in net.named_modules():
            full = f"{net_name}.{name}"
            if isinstance(module, AttentionBlock):
                hooks.append(module.register_forward_hook(self_hook(full)))
            elif isinstance(module, SSFormer):
                hooks.append(module.register_forward_pre_hook(ss_pre(full)))
                for sub in ("attn1", "attn2"):
                    hooks.append(getattr(module, sub).register_forward_hook(
                        cross_hook(f"{full}.{sub}", full)))
    if not hooks:
        raise ConfigError(f"method '{predictor.method.name}' has no attention layers in this run "
                          "(network.attention_levels all false); nothing to show")
    try:
        x = predictor.prepare(image)
        generator = torch.Generator(device=predictor.device).manual_seed(seed)
        with predictor.autocast():  # the precision of segment
            predictor.method.segment(x, n_samples, steps=steps, generator=generator)
    finally:
        for h in hooks:
            h.remove()
    spatial = image.shape[1:]
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    out = {}
    for name, items in maps.items():
        mean = torch.stack(items).mean(0)
        up = F.interpolate(mean, size=tuple(spatial), mode=mode, align_corners=False)
        out[name] = up[0, 0].numpy()
    return out


# ------------------------------------------------------------------------------- perturbation
Segment = Callable[[np.ndarray], Result]


def occlusion(segment: Segment, image: np.ndarray, *, patch: int = 8) -> dict[str, np.ndarray]:
    """Consensus and uncertainty sensitivity maps ``[*spatial]`` (module docstring)."""
    if patch < 2:
        raise ConfigError(f"occlusion patch={patch} must be at least 2 pixels")
    spatial = image.shape[1:]
    base = segment(image)
    blurred = np.stack([gaussian_filter(ch, patch) for ch in image]).astype(image.dtype)
    stride = max(1, patch // 2)
    starts = [range(0, max(s - patch, 0) + 1, stride) for s in spatial]
    sums = {"consensus": np.zeros(spatial), "uncertainty": np.zeros(spatial)}
    counts = np.zeros(spatial)
    for corner in np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(spatial)):
        region = tuple(slice(int(c), int(c) + patch) for c in corner)
        occluded = image.copy()
        occluded[(slice(None), *region)] = blurred[(slice(None), *region)]
        result = segment(occluded)
        sums["consensus"][region] += float((result.probability - base.probability).abs().mean())
        sums["uncertainty"][region] += float((result.entropy - base.entropy).abs().mean())
        counts[region] += 1
    return {k: v / np.maximum(counts, 1) for k, v in sums.items()}


def lower_contrast(image: np.ndarray, region: np.ndarray, amount: float) -> np.ndarray:
    """I' = I - amount (I - b) inside ``region``, b = median of a 3-pixel ring around it."""
    region = np.asarray(region, bool)
    if not region.any():
        raise DataError("the consensus is empty: there is no lesion whose contrast to lower")
    ring = binary_dilation(region, iterations=3) & ~region
    out = image.copy()
    for c in range(image.shape[0]):
        b = float(np.median(image[c][ring])) if ring.any() else float(np.median(image[c]))
        out[c][region] = image[c][region] - amount * (image[c][region] - b)
    return out


def counterfactual(segment: Segment, image: np.ndarray, levels=LEVELS) -> list[tuple]:
    """[(amount, perturbed image, Result)] for each contrast reduction (0 = the original)."""
    base = segment(image)
    region = base.consensus[0].numpy() > 0
    out = []
    for amount in levels:
        perturbed = image if amount == 0 else lower_contrast(image, region, amount)
        out.append((amount, perturbed, base if amount == 0 else segment(perturbed)))
    return out


# ------------------------------------------------------------------------------- pictures
def _mid(a: np.ndarray) -> np.ndarray:
    """A 2D picture of a 2D or 3D array (the middle slice along the last axis)."""
    return a if a.ndim == 2 else a[..., a.shape[-1] // 2]


def explain_to_png(predictor, image: np.ndarray, kind: str, path: Path, *, n_samples: int = 8,
                   steps: int | None = None, patch: int = 8, seed: int = 0) -> Path:
    """Compute explanation ``kind`` for ``image`` ``[C, *spatial]`` and draw it to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffuseg.review.modes import find_modes

    def segment(im: np.ndarray) -> Result:
        return predictor.segment(im, n_samples=n_samples, steps=steps, seed=seed)

    picture = _mid(image[0])
    if kind == "trajectory":
        frames = trajectory(predictor, image, steps=steps, seed=seed)
        fig, axes = plt.subplots(1, len(frames), figsize=(1.6 * len(frames), 1.9), squeeze=False)
        for i, (ax, frame) in enumerate(zip(axes[0], frames, strict=True)):
            ax.imshow(_mid(frame), cmap="magma", vmin=0, vmax=1)
            ax.set_title(f"step {i + 1}", fontsize=8)
    elif kind == "occlusion":
        maps = occlusion(segment, image, patch=patch)
        fig, axes = plt.subplots(1, 2, figsize=(7, 3.4), squeeze=False)
        for ax, (name, values) in zip(axes[0], maps.items(), strict=True):
            ax.imshow(picture, cmap="gray")
            shown = ax.imshow(_mid(values), cmap="inferno", alpha=0.6)
            fig.colorbar(shown, ax=ax, fraction=0.046)
            ax.set_title(f"{name} sensitivity", fontsize=9)
    elif kind == "counterfactual":
        rows = counterfactual(segment, image)
        fig, axes = plt.subplots(2, len(rows), figsize=(3 * len(rows), 6), squeeze=False)
        for j, (amount, perturbed, result) in enumerate(rows):
            modes = find_modes(result.sample_labels()[:, 0].numpy())
            axes[0, j].imshow(_mid(perturbed[0]), cmap="gray")
            axes[0, j].contour(_mid(result.consensus[0].numpy()), levels=[0.5], colors="yellow")
            axes[0, j].set_title(f"contrast lowered {amount:.0%}" if amount else "contrast as is",
                                 fontsize=9)
            axes[1, j].imshow(_mid(result.foreground()[0].numpy()), cmap="magma", vmin=0, vmax=1)
            axes[1, j].set_title(modes.describe(), fontsize=8)
    elif kind == "attention":
        maps = attention_maps(predictor, image, steps=steps, seed=seed)
        cols = min(2, len(maps))  # two per row: the page shows it ~650 px wide, titles legible
        rows = -(-len(maps) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.4 * rows), squeeze=False)
        for ax in axes.ravel()[len(maps):]:
            ax.axis("off")
        for ax, (name, values) in zip(axes.ravel(), maps.items(), strict=False):
            ax.imshow(picture, cmap="gray")
            ax.imshow(_mid(values), cmap="viridis", alpha=0.6)
            ax.set_title(name, fontsize=10)
    else:
        raise ConfigError(f"unknown explanation {kind!r}; choose one of {', '.join(KINDS)}")
    for ax in fig.axes:
        if ax.images:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(".tmp_" + path.name)
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def trajectory_gif(frames: np.ndarray, path: Path, scale: int = 4) -> Path:
    """The trajectory frames as an animated GIF (Pillow), nearest-neighbour upscaled."""
    from PIL import Image

    images = [Image.fromarray(np.round(_mid(f) * 255).astype(np.uint8)).resize(
        (_mid(f).shape[1] * scale, _mid(f).shape[0] * scale), Image.NEAREST) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=300, loop=0)
    return path

"""Non-diffusion uncertainty baselines: a deterministic U-Net, MC dropout and a deep ensemble.

All three train ``SegmentationUNet`` (networks/unet.py) with soft Dice + cross-entropy (MONAI's
``DiceCELoss``: softmax cross-entropy and Dice without the background channel for K > 1 labels;
sigmoid binary cross-entropy and Dice for K = 1). ``sample`` returns ``[S, B, K, *sp]``
probabilities (sigmoid for K = 1, softmax over K otherwise):

* ``unet``: S copies of the one prediction. Their variance and mutual information are 0; the
  predictive entropy of the softmax is not, and is its only uncertainty.
* ``mc_dropout``: S stochastic forward passes with dropout kept on (Gal & Ghahramani, ICML 2016;
  Kendall et al., BMVC 2017), the dropout masks drawn from ``generator``.
* ``ensemble``: M independently initialised U-Nets (Lakshminarayanan et al., NeurIPS 2017);
  sample s comes from member s mod M.

The helpers ``read_options`` and ``windowed_with_emb`` are shared with cimd.py and prob_unet.py.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from typing import Any

import torch
from monai.losses import DiceCELoss
from torch import Tensor, nn

from diffuseg.config import RunConfig
from diffuseg.errors import ConfigError
from diffuseg.methods.base import Method, one_hot, register
from diffuseg.networks import SegmentationUNet
from diffuseg.validation import show

# ---------------------------------------------------------------------------------------------
# helpers shared by the methods of this family


def read_options(config: RunConfig, defaults: dict[str, Any]) -> dict[str, Any]:
    """``config.method.options`` over ``defaults``; an unknown key or a value that does not fit
    the default's type (bool, int or float) raises ConfigError naming the option and the fix."""
    name = config.method.name
    out = dict(defaults)
    for key, value in (config.method.options or {}).items():
        if key not in defaults:
            close = difflib.get_close_matches(key, sorted(defaults), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"valid options: {sorted(defaults)}"
            raise ConfigError(f"method.options.{key} is not an option of method '{name}'; {hint}")
        out[key] = _coerce(defaults[key], value, f"method.options.{key}")
    return out


def _coerce(default: Any, value: Any, path: str) -> Any:
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ConfigError(f"{path}={value!r} must be true or false")
        return value
    kind = type(default)
    try:
        number = kind(value)
        finite = math.isfinite(number)
    except (TypeError, ValueError, OverflowError):
        finite = False
    if not finite:
        noun = "integer" if kind is int else "number"
        raise ConfigError(f"{path}={show(value)} must be a finite {noun}")
    if isinstance(value, bool) or (kind is int and float(value) != number):
        raise ConfigError(f"{path}={show(value)} must be a whole number")
    return number


def windowed_with_emb(method: Method, fn: Callable[[Tensor, Tensor | None], Tensor],
                      inputs: Tensor, emb: Tensor | None) -> Tensor:
    """``fn(inputs, emb)`` whole, or through ``method.windowed`` (sliding windows) when the input
    is larger than ``method.window``. A per-example embedding ``emb [B, E]`` cannot follow
    MONAI's windows (they mix examples in a window batch), so then each example is windowed on
    its own with its own row of ``emb``."""
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


def probabilities(logits: Tensor) -> Tensor:
    """Sigmoid for one (foreground) channel, softmax over channels otherwise; float32."""
    logits = logits.float()
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def dice_ce(num_classes: int) -> DiceCELoss:
    """Soft Dice (batch Dice, background excluded for K > 1, as nnU-Net) + cross-entropy."""
    binary = num_classes == 1
    return DiceCELoss(sigmoid=binary, softmax=not binary, include_background=binary, batch=True)


def build_segmentor(config: RunConfig, dropout: float) -> SegmentationUNet:
    net = config.network
    return SegmentationUNet(
        spatial_dims=config.spatial_dims,
        in_channels=config.in_channels,
        out_channels=config.num_classes,
        channels=net.channels,
        num_res_blocks=net.num_res_blocks,
        norm_groups=net.norm_groups,
        dropout=dropout,
        attention_levels=net.attention_levels,
        num_heads=net.num_heads,
    )


# ---------------------------------------------------------------------------------------------
# the baselines


class _Segmentors(Method):
    """Shared by the baselines: ``members`` segmentation U-Nets trained on the same batches."""

    def __init__(self, config: RunConfig, members: int, dropout: float):
        super().__init__(config)
        self.members = [build_segmentor(config, dropout) for _ in range(members)]
        self.criterion = dice_ce(config.num_classes)

    def networks(self) -> dict[str, nn.Module]:
        if len(self.members) == 1:
            return {"segmentor": self.members[0]}
        return {f"member{m}": net for m, net in enumerate(self.members)}

    def loss(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None
             ) -> dict[str, Tensor]:
        """Sum over members of DiceCE(member(image), mask); dropout (in train mode) draws its
        masks from ``generator``."""
        y = one_hot(batch["mask"], self.config.num_classes)
        terms = {}
        for m, net in enumerate(self.members):
            logits = net(batch["image"], generator=generator).float()
            terms[f"member{m}"] = self.criterion(logits, y)
        total = torch.stack(list(terms.values())).sum()
        return {"loss": total, **(terms if len(terms) > 1 else {})}

    def predict(self, net: nn.Module, image: Tensor, *, mc_dropout: bool = False,
                generator: torch.Generator | None = None) -> Tensor:
        def fn(x: Tensor, _: Tensor | None) -> Tensor:
            return net(x, mc_dropout=mc_dropout, generator=generator).to(x.dtype)

        return probabilities(windowed_with_emb(self, fn, image, None))


@register("unet")
class DeterministicUNet(_Segmentors):
    """One U-Net; ``sample`` repeats its single prediction S times (variance 0, entropy > 0)."""

    def __init__(self, config: RunConfig):
        read_options(config, {})
        super().__init__(config, members=1, dropout=config.network.dropout)

    @torch.no_grad()
    def sample(self, image: Tensor, n_samples: int, *, steps: int | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        p = self.predict(self.members[0], image, generator=generator)
        return p.unsqueeze(0).expand(n_samples, *p.shape).clone()


@register("mc_dropout")
class MCDropout(_Segmentors):
    """One U-Net with dropout p in every residual block (option ``dropout``; default
    ``network.dropout`` when > 0, else 0.2); S forward passes with dropout on."""

    def __init__(self, config: RunConfig):
        opts = read_options(config, {"dropout": config.network.dropout or 0.2})
        if not 0.0 < opts["dropout"] < 1.0:
            raise ConfigError(f"method.options.dropout={opts['dropout']} must be in (0, 1) for "
                              "MC dropout; 0.1-0.5 is usual")
        super().__init__(config, members=1, dropout=opts["dropout"])

    @torch.no_grad()
    def sample(self, image: Tensor, n_samples: int, *, steps: int | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """All S passes in one batch: the images repeated S times (sample-major), each copy with
        its own dropout masks."""
        b = image.shape[0]
        repeated = image.repeat(n_samples, *([1] * (image.ndim - 1)))
        p = self.predict(self.members[0], repeated, mc_dropout=True, generator=generator)
        return p.reshape(n_samples, b, *p.shape[1:])


@register("ensemble")
class DeepEnsemble(_Segmentors):
    """M U-Nets (option ``members``, default 4) with independent initialisations; the loss is the
    sum of the members' losses; sample s is member (s mod M)'s prediction."""

    def __init__(self, config: RunConfig):
        opts = read_options(config, {"members": 4})
        if opts["members"] < 1:
            raise ConfigError(f"method.options.members={opts['members']} must be at least 1")
        super().__init__(config, members=opts["members"], dropout=config.network.dropout)

    @torch.no_grad()
    def sample(self, image: Tensor, n_samples: int, *, steps: int | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        used = min(n_samples, len(self.members))
        preds = [self.predict(net, image, generator=generator) for net in self.members[:used]]
        return torch.stack([preds[s % len(self.members)] for s in range(n_samples)])

"""Non-diffusion uncertainty baselines: a deterministic U-Net, MC dropout and a deep ensemble.

All three train ``SegmentationUNet`` (networks/unet.py) with soft Dice + cross-entropy (MONAI's
``DiceCELoss``: softmax cross-entropy and Dice without the background channel for K > 1 labels;
sigmoid binary cross-entropy and Dice for K = 1). ``sample`` returns ``[S, B, K, *sp]``
probabilities (sigmoid for K = 1, softmax over K otherwise):

* ``unet``: S copies of the one prediction. They agree everywhere, so every map of
  ``ensemble.summarise`` (variance, entropy, mutual information: statistics of the binarized
  samples) is 0; the entropy of its softmax (``entropy(result.soft_mean, 1)``) is its only
  uncertainty, and is not one of the written maps.
* ``mc_dropout``: S stochastic forward passes with dropout kept on (Gal & Ghahramani, ICML 2016;
  Kendall et al., BMVC 2017), the dropout masks drawn from ``generator``.
* ``ensemble``: M independently initialised U-Nets (Lakshminarayanan et al., NeurIPS 2017);
  sample s comes from member s mod M.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffuseg.config import RunConfig
from diffuseg.errors import ConfigError
from diffuseg.methods.base import Method, one_hot, register
from diffuseg.methods.parts import (
    at_least,
    build_segmentor,
    dice_ce,
    probabilities,
    repeat_samples,
    windowed,
)


@dataclass
class MCDropoutOptions:
    dropout: float | None = None  # None: network.dropout when > 0, else 0.2

    def __post_init__(self) -> None:
        if self.dropout is not None and not 0.0 < self.dropout < 1.0:
            raise ConfigError(f"method.options.dropout={self.dropout} must be in (0, 1) for MC "
                              "dropout; 0.1-0.5 is usual")


@dataclass
class EnsembleOptions:
    members: int = 4  # independently initialised U-Nets

    def __post_init__(self) -> None:
        at_least(self, 1, "members")


class _Segmentors(Method):
    """Shared by the baselines: ``members`` segmentation U-Nets trained on the same batches."""

    def __init__(self, config: RunConfig):
        super().__init__(config)
        count, dropout = self.layout()
        self.members = [build_segmentor(config, dropout=dropout) for _ in range(count)]
        self.criterion = dice_ce(config.num_classes)

    def layout(self) -> tuple[int, float | None]:
        """(number of members, dropout rate; None: network.dropout) from the options."""
        return 1, None

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

        return probabilities(windowed(self, fn, image))


@register("unet")
class DeterministicUNet(_Segmentors):
    """One U-Net; ``sample`` repeats its single prediction S times (variance 0, entropy > 0)."""

    stochastic = False

    @torch.no_grad()
    def sample(self, image: Tensor, n_samples: int, *, steps: int | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        p = self.predict(self.members[0], image, generator=generator)
        return p.unsqueeze(0).expand(n_samples, *p.shape).clone()


@register("mc_dropout")
class MCDropout(_Segmentors):
    """One U-Net with dropout p in every residual block (option ``dropout``; default
    ``network.dropout`` when > 0, else 0.2); S forward passes with dropout on."""

    options_type = MCDropoutOptions

    def layout(self) -> tuple[int, float | None]:
        chosen = self.options.dropout
        return 1, (self.config.network.dropout or 0.2) if chosen is None else chosen

    @torch.no_grad()
    def sample(self, image: Tensor, n_samples: int, *, steps: int | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """All S passes in one batch: the images repeated S times (sample-major), each copy with
        its own dropout masks."""
        b = image.shape[0]
        repeated = repeat_samples(image, n_samples)
        p = self.predict(self.members[0], repeated, mc_dropout=True, generator=generator)
        return p.reshape(n_samples, b, *p.shape[1:])


@register("ensemble")
class DeepEnsemble(_Segmentors):
    """M U-Nets (option ``members``, default 4) with independent initialisations; the loss is the
    sum of the members' losses; sample s is member (s mod M)'s prediction."""

    options_type = EnsembleOptions
    stochastic = False

    def layout(self) -> tuple[int, float | None]:
        return self.options.members, None

    @torch.no_grad()
    def sample(self, image: Tensor, n_samples: int, *, steps: int | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        used = min(n_samples, len(self.members))
        preds = [self.predict(net, image, generator=generator) for net in self.members[:used]]
        return torch.stack([preds[s % len(self.members)] for s in range(n_samples)])

"""What every method shares: the mask encoding, the method protocol and the registry.

A method combines a process, a network and a loss. It never branches on the type of another
component; a method that needs another space (latent, signed distance) wraps the encoding.

A method declares, as class attributes, the kind of process it diffuses with (``process_kind``;
``Method.__init__`` builds it, the one place a process is chosen), its typed options
(``options_type``, a dataclass coerced from ``method.options`` by ``config.from_dict``) and
whether it models binary masks only. ``sampling(steps)`` is the one place the sampler and the
number of steps are defaulted and checked; ``diffuse`` runs them.

Guided resampling (``diffuseg.sampling.repaint``): a method that diffuses the mask itself sets
``guidable = True``, takes ``known=`` in ``sample`` and hands it to ``diffuse``, which builds the
RePaint callback for the sampler (encoding the marks with ``self.target`` when the method has
one; ``guide`` is overridden by a method that diffuses a transform of the mask, e.g. wdm) and
runs ``known.jumps`` resamplings per step; with the ``sdf`` target (``signed``) it clamps x0_hat
to the marks' sign envelope instead (``diffuseg.sampling.x0_guidance``). ``segment(..., known=)``
pads the marks with the image, refuses other methods, and applies the final projection
``known.hold`` to the samples.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffuseg.config import RunConfig, SampleConfig, from_dict
from diffuseg.errors import ConfigError
from diffuseg.processes import Process, build_process
from diffuseg.sampling.repaint import KnownPixels, check_supported, repaint
from diffuseg.sampling.samplers import Constrain, Denoise, check_sampler
from diffuseg.sampling.samplers import sample as run_named_sampler
from diffuseg.sampling.windows import sliding_blend
from diffuseg.sampling.x0_guidance import sign_projection, x0_guided


def one_hot(mask: Tensor, num_classes: int) -> Tensor:
    """Label map ``[B, 1, *sp]`` or ``[B, *sp]`` -> ``[B, K, *sp]`` float (K = 1: foreground)."""
    if mask.ndim >= 2 and mask.shape[1] == num_classes and mask.is_floating_point():
        return mask
    labels = mask.squeeze(1) if mask.ndim >= 2 and mask.shape[1] == 1 else mask
    if num_classes == 1:
        return (labels > 0).float().unsqueeze(1)
    onehot = F.one_hot(labels.long(), num_classes)
    return onehot.movedim(-1, 1).float()


@dataclass
class NoOptions:
    """The options of a method that has none."""


def read_options(config: RunConfig, options_type: type) -> Any:
    """``config.method.options`` (a dict in config.json) as the method's options dataclass, by
    the same coercion as the rest of the config (unknown keys refused with the closest name)."""
    return from_dict(options_type, config.method.options or {}, "method.options")


def renormalise(p: Tensor) -> Tensor:
    """Per-class scores ``[B, K, *sp]`` >= 0 -> probabilities summing to 1 over K (K > 1; K = 1
    is returned as it is). Where every class scores 0 the result is uniform, 1 / K."""
    if p.shape[1] == 1:
        return p
    total = p.sum(1, keepdim=True)
    return torch.where(total > 0, p / total.clamp_min(torch.finfo(p.dtype).tiny),
                       torch.full_like(p, 1.0 / p.shape[1]))


class Method(ABC):
    """A segmentation paradigm: ``loss(batch)`` for training, ``sample(image, n)`` for inference."""

    name: str = "method"
    process_kind: str | None = None  # "gaussian" | "bernoulli"; None: no diffusion process
    options_type: type = NoOptions  # dataclass of method.options
    binary_only: bool = False  # models one foreground channel (num_classes = 1) only
    stochastic: bool = True  # different generators give different samples
    guidable: bool = False  # sample() takes known= (guided resampling, diffuseg.sampling.repaint)
    guidance_scaled: bool = False  # known.scale sets its guidance step size (ldseg's DPS zeta)
    target: Any = None  # the mask encoding (methods/targets.py) of the Gaussian mask methods
    onnx_exportable: bool = False  # its per-step ``denoiser`` exports (diffuseg.inference.onnx)

    def __init__(self, config: RunConfig):
        self.config = config
        self.window: tuple[int, ...] | None = None  # sliding-window size for large inputs
        self.options = read_options(config, self.options_type)
        if self.binary_only and config.num_classes != 1:
            raise ConfigError(
                f"method '{self.name}' models binary masks but num_classes={config.num_classes}; "
                "use num_classes=1 (merge the labels), or a multi-class method "
                f"({', '.join(methods_where(lambda m: not m.binary_only))})")
        self.process: Process | None = None
        if self.process_kind is not None:
            self.process = build_process(config.process, self.process_kind)
            check_sampler(config.sample.sampler, self.process.kind)

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

    # -- sampling: the one place the sampler and its steps are defaulted and checked -----------
    def default_steps(self) -> int:
        """Sampling steps when none are given: ``sample.steps`` (LDSeg: its option ``steps``)."""
        return self.config.sample.steps

    def sampling(self, steps: int | None = None) -> tuple[str | None, int | None]:
        """``(sampler, steps)`` that ``sample(..., steps=steps)`` uses; (None, None) for a method
        without a diffusion process. ``steps`` must lie in 1..process.T."""
        if self.process is None:
            return None, None
        sampler = check_sampler(self.config.sample.sampler, self.process.kind)
        n = self.default_steps() if steps is None else steps
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.process.T:
            raise ConfigError(f"steps={n!r} is out of range; use 1..{self.process.T} (--steps, "
                              "sample.steps or the method's own option)")
        return sampler, n

    def diffuse(self, denoise: Denoise, x_T: Tensor, steps: int | None, *,
                generator: torch.Generator | None = None, clip: float | None = None,
                process: Process | None = None, known: KnownPixels | None = None,
                jumps: int | None = None) -> Tensor:
        """The final state of ``sampling(steps)``'s sampler from ``x_T`` over that many respaced
        steps of ``process`` (default ``self.process``). ``known``: pixels every chain must hold
        (guided resampling; ``x_T`` holds S chains per image of ``known``, sample-major).
        ``jumps``: resamplings per step (default ``known.jumps``, 1 without marks), for a method
        that guides through its own ``denoise`` (ldseg)."""
        sampler, n = self.sampling(steps)
        process = self.process if process is None else process
        project = None
        if known is not None and getattr(self.target, "signed", False):
            # sdf target: x0_hat clamped to the marks' sign envelope (diffuseg.sampling.x0_guidance)
            check_supported(self.name, self.config.num_classes, self.target)
            project = sign_projection(self.target.band, known, x_T.shape[0])
            denoise, constrain = x0_guided(denoise, process, project), None
        else:
            constrain = self.guide(process, known, x_T.shape[0], generator)
        x0 = run_named_sampler(sampler, denoise, process, x_T, process.timesteps(n),
                               generator=generator, clip=clip, eta=self.config.sample.eta,
                               constrain=constrain,
                               jumps=jumps or (1 if known is None else known.jumps))
        return x0 if project is None else project(x0)

    def guide(self, process: Process, known: KnownPixels | None, chains: int,
              generator: torch.Generator | None) -> Constrain | None:
        """The RePaint callback for ``chains`` chains over the images of ``known``, or None
        without known pixels. The marks are encoded as the method diffuses them (``target``)."""
        if known is None:
            return None
        check_supported(self.name, self.config.num_classes, self.target)
        n_samples, rest = divmod(chains, known.values.shape[0])
        assert rest == 0, "chains must be a whole number of samples per image"
        encode = self.target.encode if self.target is not None else (lambda m: m)
        return repaint(process, known, n_samples, encode=encode, generator=generator)

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
                generator: torch.Generator | None = None,
                known: KnownPixels | None = None) -> Tensor:
        """``sample`` on an image of any size: pads each spatial axis up to a multiple of
        ``size_multiple()`` (replicate padding), samples, and crops back. ``known``: pixels every
        sample must hold (guided resampling, ``diffuseg.sampling.repaint``); padded pixels are
        unknown."""
        factor = self.size_multiple()
        spatial = image.shape[2:]
        pads = [(-s) % factor for s in spatial]
        flat = [v for p in reversed(pads) for v in (0, p)]
        padded = F.pad(image, flat, mode="replicate") if any(pads) else image
        guided = {}
        if known is not None:
            if not self.guidable:
                raise ConfigError(
                    f"guided resampling is not available for method '{self.name}': only the "
                    "diffusion methods support it "
                    f"({', '.join(methods_where(lambda m: m.guidable))}); see docs/review.md")
            if known.values.shape[1] != self.config.num_classes:
                raise ConfigError(
                    f"the known pixels have {known.values.shape[1]} channel(s) but the run has "
                    f"num_classes={self.config.num_classes}; build them with "
                    f"Constraints.known(num_classes={self.config.num_classes})")
            if known.scale is not None and not self.guidance_scaled:
                raise ConfigError(
                    "a guidance scale applies to decoder-guided methods "
                    f"({', '.join(methods_where(lambda m: m.guidance_scaled))}); '{self.name}' "
                    "holds the marks by replacement (RePaint), which has no step size; drop "
                    "--guidance-scale")
            guided = {"known": known.pad(flat) if any(pads) else known}
        samples = self.sample(padded, n_samples, steps=steps, generator=generator, **guided)
        crop = tuple(slice(0, s) for s in spatial)
        samples = samples[(..., *crop)]
        return samples if known is None else known.hold(samples)

    def windowed(self, fn: Callable[[Tensor], Tensor], inputs: Tensor) -> Tensor:
        """Apply ``fn`` to ``inputs`` whole, or in overlapping windows blended with a Gaussian map
        when larger than the window (diffuseg.sampling.windows; called once per denoising step, so
        x_t
        stays one global field)."""
        if self.window is None:
            return fn(inputs)
        return sliding_blend(fn, inputs, self.window, overlap=0.25)


def run_sampler(s: SampleConfig, process, clip: float | None, denoise: Denoise, x_T: Tensor,
                steps: int | None, generator: torch.Generator | None, *,
                constrain: Constrain | None = None) -> Tensor:
    """The final state of the sampler that ``sample.sampler`` names (default: the process's),
    over ``steps`` (default ``sample.steps``) respaced steps. Methods use ``Method.diffuse``."""
    sampler = check_sampler(s.sampler, process.kind)
    return run_named_sampler(sampler, denoise, process, x_T, process.timesteps(steps or s.steps),
                             generator=generator, clip=clip, eta=s.eta, constrain=constrain)


METHODS: dict[str, Callable[[RunConfig], Method]] = {}


def register(name: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        cls.name = name
        METHODS[name] = cls
        return cls

    return wrap


def methods_where(test: Callable[[type[Method]], bool]) -> list[str]:
    """Registered method names whose class passes ``test`` (for messages: built from the
    registry, never a hand-kept list)."""
    return sorted(name for name, cls in METHODS.items() if test(cls))


def build_method(config: RunConfig, **kwargs: Any) -> Method:
    if config.method.name not in METHODS:
        import difflib

        close = difflib.get_close_matches(config.method.name, sorted(METHODS), n=1, cutoff=0.4)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"method.name='{config.method.name}' is unknown; {hint}choose one of "
                          f"{sorted(METHODS)}")
    return METHODS[config.method.name](config, **kwargs)

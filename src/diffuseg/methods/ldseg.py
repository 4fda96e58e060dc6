"""LDSeg: latent diffusion segmentation (Zaman et al., "Latent diffusion for medical image
segmentation: end to end learning for fast sampling and accuracy", 2024).

Four networks (networks/autoencoder.py): a label encoder z_0 = E(y) and decoder D(z) (the mask
autoencoder; z has ``latent_channels`` channels at 1 / 2^``downsamples`` of the mask's size, in
[-1, 1]), an image encoder c = I(X) at the latent resolution, and a latent denoiser f(z_t, t, c)
(the ``ConditionalUNet``, its spatial size the latent size). The existing ``GaussianProcess``
diffuses z_0, and the existing samplers run in latent space; D maps their result to masks.

Training (one ``loss(batch)`` per step, all four networks end to end as in the paper):

    z_0 = E(y),  z_t = sqrt(ab_t) sg(z_0) + sqrt(1 - ab_t) eps   (Ho et al. 2020, eq. 4)
    L_rec  = DiceCE(D(z_0), y)                          the autoencoder's reconstruction
    L_diff = || f(z_t, t, I(X)) - target(sg(z_0), eps, t) ||^2     (eps, x0 or v target)
    L_seg  = DiceCE(D(clip(z0_hat)), y),  z0_hat = predict_x0(z_t, t, f)
    loss   = w_rec L_rec + w_diff L_diff + w_seg L_seg

L_seg is the paper's segmentation loss on the denoised latent (their L1 = CE + Dice of
D(z_dn)), L_diff their noise loss (L2, lambda = 1). Unlike the released code, the diffusion
target z_0 is detached (sg = stop-gradient): without it the label encoder could shrink or
collapse the latent to make L_diff small, since with x0 prediction the target is z_0 itself;
E is trained by L_rec alone and D by L_rec and L_seg, so the latent stays a faithful code.

Sampling: the image embedding is computed ONCE per image per ``sample`` call, repeated for the S
samples (sample-major), and all S x B latents are denoised as one batch per step with the sampler
named by ``sample.sampler`` (ddim, ddpm or dpm_solver_pp), ``steps`` (default the option ``steps`` =
2, which ``sampling`` reports) respaced steps; x0 or v prediction makes 1-2 DDIM steps usable.

Guided resampling (``sample(known=)``, ``diffuseg.sampling.x0_guidance``): a partial mask has no
latent code, so the marks are not painted into z_t (RePaint) but pull the latent x0 estimate at
every step by a DPS step through the decoder (``decoder_guidance``, size ``guidance_scale``); the
decoded probabilities at the marks are then set to the marks, so every sample holds them.

Options (``method.options``, ``LDSegOptions``): latent_channels 4, downsamples 2, width 16
(autoencoder and image encoder base width), cond_channels 8 (image embedding channels), steps 2,
rec_weight 1, diff_weight 1, seg_weight 1, guidance_scale 1, self_condition false.

Self-conditioning (option ``self_condition``; Chen, Zhang & Hinton 2023, "Analog Bits", Alg. 1-2;
not in LDSeg): the denoiser also sees an earlier estimate of z_0 as latent_channels more
conditioning channels. Training: on half the batches (one coin per batch) a first pass without
gradient on zeros gives that estimate, else zeros; sampling: each step gets the previous step's
estimate (zeros at the first). With 2 sampling steps it is the second step that gains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffuseg.config import RunConfig
from diffuseg.errors import ConfigError
from diffuseg.methods.base import Method, one_hot, register
from diffuseg.methods.parts import (
    SelfConditioned,
    at_least,
    build_denoiser,
    dice_ce,
    noised,
    probabilities,
    regression_loss,
    repeat_samples,
    self_condition_estimate,
)
from diffuseg.networks.autoencoder import ImageEncoder, MaskAutoencoder
from diffuseg.sampling.repaint import KnownPixels, check_supported
from diffuseg.sampling.samplers import Denoise
from diffuseg.sampling.windows import sliding_blend
from diffuseg.sampling.x0_guidance import decoder_guidance, hold_marks, x0_guided

CLIP = 1.0  # the latent is tanh-bounded: z0_hat is clamped to [-1, 1]


@dataclass
class LDSegOptions:
    latent_channels: int = 4  # channels of the mask latent z
    downsamples: int = 2  # z is 1 / 2^downsamples of the mask's size
    width: int = 16  # base width of the autoencoder and the image encoder
    cond_channels: int = 8  # channels of the image embedding c = I(X)
    steps: int = 2  # sampling steps when none are given (x0 or v prediction makes 1-2 usable)
    rec_weight: float = 1.0  # w_rec
    diff_weight: float = 1.0  # w_diff
    seg_weight: float = 1.0  # w_seg
    # guided resampling: DPS step size zeta on the latent x0 estimate (guidance_latent); 0 = off
    guidance_scale: float = 1.0
    # self-conditioning (Chen et al. 2023, Alg. 1-2): the previous latent x0 estimate joins the
    # image embedding as latent_channels more conditioning channels (not in the LDSeg paper)
    self_condition: bool = False

    def __post_init__(self) -> None:
        at_least(self, 1, "latent_channels", "width", "cond_channels", "steps")
        at_least(self, 0, "downsamples", "rec_weight", "diff_weight", "seg_weight",
                 "guidance_scale")


def with_estimate(cond: Tensor, previous: Tensor | None) -> Tensor:
    """The denoiser's conditioning: the image embedding, and the fed-back z0 estimate when
    self-conditioning (``None`` otherwise)."""
    return cond if previous is None else torch.cat([cond, previous.to(cond.dtype)], dim=1)


def check_patch(options: LDSegOptions, config: RunConfig) -> None:
    factor = 2 ** options.downsamples * 2 ** (len(config.network.channels) - 1)
    if any(p % factor for p in config.data.patch_size):
        raise ConfigError(
            f"data.patch_size={list(config.data.patch_size)} must be divisible by {factor} for "
            f"ldseg (2^downsamples x 2^(levels-1)); pick a multiple of {factor}")


@register("ldseg")
class LDSeg(Method):
    """Latent diffusion: mask autoencoder + image encoder + latent ``ConditionalUNet``."""

    process_kind = "gaussian"
    options_type = LDSegOptions
    guidable = True  # sample(known=): decoder-guided resampling (guidance_latent)
    guidance_scaled = True  # known.scale (--guidance-scale) overrides options.guidance_scale
    onnx_exportable = True

    def __init__(self, config: RunConfig):
        super().__init__(config)
        o: LDSegOptions = self.options
        check_patch(o, config)
        self.latent_channels = o.latent_channels
        self.factor = 2 ** o.downsamples  # image size / latent size
        net, d = config.network, config.spatial_dims
        self.autoencoder = MaskAutoencoder(d, config.num_classes, o.latent_channels, o.width,
                                           o.downsamples, net.norm_groups)
        self.image_encoder = ImageEncoder(d, config.in_channels, o.cond_channels, o.width,
                                          o.downsamples, net.norm_groups)
        extra = o.latent_channels if o.self_condition else 0  # the fed-back z0 estimate
        self.denoiser = build_denoiser(config, in_channels=o.latent_channels,
                                       cond_channels=o.cond_channels + extra,
                                       out_channels=o.latent_channels)
        self.criterion = dice_ce(config.num_classes)

    def networks(self) -> dict[str, nn.Module]:
        return {"denoiser": self.denoiser, "image_encoder": self.image_encoder,
                "autoencoder": self.autoencoder}

    def default_steps(self) -> int:
        """The option ``steps`` (2), not ``sample.steps``."""
        return self.options.steps

    def loss(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None
             ) -> dict[str, Tensor]:
        """Module docstring: w_rec L_rec + w_diff L_diff + w_seg L_seg."""
        y = one_hot(batch["mask"], self.config.num_classes)
        z0 = self.autoencoder.encode(y.to(batch["image"].dtype))
        rec = self.criterion(self.autoencoder.decode(z0).float(), y)
        target = z0.detach().float()
        t, noise, z_t = noised(self.process, target, generator)
        c = self.image_encoder(batch["image"])

        def net(previous: Tensor | None) -> Tensor:
            return self.denoiser(z_t, t, with_estimate(c, previous)).float()

        previous = (self_condition_estimate(self.process, net, z_t, t, CLIP, generator)
                    if self.options.self_condition else None)
        out = net(previous)
        diff = regression_loss(self.process, out, target, noise, t)
        z0_hat = self.process.predict_x0(z_t, t, out).clamp(-CLIP, CLIP)
        seg = self.criterion(self.autoencoder.decode(z0_hat).float(), y)
        o = self.options
        loss = o.rec_weight * rec + o.diff_weight * diff + o.seg_weight * seg
        return {"loss": loss, "rec": rec, "diff": diff, "seg": seg}

    def denoise_fn(self, cond: Tensor) -> Denoise:
        """The latent denoiser as the sampler sees it, with the image embedding ``cond``
        ``[S*B, cond_channels, *latent]`` fixed; windows of the latent size of ``self.window``.
        With ``self_condition`` each call also sees the previous call's z0 estimate."""
        plain = self._denoise(cond)
        if self.options.self_condition:
            return SelfConditioned(self.process, plain, clip=CLIP)
        return lambda z_t, t: plain(z_t, t, None)

    def _denoise(self, cond: Tensor) -> Callable[[Tensor, Tensor, Tensor | None], Tensor]:
        c = self.latent_channels

        def denoise(z_t: Tensor, t: Tensor, previous: Tensor | None) -> Tensor:
            full = with_estimate(cond.to(z_t.dtype), previous)
            if not self._needs_windows(z_t.shape[2:]):
                return self.denoiser(z_t, t, full).to(z_t.dtype)

            def window(inputs: Tensor) -> Tensor:
                tb = t[:1].expand(inputs.shape[0])
                return self.denoiser(inputs[:, :c], tb, inputs[:, c:]).to(inputs.dtype)

            latent_window = tuple(w // self.factor for w in self.window)
            return sliding_blend(window, torch.cat([z_t, full], dim=1),
                                 latent_window, overlap=0.25)

        return denoise

    def _needs_windows(self, latent_size: tuple[int, ...]) -> bool:
        return self.window is not None and any(
            s > w // self.factor for s, w in zip(latent_size, self.window, strict=True))

    @torch.no_grad()
    def sample(self, image: Tensor, n_samples: int, *, steps: int | None = None,
               generator: torch.Generator | None = None,
               known: KnownPixels | None = None) -> Tensor:
        """``[S, B, K, *sp]`` probabilities: one image encoding, S x B latents per step, one
        decoding of all S x B final latents. ``known``: marks every sample holds (module
        docstring; guided through the decoder, then projected)."""
        b = image.shape[0]
        features = self.image_encoder(image)  # once per image per call, not per step
        cond = repeat_samples(features, n_samples)
        shape = (n_samples * b, self.latent_channels, *features.shape[2:])
        z_T = self.process.prior_sample(shape, generator=generator, device=image.device)
        denoise = self.denoise_fn(cond)
        if known is not None:
            check_supported(self.name, self.config.num_classes, None)
            correct = decoder_guidance(self.autoencoder.decode, known, shape[0],
                                       scale=self.options.guidance_scale if known.scale is None
                                       else known.scale, clip=CLIP)
            denoise = x0_guided(denoise, self.process, correct)
        z0 = self.diffuse(denoise, z_T, steps, generator=generator, clip=CLIP,
                          jumps=None if known is None else known.jumps)
        p = probabilities(self.autoencoder.decode(z0.to(features.dtype)))
        if known is not None:
            p = hold_marks(p, known, shape[0])
        return p.reshape(n_samples, b, *p.shape[1:])

    def size_multiple(self) -> int:
        """The latent denoiser's need: 2^downsamples x 2^(levels - 1)."""
        return self.factor * 2 ** (len(self.config.network.channels) - 1)

"""Guided resampling for the methods that do not diffuse the mask itself: the Gaussian methods
with ``method.target = sdf`` and LDSeg (a latent code). RePaint (``diffuseg.sampling.repaint``)
cannot
serve them: it replaces the known pixels of x_t by a forward-noised copy of their known values,
and here no known value exists: a pixel's signed distance depends on the unknown rest of the
mask, and a partial mask has no latent code. Both are guided through the x0 estimate instead.

**x0 correction.** A sampler step is determined by x_t and x0_hat (DDIM, Song et al. 2021,
eq. 12; the ancestral step's posterior mean, Ho et al. 2020, eq. 7; DPM-Solver++'s data
prediction). ``x0_guided`` wraps the denoiser so that the sampler reads a corrected estimate
``correct(x0_hat)``: it returns the network output (eps, x0 or v) that ``process.predict_x0`` turns
into the corrected x0_hat (the conversions of Salimans & Ho 2022, App. D). The samplers are
unchanged, so every sampler (ddim, ddpm, dpm_solver_pp) is guided the same way; the unknown pixels
follow the correction through x_{t_prev} and the next network call, as in RePaint.
The sampler derives eps_hat from x_t and the corrected x0_hat (as it does for a clipped x0_hat;
diffusers' use_clipped_model_output). MPGD instead keeps the network's eps, i.e. also moves x_t
by sqrt(ab_t) (x0' - x0_hat); tried on the phantom runs of
tests/sampling/test_x0_guidance_learned.py (docs/review.md), that variant was not better (share
in the marked mode, unguided / this / MPGD: sdf inside 0.450 / 0.506 / 0.531, sdf outside 0.083
/ 0.089 / 0.089, ldseg inside 0.412 / 0.963 / 0.963, ldseg outside 0.130 / 0.177 / 0.052),
and it would need a hook in the samplers.

**sdf target** (``sign_projection``): the marks constrain the SIGN of the signed distance
(``diffuseg.methods.sdf``: phi < 0 inside, |phi| >= 1/2 at every pixel centre, x0 = phi / band).
Any signed distance that honours the marks is 1-Lipschitz, so it lies in the envelope

    phi(x) <= d(x, inside marks) - 1/2,     phi(x) >= 1/2 - d(x, outside marks)

(d: Euclidean distance in pixels, as the target's EDT); at a mark this is the half-line its sign
demands, at least half a pixel from zero, and around it the bound says how far the boundary can
be from the mark. At every step x0_hat is clamped to this envelope (``sdf_envelope``; the set is
never empty: the marks are disjoint, so low <= high). The final x0 (t_prev = -1, which every
sampler returns as x0_hat) is clamped once more, exactly, so every decoded sample has
p = sigmoid(-band x0 / temperature) >= sigmoid(2) = 0.88 at inside marks and <= 0.12 at outside
marks. Unlike RePaint, the marked pixels' x_t is not replaced by a sample of q(x_t | x0_known)
(there is no x0_known): a correction Delta of x0_hat moves x_{t_prev} by
(sqrt(ab_p) - sqrt(ab_t (1 - ab_p) / (1 - ab_t))) Delta in a DDIM step, little at the high-noise
steps, and RePaint's resampling jumps (which harmonise the known and unknown regions) have no
counterpart here.

**LDSeg** (``decoder_guidance``): reconstruction guidance in the latent (DPS, Chung et al., ICLR
2023, Alg. 1, with the gradient taken w.r.t. x0_hat rather than through the denoiser, as in
MPGD, He et al., ICLR 2024, so no backward pass through the U-Net). With l = D(z0_hat) the
decoder's logits and y the marks on the known pixels K,

    L(z0_hat) = sum_{i in K} BCE(l_i, y_i),   r = (sigmoid(l) - y) on K,
    z0_hat <- clip(z0_hat) - zeta * grad_{z0_hat} L / ||r||_2,

per sample. grad L = J_D^T r (the BCE's gradient w.r.t. a logit is p - y), so the step is the
unit residual pulled back through the decoder, DPS's zeta_i = zeta' / ||y - A(x0_hat)||
normalisation; zeta is LDSeg's option ``guidance_scale`` (default 1.0; 0 turns the guidance off
and leaves only the final projection). The decoded marks are then held exactly by projection: the
final probabilities at the known pixels are set to the marks (1 inside, 0 outside). Between the
marks and the decoded rest there is no such guarantee: the decoder gets the guided latent, and
the projection only overwrites the marked pixels themselves.

Binary models only (``num_classes = 1``), as for RePaint; 2D and 3D alike.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt
from torch import Tensor

from diffuseg.errors import ConfigError
from diffuseg.sampling.repaint import KnownPixels
from diffuseg.sampling.samplers import Denoise

Correct = Callable[[Tensor], Tensor]  # x0_hat [N, 1, *sp] -> corrected x0_hat


def x0_guided(denoise: Denoise, process, correct: Correct) -> Denoise:
    """``denoise`` as the sampler sees it when x0_hat is replaced by ``correct(x0_hat)`` (module
    docstring); float32, whatever the network's dtype under autocast."""

    def guided(x_t: Tensor, t: Tensor) -> Tensor:
        x_t32 = x_t.float()
        x0 = process.predict_x0(x_t32, t, denoise(x_t, t).float())
        return process.output_for_x0(x_t32, t, correct(x0)).to(x_t.dtype)

    return guided


def expand(known: KnownPixels, chains: int) -> KnownPixels:
    """``known`` for ``chains`` chains, sample-major like the methods' batches."""
    n_samples, rest = divmod(chains, known.values.shape[0])
    assert rest == 0, "chains must be a whole number of samples per image"
    reps = (n_samples, *([1] * (known.values.ndim - 1)))
    return KnownPixels(known.values.repeat(*reps), known.mask.repeat(*reps))


def check_binary(channels: int, known: KnownPixels) -> None:
    if channels != known.values.shape[1]:
        raise ConfigError(f"guided resampling of this method needs a binary model "
                          f"(num_classes=1); the model has {channels} channels")


def sign_projection(band: float, known: KnownPixels, chains: int) -> Correct:
    """x0 (signed distance / band, negative inside) clamped to the envelope ``[low, high]`` of
    every signed distance that honours the marks (module docstring): at the marks themselves the
    sign the mark demands, at least 1 / (2 band) from zero."""
    low, high = sdf_envelope(known, band)
    reps = (chains // known.values.shape[0], *([1] * (known.values.ndim - 1)))
    low, high = low.repeat(*reps), high.repeat(*reps)

    def project(x0: Tensor) -> Tensor:
        check_binary(x0.shape[1], known)
        return torch.maximum(torch.minimum(x0, high.to(x0)), low.to(x0))

    return project


def sdf_envelope(known: KnownPixels, band: float) -> tuple[Tensor, Tensor]:
    """``(low, high)`` ``[B, 1, *sp]`` in x0 units: a signed distance phi with phi <= -1/2 at the
    inside marks p and phi >= 1/2 at the outside marks q is 1-Lipschitz, so at every pixel x
    phi(x) <= d(x, inside marks) - 1/2 and phi(x) >= 1/2 - d(x, outside marks) (EDT in pixels,
    as the sdf target's); divided by ``band``. low <= high everywhere (marks are disjoint, so
    d_in + d_out >= 1); +-inf where there is no mark of that kind."""
    inside = (known.mask & (known.values > 0.5)).cpu().numpy()
    outside = (known.mask & (known.values <= 0.5)).cpu().numpy()
    high = np.stack([_bound(m, band) for m in inside])
    low = -np.stack([_bound(m, band) for m in outside])
    return (torch.from_numpy(low).to(known.values.device),
            torch.from_numpy(high).to(known.values.device))


def _bound(marks: np.ndarray, band: float) -> np.ndarray:
    """(distance to the nearest mark - 1/2) / band, float32; +inf without marks."""
    if not marks.any():
        return np.full(marks.shape, np.inf, np.float32)
    return ((distance_transform_edt(~marks) - 0.5) / band).astype(np.float32)


def decoder_guidance(decode: Callable[[Tensor], Tensor], known: KnownPixels, chains: int, *,
                     scale: float, clip: float) -> Correct:
    """One DPS/MPGD step on the latent x0_hat towards decoded logits ``decode(z)`` that agree
    with the marks (module docstring); ``scale`` = zeta, ``clip`` bounds the latent."""
    k = expand(known, chains)

    def correct(z0: Tensor) -> Tensor:
        z = z0.detach().float().clamp(-clip, clip)
        if scale == 0:
            return z
        mask, y = k.mask.to(z.device), k.values.to(z.device)
        with torch.enable_grad():
            z.requires_grad_(True)
            logits = decode(z).float()
            check_binary(logits.shape[1], k)
            bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
            (grad,) = torch.autograd.grad((bce * mask).sum(), z)
        residual = ((torch.sigmoid(logits.detach()) - y) * mask).flatten(1).norm(dim=1)
        norm = residual.clamp_min(1e-12).view(-1, *([1] * (z.ndim - 1)))
        return (z - scale * grad / norm).detach()

    return correct


def hold_marks(probabilities: Tensor, known: KnownPixels, chains: int) -> Tensor:
    """Decoded probabilities ``[N, 1, *sp]`` with the marked pixels set to the marks (1 inside,
    0 outside): the final projection that makes every sample hold them exactly."""
    k = expand(known, chains)
    check_binary(probabilities.shape[1], k)
    return torch.where(k.mask.to(probabilities.device),
                       k.values.to(probabilities), probabilities)

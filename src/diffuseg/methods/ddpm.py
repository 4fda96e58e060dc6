"""Image-conditioned diffusion segmentation (Wolleb et al., MIDL 2022; MedSegDiff-V1 design).

The mask x0 is diffused by a Gaussian process; a U-Net that sees the image concatenated to x_t
predicts eps, x0 or v (Ho et al. 2020 eq. 14, "simple" loss). Each sample starts from its own x_T,
so n samples form an implicit ensemble (Wolleb et al., Sec. 2). The model, loss and sampling are
``methods/conditional.py``'s, shared with flow matching; this leaf names the process. No options.
"""

from __future__ import annotations

from diffuseg.methods.base import register
from diffuseg.methods.conditional import ConditionalMaskMethod


@register("ddpm")
class DDPMSegmentation(ConditionalMaskMethod):
    """Gaussian diffusion of the mask (or its signed distance: ``method.target=sdf``)."""

    process_kind = "gaussian"

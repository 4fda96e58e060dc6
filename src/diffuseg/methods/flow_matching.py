"""Flow matching for segmentation: the mask is transported from N(0, I) along straight paths
(conditional flow matching, Lipman et al., ICLR 2023; rectified flow, Liu et al., ICLR 2023),
image-conditioned as ``ddpm``: a U-Net that sees the image concatenated to x_sigma predicts the
velocity eps - x0 (``process.prediction=v``, the flow-matching loss) or the clean mask
(``process.prediction=x0``, the default of every run: then v = (x_sigma - x0_hat) / sigma), and
sampling integrates the ODE from sigma = 1 to 0 with Euler's method (``sample.sampler=euler``,
the default) or Heun's (``heun``). Each sample starts from its own noise, so n samples form an
implicit ensemble, as in the flow-matching segmentation of ambiguous masks (2025), whose
stochasticity comes from the initial noise too.

Where we differ from the papers: the process (processes/flow.py) uses sigma_min = 0 and the
T-point timestep grid of the other processes; the network is the project's conditional U-Net
(methods/conditional.py), not the papers' transformers or U-Nets; masks are transported as
2m - 1 (or their signed distance, ``method.target=sdf``). No options.
"""

from __future__ import annotations

from diffuseg.methods.base import register
from diffuseg.methods.conditional import ConditionalMaskMethod


@register("flow_matching")
class FlowMatchingSegmentation(ConditionalMaskMethod):
    """Flow matching of the mask on the straight path of ``processes/flow.py``."""

    process_kind = "flow"

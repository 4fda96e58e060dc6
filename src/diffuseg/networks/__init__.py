"""Networks (nn.Modules with ``spatial_dims`` in {2, 3}); they know nothing of processes."""

from diffuseg.networks.medsegdiff_v2 import MedSegDiffV2
from diffuseg.networks.unet import ConditionalUNet, SegmentationUNet, count_parameters

__all__ = ["ConditionalUNet", "MedSegDiffV2", "SegmentationUNet", "count_parameters"]

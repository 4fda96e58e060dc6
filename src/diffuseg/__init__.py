"""diffuseg: medical image segmentation with diffusion models.

Learns the distribution of expert masks for an image, draws many plausible masks, and turns them
into a consensus mask and uncertainty maps, in 2D and 3D.
"""

from diffuseg.errors import DiffusegError

__version__ = "0.1.0"
__all__ = ["DiffusegError", "__version__"]

"""Segmentation paradigms: each combines a process, a network and a loss."""

import diffuseg.methods.baselines  # noqa: F401  (registers "unet", "mc_dropout", "ensemble")
import diffuseg.methods.berdiff  # noqa: F401  (registers "berdiff")
import diffuseg.methods.cimd  # noqa: F401  (registers "cimd")
import diffuseg.methods.hidiff  # noqa: F401  (registers "hidiff")
import diffuseg.methods.ldseg  # noqa: F401  (registers "ldseg")
import diffuseg.methods.medsegdiff_v2  # noqa: F401  (registers "medsegdiff_v2")
import diffuseg.methods.prob_unet  # noqa: F401  (registers "prob_unet")
import diffuseg.methods.wdm  # noqa: F401  (registers "wdm")
from diffuseg.methods import ddpm  # noqa: F401  (registers "ddpm")
from diffuseg.methods.base import METHODS, Method, build_method, one_hot

__all__ = ["METHODS", "Method", "build_method", "one_hot"]

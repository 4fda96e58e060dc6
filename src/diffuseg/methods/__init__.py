"""Segmentation paradigms: each combines a process, a network and a loss.

Every module of this folder is imported here; a method module registers its class with
``@register("name")`` (``base.METHODS``), so a new method is one new file
(docs/adding_a_method.md). The shared modules (``base``, ``parts``, ``targets``, ``sdf``,
``wavelets``) register nothing.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

from diffuseg.methods.base import METHODS, Method, build_method, one_hot  # noqa: E402

__all__ = ["METHODS", "Method", "build_method", "one_hot"]

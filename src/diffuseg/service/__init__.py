"""The HTTP service (``diffuseg serve``): a thin FastAPI layer over
``diffuseg.inference.predictor``.

``create_app(ServiceSettings(...))`` builds the app; see ``app.py`` for what it puts on
``app.state`` for optional routers (the review page)."""

from diffuseg.service.settings import ServiceSettings

__all__ = ["ServiceSettings"]

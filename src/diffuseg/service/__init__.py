"""The HTTP service (``diffuseg serve``) and the clinician's review page."""

"""geodemo: generative visual geolocation (PLONK) — sample where on Earth a photo was taken."""

from geodemo.pipeline import GeoPipeline, Prediction, load

__all__ = ["GeoPipeline", "Prediction", "load"]

"""CheXVision: chest X-ray classifiers on NIH ChestX-ray14 — data, models, training, evaluation.

A research and teaching tool. Not a medical device; not for clinical use.
"""

__version__ = "0.1.0"

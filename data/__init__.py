"""The ground floor: image and volume I/O (``data.io``), preprocessing, errors (``data.errors``), datasets,
synthetic tasks and augmentations. It imports nothing of ``model``, ``app`` or ``cli``."""

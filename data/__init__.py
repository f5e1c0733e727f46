"""Image and volume I/O, preprocessing, synthetic tasks and datasets."""

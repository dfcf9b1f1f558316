"""The choices of the input transform (`hdmap.data.transforms`), by name: what a data config may say, checked
without torch."""

RESIZE_METHODS = ("nearest", "bilinear", "bicubic", "aspect_pad")
NORMALIZATIONS = ("imagenet", "clip", "none")
PER_IMAGE_NORMS = ("none", "minmax", "robust_p5_p95", "robust_p1_p99")

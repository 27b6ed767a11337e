"""ovisnet: Occluded Video Instance Segmentation model zoo."""

__version__ = "0.1.0"

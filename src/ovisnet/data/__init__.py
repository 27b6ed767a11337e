"""OVIS / YouTube-VIS data: annotation parsing, frame sampling, datasets and the DataModule.

The DataModule (the only Lightning-aware part) lives in :mod:`ovisnet.data.datamodule` and is not
imported here, so ``import ovisnet.data`` stays free of Lightning.
"""

from ovisnet.data.annotations import (
    OCCLUSION_LEVELS,
    AnnotationError,
    VISAnnotations,
    load_annotations,
)
from ovisnet.data.sampling import (
    inference_clips,
    reference_frames,
    sample_clip,
    sample_reference_frame,
)

__all__ = [
    "OCCLUSION_LEVELS",
    "AnnotationError",
    "VISAnnotations",
    "inference_clips",
    "load_annotations",
    "reference_frames",
    "sample_clip",
    "sample_reference_frame",
]

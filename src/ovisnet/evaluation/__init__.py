"""OVIS / YouTube-VIS video AP (own code, official semantics) and results formatting.

Numpy and pycocotools only: no torch, Lightning or Hydra here.
"""

from __future__ import annotations

from ovisnet.evaluation.formatting import (
    VideoResultBuilder,
    encode_mask,
    format_video_results,
    write_results,
)
from ovisnet.evaluation.table import format_metrics_table
from ovisnet.evaluation.vis_eval import (
    METRIC_KEYS,
    OCCLUSION_METRIC_KEYS,
    EvaluationError,
    GroundTruth,
    evaluate_results,
)

__all__ = [
    "METRIC_KEYS",
    "OCCLUSION_METRIC_KEYS",
    "EvaluationError",
    "GroundTruth",
    "VideoResultBuilder",
    "encode_mask",
    "evaluate_results",
    "format_metrics_table",
    "format_video_results",
    "write_results",
]

"""ovisnet.tracking: online association of per-frame detections into tracks (no Lightning/Hydra).

``OnlineTracker`` (one per video) implements MaskTrack R-CNN's inference tracking (SPEC-models.md
§2.3), shared by MaskTrack R-CNN, CMaskTrack R-CNN, SipMask-VIS and CSipMask; the association
score (Eq. 3) is the single function ``association_scores``. STEm-Seg has no tracker: its
clusters are linked across sub-clips by ``ClipStitcher`` inside ``ClipPredictor`` (SPEC §7.4).

Baseline trackers over the same detections, predictor and results writer (config group
``tracker=masktrack|iou|deepsort|seq``): ``IoUTracker`` (IoUTracker+: Eq. 3 without appearance,
IoU >= 0.3), ``DeepSORTTracker`` (Kalman motion, cosine appearance, gating, Hungarian) and
``SeqTracker`` (offline, Seq-NMS-style max-score paths over the whole video).
"""

from __future__ import annotations

from ovisnet.tracking.association import MatchWeights, association_scores
from ovisnet.tracking.clip_predictor import ClipPredictor, ClusteringConfig
from ovisnet.tracking.clustering import ClipStitcher, cluster_pixels
from ovisnet.tracking.deepsort import DeepSORTTracker
from ovisnet.tracking.iou_tracker import IoUTracker
from ovisnet.tracking.memory import TrackMemory
from ovisnet.tracking.seq import SeqTracker
from ovisnet.tracking.tracker import OnlineTracker, oracle_detections

__all__ = [
    "ClipPredictor",
    "ClipStitcher",
    "ClusteringConfig",
    "DeepSORTTracker",
    "IoUTracker",
    "MatchWeights",
    "OnlineTracker",
    "SeqTracker",
    "TrackMemory",
    "association_scores",
    "cluster_pixels",
    "oracle_detections",
]

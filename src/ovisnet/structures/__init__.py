"""Typed containers: :class:`Instances` (one frame's objects) and clip samples / batches."""

from ovisnet.structures.clip import ClipBatch, ClipSample, collate_clips
from ovisnet.structures.instances import FeatureMaps, Instances

__all__ = ["ClipBatch", "ClipSample", "FeatureMaps", "Instances", "collate_clips"]

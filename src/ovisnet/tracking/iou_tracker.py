"""IoUTracker+: MaskTrack R-CNN's online tracker without its appearance term (a baseline).

The association score is Eq. 3 minus ``log p_i(n)``: ``v_i(n) = α log s_i + β IoU(b_i, b_n) +
γ δ(c_i, c_n)`` with the same weights, "new" slot (IoU 0, δ 1), per-frame conflict resolution and
memory as :class:`~ovisnet.tracking.tracker.OnlineTracker` (SPEC-models.md §2.3 steps 4-6, 8);
in addition a track is a candidate for a detection only at box IoU >= ``min_iou`` (0.3). With the
paper's weights a detection therefore joins the same-class track it overlaps most (IoU >= 0.3),
and otherwise starts a new track; of several detections claiming one track in a frame the one
with the highest ``v`` (the most confident at equal IoU) wins and the others are dropped, as in
MaskTrack R-CNN. Embeddings are ignored (the memory keeps boxes, labels and last frames).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import box_iou

from ovisnet.structures.instances import Instances
from ovisnet.tracking.association import MatchWeights, association_scores
from ovisnet.tracking.tracker import OnlineTracker


class IoUTracker(OnlineTracker):
    """Frame-by-frame association by detection score, box IoU and class (one per video).

    Args:
        weights: α, β, γ of Eq. 3 (the appearance term is left out).
        min_iou: the smallest box IoU at which a detection may join a track (default 0.3).
        nms_iou, update_labels, max_age: as :class:`~ovisnet.tracking.tracker.OnlineTracker`.
    """

    def __init__(
        self,
        weights: MatchWeights | None = None,
        *,
        min_iou: float = 0.3,
        nms_iou: float | None = None,
        update_labels: bool = False,
        max_age: int | None = None,
    ) -> None:
        if not 0.0 <= min_iou <= 1.0:
            raise ValueError(f"min_iou must be in [0, 1], got {min_iou}")
        super().__init__(
            weights if weights is not None else MatchWeights(),
            nms_iou=nms_iou,
            update_labels=update_labels,
            max_age=max_age,
        )
        self.min_iou = min_iou

    @torch.no_grad()
    def step(self, detections: Instances, embeddings: Tensor | None = None) -> Instances:
        """As :meth:`OnlineTracker.step`; ``embeddings`` are not used (may be None): the
        memory keeps zero-width rows, so it costs boxes and labels only."""
        return super().step(detections, detections.boxes.new_zeros(len(detections), 0))

    def scores(self, detections: Instances, embeddings: Tensor, candidates: Tensor) -> Tensor:
        """Eq. 3 without ``log p``; tracks below ``min_iou`` get ``-inf`` (never chosen)."""
        assert detections.scores is not None
        ious = box_iou(detections.boxes, self.memory.boxes[candidates])
        n, c = ious.shape
        # uniform logits: log p = -log(c + 1) in every column; adding it back leaves α, β, γ terms
        v = association_scores(
            ious.new_zeros(n, c + 1),
            detections.scores,
            ious,
            detections.labels[:, None] == self.memory.labels[candidates][None, :],
            self.weights,
        ) + math.log(c + 1)
        v[:, 1:] = v[:, 1:].masked_fill(ious < self.min_iou, -math.inf)
        return v

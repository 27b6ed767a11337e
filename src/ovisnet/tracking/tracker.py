"""Online tracker of MaskTrack R-CNN and its descendants (SPEC-models.md §2.3 steps 2-6, §5.3).

One ``OnlineTracker`` per video, created by the caller's predict loop: the "first frame clears
the memory" rule of the official code is a fresh tracker here, and nothing resets on frame 0.
Frames are fed in temporal order; each ``step`` takes the frame's final detections (after the
detector's class-wise NMS, SPEC §2.3 step 1) and their track embeddings, and returns the kept
detections with ``track_ids``. The per-frame outputs go to the results writer
(``ovisnet.evaluation``), which aggregates each track id into one video-level result (§1.6).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor
from torchvision.ops import box_iou, nms

from ovisnet.models.track_head import match_logits
from ovisnet.structures.instances import Instances
from ovisnet.tracking.association import MatchWeights, association_scores
from ovisnet.tracking.memory import TrackMemory

# Official code (``best_match_scores`` in MaskTrack / SipMask-VIS): a detection claims an existing
# track only if its score beats this initial value, so a sole claimant with v <= -100 is dropped.
_UNCLAIMED = -100.0


class OnlineTracker:
    """Frame-by-frame association of detections to tracks by Eq. 3 (one instance per video).

    Per frame (SPEC §2.3):

    * no detection → nothing is output and the memory is unchanged;
    * no candidate track (memory empty) → every detection starts a new track, ids continuing the
      counter (``0..n-1`` on the first frame);
    * otherwise each detection independently takes ``n* = argmax_n v_i(n)`` over the "new" slot
      and the candidate tracks, scored against the memory as it was at the start of the frame;
      then, in input order, ``n* = new`` starts a new track (``id = len(memory)``) and
      ``n* = track k`` claims ``k`` if its ``v`` beats every earlier claim on ``k`` in this frame
      (and -100). Net effect: per existing track the claimant with the highest ``v`` wins (the
      earliest on ties); losing claimants are dropped from the output, not turned into new
      tracks. The winner overwrites the track's embedding and box; the track keeps its first
      label unless ``update_labels``.

    IoU is ``torchvision.ops.box_iou`` on continuous xyxy boxes (the mmdet v0.x code counts
    inclusive pixels, ``w = x2 - x1 + 1``; the difference is sub-pixel).

    Args:
        weights: α, β, γ of Eq. 3.
        nms_iou: if set, a class-agnostic NMS at this IoU runs on each frame's detections before
            association (survivors keep their input order). Default None: the paper's pipeline
            has only the detector's class-wise NMS.
        update_labels: overwrite a track's label with its latest detection's (default False:
            official behaviour, the label of the track's first detection).
        max_age: if set, a track last matched more than ``max_age`` frames ago (empty frames
            count) is no longer a candidate; its id is never reused. Default None: tracks never
            expire, as in the paper.
    """

    def __init__(
        self,
        weights: MatchWeights,
        *,
        nms_iou: float | None = None,
        update_labels: bool = False,
        max_age: int | None = None,
    ) -> None:
        if max_age is not None and max_age < 1:
            raise ValueError(f"max_age must be >= 1 or None, got {max_age}")
        self.weights = weights
        self.nms_iou = nms_iou
        self.update_labels = update_labels
        self.max_age = max_age
        self.memory = TrackMemory()
        self.frame = 0  # index of the next frame to be fed to ``step``

    @torch.no_grad()
    def step(self, detections: Instances, embeddings: Tensor) -> Instances:
        """Associate one frame's detections with the tracks and update the memory.

        Args:
            detections: the frame's final detections, in the detector's output order (boxes
                ``(N, 4)`` xyxy in the same coordinates for the whole video, ``scores`` ``(N,)``
                in ``(0, 1]`` required, labels ``(N,)``; masks are carried along).
            embeddings: ``(N, D)`` track embeddings of the detections (any ``D``, fixed per video).

        Returns:
            The kept detections, in input order, with ``track_ids`` ``(K,)`` int64 set.
        """
        if detections.scores is None:
            raise ValueError("the tracker needs detection scores (use 1 for ground truth)")
        if embeddings.ndim != 2 or embeddings.shape[0] != len(detections):
            raise ValueError(
                f"embeddings {tuple(embeddings.shape)} must be (N, D) with N = {len(detections)}"
            )
        if len(self.memory) and embeddings.shape[1] != self.memory.embeddings.shape[1]:
            raise ValueError(
                f"embedding dim {embeddings.shape[1]} differs from the memory's "
                f"{self.memory.embeddings.shape[1]}"
            )
        frame = self.frame
        self.frame += 1
        if self.nms_iou is not None:
            keep = nms(detections.boxes, detections.scores, self.nms_iou).sort().values
            detections, embeddings = detections[keep], embeddings[keep]
        if len(detections) == 0:
            return detections

        candidates = self.memory.track_ids
        if self.max_age is not None:
            candidates = candidates[frame - self.memory.last_seen <= self.max_age]
        if candidates.numel() == 0:
            ids = self.memory.append(embeddings, detections.boxes, detections.labels, frame)
            return replace(detections, track_ids=ids)

        scores = self.scores(detections, embeddings, candidates)
        best_v, best_n = scores.max(dim=1)
        new: list[int] = []
        claims: dict[int, tuple[float, int]] = {}  # track id -> (best v so far, detection)
        candidate_ids = candidates.tolist()
        for i, (v, column) in enumerate(zip(best_v.tolist(), best_n.tolist(), strict=True)):
            if column == 0:
                new.append(i)
                continue
            track = candidate_ids[column - 1]
            if v > claims.get(track, (_UNCLAIMED, -1))[0]:
                claims[track] = (v, i)

        track_ids = torch.full_like(detections.track_ids, -1)
        if claims:
            tracks = torch.tensor(list(claims), device=track_ids.device)
            winners = torch.tensor([i for _, i in claims.values()], device=track_ids.device)
            track_ids[winners] = tracks
            self.memory.overwrite(
                tracks,
                embeddings[winners],
                detections.boxes[winners],
                frame,
                labels=detections.labels[winners] if self.update_labels else None,
            )
        if new:
            fresh = torch.tensor(new, device=track_ids.device)
            track_ids[fresh] = self.memory.append(
                embeddings[fresh], detections.boxes[fresh], detections.labels[fresh], frame
            )
        kept = track_ids >= 0
        return replace(detections, track_ids=track_ids)[kept]

    def scores(self, detections: Instances, embeddings: Tensor, candidates: Tensor) -> Tensor:
        """Eq. 3 of each detection against the candidate tracks (the association to override).

        Args:
            detections: the frame's ``N`` detections (scores set).
            embeddings: their ``(N, D)`` track embeddings.
            candidates: ``(C,)`` ids of the memory rows that may be matched.

        Returns:
            ``(N, C + 1)`` scores ``v``, column 0 = "new object", column ``k + 1`` = track
            ``candidates[k]``.
        """
        assert detections.scores is not None
        return association_scores(
            match_logits(embeddings, self.memory.embeddings[candidates]),
            detections.scores,
            box_iou(detections.boxes, self.memory.boxes[candidates]),
            detections.labels[:, None] == self.memory.labels[candidates][None, :],
            self.weights,
        )


def oracle_detections(ground_truth: Instances) -> Instances:
    """Tracker input from one frame's ground truth: the OVIS "image oracle" (Qi et al. §5.3).

    The OVIS oracle experiment (58.4 AP with CMaskTrack R-CNN) replaces the image-level
    predictions by the ground-truth boxes, masks and categories and "track[s] those ground-truth
    bounding boxes with the tracking branch"; MaskTrack R-CNN's "Image Oracle" (Yang et al. §6.4)
    fixes the confidence of every object to 1. So identities still come from the tracker: the
    caller computes the embeddings of these boxes with the model's track head and feeds both to
    ``OnlineTracker.step``. The ground-truth track ids are hidden (set to -1) so they cannot leak
    into the association; crowd regions are not objects and are left out.

    Args:
        ground_truth: the frame's annotated objects (boxes ``(N, 4)``, labels, masks,
            optional ``iscrowd``).

    Returns:
        Instances of the non-crowd objects with ``scores`` 1 and ``track_ids`` -1.
    """
    if ground_truth.iscrowd is not None:
        ground_truth = ground_truth[~ground_truth.iscrowd]
    n = len(ground_truth)
    return replace(
        ground_truth,
        scores=ground_truth.boxes.new_ones(n),
        track_ids=torch.full_like(ground_truth.track_ids, -1),
        iscrowd=None,
    )

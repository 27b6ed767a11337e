"""SeqTracker: offline linking of a whole video's detections, in the spirit of Seq-NMS (a baseline).

Seq-NMS (Han et al. 2016) links detections of consecutive frames into sequences and repeatedly
takes the one of highest total score. Here, for video instance segmentation:

* the tracker buffers every frame's detections as boxes, scores, labels and one opaque mask
  payload per detection (the predictor passes RLEs at the original resolution: no dense mask is
  kept, so memory grows with the number of detections, not with the pixels);
* a *link* joins detection ``i`` of frame ``s`` to detection ``j`` of frame ``t`` (``t = s + 1``,
  or up to ``max_gap`` frames later) when IoUTracker+ would let ``j`` join ``i``'s track: box IoU
  ``>= min_iou`` and Eq. 3's box and class terms beat the "new" slot (``β IoU + γ δ > γ``: with
  the paper's weights, same class); the link's value is ``β IoU + γ δ``;
* a path's value is ``Σ α s_i`` over its detections plus the values of its links. Every term is
  non-negative, so longer paths are preferred, as with Seq-NMS's sum of scores (a sum of
  ``log s`` would prefer short ones);
* :meth:`SeqTracker.link` repeatedly finds the path of highest value by dynamic programming over
  the frames, gives it the next track id and removes its detections (and, with
  ``suppress_iou``, the same-class detections overlapping it in its frames, Seq-NMS's
  suppression), until the best path has fewer than ``min_length`` detections (8; at most the
  video's length). Detections on no path are dropped.

Ties go to the earliest frame and the lowest detection index, so the result is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from ovisnet.structures.instances import Instances
from ovisnet.tracking.association import MatchWeights


@dataclass
class _Links:
    """Admissible links from frame ``source`` into one frame: ``src[k] -> dst[k]``, ``value[k]``."""

    source: int
    src: np.ndarray
    dst: np.ndarray
    value: np.ndarray


class SeqTracker:
    """Buffers a video's detections, then links them into tracks offline (one per video).

    Args:
        weights: α, β, γ of Eq. 3 (the appearance term is not used).
        min_iou: the smallest box IoU of a link (default 0.3).
        min_length: stop once the best remaining path has fewer detections than this (default 8;
            capped at the number of frames, so a short video still gets tracks).
        max_gap: links may skip up to this many frames (default 0: consecutive frames only, as
            Seq-NMS; an object hidden for ``g`` frames then continues its path if ``g <=
            max_gap``).
        suppress_iou: if set, extracting a path also removes the same-class detections of its
            frames whose IoU with the path's box exceeds this (Seq-NMS's suppression step).
    """

    def __init__(
        self,
        weights: MatchWeights | None = None,
        *,
        min_iou: float = 0.3,
        min_length: int = 8,
        max_gap: int = 0,
        suppress_iou: float | None = None,
    ) -> None:
        if min_length < 1 or max_gap < 0:
            raise ValueError(f"need min_length >= 1 and max_gap >= 0, got {min_length}, {max_gap}")
        self.weights = weights if weights is not None else MatchWeights()
        self.min_iou = min_iou
        self.min_length = min_length
        self.max_gap = max_gap
        self.suppress_iou = suppress_iou
        self.frames: list[Instances] = []  # per frame: boxes, scores, labels on the CPU, no masks
        self.masks: list[list[Any]] = []  # per frame: one payload (RLE) per detection

    def add(self, detections: Instances, masks: Sequence[Any] | None = None) -> None:
        """Buffer the next frame (every frame in order, also frames without detections).

        Args:
            detections: the frame's detections (boxes in one frame of reference for the whole
                video, ``scores`` set); their ``masks`` are not kept.
            masks: one payload per detection returned with it by :meth:`link` (the predictor
                passes RLE dicts), or None.
        """
        if detections.scores is None:
            raise ValueError("the tracker needs detection scores (use 1 for ground truth)")
        n = len(detections)
        if masks is not None and len(masks) != n:
            raise ValueError(f"{len(masks)} masks for {n} detections")
        kept = replace(detections, masks=None).to("cpu")
        self.frames.append(kept)
        self.masks.append(list(masks) if masks is not None else [None] * n)

    def _links(self, t: int) -> list[_Links]:
        """The admissible links into frame ``t`` from frames ``t - 1 - max_gap .. t - 1``."""
        target = self.frames[t]
        w = self.weights
        out = []
        for source in range(max(0, t - 1 - self.max_gap), t):
            prev = self.frames[source]
            if len(prev) == 0 or len(target) == 0:
                continue
            iou = box_iou(prev.boxes.double(), target.boxes.double()).numpy()
            same = (prev.labels[:, None] == target.labels[None, :]).numpy()
            value = w.iou * iou + w.label * same
            ok = (iou >= self.min_iou) & (value > w.label)
            src, dst = np.nonzero(ok)
            out.append(_Links(source, src, dst, value[src, dst]))
        return out

    def link(self) -> list[tuple[Instances, list[Any]]]:
        """Link the buffered detections into tracks.

        Returns:
            Per frame, in order: the detections on a path, in input order, with ``track_ids``
            set (``0`` for the first path extracted, then ``1``, …; masks None), and their mask
            payloads.
        """
        n_frames = len(self.frames)
        if n_frames == 0:
            return []
        links = [self._links(t) for t in range(n_frames)]
        node = [self.weights.det_score * f.scores.double().numpy() for f in self.frames]
        alive = [np.ones(len(f), dtype=bool) for f in self.frames]
        ids = [np.full(len(f), -1, dtype=np.int64) for f in self.frames]
        best = [np.full(len(f), -np.inf) for f in self.frames]  # best path value ending here
        length = [np.zeros(len(f), dtype=np.int64) for f in self.frames]
        back = [np.full((len(f), 2), -1, dtype=np.int64) for f in self.frames]  # (frame, index)
        min_length = min(self.min_length, n_frames)

        def forward(start: int) -> None:
            """Best path value, length and predecessor of every detection of frames >= start."""
            for t in range(start, n_frames):
                incoming = np.zeros(len(node[t]))  # starting a path here adds nothing
                pred_len = np.zeros(len(node[t]), dtype=np.int64)
                back[t][:] = -1
                if links[t]:
                    source = np.concatenate([np.full(len(lk.src), lk.source) for lk in links[t]])
                    src = np.concatenate([lk.src for lk in links[t]])
                    dst = np.concatenate([lk.dst for lk in links[t]])
                    cand = np.concatenate([best[lk.source][lk.src] + lk.value for lk in links[t]])
                    live = np.isfinite(cand)  # dead predecessors have best -inf
                    source, src, dst, cand = source[live], src[live], dst[live], cand[live]
                    # per target the best candidate (ties: nearest frame, lowest index)
                    order = np.lexsort((src, -source, -cand, dst))
                    targets, first = np.unique(dst[order], return_index=True)
                    pick = order[first]
                    better = cand[pick] > 0.0
                    targets, pick = targets[better], pick[better]
                    incoming[targets] = cand[pick]
                    back[t][targets, 0] = source[pick]
                    back[t][targets, 1] = src[pick]
                    pred_len[targets] = np.array(
                        [length[f][i] for f, i in zip(source[pick], src[pick], strict=True)],
                        dtype=np.int64,
                    )
                best[t] = np.where(alive[t], node[t] + incoming, -np.inf)
                length[t] = np.where(alive[t], pred_len + 1, 0)

        forward(0)
        track = 0
        while True:
            where = None
            top = -np.inf
            for t in range(n_frames):
                if len(best[t]) and best[t].max() > top:
                    top = float(best[t].max())
                    where = (t, int(best[t].argmax()))
            if where is None or length[where[0]][where[1]] < min_length:
                break
            path = []
            t, i = where
            while t >= 0:
                path.append((t, i))
                t, i = (int(v) for v in back[t][i])
            for t, i in path:
                ids[t][i] = track
                alive[t][i] = False
                if self.suppress_iou is not None:
                    frame = self.frames[t]
                    overlap = box_iou(frame.boxes[i : i + 1], frame.boxes)[0].numpy()
                    same = (frame.labels == frame.labels[i]).numpy()
                    alive[t] &= ~((overlap > self.suppress_iou) & same)
            track += 1
            forward(path[-1][0])
        out = []
        for f, masks, frame_ids in zip(self.frames, self.masks, ids, strict=True):
            keep = np.flatnonzero(frame_ids >= 0)
            kept = replace(f, track_ids=torch.from_numpy(frame_ids))[torch.from_numpy(keep)]
            out.append((kept, [masks[k] for k in keep]))
        return out

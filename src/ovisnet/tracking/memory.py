"""External track memory of the online tracker (Yang et al. 2019 §5.2; SPEC-models.md §2.3).

One row per track ever created in the video; the track id of a row is its index, so ids are
``0..M-1`` in creation order and a new track always gets ``id = len(memory)``. Rows are
overwritten by later matches and never deleted (tracks never expire in the paper; an optional
``max_age`` in the tracker only stops old rows from being candidates).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class TrackMemory:
    """Per-track state: last embedding, last box, label and the frame of the last update.

    Attributes:
        embeddings: ``(M, D)`` embedding of each track's latest detection (detached).
        boxes: ``(M, 4)`` xyxy box of each track's latest detection, in the coordinates the
            tracker is fed (one frame of reference for the whole video).
        labels: ``(M,)`` int64 class of each track (of its first detection unless the tracker
            updates labels).
        last_seen: ``(M,)`` int64 index of the frame that created or last matched each track.
    """

    embeddings: Tensor = field(default_factory=lambda: torch.zeros(0, 0))
    boxes: Tensor = field(default_factory=lambda: torch.zeros(0, 4))
    labels: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    last_seen: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))

    def __len__(self) -> int:
        return self.boxes.shape[0]

    @property
    def track_ids(self) -> Tensor:
        """``(M,)`` int64 ids of the stored tracks (``0..M-1``: a track's id is its row)."""
        return torch.arange(len(self), device=self.boxes.device)

    def append(self, embeddings: Tensor, boxes: Tensor, labels: Tensor, frame: int) -> Tensor:
        """Start one new track per row, in the given order.

        Args:
            embeddings: ``(k, D)`` embeddings (``D`` of the stored ones, once any exist).
            boxes: ``(k, 4)`` xyxy boxes.
            labels: ``(k,)`` int64 classes.
            frame: index of the current frame.

        Returns:
            ``(k,)`` int64 ids of the new tracks (``M..M+k-1``).
        """
        start = len(self)
        embeddings = embeddings.detach()
        seen = labels.new_full((labels.shape[0],), frame)
        if start == 0:
            self.embeddings = embeddings.clone()
            self.boxes = boxes.detach().clone()
            self.labels = labels.clone()
            self.last_seen = seen
        else:
            self.embeddings = torch.cat([self.embeddings, embeddings])
            self.boxes = torch.cat([self.boxes, boxes.detach()])
            self.labels = torch.cat([self.labels, labels])
            self.last_seen = torch.cat([self.last_seen, seen])
        return torch.arange(start, len(self), device=self.boxes.device)

    def overwrite(
        self,
        track_ids: Tensor,
        embeddings: Tensor,
        boxes: Tensor,
        frame: int,
        labels: Tensor | None = None,
    ) -> None:
        """Replace the state of existing tracks with their newly matched detections.

        Args:
            track_ids: ``(k,)`` int64 distinct ids of existing tracks.
            embeddings: ``(k, D)`` new embeddings.
            boxes: ``(k, 4)`` new xyxy boxes.
            frame: index of the current frame.
            labels: ``(k,)`` new classes, or None to keep each track's label.
        """
        self.embeddings[track_ids] = embeddings.detach().to(self.embeddings.dtype)
        self.boxes[track_ids] = boxes.detach().to(self.boxes.dtype)
        if labels is not None:
            self.labels[track_ids] = labels
        self.last_seen[track_ids] = frame

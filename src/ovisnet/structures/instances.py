"""Typed containers shared by the data layer, the models and the tracker.

Conventions (decided once): boxes are ``(N, 4)`` xyxy float32 in absolute pixels of the image they
belong to; masks ``(N, H, W)`` bool at image resolution; labels ``int64`` 0-based foreground classes
(no background index); ``track_ids`` int64, ``-1`` meaning "new / unknown".
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

FeatureMaps = dict[str, Tensor]
"""FPN levels by name (``'0'``..``'3'`` = P2–P5, ``'pool'`` = P6), each ``(B, C, H / s, W / s)``."""


@dataclass
class Instances:
    """The objects of one frame (ground truth or predictions).

    Attributes:
        boxes: ``(N, 4)`` xyxy float32, absolute pixels.
        labels: ``(N,)`` int64, 0-based foreground class.
        track_ids: ``(N,)`` int64 object identities (``-1``: unknown).
        masks: ``(N, H, W)`` bool or None.
        scores: ``(N,)`` float32 confidences (predictions) or None.
        iscrowd: ``(N,)`` bool crowd flags (ground truth) or None.
    """

    boxes: Tensor
    labels: Tensor
    track_ids: Tensor
    masks: Tensor | None = None
    scores: Tensor | None = None
    iscrowd: Tensor | None = None

    def __post_init__(self) -> None:
        n = self.boxes.shape[0]
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (N, 4), got {tuple(self.boxes.shape)}")
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and value.shape[0] != n:
                raise ValueError(f"{f.name} has {value.shape[0]} rows, boxes have {n}")
        if self.labels.dtype != torch.int64 or self.track_ids.dtype != torch.int64:
            raise TypeError("labels and track_ids must be int64")

    @classmethod
    def empty(cls, height: int, width: int, with_masks: bool = True) -> Instances:
        """No objects, in an image of ``height x width``."""
        return cls(
            boxes=torch.zeros(0, 4),
            labels=torch.zeros(0, dtype=torch.int64),
            track_ids=torch.zeros(0, dtype=torch.int64),
            masks=torch.zeros(0, height, width, dtype=torch.bool) if with_masks else None,
        )

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def __getitem__(self, index: Tensor | slice | int) -> Instances:
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Instances(
            **{
                f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
                for f in fields(self)
            }
        )

    def to(self, device: torch.device | str) -> Instances:
        """Move every tensor to ``device``."""
        return replace(
            self,
            **{
                f.name: getattr(self, f.name).to(device)
                for f in fields(self)
                if getattr(self, f.name) is not None
            },
        )

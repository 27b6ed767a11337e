"""Track embedding head and the embedding-matching loss of MaskTrack R-CNN (SPEC §2.1, §2.2).

The head turns pooled RoI features into embeddings; everything after that (match logits with
the "new object" slot, matching targets, the loss) works on embeddings only, so detectors with
other feature sources (SipMask) share it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TrackEmbedHead(nn.Module):
    """Two fully connected layers from a pooled RoI to an embedding (SPEC §2.1).

    flatten → FC ``hidden`` → ReLU → FC ``embed_dim`` (no activation); weights N(0, 0.01),
    biases 0, as in the official track head.

    Args:
        in_channels: channels of the pooled features.
        roi_size: side of the pooled features (7 for the box RoIAlign).
        hidden: width of the first FC layer.
        embed_dim: embedding size.
    """

    def __init__(
        self, in_channels: int = 256, roi_size: int = 7, hidden: int = 1024, embed_dim: int = 1024
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels * roi_size * roi_size, hidden)
        self.fc2 = nn.Linear(hidden, embed_dim)
        for fc in (self.fc1, self.fc2):
            nn.init.normal_(fc.weight, std=0.01)
            nn.init.zeros_(fc.bias)

    def forward(self, roi_features: Tensor) -> Tensor:
        """Embed pooled RoIs.

        Args:
            roi_features: ``(N, C, S, S)`` RoIAlign features.

        Returns:
            ``(N, embed_dim)`` embeddings.
        """
        return self.fc2(F.relu(self.fc1(roi_features.flatten(1))))


def match_logits(query_emb: Tensor, ref_emb: Tensor) -> Tensor:
    """Match scores of query objects against reference objects, with a "new object" slot (Eq. 2).

    Args:
        query_emb: ``(n, D)`` embeddings of the query frame's objects.
        ref_emb: ``(m, D)`` embeddings of the reference (or memory) objects.

    Returns:
        ``(n, m + 1)`` logits: column 0 is the constant 0 of "new object", column ``j + 1`` the
        dot product with reference ``j``. A softmax over a row gives the match probabilities.
    """
    dots = query_emb @ ref_emb.T
    return torch.cat([dots.new_zeros(dots.shape[0], 1), dots], dim=1)


def match_targets(query_track_ids: Tensor, ref_track_ids: Tensor) -> Tensor:
    """Column of :func:`match_logits` each query object should select (``gt_pid``, SPEC §1.5).

    Args:
        query_track_ids: ``(n,)`` int64 identities of the query objects (``-1``: unknown).
        ref_track_ids: ``(m,)`` int64 identities of the reference objects.

    Returns:
        ``(n,)`` int64: ``1 +`` the index of the same identity among the references, or 0 when
        the object is absent from the reference frame (or unknown).
    """
    same = (query_track_ids[:, None] == ref_track_ids[None, :]) & (query_track_ids[:, None] >= 0)
    # Column 0 flags "absent", so the first True of each row is the target column.
    flagged = torch.cat([~same.any(dim=1, keepdim=True), same], dim=1)
    return flagged.to(torch.int64).argmax(dim=1)


def track_loss(logits: list[Tensor], targets: list[Tensor]) -> Tensor:
    """Cross-entropy matching loss averaged per image, then over images (SPEC §2.2).

    Args:
        logits: per image, ``(n_i, m_i + 1)`` :func:`match_logits` of its positive RoIs.
        targets: per image, ``(n_i,)`` int64 target columns (:func:`match_targets`).

    Returns:
        Scalar: mean cross-entropy over the rows of each image, summed over images and divided
        by the number of images; an image without positive RoIs adds 0 but still counts in the
        denominator.
    """
    if not logits:
        raise ValueError("track_loss needs at least one image")
    per_image = [
        F.cross_entropy(lg, tg) if lg.shape[0] > 0 else lg.sum() * 0.0
        for lg, tg in zip(logits, targets, strict=True)
    ]
    return torch.stack(per_image).sum() / len(per_image)

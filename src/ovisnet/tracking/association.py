"""Association score of MaskTrack R-CNN (Yang et al. 2019, Eq. 2 and 3; SPEC-models.md §2.3 step 5).

Shared by MaskTrack R-CNN, CMaskTrack R-CNN, SipMask-VIS and CSipMask: the models differ only in
how they produce detections and embeddings, never in how those are associated.

Column convention (the one of ``ovisnet.models.track_head.match_logits``, Eq. 2, shared by the
track loss and the tracker): a score matrix for ``n`` detections against ``M`` memory entries has
``M + 1`` columns, column 0 being the "new object" slot and column ``m + 1`` the track ``m``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class MatchWeights:
    """Coefficients of the association score (Eq. 3); α, β, γ = 1, 2, 10 in the paper and code.

    Attributes:
        det_score: α, weight of the log detection score.
        iou: β, weight of the box IoU with the track's last box.
        label: γ, weight of the class agreement δ(c_i, c_n).
    """

    det_score: float = 1.0
    iou: float = 2.0
    label: float = 10.0


def association_scores(
    match_logits: Tensor,
    det_scores: Tensor,
    ious: Tensor,
    same_label: Tensor,
    weights: MatchWeights,
) -> Tensor:
    """Eq. 3: ``v_i(n) = log p_i(n) + α log s_i + β IoU(b_i, b_n) + γ δ(c_i, c_n)``.

    For the "new object" column ``n = 0`` the IoU term is 0 and δ is 1, so a new track also gets
    the full γ bonus (official code, ``add_bbox_dummy``): a detection joins an existing track of
    another class only if its other evidence outweighs γ. ``α log s_i`` is added to every column
    (it does not change a row's argmax, but it does make confident detections win conflicts).
    ``log p`` is a ``log_softmax``, exact and stable for large dot products.

    Args:
        match_logits: ``(n, M + 1)`` logits with the "new" slot first (``match_logits``).
        det_scores: ``(n,)`` detection confidences ``s_i`` in ``(0, 1]``.
        ious: ``(n, M)`` box IoU of each detection with each memory box.
        same_label: ``(n, M)`` bool, detection class equals the memory entry's class.
        weights: α, β, γ.

    Returns:
        ``(n, M + 1)`` float scores ``v``, column 0 = "new object".
    """
    n, m = ious.shape
    if match_logits.shape != (n, m + 1) or same_label.shape != (n, m) or det_scores.shape != (n,):
        raise ValueError(
            f"shapes disagree: match_logits {tuple(match_logits.shape)}, det_scores "
            f"{tuple(det_scores.shape)}, ious {tuple(ious.shape)}, same_label "
            f"{tuple(same_label.shape)}; expected (n, M+1), (n,), (n, M), (n, M)"
        )
    log_p = F.log_softmax(match_logits, dim=1)
    iou = F.pad(ious.to(log_p.dtype), (1, 0), value=0.0)
    delta = F.pad(same_label.to(log_p.dtype), (1, 0), value=1.0)
    return (
        log_p
        + weights.det_score * torch.log(det_scores.to(log_p.dtype))[:, None]
        + weights.iou * iou
        + weights.label * delta
    )

"""The Lovász hinge (Berman et al., CVPR 2018): a convex surrogate of the Jaccard loss.

STEm-Seg trains every instance's probability map with it (SPEC-models.md §7.2). There is no
maintained implementation in our dependencies, so it lives here once, tested against a brute-force
evaluation of its definition (the Lovász extension of the Jaccard set function).
"""

from __future__ import annotations

import torch
from torch import Tensor


def lovasz_grad(sorted_labels: Tensor) -> Tensor:
    """Gradient of the Lovász extension of the Jaccard loss at errors sorted decreasingly.

    Args:
        sorted_labels: ``(P,)`` binary ground truth, ordered by decreasing error.

    Returns:
        ``(P,)`` float: ``J(π_1..π_i) - J(π_1..π_{i-1})`` where ``J`` is the Jaccard loss of the
        set of the ``i`` largest errors counted as mistakes.
    """
    labels = sorted_labels.float()
    total = labels.sum()
    intersection = total - labels.cumsum(0)
    union = total + (1.0 - labels).cumsum(0)
    jaccard = 1.0 - intersection / union
    if labels.numel() > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def lovasz_hinge(logits: Tensor, labels: Tensor) -> Tensor:
    """Binary Lovász hinge of one mask.

    Args:
        logits: ``(P,)`` real scores (positive = foreground), any shape flattened.
        labels: ``(P,)`` binary ground truth of the same shape.

    Returns:
        Scalar loss: ``Σ_i relu(e_(i)) g_i`` with hinge errors ``e = 1 - logits * (2 labels - 1)``
        sorted decreasingly and ``g`` the :func:`lovasz_grad` of the labels in that order; 0 for
        an empty input.
    """
    logits, labels = logits.flatten(), labels.flatten()
    if logits.numel() == 0:
        return logits.sum() * 0.0
    signs = 2.0 * labels.float() - 1.0
    errors = 1.0 - logits * signs
    errors_sorted, order = torch.sort(errors, descending=True)
    grad = lovasz_grad(labels[order])
    return torch.dot(torch.relu(errors_sorted), grad)

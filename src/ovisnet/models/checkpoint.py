"""COCO Mask R-CNN initialisation of MaskTrack R-CNN (SPEC §1.3).

The official models start from a COCO Mask R-CNN R50-FPN checkpoint; class-specific layers do
not match the OVIS class count and keep their random initialisation. Here the checkpoint is
torchvision's ``maskrcnn_resnet50_fpn`` state dict, read from a local file (nothing is
downloaded). :class:`~ovisnet.models.masktrack.MaskTrackRCNN` names its modules like torchvision
(``backbone.body``, ``backbone.fpn``, ``rpn.head``, ``roi_heads.box_head``, ...), so keys map
onto the model unchanged; torchvision's own version hooks convert the older key layout
(``rpn.head.conv.weight``, ``mask_head.mask_fcn1.weight``, ...) of the published COCO file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

COCO_MODULES = (
    "backbone.body.",
    "backbone.fpn.",
    "rpn.head.",
    "roi_heads.box_head.",
    "roi_heads.box_predictor.",
    "roi_heads.mask_head.",
    "roi_heads.mask_predictor.",
)
"""Key prefixes taken from a torchvision Mask R-CNN checkpoint (identical in our model)."""


@dataclass
class LoadReport:
    """What :func:`load_coco_maskrcnn` did.

    Attributes:
        loaded: model state keys set from the checkpoint.
        skipped: checkpoint keys not used, with the reason (shape mismatch of a class-specific
            layer, or not part of the Mask R-CNN modules).
        missing: model state keys the checkpoint did not set; they keep their initialisation
            (track head, calibration, class-specific layers of another class count).
    """

    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def load_coco_maskrcnn(model: nn.Module, path: str | Path) -> LoadReport:
    """Initialise a :class:`~ovisnet.models.masktrack.MaskTrackRCNN` from COCO Mask R-CNN weights.

    Args:
        model: the model to update in place.
        path: local file with a torchvision ``maskrcnn_resnet50_fpn`` state dict, bare or under
            a ``"model"`` / ``"state_dict"`` key (a ``"module."`` prefix is removed).

    Returns:
        The :class:`LoadReport`. Tensors whose shape differs from the model's (``cls_score``,
        ``bbox_pred``, ``mask_fcn_logits`` for another class count) are skipped, so those layers
        keep the model's fresh initialisation.

    Raises:
        FileNotFoundError: when ``path`` is not a file.
        TypeError: when ``model`` is not of the Mask R-CNN family (a P3-P7 one-stage model
            would receive FPN layers of other levels under the same names).
    """
    if not hasattr(model, "roi_heads") or not hasattr(model, "rpn"):
        raise TypeError(
            f"init_from loads COCO Mask R-CNN weights into the MaskTrack family; "
            f"{type(model).__name__} has no RPN / RoI heads to receive them"
        )
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO Mask R-CNN checkpoint not found: {path}")
    state = _unwrap(torch.load(path, map_location="cpu", weights_only=True))
    own = model.state_dict()
    report = LoadReport()
    selected: dict[str, Tensor] = {}
    for key, value in state.items():
        if not key.startswith(COCO_MODULES):
            report.skipped[key] = "not a Mask R-CNN module"
        elif key in own and own[key].shape != value.shape:
            report.skipped[key] = f"shape {tuple(value.shape)} != {tuple(own[key].shape)}"
        else:
            selected[key] = value
    # Without version metadata, torchvision's hooks rename old-layout keys where present.
    result = model.load_state_dict(selected, strict=False)
    for key in result.unexpected_keys:
        report.skipped[key] = "no such key in the model"
    missing = set(result.missing_keys)
    report.loaded = [k for k in own if k not in missing]
    report.missing = [k for k in own if k in missing]
    log.info(
        "COCO init from %s: %d tensors loaded, %d skipped, %d left at their initialisation",
        path,
        len(report.loaded),
        len(report.skipped),
        len(report.missing),
    )
    return report


def _unwrap(checkpoint: Mapping[str, object]) -> dict[str, Tensor]:
    """The state dict inside a checkpoint, without a DDP ``module.`` prefix."""
    for key in ("model", "state_dict"):
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping):
            checkpoint = inner
            break
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}  # type: ignore[misc]

"""Mask R-CNN box and mask heads driven step by step (SPEC §2.1, §3.3, §9).

:class:`MaskTrackRoIHeads` is torchvision's ``RoIHeads`` (its sampling, losses and
post-processing are reused as they are) with methods that let the caller

* pool the box and mask heads from a feature dict other than the RPN's (calibrated features),
* see the sampled RoIs and their matched ground truth (for the tracking loss),
* average class logits, box deltas and mask logits over several feature dicts (one per reference
  frame) before post-processing.

Submodule names are torchvision's (``box_head``, ``box_predictor``, ``mask_head``, ...), so COCO
Mask R-CNN weights load onto them unchanged. The inherited ``forward`` remains torchvision's
plain single-feature-dict Mask R-CNN; :class:`~ovisnet.models.masktrack.MaskTrackRCNN` uses the
methods below instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import (
    RoIHeads,
    maskrcnn_inference,
    maskrcnn_loss,
)
from torchvision.ops import MultiScaleRoIAlign

from ovisnet.models.calibration import reference_mean
from ovisnet.structures import FeatureMaps, Instances

ROI_LEVELS = ["0", "1", "2", "3"]
"""FPN levels P2–P5 pooled by the RoI heads (P6 feeds only the RPN)."""


@dataclass(frozen=True)
class RCNNConfig:
    """Second-stage hyper-parameters (SPEC §2.2, §3.4).

    Attributes:
        fg_iou_thresh: IoU at or above which a proposal is positive.
        bg_iou_thresh: IoU below which a proposal is negative.
        batch_size_per_image: RoIs sampled per image in training.
        positive_fraction: target share of positives among them.
        bbox_reg_weights: box coder weights (inverse target stds 0.1, 0.1, 0.2, 0.2).
        score_thresh: detections need a class score above it.
        nms_thresh: class-wise NMS IoU.
        detections_per_img: detections kept per image after NMS.
        representation_size: width of the two box-head FC layers.
        mask_channels: width of the four mask-head convolutions.
        box_loss_beta: smooth-L1 β of the box regression loss: 1.0 in MaskTrack / CMaskTrack
            R-CNN (mmdetection's R-CNN head); torchvision's ``fastrcnn_loss`` uses 1/9.
    """

    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    representation_size: int = 1024
    mask_channels: int = 256
    box_loss_beta: float = 1.0


def rcnn_box_losses(
    class_logits: Tensor,
    box_deltas: Tensor,
    labels: list[Tensor],
    regression_targets: list[Tensor],
    *,
    beta: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Softmax cross-entropy and smooth-L1 box loss of the sampled RoIs (SPEC §2.2).

    Both are normalised by the number of sampled RoIs; the box loss sums the four coordinates of
    the positives' ground-truth class deltas. ``beta=1/9`` gives torchvision's ``fastrcnn_loss``.

    Args:
        class_logits: ``(K, C + 1)``.
        box_deltas: ``(K, 4 (C + 1))`` class-specific deltas.
        labels: per image ``(K_i,)`` classes, 1-based, 0 = background.
        regression_targets: per image ``(K_i, 4)`` encoded targets.

    Returns:
        ``(loss_cls, loss_box)`` scalars.
    """
    labels_all = torch.cat(labels)
    targets = torch.cat(regression_targets)
    loss_cls = F.cross_entropy(class_logits, labels_all)
    pos = torch.where(labels_all > 0)[0]
    deltas = box_deltas.reshape(len(labels_all), -1, 4)[pos, labels_all[pos]]
    loss_box = F.smooth_l1_loss(deltas, targets[pos], beta=beta, reduction="sum")
    return loss_cls, loss_box / max(1, labels_all.numel())


@dataclass
class SampledRoIs:
    """RoIs drawn by the R-CNN sampler for one batch (ground-truth boxes included).

    Attributes:
        boxes: per image ``(K_i, 4)`` xyxy canvas pixels.
        matched_idxs: per image ``(K_i,)`` int64 index of the matched ground truth (0 for
            negatives, ignore it there).
        labels: per image ``(K_i,)`` int64 class, 1-based; 0 = background.
        regression_targets: per image ``(K_i, 4)`` encoded box targets.
    """

    boxes: list[Tensor]
    matched_idxs: list[Tensor]
    labels: list[Tensor]
    regression_targets: list[Tensor]

    def positives(self) -> tuple[list[Tensor], list[Tensor]]:
        """Per image, the positive RoIs ``(P_i, 4)`` and their ground-truth indices ``(P_i,)``."""
        keep = [torch.where(lb > 0)[0] for lb in self.labels]
        return (
            [b[k] for b, k in zip(self.boxes, keep, strict=True)],
            [m[k] for m, k in zip(self.matched_idxs, keep, strict=True)],
        )


class MaskTrackRoIHeads(RoIHeads):
    """The box and mask heads of Mask R-CNN R50-FPN with separately callable steps.

    Box head: RoIAlign 7x7, two FC layers, class scores and class-specific box deltas. Mask
    head: RoIAlign 14x14, four 3x3 convolutions, a deconvolution, 28x28 class-specific logits.

    Args:
        in_channels: FPN channels.
        num_classes: foreground classes (background is added internally).
        config: sampling and inference settings.
    """

    def __init__(
        self, *, in_channels: int, num_classes: int, config: RCNNConfig | None = None
    ) -> None:
        cfg = config or RCNNConfig()
        box_pool = MultiScaleRoIAlign(ROI_LEVELS, output_size=7, sampling_ratio=2)
        super().__init__(
            box_roi_pool=box_pool,
            box_head=TwoMLPHead(in_channels * 7 * 7, cfg.representation_size),
            box_predictor=FastRCNNPredictor(cfg.representation_size, num_classes + 1),
            fg_iou_thresh=cfg.fg_iou_thresh,
            bg_iou_thresh=cfg.bg_iou_thresh,
            batch_size_per_image=cfg.batch_size_per_image,
            positive_fraction=cfg.positive_fraction,
            bbox_reg_weights=cfg.bbox_reg_weights,
            score_thresh=cfg.score_thresh,
            nms_thresh=cfg.nms_thresh,
            detections_per_img=cfg.detections_per_img,
            mask_roi_pool=MultiScaleRoIAlign(ROI_LEVELS, output_size=14, sampling_ratio=2),
            mask_head=MaskRCNNHeads(in_channels, [cfg.mask_channels] * 4, dilation=1),
            mask_predictor=MaskRCNNPredictor(cfg.mask_channels, cfg.mask_channels, num_classes + 1),
        )
        self.num_classes = num_classes
        self.box_loss_beta = cfg.box_loss_beta

    def sample(self, proposals: list[Tensor], targets: list[dict[str, Tensor]]) -> SampledRoIs:
        """Add the ground truth to the proposals, match and sample them (torchvision's sampler).

        Args:
            proposals: per image ``(R_i, 4)`` xyxy canvas pixels.
            targets: per image ``{"boxes": (G_i, 4), "labels": (G_i,) 1-based,
                "masks": (G_i, h, w)}``.
        """
        boxes, matched_idxs, labels, regression_targets = self.select_training_samples(
            [p.detach() for p in proposals], targets
        )
        return SampledRoIs(boxes, matched_idxs, labels, regression_targets)

    def box_predictions(
        self,
        features: list[FeatureMaps],
        boxes: list[Tensor],
        canvas: tuple[int, int],
        repeats: int = 1,
    ) -> tuple[Tensor, Tensor]:
        """Class logits and box deltas, averaged over feature dicts (SPEC §3.3 step 4).

        Args:
            features: one or more feature dicts (levels ``'0'``..``'3'``, batch ``B``; with
                ``repeats = R``, batch ``R * B``, reference-major as
                :func:`~ovisnet.models.calibration.calibrate_references` stacks them).
            boxes: per image ``(K_i, 4)`` RoIs, xyxy canvas pixels (``B`` entries).
            canvas: ``(H, W)`` of the padded input images.
            repeats: how many stacked copies of the batch each feature dict holds; every copy
                pools the same boxes and the outputs are averaged over the copies too.

        Returns:
            ``(ΣK_i, C + 1)`` class logits and ``(ΣK_i, 4 (C + 1))`` box deltas: the uniform mean
            over ``features`` (and their ``repeats``), in float32.
        """
        if not features:
            raise ValueError("box_predictions needs at least one feature dict")
        rois = list(boxes) * repeats  # image i of copy r is batch row r * B + i
        outputs = [
            self.box_predictor(self.box_head(self.box_roi_pool(f, rois, [canvas] * len(rois))))
            for f in features
        ]
        # float32 from here on (bf16 autocast): decoding, NMS and the losses need the precision
        class_logits = _mean([o[0] for o in outputs], repeats)
        box_deltas = _mean([o[1] for o in outputs], repeats)
        return class_logits, box_deltas

    def mask_logits(
        self,
        features: list[FeatureMaps],
        boxes: list[Tensor],
        canvas: tuple[int, int],
        repeats: int = 1,
    ) -> Tensor:
        """Mask logits, averaged over feature dicts (SPEC §3.3 step 6).

        Args:
            features: one or more feature dicts (levels ``'0'``..``'3'``, batch ``B``, or
                ``repeats * B`` as in :meth:`box_predictions`).
            boxes: per image ``(K_i, 4)`` boxes, xyxy canvas pixels.
            canvas: ``(H, W)`` of the padded input images.
            repeats: stacked copies of the batch per feature dict (see :meth:`box_predictions`).

        Returns:
            ``(ΣK_i, C + 1, 28, 28)`` logits, the uniform mean over ``features``, in float32.
        """
        if not features:
            raise ValueError("mask_logits needs at least one feature dict")
        rois = list(boxes) * repeats
        logits = [
            self.mask_predictor(self.mask_head(self.mask_roi_pool(f, rois, [canvas] * len(rois))))
            for f in features
        ]
        return _mean(logits, repeats)

    def losses(
        self,
        features: FeatureMaps,
        sampled: SampledRoIs,
        targets: list[dict[str, Tensor]],
        canvas: tuple[int, int],
    ) -> dict[str, Tensor]:
        """Box classification, box regression and mask losses (torchvision's, SPEC §2.2).

        Args:
            features: feature dict the heads read (calibrated or not).
            sampled: output of :meth:`sample`.
            targets: the ground truth given to :meth:`sample`.
            canvas: ``(H, W)`` of the padded input images.

        Returns:
            ``loss_cls``, ``loss_box``, ``loss_mask`` scalars.
        """
        class_logits, box_deltas = self.box_predictions([features], sampled.boxes, canvas)
        loss_cls, loss_box = rcnn_box_losses(
            class_logits,
            box_deltas,
            sampled.labels,
            sampled.regression_targets,
            beta=self.box_loss_beta,
        )
        pos_boxes, pos_matched = sampled.positives()
        loss_mask = maskrcnn_loss(
            self.mask_logits([features], pos_boxes, canvas),
            pos_boxes,
            [t["masks"] for t in targets],
            [t["labels"] for t in targets],
            pos_matched,
        )
        return {"loss_cls": loss_cls, "loss_box": loss_box, "loss_mask": loss_mask}

    @torch.no_grad()
    def detect(
        self,
        features: list[FeatureMaps],
        proposals: list[Tensor],
        canvas: tuple[int, int],
        image_sizes: list[tuple[int, int]],
        repeats: int = 1,
    ) -> list[Instances]:
        """Detections from logits averaged over feature dicts (SPEC §2.3 step 1, §3.3).

        Args:
            features: one or more feature dicts (levels ``'0'``..``'3'``, batch ``B``, or
                ``repeats * B``: the query calibrated by each of ``repeats`` references).
            proposals: per image ``(R_i, 4)`` xyxy canvas pixels.
            canvas: ``(H, W)`` of the padded input images.
            image_sizes: per image valid ``(h, w)``; boxes are clipped to it.
            repeats: stacked copies of the batch per feature dict (:meth:`box_predictions`).

        Returns:
            Per image :class:`Instances` sorted by score: ``boxes (N, 4)`` xyxy canvas pixels,
            ``scores (N,)``, ``labels (N,)`` 0-based, ``track_ids`` all ``-1`` and ``masks
            (N, 28, 28)`` float mask probabilities of the predicted class inside each box
            (paste them with :func:`ovisnet.models.masktrack.paste_masks`).
        """
        class_logits, box_deltas = self.box_predictions(features, proposals, canvas, repeats)
        boxes, scores, labels = self.postprocess_detections(
            class_logits, box_deltas, proposals, image_sizes
        )
        probs = maskrcnn_inference(self.mask_logits(features, boxes, canvas, repeats), labels)
        return [
            Instances(
                boxes=b,
                labels=lb - 1,
                track_ids=torch.full_like(lb, -1),
                masks=p[:, 0],
                scores=s,
            )
            for b, s, lb, p in zip(boxes, scores, labels, probs, strict=True)
        ]


def _mean(outputs: list[Tensor], repeats: int) -> Tensor:
    """Uniform float32 mean over a list of outputs, each stacking ``repeats`` copies
    reference-major (``(repeats * N, ...)``): their concatenation is reference-major too."""
    return reference_mean(torch.cat(outputs), len(outputs) * repeats)

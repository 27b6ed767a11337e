"""MaskTrack R-CNN and CMaskTrack R-CNN (SPEC §2, §3) on torchvision's Mask R-CNN pieces.

CMaskTrack R-CNN is MaskTrack R-CNN with a ``calibration`` module (Temporal Feature
Calibration): the RPN and the track head read the uncalibrated query features, the box and mask
heads read ``calibration(query, reference)`` applied level by level to P2–P5 (SPEC §3.2). At test
time the box and mask heads run on the query calibrated by each reference (all references in one
batch) and their logits/deltas are averaged (SPEC §3.3); ``reference_fusion="features"`` averages
the calibrated maps instead and runs the heads once. Tracking (association with a memory) lives
in :mod:`ovisnet.tracking`; the model exposes detections (:meth:`MaskTrackRCNN.detect`) and
track embeddings (:meth:`MaskTrackRCNN.embed`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.rpn import (
    RegionProposalNetwork,
    RPNHead,
    concat_box_prediction_layers,
)

from ovisnet.models.backbones import FPN_STRIDES
from ovisnet.models.calibration import (
    ReferenceFusion,
    calibrate_references,
    check_reference_fusion,
    reference_mean,
)
from ovisnet.models.common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VideoDetector,
    paste_in_chunks,
    without_crowd,
)
from ovisnet.models.roi_heads import ROI_LEVELS, MaskTrackRoIHeads, RCNNConfig
from ovisnet.models.track_head import TrackEmbedHead, match_logits, match_targets, track_loss
from ovisnet.structures import ClipBatch, FeatureMaps, Instances


@dataclass(frozen=True)
class RPNConfig:
    """Region proposal network hyper-parameters (SPEC §2.1, §2.2, §3.4).

    Proposals are made with the same ``pre_nms_top_n`` / ``post_nms_top_n`` / ``nms_thresh`` in
    training and at test time: the official code draws training proposals with its *test* RPN
    settings (SPEC §8.4).

    Attributes:
        anchor_sizes: one anchor size per FPN level (P2–P6), 8 x stride.
        aspect_ratios: anchor aspect ratios (h / w) at every level.
        fg_iou_thresh: anchors at or above this IoU are positive.
        bg_iou_thresh: anchors below this IoU are negative.
        batch_size_per_image: anchors sampled per image for the loss.
        positive_fraction: target share of positive anchors.
        pre_nms_top_n: proposals kept per level before NMS.
        post_nms_top_n: proposals kept per image after NMS.
        nms_thresh: proposal NMS IoU.
    """

    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    pre_nms_top_n: int = 1000
    post_nms_top_n: int = 1000
    nms_thresh: float = 0.7


@dataclass
class _RPNOutput:
    """Proposals and the raw RPN predictions the loss needs."""

    proposals: list[Tensor]
    anchors: list[Tensor]
    objectness: Tensor
    deltas: Tensor


class MaskTrackRCNN(VideoDetector):
    """MaskTrack R-CNN; CMaskTrack R-CNN when ``calibration`` is given.

    Images arrive as uint8 RGB on a canvas padded to a multiple of 32; the model only normalises
    them (no resizing: the data layer did it), so every box is in canvas pixels.

    Args:
        backbone: module mapping ``(B, 3, H, W)`` float images to FPN levels ``'0'``..``'3'``
            and ``'pool'`` (strides 4–64) with ``out_channels`` channels
            (:mod:`ovisnet.models.backbones`).
        num_classes: foreground classes.
        calibration: module with ``forward(query, reference) -> calibrated`` on one FPN level
            ``(B, C, H, W)`` (Temporal Feature Calibration), shared by levels P2–P5; None for
            plain MaskTrack R-CNN.
        track_head: RoI feature → embedding module; default :class:`TrackEmbedHead`.
        rpn: RPN settings.
        rcnn: box/mask head settings.
        pixel_mean: RGB mean subtracted from the 0–255 pixels.
        pixel_std: RGB standard deviation the pixels are divided by.
        detach_reference: in training, run the reference frame's backbone without gradient
            (the official code's ``detach_ref``, off there and by default). The calibration and
            the track head still learn from the reference features; the backbone learns from
            the query frame only, and its backward pass runs on half the frames.
        reference_fusion: how inference combines the ε_test references (calibrated models):
            ``"predictions"`` (the paper's: box and mask heads once per reference, logits
            averaged) or ``"features"`` (calibrated maps averaged, heads once: faster).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_classes: int,
        calibration: nn.Module | None = None,
        track_head: nn.Module | None = None,
        rpn: RPNConfig | None = None,
        rcnn: RCNNConfig | None = None,
        pixel_mean: tuple[float, float, float] = IMAGENET_MEAN,
        pixel_std: tuple[float, float, float] = IMAGENET_STD,
        detach_reference: bool = False,
        reference_fusion: ReferenceFusion = "predictions",
    ) -> None:
        super().__init__(
            backbone,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            detach_reference=detach_reference,
        )
        self.reference_fusion = check_reference_fusion(reference_fusion)
        channels = backbone.out_channels
        rpn_cfg = rpn or RPNConfig()
        anchors = AnchorGenerator(
            tuple((size,) for size in rpn_cfg.anchor_sizes),
            (rpn_cfg.aspect_ratios,) * len(rpn_cfg.anchor_sizes),
        )
        self.rpn = RegionProposalNetwork(
            anchors,
            RPNHead(channels, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=rpn_cfg.fg_iou_thresh,
            bg_iou_thresh=rpn_cfg.bg_iou_thresh,
            batch_size_per_image=rpn_cfg.batch_size_per_image,
            positive_fraction=rpn_cfg.positive_fraction,
            pre_nms_top_n={"training": rpn_cfg.pre_nms_top_n, "testing": rpn_cfg.pre_nms_top_n},
            post_nms_top_n={"training": rpn_cfg.post_nms_top_n, "testing": rpn_cfg.post_nms_top_n},
            nms_thresh=rpn_cfg.nms_thresh,
        )
        self.roi_heads = MaskTrackRoIHeads(
            in_channels=channels, num_classes=num_classes, config=rcnn
        )
        self.track_head = track_head if track_head is not None else TrackEmbedHead(channels)
        self.calibration = calibration

    def calibrate(self, query: FeatureMaps, reference: FeatureMaps) -> FeatureMaps:
        """Temporal Feature Calibration of the query levels P2–P5 by one reference (SPEC §3.2).

        Args:
            query: FPN features of the query frames (batch ``B``).
            reference: FPN features of one reference frame per query (batch ``B``).

        Returns:
            Calibrated levels ``'0'``..``'3'`` (the only ones the RoI heads pool).
        """
        if self.calibration is None:
            raise RuntimeError("this model has no calibration module")
        return {k: self.calibration(query[k], reference[k]) for k in ROI_LEVELS}

    def loss(self, batch: ClipBatch) -> dict[str, Tensor]:
        """Training losses of a batch of (query, reference) pairs (SPEC §2.2, §3.2).

        Both frames go through the backbone (the reference without gradient under
        ``detach_reference``). RPN, box and mask losses are computed on the query
        frame (box/mask heads on calibrated features when the model has a calibration module).
        The tracking loss matches the embeddings of the query's positive sampled RoIs (IoU >= the
        R-CNN ``fg_iou_thresh``, 0.5) against those of the reference frame's ground-truth boxes;
        the target is 1 + the index of the same track in the reference, 0 ("new") when absent.
        Crowd ground truth is ignored.

        Args:
            batch: ``images (B, 2, 3, H, W)`` uint8 (frame 0 query, frame 1 reference) and
                ``targets`` with masks.

        Returns:
            ``loss_rpn_cls``, ``loss_rpn_box``, ``loss_cls``, ``loss_box``, ``loss_mask``,
            ``loss_track`` scalars.
        """
        if batch.targets is None:
            raise ValueError("loss() needs a batch with targets")
        canvas = (batch.images.shape[-2], batch.images.shape[-1])
        query, reference = self.pair_features(batch)
        query_gt = [without_crowd(clip[0]) for clip in batch.targets]
        ref_gt = [without_crowd(clip[1]) for clip in batch.targets]
        if any(gt.masks is None for gt in query_gt):
            raise ValueError("loss() needs ground-truth masks on the query frames")

        rpn_out = self._rpn(query, canvas, batch.image_sizes)
        losses = self._rpn_loss(rpn_out, [gt.boxes for gt in query_gt])
        targets = [
            {"boxes": gt.boxes, "labels": gt.labels + 1, "masks": gt.masks} for gt in query_gt
        ]
        sampled = self.roi_heads.sample(rpn_out.proposals, targets)
        head_features = query if self.calibration is None else self.calibrate(query, reference)
        losses.update(self.roi_heads.losses(head_features, sampled, targets, canvas))

        pos_boxes, pos_matched = sampled.positives()
        query_emb = self.embed(query, pos_boxes)
        ref_emb = self.embed(reference, [gt.boxes for gt in ref_gt])
        losses["loss_track"] = track_loss(
            [match_logits(q, r) for q, r in zip(query_emb, ref_emb, strict=True)],
            [
                match_targets(q_gt.track_ids[m], r_gt.track_ids)
                for q_gt, m, r_gt in zip(query_gt, pos_matched, ref_gt, strict=True)
            ],
        )
        return losses

    @torch.no_grad()
    def detect(
        self,
        query_feats: FeatureMaps,
        image_sizes: list[tuple[int, int]],
        reference_feats: list[FeatureMaps] | None = None,
    ) -> list[Instances]:
        """Detect and segment objects in query frames (SPEC §2.3 step 1, §3.3).

        The RPN runs once on the uncalibrated query features. With a calibration module and
        references, the query is calibrated by every reference in one batched call
        (:func:`~ovisnet.models.calibration.calibrate_references`); with
        ``reference_fusion="predictions"`` the box head then runs once over the stacked
        calibrations and the class logits and box deltas are averaged over the references
        (uniform mean) before decoding, class-wise NMS, the score threshold and the per-image
        cap; the mask logits of the final boxes are averaged the same way. With ``"features"``
        the calibrated maps are averaged and the heads run once. Without references (a
        one-frame video) or without a calibration module the heads read the query features.

        Args:
            query_feats: :meth:`extract_features` of the query frames (batch ``B``).
            image_sizes: per image valid ``(h, w)``.
            reference_feats: features of the reference frames, one dict per reference, each with
                batch ``B`` (reference ``r`` of image ``i`` at index ``i``).

        Returns:
            Per image :class:`Instances` sorted by score: ``boxes (N, 4)`` xyxy canvas pixels,
            ``scores (N,)``, ``labels (N,)`` 0-based, ``track_ids`` all ``-1``, ``masks
            (N, 28, 28)`` float probabilities of the predicted class inside each box (see
            :func:`paste_masks`).
        """
        canvas = _canvas_size(query_feats)
        proposals = self._rpn(query_feats, canvas, image_sizes).proposals
        if self.calibration is None or not reference_feats:
            return self.roi_heads.detect([query_feats], proposals, canvas, image_sizes)
        num_refs = len(reference_feats)
        stacked = calibrate_references(self.calibration, query_feats, reference_feats, ROI_LEVELS)
        if self.reference_fusion == "features":
            fused = {k: reference_mean(v, num_refs) for k, v in stacked.items()}
            return self.roi_heads.detect([fused], proposals, canvas, image_sizes)
        return self.roi_heads.detect([stacked], proposals, canvas, image_sizes, repeats=num_refs)

    def embed(self, features: FeatureMaps, boxes: list[Tensor]) -> list[Tensor]:
        """Track embeddings of boxes: 7x7 RoIAlign of the uncalibrated features + track head.

        Args:
            features: :meth:`extract_features` output (batch ``B``).
            boxes: per image ``(N_i, 4)`` xyxy canvas pixels.

        Returns:
            Per image ``(N_i, D)`` embeddings.
        """
        canvas = _canvas_size(features)
        pooled = self.roi_heads.box_roi_pool(features, boxes, [canvas] * len(boxes))
        return list(self.track_head(pooled).float().split([len(b) for b in boxes]))

    def paste(
        self, instances: Instances, *, image_size: tuple[int, int], original_size: tuple[int, int]
    ) -> Instances:
        """:func:`paste_masks`: detections of :meth:`detect` back to the original frame."""
        return paste_masks(instances, image_size=image_size, original_size=original_size)

    def _rpn(
        self, features: FeatureMaps, canvas: tuple[int, int], image_sizes: list[tuple[int, int]]
    ) -> _RPNOutput:
        # torchvision's RegionProposalNetwork.forward, step by step: its loss is computed only in
        # training mode, and loss() must not depend on the module mode.
        maps = list(features.values())
        objectness, deltas = self.rpn.head(maps)
        # AnchorGenerator reads only the canvas shape of the image tensor and the shape, dtype
        # and device of the maps: memory-free float32 stand-ins keep the anchors (and so the
        # proposals and box targets) in float32 under bf16/fp16 autocast, where a 2-pixel
        # rounding of coordinates near 300 would make empty boxes and infinite targets.
        images = ImageList(_shaped_like(maps[0], (len(image_sizes), 0, *canvas)), image_sizes)
        anchors = self.rpn.anchor_generator(images, [_shaped_like(m, m.shape) for m in maps])
        anchors_per_level = [o[0].numel() for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        objectness, deltas = objectness.float(), deltas.float()
        boxes = self.rpn.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
        proposals, _ = self.rpn.filter_proposals(boxes, objectness, image_sizes, anchors_per_level)
        return _RPNOutput(proposals, anchors, objectness, deltas)

    def _rpn_loss(self, rpn_out: _RPNOutput, gt_boxes: list[Tensor]) -> dict[str, Tensor]:
        labels, matched_boxes = self.rpn.assign_targets_to_anchors(
            rpn_out.anchors, [{"boxes": b} for b in gt_boxes]
        )
        regression_targets = self.rpn.box_coder.encode(matched_boxes, rpn_out.anchors)
        loss_cls, loss_box = self.rpn.compute_loss(
            rpn_out.objectness, rpn_out.deltas, labels, regression_targets
        )
        return {"loss_rpn_cls": loss_cls, "loss_rpn_box": loss_box}


def paste_masks(
    instances: Instances,
    *,
    image_size: tuple[int, int],
    original_size: tuple[int, int],
    threshold: float = 0.5,
    chunk_size: int = 16,
) -> Instances:
    """Bring detections back to the original frame: boxes rescaled, masks pasted and binarised.

    Boxes go from canvas pixels (the valid region is the top-left ``image_size``) to original
    pixels, and each 28x28 mask probability map is pasted into its box at the original
    resolution (torchvision ``paste_masks_in_image``) and thresholded, as mmdet does.

    Args:
        instances: :meth:`MaskTrackRCNN.detect` output of one image (``masks (N, 28, 28)``).
        image_size: ``(h, w)`` of the resized frame inside the canvas.
        original_size: ``(H, W)`` of the original frame.
        threshold: probability above which a pixel belongs to the mask.
        chunk_size: masks pasted at once (bounds the float memory to ``chunk_size * H * W``).

    Returns:
        A copy with ``boxes`` in original pixels and ``masks (N, H, W)`` bool.
    """
    return paste_in_chunks(
        instances,
        image_size=image_size,
        original_size=original_size,
        paste=lambda m, b: paste_masks_in_image(m[:, None], b, original_size)[:, 0] > threshold,
        chunk_size=chunk_size,
    )


def _shaped_like(reference: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
    """A float32 tensor of ``shape`` on ``reference``'s device owning no memory (zero strides)."""
    return torch.empty(1, device=reference.device).expand(*shape)


def _canvas_size(features: FeatureMaps) -> tuple[int, int]:
    """``(H, W)`` of the padded input, from the stride-4 level ``'0'``."""
    height, width = features["0"].shape[-2:]
    return height * FPN_STRIDES[0], width * FPN_STRIDES[0]

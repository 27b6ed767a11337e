"""SipMask-VIS and CSipMask (SPEC-models.md §5, §6): the one-stage family.

SipMask-VIS is an FCOS-style detector on a P3–P7 pyramid whose head also predicts, per location,
4 x 32 mask coefficients (one set per quadrant of the box) that are combined with 32 basis maps at
stride 2 ("crop-split" masks, §5.1), and a 512-d tracking map at stride 8 read at box centres.
CSipMask is the same model given a ``calibration`` module (Temporal Feature Calibration): the
head's towers, coefficients and mask basis read ``calibration(query, reference)`` on every level,
the tracking branch reads the uncalibrated query features; at test time the raw head outputs are
averaged over the references before decoding (§6). Tracking (association with a memory) is the
shared :mod:`ovisnet.tracking`; the model exposes :meth:`SipMaskVIS.detect` and
:meth:`SipMaskVIS.embed`, as :class:`~ovisnet.models.masktrack.MaskTrackRCNN` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou, clip_boxes_to_image, sigmoid_focal_loss

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
from ovisnet.models.track_head import match_logits, match_targets, track_loss
from ovisnet.ops.deform_conv import DeformConv2d
from ovisnet.structures import ClipBatch, FeatureMaps, Instances

NUM_QUADRANTS = 4  # crop-split sub-regions: top-left, top-right, bottom-left, bottom-right
BASIS_STRIDE = 2
INF = 1e8


@dataclass(frozen=True)
class SipMaskConfig:
    """Head and training hyper-parameters (SPEC §5.1, §5.2).

    Attributes:
        stacked_convs: convs of the regression tower; the classification tower has one fewer.
        num_basis: mask basis maps (and coefficients per quadrant).
        basis_channels: width of the mask-basis branch's hidden conv.
        track_dim: tracking embedding size.
        size_bounds: upper bounds of the regression ranges of levels P3–P6 on
            ``max(l, t, r, b)`` (P3 ``(-1, 64]``, ..., P7 ``(512, inf)``).
        center_radius: centre sampling radius in strides (0: the whole box is positive).
        focal_alpha: α of the sigmoid focal loss.
        focal_gamma: γ of the sigmoid focal loss.
        prior_prob: initial foreground probability of the classifier.
        ref_jitter: relative jitter of the reference boxes of the tracking loss (centre shift up
            to ``ref_jitter`` of w/h, size x ``1 ± ref_jitter``).
    """

    stacked_convs: int = 3
    num_basis: int = 32
    basis_channels: int = 512
    track_dim: int = 512
    size_bounds: tuple[float, ...] = (64.0, 128.0, 256.0, 512.0)
    center_radius: float = 1.5
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    prior_prob: float = 0.01
    ref_jitter: float = 0.05


@dataclass(frozen=True)
class SipMaskTestConfig:
    """Inference hyper-parameters (SPEC §5.3).

    Attributes:
        pre_nms_top_n: locations kept per level, ranked by ``max_class score x centerness``.
        nms_top_n: candidates per class entering Fast NMS.
        score_thresh: minimum final score ``sigmoid(cls) x sigmoid(centerness)``.
        nms_thresh: Fast NMS IoU.
        detections_per_img: cap per frame (100 for OVIS; 10 is the YouTube-VIS config's).
    """

    pre_nms_top_n: int = 200
    nms_top_n: int = 200
    score_thresh: float = 0.03
    nms_thresh: float = 0.5
    detections_per_img: int = 100


@dataclass
class HeadOutputs:
    """Raw outputs of the SipMask head for a batch; per level lists, ``(B, ., H_l, W_l)``.

    Attributes:
        cls: class logits ``(B, K, H_l, W_l)``.
        reg: ``(l, t, r, b)`` distances in strides (learnable scale applied, not yet x stride).
        centerness: centerness logits ``(B, 1, H_l, W_l)``.
        coef: mask coefficients ``(B, 4 * M, H_l, W_l)`` (quadrant-major).
        basis: mask basis ``(B, M, H / 2, W / 2)`` (one map set per image, not per level).
    """

    cls: list[Tensor]
    reg: list[Tensor]
    centerness: list[Tensor]
    coef: list[Tensor]
    basis: Tensor

    def reference_mean(self, num_refs: int) -> HeadOutputs:
        """Uniform mean over references of outputs whose batch stacks ``num_refs`` copies
        reference-major (CSipMask's fusion over references, SPEC §6), in float32."""
        if num_refs == 1:
            return self

        def per_level(tensors: list[Tensor]) -> list[Tensor]:
            return [reference_mean(t, num_refs) for t in tensors]

        return HeadOutputs(
            per_level(self.cls),
            per_level(self.reg),
            per_level(self.centerness),
            per_level(self.coef),
            reference_mean(self.basis, num_refs),
        )


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


def _tower(channels: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False), _gn(channels)]
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class SipMaskHead(nn.Module):
    """The head shared by all levels: towers, boxes, centerness, aligned cls/coef, mask basis.

    Args:
        channels: FPN width.
        num_classes: foreground classes.
        num_levels: pyramid levels (one learnable regression scale each).
        config: architecture settings.
    """

    def __init__(self, channels: int, num_classes: int, num_levels: int, config: SipMaskConfig):
        super().__init__()
        m = config.num_basis
        self.cls_tower = _tower(channels, config.stacked_convs - 1)
        self.reg_tower = _tower(channels, config.stacked_convs)
        self.reg = nn.Conv2d(channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(channels, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(num_levels))
        # feature alignment: 4 deformable groups x 9 taps x (dy, dx) from the detached boxes
        self.align_offset = nn.Conv2d(4, 4 * 18, 1, bias=False)
        self.align = DeformConv2d(channels, channels, 3, padding=1, bias=False)
        self.align_norm = _gn(channels)
        self.cls = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.coef = nn.Conv2d(channels, NUM_QUADRANTS * m, 3, padding=1)
        self.basis = nn.Sequential(
            nn.Conv2d(3 * channels, config.basis_channels, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(config.basis_channels, m, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.zeros_(self.align_offset.weight)
        nn.init.normal_(self.align.weight, std=0.01)
        nn.init.constant_(self.cls.bias, -math.log((1 - config.prior_prob) / config.prior_prob))

    def forward(self, levels: list[Tensor]) -> HeadOutputs:
        """Run the head on the pyramid ``levels`` (P3 first; the basis reads P3–P5)."""
        out = HeadOutputs([], [], [], [], basis=levels[0].new_empty(0))
        reg_feats = []
        for i, x in enumerate(levels):
            reg_feat = self.reg_tower(x)
            reg = self.reg(reg_feat) * self.scales[i]
            offsets = self.align_offset(reg.detach())
            aligned = F.relu(self.align_norm(self.align(self.cls_tower(x), offsets)))
            out.cls.append(self.cls(aligned))
            out.reg.append(reg)
            out.centerness.append(self.centerness(reg_feat))
            out.coef.append(self.coef(aligned))
            reg_feats.append(reg_feat)
        basis = self.basis(_concat_at_first(reg_feats[:3]))
        out.basis = F.interpolate(basis, scale_factor=4, mode="bilinear", align_corners=False)
        return out


class SipMaskTrackBranch(nn.Module):
    """Tracking map: 2 GN convs on P3–P5 (shared), upsampled to P3, 1x1 conv to ``dim``.

    Args:
        channels: FPN width.
        dim: embedding size.
    """

    def __init__(self, channels: int, dim: int = 512) -> None:
        super().__init__()
        self.tower = _tower(channels, 2)
        for module in self.tower.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
        self.project = nn.Conv2d(3 * channels, dim, 1)  # PyTorch's default init (SPEC §5.1)

    def forward(self, levels: list[Tensor]) -> Tensor:
        """``(B, dim, H_3, W_3)`` from the P3, P4, P5 maps."""
        return self.project(_concat_at_first([self.tower(x) for x in levels[:3]]))


def _concat_at_first(maps: list[Tensor]) -> Tensor:
    """The maps bilinearly resized to the first one's size and concatenated along channels."""
    size = maps[0].shape[-2:]
    resized = [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in maps[1:]]
    return torch.cat([maps[0], *resized], dim=1)


class SipMaskVIS(VideoDetector):
    """SipMask-VIS; CSipMask when ``calibration`` is given.

    Images arrive as uint8 RGB on a canvas padded to a multiple of 32 (a multiple of 128 is not
    needed: P6/P7 round up); every box is in canvas pixels.

    Args:
        backbone: module mapping ``(B, 3, H, W)`` float images to five levels P3–P7 with
            ``out_channels`` channels and ``strides`` ``(8, 16, 32, 64, 128)``
            (:mod:`ovisnet.models.backbones` with ``pyramid="p3p7"``).
        num_classes: foreground classes.
        calibration: module with ``forward(query, reference) -> calibrated`` on one level,
            shared by P3–P7 (Temporal Feature Calibration); None for plain SipMask-VIS.
        config: head and training settings.
        test: inference settings.
        pixel_mean: RGB mean subtracted from the 0–255 pixels.
        pixel_std: RGB standard deviation the pixels are divided by.
        detach_reference: in training, run the reference frame's backbone without gradient.
        mask_thresh: probability above which a pasted pixel belongs to a mask.
        reference_fusion: how inference combines the ε_test references (calibrated models):
            ``"predictions"`` (the paper's: the head once per reference, raw outputs averaged)
            or ``"features"`` (calibrated maps averaged, head once: faster).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_classes: int,
        calibration: nn.Module | None = None,
        config: SipMaskConfig | None = None,
        test: SipMaskTestConfig | None = None,
        pixel_mean: tuple[float, float, float] = IMAGENET_MEAN,
        pixel_std: tuple[float, float, float] = IMAGENET_STD,
        detach_reference: bool = False,
        mask_thresh: float = 0.5,
        reference_fusion: ReferenceFusion = "predictions",
    ) -> None:
        super().__init__(
            backbone,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            detach_reference=detach_reference,
        )
        strides = tuple(getattr(backbone, "strides", ()))
        if len(strides) != 5 or strides[0] != 8:
            raise ValueError(
                f"SipMask needs a P3-P7 backbone (strides 8..128, pyramid='p3p7'), got {strides}"
            )
        self.config = config or SipMaskConfig()
        self.test_config = test or SipMaskTestConfig()
        if len(self.config.size_bounds) != len(strides) - 1:
            raise ValueError(f"size_bounds needs {len(strides) - 1} values")
        self.strides = strides
        self.num_classes = num_classes
        self.mask_thresh = mask_thresh
        channels = backbone.out_channels
        self.head = SipMaskHead(channels, num_classes, len(strides), self.config)
        self.track_head = SipMaskTrackBranch(channels, self.config.track_dim)
        self.calibration = calibration
        self.reference_fusion = check_reference_fusion(reference_fusion)

    # -- features -------------------------------------------------------------------------------
    def calibrate(self, query: FeatureMaps, reference: FeatureMaps) -> FeatureMaps:
        """Temporal Feature Calibration of every level by one reference (SPEC §6)."""
        if self.calibration is None:
            raise RuntimeError("this model has no calibration module")
        return {k: self.calibration(q, reference[k]) for k, q in query.items()}

    def head_outputs(
        self, query: FeatureMaps, reference_feats: list[FeatureMaps] | None = None
    ) -> HeadOutputs:
        """Raw head outputs; with a calibration module, fused over the references.

        The query is calibrated by every reference in one batched call; ``reference_fusion``
        ``"predictions"`` runs the head once over the stacked calibrations and averages its raw
        outputs over the references, ``"features"`` averages the calibrated maps and runs the
        head once.
        """
        if self.calibration is None or not reference_feats:
            return self.head(list(query.values()))
        num_refs = len(reference_feats)
        stacked = calibrate_references(self.calibration, query, reference_feats)
        if self.reference_fusion == "features":
            return self.head([reference_mean(v, num_refs) for v in stacked.values()])
        return self.head(list(stacked.values())).reference_mean(num_refs)

    def track_map(self, features: FeatureMaps) -> Tensor:
        """``(B, D, H / 8, W / 8)`` tracking map from uncalibrated features."""
        return self.track_head(list(features.values()))

    def embed(self, features: FeatureMaps, boxes: list[Tensor]) -> list[Tensor]:
        """Track embeddings of boxes: the tracking map at each box centre's stride-8 cell.

        Args:
            features: :meth:`extract_features` output (batch ``B``).
            boxes: per image ``(N_i, 4)`` xyxy canvas pixels.

        Returns:
            Per image ``(N_i, D)`` float32 embeddings.
        """
        return [
            _read_at_centres(m, b, self.strides[0]).float()
            for m, b in zip(self.track_map(features), boxes, strict=True)
        ]

    # -- training -------------------------------------------------------------------------------
    def loss(self, batch: ClipBatch) -> dict[str, Tensor]:
        """Training losses of a batch of (query, reference) pairs (SPEC §5.2, §6).

        Args:
            batch: ``images (B, 2, 3, H, W)`` uint8 (frame 0 query, frame 1 reference) and
                ``targets`` with masks.

        Returns:
            ``loss_cls`` (focal), ``loss_box`` (IoU, centerness-weighted), ``loss_centerness``
            (BCE), ``loss_mask`` (crop-split BCE with mask-alignment weights), ``loss_track``.
        """
        if batch.targets is None:
            raise ValueError("loss() needs a batch with targets")
        query, reference = self.pair_features(batch)
        query_gt = [without_crowd(clip[0]) for clip in batch.targets]
        ref_gt = [without_crowd(clip[1]) for clip in batch.targets]
        if any(gt.masks is None for gt in query_gt):
            raise ValueError("loss() needs ground-truth masks on the query frames")
        out = self.head_outputs(query, [reference] if self.calibration is not None else None)
        grid = self._grid(out)
        num_images = len(query_gt)

        cls = _flatten(out.cls).float()  # (B, P, K)
        reg = _flatten(out.reg).float() * grid.strides[None, :, None]  # (B, P, 4) pixels
        ctr = _flatten(out.centerness).float()[..., 0]
        coef = _flatten(out.coef).float()
        matched, ltrb = zip(*(self._targets(grid, gt.boxes) for gt in query_gt), strict=True)
        labels = torch.zeros_like(cls)
        for i, (m, gt) in enumerate(zip(matched, query_gt, strict=True)):
            pos = m >= 0
            labels[i, pos.nonzero()[:, 0], gt.labels[m[pos]]] = 1.0
        num_pos = sum(int((m >= 0).sum()) for m in matched)
        losses = {
            "loss_cls": sigmoid_focal_loss(
                cls,
                labels,
                alpha=self.config.focal_alpha,
                gamma=self.config.focal_gamma,
                reduction="sum",
            )
            / (num_pos + num_images)
        }
        box_terms, ctr_terms, mask_terms = [], [], []
        track_logits, track_tgts = [], []
        query_track = self.track_map(query)
        ref_track = self.track_map(reference)
        for i, (gt, m, target) in enumerate(zip(query_gt, matched, ltrb, strict=True)):
            pos = (m >= 0).nonzero()[:, 0]
            points = grid.points[pos]
            pred_boxes = _distance_to_boxes(points, reg[i, pos])
            target_boxes = _distance_to_boxes(points, target[pos])
            ctr_target = _centerness_target(target[pos])
            iou = _aligned_iou(pred_boxes, target_boxes)
            box_terms.append((ctr_target, -torch.log(iou.clamp(min=1e-6))))
            ctr_terms.append(
                F.binary_cross_entropy_with_logits(ctr[i, pos], ctr_target, reduction="none")
            )
            gt_idx = m[pos]
            scores = torch.sigmoid(cls[i, pos, gt.labels[gt_idx]]).detach()
            mask_terms.append(
                self._mask_loss(
                    out.basis[i].float(),
                    coef[i, pos],
                    pred_boxes.detach(),
                    gt.masks[gt_idx],
                    scores * iou.detach(),
                )
            )
            query_emb = _read_at_centres(query_track[i], pred_boxes.detach(), self.strides[0])
            ref_boxes = _jitter(ref_gt[i].boxes, self.config.ref_jitter)
            ref_emb = _read_at_centres(ref_track[i], ref_boxes, self.strides[0])
            track_logits.append(match_logits(query_emb.float(), ref_emb.float()))
            track_tgts.append(match_targets(gt.track_ids[gt_idx], ref_gt[i].track_ids))
        weights = torch.cat([w for w, _ in box_terms])
        if num_pos == 0:  # zero, with every head parameter still in the graph
            losses["loss_box"] = reg.sum() * 0.0
            losses["loss_centerness"] = ctr.sum() * 0.0
        else:
            per_box = torch.cat([v for _, v in box_terms])
            losses["loss_box"] = (weights * per_box).sum() / weights.sum().clamp(min=1e-6)
            losses["loss_centerness"] = torch.cat(ctr_terms).mean()
        losses["loss_mask"] = torch.stack(mask_terms).sum() / num_images
        losses["loss_track"] = track_loss(track_logits, track_tgts)
        return losses

    def _targets(self, grid: _Grid, gt_boxes: Tensor) -> tuple[Tensor, Tensor]:
        return fcos_targets(
            grid.points,
            grid.strides,
            grid.ranges,
            gt_boxes,
            center_radius=self.config.center_radius,
        )

    def _mask_loss(
        self, basis: Tensor, coef: Tensor, boxes: Tensor, gt_masks: Tensor, weights: Tensor
    ) -> Tensor:
        """Crop-split mask loss of one image's positives (SPEC §5.2); 0 without positives."""
        height, width = basis.shape[-2:]
        boxes = clip_boxes_to_image(boxes / BASIS_STRIDE, (height, width))
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        keep = area > 1.0
        if not bool(keep.any()):  # zero, with the basis and coefficients still in the graph
            return basis.sum() * 0.0 + coef.sum() * 0.0
        boxes, coef, area, weights = boxes[keep], coef[keep], area[keep], weights[keep]
        gt = masks_at_basis(gt_masks[keep], (height, width))
        coef = coef.view(len(coef), NUM_QUADRANTS, basis.shape[0])
        logits, inside = crop_split_logits(basis, coef, boxes)
        bce = F.binary_cross_entropy_with_logits(logits, gt, reduction="none")
        per_mask = (bce * inside).sum(dim=(1, 2)) / area
        weights = weights / weights.mean().clamp(min=1e-6)
        return (weights * per_mask).sum() / len(per_mask)

    # -- inference ------------------------------------------------------------------------------
    @torch.no_grad()
    def detect(
        self,
        query_feats: FeatureMaps,
        image_sizes: list[tuple[int, int]],
        reference_feats: list[FeatureMaps] | None = None,
    ) -> list[Instances]:
        """Detect and segment objects in query frames (SPEC §5.3, §6).

        With a calibration module and references, the head runs on ``calibrate(query, r)`` for
        every reference ``r`` (all in one batch) and its raw outputs (class logits, regression,
        centerness logits, coefficients, basis) are averaged before decoding, Fast NMS and mask
        assembly (``reference_fusion="features"``: the calibrated maps are averaged instead).
        Without references (a one-frame video) or without calibration the head reads the query.

        Args:
            query_feats: :meth:`extract_features` of the query frames (batch ``B``).
            image_sizes: per image valid ``(h, w)``.
            reference_feats: one feature dict per reference, each with batch ``B``.

        Returns:
            Per image :class:`Instances` sorted by score: ``boxes (N, 4)`` xyxy canvas pixels,
            ``scores (N,)`` = sigmoid(cls) x sigmoid(centerness), ``labels (N,)`` 0-based,
            ``track_ids`` all ``-1``, ``masks (N, H / 2, W / 2)`` float probabilities at the
            basis resolution, 0 outside each box (see :func:`paste_basis_masks`).
        """
        out = self.head_outputs(query_feats, reference_feats)
        grid = self._grid(out)
        cfg = self.test_config
        # (B, P, .) over all levels; score = sigmoid(cls) x sigmoid(centerness)
        scores_all = torch.sigmoid(_flatten(out.cls).float()) * torch.sigmoid(
            _flatten(out.centerness).float()
        )
        dist_all = _flatten(out.reg).float() * grid.strides[None, :, None]
        coef_flat = _flatten(out.coef).float()
        results = []
        for i, (h, w) in enumerate(image_sizes):
            keep = torch.cat(
                [
                    start + part.max(dim=1).values.topk(min(cfg.pre_nms_top_n, len(part))).indices
                    for start, part in zip(
                        grid.starts, scores_all[i].split(grid.counts), strict=True
                    )
                ]
            )
            box_all = clip_boxes_to_image(
                _distance_to_boxes(grid.points[keep], dist_all[i, keep]), (h, w)
            )
            score_all, coef_all = scores_all[i, keep], coef_flat[i, keep]
            idx, labels, kept_scores = fast_nms(
                box_all,
                score_all,
                iou_thresh=cfg.nms_thresh,
                top_k=cfg.nms_top_n,
                score_thresh=cfg.score_thresh,
                max_detections=cfg.detections_per_img,
            )
            kept_boxes = box_all[idx]
            logits, inside = crop_split_logits(
                out.basis[i].float(),
                coef_all[idx].view(len(idx), NUM_QUADRANTS, self.config.num_basis),
                kept_boxes / BASIS_STRIDE,
            )
            results.append(
                Instances(
                    boxes=kept_boxes,
                    labels=labels,
                    track_ids=torch.full_like(labels, -1),
                    masks=torch.sigmoid(logits) * inside,
                    scores=kept_scores,
                )
            )
        return results

    def paste(
        self, instances: Instances, *, image_size: tuple[int, int], original_size: tuple[int, int]
    ) -> Instances:
        """:func:`paste_basis_masks` at this model's mask threshold."""
        return paste_basis_masks(
            instances,
            image_size=image_size,
            original_size=original_size,
            threshold=self.mask_thresh,
        )

    # -- geometry -------------------------------------------------------------------------------
    def _grid(self, out: HeadOutputs) -> _Grid:
        shapes = [tuple(c.shape[-2:]) for c in out.cls]
        bounds = (-1.0, *self.config.size_bounds, INF)
        return _Grid.build(shapes, self.strides, bounds, out.cls[0].device)


@dataclass
class _Grid:
    """Location centres of every level, flattened level after level."""

    points: Tensor  # (P, 2) xy canvas pixels
    strides: Tensor  # (P,)
    ranges: Tensor  # (P, 2) regression range of the location's level
    counts: list[int]

    @staticmethod
    def build(
        shapes: list[tuple[int, ...]],
        strides: tuple[int, ...],
        bounds: tuple[float, ...],
        device: torch.device,
    ) -> _Grid:
        points, per_stride, ranges = [], [], []
        for lvl, ((h, w), s) in enumerate(zip(shapes, strides, strict=True)):
            ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * s
            xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * s
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            points.append(torch.stack([xx.flatten(), yy.flatten()], dim=1))
            per_stride.append(torch.full((h * w,), float(s), device=device))
            ranges.append(
                torch.tensor([bounds[lvl], bounds[lvl + 1]], device=device).expand(h * w, 2)
            )
        return _Grid(
            torch.cat(points), torch.cat(per_stride), torch.cat(ranges), [len(p) for p in points]
        )

    @property
    def starts(self) -> list[int]:
        """Index of each level's first location."""
        return [sum(self.counts[:level]) for level in range(len(self.counts))]


def _flatten(levels: list[Tensor]) -> Tensor:
    """Per-level ``(B, C, H_l, W_l)`` → ``(B, sum H_l W_l, C)``."""
    return torch.cat([x.flatten(2).transpose(1, 2) for x in levels], dim=1)


def fcos_targets(
    points: Tensor,
    strides: Tensor,
    ranges: Tensor,
    gt_boxes: Tensor,
    *,
    center_radius: float = 1.5,
) -> tuple[Tensor, Tensor]:
    """FCOS assignment of locations to ground-truth boxes (SPEC §5.2).

    A location is a candidate of a box when it lies inside the box and, with centre sampling,
    strictly inside the square of half-side ``center_radius x stride`` around the box centre
    (clipped to the box); the candidate is kept when ``max(l, t, r, b)`` lies in the location's
    level range ``[lo, hi]``. Among several boxes the smallest-area one wins.

    Args:
        points: ``(P, 2)`` xy location centres.
        strides: ``(P,)`` stride of each location's level.
        ranges: ``(P, 2)`` regression range ``(lo, hi)`` of each location's level.
        gt_boxes: ``(G, 4)`` xyxy.
        center_radius: radius in strides; 0 takes every location inside the box.

    Returns:
        ``matched (P,)`` int64 index of the assigned box or ``-1``, and ``ltrb (P, 4)`` distances
        from each location to its assigned box (0 where unassigned).
    """
    num_points = len(points)
    if len(gt_boxes) == 0:
        return (
            torch.full((num_points,), -1, dtype=torch.int64, device=points.device),
            points.new_zeros(num_points, 4),
        )
    x, y = points[:, 0, None], points[:, 1, None]
    x1, y1, x2, y2 = gt_boxes.unbind(dim=1)
    ltrb = torch.stack([x - x1, y - y1, x2 - x, y2 - y], dim=2)  # (P, G, 4)
    if center_radius > 0:
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        radius = strides[:, None] * center_radius
        inner = torch.stack(
            [
                x - torch.maximum(cx - radius, x1),
                y - torch.maximum(cy - radius, y1),
                torch.minimum(cx + radius, x2) - x,
                torch.minimum(cy + radius, y2) - y,
            ],
            dim=2,
        )
        inside = inner.min(dim=2).values > 0
    else:
        inside = ltrb.min(dim=2).values > 0
    longest = ltrb.max(dim=2).values
    in_range = (longest >= ranges[:, 0, None]) & (longest <= ranges[:, 1, None])
    area = ((x2 - x1) * (y2 - y1))[None].expand(num_points, -1)
    area = torch.where(inside & in_range, area, torch.full_like(area, INF))
    best, index = area.min(dim=1)
    matched = torch.where(best < INF, index, torch.full_like(index, -1))
    chosen = ltrb[torch.arange(num_points, device=points.device), index]
    return matched, torch.where(matched[:, None] >= 0, chosen, torch.zeros_like(chosen))


def masks_at_basis(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Ground-truth masks at the basis resolution (SPEC §5.2).

    The masks cover the resized image (the top-left ``(h, w)`` of the canvas); they are
    bilinearly downsampled by 2, binarised at 0.5 and zero-padded (or cropped) to the basis
    size ``(H / 2, W / 2)`` of the canvas, so that pixel ``(y, x)`` of both is the same place.

    Args:
        masks: ``(G, h, w)`` bool.
        size: ``(H / 2, W / 2)``.

    Returns:
        ``(G, H / 2, W / 2)`` float32 in {0, 1}.
    """
    down = (
        F.interpolate(masks[:, None].float(), scale_factor=1 / BASIS_STRIDE, mode="bilinear")[:, 0]
        > 0.5
    )
    out = down.new_zeros(len(masks), *size)
    h, w = min(size[0], down.shape[1]), min(size[1], down.shape[2])
    out[:, :h, :w] = down[:, :h, :w]
    return out.float()


def _distance_to_boxes(points: Tensor, ltrb: Tensor) -> Tensor:
    return torch.cat([points - ltrb[:, :2], points + ltrb[:, 2:]], dim=1)


def _centerness_target(ltrb: Tensor) -> Tensor:
    lr, tb = ltrb[:, 0::2], ltrb[:, 1::2]
    ratio = (lr.min(1).values / lr.max(1).values) * (tb.min(1).values / tb.max(1).values)
    return ratio.clamp(min=0).sqrt()


def _aligned_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of box ``a[i]`` with box ``b[i]`` (degenerate boxes have area 0)."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)

    def area(x: Tensor) -> Tensor:
        return (x[:, 2:] - x[:, :2]).clamp(min=0).prod(dim=1)

    return inter / (area(a) + area(b) - inter).clamp(min=1e-6)


def _jitter(boxes: Tensor, amount: float) -> Tensor:
    """Random centre shift (±``amount`` of w/h) and rescale (x ``1 ± amount``) of xyxy boxes."""
    if amount <= 0 or len(boxes) == 0:
        return boxes
    wh = boxes[:, 2:] - boxes[:, :2]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    centre = centre + (torch.rand_like(wh) * 2 - 1) * amount * wh
    wh = wh * (1 + (torch.rand_like(wh) * 2 - 1) * amount)
    return torch.cat([centre - wh / 2, centre + wh / 2], dim=1)


def _read_at_centres(track_map: Tensor, boxes: Tensor, stride: int) -> Tensor:
    """``(N, D)``: the ``(D, H, W)`` map at cell ``(floor(cy / stride), floor(cx / stride))``."""
    height, width = track_map.shape[-2:]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    col = (centre[:, 0] / stride).floor().long().clamp(0, width - 1)
    row = (centre[:, 1] / stride).floor().long().clamp(0, height - 1)
    return track_map[:, row, col].T


def crop_split_logits(basis: Tensor, coef: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Crop-split mask assembly (SPEC §5.1), as logits.

    Each box is split at its centre ``(xc, yc)`` into four quadrants. Pixel ``(x, y)`` (integer
    indices, the official crop-split convention) lies in the box when ``x1 <= x < x2`` and
    ``y1 <= y < y2``, and takes the linear combination of the basis with the coefficients of its
    quadrant: top-left (``x < xc``, ``y < yc``), top-right, bottom-left, bottom-right. Pixels
    outside the box are flagged by ``inside`` (their logits are meaningless).

    Args:
        basis: ``(M, H, W)`` basis maps.
        coef: ``(N, 4, M)`` coefficients per quadrant.
        boxes: ``(N, 4)`` xyxy in basis pixels.

    Returns:
        ``logits (N, H, W)`` and ``inside (N, H, W)`` bool.
    """
    num, height, width = len(coef), basis.shape[-2], basis.shape[-1]
    if num == 0:
        empty = basis.new_zeros(0, height, width)
        return empty, empty.bool()
    ys = torch.arange(height, device=basis.device, dtype=basis.dtype)
    xs = torch.arange(width, device=basis.device, dtype=basis.dtype)
    x1, y1, x2, y2 = (c[:, None] for c in boxes.to(basis.dtype).unbind(dim=1))
    in_x = (xs >= x1) & (xs < x2)  # (N, W)
    in_y = (ys >= y1) & (ys < y2)  # (N, H)
    right = (xs >= (x1 + x2) / 2)[:, None, :]  # (N, 1, W)
    bottom = (ys >= (y1 + y2) / 2)[:, :, None]  # (N, H, 1)
    flat = basis.flatten(1)
    quadrant = [(coef[:, q] @ flat).view(num, height, width) for q in range(NUM_QUADRANTS)]
    top_row = torch.where(right, quadrant[1], quadrant[0])
    bottom_row = torch.where(right, quadrant[3], quadrant[2])
    logits = torch.where(bottom, bottom_row, top_row)
    return logits, in_y[:, :, None] & in_x[:, None, :]


def fast_nms(
    boxes: Tensor,
    scores: Tensor,
    *,
    iou_thresh: float = 0.5,
    top_k: int = 200,
    score_thresh: float = 0.03,
    max_detections: int = 100,
) -> tuple[Tensor, Tensor, Tensor]:
    """Class-wise Fast NMS (YOLACT style, SipMask's; SPEC §5.3).

    Per class, the candidates above ``score_thresh`` are ranked and cut to ``top_k``; a candidate
    is dropped when any higher-ranked candidate of its class overlaps it by IoU > ``iou_thresh``,
    even one that is itself dropped (no sequential re-check, unlike standard NMS). Survivors of
    all classes are ranked and cut to ``max_detections``.

    Args:
        boxes: ``(N, 4)`` xyxy, shared by the classes of a location.
        scores: ``(N, K)`` per-class scores.
        iou_thresh: suppression IoU.
        top_k: candidates per class.
        score_thresh: minimum score.
        max_detections: cap on the output.

    Returns:
        ``index (D,)`` into ``boxes``, ``labels (D,)`` int64 and ``scores (D,)``, by descending
        score (ties by location then class).
    """
    rows, labels = (scores > score_thresh).nonzero(as_tuple=True)
    values = scores[rows, labels]
    keep_rows, keep_labels, keep_scores = [], [], []
    for label in labels.unique().tolist():
        sel = (labels == label).nonzero()[:, 0]
        order = values[sel].argsort(descending=True, stable=True)[:top_k]
        cand = rows[sel[order]]
        iou = box_iou(boxes[cand], boxes[cand]).triu(diagonal=1)
        survive = iou.max(dim=0).values <= iou_thresh
        keep_rows.append(cand[survive])
        keep_labels.append(torch.full_like(cand[survive], label))
        keep_scores.append(values[sel[order]][survive])
    if not keep_rows:
        empty = torch.zeros(0, dtype=torch.int64, device=boxes.device)
        return empty, empty.clone(), scores.new_zeros(0)
    index = torch.cat(keep_rows)
    label_all, score_all = torch.cat(keep_labels), torch.cat(keep_scores)
    # rank by score, ties by (location, class): sort by the tie key, then stably by score
    by_key = (index * scores.shape[1] + label_all).argsort()
    order = by_key[score_all[by_key].argsort(descending=True, stable=True)][:max_detections]
    return index[order], label_all[order], score_all[order]


def paste_basis_masks(
    instances: Instances,
    *,
    image_size: tuple[int, int],
    original_size: tuple[int, int],
    threshold: float = 0.5,
    chunk_size: int = 16,
) -> Instances:
    """Bring SipMask detections back to the original frame: boxes rescaled, masks binarised.

    The stride-2 probability maps are bilinearly resized by ``2 x original / resized`` so that
    the valid region of the canvas lands on the original frame, cropped to it, and thresholded
    (SPEC §5.3).

    Args:
        instances: :meth:`SipMaskVIS.detect` output of one image (``masks (N, H / 2, W / 2)``).
        image_size: ``(h, w)`` of the resized frame inside the canvas.
        original_size: ``(H, W)`` of the original frame.
        threshold: probability above which a pixel belongs to the mask.
        chunk_size: masks resized at once (bounds the float memory).

    Returns:
        A copy with ``boxes`` in original pixels and ``masks (N, H, W)`` bool.
    """
    (h, w), (big_h, big_w) = image_size, original_size
    if instances.masks is None:
        raise ValueError("paste_basis_masks needs instances with basis-resolution masks")
    half_h, half_w = instances.masks.shape[-2:]
    # the whole canvas at the original scale, so that its valid region lands on the frame
    size = (
        max(big_h, round(half_h * BASIS_STRIDE * big_h / h)),
        max(big_w, round(half_w * BASIS_STRIDE * big_w / w)),
    )

    def paste(masks: Tensor, _boxes: Tensor) -> Tensor:
        resized = F.interpolate(masks[:, None].float(), size=size, mode="bilinear")
        return resized[:, 0, :big_h, :big_w] > threshold

    return paste_in_chunks(
        instances,
        image_size=image_size,
        original_size=original_size,
        paste=paste,
        chunk_size=chunk_size,
    )

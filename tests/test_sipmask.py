"""SipMask-VIS / CSipMask: FCOS targets, crop-split assembly, Fast NMS, the model's contracts."""

from __future__ import annotations

import pytest
import torch

from ovisnet.models.backbones import TimmFPN, resnet_fpn
from ovisnet.models.calibration import TemporalFeatureCalibration
from ovisnet.models.sipmask import (
    INF,
    SipMaskConfig,
    SipMaskTestConfig,
    SipMaskVIS,
    crop_split_logits,
    fast_nms,
    fcos_targets,
    masks_at_basis,
    paste_basis_masks,
)
from ovisnet.structures import ClipBatch, Instances

CHANNELS = 64  # GroupNorm(32): 2 channels a group, so the 1x1 P7 map still normalises
H, W = 64, 96


def _points(canvas: tuple[int, int], strides: tuple[int, ...], bounds: tuple[float, ...]):
    points, per_stride, ranges = [], [], []
    for lvl, s in enumerate(strides):
        ys = (torch.arange(canvas[0] // s) + 0.5) * s
        xs = (torch.arange(canvas[1] // s) + 0.5) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([xx.flatten(), yy.flatten()], 1))
        per_stride.append(torch.full((len(points[-1]),), float(s)))
        ranges.append(torch.tensor([[bounds[lvl], bounds[lvl + 1]]]).expand(len(points[-1]), 2))
    return torch.cat(points), torch.cat(per_stride), torch.cat(ranges)


def _positives(points, matched, index):
    return sorted(tuple(p) for p in points[matched == index].tolist())


def test_fcos_targets_centre_sampling_and_size_ranges():
    # two levels: stride 8 for max(l, t, r, b) <= 32, stride 16 above; a 64x64 canvas
    points, strides, ranges = _points((64, 64), (8, 16), (-1.0, 32.0, INF))
    small = [4.0, 4.0, 28.0, 28.0]  # 24 x 24 around (16, 16): level 0
    big = [0.0, 0.0, 64.0, 48.0]  # 64 x 48 around (32, 24): level 1
    matched, ltrb = fcos_targets(points, strides, ranges, torch.tensor([small, big]))
    # level 0, radius 12 around (16, 16) clipped to the box: strictly inside (4, 28)^2; the
    # locations at 4 touch the border and are out
    assert _positives(points, matched, 0) == [(12, 12), (12, 20), (20, 12), (20, 20)]
    # level 1, radius 24 around (32, 24): x in (8, 56), y in (0, 48); the level-0 locations
    # in the big box's centre region have max distance 36 > 32 and are out
    expected_big = [(x, y) for x in (24.0, 40.0) for y in (8.0, 24.0, 40.0)]
    assert _positives(points, matched, 1) == expected_big
    assert int((matched >= 0).sum()) == 10
    at = ((points[:, 0] == 12) & (points[:, 1] == 20)).nonzero()[0, 0]
    assert ltrb[at].tolist() == [8.0, 16.0, 16.0, 8.0]
    assert ltrb[matched < 0].abs().sum() == 0


def test_fcos_targets_ambiguity_goes_to_the_smallest_box_and_radius_zero():
    points, strides, ranges = _points((64, 64), (8, 16), (-1.0, 32.0, INF))
    small = [4.0, 4.0, 28.0, 28.0]
    inner = [8.0, 8.0, 24.0, 24.0]  # inside ``small``, same centre, smaller area
    matched, ltrb = fcos_targets(points, strides, ranges, torch.tensor([small, inner]))
    assert _positives(points, matched, 1) == [(12, 12), (12, 20), (20, 12), (20, 20)]
    assert _positives(points, matched, 0) == []
    at = ((points[:, 0] == 12) & (points[:, 1] == 12)).nonzero()[0, 0]
    assert ltrb[at].tolist() == [4.0, 4.0, 12.0, 12.0]
    # without centre sampling every location strictly inside the box counts (range permitting)
    wide = [2.0, 2.0, 34.0, 26.0]  # 32 x 24: max distance at level 0 <= 28
    matched, _ = fcos_targets(points, strides, ranges, torch.tensor([wide]), center_radius=0)
    expected = [(x, y) for x in (4.0, 12.0, 20.0, 28.0) for y in (4.0, 12.0, 20.0)]
    assert _positives(points, matched, 0) == expected
    empty, zeros = fcos_targets(points, strides, ranges, torch.zeros(0, 4))
    assert (empty == -1).all() and zeros.abs().sum() == 0


def test_crop_split_assembly_takes_each_quadrants_coefficients():
    basis = torch.stack([torch.ones(4, 6), torch.zeros(4, 6)])  # logit = first coefficient
    coef = torch.tensor([[[1.0, 9.0], [2.0, 9.0], [3.0, 9.0], [4.0, 9.0]]] * 2)
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 3.0, 4.0]])
    logits, inside = crop_split_logits(basis, coef, boxes)
    # box 0: centre (2, 2); quadrants TL=1 TR=2 BL=3 BR=4 inside, 4 columns of 6
    expected0 = torch.tensor(
        [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]], dtype=torch.float32
    )
    assert torch.equal(logits[0, :, :4], expected0)
    assert inside[0, :, :4].all() and not inside[0, :, 4:].any()
    # box 1: pixels inside are rows 1-3, columns 1-2; centre (2, 2.5): row 3 is the bottom half
    expected_inside = torch.zeros(4, 6, dtype=torch.bool)
    expected_inside[1:4, 1:3] = True
    assert torch.equal(inside[1], expected_inside)
    assert logits[1][inside[1]].tolist() == [1.0, 2.0, 1.0, 2.0, 3.0, 4.0]
    none, none_inside = crop_split_logits(basis, coef[:0], boxes[:0])
    assert none.shape == none_inside.shape == (0, 4, 6)


def test_ground_truth_masks_are_halved_and_padded_to_the_basis_not_stretched():
    # a 6x8 image on an 8x8 canvas (basis 4x4): the mask covers the image's rows 0-1
    masks = torch.zeros(1, 6, 8, dtype=torch.bool)
    masks[0, :2] = True
    out = masks_at_basis(masks, (4, 4))
    expected = torch.zeros(1, 4, 4)
    expected[0, 0] = 1.0  # rows 0-1 -> basis row 0; basis row 3 is canvas padding
    assert torch.equal(out, expected)
    assert masks_at_basis(masks[:0], (4, 4)).shape == (0, 4, 4)


def test_fast_nms_suppresses_without_sequential_recheck():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [2.0, 0.0, 12.0, 10.0],  # IoU 0.67 with box 0: suppressed
            [5.0, 0.0, 15.0, 10.0],  # IoU 0.33 with box 0, 0.54 with the suppressed box 1
            [50.0, 50.0, 60.0, 60.0],
        ]
    )
    scores = torch.tensor([[0.9, 0.0], [0.8, 0.0], [0.7, 0.5], [0.6, 0.02]])
    index, labels, kept = fast_nms(boxes, scores, iou_thresh=0.5, score_thresh=0.03)
    # standard NMS would keep box 2 in class 0; Fast NMS drops it (box 1 outranks it)
    assert index.tolist() == [0, 3, 2]
    assert labels.tolist() == [0, 0, 1]
    assert kept.tolist() == pytest.approx([0.9, 0.6, 0.5])
    index, labels, _ = fast_nms(boxes, scores, top_k=1, score_thresh=0.03, max_detections=5)
    assert list(zip(index.tolist(), labels.tolist(), strict=True)) == [(0, 0), (2, 1)]
    index, _, _ = fast_nms(boxes, scores, score_thresh=0.03, max_detections=2)
    assert index.tolist() == [0, 3]
    index, labels, kept = fast_nms(boxes, scores, score_thresh=0.95)
    assert len(index) == len(labels) == len(kept) == 0


def test_paste_basis_masks_rescales_boxes_and_masks():
    masks = torch.zeros(1, 4, 4)  # stride-2 maps of an 8x8 canvas; the image is its top 6x8
    masks[0, 1:3, 0:2] = 0.9
    det = Instances(
        boxes=torch.tensor([[0.0, 2.0, 4.0, 6.0]]),
        labels=torch.tensor([0]),
        track_ids=torch.tensor([-1]),
        masks=masks,
        scores=torch.tensor([0.8]),
    )
    out = paste_basis_masks(det, image_size=(6, 8), original_size=(12, 16))
    assert out.boxes.tolist() == [[0.0, 4.0, 8.0, 12.0]]
    assert out.masks.shape == (1, 12, 16) and out.masks.dtype == torch.bool
    # canvas 8x8 at scale 2 = 16x16, cropped to 12x16; the block covers rows 4-11, columns 0-7
    # of the 16x16 map up to the bilinear border
    assert out.masks[0, 5:11, 0:7].all()
    assert not out.masks[0, :3].any() and not out.masks[0, :, 9:].any()
    empty = paste_basis_masks(
        det[torch.zeros(1, dtype=torch.bool)], image_size=(6, 8), original_size=(12, 16)
    )
    assert empty.masks.shape == (0, 12, 16)


def _model(calibration: bool = False, **test) -> SipMaskVIS:
    torch.manual_seed(0)
    backbone = TimmFPN("resnet18", out_channels=CHANNELS, pyramid="p3p7")
    return SipMaskVIS(
        backbone,
        num_classes=4,
        calibration=TemporalFeatureCalibration(CHANNELS, hidden_channels=16)
        if calibration
        else None,
        config=SipMaskConfig(basis_channels=32, track_dim=16),
        test=SipMaskTestConfig(**test),
    )


def _frame(n: int) -> Instances:
    boxes = torch.tensor([[10.0, 12.0, 40.0, 50.0], [30.0, 20.0, 90.0, 60.0]])[:n]
    masks = torch.zeros(n, H, W, dtype=torch.bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
        masks[i, y1:y2, x1:x2] = True
    return Instances(
        boxes=boxes,
        labels=torch.tensor([1, 2])[:n],
        track_ids=torch.tensor([5, 7])[:n],
        masks=masks,
        iscrowd=torch.zeros(n, dtype=torch.bool),
    )


def _batch(counts: list[tuple[int, int]]) -> ClipBatch:
    gen = torch.Generator().manual_seed(1)
    b = len(counts)
    return ClipBatch(
        images=torch.randint(0, 255, (b, 2, 3, H, W), generator=gen, dtype=torch.uint8),
        targets=[[_frame(q), _frame(r)] for q, r in counts],
        video_ids=list(range(b)),
        frame_indices=[[0, 1]] * b,
        video_lengths=[5] * b,
        image_sizes=[(H, W)] * b,
        original_sizes=[(H, W)] * b,
        scales=[1.0] * b,
    )


@pytest.mark.parametrize("calibration", [False, True])
def test_every_parameter_gets_a_gradient(calibration):
    model = _model(calibration)
    # predicted boxes of a fresh model are tiny, so the mask loss would see no positive: make
    # every location predict a 24-pixel box
    with torch.no_grad():
        model.head.reg.bias.fill_(3.0)
    losses = model.loss(_batch([(2, 2), (1, 2)]))
    assert set(losses) == {"loss_cls", "loss_box", "loss_centerness", "loss_mask", "loss_track"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    zero = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and p.grad.abs().sum() == 0 and not n.startswith("backbone.body")
    ]
    # the alignment offsets start at 0 and get a gradient; nothing in the head is cut off
    assert zero == []


def test_empty_targets_give_finite_losses_and_zero_box_mask_track_terms():
    model = _model()
    losses = model.loss(_batch([(0, 0), (0, 1)]))
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"] > 0
    for key in ("loss_box", "loss_centerness", "loss_mask", "loss_track"):
        assert float(losses[key].detach()) == 0.0
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.head.parameters())


def test_loss_checks_its_input():
    model = _model()
    batch = _batch([(1, 1)])
    with pytest.raises(ValueError, match="pairs"):
        model.loss(ClipBatch(**{**batch.__dict__, "images": batch.images[:, :1]}))
    with pytest.raises(ValueError, match="targets"):
        model.loss(ClipBatch(**{**batch.__dict__, "targets": None}))
    with pytest.raises(ValueError, match="P3-P7"):
        SipMaskVIS(resnet_fpn("resnet18"), num_classes=3)


def _features(model: SipMaskVIS, batch: ClipBatch, frame: int):
    return model.extract_features(batch.images[:, frame], batch.image_sizes)


def _assert_same(a: list[Instances], b: list[Instances]) -> None:
    for x, y in zip(a, b, strict=True):
        assert len(x) > 0
        for field in ("boxes", "labels", "scores", "masks"):
            torch.testing.assert_close(getattr(x, field), getattr(y, field), rtol=0, atol=1e-6)


def test_two_identical_references_equal_one_and_no_reference_is_the_query():
    model = _model(calibration=True, score_thresh=0.0, detections_per_img=20).eval()
    batch = _batch([(1, 1), (2, 2)])
    query, ref = _features(model, batch, 0), _features(model, batch, 1)
    one = model.detect(query, batch.image_sizes, [ref])
    _assert_same(model.detect(query, batch.image_sizes, [ref, ref]), one)
    other = model.detect(query, batch.image_sizes, [query])
    assert not torch.equal(other[0].scores, one[0].scores)  # the reference matters
    fallback = model.detect(query, batch.image_sizes, [])
    calibration, model.calibration = model.calibration, None
    _assert_same(fallback, model.detect(query, batch.image_sizes))
    model.calibration = calibration


def test_detections_are_sorted_capped_and_masks_lie_in_their_boxes():
    model = _model(score_thresh=0.0, detections_per_img=7).eval()
    batch = _batch([(1, 1)])
    (det,) = model.detect(_features(model, batch, 0), batch.image_sizes)
    assert len(det) == 7 and (det.track_ids == -1).all()
    assert torch.equal(det.scores, det.scores.sort(descending=True).values)
    assert det.masks.shape == (7, H // 2, W // 2)
    assert (det.boxes[:, 2] <= W).all() and (det.boxes[:, 3] <= H).all()
    for box, mask in zip(det.boxes / 2, det.masks, strict=True):
        ys, xs = mask.nonzero(as_tuple=True)
        if len(ys):
            assert xs.min() >= box[0] and xs.max() < box[2]
            assert ys.min() >= box[1] and ys.max() < box[3]


def test_embeddings_are_the_tracking_map_at_box_centres():
    model = _model().eval()
    batch = _batch([(1, 1)])
    feats = _features(model, batch, 0)
    track_map = model.track_map(feats)[0]
    boxes = torch.tensor(
        [[0.0, 0.0, 15.0, 15.0], [40.0, 20.0, 60.0, 30.0], [90.0, 60.0, 200.0, 99.0]]
    )
    (emb,) = model.embed(feats, [boxes])
    # centres (7.5, 7.5) -> cell (0, 0); (50, 25) -> (3, 6); (145, 79.5) -> clamped (7, 11)
    assert torch.equal(emb[0], track_map[:, 0, 0])
    assert torch.equal(emb[1], track_map[:, 3, 6])
    assert torch.equal(emb[2], track_map[:, 7, 11])


def test_coco_mask_rcnn_initialisation_refuses_the_one_stage_family(tmp_path):
    from ovisnet.models.checkpoint import load_coco_maskrcnn

    with pytest.raises(TypeError, match="SipMaskVIS has no RPN"):
        load_coco_maskrcnn(_model(), tmp_path / "coco.pth")


def test_p3p7_backbones_return_five_levels_at_strides_8_to_128():
    for backbone in (
        resnet_fpn("resnet18", pyramid="p3p7", out_channels=16),
        TimmFPN("resnet18", pyramid="p3p7", out_channels=16),
    ):
        levels = backbone(torch.zeros(1, 3, 256, 384))
        assert backbone.strides == (8, 16, 32, 64, 128)
        shapes = [tuple(x.shape[-2:]) for x in levels.values()]
        assert shapes == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
        assert all(x.shape[1] == 16 for x in levels.values())
    with pytest.raises(ValueError, match="pyramid"):
        resnet_fpn("resnet18", pyramid="p2p7")


def test_batched_references_equal_the_per_reference_loop_and_feature_fusion():
    model = _model(calibration=True, score_thresh=0.0, detections_per_img=20).eval()
    batch = _batch([(1, 1), (2, 2)])
    with torch.no_grad():
        query, ref = _features(model, batch, 0), _features(model, batch, 1)
        refs = [ref, {k: v.flip(-1) for k, v in ref.items()}, query]
        out = model.head_outputs(query, refs)
        singles = [model.head(list(model.calibrate(query, r).values())) for r in refs]
        for name in ("cls", "reg", "centerness", "coef"):
            for level, got in enumerate(getattr(out, name)):
                expected = sum(getattr(s, name)[level] for s in singles) / 3
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.basis, sum(s.basis for s in singles) / 3)

        model.reference_fusion = "features"
        fused = model.head_outputs(query, refs)
        calibrated = [model.calibrate(query, r) for r in refs]
        mean = [sum(c[k] for c in calibrated) / 3 for k in query]
        expected = model.head(mean)
        torch.testing.assert_close(fused.cls[0], expected.cls[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fused.basis, expected.basis, rtol=1e-5, atol=1e-5)
        assert len(model.detect(query, batch.image_sizes, refs)[0]) == 20

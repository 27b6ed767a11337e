"""MaskTrack R-CNN / CMaskTrack R-CNN modules, backbones and COCO initialisation (SPEC §2, §3)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torchvision.models.detection import maskrcnn_resnet50_fpn

from ovisnet.models.backbones import TimmFPN, resnet_fpn
from ovisnet.models.calibration import TemporalFeatureCalibration
from ovisnet.models.checkpoint import load_coco_maskrcnn
from ovisnet.models.masktrack import MaskTrackRCNN, RPNConfig, paste_masks
from ovisnet.models.roi_heads import RCNNConfig
from ovisnet.models.track_head import TrackEmbedHead
from ovisnet.structures import ClipBatch, Instances

CHANNELS = 32
H, W = 128, 192
SIZES = [(120, 180), (H, W)]
LOSS_KEYS = {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask", "loss_track"}


def instances(boxes, track_ids, size, labels=None, iscrowd=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    masks = torch.zeros(len(boxes), *size, dtype=torch.bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
        masks[i, y1:y2, x1:x2] = True
    return Instances(
        boxes=boxes,
        labels=torch.tensor(labels or [i % 3 for i in range(len(boxes))], dtype=torch.int64),
        track_ids=torch.tensor(track_ids, dtype=torch.int64),
        masks=masks,
        iscrowd=torch.tensor(iscrowd or [False] * len(boxes), dtype=torch.bool),
    )


def make_batch(targets):
    gen = torch.Generator().manual_seed(0)
    return ClipBatch(
        images=torch.randint(0, 256, (2, 2, 3, H, W), dtype=torch.uint8, generator=gen),
        targets=targets,
        video_ids=[1, 2],
        frame_indices=[[0, 1], [3, 2]],
        video_lengths=[5, 4],
        image_sizes=SIZES,
        original_sizes=[(240, 360), (H, W)],
        scales=[0.5, 1.0],
    )


@pytest.fixture
def batch():
    """Sample 0: two objects, one of them (track 2) in the reference. Sample 1: one object,
    absent from an empty reference frame."""
    return make_batch(
        [
            [
                instances([[10, 10, 60, 70], [80, 20, 150, 100]], [1, 2], SIZES[0]),
                instances([[84, 22, 152, 98]], [2], SIZES[0]),
            ],
            [instances([[30, 30, 90, 90]], [5], SIZES[1]), instances([], [], SIZES[1])],
        ]
    )


class AddReference(nn.Module):
    """Light stand-in for the calibration module: ``query + conv1x1(reference)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, query, reference):
        return query + self.proj(reference)


def make_model(calibration=None, seed=0):
    torch.manual_seed(seed)
    backbone = TimmFPN("resnet18", out_channels=CHANNELS)
    # timm zero-initialises the last BN scale of each residual block, which blocks the gradient
    # of the residual branches at the first step; give them a scale so every path is exercised.
    for module in backbone.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
    return MaskTrackRCNN(
        backbone,
        num_classes=3,
        calibration=calibration,
        track_head=TrackEmbedHead(CHANNELS, 7, hidden=64, embed_dim=32),
        rpn=RPNConfig(pre_nms_top_n=200, post_nms_top_n=100),
        rcnn=RCNNConfig(
            batch_size_per_image=64, representation_size=64, mask_channels=16, detections_per_img=20
        ),
    )


def assert_all_gradients(model):
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    no_grad = [n for n, p in trainable if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    assert all(torch.isfinite(p.grad).all() for _, p in trainable)


# --- backbones ---------------------------------------------------------------------------------


def test_resnet_fpn_levels_and_frozen_stages():
    backbone = resnet_fpn("resnet18")
    out = backbone(torch.randn(1, 3, 64, 96))
    assert backbone.out_channels == 256
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "0": (1, 256, 16, 24),
        "1": (1, 256, 8, 12),
        "2": (1, 256, 4, 6),
        "3": (1, 256, 2, 3),
        "pool": (1, 256, 1, 2),
    }
    frozen = {n.split(".")[1] for n, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "layer1"}  # trainable_layers=3: stem and stage 1 frozen
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())


def test_resnet_fpn_width_and_batch_normalised_fpn():
    backbone = resnet_fpn(
        "resnet18", trainable_layers=5, frozen_bn=False, out_channels=32, fpn_batch_norm=True
    )
    assert backbone.out_channels == 32
    norms = [m for m in backbone.fpn.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 8  # after each of the 4 lateral and 4 output convolutions
    out = backbone(torch.randn(2, 3, 64, 96))
    assert {k: v.shape[1] for k, v in out.items()} == dict.fromkeys(out, 32)
    # training-mode batch norm: every level leaves the FPN with unit scale (the pool level is
    # a max-pool of P5)
    for key in ("0", "1", "2", "3"):
        assert out[key].std().item() == pytest.approx(1.0, abs=0.01)
    plain = resnet_fpn("resnet18", out_channels=32)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.fpn.modules())


def test_timm_fpn_levels():
    backbone = TimmFPN("resnet18", out_channels=CHANNELS)
    out = backbone(torch.randn(2, 3, 64, 96))
    assert backbone.out_channels == CHANNELS
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert [tuple(v.shape[-2:]) for v in out.values()] == [
        (16, 24),
        (8, 12),
        (4, 6),
        (2, 3),
        (1, 2),
    ]
    assert all(v.shape[:2] == (2, CHANNELS) for v in out.values())


# --- training ----------------------------------------------------------------------------------


@pytest.mark.parametrize("with_calibration", [False, True], ids=["masktrack", "cmasktrack"])
def test_loss_finite_and_every_parameter_gets_a_gradient(batch, with_calibration):
    calibration = AddReference(CHANNELS) if with_calibration else None
    model = make_model(calibration)
    losses = model.loss(batch)
    assert set(losses) == LOSS_KEYS
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    assert losses["loss_track"] > 0 and losses["loss_mask"] > 0
    sum(losses.values()).backward()
    assert_all_gradients(model)


def test_cmasktrack_loss_with_temporal_feature_calibration(batch):
    tfc = TemporalFeatureCalibration(CHANNELS, patch_size=4, dilation_patch=2, hidden_channels=16)
    model = make_model(tfc)
    losses = model.loss(batch)
    assert set(losses) == LOSS_KEYS and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert_all_gradients(model)


def test_frames_without_ground_truth():
    empty = [instances([], [], SIZES[0]), instances([], [], SIZES[0])]
    only_query = [instances([[30, 30, 90, 90]], [5], SIZES[1]), instances([], [], SIZES[1])]
    model = make_model(AddReference(CHANNELS))
    losses = model.loss(make_batch([empty, only_query]))
    assert set(losses) == LOSS_KEYS and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    all_empty = model.loss(make_batch([empty, [instances([], [], SIZES[1])] * 2]))
    assert all(torch.isfinite(v) for v in all_empty.values())
    for key in ("loss_box", "loss_mask", "loss_track"):
        assert all_empty[key].item() == 0.0


def test_crowd_ground_truth_is_ignored(batch):
    crowded = dataclasses.replace(batch, targets=[list(clip) for clip in batch.targets])
    q = batch.targets[0][0]
    crowd = instances([[100, 60, 170, 110]], [9], SIZES[0], iscrowd=[True])
    crowded.targets[0][0] = Instances(
        boxes=torch.cat([q.boxes, crowd.boxes]),
        labels=torch.cat([q.labels, crowd.labels]),
        track_ids=torch.cat([q.track_ids, crowd.track_ids]),
        masks=torch.cat([q.masks, crowd.masks]),
        iscrowd=torch.cat([q.iscrowd, crowd.iscrowd]),
    )
    model = make_model()
    torch.manual_seed(1)
    plain = model.loss(batch)
    torch.manual_seed(1)
    with_crowd = model.loss(crowded)
    for key in LOSS_KEYS:
        assert with_crowd[key].item() == plain[key].item()


def test_loss_does_not_depend_on_module_mode(batch):
    # torchvision's RPN computes its loss only in training mode; ours must not care. The
    # backbone stays in eval mode in both runs so that batch norm cannot differ.
    model = make_model()
    model.backbone.eval()
    torch.manual_seed(3)
    train_losses = model.loss(batch)
    model.eval()
    torch.manual_seed(3)
    eval_losses = model.loss(batch)
    assert set(eval_losses) == LOSS_KEYS
    for key in LOSS_KEYS:
        assert eval_losses[key].item() == train_losses[key].item()


def test_detach_reference_keeps_losses_and_stops_only_the_reference_backbone_gradient(batch):
    # Backbone in eval mode so that batch norm sees the same statistics whether the two frames
    # run as one batch or separately; then the losses, and every gradient outside the backbone,
    # must be the same; only backbone gradients change (they lose the reference path).
    model = make_model(AddReference(CHANNELS))
    model.backbone.eval()
    seen = []
    model.backbone.register_forward_hook(
        lambda _m, args, _out: seen.append((len(args[0]), torch.is_grad_enabled()))
    )
    grads = {}
    calls = {}
    for detach in (False, True):
        model.detach_reference = detach
        model.zero_grad(set_to_none=True)
        seen.clear()
        torch.manual_seed(5)
        losses = model.loss(batch)
        sum(losses.values()).backward()
        grads[detach] = {
            n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
        }
        calls[detach] = (list(seen), {k: v.item() for k, v in losses.items()})
    assert calls[False][0] == [(4, True)]
    assert calls[True][0] == [(2, True), (2, False)]
    for key, value in calls[False][1].items():
        assert calls[True][1][key] == pytest.approx(value, rel=1e-5, abs=1e-6)
    assert set(grads[True]) == set(grads[False])
    changed = {
        name
        for name, grad in grads[False].items()
        if not torch.allclose(grads[True][name], grad, rtol=1e-4, atol=1e-6)
    }
    assert changed and all(name.startswith("backbone.") for name in changed), changed


# --- inference ---------------------------------------------------------------------------------


def test_padding_is_zero_after_normalisation():
    model = make_model().eval()
    images = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)
    other = images.clone()
    other[..., 50:, :] = 255
    other[..., :, 70:] = 7
    size = [(50, 70)]
    a, b = model.extract_features(images, size), model.extract_features(other, size)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_detect_and_embed_shapes(batch):
    model = make_model().eval()
    feats = model.extract_features(batch.images[:, 0], SIZES)
    detections = model.detect(feats, SIZES)
    assert len(detections) == 2
    for det, (h, w) in zip(detections, SIZES):
        n = len(det)
        assert 0 < n <= 20
        assert det.masks.shape == (n, 28, 28) and det.masks.dtype == torch.float32
        assert ((det.masks >= 0) & (det.masks <= 1)).all()
        assert det.scores.shape == (n,) and (det.scores > 0.05).all()
        assert (det.scores[:-1] >= det.scores[1:]).all()
        assert ((det.labels >= 0) & (det.labels < 3)).all()
        assert (det.track_ids == -1).all()
        assert (det.boxes[:, 2] <= w).all() and (det.boxes[:, 3] <= h).all()
    embeddings = model.embed(feats, [d.boxes for d in detections])
    assert [tuple(e.shape) for e in embeddings] == [(len(d), 32) for d in detections]
    assert model.embed(feats, [torch.zeros(0, 4), torch.zeros(0, 4)])[0].shape == (0, 32)


def _assert_same_detections(a, b):
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.labels, y.labels)
        torch.testing.assert_close(x.boxes, y.boxes, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(x.scores, y.scores, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x.masks, y.masks, atol=1e-5, rtol=1e-5)


def test_cmasktrack_detect_with_0_1_and_3_references(batch):
    model = make_model(AddReference(CHANNELS)).eval()
    with torch.no_grad():
        model.calibration.proj.weight.mul_(5.0)  # make the references matter visibly
    query = model.extract_features(batch.images[:, 0], SIZES)
    ref = model.extract_features(batch.images[:, 1], SIZES)

    one = model.detect(query, SIZES, [ref])
    three_identical = model.detect(query, SIZES, [ref, ref, ref])
    _assert_same_detections(one, three_identical)

    # No reference: the heads read the query features, as a model without calibration does.
    plain = make_model().eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    no_reference = model.detect(query, SIZES, [])
    _assert_same_detections(no_reference, model.detect(query, SIZES, None))
    _assert_same_detections(no_reference, plain.detect(query, SIZES, [ref]))
    assert not torch.allclose(one[0].scores[:5], no_reference[0].scores[:5])

    other = {k: v.flip(-1) for k, v in ref.items()}
    assert len(model.detect(query, SIZES, [ref, other, ref])) == 2


def test_reference_averaging_is_the_mean_of_logits_and_deltas(batch):
    model = make_model(AddReference(CHANNELS)).eval()
    query = model.extract_features(batch.images[:, 0], SIZES)
    refs = [model.extract_features(batch.images[:, 1], SIZES), query]
    calibrated = [model.calibrate(query, r) for r in refs]
    boxes = [
        torch.tensor([[10.0, 10.0, 60.0, 70.0]]),
        torch.tensor([[5.0, 5, 50, 40], [0, 0, 90, 90]]),
    ]
    canvas = (H, W)
    with torch.no_grad():
        logits, deltas = model.roi_heads.box_predictions(calibrated, boxes, canvas)
        singles = [model.roi_heads.box_predictions([c], boxes, canvas) for c in calibrated]
        masks = model.roi_heads.mask_logits(calibrated, boxes, canvas)
        single_masks = [model.roi_heads.mask_logits([c], boxes, canvas) for c in calibrated]
    torch.testing.assert_close(logits, (singles[0][0] + singles[1][0]) / 2)
    torch.testing.assert_close(deltas, (singles[0][1] + singles[1][1]) / 2)
    torch.testing.assert_close(masks, (single_masks[0] + single_masks[1]) / 2)
    assert logits.shape == (3, 4) and deltas.shape == (3, 16) and masks.shape == (3, 4, 28, 28)


def test_paste_masks_rescales_boxes_and_binarises():
    det = Instances(
        boxes=torch.tensor([[10.0, 20.0, 30.0, 40.0]]),
        labels=torch.tensor([1]),
        track_ids=torch.tensor([-1]),
        masks=torch.ones(1, 28, 28),
        scores=torch.tensor([0.9]),
    )
    out = paste_masks(det, image_size=(60, 80), original_size=(120, 160))
    torch.testing.assert_close(out.boxes, torch.tensor([[20.0, 40.0, 60.0, 80.0]]))
    assert out.masks.shape == (1, 120, 160) and out.masks.dtype == torch.bool
    assert out.masks[0, 42:78, 22:58].all()
    assert not out.masks[0, :38].any() and not out.masks[0, :, 62:].any()
    assert 1400 <= out.masks.sum() <= 1800  # the 40x40 box, up to its border
    assert out.scores is det.scores
    empty = paste_masks(
        det[torch.zeros(1, dtype=torch.bool)], image_size=(60, 80), original_size=(120, 160)
    )
    assert empty.masks.shape == (0, 120, 160)


# --- COCO initialisation -----------------------------------------------------------------------


def test_load_coco_maskrcnn(tmp_path):
    torch.manual_seed(0)
    coco = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    coco_state = coco.state_dict()
    model = MaskTrackRCNN(resnet_fpn("resnet50"), num_classes=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / "coco.pth"
    torch.save({"model": coco_state}, path)

    report = load_coco_maskrcnn(model, path)

    state = model.state_dict()
    for prefix in ("backbone.body.", "backbone.fpn.", "rpn.head.", "roi_heads.box_head."):
        keys = [k for k in state if k.startswith(prefix)]
        assert keys and all(torch.equal(state[k], coco_state[k]) for k in keys), prefix
        assert set(keys) <= set(report.loaded)
    for prefix in ("roi_heads.mask_head.", "roi_heads.mask_predictor.conv5_mask."):
        assert all(torch.equal(state[k], coco_state[k]) for k in state if k.startswith(prefix))
    class_layers = [
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.box_predictor.bbox_pred.bias",
        "roi_heads.mask_predictor.mask_fcn_logits.weight",
    ]
    for key in class_layers:
        assert key in report.skipped and key in report.missing
        assert torch.equal(state[key], before[key])  # keeps its fresh initialisation
    assert state["roi_heads.box_predictor.cls_score.weight"].shape == (6, 1024)
    assert all(k.startswith(("track_head.", "roi_heads.")) for k in report.missing)
    assert any(k.startswith("track_head.") for k in report.missing)


def test_load_coco_maskrcnn_old_key_layout_and_missing_file(tmp_path):
    # The published torchvision COCO file predates the versioned layout of RPNHead / FPN /
    # MaskRCNNHeads; their load hooks rename the keys.
    torch.manual_seed(0)
    coco = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=6)  # 5 + bg
    coco_state = coco.state_dict()
    renames = {
        "rpn.head.conv.0.0.": "rpn.head.conv.",
        "backbone.fpn.inner_blocks.0.0.": "backbone.fpn.inner_blocks.0.",
        "roi_heads.mask_head.0.0.": "roi_heads.mask_head.mask_fcn1.",
    }
    old = {}
    for key, value in coco_state.items():
        for new_prefix, old_prefix in renames.items():
            if key.startswith(new_prefix):
                key = old_prefix + key.removeprefix(new_prefix)
        old["module." + key] = value
    path = tmp_path / "old.pth"
    torch.save(old, path)
    model = MaskTrackRCNN(resnet_fpn("resnet50"), num_classes=5)

    report = load_coco_maskrcnn(model, path)

    state = model.state_dict()
    for key in (
        "rpn.head.conv.0.0.weight",
        "backbone.fpn.inner_blocks.0.0.bias",
        "roi_heads.mask_head.0.0.weight",
        "roi_heads.box_predictor.cls_score.weight",
    ):
        assert torch.equal(state[key], coco_state[key]) and key in report.loaded
    assert report.skipped == {}
    assert all(k.startswith("track_head.") for k in report.missing)

    with pytest.raises(FileNotFoundError, match="not found"):
        load_coco_maskrcnn(model, tmp_path / "absent.pth")


def test_rcnn_box_losses_beta_one_and_torchvision_equivalence():
    from torchvision.models.detection.roi_heads import fastrcnn_loss

    from ovisnet.models.roi_heads import rcnn_box_losses

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, generator=gen)
    deltas = torch.randn(5, 12, generator=gen)
    labels = [torch.tensor([0, 2, 1]), torch.tensor([1, 0])]
    targets = [torch.randn(3, 4, generator=gen), torch.randn(2, 4, generator=gen)]
    # beta 1/9 is torchvision's loss exactly
    tv_cls, tv_box = fastrcnn_loss(logits, deltas, labels, targets)
    cls, box = rcnn_box_losses(logits, deltas, labels, targets, beta=1 / 9)
    torch.testing.assert_close((cls, box), (tv_cls, tv_box))
    # beta 1 (the MaskTrack recipe), by hand: positives 1 (class 2), 2 (class 1), 3 (class 1)
    flat = torch.cat(targets)
    chosen = torch.stack([deltas[1, 8:12], deltas[2, 4:8], deltas[3, 4:8]])
    diff = (chosen - flat[[1, 2, 3]]).abs()
    expected = torch.where(diff < 1, 0.5 * diff**2, diff - 0.5).sum() / 5
    _, box_one = rcnn_box_losses(logits, deltas, labels, targets, beta=1.0)
    torch.testing.assert_close(box_one, expected)


def test_bf16_autocast_keeps_boxes_and_losses_in_float32(batch):
    # Under bf16 autocast (trainer.precision=bf16-mixed) convolutions run in bf16, but anchors,
    # proposals, box targets and head outputs must stay float32: bf16 rounds coordinates near 300
    # to 2 pixels, which made empty proposals and an infinite box loss in a CPU training run.
    model = make_model(TemporalFeatureCalibration(CHANNELS, patch_size=4, hidden_channels=16))
    sizes = [(H, W), (H, W)]
    reference = model._rpn(model.extract_features(batch.images[:, 0], sizes), (H, W), sizes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = model.extract_features(batch.images[:, 0], sizes)
        assert features["0"].dtype == torch.bfloat16  # the autocast is real
        rpn = model._rpn(features, (H, W), sizes)
        losses = model.loss(batch)
        detections = model.detect(features, sizes, [features])
    assert rpn.objectness.dtype == rpn.deltas.dtype == torch.float32
    for anchors, expected in zip(rpn.anchors, reference.anchors, strict=True):
        assert anchors.dtype == torch.float32 and torch.equal(anchors, expected)
    assert all(p.dtype == torch.float32 for p in rpn.proposals)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    for det in detections:
        assert det.boxes.dtype == det.scores.dtype == det.masks.dtype == torch.float32
    sum(losses.values()).backward()
    assert_all_gradients(model)


def test_batched_references_equal_the_per_reference_loop(batch):
    # the real calibration (correlation + deformable conv), three distinct references
    model = make_model(TemporalFeatureCalibration(CHANNELS, hidden_channels=16)).eval()
    model.roi_heads.score_thresh = 0.0
    with torch.no_grad():
        query = model.extract_features(batch.images[:, 0], SIZES)
        ref = model.extract_features(batch.images[:, 1], SIZES)
        refs = [ref, {k: v.flip(-1) for k, v in ref.items()}, {k: 0.5 * v for k, v in ref.items()}]
        batched = model.detect(query, SIZES, refs)
        # the paper's rule written as a loop: heads once per calibrated reference, then the mean
        canvas = (H, W)
        proposals = model._rpn(query, canvas, SIZES).proposals
        looped = model.roi_heads.detect(
            [model.calibrate(query, r) for r in refs], proposals, canvas, SIZES
        )
    assert len(batched[0]) > 10
    _assert_same_detections(batched, looped)


def test_feature_fusion_averages_the_calibrated_maps_and_runs_the_heads_once(batch):
    model = make_model(TemporalFeatureCalibration(CHANNELS, hidden_channels=16)).eval()
    model.roi_heads.score_thresh = 0.0
    with torch.no_grad():
        query = model.extract_features(batch.images[:, 0], SIZES)
        ref = model.extract_features(batch.images[:, 1], SIZES)
        refs = [ref, {k: v.flip(-1) for k, v in ref.items()}]
        papers = model.detect(query, SIZES, refs)
        model.reference_fusion = "features"
        fused = model.detect(query, SIZES, refs)
        one = model.detect(query, SIZES, [ref])  # one reference: both rules agree
        model.reference_fusion = "predictions"
        _assert_same_detections(one, model.detect(query, SIZES, [ref]))
        calibrated = [model.calibrate(query, r) for r in refs]
        mean = {k: (calibrated[0][k] + calibrated[1][k]) / 2 for k in calibrated[0]}
        canvas = (H, W)
        proposals = model._rpn(query, canvas, SIZES).proposals
        expected = model.roi_heads.detect([mean], proposals, canvas, SIZES)
    _assert_same_detections(fused, expected)
    assert not torch.allclose(fused[0].scores[:5], papers[0].scores[:5])  # another rule
    with pytest.raises(ValueError, match="reference_fusion"):
        MaskTrackRCNN(
            TimmFPN("resnet18", out_channels=CHANNELS), num_classes=3, reference_fusion="x"
        )

"""STEm-Seg: decoder, embeddings, losses (Lovász against brute force) and the clip predictor."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torch import nn

from ovisnet.models.backbones import resnet_fpn
from ovisnet.models.lovasz import lovasz_grad, lovasz_hinge
from ovisnet.models.stemseg import (
    ClipOutputs,
    SqueezeExpandDecoder,
    STEmSeg,
    STEmSegConfig,
    TemporalPool,
    clip_targets,
    coordinate_grid,
    instance_losses,
)
from ovisnet.structures import ClipBatch, Instances
from ovisnet.tracking.clip_predictor import ClipPredictor, ClusteringConfig

TINY = STEmSegConfig(embedding_widths=(16, 16, 8, 8), semantic_widths=(8, 8, 8, 8), num_groups=4)


def tiny_model(num_classes: int = 3) -> STEmSeg:
    torch.manual_seed(0)
    backbone = resnet_fpn(
        "resnet18", trainable_layers=5, frozen_bn=False, out_channels=16, fpn_batch_norm=True
    )
    return STEmSeg(backbone, num_classes, TINY)


# -- decoder and embeddings ---------------------------------------------------------------------


@pytest.mark.parametrize("frames", [8, 3, 1])
def test_decoder_keeps_time_and_reaches_stride_4(frames):
    torch.manual_seed(0)
    decoder = SqueezeExpandDecoder(8, (16, 16, 8, 4), num_groups=4)
    levels = [torch.randn(2, 8, frames, 48 // s, 64 // s) for s in (32, 16, 8, 4)]
    out = decoder(levels)
    assert out.shape == (2, 4, frames, 12, 16)
    # the stride-32 branch squeezes time twice (8 -> 4 -> 2), stride 16 twice, stride 8 once
    squeezed = [decoder.branches[i](levels[i]).shape[2] for i in range(4)]
    assert squeezed == (
        [2, 2, 4, 8] if frames == 8 else [1, 1, 2, frames] if frames == 3 else [1] * 4
    )


def test_temporal_pool_is_the_official_avg_pool():
    x = torch.randn(1, 2, 8, 5, 6)
    expected = nn.AvgPool3d(3, stride=(2, 1, 1), padding=1)(x)
    torch.testing.assert_close(TemporalPool()(x), expected)


def test_coordinate_grid_on_a_non_square_padded_map():
    grid = coordinate_grid(4, 8)  # landscape: y in [-1, 1], x in [-2, 2]
    assert grid.shape == (2, 4, 8)
    torch.testing.assert_close(grid[0, :, 0], torch.linspace(-1, 1, 4))
    torch.testing.assert_close(grid[1, 0], torch.linspace(-2, 2, 8))
    assert torch.all(grid[0] == grid[0, :, :1]) and torch.all(grid[1] == grid[1, :1])
    portrait = coordinate_grid(8, 4)  # y in [-2, 2], x in [-1, 1]
    assert portrait[0].min() == -2 and portrait[0].max() == 2
    assert portrait[1].min() == -1 and portrait[1].max() == 1


def test_clip_outputs_shapes_and_activations():
    model = tiny_model().eval()
    images = torch.randint(0, 255, (1, 8, 3, 64, 96), dtype=torch.uint8)
    with torch.no_grad():
        out = model.forward_clips(images, [(60, 90)])
    assert out.embeddings.shape == (1, 4, 8, 16, 24)
    assert out.bandwidths.shape == (1, 4, 8, 16, 24)
    assert out.raw_bandwidths.shape == (1, 2, 8, 16, 24)
    assert out.seediness.shape == out.foreground.shape == (1, 8, 16, 24)
    assert out.semantic.shape == (1, 4, 8, 16, 24)  # 3 classes + background
    # offsets are tanh-bounded around the coordinates; free dimensions have no coordinate
    grid = coordinate_grid(16, 24)
    assert (out.embeddings[0, :2] - grid[:, None]).abs().max() <= 1.0
    assert out.embeddings[0, 2:].abs().max() <= 1.0
    torch.testing.assert_close(
        out.bandwidths[0, :2], torch.exp(out.raw_bandwidths[0]) * 10.0, rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        out.bandwidths[0, 2:], torch.full_like(out.bandwidths[0, 2:], 1 / 0.09)
    )
    assert out.seediness.min() >= 0 and out.seediness.max() <= 1


def test_backbone_must_give_strides_4_to_32():
    backbone = resnet_fpn("resnet18", trainable_layers=5, frozen_bn=False, pyramid="p3p7")
    with pytest.raises(ValueError, match="strides 4, 8, 16, 32"):
        STEmSeg(backbone, 3)


# -- Lovász hinge -------------------------------------------------------------------------------


def _jaccard_loss(mistakes: set[int], labels: list[int]) -> float:
    positives = {i for i, y in enumerate(labels) if y}
    wrong_negatives = {i for i in mistakes if not labels[i]}
    union = positives | wrong_negatives
    return len(mistakes) / len(union) if union else 0.0


def _lovasz_brute_force(logits: list[float], labels: list[int]) -> float:
    """The Lovász extension of the Jaccard loss as a maximum over every ordering.

    The Jaccard loss is submodular, so its Lovász extension at the (clipped) hinge errors is the
    largest of the greedy sums over all permutations (Edmonds' greedy algorithm).
    """
    errors = [max(0.0, 1.0 - x * (2 * y - 1)) for x, y in zip(logits, labels)]
    best = -np.inf
    for order in itertools.permutations(range(len(errors))):
        total, prev, chosen = 0.0, 0.0, set()
        for i in order:
            chosen.add(i)
            value = _jaccard_loss(chosen, labels)
            total += errors[i] * (value - prev)
            prev = value
        best = max(best, total)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_lovasz_hinge_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 7))
    logits = rng.normal(0, 1.5, n).tolist()
    labels = rng.integers(0, 2, n).tolist()
    got = lovasz_hinge(torch.tensor(logits), torch.tensor(labels)).item()
    assert got == pytest.approx(_lovasz_brute_force(logits, labels), abs=1e-5)


def test_lovasz_hinge_known_values():
    # perfect margins: zero loss; all-wrong single positive: hinge error 2 times Jaccard 1
    assert lovasz_hinge(torch.tensor([2.0, -3.0]), torch.tensor([1, 0])).item() == 0.0
    assert lovasz_hinge(torch.tensor([-1.0]), torch.tensor([1])).item() == pytest.approx(2.0)
    assert lovasz_hinge(torch.zeros(0), torch.zeros(0)).item() == 0.0
    # the gradient weights of the sorted labels sum to the Jaccard loss of all mistakes (1)
    assert lovasz_grad(torch.tensor([1, 0, 1, 0])).sum().item() == pytest.approx(1.0)


# -- training targets and losses ----------------------------------------------------------------


def _frame(boxes_masks: list[tuple[int, int, tuple[slice, slice], bool]], hw=(32, 48)):
    """Instances from ``(track_id, label, (rows, cols), crowd)`` rectangles."""
    masks = torch.zeros(len(boxes_masks), *hw, dtype=torch.bool)
    for k, (_, _, (rows, cols), _) in enumerate(boxes_masks):
        masks[k, rows, cols] = True
    return Instances(
        boxes=torch.tensor(
            [[c.start, r.start, c.stop, r.stop] for *_, (r, c), _ in boxes_masks],
            dtype=torch.float32,
        ).reshape(-1, 4),
        labels=torch.tensor([lab for _, lab, *_ in boxes_masks], dtype=torch.int64),
        track_ids=torch.tensor([tid for tid, *_ in boxes_masks], dtype=torch.int64),
        masks=masks,
        iscrowd=torch.tensor([c for *_, c in boxes_masks], dtype=torch.bool),
    )


def test_clip_targets_follow_track_ids_and_crowds_become_ignore():
    clip = [
        _frame(
            [(7, 2, (slice(0, 8), slice(0, 8)), False), (9, 0, (slice(8, 16), slice(8, 16)), True)]
        ),
        _frame([]),
        _frame(
            [
                (5, 1, (slice(16, 24), slice(16, 32)), False),
                (7, 2, (slice(0, 8), slice(4, 12)), False),
            ]
        ),
    ]
    masks, labels, ignore = clip_targets(clip, (8, 12), torch.device("cpu"))
    assert labels.tolist() == [2, 1]  # track 7 first seen, then track 5; crowd 9 is not a target
    assert masks.shape == (2, 3, 8, 12)
    assert masks[0, 0, :2, :2].all() and masks[0, 0].sum() == 4 and masks[0, 1].sum() == 0
    assert masks[0, 2, :2, 1:3].all() and masks[0, 2].sum() == 4
    assert masks[1, 2].sum() == 8 and masks[1, 0].sum() == 0
    assert ignore[0, 2:4, 2:4].all() and ignore.sum() == 4


def test_instance_losses_vanish_for_a_perfect_embedding():
    # two instances over a 1 x 1 x 6 clip: embeddings exactly at their centres, huge bandwidths
    masks = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 0]], dtype=torch.bool).view(
        2, 1, 1, 6
    )
    emb = torch.zeros(4, 1, 1, 6)
    emb[0, 0, 0, 3:5] = 5.0
    emb[0, 0, 0, 2] = emb[0, 0, 0, 5] = -5.0
    bw = torch.full((4, 1, 1, 6), 100.0)
    raw = torch.zeros(2, 1, 1, 6)
    seeds = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 0.0]).view(1, 1, 6)
    terms = instance_losses(emb, bw, raw, seeds, masks, torch.zeros(1, 1, 6, dtype=torch.bool))
    assert terms["lovasz"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["smoothness"].item() == 0.0
    assert terms["seediness"].item() == pytest.approx(0.0, abs=1e-6)
    # a varying raw bandwidth inside instance 0 (values 0 and 2 on both dims): variance 1 / 2
    raw[:, 0, 0, 1] = 2.0
    terms = instance_losses(emb, bw, raw, seeds, masks, torch.zeros(1, 1, 6, dtype=torch.bool))
    assert terms["smoothness"].item() == pytest.approx(0.5)
    # background seediness 1 at pixel 2 (of 2 background pixels): (0 + 0 + 1/2) / 3
    seeds[0, 0, 2] = 1.0
    terms = instance_losses(emb, bw, raw, seeds, masks, torch.zeros(1, 1, 6, dtype=torch.bool))
    assert terms["seediness"].item() == pytest.approx(0.5 / 3)
    # an ignored pixel contributes 0 to the background mean but still counts in it
    ignore = torch.zeros(1, 1, 6, dtype=torch.bool)
    ignore[0, 0, 2] = True
    terms = instance_losses(emb, bw, raw, seeds, masks, ignore)
    assert terms["seediness"].item() == pytest.approx(0.0, abs=1e-6)


def _clip_batch(num_frames: int = 4) -> ClipBatch:
    hw = (64, 96)
    clip = [
        _frame(
            [
                (1, 0, (slice(8, 40), slice(8 + 2 * t, 40 + 2 * t)), False),
                (2, 2, (slice(30, 60), slice(50, 90)), False),
            ],
            hw,
        )
        for t in range(num_frames)
    ]
    return ClipBatch(
        images=torch.randint(0, 255, (2, num_frames, 3, *hw), dtype=torch.uint8),
        targets=[clip, clip[:1] * num_frames],
        video_ids=[1, 2],
        frame_indices=[list(range(num_frames))] * 2,
        video_lengths=[num_frames] * 2,
        image_sizes=[(60, 90)] * 2,
        original_sizes=[(60, 90)] * 2,
        scales=[1.0, 1.0],
    )


def test_every_parameter_gets_a_gradient():
    model = tiny_model()
    losses = model.loss(_clip_batch())
    assert set(losses) == {
        "loss_lovasz",
        "loss_smoothness",
        "loss_seediness",
        "loss_semantic",
        "loss_foreground",
    }
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    zero = [n for n, p in model.named_parameters() if p.grad is not None and not p.grad.any()]
    assert not zero


def test_loss_without_objects_is_finite():
    model = tiny_model()
    batch = _clip_batch(2)
    empty = [_frame([], (64, 96)) for _ in range(2)]
    batch.targets = [empty, empty]
    losses = model.loss(batch)
    assert losses["loss_lovasz"].item() == 0.0 and losses["loss_smoothness"].item() == 0.0
    sum(losses.values()).backward()


# -- streamed clip predictor --------------------------------------------------------------------


class _FakeClipModel:
    """A model whose 'features' are the frame index, and whose clip outputs are hand-built.

    Object A (class 0) fills the left half of the stride-4 map in every frame, object B (class 2)
    the right half's top rows from frame 6 on; A embeds at (0, 0), B at (3, 3).
    """

    def __init__(self, h: int = 6, w: int = 8) -> None:
        self.h, self.w = h, w
        self.max_held = 0

    def extract_features(self, images, image_sizes=None):
        return {"t": images.float().mean().view(1)}

    def clip_outputs(self, frames):
        t_len, h, w = len(frames), self.h, self.w
        emb = torch.zeros(1, 4, t_len, h, w)
        seeds = torch.zeros(1, t_len, h, w)
        fg = torch.full((1, t_len, h, w), -10.0)
        sem = torch.zeros(1, 4, t_len, h, w)
        for i, f in enumerate(frames):
            t = int(f["t"].item())
            fg[0, i, :, : w // 2] = 10.0
            seeds[0, i, :, : w // 2] = 0.9
            sem[0, 1, i, :, : w // 2] = 5.0
            if t >= 6:
                fg[0, i, :2, w // 2 :] = 10.0
                seeds[0, i, :2, w // 2 :] = 0.95
                emb[0, :2, i, :2, w // 2 :] = 3.0
                sem[0, 3, i, :2, w // 2 :] = 5.0
        bandwidths = torch.full((1, 4, t_len, h, w), 10.0)
        return ClipOutputs(emb, bandwidths, torch.zeros(1, 2, t_len, h, w), seeds, sem, fg)


@pytest.mark.parametrize("length", [13, 5])
def test_clip_predictor_streams_clusters_and_stitches(length):
    model = _FakeClipModel()
    predictor = ClipPredictor(
        model,
        video_id=4,
        length=length,
        image_size=(22, 32),
        original_size=(44, 64),
        category_ids=[11, 12, 13],
        config=ClusteringConfig(max_tracks=5),
    )
    held = []
    for t in range(length):
        predictor.push(torch.full((3, 24, 32), t, dtype=torch.uint8))
        held.append(len(predictor.features) + len(predictor.stitcher.held_frames))
    assert predictor.done
    assert max(held) <= 8 + 4  # a sub-clip's features and the overlap's labels, never the video
    results = predictor.finalize()
    by_category = {r["category_id"]: r for r in results}
    assert set(by_category) == ({11, 13} if length > 6 else {11})
    a = by_category[11]
    assert a["video_id"] == 4 and len(a["segmentations"]) == length
    assert all(s is not None for s in a["segmentations"])  # one track through every sub-clip
    mask = mask_utils.decode(a["segmentations"][0])
    assert mask.shape == (44, 64)
    # left half of the stride-4 map (16 px of the 32-px canvas) scaled x2 to the original
    assert mask[:, :30].all() and not mask[:, 34:].any()
    if length > 6:
        b = by_category[13]
        assert [s is not None for s in b["segmentations"]] == [t >= 6 for t in range(length)]
        # score: pixel count relative to the largest kept track
        assert a["score"] == 1.0 and 0 < b["score"] < a["score"]


def test_clip_predictor_rejects_extra_frames():
    predictor = ClipPredictor(
        _FakeClipModel(),
        video_id=1,
        length=1,
        image_size=(24, 32),
        original_size=(24, 32),
        category_ids=[1, 2, 3],
    )
    predictor.push(torch.zeros(3, 24, 32, dtype=torch.uint8))
    assert predictor.done and len(predictor.finalize()) == 1  # object A, padded clip
    with pytest.raises(ValueError, match="more than 1 frames"):
        predictor.push(torch.zeros(3, 24, 32, dtype=torch.uint8))


def test_max_tracks_keeps_the_longest_lived():
    predictor = ClipPredictor(
        _FakeClipModel(),
        video_id=1,
        length=13,
        image_size=(24, 32),
        original_size=(24, 32),
        category_ids=[1, 2, 3],
        config=ClusteringConfig(max_tracks=1),
    )
    for t in range(13):
        predictor.push(torch.full((3, 24, 32), t, dtype=torch.uint8))
    (only,) = predictor.finalize()
    assert only["category_id"] == 1 and only["score"] == 1.0

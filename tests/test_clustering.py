"""STEm-Seg clip clustering and cross-clip stitching (ovisnet.tracking.clustering)."""

from __future__ import annotations

import math

import pytest
import torch

from ovisnet.tracking.clustering import ClipStitcher, cluster_pixels

# --------------------------------------------------------------------------------------------
# cluster_pixels
# --------------------------------------------------------------------------------------------


def _blobs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two tight blobs (B seedier than A) and three far outliers, shuffled with a fixed order.

    Returns embeddings, bandwidths, seediness and the expected labels (B = 0 as it is seeded
    first, A = 1, outliers -1).
    """
    g = torch.Generator().manual_seed(0)
    n = 20
    blob_a = torch.randn(n, 4, generator=g) * 0.03
    blob_b = torch.randn(n, 4, generator=g) * 0.03 + torch.tensor([3.0, 0.0, 0.0, 0.0])
    outliers = torch.tensor([[10.0, 10.0, 0.0, 0.0], [-8.0, 4.0, 0.0, 0.0], [0.0, -9.0, 1.0, 1.0]])
    emb = torch.cat([blob_a, blob_b, outliers])
    seed_a = 0.81 + 0.08 * torch.rand(n, generator=g)
    seed_b = 0.9 + 0.09 * torch.rand(n, generator=g)
    seed = torch.cat([seed_a, seed_b, torch.full((3,), 0.1)])
    expected = torch.cat([torch.full((n,), 1), torch.full((n,), 0), torch.full((3,), -1)]).long()
    perm = torch.randperm(emb.shape[0], generator=g)
    bw = torch.full_like(emb, 10.0)
    return emb[perm], bw[perm], seed[perm], expected[perm]


@pytest.mark.parametrize("distance", ["squared", "sqrt"])
@pytest.mark.parametrize("secondary", ["nearest", "official"])
def test_two_blobs_and_outliers(distance, secondary):
    emb, bw, seed, expected = _blobs()
    labels = cluster_pixels(emb, bw, seed, distance=distance, secondary=secondary)
    assert labels.dtype == torch.int64
    assert torch.equal(labels, expected)


def test_seed_threshold_above_every_seediness_gives_no_cluster():
    emb, bw, seed, _ = _blobs()
    labels = cluster_pixels(emb, bw, seed, seed_thresh=0.995)
    assert torch.equal(labels, torch.full_like(labels, -1))


def test_max_clusters_one():
    emb, bw, seed, expected = _blobs()
    labels = cluster_pixels(emb, bw, seed, max_clusters=1)
    assert torch.equal(labels, torch.where(expected == 0, 0, -1))


def _line(points: list[float], seeds: list[float]) -> tuple[torch.Tensor, ...]:
    """Pixels on the x axis of a 2-D embedding with unit bandwidths."""
    emb = torch.tensor([[x, 0.0] for x in points])
    return emb, torch.ones_like(emb), torch.tensor(seeds)


def test_secondary_pass_assigns_between_thresholds():
    # Seed at 0; unit bandwidth so prob = exp(-x²/2) with the squared distance.
    emb, bw, seed = _line([0.0, 1.0, 1.3, 2.0], [0.9, 0.1, 0.1, 0.1])
    p_primary, p_secondary, p_outlier = (math.exp(-0.5 * x * x) for x in (1.0, 1.3, 2.0))
    assert p_primary > 0.5  # 0.607: joins in the loop
    assert 0.3 < p_secondary < 0.5  # 0.430: only the secondary pass takes it
    assert p_outlier < 0.3  # 0.135: stays an outlier
    assert cluster_pixels(emb, bw, seed).tolist() == [0, 0, 0, -1]
    # The 1.3 pixel really comes from the secondary pass: above its probability it is left out.
    assert cluster_pixels(emb, bw, seed, secondary_thresh=0.45).tolist() == [0, 0, -1, -1]


def test_sqrt_and_squared_distances_differ():
    emb, bw, seed = _line([0.0, 1.3, 2.0], [0.9, 0.1, 0.1])
    squared = [math.exp(-0.5 * x * x) for x in (1.3, 2.0)]  # 0.430, 0.135
    sqrt = [math.exp(-0.5 * x) for x in (1.3, 2.0)]  # 0.522, 0.368
    assert squared[0] < 0.45 < 0.5 < sqrt[0]
    assert squared[1] < 0.3 < sqrt[1] < 0.45
    # Primary membership only (secondary threshold above both leftover probabilities).
    kw = {"secondary_thresh": 0.45}
    assert cluster_pixels(emb, bw, seed, distance="squared", **kw).tolist() == [0, -1, -1]
    assert cluster_pixels(emb, bw, seed, distance="sqrt", **kw).tolist() == [0, 0, -1]
    # With the default secondary threshold 0.3.
    assert cluster_pixels(emb, bw, seed, distance="squared").tolist() == [0, 0, -1]
    assert cluster_pixels(emb, bw, seed, distance="sqrt").tolist() == [0, 0, 0]


def test_official_secondary_picks_the_farther_cluster_and_stale_set():
    # Seeds A at 0 (label 0) and B at 2.5 (label 1); p at 1.3 joins neither in the loop,
    # q at 1.45 joins B (prob 0.576 > 0.5) but is within secondary reach of A too.
    emb, bw, seed = _line([0.0, 2.5, 1.3, 1.45], [0.95, 0.9, 0.1, 0.1])

    def prob(x: float, c: float) -> float:
        return math.exp(-0.5 * (x - c) ** 2)

    assert 0.3 < prob(1.3, 0.0) < prob(1.3, 2.5) < 0.5  # p: A 0.430, B 0.487
    assert 0.3 < prob(1.45, 0.0) < 0.5 < prob(1.45, 2.5)  # q: A 0.350, B 0.576
    assert prob(2.5, 0.0) < 0.3  # B's seed is out of A's reach (0.044)

    # Nearest (default): p goes to B, whose probability is higher.
    assert cluster_pixels(emb, bw, seed).tolist() == [0, 1, 1, 1]
    # Official, loop ended by the seed threshold: p takes the farther cluster A.
    assert cluster_pixels(emb, bw, seed, secondary="official").tolist() == [0, 1, 0, 1]
    # Official, loop ended by the cap: the leftover set predates B, so q is relabelled to A
    # too; B's seed stays (A's probability 0.044 is below 0.3).
    capped = cluster_pixels(emb, bw, seed, secondary="official", max_clusters=2)
    assert capped.tolist() == [0, 1, 0, 0]
    assert cluster_pixels(emb, bw, seed, max_clusters=2).tolist() == [0, 1, 1, 1]


def test_empty_input():
    labels = cluster_pixels(torch.zeros(0, 4), torch.ones(0, 4), torch.zeros(0))
    assert labels.dtype == torch.int64
    assert labels.shape == (0,)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seed_thresh": 1.0}, "seed_thresh"),
        ({"primary_thresh": 0.0}, "primary_thresh"),
        ({"secondary_thresh": 1.5}, "secondary_thresh"),
        ({"max_clusters": 0}, "max_clusters"),
        ({"distance": "l1"}, "distance"),
        ({"secondary": "farthest"}, "secondary"),
    ],
)
def test_cluster_argument_errors(kwargs, match):
    emb, bw, seed = _line([0.0], [0.9])
    with pytest.raises(ValueError, match=match):
        cluster_pixels(emb, bw, seed, **kwargs)


def test_cluster_shape_errors():
    emb, bw, seed = _line([0.0, 1.0], [0.9, 0.1])
    with pytest.raises(ValueError, match="embeddings"):
        cluster_pixels(emb[0], bw, seed)
    with pytest.raises(ValueError, match="bandwidths"):
        cluster_pixels(emb, bw[:, :1], seed)
    with pytest.raises(ValueError, match="seediness"):
        cluster_pixels(emb, bw, seed[:1])


# --------------------------------------------------------------------------------------------
# ClipStitcher
# --------------------------------------------------------------------------------------------


def _maps(*rows: list[int]) -> torch.Tensor:
    """``(T, 1, w)`` label maps, one row of labels per frame."""
    return torch.tensor(rows, dtype=torch.int64)[:, None, :]


def _emitted(out: list[tuple[int, torch.Tensor]]) -> list[tuple[int, list[int]]]:
    return [(f, m[0].tolist()) for f, m in out]


def test_identity_kept_and_new_object_gets_new_track():
    stitcher = ClipStitcher()
    first = _maps([0, 0, -1, 1, 1, -1], [0, 0, -1, 1, 1, -1], [0, 0, -1, 1, 1, -1])
    out = stitcher.push([0, 1, 2], first, final_before=1)
    assert _emitted(out) == [(0, [0, 0, -1, 1, 1, -1])]
    assert stitcher.held_frames == [1, 2]
    assert stitcher.num_tracks == 2

    # Second clip renumbers the objects (7 = right, 3 = left), disagrees slightly on frame 2 and
    # shows a new object 5 in its own frames only.
    second = _maps(
        [3, 3, -1, 7, 7, -1], [3, 3, 3, 7, 7, -1], [3, 3, -1, 7, 7, 5], [3, -1, 5, 5, 7, 7]
    )
    out = stitcher.push([1, 2, 3, 4], second, final_before=5)
    assert _emitted(out) == [
        (1, [0, 0, -1, 1, 1, -1]),  # shared frames keep the earlier clip's labels
        (2, [0, 0, -1, 1, 1, -1]),
        (3, [0, 0, -1, 1, 1, 2]),
        (4, [0, -1, 2, 2, 1, 1]),
    ]
    assert stitcher.held_frames == []
    assert stitcher.num_tracks == 3


def test_hungarian_beats_greedy():
    # One shared frame of 20 pixels: tracks A = 0..9, B = 10..19.
    # New clusters X = {0..5, 10..14}, Y = {7..9}:
    #   IoU(A, X) = 6/15 = 0.4, IoU(B, X) = 5/16 = 0.3125, IoU(A, Y) = 3/10 = 0.3, IoU(B, Y) = 0.
    # Greedy on the best IoU takes (A, X) then (B, Y): total 0.4; Hungarian: (A, Y) + (B, X) =
    # 0.6125.
    old = [0] * 10 + [1] * 10
    new = [8] * 6 + [-1] + [9] * 3 + [8] * 5 + [-1] * 5
    stitcher = ClipStitcher()
    stitcher.push([0, 1], _maps(old, old), final_before=1)
    out = stitcher.push([1, 2], _maps(new, new), final_before=3)
    assert _emitted(out) == [(1, old), (2, [1] * 6 + [-1] + [0] * 3 + [1] * 5 + [-1] * 5)]
    assert stitcher.num_tracks == 2


def test_min_iou_blocks_zero_iou_merge():
    old = [0, 0, -1, -1]
    new = [-1, -1, 4, 4]  # disjoint from track 0 on the shared frame: IoU 0
    official = ClipStitcher()
    official.push([0, 1], _maps(old, old), final_before=1)
    out = official.push([1, 2], _maps(new, new), final_before=3)
    assert _emitted(out) == [(1, old), (2, [-1, -1, 0, 0])]
    assert official.num_tracks == 1

    strict = ClipStitcher(min_iou=0.1)
    strict.push([0, 1], _maps(old, old), final_before=1)
    out = strict.push([1, 2], _maps(new, new), final_before=3)
    assert _emitted(out) == [(1, old), (2, [-1, -1, 1, 1])]
    assert strict.num_tracks == 2


def test_cluster_absent_from_shared_frames_is_never_merged():
    # Cluster 6 only appears in the clip's own frame: it starts a track even with min_iou = 0.
    stitcher = ClipStitcher()
    stitcher.push([0, 1], _maps([0, 0, 1, 1], [0, 0, 1, 1]), final_before=1)
    out = stitcher.push([1, 2], _maps([2, 2, -1, -1], [2, 2, 6, 6]), final_before=3)
    assert _emitted(out) == [(1, [0, 0, 1, 1]), (2, [0, 0, 2, 2])]


def test_emission_order_and_larger_last_overlap():
    # 7-frame video, clips of 4 with stride 2; the last clip starts at 3 (overlap 3).
    stitcher = ClipStitcher()
    out = stitcher.push([0, 1, 2, 3], _maps(*([[0, 1]] * 4)), final_before=2)
    assert [f for f, _ in out] == [0, 1]
    assert stitcher.held_frames == [2, 3]
    out = stitcher.push([2, 3, 4, 5], _maps(*([[5, 4]] * 4)), final_before=3)
    assert _emitted(out) == [(2, [0, 1])]
    assert stitcher.held_frames == [3, 4, 5]
    out = stitcher.push([3, 4, 5, 6], _maps(*([[1, 0]] * 4)), final_before=7)
    assert _emitted(out) == [(3, [0, 1]), (4, [0, 1]), (5, [0, 1]), (6, [0, 1])]
    assert stitcher.held_frames == []
    assert stitcher.num_tracks == 2


def test_zero_overlap_clips_start_new_tracks():
    stitcher = ClipStitcher()
    clip = _maps([0, -1], [0, -1])
    assert _emitted(stitcher.push([0, 1], clip, final_before=2)) == [(0, [0, -1]), (1, [0, -1])]
    assert stitcher.held_frames == []
    assert _emitted(stitcher.push([2, 3], clip, final_before=4)) == [(2, [1, -1]), (3, [1, -1])]
    assert stitcher.num_tracks == 2


def test_stitcher_errors():
    stitcher = ClipStitcher()
    clip = _maps([0, 1], [0, 1])
    stitcher.push([0, 1], clip, final_before=1)
    with pytest.raises(ValueError, match="already emitted"):
        stitcher.push([0, 1], clip, final_before=2)
    with pytest.raises(ValueError, match="sorted and unique"):
        stitcher.push([2, 1], clip, final_before=3)
    with pytest.raises(ValueError, match="sorted and unique"):
        stitcher.push([1, 1], clip, final_before=3)
    with pytest.raises(ValueError, match="frames but labels"):
        stitcher.push([1, 2, 3], clip, final_before=3)
    with pytest.raises(ValueError, match="spatial size"):
        stitcher.push([1, 2], torch.zeros(2, 2, 2, dtype=torch.int64), final_before=3)
    with pytest.raises(ValueError, match=">= 0 or -1"):
        stitcher.push([1, 2], _maps([0, -2], [0, 1]), final_before=3)
    with pytest.raises(ValueError, match="integer"):
        stitcher.push([1, 2], clip.float(), final_before=3)
    with pytest.raises(ValueError, match="min_iou"):
        ClipStitcher(min_iou=-0.1)
    # Failed pushes left the state untouched.
    assert stitcher.held_frames == [1]
    assert _emitted(stitcher.push([1, 2], clip, final_before=3)) == [(1, [0, 1]), (2, [0, 1])]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    emb, bw, seed, expected = _blobs()
    labels = cluster_pixels(emb.cuda(), bw.cuda(), seed.cuda(), distance="sqrt")
    assert labels.device.type == "cuda"
    assert torch.equal(labels.cpu(), expected)

    stitcher = ClipStitcher()
    stitcher.push([0, 1], _maps([0, 0, 1, 1], [0, 0, 1, 1]).cuda(), final_before=1)
    out = stitcher.push([1, 2], _maps([2, 2, 6, 6], [2, 2, 6, 6]).cuda(), final_before=3)
    assert all(m.device.type == "cuda" for _, m in out)
    assert _emitted([(f, m.cpu()) for f, m in out]) == [(1, [0, 0, 1, 1]), (2, [0, 0, 1, 1])]


def test_all_background_clip_keeps_tracks_and_emits_background():
    stitcher = ClipStitcher()
    stitcher.push([0, 1], _maps([0, -1], [0, -1]), final_before=1)
    out = stitcher.push([1, 2], _maps([-1, -1], [-1, -1]), final_before=3)
    assert _emitted(out) == [(1, [0, -1]), (2, [-1, -1])]
    out = ClipStitcher().push([0], _maps([-1, -1]), final_before=1)
    assert _emitted(out) == [(0, [-1, -1])]

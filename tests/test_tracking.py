"""Online tracking (SPEC-models.md §2.3): Eq. 3 by hand, and the tracker on hand-built embeddings."""

from __future__ import annotations

import math

import pytest
import torch

from ovisnet.structures.instances import Instances
from ovisnet.tracking import (
    MatchWeights,
    OnlineTracker,
    association_scores,
    oracle_detections,
)

# far-apart boxes (pairwise IoU 0)
A, B, C = [0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0], [100.0, 0.0, 110.0, 10.0]
PAPER = MatchWeights()


def frame(boxes, labels, scores=None) -> Instances:
    n = len(boxes)
    return Instances(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
        labels=torch.tensor(labels, dtype=torch.int64),
        track_ids=torch.full((n,), -1, dtype=torch.int64),
        scores=torch.tensor([0.9] * n if scores is None else scores, dtype=torch.float32),
    )


def embed(*axes: int, dim: int = 8, scale: float = 5.0) -> torch.Tensor:
    """One row per axis: ``scale`` times the one-hot vector of that axis (dot products 25 or 0)."""
    return scale * torch.eye(dim)[list(axes)]


def test_association_scores_hand_computed_paper_weights():
    # row softmax of [0, ln 2, 0] = [1/4, 1/2, 1/4]; s = 0.5; IoU (0.5, 0.25); labels (same, other)
    v = association_scores(
        torch.tensor([[0.0, math.log(2.0), 0.0]], dtype=torch.float64),
        torch.tensor([0.5], dtype=torch.float64),
        torch.tensor([[0.5, 0.25]], dtype=torch.float64),
        torch.tensor([[True, False]]),
        PAPER,
    )
    expected = [
        math.log(0.25) + math.log(0.5) + 0.0 + 10.0,  # new: IoU := 0, δ := 1
        math.log(0.5) + math.log(0.5) + 2.0 * 0.5 + 10.0,
        math.log(0.25) + math.log(0.5) + 2.0 * 0.25 + 0.0,
    ]
    torch.testing.assert_close(v, torch.tensor([expected], dtype=torch.float64))
    assert v.argmax().item() == 1


def test_association_scores_uses_the_given_weights():
    v = association_scores(
        torch.zeros(1, 2, dtype=torch.float64),
        torch.tensor([0.25], dtype=torch.float64),
        torch.tensor([[0.5]], dtype=torch.float64),
        torch.tensor([[False]]),
        MatchWeights(det_score=2.0, iou=3.0, label=5.0),
    )
    base = math.log(0.5) + 2.0 * math.log(0.25)
    torch.testing.assert_close(v, torch.tensor([[base + 5.0, base + 1.5]], dtype=torch.float64))


def test_association_scores_stable_for_large_logits_and_checks_shapes():
    v = association_scores(
        torch.tensor([[0.0, 1000.0, 1000.0]]),
        torch.ones(1),
        torch.zeros(1, 2),
        torch.ones(1, 2, dtype=torch.bool),
        PAPER,
    )
    torch.testing.assert_close(
        v,
        torch.tensor(
            [[-1000.0 - math.log(2.0) + 10.0, 10.0 - math.log(2.0), 10.0 - math.log(2.0)]]
        ),
    )
    with pytest.raises(ValueError, match="shapes disagree"):
        association_scores(
            torch.zeros(1, 2),
            torch.ones(1),
            torch.zeros(1, 2),
            torch.ones(1, 2, dtype=torch.bool),
            PAPER,
        )


def test_first_frame_starts_tracks_0_to_n_minus_1():
    tracker = OnlineTracker(PAPER)
    out = tracker.step(frame([A, B, C], [0, 1, 0]), embed(0, 1, 2))
    assert out.track_ids.tolist() == [0, 1, 2]
    assert torch.equal(out.boxes, torch.tensor([A, B, C]))
    assert tracker.memory.labels.tolist() == [0, 1, 0]
    assert torch.equal(tracker.memory.embeddings, embed(0, 1, 2))
    assert tracker.memory.last_seen.tolist() == [0, 0, 0]


def test_detections_take_the_id_of_the_track_their_embedding_matches():
    tracker = OnlineTracker(PAPER)
    tracker.step(frame([A, B], [0, 0]), embed(0, 1))
    moved_a, moved_b = [2.0, 0.0, 12.0, 10.0], [52.0, 50.0, 62.0, 60.0]
    # input order swapped; embeddings decide (same class, boxes moved)
    out = tracker.step(frame([moved_b, moved_a], [0, 0]), embed(1, 0))
    assert out.track_ids.tolist() == [1, 0]
    assert torch.equal(tracker.memory.boxes, torch.tensor([moved_a, moved_b]))  # overwritten
    assert tracker.memory.last_seen.tolist() == [1, 1]
    assert len(tracker.memory) == 2


def test_new_object_gets_the_next_id_in_input_order():
    tracker = OnlineTracker(PAPER)
    tracker.step(frame([A, B], [0, 0]), embed(0, 1))
    # rows 0 and 2 dislike both tracks (negative dot products): new; row 1 is track 0
    unlike = torch.tensor([[-3.0, -3.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    unlike2 = torch.tensor([[-3.0, -3.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0]])
    out = tracker.step(frame([C, A, B], [0, 0, 0]), torch.cat([unlike, embed(0), unlike2]))
    assert out.track_ids.tolist() == [2, 0, 3]
    assert len(tracker.memory) == 4
    assert torch.equal(tracker.memory.embeddings[2:], torch.cat([unlike, unlike2]))


def test_conflict_the_highest_v_wins_and_the_loser_is_dropped():
    # both claim track 0 with the same embedding; v differs by log s and 2·IoU
    near, far = [1.0, 0.0, 11.0, 10.0], [5.0, 0.0, 15.0, 10.0]
    for order in ((0, 1), (1, 0)):
        t = OnlineTracker(PAPER)
        t.step(frame([A], [0]), embed(0))
        boxes, scores = [near, far], [0.9, 0.5]
        out = t.step(
            frame([boxes[k] for k in order], [0, 0], [scores[k] for k in order]),
            torch.cat([embed(0, scale=5.0), embed(0, scale=5.1)])[list(order)],
        )
        assert out.track_ids.tolist() == [0]
        assert torch.equal(out.boxes, torch.tensor([near]))  # the better claimant, either order
        assert len(t.memory) == 1  # the loser does not become a new track
        assert torch.equal(t.memory.boxes, torch.tensor([near]))
        assert torch.equal(t.memory.embeddings, embed(0, scale=5.0))
    # the next new object still gets id 1
    out = t.step(frame([B], [1]), embed(1))
    assert out.track_ids.tolist() == [1]


def test_conflict_tie_goes_to_the_earlier_detection():
    tracker = OnlineTracker(PAPER)
    tracker.step(frame([A], [0]), embed(0))
    out = tracker.step(frame([B, C], [0, 0]), torch.cat([embed(0), embed(0)]))
    assert out.track_ids.tolist() == [0] and torch.equal(out.boxes, torch.tensor([B]))


def test_tracks_created_in_a_frame_are_not_claimable_in_that_frame():
    tracker = OnlineTracker(PAPER)
    tracker.step(frame([A], [0]), embed(0))
    out = tracker.step(frame([B, C], [1, 1]), embed(1, 1))  # two look-alikes, both new
    assert out.track_ids.tolist() == [1, 2]


def test_reappearance_after_full_occlusion_keeps_the_id():
    tracker = OnlineTracker(PAPER)
    tracker.step(frame([A, B], [0, 1]), embed(0, 1))
    for _ in range(4):  # A fully occluded: no detection of it, B keeps moving
        out = tracker.step(frame([B], [1]), embed(1))
        assert out.track_ids.tolist() == [1]
    empty = tracker.step(frame([], []), torch.zeros(0, 8))  # a frame with nothing at all
    assert len(empty) == 0
    similar = embed(0) + 0.3 * embed(3)
    out = tracker.step(frame([C, B], [0, 1]), torch.cat([similar, embed(1)]))  # A back, elsewhere
    assert out.track_ids.tolist() == [0, 1]
    assert len(tracker.memory) == 2
    assert tracker.memory.last_seen.tolist() == [6, 6]


def test_max_age_stops_matching_old_tracks_without_reusing_ids():
    for max_age, expected in ((None, [0]), (3, [0]), (2, [2])):
        tracker = OnlineTracker(PAPER, max_age=max_age)
        tracker.step(frame([A, B], [0, 1]), embed(0, 1))
        for _ in range(2):
            tracker.step(frame([B], [1]), embed(1))
        out = tracker.step(frame([A], [0]), embed(0))  # frame 3: A last seen 3 frames ago
        assert out.track_ids.tolist() == expected
    with pytest.raises(ValueError, match="max_age"):
        OnlineTracker(PAPER, max_age=0)


def test_label_bonus_makes_a_similar_other_class_detection_a_new_track():
    # dot product 5: log p(track) = -log(1 + e^-5), log p(new) = -5 - log(1 + e^-5)
    similar = embed(0, scale=math.sqrt(5.0))
    for weights, expected in ((PAPER, [1]), (MatchWeights(label=0.0), [0])):
        tracker = OnlineTracker(weights)
        tracker.step(frame([A], [0]), similar)
        out = tracker.step(frame([A], [1]), similar)  # same place and look, other class
        assert out.track_ids.tolist() == expected


@pytest.mark.parametrize(("update_labels", "memory_label"), [(False, 0), (True, 1)])
def test_memory_label_kept_from_the_first_detection_by_default(update_labels, memory_label):
    tracker = OnlineTracker(MatchWeights(label=0.0), update_labels=update_labels)
    tracker.step(frame([A], [0]), embed(0))
    out = tracker.step(frame([A], [1]), embed(0))
    assert out.track_ids.tolist() == [0] and out.labels.tolist() == [1]  # output: detection's
    assert tracker.memory.labels.tolist() == [memory_label]


def test_empty_frames_output_nothing_and_leave_memory_unchanged():
    tracker = OnlineTracker(PAPER)
    out = tracker.step(frame([], []), torch.zeros(0, 8))
    assert len(out) == 0 and out.track_ids.dtype == torch.int64 and len(tracker.memory) == 0
    tracker.step(frame([A], [0]), embed(0))
    before = (tracker.memory.embeddings.clone(), tracker.memory.boxes.clone())
    assert len(tracker.step(frame([], []), torch.zeros(0, 8))) == 0
    assert torch.equal(tracker.memory.embeddings, before[0])
    assert torch.equal(tracker.memory.boxes, before[1])
    assert tracker.frame == 3


def test_sole_claimant_below_the_official_minus_100_floor_is_dropped():
    # α log s = 100·log 0.1 ≈ -230 pushes every v below -100: the official code drops it
    tracker = OnlineTracker(MatchWeights(det_score=100.0))
    tracker.step(frame([A], [0], [0.1]), embed(0))
    out = tracker.step(frame([A], [0], [0.1]), embed(0))
    assert len(out) == 0 and len(tracker.memory) == 1


@pytest.mark.parametrize("dim", [1024, 512, 3])
def test_any_embedding_dim_and_memory_grows_only_with_new_tracks(dim):
    tracker = OnlineTracker(PAPER)
    for t in range(10):
        order = [0, 1] if t % 2 == 0 else [1, 0]
        out = tracker.step(frame([[A, B][k] for k in order], [0, 1]), embed(*order, dim=dim))
        assert out.track_ids.tolist() == order
    assert tracker.memory.embeddings.shape == (2, dim)
    with pytest.raises(ValueError, match="embedding dim"):
        tracker.step(frame([A], [0]), torch.ones(1, dim + 1))


def test_class_agnostic_nms_is_optional_and_keeps_input_order():
    dets = frame([A, [0.0, 0.0, 10.0, 9.0], B], [0, 1, 0], [0.6, 0.7, 0.9])
    assert OnlineTracker(PAPER).step(dets, embed(0, 1, 2)).track_ids.tolist() == [0, 1, 2]
    tracker = OnlineTracker(PAPER, nms_iou=0.5)
    out = tracker.step(dets, embed(0, 1, 2))
    assert out.labels.tolist() == [1, 0] and out.track_ids.tolist() == [0, 1]
    assert torch.equal(tracker.memory.embeddings, embed(1, 2))


def test_missing_scores_or_mismatched_embeddings_are_rejected():
    tracker = OnlineTracker(PAPER)
    dets = frame([A], [0])
    with pytest.raises(ValueError, match="scores"):
        tracker.step(Instances(dets.boxes, dets.labels, dets.track_ids), embed(0))
    with pytest.raises(ValueError, match="embeddings"):
        tracker.step(dets, embed(0, 1))


def test_oracle_feeds_ground_truth_with_score_1_and_hidden_ids():
    masks = torch.zeros(3, 4, 6, dtype=torch.bool)
    masks[0, :2, :2] = masks[2, 2:, 3:] = True
    gt = Instances(
        boxes=torch.tensor([A, B, C]),
        labels=torch.tensor([3, 4, 5]),
        track_ids=torch.tensor([7, 9, 11]),
        masks=masks,
        iscrowd=torch.tensor([False, True, False]),
    )
    dets = oracle_detections(gt)
    assert dets.scores.tolist() == [1.0, 1.0] and dets.track_ids.tolist() == [-1, -1]
    assert dets.labels.tolist() == [3, 5] and dets.iscrowd is None
    assert torch.equal(dets.boxes, torch.tensor([A, C])) and torch.equal(dets.masks, masks[[0, 2]])
    # identities then come from the tracker: ids 0, 1 in frame order, re-found by embedding
    tracker = OnlineTracker(PAPER)
    assert tracker.step(dets, embed(0, 1)).track_ids.tolist() == [0, 1]
    swapped = oracle_detections(
        Instances(gt.boxes[[2, 0]], gt.labels[[2, 0]], gt.track_ids[[2, 0]])
    )
    out = tracker.step(swapped, embed(1, 0))
    assert out.track_ids.tolist() == [1, 0] and out.masks is None

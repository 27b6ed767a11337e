"""Track embedding head, match logits, matching targets and the tracking loss (SPEC §2.1, §2.2)."""

from __future__ import annotations

import math

import pytest
import torch

from ovisnet.models.track_head import TrackEmbedHead, match_logits, match_targets, track_loss


def test_embed_head_shape_and_init():
    torch.manual_seed(0)
    head = TrackEmbedHead(in_channels=8, roi_size=7, hidden=256, embed_dim=32)
    assert head(torch.randn(5, 8, 7, 7)).shape == (5, 32)
    assert head(torch.zeros(0, 8, 7, 7)).shape == (0, 32)
    for fc in (head.fc1, head.fc2):
        assert torch.all(fc.bias == 0)
        assert fc.weight.std().item() == pytest.approx(0.01, rel=0.1)


def test_embed_head_is_flatten_fc_relu_fc():
    head = TrackEmbedHead(in_channels=1, roi_size=1, hidden=2, embed_dim=1)
    with torch.no_grad():
        head.fc1.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        head.fc1.bias.zero_()
        head.fc2.weight.copy_(torch.tensor([[2.0, 3.0]]))
        head.fc2.bias.fill_(-1.0)
    x = torch.tensor([4.0, -5.0]).view(2, 1, 1, 1)
    # x=4: relu([4, -4]) = [4, 0] → 8 - 1; x=-5: relu([-5, 5]) = [0, 5] → 15 - 1
    torch.testing.assert_close(head(x), torch.tensor([[7.0], [14.0]]))


def test_match_logits_has_leading_zero_column():
    query = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    ref = torch.tensor([[3.0, 0.0], [1.0, 1.0], [0.5, 2.0]])
    expected = torch.tensor([[0.0, 3.0, 3.0, 4.5], [0.0, 0.0, -1.0, -2.0]])
    torch.testing.assert_close(match_logits(query, ref), expected)
    assert match_logits(query, torch.zeros(0, 2)).tolist() == [[0.0], [0.0]]
    assert match_logits(torch.zeros(0, 2), ref).shape == (0, 4)


def test_match_targets_is_one_plus_reference_index_or_zero():
    query = torch.tensor([7, 3, 9, -1, 3])
    ref = torch.tensor([3, 5, 7, -1])
    assert match_targets(query, ref).tolist() == [3, 1, 0, 0, 1]
    assert match_targets(query, torch.zeros(0, dtype=torch.int64)).tolist() == [0] * 5
    assert match_targets(torch.zeros(0, dtype=torch.int64), ref).shape == (0,)


def test_track_loss_hand_computed():
    # Image 1: two positive rows. Row [0, 0] target 1 → -log(1/2); row [0, ln 3] target 1 →
    # -log(3/4). Image 2: no positives (adds 0 but counts in the denominator).
    logits = [torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]]), torch.zeros(0, 3)]
    targets = [torch.tensor([1, 1]), torch.zeros(0, dtype=torch.int64)]
    expected = (math.log(2.0) - math.log(0.75)) / 2 / 2
    assert track_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_track_loss_targets_new_column_and_gradient():
    query = torch.tensor([[1.0, 0.0]], requires_grad=True)
    ref = torch.tensor([[2.0, 0.0]], requires_grad=True)
    loss = track_loss([match_logits(query, ref)], [torch.tensor([0])])
    # softmax over [0, 2], target column 0 → log(1 + e^2)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(2.0)), rel=1e-6)
    loss.backward()
    assert query.grad is not None and query.grad.abs().sum() > 0


def test_track_loss_without_positives_is_zero_with_graph():
    query = torch.zeros(0, 4, requires_grad=True)
    ref = torch.randn(2, 4, requires_grad=True)
    loss = track_loss([match_logits(query, ref)], [torch.zeros(0, dtype=torch.int64)])
    assert loss.item() == 0.0
    loss.backward()
    assert ref.grad is not None


def test_track_loss_needs_an_image():
    with pytest.raises(ValueError):
        track_loss([], [])

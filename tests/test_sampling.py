"""Frame sampling rules: hand-computed cases and properties over many draws."""

from __future__ import annotations

import numpy as np
import pytest

from ovisnet.data.sampling import (
    inference_clips,
    reference_frames,
    sample_clip,
    sample_reference_frame,
)


@pytest.mark.parametrize("num_frames", [2, 3, 7, 30])
@pytest.mark.parametrize("eps", [1, 5])
def test_reference_is_another_frame_within_eps(num_frames, eps):
    rng = np.random.default_rng(0)
    for query in range(num_frames):
        seen = set()
        for _ in range(60):
            ref = sample_reference_frame(query, num_frames, eps, rng)
            assert ref != query and abs(ref - query) <= eps and 0 <= ref < num_frames
            seen.add(ref)
        lo, hi = max(0, query - eps), min(num_frames - 1, query + eps)
        assert seen == set(range(lo, hi + 1)) - {query}  # uniform over all candidates


def test_reference_rules_for_edge_cases():
    rng = np.random.default_rng(1)
    assert sample_reference_frame(0, 1, 5, rng) == 0  # one-frame video: itself
    # valid frames near the query are preferred; none near → any other valid frame
    assert sample_reference_frame(0, 20, 5, rng, valid=[0, 12]) == 12
    assert {sample_reference_frame(10, 20, 5, rng, valid=[2, 10, 13]) for _ in range(30)} == {13}
    assert {sample_reference_frame(0, 20, None, rng, valid=[0, 19]) for _ in range(5)} == {19}
    with pytest.raises(ValueError, match="outside"):
        sample_reference_frame(5, 5, 3, rng)


def test_reference_frames_at_test_time():
    assert reference_frames(0, 10, 3) == [1, 2, 3]
    assert reference_frames(5, 10, 3) == [2, 3, 4, 6, 7, 8]
    assert reference_frames(9, 10, 3) == [6, 7, 8]
    assert reference_frames(1, 3, 5) == [0, 2]
    assert reference_frames(0, 1, 3) == []


@pytest.mark.parametrize("num_frames", [1, 3, 8, 9, 50])
def test_training_clips_stay_inside_the_video(num_frames):
    rng = np.random.default_rng(2)
    for _ in range(50):
        clip = sample_clip(num_frames, 8, rng)
        assert len(clip) == 8 and clip == sorted(clip)
        assert clip[0] >= 0 and clip[-1] < num_frames
        if num_frames >= 9:
            assert clip[-1] - clip[0] == 8 and len(set(clip)) == 8  # 8 of 9 consecutive


def test_training_clip_hand_computed():
    class Fixed:
        def integers(self, n):
            return 3

    assert sample_clip(20, 8, Fixed()) == [3, 4, 5, 6, 8, 9, 10, 11]  # rint(3 + 8k/7)
    assert sample_clip(20, 4, Fixed(), frame_gap=6) == [3, 5, 7, 9]


def test_inference_clips():
    assert inference_clips(16, 8, 4) == [list(range(0, 8)), list(range(4, 12)), list(range(8, 16))]
    clips = inference_clips(18, 8, 4)
    assert clips[-1] == list(range(10, 18)) and len(clips) == 4
    assert inference_clips(5, 8, 4) == [[0, 0, 0, 0, 1, 2, 3, 4]]
    assert inference_clips(8, 8, 4) == [list(range(8))]
    for n in range(1, 40):
        covered = {t for c in inference_clips(n, 8, 4) for t in c}
        assert covered == set(range(n))


# -- streamed evaluation under DDP: whole videos per rank ----------------------------------------


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_eval_loader_of_a_rank_without_videos_is_one_skipped_batch(
    tiny_ovis, monkeypatch, world_size
):
    from types import SimpleNamespace

    import torch.distributed as dist

    from ovisnet.data.datamodule import VISDataModule
    from ovisnet.lit.system import VISSystem

    root, _ = tiny_ovis  # 2 videos (5 frames and 1 frame)
    dm = VISDataModule(
        str(root),
        train_ann="annotations/train.json",
        val_ann="annotations/train.json",
        num_classes=2,
        max_size=(96, 64),
        num_workers=0,
    )
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: world_size)
    frames, empty = [], 0
    for rank in range(world_size):
        monkeypatch.setattr(dist, "get_rank", lambda group=None, rank=rank: rank)
        batches = list(dm.val_dataloader())
        if batches == [None]:
            empty += 1
        else:
            assert None not in batches
            frames += [(b.video_ids[0], b.frame_indices[0][0]) for b in batches]
    assert empty == max(0, world_size - 2)
    assert sorted(frames) == [(1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (2, 0)]  # each frame once
    # the system skips the empty rank's batch (it only joins the epoch-end gathering)
    state = SimpleNamespace(_predictors={}, _results=[])  # no trainer, no model: never used
    VISSystem._eval_step(state, None, "val")
    assert state._results == [] and state._predictors == {}

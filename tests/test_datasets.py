"""Datasets, clip-consistent transforms, samplers, collation and the DataModule."""

from __future__ import annotations

import contextlib
from functools import partial

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from ovisnet.data.annotations import load_annotations
from ovisnet.data.datamodule import VISDataModule
from ovisnet.data.datasets import (
    BadFrameError,
    ResumableLoader,
    SeededSampler,
    VideoSequentialSampler,
    VISFrameDataset,
    VISTrainDataset,
    valid_frames,
)
from ovisnet.data.transforms import fit_scale, resized_hw
from ovisnet.structures import collate_clips


@pytest.fixture
def ann(tiny_ovis):
    root, _ = tiny_ovis
    return load_annotations(root / "annotations" / "train.json")


def test_fit_scale_keeps_aspect():
    assert fit_scale(1080, 1920, (640, 360)) == pytest.approx(1 / 3)
    assert resized_hw(1080, 1920, 1 / 3) == (360, 640)
    assert fit_scale(1920, 1080, (640, 360)) == pytest.approx(1 / 3)  # portrait → 360 wide
    assert resized_hw(720, 1280, fit_scale(720, 1280, (640, 360))) == (360, 640)
    assert resized_hw(480, 640, fit_scale(480, 640, (640, 360))) == (360, 480)


def _mask_box(mask: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


@pytest.mark.parametrize("flip_prob", [0.0, 1.0])
def test_pair_sample_boxes_and_masks_agree(ann, flip_prob):
    ds = VISTrainDataset(ann, mode="pair", max_size=(96, 64), eps_train=5, flip_prob=flip_prob)
    assert len(ds) == 6  # 5 + 1 valid frames
    s = ds[(2, 123)]
    assert s.images.shape == (2, 3, 64, 96) and s.images.dtype == torch.uint8
    assert s.scale == 2.0 and s.image_size == (64, 96) and s.original_size == (32, 48)
    query, ref = s.frame_indices
    assert query == 2 and ref != query and abs(ref - query) <= 5
    assert s.flipped is (flip_prob == 1.0)
    for t, target in zip(s.frame_indices, s.targets):
        assert target.track_ids.tolist() == ([10] if t == 2 else [10, 11])
        x0 = 2 * (2 + 2 * t)
        expected = [x0, 8, x0 + 16, 20]
        if s.flipped:
            expected = [96 - expected[2], 8, 96 - expected[0], 20]
        assert target.boxes[0].tolist() == expected
        for box, mask in zip(target.boxes, target.masks):
            assert _mask_box(mask) == box.tolist()  # masks and boxes moved together
    # same key → same sample; different seeds → the reference varies
    again = ds[(2, 123)]
    assert torch.equal(again.images, s.images) and again.frame_indices == s.frame_indices
    refs = {ds[(2, seed)].frame_indices[1] for seed in range(40)}
    assert refs == {0, 1, 3, 4}


def test_flip_is_consistent_across_the_clip(ann):
    ds = VISTrainDataset(ann, mode="clip", max_size=(48, 32), clip_length=4, flip_prob=0.5)
    plain = VISTrainDataset(ann, mode="clip", max_size=(48, 32), clip_length=4, flip_prob=0.0)
    flipped = [ds[(0, seed)] for seed in range(20)]
    assert {s.flipped for s in flipped} == {True, False}
    for s in flipped:
        assert len(s.frame_indices) == 4 and s.frame_indices == sorted(s.frame_indices)
        for img, t in zip(s.images, s.frame_indices):
            base = plain.frames.make_sample(ann.videos[0], [t], False).images[0]
            assert torch.equal(img, base.flip(-1) if s.flipped else base)


def test_one_frame_video_pairs_with_itself(ann):
    ds = VISTrainDataset(ann, mode="pair", max_size=(48, 32))
    s = ds[(5, 7)]
    assert s.video_id == 2 and s.frame_indices == [0, 0]


def test_valid_frames_skip_absent_and_crowd(ann):
    video = ann.video(1)
    assert valid_frames(video) == [0, 1, 2, 3, 4]
    for tr in video.tracks:
        tr.iscrowd = True
    assert valid_frames(video) == []


def test_frame_dataset_and_sequential_sampler(ann):
    ds = VISFrameDataset(ann, max_size=(48, 32))
    assert len(ds) == 6 and ds.locate(4) == (0, 4) and ds.locate(5) == (1, 0)
    s = ds[5]
    assert s.video_id == 2 and s.frame_indices == [0] and s.video_length == 1
    assert list(VideoSequentialSampler(ds, rank=0, world_size=1)) == list(range(6))
    r0 = list(VideoSequentialSampler(ds, rank=0, world_size=2))
    r1 = list(VideoSequentialSampler(ds, rank=1, world_size=2))
    assert r0 == [0, 1, 2, 3, 4] and r1 == [5]  # whole videos, each evaluated once


def test_seeded_sampler_is_reproducible_and_sharded():
    a = SeededSampler(10, seed=3, rank=0, world_size=1)
    assert list(a) == list(SeededSampler(10, seed=3, rank=0, world_size=1))
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert sorted(i for i, _ in first) == list(range(10))
    shards = [list(SeededSampler(10, seed=3, rank=r, world_size=3)) for r in range(3)]
    assert all(len(s) == 4 for s in shards)
    assert {i for s in shards for i, _ in s} == set(range(10))


def test_collate_pads_to_a_multiple_of_32(ann):
    ds = VISTrainDataset(ann, mode="pair", max_size=(96, 64))
    batch = collate_clips([ds[(0, 1)], ds[(3, 2)]])
    assert batch.images.shape == (2, 2, 3, 64, 96)
    batch = collate_clips([ds[(0, 1)]], size_divisor=40)
    assert batch.images.shape == (1, 2, 3, 80, 120)
    assert batch.images[0, :, :, 64:].sum() == 0 and batch.image_sizes == [(64, 96)]


def test_wrong_frame_size_is_reported(tiny_ovis, ann):
    root, _ = tiny_ovis
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(root / "JPEGImages/v1/00001.jpg")
    ds = VISFrameDataset(ann, max_size=(48, 32))
    with pytest.raises(
        BadFrameError, match=r"video 1 \(v1\): frame 1: .* is 10x10, the annotation says 48x32"
    ):
        ds[1]


def test_datamodule_serves_train_and_streamed_eval(tiny_ovis):
    root, _ = tiny_ovis
    dm = VISDataModule(
        str(root),
        train_ann="annotations/train.json",
        val_ann="annotations/train.json",
        num_classes=2,
        max_size=(96, 64),
        batch_size=2,
        num_workers=0,
        seed=1,
    )
    dm.prepare_data()
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 3 and batches[0].images.shape == (2, 2, 3, 64, 96)
    again = list(dm.train_dataloader())
    assert [b.frame_indices for b in again] == [b.frame_indices for b in batches]
    frames = [(b.video_ids[0], b.frame_indices[0][0]) for b in dm.val_dataloader()]
    assert frames == [(1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (2, 0)]
    bad = VISDataModule(str(root), val_ann=None, num_classes=3)
    with pytest.raises(ValueError, match="has 2 categories, the config says num_classes=3"):
        bad.setup("fit")


def test_seeded_sampler_resumes_part_way_once_and_only_in_its_epoch():
    sampler = SeededSampler(10, seed=3, rank=0, world_size=1)
    sampler.set_epoch(1)
    full = list(sampler)
    sampler.resume(1, 4)
    assert sampler.epoch == 1 and len(sampler) == 10  # Lightning counts the whole epoch
    assert list(sampler) == full[4:]  # the same samples with the same seeds
    assert list(sampler) == full  # once
    sampler.resume(1, 10)  # saved at the end of epoch 1: the run goes on with epoch 2
    sampler.set_epoch(2)
    assert len(list(sampler)) == 10 and list(sampler) != full


class _Keys(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        return torch.tensor(key)


def _loader(num_workers: int) -> ResumableLoader:
    return ResumableLoader(
        _Keys(),
        batch_size=2,
        sampler=SeededSampler(10, seed=5, rank=0, world_size=1),
        num_workers=num_workers,
        drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )


@pytest.mark.parametrize("num_workers", [0, 1])
def test_resumable_loader_continues_the_epoch_from_its_state(num_workers):
    straight = _loader(num_workers)
    it = iter(straight)  # Lightning: iter() first, set_epoch() after; the order is epoch 1's
    straight.sampler.set_epoch(1)
    batches = [next(it) for _ in range(2)]
    state = straight.state_dict()
    assert state == {"epoch": 1, "samples": 4}
    rest = list(it)
    assert len(rest) == 3 and straight.state_dict() == {"epoch": 1, "samples": 10}
    order = SeededSampler(10, seed=5, rank=0, world_size=1)
    order.set_epoch(1)
    expected = list(order)
    assert [tuple(k.tolist()) for b in [*batches, *rest] for k in b] == expected

    resumed = _loader(num_workers)
    resumed.load_state_dict(state)  # a fresh process, then Lightning's iter() and set_epoch()
    it = iter(resumed)
    resumed.sampler.set_epoch(1)
    assert [b.tolist() for b in it] == [b.tolist() for b in rest]
    assert resumed.state_dict() == {"epoch": 1, "samples": 10}


class _StandIn(torch.nn.Module):
    """A one-parameter model whose loss draws from torch's global random state, like RPN
    sampling does: a resumed run matches only if that state is restored too."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def loss(self, batch) -> dict[str, torch.Tensor]:
        target = batch.images.float().mean() / 255 + torch.rand(())
        return {"loss_fit": (self.w - target) ** 2}


class _Killed(RuntimeError):
    pass


class _Record(L.Callback):
    def __init__(self, crash_at: int | None) -> None:
        self.seen: list = []
        self.crash_at = crash_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.crash_at:
            raise _Killed
        self.seen.append((trainer.current_epoch, batch.video_ids, batch.frame_indices))


@pytest.mark.parametrize(("num_workers", "crash_at"), [(0, 4), (1, 4), (1, 3)])
def test_training_resumed_from_last_ckpt_matches_an_uninterrupted_run(
    tiny_ovis, tmp_path, num_workers, crash_at
):
    """3 steps per epoch, 2 epochs, last.ckpt every 2 steps and at epoch ends (the recipe's
    two callbacks). Killed before step 5: resumed from step 4, in the middle of epoch 1. Killed
    before step 4: resumed from the end of epoch 0, where a loader worker used to draw epoch 0's
    order again. Either way the batches and the final weight are the uninterrupted run's."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from ovisnet.lit.system import VISSystem

    root, _ = tiny_ovis

    def run(out, crash_at=None, ckpt=None):
        L.seed_everything(0)
        dm = VISDataModule(
            str(root),
            val_ann=None,
            max_size=(48, 32),
            batch_size=2,
            num_workers=num_workers,
            seed=1,
        )
        model = _StandIn()
        system = VISSystem(model, partial(torch.optim.SGD, lr=0.1), tracker=lambda: None)
        last = {
            "dirpath": out,
            "filename": "last",
            "monitor": None,
            "enable_version_counter": False,
        }
        record = _Record(crash_at)
        trainer = L.Trainer(
            accelerator="cpu",
            max_epochs=2,
            limit_val_batches=0,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[
                record,
                ModelCheckpoint(**last, save_on_train_epoch_end=True),
                ModelCheckpoint(**last, every_n_train_steps=2),
            ],
        )
        with contextlib.suppress(_Killed):
            trainer.fit(system, datamodule=dm, ckpt_path=ckpt)
        return record.seen, float(model.w)

    straight, w = run(tmp_path / "a")
    assert len(straight) == 6 and straight[3][1:] != straight[0][1:]
    first, _ = run(tmp_path / "b", crash_at=crash_at)
    assert first == straight[:crash_at]
    resumed, w_resumed = run(tmp_path / "c", ckpt=tmp_path / "b" / "last.ckpt")
    done = 4 if crash_at == 4 else 3  # the last checkpoint before the crash
    assert resumed == straight[done:]
    assert w_resumed == w

"""Broken and missing frames: one error naming the video and the file, the pre-flight check
(data.check_files), skipping bad training samples (data.bad_frames=skip), evaluation stopping."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ovisnet.data.annotations import load_annotations
from ovisnet.data.datamodule import VISDataModule
from ovisnet.data.datasets import (
    BadFrameError,
    SkippingBatch,
    VISFrameDataset,
    VISTrainDataset,
    bad_frames_report,
    find_bad_frames,
)
from ovisnet.lit.system import VISSystem


def truncate(path: Path) -> None:
    """Keep the first half of a valid JPEG (PIL: "Truncated File Read" when decoding it)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def broken(tiny_ovis) -> Path:
    """The tiny set with frame 2 of video 1 truncated and frame 4 of video 1 deleted."""
    root, _ = tiny_ovis
    truncate(root / "JPEGImages/v1/00002.jpg")
    (root / "JPEGImages/v1/00004.jpg").unlink()
    return root


def _datamodule(root: Path, **kwargs) -> VISDataModule:
    defaults = {
        "train_ann": "annotations/train.json",
        "val_ann": None,
        "num_classes": 2,
        "max_size": (48, 32),
        "batch_size": 2,
        "num_workers": 0,
        "seed": 0,
    }
    return VISDataModule(str(root), **{**defaults, **kwargs})


def test_a_truncated_or_missing_frame_raises_one_error_naming_video_and_file(broken):
    ann = load_annotations(broken / "annotations" / "train.json")
    frames = VISFrameDataset(ann, max_size=(48, 32))
    assert frames[1].images.shape == (1, 3, 32, 48)  # the good frames still read
    with pytest.raises(BadFrameError) as info:
        frames[2]
    path = broken / "JPEGImages/v1/00002.jpg"
    assert str(info.value) == (
        f"video 1 (v1): frame 2: cannot read {path}: Truncated File Read (OSError)"
    )
    assert info.value.path == str(path) and isinstance(info.value, OSError)
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no PIL traceback
    with pytest.raises(BadFrameError) as info:
        frames[4]
    missing = broken / "JPEGImages/v1/00004.jpg"
    assert str(info.value) == f"video 1 (v1): frame 4: cannot read {missing}: file missing"
    # a training sample whose query is the truncated frame
    train = VISTrainDataset(ann, mode="pair", max_size=(48, 32))
    with pytest.raises(BadFrameError, match=r"^video 1 \(v1\): frame 2: cannot read .*00002\.jpg"):
        train[(2, 0)]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_training_stops_at_a_bad_frame_by_default_naming_it(broken, num_workers):
    dm = _datamodule(broken, check_files=False, num_workers=num_workers)
    dm.setup("fit")
    with pytest.raises(
        BadFrameError, match=r"video 1 \(v1\): frame [24]: cannot read .*v1/0000[24]"
    ):
        list(dm.train_dataloader())  # through a worker process too: the same type and message


def test_decode_check_finds_exactly_the_bad_frames(broken):
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(broken / "JPEGImages/v2/00000.jpg")
    ann = load_annotations(broken / "annotations" / "train.json")
    bad = find_bad_frames(ann, decode=True, workers=2, progress=False)
    assert [(b.video_id, b.frame) for b in bad] == [(1, 2), (1, 4), (2, 0)]
    assert bad[0].path == broken / "JPEGImages/v1/00002.jpg"
    assert bad[0].message.endswith("Truncated File Read (OSError)")
    assert bad[1].message.endswith("00004.jpg: file missing")
    assert bad[2].message.startswith("video 2 (v2): frame 0: ")
    assert bad[2].message.endswith("00000.jpg is 10x10, the annotation says 48x32")
    # the check's message is what training or evaluation would raise for that frame
    frames = VISFrameDataset(ann, max_size=(48, 32))
    for b, index in zip(bad, (2, 4, 5)):
        with pytest.raises(BadFrameError) as info:
            frames[index]
        assert str(info.value) == b.message
    exists = find_bad_frames(ann, decode=False, progress=False)
    assert [(b.video_id, b.frame) for b in exists] == [(1, 4)]

    report = bad_frames_report(bad, "train.json", limit=2)
    assert report.splitlines() == [
        "3 bad frame(s) in train.json:",
        f"  {bad[0].message}",
        f"  {bad[1].message}",
        "  ... and 1 more",
    ]


@pytest.mark.parametrize(
    ("check_files", "expected"),
    [("decode", ["frame 2:", "frame 4:"]), (True, ["frame 4:"]), ("exists", ["frame 4:"])],
)
def test_check_files_reports_all_bad_frames_before_training(broken, check_files, expected):
    dm = _datamodule(broken, check_files=check_files)
    with pytest.raises(BadFrameError) as info:
        dm.setup("fit")
    lines = str(info.value).splitlines()
    assert lines[0].startswith(f"{len(expected)} bad frame(s) in ")
    assert [line.split(" cannot read")[0] for line in lines[1:]] == [
        f"  video 1 (v1): {frame}" for frame in expected
    ]


@pytest.mark.parametrize("check_files", [False, "none", "false", None])
def test_check_files_off_checks_nothing(broken, check_files):
    dm = _datamodule(broken, check_files=check_files)
    dm.setup("fit")
    assert dm.check_mode == "none" and "train" in dm.splits


def test_check_files_and_bad_frames_values_are_validated(tiny_ovis):
    root, _ = tiny_ovis
    with pytest.raises(ValueError, match="check_files must be true / exists, false / none or de"):
        _datamodule(root, check_files="full")
    with pytest.raises(ValueError, match="bad_frames must be 'error' or 'skip', got 'ignore'"):
        _datamodule(root, bad_frames="ignore")


def _all_of_video_1_broken(root: Path) -> None:
    for t in range(5):
        path = root / f"JPEGImages/v1/{t:05d}.jpg"
        if t % 2:
            path.unlink()
        else:
            truncate(path)


@pytest.mark.parametrize(("mode", "num_workers"), [("pair", 0), ("pair", 1), ("clip", 0)])
def test_skip_replaces_bad_training_samples_and_counts_them(tiny_ovis, mode, num_workers):
    """Every frame of video 1 is bad, so its 5 training samples (of 6) are each replaced by the
    next readable one, video 2's only sample; the batches say which, also from a worker."""
    root, _ = tiny_ovis
    _all_of_video_1_broken(root)
    dm = _datamodule(
        root,
        check_files="decode",
        bad_frames="skip",
        num_workers=num_workers,
        mode=mode,
        clip_length=3,
    )
    with pytest.warns(UserWarning, match=r"(?s)^5 bad frame\(s\) in .*bad_frames=skip"):
        dm.setup("fit")  # the check warns for training frames instead of stopping
    batches = list(dm.train_dataloader())
    assert len(batches) == 3 and all(isinstance(b, SkippingBatch) for b in batches)
    assert [v for b in batches for v in b.video_ids] == [2] * 6
    assert all(
        f == ([0, 0] if mode == "pair" else [0] * 3) for b in batches for f in b.frame_indices
    )
    skipped = [m for b in batches for m in b.skipped]
    assert len(skipped) == 5
    named = {m.split(": cannot read")[0] for m in skipped}
    assert named <= {f"video 1 (v1): frame {t}" for t in range(5)}
    if mode == "pair":  # the message is the query's: each of the 5 frames once
        assert len(named) == 5
    again = list(dm.train_dataloader())  # deterministic: the same replacements
    assert [b.skipped for b in again] == [b.skipped for b in batches]


def test_skip_serves_good_samples_unchanged_and_replaces_by_the_next_readable(broken):
    dm = _datamodule(broken, check_files=False, bad_frames="skip", batch_size=1)
    dm.setup("fit")
    dataset = dm.train_dataloader().dataset
    plain, n, replaced = dataset.dataset, len(dataset), 0

    def readable(i: int):
        try:
            return plain[(i % n, 7)]
        except BadFrameError:
            return None

    for i in range(n):
        sample, message = dataset[(i, 7)]
        assert sample.video_id == 2 or not {2, 4} & set(sample.frame_indices)  # never a bad one
        expected = readable(i)
        if message is None:
            assert expected is not None  # a good sample is served as it is
        else:
            replaced += 1
            assert expected is None and message.startswith("video 1 (v1): frame ")
            expected = next(s for k in range(1, n) if (s := readable(i + k)) is not None)
        assert sample.frame_indices == expected.frame_indices
        assert torch.equal(sample.images, expected.images)
    assert 0 < replaced < n


class _TinyModel(nn.Module):
    """A one-parameter stand-in with the model interface that training needs."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def loss(self, batch) -> dict[str, torch.Tensor]:
        return {"loss_mean": (self.w - 1.0 - batch.images.float().mean() / 255) ** 2}


def test_skip_trains_through_and_logs_the_count_and_evaluation_still_stops(tiny_ovis):
    root, _ = tiny_ovis
    _all_of_video_1_broken(root)
    dm = _datamodule(root, check_files=False, bad_frames="skip", val_ann="annotations/train.json")
    system = VISSystem(_TinyModel(), partial(torch.optim.SGD, lr=0.1), tracker=lambda: None)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.warns(UserWarning, match=r"skipped a training sample: video 1 \(v1\)") as record:
        trainer.fit(system, datamodule=dm)
    assert trainer.global_step == 3 and float(system.model.w) != 0.0
    assert float(trainer.callback_metrics["train/bad_samples"]) == 5.0
    warned = [str(w.message) for w in record if "skipped a training sample" in str(w.message)]
    assert len(warned) == len(set(warned)) == 5  # once per bad file
    # evaluation never skips: a dropped frame would change the results
    with pytest.raises(BadFrameError, match=r"video 1 \(v1\): frame 0: cannot read .*00000\.jpg"):
        list(dm.val_dataloader())

"""ValidationVideoLogger: the mask overlay, the PNG / TensorBoard / W&B outputs and a real run."""

from __future__ import annotations

import io
import json
import struct
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from PIL import Image
from scipy.ndimage import binary_erosion

from ovisnet.data.annotations import load_annotations
from ovisnet.data.datamodule import VISDataModule
from ovisnet.data.synthetic import generate
from ovisnet.lit.callbacks import (
    ValidationVideoLogger,
    contact_sheet,
    encode_gif,
    frame_indices,
    overlay_frames,
    render_video,
    track_colors,
)

CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)


def _blend(pixels: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
    return np.rint((1 - alpha) * pixels.astype(np.float64) + alpha * color).astype(np.uint8)


def _inner(mask: np.ndarray) -> np.ndarray:
    """Interior of a 2-D mask: eroded with the 4-neighbour cross, outside the image is empty."""
    return binary_erosion(mask, structure=CROSS, border_value=0)


# -- pure drawing ---------------------------------------------------------------------------


def test_overlay_frames_changes_exactly_the_masked_pixels():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(2, 10, 12, 3), dtype=np.uint8)
    a = np.zeros((2, 10, 12), dtype=bool)
    a[0, 2:6, 3:8] = True  # frame 1: absent
    b = np.zeros((2, 10, 12), dtype=bool)
    b[1, 0:4, 0:3] = True  # touches the image border: border pixels are contour
    colors = np.array([[255, 0, 0], [10, 200, 30]], dtype=np.uint8)

    out = overlay_frames(frames, [a, b], colors, alpha=0.25, border=1)

    assert out.dtype == np.uint8 and out.shape == frames.shape
    assert not np.shares_memory(out, frames)
    covered = a | b
    assert np.array_equal(out[~covered], frames[~covered])
    changed = np.any(out != frames, axis=-1)
    assert not np.any(changed & ~covered)
    for masks, color in [(a, colors[0]), (b, colors[1])]:
        for t in range(2):
            inner = _inner(masks[t])
            edge = masks[t] & ~inner
            assert np.array_equal(out[t][inner], _blend(frames[t][inner], color, 0.25))
            assert np.all(out[t][edge] == color)
    # the 4x5 box has a 2x3 interior, the 4x3 box at the corner a 2x1 one (border is contour)
    assert _inner(a[0]).sum() == 6 and _inner(b[1]).sum() == 2
    # one interior pixel by hand: round(0.75 * v + 0.25 * 255) for the red channel
    v = frames[0, 3, 4].astype(np.float64)
    assert out[0, 3, 4].tolist() == np.rint(0.75 * v + 0.25 * colors[0]).astype(int).tolist()


def test_overlay_frames_later_track_wins_and_no_tracks_is_a_copy():
    frames = np.full((1, 8, 8, 3), 100, dtype=np.uint8)
    a = np.zeros((1, 8, 8), dtype=bool)
    a[0, 1:7, 1:7] = True
    b = np.zeros((1, 8, 8), dtype=bool)
    b[0, 3:6, 3:6] = True
    out = overlay_frames(frames, [a, b], [[200, 0, 0], [0, 0, 200]], alpha=0.5, border=1)
    assert out[0, 4, 4].tolist() == [50, 50, 150]  # b's only interior pixel, over a's
    assert out[0, 3, 3].tolist() == [0, 0, 200]  # b's contour, over a's interior
    assert out[0, 2, 2].tolist() == [150, 50, 50]  # a's interior
    assert out[0, 1, 1].tolist() == [200, 0, 0]  # a's contour

    empty = overlay_frames(frames, [], np.zeros((0, 3), np.uint8))
    assert np.array_equal(empty, frames) and not np.shares_memory(empty, frames)
    with pytest.raises(ValueError, match="colours"):
        overlay_frames(frames, [a], [[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match="do not match"):
        overlay_frames(frames, [a[:, :4]], [[1, 2, 3]])


def test_frame_indices_colors_sheet_and_gif():
    assert frame_indices(4, 16) == [0, 1, 2, 3]
    assert frame_indices(10, 4) == [0, 3, 6, 9]
    assert frame_indices(24, 16) == sorted(set(frame_indices(24, 16)))
    assert len(frame_indices(24, 16)) == 16 and frame_indices(24, 16)[-1] == 23
    assert frame_indices(7, 1) == [0]

    colors = track_colors(5)
    assert colors.shape == (5, 3) and colors.dtype == np.uint8
    assert np.array_equal(colors, track_colors(5)) and np.array_equal(colors[:3], track_colors(3))
    assert len({tuple(c) for c in colors}) == 5
    assert colors[0].tolist() == [255, 38, 38]  # hue 0, s 0.85, v 1

    frames = np.stack([np.full((3, 4, 3), 10 * (i + 1), np.uint8) for i in range(5)])
    sheet = contact_sheet(frames, pad=1)  # 3 columns, 2 rows
    assert sheet.shape == (2 * 3 + 1, 3 * 4 + 2, 3)
    assert np.all(sheet[0:3, 0:4] == 10) and np.all(sheet[0:3, 5:9] == 20)
    assert np.all(sheet[4:7, 0:4] == 40) and np.all(sheet[4:7, 5:9] == 50)
    assert np.all(sheet[4:7, 10:14] == 0) and np.all(sheet[3] == 0) and np.all(sheet[:, 4] == 0)

    with Image.open(io.BytesIO(encode_gif(frames, fps=4))) as gif:
        assert gif.format == "GIF" and gif.size == (4, 3) and gif.n_frames == 5
        assert gif.info["duration"] == 250


# -- the callback, driven directly ------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    """3 validation videos (ids 2, 3, 4) of 4 frames, 320x192."""
    root = tmp_path_factory.mktemp("synthetic_videos")
    generate(root, seed=0, num_videos=4, num_frames=4, size=(320, 192), valid_fraction=0.75)
    return root


def _results(root: Path) -> list[dict]:
    """Ground truth as results: the first track of each video scores 0.9, the others 0.1."""
    ann = load_annotations(root / "annotations" / "valid.json")
    results = []
    for video in ann.videos:
        for k, track in enumerate(video.tracks):
            segs = []
            for t in range(video.length):
                rle = track.rle(t)
                segs.append(None if rle is None else {**rle, "counts": rle["counts"].decode()})
            score = 0.9 if k == 0 else 0.1
            results.append(
                {
                    "video_id": video.id,
                    "category_id": track.category_id,
                    "score": score,
                    "segmentations": segs,
                }
            )
    return results


def _datamodule(root: Path) -> VISDataModule:
    return VISDataModule(str(root), max_size=(320, 192), num_workers=0, batch_size=1)


def _fake_trainer(root: Path, loggers: list, tmp_path: Path, **overrides) -> SimpleNamespace:
    fields = {
        "sanity_checking": False,
        "is_global_zero": True,
        "current_epoch": 3,
        "global_step": 7,
        "state": SimpleNamespace(fn=TrainerFn.FITTING),
        "loggers": loggers,
        "default_root_dir": str(tmp_path),
        "datamodule": _datamodule(root),
    }
    fields.update(overrides)
    return SimpleNamespace(**fields)


def test_csv_logger_gets_png_contact_sheets_with_the_drawn_tracks(synthetic_root, tmp_path):
    logger = CSVLogger(tmp_path, name="csv")
    trainer = _fake_trainer(synthetic_root, [logger], tmp_path)
    module = SimpleNamespace(last_results=_results(synthetic_root))

    ValidationVideoLogger(num_videos=2).on_validation_end(trainer, module)

    media = Path(logger.log_dir) / "media"
    assert sorted(p.name for p in media.iterdir()) == [
        "val_epoch003_video2.png",
        "val_epoch003_video3.png",
    ]
    ann = load_annotations(synthetic_root / "annotations" / "valid.json")
    color = track_colors(1)[0]
    for vid in (2, 3):
        video = ann.video(vid)
        sheet = np.asarray(Image.open(media / f"val_epoch003_video{vid}.png"))
        assert sheet.shape == (2 * 192 + 2, 2 * 320 + 2, 3)  # 4 frames: 2x2 tiles, pad 2
        drawn, hidden = video.tracks[0], video.tracks[1:]
        for t in range(4):
            y, x = (t // 2) * 194, (t % 2) * 322
            tile = sheet[y : y + 192, x : x + 320]
            raw = np.asarray(
                Image.open(synthetic_root / "JPEGImages" / video.file_names[t]).convert("RGB")
            )
            mask = drawn.mask(t)
            mask = np.zeros((192, 320), bool) if mask is None else mask
            # outside the one drawn track (score 0.9) only its label patch changes, even on
            # the 0.1 tracks: a rectangle of the track's colour just above the mask's top-left
            changed = np.any(tile != raw, axis=-1) & ~mask
            assert any(h.mask(t) is not None and (h.mask(t) & ~mask).any() for h in hidden)
            if not mask.any():
                assert not changed.any()
                continue
            ys, xs = np.nonzero(changed)
            top, left = np.nonzero(mask.any(axis=1))[0][0], np.nonzero(mask.any(axis=0))[0][0]
            assert ys.min() >= top - 20 and ys.max() <= max(top, 20) + 20
            assert xs.min() >= min(left, 320 - 80) and xs.max() < 320
            patch = tile[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
            assert np.mean(np.all(patch == color, axis=-1)) > 0.5  # the label's background
            assert patch[..., 1].max() > 150  # light text on the red (G = 38) patch
            # 2-pixel border (192 px high frames) in the track's colour, then the blended fill
            inner = binary_erosion(mask, structure=CROSS, iterations=2, border_value=0)
            band = mask & ~inner
            label = np.zeros_like(mask)
            label[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
            assert np.array_equal(tile[inner & ~label], _blend(raw[inner & ~label], color, 0.5))
            assert np.all(tile[band & ~label] == color)
        assert any(drawn.mask(t) is not None and _inner(drawn.mask(t)).any() for t in range(4))


def test_render_video_downscales_and_strides(synthetic_root):
    ann = load_annotations(
        synthetic_root / "annotations" / "valid.json", image_root=synthetic_root / "JPEGImages"
    )
    frames = render_video(ann, ann.video(2), _results(synthetic_root), max_frames=3, max_width=160)
    assert frames.shape == (3, 96, 160, 3) and frames.dtype == np.uint8
    nothing = render_video(ann, ann.video(2), [], max_frames=3, max_width=160)
    raw = np.asarray(
        Image.open(ann.frame_path(ann.video(2), 3))
        .convert("RGB")
        .resize((160, 96), Image.Resampling.BILINEAR)
    )
    assert np.array_equal(nothing[2], raw)  # frames 0, 2, 3 of 4 (rounded linspace)
    assert not np.array_equal(frames, nothing)


def test_skips_sanity_check_other_epochs_and_survives_a_failing_logger(synthetic_root, tmp_path):
    module = SimpleNamespace(last_results=_results(synthetic_root))
    callback = ValidationVideoLogger(num_videos=1, every_n_epochs=2)
    good = CSVLogger(tmp_path, name="good")
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    bad = SimpleNamespace(log_dir=str(blocker))  # media/ cannot be created under a file
    media = Path(good.log_dir) / "media"

    callback.on_validation_end(
        _fake_trainer(synthetic_root, [good], tmp_path, sanity_checking=True, current_epoch=1),
        module,
    )
    callback.on_validation_end(
        _fake_trainer(synthetic_root, [good], tmp_path, current_epoch=0), module
    )
    callback.on_validation_end(
        _fake_trainer(synthetic_root, [good], tmp_path, current_epoch=1, is_global_zero=False),
        module,
    )
    assert not media.exists()

    with pytest.warns(UserWarning, match="SimpleNamespace could not log the validation videos"):
        callback.on_validation_end(
            _fake_trainer(synthetic_root, [bad, good], tmp_path, current_epoch=1), module
        )
    assert [p.name for p in media.iterdir()] == ["val_epoch001_video2.png"]

    # a stand-alone validate logs whatever the epoch; a module without results only warns
    validating = SimpleNamespace(fn=TrainerFn.VALIDATING)
    callback.on_validation_end(
        _fake_trainer(synthetic_root, [good], tmp_path, current_epoch=2, state=validating), module
    )
    assert (media / "val_epoch002_video2.png").is_file()
    with pytest.warns(UserWarning, match="could not render"):
        callback.on_validation_end(
            _fake_trainer(synthetic_root, [good], tmp_path, current_epoch=3), SimpleNamespace()
        )


def test_tensorboard_logger_gets_nhwc_image_batches(synthetic_root, tmp_path):
    calls = []

    class Writer:
        def add_images(self, tag, images, global_step=None, dataformats="NCHW"):
            calls.append((tag, images, global_step, dataformats))

    # tensorboard is not installed here: a TensorBoardLogger around a recording writer
    logger = TensorBoardLogger.__new__(TensorBoardLogger)
    logger._experiment = Writer()
    trainer = _fake_trainer(synthetic_root, [logger], tmp_path)
    ValidationVideoLogger(num_videos=3, max_width=160).on_validation_end(
        trainer, SimpleNamespace(last_results=_results(synthetic_root))
    )
    assert [c[0] for c in calls] == ["val/video_2", "val/video_3", "val/video_4"]
    for _, images, step, fmt in calls:
        assert images.shape == (4, 96, 160, 3) and images.dtype == np.uint8
        assert step == 7 and fmt == "NHWC"
    assert not (tmp_path / "media").exists()


# -- a real Trainer with W&B offline ----------------------------------------------------------


def _wandb_records(run_dir: Path) -> list:
    """Records of an offline run's ``run-*.wandb`` transaction log (LevelDB log format)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, chunks, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        if (length == 0 and kind == 0) or pos + 7 + length > len(data):  # not written yet
            break
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def _history(run_dir: Path, timeout: float = 30.0) -> list[dict]:
    """History rows of a finished offline run.

    ``wandb.finish()`` can return before wandb-core has flushed the log: wait for its ``exit``
    record (the last one).
    """
    deadline = time.monotonic() + timeout
    while True:
        records = _wandb_records(run_dir)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        assert time.monotonic() < deadline, f"no exit record in {run_dir} after {timeout} s"
        time.sleep(0.1)
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    (item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return rows


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    import wandb

    yield tmp_path
    wandb.finish()


class _GroundTruthSystem(L.LightningModule):
    """Trains nothing; every validation 'predicts' the ground truth and logs val/AP."""

    def __init__(self, results: list[dict]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.results = results
        self.last_results: list[dict] = []

    def training_step(self, batch, batch_idx):
        return (self.weight**2).sum()

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        self.last_results = list(self.results)  # also during the sanity check
        self.log("val/AP", 40.0 + self.current_epoch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_wandb_offline_run_gets_gif_videos_and_metrics(synthetic_root, wandb_offline):
    import wandb

    tmp_path = wandb_offline
    logger = WandbLogger(save_dir=str(tmp_path), project="ovisnet-test", offline=True)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        limit_train_batches=1,
        num_sanity_val_steps=2,
        log_every_n_steps=1,
        logger=logger,
        callbacks=[ValidationVideoLogger(num_videos=2, max_width=160)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(
        _GroundTruthSystem(_results(synthetic_root)), datamodule=_datamodule(synthetic_root)
    )
    wandb.finish()

    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    gifs = sorted((run_dir / "files" / "media" / "videos" / "val").glob("*.gif"))
    # 2 epochs x videos 2 and 3; nothing from the sanity check
    assert sorted(p.name.split("_")[1] for p in gifs) == ["2", "2", "3", "3"]
    for gif in gifs:
        with Image.open(gif) as im:
            assert im.size == (160, 96) and im.n_frames == 4

    # history rows (media dicts are flattened to "<key>/<field>")
    history = _history(run_dir)
    metrics = [(row["trainer/global_step"], row["val/AP"]) for row in history if "val/AP" in row]
    assert metrics == [(0, 40.0), (1, 41.0)]
    videos = [row for row in history if "val/video_2/_type" in row]
    assert len(videos) == 2
    logged = {gif.relative_to(run_dir / "files").as_posix() for gif in gifs}
    for epoch, row in enumerate(videos):
        assert row["trainer/global_step"] == metrics[epoch][0]  # the metrics' step
        for vid in (2, 3):
            assert row[f"val/video_{vid}/_type"] == "video-file"
            assert row[f"val/video_{vid}/caption"] == f"video {vid}, epoch {epoch}"
            assert row[f"val/video_{vid}/path"] in logged
    assert not any("val/video_4/_type" in row for row in history)


@pytest.mark.slow  # about 40 s on 2 cores
def test_configured_callback_in_a_real_training_run_with_wandb(wandb_offline):
    """``python -m ovisnet.train logger=wandb``: VISSystem's results drawn into the W&B run."""
    import wandb
    from hydra import compose, initialize_config_dir

    from ovisnet.train import CONFIG_DIR, train

    tmp_path = wandb_offline
    root = tmp_path / "synthetic"
    generate(root, seed=3, num_videos=4, num_frames=5, size=(96, 64), valid_fraction=0.25)
    overrides = [
        "experiment=masktrack",
        "init_from=null",  # the recipe starts from COCO weights, which are not cached here
        "data=synthetic",
        "trainer=cpu",
        "logger=wandb",
        "model/backbone=timm_fpn",
        f"data.root={root}",
        "data.max_size=[96,64]",
        "data.num_workers=0",
        "data.batch_size=2",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.enable_progress_bar=false",
        f"paths.output_dir={tmp_path}",
        "model.rpn.pre_nms_top_n=50",
        "model.rpn.post_nms_top_n=50",
        "model.rcnn.detections_per_img=10",
        "callbacks.validation_videos.min_score=0.0",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    assert cfg.callbacks.validation_videos.num_videos == 2
    metrics = train(cfg)
    wandb.finish()

    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    history = _history(run_dir)
    aps = [row["val/AP"] for row in history if "val/AP" in row]
    assert aps and aps[-1] == pytest.approx(metrics["AP"], abs=1e-4), (history, metrics)
    # every validation (after the epoch, and the final one if train() re-validates) logs the
    # one validation video (id 4) too
    videos = [row for row in history if "val/video_4/_type" in row]
    assert len(videos) == len(aps)
    for row in videos:
        gif = run_dir / "files" / row["val/video_4/path"]
        with Image.open(gif) as im:
            assert im.size == (96, 64) and im.n_frames == 5

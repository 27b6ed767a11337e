"""Lightning callbacks of the VIS system: a few validation videos with their predicted masks.

The drawing is :mod:`ovisnet.visualization` (the renderer the demo uses too: one colour per
track, wide borders, "#k class score" labels), plain numpy / Pillow so it can be tested without a
trainer; :class:`ValidationVideoLogger` only picks the videos, renders them and hands them to
each logger in the form that logger can show.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from PIL import Image
from pycocotools import mask as mask_utils

from ovisnet.data.annotations import Video, VISAnnotations, to_compressed_rle
from ovisnet.visualization import (
    contact_sheet,
    encode_gif,
    overlay_frames,
    track_colors,
    track_label,
)

__all__ = [
    "ValidationVideoLogger",
    "contact_sheet",
    "encode_gif",
    "frame_indices",
    "overlay_frames",
    "render_video",
    "track_colors",
]


def frame_indices(length: int, max_frames: int) -> list[int]:
    """At most ``max_frames`` frame indices spread evenly over ``[0, length)``.

    The first and last frame are always included (``np.linspace`` rounded to the nearest
    frame); a video of at most ``max_frames`` frames gives all of them.
    """
    if length < 1 or max_frames < 1:
        raise ValueError(f"need length >= 1 and max_frames >= 1, got {length}, {max_frames}")
    n = min(length, max_frames)
    if n == 1:
        return [0]
    return [int(i) for i in np.rint(np.linspace(0, length - 1, n))]


def _target_size(width: int, height: int, max_width: int) -> tuple[int, int]:
    if width <= max_width:
        return width, height
    return max_width, max(1, round(height * max_width / width))


def render_video(
    ann: VISAnnotations,
    video: Video,
    results: Sequence[dict[str, Any]],
    *,
    max_frames: int = 16,
    max_width: int = 480,
    min_score: float = 0.3,
    alpha: float = 0.5,
) -> np.ndarray:
    """The overlaid frames of one video as ``(T, H, W, 3)`` uint8.

    Frames are :func:`frame_indices` of the video, resized (bilinear, masks nearest) to at most
    ``max_width`` pixels wide. Results of ``video`` with ``score >= min_score`` are drawn in
    order of decreasing score: the track of rank ``k`` (0-based) has colour ``track_colors`` of
    ``k`` and the label ``"#<k+1> <category name> <score>"``; the best track is drawn on top.

    Args:
        ann: the split (with ``image_root``).
        video: one of its videos.
        results: results in the YouTube-VIS / OVIS format (other videos' entries are skipped).
        max_frames: frames to draw at most.
        max_width: width bound of the output.
        min_score: score threshold of the drawn tracks.
        alpha: mask fill opacity.
    """
    indices = frame_indices(video.length, max_frames)
    size = _target_size(video.width, video.height, max_width)
    frames = []
    for t in indices:
        with Image.open(ann.frame_path(video, t)) as img:
            frame = img.convert("RGB")
        if frame.size != size:
            frame = frame.resize(size, Image.Resampling.BILINEAR)
        frames.append(np.asarray(frame, dtype=np.uint8))
    tracks = sorted(
        (r for r in results if r["video_id"] == video.id and r["score"] >= min_score),
        key=lambda r: -r["score"],
    )
    masks_per_track = []
    for r in tracks:
        masks = np.zeros((len(indices), size[1], size[0]), dtype=bool)
        for i, t in enumerate(indices):
            seg = r["segmentations"][t]
            if seg is None:
                continue
            mask = mask_utils.decode(to_compressed_rle(seg, video.height, video.width))
            if mask.shape[::-1] != size:
                mask = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
            masks[i] = mask.astype(bool)
        masks_per_track.append(masks)
    colors = track_colors(len(tracks))
    names = {c.id: c.name for c in ann.categories}
    labels = [
        track_label(k + 1, names.get(r["category_id"]), r["score"]) for k, r in enumerate(tracks)
    ]
    # best track drawn last (on top), each keeping the colour of its rank
    return overlay_frames(
        np.stack(frames),
        masks_per_track[::-1],
        colors[::-1].reshape(-1, 3),
        alpha=alpha,
        labels=labels[::-1],
    )


class ValidationVideoLogger(L.Callback):
    """Log the first validation videos with the predicted track masks drawn over them.

    After each validation (``on_validation_end``, which Lightning calls after the module's
    ``on_validation_epoch_end`` has stored ``last_results``), on global rank zero and not during
    the sanity check, the first ``num_videos`` videos of the ``val`` split (by id) are rendered
    with :func:`render_video` and sent to every logger of the trainer:

    * ``WandbLogger``: one ``wandb.Video`` per video under ``val/video_<id>``, an animated GIF
      encoded with Pillow (``wandb.Video`` from a numpy array needs moviepy / imageio, which
      this project does not install; from GIF bytes it needs nothing), logged in one call at
      the step of the validation metrics (``trainer/global_step``).
    * ``TensorBoardLogger``: ``add_images("val/video_<id>", frames, dataformats="NHWC")`` (the
      frames as an image batch; ``add_video`` needs moviepy).
    * any other logger (e.g. ``CSVLogger``): a PNG contact sheet (:func:`contact_sheet`)
      ``<log_dir>/media/val_epochNNN_video<id>.png``, ``log_dir`` being the logger's or
      ``trainer.default_root_dir``.

    A failure of one logger (or of the rendering) is reported with ``warnings.warn``; it never
    stops training.

    Args:
        num_videos: videos to log per validation.
        max_frames: frames per video at most, evenly spread over it.
        max_width: larger frames are downscaled to this width.
        min_score: only tracks with ``score >= min_score`` are drawn.
        every_n_epochs: during ``fit``, log after the validations of epochs ``n - 1``,
            ``2n - 1``, ... (0-based, as ``ModelCheckpoint``); a stand-alone ``validate`` always
            logs.
        fps: frame rate of the logged videos.
        alpha: opacity of the mask fill.
    """

    def __init__(
        self,
        num_videos: int = 2,
        max_frames: int = 16,
        max_width: int = 480,
        min_score: float = 0.3,
        every_n_epochs: int = 1,
        fps: int = 4,
        alpha: float = 0.5,
    ) -> None:
        super().__init__()
        for name, value in [
            ("num_videos", num_videos),
            ("max_frames", max_frames),
            ("max_width", max_width),
            ("every_n_epochs", every_n_epochs),
            ("fps", fps),
        ]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.num_videos = num_videos
        self.max_frames = max_frames
        self.max_width = max_width
        self.min_score = min_score
        self.every_n_epochs = every_n_epochs
        self.fps = fps
        self.alpha = alpha

    @staticmethod
    def _step(trainer: L.Trainer) -> int:
        """The step Lightning logs this validation's metrics at (as ``LearningRateMonitor``)."""
        loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
        return int(getattr(loop, "_batches_that_stepped", trainer.global_step))

    def _due(self, trainer: L.Trainer) -> bool:
        if trainer.sanity_checking or not trainer.is_global_zero or not trainer.loggers:
            return False
        fitting = trainer.state.fn == TrainerFn.FITTING
        return not fitting or (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def render(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[int, np.ndarray]:
        """``{video_id: (T, H, W, 3) uint8}`` of the videos to log, from ``last_results``."""
        results = pl_module.last_results
        # VISSystem evaluates validation on the "val" split (see VISSystem._split)
        ann = trainer.datamodule.load_split("val")
        videos = sorted(ann.videos, key=lambda v: v.id)[: self.num_videos]
        return {
            v.id: render_video(
                ann,
                v,
                results,
                max_frames=self.max_frames,
                max_width=self.max_width,
                min_score=self.min_score,
                alpha=self.alpha,
            )
            for v in videos
        }

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._due(trainer):
            return
        try:
            videos = self.render(trainer, pl_module)
        except Exception as exc:
            warnings.warn(
                f"ValidationVideoLogger: could not render the validation videos: {exc!r}",
                stacklevel=2,
            )
            return
        if not videos:
            return
        written: set[Path] = set()
        for logger in trainer.loggers:
            try:
                if isinstance(logger, WandbLogger):
                    self._log_wandb(logger, trainer, videos)
                elif isinstance(logger, TensorBoardLogger):
                    self._log_tensorboard(logger, trainer, videos)
                else:
                    out = Path(getattr(logger, "log_dir", None) or trainer.default_root_dir)
                    if out not in written:
                        self._write_pngs(out / "media", trainer.current_epoch, videos)
                        written.add(out)
            except Exception as exc:
                warnings.warn(
                    f"ValidationVideoLogger: {type(logger).__name__} could not log the "
                    f"validation videos: {exc!r}",
                    stacklevel=2,
                )

    def _log_wandb(
        self, logger: WandbLogger, trainer: L.Trainer, videos: dict[int, np.ndarray]
    ) -> None:
        import wandb

        epoch = trainer.current_epoch
        media = {
            f"val/video_{vid}": wandb.Video(
                io.BytesIO(encode_gif(frames, self.fps)),
                caption=f"video {vid}, epoch {epoch}",
                format="gif",
            )
            for vid, frames in videos.items()
        }
        logger.log_metrics(media, step=self._step(trainer))

    def _log_tensorboard(
        self, logger: TensorBoardLogger, trainer: L.Trainer, videos: dict[int, np.ndarray]
    ) -> None:
        for vid, frames in videos.items():
            logger.experiment.add_images(
                f"val/video_{vid}", frames, global_step=self._step(trainer), dataformats="NHWC"
            )

    @staticmethod
    def _write_pngs(folder: Path, epoch: int, videos: dict[int, np.ndarray]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for vid, frames in videos.items():
            path = folder / f"val_epoch{epoch:03d}_video{vid}.png"
            Image.fromarray(contact_sheet(frames)).save(path)

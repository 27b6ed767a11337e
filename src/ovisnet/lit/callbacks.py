"""Lightning callbacks of the VIS system: a few validation videos with their predicted masks.

The drawing (:func:`overlay_frames`, :func:`contact_sheet`, :func:`encode_gif`) is plain numpy /
Pillow so it can be tested without a trainer; :class:`ValidationVideoLogger` only picks the
videos, renders them and hands them to each logger in the form that logger can show.
"""

from __future__ import annotations

import colorsys
import io
import math
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

_GOLDEN = 0.618033988749895


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


def track_colors(n: int) -> np.ndarray:
    """``(n, 3)`` uint8 RGB colours, one per track index, the same for every call.

    Hues step by the golden ratio so neighbouring indices are far apart on the colour wheel.
    """
    colors = [colorsys.hsv_to_rgb((i * _GOLDEN) % 1.0, 0.85, 1.0) for i in range(n)]
    return np.rint(np.asarray(colors, dtype=np.float64).reshape(n, 3) * 255).astype(np.uint8)


def _inner_contour(masks: np.ndarray) -> np.ndarray:
    """Pixels of ``masks`` (``(T, H, W)`` bool) with a 4-neighbour outside the mask or image."""
    padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)), constant_values=False)
    interior = (
        padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:]
    )
    return masks & ~interior


def overlay_frames(
    frames: np.ndarray,
    masks_per_track: Sequence[np.ndarray],
    colors: np.ndarray | Sequence[Sequence[int]],
    alpha: float = 0.5,
) -> np.ndarray:
    """Draw semi-transparent track masks with a one-pixel contour onto video frames.

    A pixel covered by track ``k`` becomes ``round((1 - alpha) * frame + alpha * colors[k])``;
    the mask's inner boundary (pixels with a 4-neighbour outside the mask) is painted
    ``colors[k]`` opaque. Where tracks overlap, the later track in ``masks_per_track`` wins.
    Pixels outside every mask are left unchanged.

    Args:
        frames: ``(T, H, W, 3)`` uint8 RGB frames.
        masks_per_track: one ``(T, H, W)`` bool array per track (all False where absent).
        colors: ``(K, 3)`` uint8 RGB colour per track, ``K == len(masks_per_track)``.
        alpha: opacity of the mask fill in ``[0, 1]``.

    Returns:
        A new ``(T, H, W, 3)`` uint8 array.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    if len(colors) != len(masks_per_track):
        raise ValueError(f"{len(masks_per_track)} tracks but {len(colors)} colours")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    out = frames.copy()
    if not masks_per_track:
        return out
    layer = np.zeros_like(frames)
    covered = np.zeros(frames.shape[:3], dtype=bool)
    edges = np.zeros(frames.shape[:3], dtype=bool)
    for masks, color in zip(masks_per_track, colors, strict=True):
        masks = np.asarray(masks, dtype=bool)
        if masks.shape != frames.shape[:3]:
            raise ValueError(f"track masks {masks.shape} do not match frames {frames.shape[:3]}")
        layer[masks] = color
        covered |= masks
        edge = _inner_contour(masks)
        edges[masks] = edge[masks]  # a later track's interior hides an earlier contour
    blended = (1.0 - alpha) * frames[covered].astype(np.float64) + alpha * layer[covered]
    out[covered] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    out[edges] = layer[edges]
    return out


def contact_sheet(frames: np.ndarray, ncols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile ``(T, H, W, 3)`` frames row by row into one image.

    Tile ``t`` sits at row ``t // ncols``, column ``t % ncols``, with ``pad`` black pixels
    between tiles (none around the sheet); unused cells of the last row stay black.

    Args:
        frames: ``(T, H, W, 3)`` uint8 frames, ``T >= 1``.
        ncols: tiles per row; default ``ceil(sqrt(T))``.
        pad: gap between tiles in pixels.

    Returns:
        ``(rows * H + (rows - 1) * pad, ncols * W + (ncols - 1) * pad, 3)`` uint8.
    """
    t, h, w, c = frames.shape
    if t < 1:
        raise ValueError("contact_sheet needs at least one frame")
    ncols = min(t, ncols or math.ceil(math.sqrt(t)))
    rows = math.ceil(t / ncols)
    sheet = np.zeros((rows * h + (rows - 1) * pad, ncols * w + (ncols - 1) * pad, c), np.uint8)
    for i, frame in enumerate(frames):
        y, x = (i // ncols) * (h + pad), (i % ncols) * (w + pad)
        sheet[y : y + h, x : x + w] = frame
    return sheet


def encode_gif(frames: np.ndarray, fps: int) -> bytes:
    """Animated GIF (looping, ``fps`` frames per second) of ``(T, H, W, 3)`` uint8 frames."""
    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(
        buf,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=max(1, round(1000 / fps)),
        loop=0,
    )
    return buf.getvalue()


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
    order of decreasing score with colour ``track_colors`` of that rank; the best track is
    drawn on top.

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
    # best track drawn last (on top), each keeping the colour of its rank
    return overlay_frames(
        np.stack(frames), masks_per_track[::-1], colors[::-1].reshape(-1, 3), alpha=alpha
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

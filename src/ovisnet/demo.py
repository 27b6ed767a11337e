"""Run a trained checkpoint on a raw video: ``python -m ovisnet.demo ckpt_path=... input=...``.

``input`` is a video file (mp4 / avi / mov / mkv / webm, read with PyAV) or a folder of frames
(jpg / jpeg / png / bmp, in natural name order); no annotation file is needed. The model is
rebuilt from the training run's saved config as in ``ovisnet.eval``, frames are resized as the
run's ``data.max_size`` says, and the video is streamed through the family's predictor (the
seam every family plugs into: ``VISSystem.make_predictor``), so memory stays flat in the video's
length. Two passes over the input, with progress bars: inference, then rendering, which decodes
the frames again instead of keeping them. Written to ``output`` (default
``demo/<input name>``):

* ``overlay.mp4``: every input frame with the tracks drawn (one stable colour per track, its
  number, class name and score, masks blended; :mod:`ovisnet.visualization`), H.264 at the input
  frame rate (a frame folder: ``fps``), at the input size rounded down to even pixels.
* ``results.json``: the video (``input``, ``length``, ``width``, ``height``, ``fps``), the
  categories, and one entry per track (``track``, numbered 1.. by first appearance,
  ``category_id``, ``category_name``, ``score``, ``first_frame``, ``last_frame`` and the
  per-frame RLE ``segmentations``, null where absent: the YouTube-VIS results format plus
  names).

Arguments are ``key=value`` pairs. The demo's own keys:

* ``ckpt_path`` (required) and ``input`` (required).
* ``output``: the output folder.
* ``config``: the run config, when it is not at ``<run>/.hydra/config.yaml``.
* ``min_score``: tracks drawn in the overlay have at least this score (default 0.3; every
  track is written to ``results.json``).
* ``fps``: frame rate of a frame folder (default 10; a video file keeps its own).
* ``device``: ``cpu``, ``cuda``, ... (default: ``cuda`` when available).

Every other ``key=value`` overrides the run config as in ``ovisnet.eval``, e.g.
``data.max_size=[1280,720]`` or ``model.rcnn.score_thresh=0.3``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from tqdm import tqdm

from ovisnet.data.annotations import to_compressed_rle
from ovisnet.data.transforms import fit_scale, resized_hw, transform_clip
from ovisnet.errors import ConfigError, MissingFileError, report_user_errors
from ovisnet.structures.clip import ClipSample, collate_clips
from ovisnet.visualization import draw_tracks, track_colors, track_label

DEMO_KEYS = ("ckpt_path", "input", "output", "config", "min_score", "fps", "device")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
USAGE = __doc__


# -- reading and writing frames -----------------------------------------------------------------


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


class FrameSource:
    """Frames of a video file or a folder, decoded one at a time as ``(H, W, 3)`` uint8 RGB.

    ``length``, ``height``, ``width`` and ``fps`` are known before decoding (a video file's
    frame count from its container, or counted by demuxing without decoding). Iterating again
    decodes again; nothing is cached.
    """

    def __init__(self, path: str | Path, fps: float = 10.0) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise MissingFileError(f"input {self.path} does not exist")
        self.files: list[Path] | None = None
        if self.path.is_dir():
            self.files = sorted(
                (p for p in self.path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES),
                key=_natural_key,
            )
            if not self.files:
                raise ConfigError(
                    f"input folder {self.path} holds no frames ({', '.join(FRAME_SUFFIXES)})"
                )
            from PIL import Image

            with Image.open(self.files[0]) as img:
                self.width, self.height = img.size
            self.length = len(self.files)
            self.fps = Fraction(fps).limit_denominator(1001)
        else:
            if self.path.suffix.lower() not in VIDEO_SUFFIXES:
                raise ConfigError(
                    f"input {self.path}: expected a video ({', '.join(VIDEO_SUFFIXES)}) or a "
                    "folder of frames"
                )
            self._probe_video()
        if self.fps <= 0:
            raise ValueError(f"frame rate must be positive, got {self.fps}")

    def _probe_video(self) -> None:
        import av

        with av.open(str(self.path)) as container:
            if not container.streams.video:
                raise ValueError(f"input {self.path} has no video stream")
            stream = container.streams.video[0]
            self.width, self.height = stream.codec_context.width, stream.codec_context.height
            self.fps = Fraction(stream.average_rate or 10).limit_denominator(1001)
            length = stream.frames
            if not length:  # containers without a frame count: count packets, no decoding
                length = sum(1 for packet in container.demux(stream) if packet.size)
        self.length = int(length)
        if self.length < 1:
            raise ValueError(f"input {self.path} has no frames")

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.files is not None:
            yield from self._read_files()
            return
        import av

        with av.open(str(self.path)) as container:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")

    def _read_files(self) -> Iterator[np.ndarray]:
        from PIL import Image

        assert self.files is not None
        for path in self.files:
            try:
                with Image.open(path) as img:
                    frame = np.array(img.convert("RGB"), dtype=np.uint8)
            except OSError as exc:
                raise OSError(f"cannot read frame {path}: {exc}") from exc
            if frame.shape[:2] != (self.height, self.width):
                raise ValueError(
                    f"frame {path} is {frame.shape[1]}x{frame.shape[0]}, the folder's first "
                    f"frame is {self.width}x{self.height}: every frame must have one size"
                )
            yield frame


class VideoWriter:
    """H.264 (``libx264``, else MPEG-4 part 2) ``yuv420p`` mp4 of RGB frames, via PyAV.

    ``yuv420p`` needs even sizes: frames are cropped to ``(height // 2 * 2, width // 2 * 2)``.
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: Fraction) -> None:
        import av

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.width, self.height = width // 2 * 2, height // 2 * 2
        if self.width < 2 or self.height < 2:
            raise ValueError(f"frames of {width}x{height} are too small to encode")
        self.container = av.open(str(self.path), mode="w")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self.stream = self.container.add_stream(codec, rate=fps)
        self.stream.width, self.stream.height = self.width, self.height
        self.stream.pix_fmt = "yuv420p"
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        """Encode one ``(H, W, 3)`` uint8 RGB frame."""
        import av

        image = np.ascontiguousarray(frame[: self.height, : self.width])
        packets = self.stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24"))
        self.container.mux(packets)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and close the file."""
        self.container.mux(self.stream.encode())
        self.container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the model ------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A checkpoint's system ready for inference, with what the demo needs from its config."""

    system: Any
    categories: list[dict[str, Any]]
    max_size: tuple[int, int]
    size_divisor: int
    device: torch.device


def _config_categories(cfg: Any) -> list[dict[str, Any]] | None:
    """The categories of the run's training file, if it can still be read."""
    from ovisnet.data.annotations import read_json

    data = cfg.get("data") or {}
    root, ann = data.get("root"), data.get("train_ann")
    if not root or not ann:
        return None
    path = Path(ann) if Path(ann).is_absolute() else Path(root) / ann
    if not path.is_file():
        return None
    return [{"id": c["id"], "name": c["name"]} for c in read_json(path)["categories"]]


def load_model(
    ckpt_path: str | Path,
    *,
    config: str | None = None,
    overrides: list[str] | None = None,
    device: str | None = None,
    output_dir: str | Path = "demo",
) -> LoadedModel:
    """Rebuild the run's system from its saved config and load the checkpoint's weights.

    Category names come from the checkpoint (written by training since the demo exists), else
    from the run's training annotation file, else they are ``class_<k>`` with ids ``1..K``.
    """
    from ovisnet.eval import load_config, run_config
    from ovisnet.train import build

    ckpt = Path(ckpt_path)
    if not ckpt.is_file():
        raise MissingFileError(f"checkpoint {ckpt} does not exist")
    config_path = run_config(ckpt, config)
    cfg = load_config(config_path, overrides or [], Path(output_dir))
    _, system = build(cfg)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    system.load_state_dict(state["state_dict"])
    categories = state.get("categories") or _config_categories(cfg)
    num_classes = int(cfg.model.num_classes) if "num_classes" in cfg.model else None
    if categories is None:
        if num_classes is None:
            raise ValueError(f"{config_path}: no model.num_classes and no category list")
        categories = [{"id": k + 1, "name": f"class_{k + 1}"} for k in range(num_classes)]
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    system.to(dev).eval()
    return LoadedModel(
        system=system,
        categories=list(categories),
        max_size=tuple(cfg.data.max_size),
        size_divisor=int(cfg.data.get("size_divisor", 32)),
        device=dev,
    )


@torch.no_grad()
def predict(loaded: LoadedModel, source: FrameSource, progress: bool = True) -> list[dict]:
    """Stream ``source`` through the family's predictor; its ``results.json`` entries.

    Each frame is resized as in evaluation (``fit_scale`` of the run's ``data.max_size``) and
    pushed as soon as it is decoded; only the predictor's own window is held.
    """
    height, width = source.height, source.width
    scale = fit_scale(height, width, loaded.max_size)
    out_hw = resized_hw(height, width, scale)
    category_ids = [c["id"] for c in loaded.categories]
    predictor = None
    count = 0
    frames = tqdm(source, total=source.length, desc="inference", unit="frame", disable=not progress)
    for t, frame in enumerate(frames):
        if frame.shape[:2] != (height, width):
            raise ValueError(f"{source.path}: frame {t} is not {width}x{height}")
        if t >= source.length:
            raise ValueError(
                f"{source.path}: more frames decoded than the {source.length} the container "
                "announces; re-mux it (e.g. ffmpeg -i IN -c copy OUT.mp4) or use a frame folder"
            )
        image = torch.from_numpy(frame).permute(2, 0, 1)
        images, _ = transform_clip(image[None], None, out_hw, False)
        sample = ClipSample(
            images=images,
            targets=None,
            video_id=0,
            frame_indices=[t],
            video_length=source.length,
            image_size=out_hw,
            original_size=(height, width),
            scale=scale,
        )
        batch = collate_clips([sample], loaded.size_divisor).to(loaded.device)
        if predictor is None:
            predictor = loaded.system.make_predictor(batch, category_ids)
        predictor.push(batch.images[0, 0])
        count += 1
    if predictor is None or not predictor.done:
        raise ValueError(
            f"{source.path}: the container announces {source.length} frames but {count} were "
            "decoded; re-mux it (e.g. ffmpeg -i IN -c copy OUT.mp4) or use a frame folder"
        )
    return predictor.finalize()


# -- results and rendering ----------------------------------------------------------------------


def video_tracks(
    results: list[dict[str, Any]], categories: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The predictor's entries as numbered tracks: ``track`` 1.. by first appearance (ties by
    decreasing score), with ``category_name``, ``first_frame`` and ``last_frame``."""
    names = {c["id"]: c["name"] for c in categories}
    tracks = []
    for r in results:
        present = [t for t, s in enumerate(r["segmentations"]) if s is not None]
        if not present:
            continue
        tracks.append({**r, "first_frame": present[0], "last_frame": present[-1]})
    tracks.sort(key=lambda r: (r["first_frame"], -r["score"]))
    return [
        {
            "track": k + 1,
            "category_id": r["category_id"],
            "category_name": names.get(r["category_id"], str(r["category_id"])),
            "score": r["score"],
            "first_frame": r["first_frame"],
            "last_frame": r["last_frame"],
            "segmentations": r["segmentations"],
        }
        for k, r in enumerate(tracks)
    ]


class TrackRenderer:
    """Draws frame ``t`` of a video with its tracks; a track's colour is that of its number."""

    def __init__(
        self,
        tracks: list[dict[str, Any]],
        height: int,
        width: int,
        min_score: float = 0.3,
        alpha: float = 0.5,
    ) -> None:
        # low scores first, so the best track is drawn on top where tracks overlap
        self.tracks = sorted(
            (r for r in tracks if r["score"] >= min_score), key=lambda r: r["score"]
        )
        palette = track_colors(max((r["track"] for r in tracks), default=0) + 1)
        self.colors = np.array([palette[r["track"]] for r in self.tracks], np.uint8).reshape(-1, 3)
        self.labels = [track_label(r["track"], r["category_name"], r["score"]) for r in self.tracks]
        self.height, self.width, self.alpha = height, width, alpha

    def __call__(self, frame: np.ndarray, t: int) -> np.ndarray:
        masks = []
        for r in self.tracks:
            seg = r["segmentations"][t]
            masks.append(
                None
                if seg is None
                else mask_utils.decode(to_compressed_rle(seg, self.height, self.width)).astype(bool)
            )
        return draw_tracks(frame, masks, self.colors, self.labels, alpha=self.alpha)


def run_demo(
    ckpt_path: str | Path,
    input: str | Path,
    *,
    output: str | Path | None = None,
    config: str | None = None,
    min_score: float = 0.3,
    fps: float = 10.0,
    device: str | None = None,
    overrides: list[str] | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Predict, write ``results.json``, render ``overlay.mp4``; returns both paths."""
    source = FrameSource(input, fps=fps)
    out = Path(output) if output else Path("demo") / source.path.stem
    loaded = load_model(
        ckpt_path, config=config, overrides=overrides, device=device, output_dir=out
    )
    tracks = video_tracks(predict(loaded, source, progress), loaded.categories)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    summary = {
        "video": {
            "input": str(source.path),
            "length": source.length,
            "width": source.width,
            "height": source.height,
            "fps": float(source.fps),
        },
        "categories": loaded.categories,
        "tracks": tracks,
    }
    results_path.write_text(json.dumps(summary))
    render = TrackRenderer(tracks, source.height, source.width, min_score=min_score)
    video_path = out / "overlay.mp4"
    frames = tqdm(source, total=source.length, desc="rendering", unit="frame", disable=not progress)
    with VideoWriter(video_path, source.width, source.height, source.fps) as writer:
        for t, frame in enumerate(frames):
            writer.write(render(frame, t))
    return {"video": video_path, "results": results_path}


def parse_args(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Split ``key=value`` arguments into the demo's keys and run-config overrides."""
    from ovisnet.eval import split_arguments

    return split_arguments(argv, DEMO_KEYS, ("ckpt_path", "input"), "ovisnet.demo", USAGE)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return
    own, overrides = parse_args(args)
    with report_user_errors("ovisnet.demo"):
        paths = run_demo(
            own["ckpt_path"],
            own["input"],
            output=own.get("output"),
            config=own.get("config"),
            min_score=float(own.get("min_score", 0.3)),
            fps=float(own.get("fps", 10.0)),
            device=own.get("device"),
            overrides=overrides,
        )
    print(f"overlay: {paths['video']}\nresults: {paths['results']}")


if __name__ == "__main__":
    main()

"""The one LightningDataModule for every model: pair mode, clip mode and streamed evaluation."""

from __future__ import annotations

from dataclasses import fields
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from ovisnet.data.annotations import VISAnnotations, check_frame_files, load_annotations
from ovisnet.data.datasets import (
    SeededSampler,
    VideoSequentialSampler,
    VISFrameDataset,
    VISTrainDataset,
)
from ovisnet.data.image_clips import (
    ClipMotion,
    CocoImageSource,
    ImageClipDataset,
    ImageSource,
    MixedClipDataset,
    VideoFrameSource,
)
from ovisnet.structures import collate_clips

_MOTION_KEYS = {f.name for f in fields(ClipMotion)}
_IMAGE_CLIP_KEYS = {"source", "ratio", "image_root", "category_map"} | _MOTION_KEYS


class VISDataModule(L.LightningDataModule):
    """OVIS / YouTube-VIS data for training (pairs or clips) and whole-video evaluation.

    Args:
        root: dataset root holding ``JPEGImages/`` (frame paths are relative to it).
        train_ann: training annotation JSON (absolute, or relative to ``root``).
        val_ann: validation annotation JSON (with annotations for local AP, or ``null`` ones).
        test_ann: optional test / inference-only split.
        num_classes: expected number of categories (checked against the files).
        mode: ``"pair"`` (query + reference, MaskTrack family) or ``"clip"`` (STEm-Seg).
        max_size: ``(long, short)`` resize bound, default ``(640, 360)``.
        eps_train: training reference distance (None: whole video).
        eps_test: test reference distance, exposed for the models' inference engines.
        clip_length: frames per training clip (clip mode).
        batch_size: training samples per batch.
        num_workers: data-loader workers.
        flip_prob: clip-consistent horizontal flip probability (training only).
        size_divisor: padded batch sizes are multiples of it.
        seed: seed of the training order and of every sample's random draws.
        check_files: check at setup that every frame file exists (one ``stat`` per frame).
        synthetic: when given, ``prepare_data`` generates the synthetic OVIS-format set into
            ``root`` with these keyword arguments of :func:`ovisnet.data.synthetic.generate`
            unless it is already there.
        image_clips: when given (clip mode only), training mixes image pseudo-clips
            (:mod:`ovisnet.data.image_clips`) into the video clips. Keys: ``source``
            (``"frames"``: the single valid frames of the train split; otherwise a COCO-format
            instance JSON, absolute or relative to ``root``), ``ratio`` (fraction of pseudo-clips
            in ``[0, 1)``, e.g. 0.4 for the paper's 0.6 video / 0.4 image mix), ``image_root``
            (the COCO images' folder, absolute or relative to ``root``), optional
            ``category_map`` (``{coco_category_id: dataset_category_id}``; default: match names)
            and optional motion bounds (the fields of :class:`ClipMotion`).
    """

    def __init__(
        self,
        root: str,
        train_ann: str | None = "annotations/train.json",
        val_ann: str | None = "annotations/valid.json",
        test_ann: str | None = None,
        *,
        num_classes: int | None = None,
        mode: str = "pair",
        max_size: tuple[int, int] = (640, 360),
        eps_train: int | None = 5,
        eps_test: int = 3,
        clip_length: int = 8,
        batch_size: int = 2,
        num_workers: int = 2,
        flip_prob: float = 0.5,
        size_divisor: int = 32,
        seed: int = 0,
        check_files: bool = True,
        synthetic: dict[str, Any] | None = None,
        image_clips: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if image_clips is not None:
            _check_image_clips(image_clips, mode)
        self.save_hyperparameters()
        self.root = Path(root)
        self.splits: dict[str, VISAnnotations] = {}

    def _path(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else self.root / p

    def prepare_data(self) -> None:
        """Generate the synthetic set once (rank 0 only), if configured and missing."""
        hp = self.hparams
        if hp.synthetic is None:
            return
        anns = [hp.train_ann, hp.val_ann, hp.test_ann]
        if all(self._path(a).is_file() for a in anns if a is not None):
            return
        from ovisnet.data.synthetic import generate

        generate(self.root, **hp.synthetic)

    def annotation_path(self, name: str) -> Path:
        """Path of the annotation file of split ``train`` / ``val`` / ``test``."""
        rel = getattr(self.hparams, f"{name}_ann")
        if rel is None:
            raise ValueError(f"no annotation file configured for the {name} split")
        return self._path(rel)

    def load_split(self, name: str) -> VISAnnotations:
        """Parse (once) and validate the split ``train`` / ``val`` / ``test``."""
        if name not in self.splits:
            path = self.annotation_path(name)
            ann = load_annotations(path, image_root=self.root / "JPEGImages")
            expected = self.hparams.num_classes
            if expected is not None and ann.num_classes != expected:
                raise ValueError(
                    f"{path} has {ann.num_classes} categories, the config says "
                    f"num_classes={expected}"
                )
            if self.hparams.check_files:
                check_frame_files(ann)
            self.splits[name] = ann
        return self.splits[name]

    def setup(self, stage: str | None = None) -> None:
        """Load the splits that ``stage`` needs."""
        hp = self.hparams
        if stage in ("fit", None):
            self.load_split("train")
        if stage in ("fit", "validate", None) and hp.val_ann is not None:
            self.load_split("val")
        if stage in ("test", "predict") and hp.test_ann is not None:
            self.load_split("test")

    def image_clip_dataset(self) -> ImageClipDataset:
        """The image pseudo-clips that ``image_clips`` configures, shaped like the video clips."""
        hp = self.hparams
        config = dict(hp.image_clips)
        source_name = config.pop("source")
        image_root = config.pop("image_root", None)
        category_map = config.pop("category_map", None)
        config.pop("ratio")
        train = self.load_split("train")
        source: ImageSource
        if source_name == "frames":
            source = VideoFrameSource(train)
        else:
            source = CocoImageSource(
                self._path(source_name), self._path(image_root), train, category_map=category_map
            )
        return ImageClipDataset(
            source,
            clip_length=hp.clip_length,
            max_size=tuple(hp.max_size),
            flip_prob=hp.flip_prob,
            motion=ClipMotion(**config),
        )

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        dataset = VISTrainDataset(
            self.load_split("train"),
            mode=hp.mode,
            max_size=tuple(hp.max_size),
            eps_train=hp.eps_train,
            clip_length=hp.clip_length,
            flip_prob=hp.flip_prob,
        )
        if hp.image_clips is not None:
            dataset = MixedClipDataset(dataset, self.image_clip_dataset(), hp.image_clips["ratio"])
        return DataLoader(
            dataset,
            batch_size=hp.batch_size,
            sampler=SeededSampler(len(dataset), shuffle=True, seed=hp.seed),
            num_workers=hp.num_workers,
            collate_fn=partial(collate_clips, size_divisor=hp.size_divisor),
            persistent_workers=hp.num_workers > 0,
            drop_last=True,
        )

    def eval_dataloader(self, split: str) -> DataLoader:
        """Frames of whole videos of ``split`` in temporal order, one frame per batch."""
        dataset = VISFrameDataset(self.load_split(split), max_size=tuple(self.hparams.max_size))
        return DataLoader(
            dataset,
            batch_size=1,
            sampler=VideoSequentialSampler(dataset),
            num_workers=self.hparams.num_workers,
            collate_fn=partial(collate_clips, size_divisor=self.hparams.size_divisor),
        )

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test" if self.hparams.test_ann is not None else "val")

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


def _check_image_clips(config: dict[str, Any], mode: str) -> None:
    """Reject an ``image_clips`` config that cannot work, before any data is read."""
    if mode != "clip":
        raise ValueError(f"image_clips (image pseudo-clips) needs mode='clip', got mode={mode!r}")
    unknown = sorted(set(config) - _IMAGE_CLIP_KEYS)
    if unknown:
        raise ValueError(f"image_clips: unknown keys {unknown}; known: {sorted(_IMAGE_CLIP_KEYS)}")
    missing = sorted({"source", "ratio"} - set(config))
    if missing:
        raise ValueError(f"image_clips: missing keys {missing}")
    if not 0.0 <= config["ratio"] < 1.0:
        raise ValueError(f"image_clips: ratio must be in [0, 1), got {config['ratio']}")
    ClipMotion(**{k: v for k, v in config.items() if k in _MOTION_KEYS})  # checks the bounds
    if config["source"] == "frames":
        if config.get("image_root") is not None or config.get("category_map") is not None:
            raise ValueError("image_clips: image_root and category_map apply to a COCO source only")
    elif config.get("image_root") is None:
        raise ValueError(f"image_clips: the COCO source {config['source']} needs image_root")

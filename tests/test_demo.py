"""``python -m ovisnet.demo``: raw video in, overlay video and track JSON out, every family."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image
from pycocotools import mask as mask_utils

from ovisnet.data.annotations import load_annotations
from ovisnet.demo import (
    FrameSource,
    TrackRenderer,
    VideoWriter,
    load_model,
    main,
    parse_args,
    video_tracks,
)
from ovisnet.train import CONFIG_DIR, build
from ovisnet.visualization import track_colors


def _frames(root: Path) -> tuple[list[np.ndarray], Path]:
    """The frames of the tiny set's first validation video and their folder."""
    ann = load_annotations(root / "annotations" / "valid.json", image_root=root / "JPEGImages")
    video = ann.videos[0]
    paths = [ann.frame_path(video, t) for t in range(video.length)]
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths], paths[0].parent


def _decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.fixture(scope="module")
def input_video(tiny_synthetic, tmp_path_factory) -> Path:
    """The first validation video of the tiny set as an mp4 (5 frames, 96x64, 5 fps)."""
    frames, _ = _frames(tiny_synthetic)
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    with VideoWriter(path, 96, 64, Fraction(5)) as writer:
        for frame in frames:
            writer.write(frame)
    return path


def _make_run(tmp_path: Path, experiment: str, overrides: list[str], categories: bool) -> Path:
    """A run folder as ``python -m ovisnet.train`` leaves it: config + a checkpoint of random
    weights (a Lightning checkpoint's ``state_dict``, with the categories training stores)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", *overrides])
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    cfg.paths.output_dir = str(run)
    torch.manual_seed(0)
    _, system = build(cfg)
    state = {"state_dict": system.state_dict(), "epoch": 0}
    if categories:
        root = Path(cfg.data.root)
        ann = load_annotations(root / cfg.data.train_ann)
        state["categories"] = [{"id": c.id, "name": c.name} for c in ann.categories]
    torch.save(state, run / "checkpoints" / "last.ckpt")
    return run / "checkpoints" / "last.ckpt"


FAMILIES = {
    # random weights: every detection kept so that tracks are drawn
    "cmasktrack_cpu": ("tiny_train_overrides", ["model.rcnn.score_thresh=0.0"]),
    "csipmask_cpu": ("tiny_sipmask_overrides", []),
    "stemseg_cpu": ("tiny_stemseg_overrides", []),
}


@pytest.mark.parametrize("experiment", sorted(FAMILIES))
def test_demo_writes_one_overlay_frame_per_input_frame_and_the_tracks(
    experiment, request, input_video, tiny_synthetic, tmp_path
):
    fixture, demo_overrides = FAMILIES[experiment]
    ckpt = _make_run(tmp_path, experiment, request.getfixturevalue(fixture), categories=True)
    out = tmp_path / "demo"
    main(
        [
            f"ckpt_path={ckpt}",
            f"input={input_video}",
            f"output={out}",
            "min_score=0",
            "device=cpu",
            *demo_overrides,
        ]
    )

    frames = _decode(out / "overlay.mp4")
    assert len(frames) == 5 and frames[0].shape == (64, 96, 3)
    with av.open(str(out / "overlay.mp4")) as container:
        assert container.streams.video[0].average_rate == 5
    summary = json.loads((out / "results.json").read_text())
    assert summary["video"] == {
        "input": str(input_video),
        "length": 5,
        "width": 96,
        "height": 64,
        "fps": 5.0,
    }
    names = {c["id"]: c["name"] for c in summary["categories"]}
    tracks = summary["tracks"]
    assert tracks, "random weights with every detection kept still write tracks"
    assert [t["track"] for t in tracks] == list(range(1, len(tracks) + 1))
    firsts = [t["first_frame"] for t in tracks]
    assert firsts == sorted(firsts)
    for t in tracks:
        assert len(t["segmentations"]) == 5 and t["category_name"] == names[t["category_id"]]
        present = [i for i, s in enumerate(t["segmentations"]) if s is not None]
        assert (present[0], present[-1]) == (t["first_frame"], t["last_frame"])
        assert mask_utils.decode(t["segmentations"][present[0]]).shape == (64, 96)
    # the overlay differs from the input where a track is drawn (lossy codec: a margin)
    raw = _decode(input_video)
    drawn = [i for i, s in enumerate(tracks[0]["segmentations"]) if s is not None]
    diff = np.abs(frames[drawn[0]].astype(int) - raw[drawn[0]].astype(int)).mean()
    assert diff > 2.0


def test_frame_folder_input_and_the_checkpoint_without_categories(
    tiny_synthetic, tiny_stemseg_overrides, tmp_path
):
    _, folder = _frames(tiny_synthetic)
    source = FrameSource(folder, fps=4)
    assert (source.length, source.width, source.height, source.fps) == (5, 96, 64, 4)
    ckpt = _make_run(tmp_path, "stemseg_cpu", tiny_stemseg_overrides, categories=False)
    # names from the run's training file; without it, numbered classes
    loaded = load_model(ckpt, device="cpu")
    ann = load_annotations(tiny_synthetic / "annotations" / "train.json")
    assert [c["name"] for c in loaded.categories] == [c.name for c in ann.categories]
    blind = load_model(ckpt, device="cpu", overrides=[f"data.root={tmp_path / 'gone'}"])
    assert [c["name"] for c in blind.categories] == [f"class_{k}" for k in range(1, 7)]

    out = tmp_path / "demo"
    main([f"ckpt_path={ckpt}", f"input={folder}", f"output={out}", "fps=4", "device=cpu"])
    assert len(_decode(out / "overlay.mp4")) == 5
    assert json.loads((out / "results.json").read_text())["video"]["fps"] == 4.0


def test_track_numbers_and_colours_stay_fixed_over_the_video():
    h, w = 40, 60

    def rle(y0: int, x0: int) -> dict:
        m = np.zeros((h, w), np.uint8)
        m[y0 : y0 + 12, x0 : x0 + 12] = 1
        r = mask_utils.encode(np.asfortranarray(m))
        return {"size": r["size"], "counts": r["counts"].decode()}

    results = [  # the predictor's entries, in no particular order
        {"video_id": 0, "category_id": 2, "score": 0.9, "segmentations": [None, rle(5, 30), None]},
        {
            "video_id": 0,
            "category_id": 1,
            "score": 0.6,
            "segmentations": [rle(20, 2), None, rle(22, 6)],
        },
        {"video_id": 0, "category_id": 1, "score": 0.8, "segmentations": [None, None, None]},
    ]
    tracks = video_tracks(results, [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    assert [(t["track"], t["category_name"], t["first_frame"]) for t in tracks] == [
        (1, "a", 0),
        (2, "b", 1),
    ]
    render = TrackRenderer(tracks, h, w, min_score=0.0)
    color = track_colors(3)[1]
    black = np.zeros((h, w, 3), np.uint8)
    for t, (y0, x0) in [(0, (20, 2)), (2, (22, 6))]:  # track 1's border, one colour throughout
        out = render(black, t)
        assert out[y0 + 11, x0 + 11].tolist() == color.tolist()  # bottom-right border pixel
    assert render(black, 1)[5 + 11, 30 + 11].tolist() == track_colors(3)[2].tolist()
    assert np.array_equal(TrackRenderer(tracks, h, w, min_score=0.95)(black, 0), black)


def test_errors_name_the_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FrameSource(tmp_path / "missing.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no frames"):
        FrameSource(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="expected a video"):
        FrameSource(tmp_path / "notes.txt")
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.new("RGB", (8, 6)).save(frames / "1.png")
    Image.new("RGB", (8, 8)).save(frames / "2.png")
    Image.new("RGB", (8, 6)).save(frames / "10.png")
    source = FrameSource(frames)
    assert [p.name for p in source.files] == ["1.png", "2.png", "10.png"]  # natural order
    with pytest.raises(ValueError, match=r"2\.png is 8x8"):
        list(source)
    with pytest.raises(SystemExit, match=r"input=\.\.\. is required"):
        parse_args(["ckpt_path=x.ckpt"])
    own, overrides = parse_args(["ckpt_path=x", "input=y", "min_score=0.5", "data.max_size=[8,8]"])
    assert own == {"ckpt_path": "x", "input": "y", "min_score": "0.5"}
    assert overrides == ["data.max_size=[8,8]"]

"""Baseline trackers (issue #16): IoUTracker+, DeepSORT and the offline SeqTracker on hand-built
detections (simple motion, crossings, occlusion gaps), the shared predictor / results writer, and
the `tracker=` config group in training (Hydra) and evaluation (saved run configs)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from ovisnet.errors import ConfigError
from ovisnet.eval import apply_group_overrides, load_config
from ovisnet.structures.instances import Instances
from ovisnet.tracking import (
    DeepSORTTracker,
    IoUTracker,
    MatchWeights,
    OnlineTracker,
    SeqTracker,
)
from ovisnet.tracking.deepsort import measurement_to_xyxy, xyxy_to_measurement
from ovisnet.tracking.predictor import VideoPredictor, masks_to_original
from ovisnet.train import CONFIG_DIR

SAME_ROW = 0  # class of every object below unless a test says otherwise


def frame(boxes, labels=None, scores=None) -> Instances:
    n = len(boxes)
    return Instances(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
        labels=torch.tensor([SAME_ROW] * n if labels is None else labels, dtype=torch.int64),
        track_ids=torch.full((n,), -1, dtype=torch.int64),
        scores=torch.tensor([0.9] * n if scores is None else scores, dtype=torch.float32),
    )


def embed(*axes: int, dim: int = 8) -> torch.Tensor:
    return 5.0 * torch.eye(dim)[list(axes)]


def box(x: float, y: float, size: float = 40.0) -> list[float]:
    return [x, y, x + size, y + size]


# -- scenes: per frame, the boxes of objects A, B (None: not detected in that frame) -------------
def simple(k: int) -> list:
    """A and B far apart, both moving right 10 px per frame (IoU 0.6 frame to frame)."""
    return [box(10 * k, 0), box(10 * k, 100)]


def passing(k: int) -> list:
    """A and B cross diagonally offset: each overlaps its own last box more than the other's."""
    return [box(8 * k, 0), box(80 - 8 * k, 20)]


def head_on(k: int) -> list:
    """A and B meet on one row at 10 px per frame each (frame 10: A's box overlaps B's last box
    by IoU 0.78, its own by 0.6), starting 195 px apart."""
    return [box(10 * k, 0), box(195 - 10 * k, 0)]


def gap(k: int) -> list:
    """A moves 2 px per frame and is not detected in frames 3 and 4; B waits far away."""
    return [None if k in (3, 4) else box(2 * k, 0, 20), box(200, 200, 20)]


def present(scene, k):
    boxes = scene(k)
    return [i for i, b in enumerate(boxes) if b is not None], [b for b in boxes if b is not None]


def run_online(tracker, scene, frames: int, embeddings=None) -> list[dict[int, int]]:
    """Per frame ``{object: track id}`` (objects by their index in the scene)."""
    out = []
    for k in range(frames):
        objects, boxes = present(scene, k)
        emb = embed(*objects) if embeddings is None else embeddings[: len(objects)]
        kept = tracker.step(frame(boxes), emb)
        assert len(kept) == len(boxes)  # nothing dropped in these scenes
        out.append(dict(zip(objects, kept.track_ids.tolist())))
    return out


def run_seq(tracker: SeqTracker, scene, frames: int, scores=None) -> list[dict[int, int]]:
    """Feed every frame, link, and return per frame ``{object: track id}`` of the kept ones."""
    for k in range(frames):
        objects, boxes = present(scene, k)
        s = None if scores is None else [scores[i] for i in objects]
        tracker.add(frame(boxes, scores=s), masks=objects)  # payload: the object index
    return [
        dict(zip(objects, kept.track_ids.tolist()))
        for kept, objects in tracker.link()  # payloads come back with the kept detections
    ]


def constant(ids: dict[int, int], frames: int, skip=()) -> list[dict[int, int]]:
    return [{o: i for o, i in ids.items() if (k, o) not in skip} for k in range(frames)]


GAP_SKIP = {(3, 0), (4, 0)}


# -- IoUTracker+ -----------------------------------------------------------------------------
def test_iou_tracker_simple_passing_and_gap():
    assert run_online(IoUTracker(), simple, 6) == constant({0: 0, 1: 1}, 6)
    assert run_online(IoUTracker(), passing, 10) == constant({0: 0, 1: 1}, 10)
    # A's memory box (frame 2) still overlaps its frame-5 box by IoU 14 / 26 >= 0.3
    assert run_online(IoUTracker(), gap, 8) == constant({0: 0, 1: 1}, 8, GAP_SKIP)
    # max_age as OnlineTracker's: A last matched 3 frames back is no candidate; a new track
    expired = run_online(IoUTracker(max_age=2), gap, 8)
    assert [ids.get(0) for ids in expired] == [0, 0, 0, None, None, 2, 2, 2]


def test_iou_tracker_follows_the_larger_overlap_in_a_head_on_crossing():
    # no appearance: at frame 10 each box overlaps the other's last box more (0.78 vs 0.6), so
    # the identities swap (the case DeepSORT's appearance and motion cues resolve, below)
    ids = run_online(IoUTracker(), head_on, 14, embeddings=torch.ones(2, 8))
    assert ids[:10] == constant({0: 0, 1: 1}, 10)
    assert ids[10:] == constant({0: 1, 1: 0}, 4)


def test_iou_tracker_gates_at_min_iou_and_keeps_eq3_rules():
    t = IoUTracker()
    t.step(frame([box(0, 0)]), None)
    # IoU 10 / 70 = 0.14 < 0.3: a new track, where MaskTrack's tracker (β·IoU > 0) would join
    out = t.step(frame([box(30, 0)]), None)
    assert out.track_ids.tolist() == [1]
    mt = OnlineTracker(MatchWeights())
    mt.step(frame([box(0, 0)]), torch.zeros(1, 0))
    assert mt.step(frame([box(30, 0)]), torch.zeros(1, 0)).track_ids.tolist() == [0]
    # another class at the same place: γ makes "new" win (the category cue)
    t = IoUTracker()
    t.step(frame([box(0, 0)], labels=[0]), None)
    assert t.step(frame([box(0, 0)], labels=[1]), None).track_ids.tolist() == [1]
    # two claimants of one track: the more confident wins, the other is dropped (as MaskTrack)
    t = IoUTracker()
    t.step(frame([box(0, 0)]), None)
    out = t.step(frame([box(2, 0), box(0, 2)], scores=[0.5, 0.8]), None)
    assert out.track_ids.tolist() == [0] and out.scores.tolist() == [pytest.approx(0.8)]
    assert t.memory.embeddings.shape == (1, 0)  # embeddings are not kept
    # the score values are Eq. 3 without log p: α log s + β IoU + γ δ (new: α log s + γ)
    v = t.scores(frame([box(0, 0)], scores=[0.5]), torch.zeros(1, 0), torch.tensor([0]))
    iou = 38 * 40 / (40 * 40 * 2 - 38 * 40)  # against the memory box (0, 2)
    expected = [np.log(0.5) + 10.0, np.log(0.5) + 2.0 * iou + 10.0]
    torch.testing.assert_close(v, torch.tensor([expected], dtype=torch.float32))


# -- DeepSORT -------------------------------------------------------------------------------
def test_deepsort_simple_and_passing():
    assert run_online(DeepSORTTracker(), simple, 6) == constant({0: 0, 1: 1}, 6)
    assert run_online(DeepSORTTracker(), passing, 10) == constant({0: 0, 1: 1}, 10)


def test_deepsort_head_on_crossing_keeps_ids_by_appearance_or_by_motion():
    assert run_online(DeepSORTTracker(), head_on, 14) == constant({0: 0, 1: 1}, 14)
    # identical embeddings: only the Kalman prediction (λ = 1) tells them apart
    same_look = torch.ones(2, 8)
    ids = run_online(DeepSORTTracker(motion_weight=1.0), head_on, 14, embeddings=same_look)
    assert ids == constant({0: 0, 1: 1}, 14)


def moving_gap(k: int) -> list:
    """A moves 5 px per frame, hidden in frames 6 and 7, back where it would be in frame 8."""
    return [None if k in (6, 7) else box(5 * k, 0), box(300, 300)]


def test_deepsort_bridges_an_occlusion_gap_until_max_age():
    skip = {(6, 0), (7, 0)}
    assert run_online(DeepSORTTracker(), moving_gap, 11) == constant({0: 0, 1: 1}, 11, skip)
    assert run_online(DeepSORTTracker(max_age=3), moving_gap, 11) == constant(
        {0: 0, 1: 1}, 11, skip
    )
    # max_age 2: in frame 8 A's last match is 3 frames back, it was deleted: a new id
    ids = run_online(DeepSORTTracker(max_age=2), moving_gap, 11)
    assert [d.get(0) for d in ids] == [0] * 6 + [None, None, 2, 2, 2]
    tracker = DeepSORTTracker(max_age=2)
    run_online(tracker, moving_gap, 8)
    assert [t.id for t in tracker.tracks] == [1]  # A deleted after frame 7


def test_deepsort_gates_appearance_class_and_motion():
    # same place, other look: the cosine gate; the IoU stage then matches the box (seen last
    # frame), as DeepSORT's second stage does
    t = DeepSORTTracker()
    t.step(frame([box(0, 0)]), embed(0))
    assert t.step(frame([box(0, 0)]), embed(1)).track_ids.tolist() == [0]
    # other class: a new track in both stages (same_label), but not with same_label off
    for same_label, expected in ((True, [1]), (False, [0])):
        t = DeepSORTTracker(same_label=same_label)
        t.step(frame([box(0, 0)], labels=[0]), embed(0))
        assert t.step(frame([box(0, 0)], labels=[1]), embed(0)).track_ids.tolist() == expected
    # same look far away: outside the Mahalanobis gate, and no IoU: a new track
    t = DeepSORTTracker()
    t.step(frame([box(0, 0)]), embed(0))
    assert t.step(frame([box(200, 0)]), embed(0)).track_ids.tolist() == [1]
    assert t.gate == pytest.approx(9.4877, abs=1e-4)  # χ²(4) at 0.95


def test_deepsort_tentative_tracks_and_gallery_budget():
    # n_init 3: a track seen once dies at its first miss, one seen three times survives it
    t = DeepSORTTracker(n_init=3)
    t.step(frame([box(0, 0), box(200, 200)]), embed(0, 1))  # A and B born
    t.step(frame([box(10, 0)]), embed(0))  # B missed while tentative
    t.step(frame([box(20, 0)]), embed(0))  # A's third detection: confirmed
    assert [tr.id for tr in t.tracks] == [0]  # track 1 (seen once, missed in frame 1) deleted
    t.step(frame([]), torch.zeros(0, 8))
    assert [tr.id for tr in t.tracks] == [0] and t.tracks[0].hits == 3
    # a tentative track is matched by the IoU stage only (no cascade): a new look still joins
    t = DeepSORTTracker(n_init=3)
    t.step(frame([box(0, 0)]), embed(0))
    assert t.step(frame([box(2, 0)]), embed(1)).track_ids.tolist() == [0]
    # the gallery keeps the last `budget` embeddings
    t = DeepSORTTracker(budget=2)
    for k in range(4):
        t.step(frame([box(0, 0)]), embed(k % 2))
    assert t.tracks[0].gallery.shape == (2, 8)
    np.testing.assert_allclose(t.tracks[0].gallery, np.eye(8)[[0, 1]])


def test_deepsort_box_state_round_trip_and_empty_frames():
    boxes = np.array([[10.0, 20.0, 50.0, 100.0]])
    z = xyxy_to_measurement(boxes)
    np.testing.assert_allclose(z, [[30.0, 60.0, 0.5, 80.0]])
    np.testing.assert_allclose(measurement_to_xyxy(z), boxes)
    t = DeepSORTTracker(max_age=2)
    t.step(frame([box(0, 0)]), embed(0))
    empty = t.step(frame([]), torch.zeros(0, 8))
    assert len(empty) == 0 and len(t.tracks) == 1
    t.step(frame([]), torch.zeros(0, 8))
    assert t.tracks == []  # two frames without a match: gone


# -- SeqTracker -----------------------------------------------------------------------------
def test_seq_tracker_simple_and_passing():
    # both paths have 10 detections; B's scores are higher, so its path is extracted first
    assert run_seq(SeqTracker(), simple, 10, scores=[0.6, 0.9]) == constant({0: 1, 1: 0}, 10)
    assert run_seq(SeqTracker(), passing, 10, scores=[0.9, 0.6]) == constant({0: 0, 1: 1}, 10)


def test_seq_tracker_head_on_crossing_follows_the_larger_overlap():
    # as IoUTracker+: the max-sum path takes the 0.78 link; with equal values the path ending
    # at the lower detection index (A in the last frame) comes first
    ids = run_seq(SeqTracker(min_length=3), head_on, 14)
    assert ids[:10] == constant({0: 1, 1: 0}, 10)
    assert ids[10:] == constant({0: 0, 1: 1}, 4)


def test_seq_tracker_occlusion_gap_breaks_or_bridges_with_max_gap():
    # consecutive links only: A's two pieces (3 detections each) are separate tracks, found
    # after B's path (8 detections); the earlier-ending piece first on equal values
    ids = run_seq(SeqTracker(min_length=3), gap, 8)
    assert ids == [{0: 1, 1: 0}] * 3 + [{1: 0}] * 2 + [{0: 2, 1: 0}] * 3
    ids = run_seq(SeqTracker(min_length=3, max_gap=2), gap, 8)
    assert ids == constant({0: 1, 1: 0}, 8, GAP_SKIP)
    # min_length 4: A's 3-detection pieces are not tracks and are dropped
    ids = run_seq(SeqTracker(min_length=4), gap, 8)
    assert ids == constant({1: 0}, 8)


def test_seq_tracker_length_cap_suppression_and_rle_only_buffer():
    # a 5-frame video: min_length 8 is capped at 5, so a whole-video object is still a track
    assert run_seq(SeqTracker(), simple, 5) == constant({0: 0, 1: 1}, 5)

    # a lower-scored duplicate of A: its own path without suppression, removed with it
    def duplicate(k):
        return [box(10 * k, 0), box(10 * k + 2, 0)]

    scores = [0.9, 0.5]
    ids = run_seq(SeqTracker(min_length=3), duplicate, 5, scores)
    assert ids == constant({0: 0, 1: 1}, 5)
    ids = run_seq(SeqTracker(min_length=3, suppress_iou=0.5), duplicate, 5, scores)
    assert ids == constant({0: 0}, 5)
    # what is buffered: boxes, scores and labels on the CPU and the payloads, never masks
    t = SeqTracker()
    f = replace(frame([box(0, 0)]), masks=torch.ones(1, 64, 64, dtype=torch.bool))
    t.add(f, [{"size": [64, 64], "counts": "x"}])
    assert t.frames[0].masks is None and t.masks[0] == [{"size": [64, 64], "counts": "x"}]
    with pytest.raises(ValueError, match="masks for 1 detections"):
        t.add(frame([box(0, 0)]), [])


# -- through the shared predictor and results writer -----------------------------------------
class SceneModel:
    """A stand-in detector: frame k's detections are the scene's boxes with box-filling masks;
    the embedding of an object is the one-hot of its index (its box's row)."""

    calibration = None

    def __init__(self, scene, size=(256, 256)) -> None:
        self.scene, self.size, self.frame = scene, size, 0

    def extract_features(self, images, image_sizes=None):
        self.frame += 1
        return {"k": torch.tensor([self.frame - 1])}

    def detect(self, query_feats, image_sizes, reference_feats=None):
        objects, boxes = present(self.scene, int(query_feats["k"]))
        dets = frame(boxes, scores=[0.9 - 0.1 * o for o in objects])
        masks = torch.zeros(len(boxes), *self.size, dtype=torch.bool)
        for i, (x1, y1, x2, y2) in enumerate(dets.boxes.int().tolist()):
            masks[i, y1:y2, x1:x2] = True
        return [replace(dets, masks=masks)]

    def embed(self, features, boxes):
        return [embed(*[int(b[1] // 100) for b in boxes[0].tolist()])]


def paste(instances, *, image_size, original_size):
    masks = masks_to_original(instances.masks, image_size, original_size)
    return replace(instances, masks=masks)


@pytest.mark.parametrize(
    "tracker",
    [
        OnlineTracker(MatchWeights()),
        IoUTracker(),
        DeepSORTTracker(),
        SeqTracker(min_length=3, max_gap=2),
    ],
    ids=["masktrack", "iou", "deepsort", "seq"],
)
def test_every_tracker_writes_video_results_through_the_predictor(tracker):
    frames = 8
    predictor = VideoPredictor(
        SceneModel(gap),
        tracker,
        paste,
        video_id=7,
        length=frames,
        image_size=(256, 256),
        original_size=(128, 128),
        category_ids=[3],
    )
    for _ in range(frames):
        predictor.push(torch.zeros(3, 256, 256, dtype=torch.uint8))
    results = predictor.finalize()
    assert [r["video_id"] for r in results] == [7, 7] and {r["category_id"] for r in results} == {3}
    a, b = results  # in track id order
    if isinstance(tracker, SeqTracker):  # B's 8-detection path is extracted first
        a, b = b, a
        assert all(isinstance(rle["counts"], str) for kept in tracker.masks for rle in kept)
        assert all(f.masks is None for f in tracker.frames)  # only RLEs were buffered
    assert [s is None for s in a["segmentations"]] == [k in (3, 4) for k in range(frames)]
    assert all(s is not None and s["size"] == [128, 128] for s in b["segmentations"])
    assert a["score"] == pytest.approx(0.9) and b["score"] == pytest.approx(0.8)


# -- configuration: `tracker=` in training (Hydra group) and evaluation (saved config) ---------
def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["paths.output_dir=unused", *overrides])


EXPECTED = {
    "masktrack": OnlineTracker,
    "iou": IoUTracker,
    "deepsort": DeepSORTTracker,
    "seq": SeqTracker,
}


@pytest.mark.parametrize("name", [None, *EXPECTED])
def test_tracker_group_builds_the_system_tracker(name):
    cfg = _compose([] if name is None else [f"tracker={name}"])
    system = instantiate(cfg.system, model=nn.Linear(1, 1), _convert_="all")
    assert type(system.tracker_factory()) is EXPECTED[name or "masktrack"]


def test_presets_tune_the_chosen_tracker_and_deepsort_names_the_fix():
    cfg = _compose(["experiment=cmasktrack_cpu", "tracker=iou", "system.tracker.min_iou=0.5"])
    tracker = instantiate(cfg.system.tracker)()
    assert type(tracker) is IoUTracker and tracker.weights.iou == 5.0 and tracker.min_iou == 0.5
    cfg = _compose(["experiment=stemseg", "tracker=iou"])  # STEm-Seg keeps no tracker
    assert cfg.system.tracker is None
    # the preset's β reaches deepsort's node, which has no `weights`: a message names the fix
    cfg = _compose(["experiment=cmasktrack_cpu", "tracker=deepsort"])
    with pytest.raises(Exception, match=r"~system\.tracker\.weights") as info:
        instantiate(cfg.system, model=nn.Linear(1, 1), _convert_="all")
    assert isinstance(info.value, ConfigError) or isinstance(info.value.__cause__, ConfigError)
    cfg = _compose(["experiment=cmasktrack_cpu", "tracker=deepsort", "~system.tracker.weights"])
    system = instantiate(cfg.system, model=nn.Linear(1, 1), _convert_="all")
    assert type(system.tracker_factory()) is DeepSORTTracker


def test_eval_tracker_override_replaces_the_saved_runs_tracker(tmp_path):
    saved = tmp_path / "config.yaml"
    OmegaConf.save(_compose(["experiment=cmasktrack_cpu"]), saved)
    # order-independent: the group first, then the dot-list overrides
    cfg = load_config(
        saved, ["system.tracker.max_age=3", "tracker=deepsort"], tmp_path / "out", resolve=False
    )
    assert cfg.system.tracker._target_.endswith("DeepSORTTracker")
    assert "weights" not in cfg.system.tracker  # replaced, not merged
    assert cfg.system.tracker.max_age == 3
    OmegaConf.resolve(cfg)
    system = instantiate(cfg.system, model=nn.Linear(1, 1), _convert_="all")
    assert type(system.tracker_factory()) is DeepSORTTracker
    for name, cls in EXPECTED.items():
        out, rest = apply_group_overrides(OmegaConf.load(saved), [f"tracker={name}", "a=1"])
        assert type(instantiate(out.system.tracker)()) is cls and rest == ["a=1"]
    with pytest.raises(ConfigError, match="available: deepsort, iou, masktrack, seq"):
        apply_group_overrides(OmegaConf.load(saved), ["tracker=sort"])
    stemseg = tmp_path / "stemseg.yaml"
    OmegaConf.save(_compose(["experiment=stemseg"]), stemseg)
    with pytest.raises(ConfigError, match="no tracker"):
        apply_group_overrides(OmegaConf.load(stemseg), ["tracker=iou"])


def test_video_of_is_what_the_predictor_needs():
    # the system builds every tracker's predictor the same way (VISSystem.make_predictor)
    batch = SimpleNamespace(
        video_ids=[3], video_lengths=[2], image_sizes=[(64, 64)], original_sizes=[(32, 32)]
    )
    p = VideoPredictor.for_video(batch, SceneModel(simple), SeqTracker(), paste, [1])
    assert p.offline and p.length == 2 and p.original_size == (32, 32)


# -- DeepSORT's motion noise fitted to a training split --------------------------------------
def _track(frames: int, jump_every: int = 0) -> np.ndarray:
    """A 20x40 box moving 2 px per frame; with ``jump_every`` its visible part loses its left
    three quarters every ``jump_every``-th frame (an occluder passing): the aspect ratio jumps."""
    boxes = np.array([[10.0 + 2 * t, 20.0, 30.0 + 2 * t, 60.0] for t in range(frames)])
    if jump_every:
        boxes[jump_every - 1 :: jump_every, 0] += 15.0
    return boxes


def test_fitted_deepsort_noise_keeps_deepsorts_for_smooth_motion_and_widens_it_for_jumps():
    from ovisnet.tracking.deepsort import NOISE_SCALES, fit_noise_scale, gate_coverage

    smooth = [_track(12), _track(12) + 50.0]
    assert gate_coverage(smooth, 1.0) == 1.0
    assert fit_noise_scale(smooth) == (1.0, {1.0: 1.0})
    hidden = _track(12)
    hidden[4:7] = np.nan  # a gap: the gate is checked at the re-detection after it
    assert gate_coverage([hidden], 1.0) == 1.0

    jumpy = [_track(24, jump_every=3)]
    scale, coverages = fit_noise_scale(jumpy)
    assert coverages[1.0] < 0.95 <= coverages[scale] and scale > 1.0
    assert list(coverages) == [s for s in NOISE_SCALES if s <= scale]  # smallest first, stops
    assert all(a <= b for a, b in zip(coverages.values(), list(coverages.values())[1:]))
    with pytest.raises(ValueError, match="two frames"):
        gate_coverage([np.full((5, 4), np.nan)], 1.0)


def test_fitted_noise_from_an_annotation_file_and_its_command(tiny_synthetic, capsys):
    import json

    from ovisnet.tracking.deepsort import NOISE_SCALES, annotation_tracks, noise_overrides
    from ovisnet.tracking.fit_deepsort import main

    path = tiny_synthetic / "annotations" / "train.json"
    raw = json.loads(path.read_text())
    tracks = annotation_tracks(str(path))
    assert len(tracks) == len(raw["annotations"])
    first = raw["annotations"][0]
    for t, box in enumerate(first["bboxes"]):
        if box is None:
            assert np.isnan(tracks[0][t]).all()
        else:
            x, y, w, h = box
            assert tracks[0][t] == pytest.approx([x, y, x + w, y + h])
    main([str(path)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    scale = next(
        s for s in NOISE_SCALES if last.startswith(f"system.tracker.std_position={s / 20:g} ")
    )
    assert last == " ".join(f"system.tracker.{k}={v:g}" for k, v in noise_overrides(scale).items())
    assert noise_overrides(1.0) == {
        "std_position": 0.05,
        "std_velocity": 0.00625,
        "std_aspect": 0.1,
    }

"""DeepSORT over the model's detections and track embeddings (a baseline; Wojke et al. 2017).

Each track carries a constant-velocity Kalman filter (``filterpy.kalman.KalmanFilter``) on the
state ``[cx, cy, a, h, vx, vy, va, vh]`` (box centre, aspect ratio w / h, height and their
velocities per frame), observed through ``[cx, cy, a, h]``, and a gallery of the L2-normalised
embeddings of its last ``budget`` detections (the model's track head, ``model.embed``). Noise
scales with the box height as in DeepSORT's reference setting: position noise
``std_position · h``, velocity noise ``std_velocity · h``, aspect-ratio measurement noise
``std_aspect`` (its process noise a tenth of it).

Those values were set for pedestrians. Boxes of the visible part of occluded objects jump when an
occluder passes: on the synthetic training split, DeepSORT's 0.95 gate admits only 55.5 % of the
true re-detections at DeepSORT's noise. :func:`fit_noise_scale` finds the smallest multiple of
the noise whose gate admits 95 % of a training split's true re-detections (``python -m
ovisnet.tracking.fit_deepsort TRAIN.json`` prints the overrides).

Per frame (:meth:`DeepSORTTracker.step`):

1. every track's filter predicts one frame ahead (also on frames without detections);
2. *gating*: a detection is admissible for a track only if its squared Mahalanobis distance to
   the predicted measurement is within the ``gate_probability`` quantile of χ² with 4 degrees
   of freedom (9.49 at 0.95), its smallest cosine distance to the track's gallery is at most
   ``max_cosine_distance``, and (``same_label``, the VIS addition: DeepSORT is single-class)
   it has the track's class (the class of the track's first detection);
3. *matching cascade*: tracks last matched 1, 2, … ``max_age`` frames back are matched in that
   order (the most recently seen first),
   each level by Hungarian assignment (``scipy.optimize.linear_sum_assignment``) on the cost
   ``λ · d_mahalanobis / gate + (1 - λ) · d_cosine`` (``motion_weight`` λ, 0 in DeepSORT) over
   the admissible pairs;
4. *IoU stage*: the remaining detections against the remaining tracks seen in the previous
   frame, Hungarian on ``1 - IoU`` with the predicted box, admissible at ``1 - IoU <=
   max_iou_distance`` (and the same class);
5. matched tracks are corrected with their detection (Kalman update) and add its embedding.

Birth and death: every detection left unmatched starts a new track, output from its first
frame on (a VIS result counts every frame a track was output, so nothing is withheld), and by
default **confirmed at birth** (``n_init = 1``: the detections are already score-thresholded).
With ``n_init > 1`` a track stays tentative until its ``n_init``-th detection, as in DeepSORT: it
is matched only by the IoU stage and deleted at its first miss (its outputs stay). Ids count up
from 0 and are never reused. A confirmed track can be matched while its last match is at most
``max_age`` frames back (the cascade's depth; as ``OnlineTracker``'s ``max_age``, it bridges
gaps of up to ``max_age - 1`` missed frames) and is deleted as soon as it can no longer be.
Every detection is output with a track id (no detection is dropped).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from filterpy.kalman import KalmanFilter
from scipy.optimize import linear_sum_assignment
from scipy.stats import chi2
from torch import Tensor
from torchvision.ops import box_iou

from ovisnet.structures.instances import Instances

# cost of an inadmissible pair in the assignment problem (all admissible costs are <= 1)
_INFEASIBLE = 1e5


def xyxy_to_measurement(boxes: np.ndarray) -> np.ndarray:
    """``(N, 4)`` xyxy boxes → ``(N, 4)`` Kalman measurements ``[cx, cy, w / h, h]``."""
    w = boxes[:, 2] - boxes[:, 0]
    h = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-6)
    return np.stack([boxes[:, 0] + w / 2, boxes[:, 1] + h / 2, w / h, h], axis=1)


def measurement_to_xyxy(z: np.ndarray) -> np.ndarray:
    """``(N, 4)`` ``[cx, cy, a, h]`` → ``(N, 4)`` xyxy (negative sizes clamped to 0)."""
    h = np.maximum(z[:, 3], 0.0)
    w = np.maximum(z[:, 2], 0.0) * h
    return np.stack([z[:, 0] - w / 2, z[:, 1] - h / 2, z[:, 0] + w / 2, z[:, 1] + h / 2], axis=1)


@dataclass
class _Track:
    """One track: id, class (of its first detection), filter, embedding gallery, counters."""

    id: int
    label: int
    kf: KalmanFilter
    gallery: np.ndarray  # (k, D) L2-normalised embeddings of the last k <= budget matches
    hits: int = 1  # detections matched so far (the birth included)
    time_since_update: int = 0


class DeepSORTTracker:
    """Kalman-predicted, appearance-gated Hungarian tracking (one instance per video).

    Args:
        max_cosine_distance: appearance gate on ``1 - cos`` (DeepSORT: 0.2).
        max_iou_distance: gate of the IoU stage on ``1 - IoU`` (DeepSORT: 0.7).
        max_age: a track whose last match is more than this many frames back is deleted (the
            matching cascade's depth; DeepSORT: 30).
        n_init: detections after which a track is confirmed (default 1: at birth). A younger
            (tentative) track is matched only by the IoU stage and deleted at its first miss,
            as in DeepSORT (whose default is 3); its outputs are never withheld.
        budget: embeddings kept per track (DeepSORT: 100).
        gate_probability: χ² quantile of the Mahalanobis gate (DeepSORT: 0.95).
        motion_weight: λ, share of the normalised Mahalanobis distance in the cascade's cost
            (DeepSORT: 0, appearance only; the gate still applies).
        same_label: a detection may only join a track of its class.
        std_position: position noise per pixel of box height (DeepSORT: 1 / 20).
        std_velocity: velocity noise per pixel of box height (DeepSORT: 1 / 160).
        std_aspect: measurement noise of the aspect ratio w / h (DeepSORT: 0.1); its process
            noise is a tenth of it and that of its velocity a ten-thousandth, as in DeepSORT.
    """

    def __init__(
        self,
        *,
        max_cosine_distance: float = 0.2,
        max_iou_distance: float = 0.7,
        max_age: int = 30,
        n_init: int = 1,
        budget: int = 100,
        gate_probability: float = 0.95,
        motion_weight: float = 0.0,
        same_label: bool = True,
        std_position: float = 1.0 / 20.0,
        std_velocity: float = 1.0 / 160.0,
        std_aspect: float = 0.1,
    ) -> None:
        if max_age < 1 or budget < 1 or n_init < 1:
            raise ValueError(
                f"max_age, n_init and budget must be >= 1, got {max_age}, {n_init}, {budget}"
            )
        if not 0.0 <= motion_weight <= 1.0:
            raise ValueError(f"motion_weight must be in [0, 1], got {motion_weight}")
        if not 0.0 < gate_probability < 1.0:
            raise ValueError(f"gate_probability must be in (0, 1), got {gate_probability}")
        self.max_cosine_distance = max_cosine_distance
        self.max_iou_distance = max_iou_distance
        self.max_age = max_age
        self.n_init = n_init
        self.budget = budget
        self.gate = float(chi2.ppf(gate_probability, df=4))
        self.motion_weight = motion_weight
        self.same_label = same_label
        self.std_position = std_position
        self.std_velocity = std_velocity
        self.std_aspect = std_aspect
        self.tracks: list[_Track] = []
        self.next_id = 0
        self.frame = 0  # index of the next frame to be fed to ``step``

    # -- Kalman filter -------------------------------------------------------------------------
    def _noise(self, h: float, position: float, velocity: float) -> np.ndarray:
        p, v = position * self.std_position * h, velocity * self.std_velocity * h
        a = self.std_aspect
        return np.square([p, p, a / 10, p, v, v, a / 1e4, v])

    def _new_filter(self, z: np.ndarray) -> KalmanFilter:
        kf = KalmanFilter(dim_x=8, dim_z=4)
        kf.F = np.eye(8)
        kf.F[:4, 4:] = np.eye(4)  # x_{t+1} = x_t + v_t (one frame)
        kf.H = np.eye(4, 8)
        kf.x = np.concatenate([z, np.zeros(4)])[:, None]
        kf.P = np.diag(self._noise(z[3], 2.0, 10.0))
        return kf

    def _measurement_noise(self, h: float) -> np.ndarray:
        p = self.std_position * h
        return np.diag(np.square([p, p, self.std_aspect, p]))

    @staticmethod
    def _height(kf: KalmanFilter) -> float:
        return max(float(kf.x[3, 0]), 1e-3)

    def predicted_boxes(self, tracks: list[int] | None = None) -> np.ndarray:
        """``(T, 4)`` xyxy boxes of the current state means of ``tracks`` (indices; all)."""
        chosen = self.tracks if tracks is None else [self.tracks[k] for k in tracks]
        if not chosen:
            return np.zeros((0, 4))
        return measurement_to_xyxy(np.stack([t.kf.x[:4, 0] for t in chosen]))

    def mahalanobis(self, z: np.ndarray) -> np.ndarray:
        """``(T, N)`` squared Mahalanobis distances of measurements ``z`` ``(N, 4)`` to each
        track's predicted measurement, under its innovation covariance ``H P Hᵀ + R``."""
        mean = np.stack([t.kf.x[:4, 0] for t in self.tracks])  # H x: the first four states
        cov = np.stack(
            [t.kf.P[:4, :4] + self._measurement_noise(self._height(t.kf)) for t in self.tracks]
        )
        diff = z[None, :, :] - mean[:, None, :]  # (T, N, 4)
        solved = np.linalg.solve(cov, diff.transpose(0, 2, 1))  # (T, 4, N)
        return np.einsum("tnk,tkn->tn", diff, solved)

    # -- association ---------------------------------------------------------------------------
    def _cosine_distance(self, features: np.ndarray) -> np.ndarray:
        """``(T, N)`` smallest ``1 - cos`` of each detection to each track's gallery."""
        if features.shape[1] == 0:  # no appearance cue
            return np.zeros((len(self.tracks), len(features)))
        sizes = [len(t.gallery) for t in self.tracks]
        similarity = np.concatenate([t.gallery for t in self.tracks]) @ features.T
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        return 1.0 - np.maximum.reduceat(similarity, starts, axis=0)

    def _cascade_cost(self, z: np.ndarray, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """``(T, N)`` gated cost of the matching cascade (``_INFEASIBLE`` where gated out)."""
        maha = self.mahalanobis(z)
        cosine = self._cosine_distance(features)
        cost = self.motion_weight * maha / self.gate + (1 - self.motion_weight) * cosine
        ok = (maha <= self.gate) & (cosine <= self.max_cosine_distance)
        if self.same_label:
            ok &= self._track_labels()[:, None] == labels[None, :]
        return np.where(ok, cost, _INFEASIBLE)

    def _track_labels(self) -> np.ndarray:
        return np.array([t.label for t in self.tracks], dtype=np.int64)

    @staticmethod
    def _assign(sub: np.ndarray, rows: list[int], cols: list[int], limit: float) -> list:
        """Hungarian assignment on ``sub`` (the ``rows`` × ``cols`` costs); pairs above
        ``limit`` are dropped. Returns ``(row, col)`` pairs."""
        if not rows or not cols:
            return []
        r, c = linear_sum_assignment(sub)
        return [(rows[i], cols[j]) for i, j in zip(r, c, strict=True) if sub[i, j] <= limit]

    @torch.no_grad()
    def step(self, detections: Instances, embeddings: Tensor) -> Instances:
        """Predict, associate, update, start and delete tracks for one frame.

        Args:
            detections: the frame's detections (boxes ``(N, 4)`` xyxy in the same coordinates
                for the whole video, ``scores`` set, labels); masks are carried along.
            embeddings: ``(N, D)`` track embeddings of the detections (``D`` may be 0: no
                appearance cue, the cosine distance is then 0).

        Returns:
            Every detection, in input order, with ``track_ids`` ``(N,)`` int64 set.
        """
        if detections.scores is None:
            raise ValueError("the tracker needs detection scores (use 1 for ground truth)")
        if embeddings.ndim != 2 or embeddings.shape[0] != len(detections):
            raise ValueError(
                f"embeddings {tuple(embeddings.shape)} must be (N, D) with N = {len(detections)}"
            )
        self.frame += 1
        for track in self.tracks:
            track.kf.predict(Q=np.diag(self._noise(self._height(track.kf), 1.0, 1.0)))
            track.time_since_update += 1

        n = len(detections)
        boxes = detections.boxes.detach().cpu().double()
        z = xyxy_to_measurement(boxes.numpy())
        features = torch.nn.functional.normalize(embeddings.detach().cpu().float(), dim=1)
        features = features.numpy()
        labels = detections.labels.cpu().numpy()
        matches: list[tuple[int, int]] = []
        unmatched = list(range(n))
        if self.tracks and n:
            cost = self._cascade_cost(z, features, labels)
            age = np.array([t.time_since_update for t in self.tracks])
            confirmed = np.array([t.hits >= self.n_init for t in self.tracks])
            for level_age in range(1, self.max_age + 1):
                level = np.flatnonzero((age == level_age) & confirmed).tolist()
                if not level or not unmatched:
                    continue
                sub = cost[np.ix_(level, unmatched)]
                found = self._assign(sub, level, unmatched, _INFEASIBLE / 2)
                matches += found
                taken_dets = {j for _, j in found}
                unmatched = [i for i in unmatched if i not in taken_dets]
            taken = {k for k, _ in matches}
            recent = [
                k for k, t in enumerate(self.tracks) if t.time_since_update == 1 and k not in taken
            ]
            if recent and unmatched:
                predicted = torch.from_numpy(self.predicted_boxes(recent))
                iou_cost = 1.0 - box_iou(predicted, boxes[unmatched]).numpy()
                if self.same_label:
                    other = self._track_labels()[recent][:, None] != labels[unmatched][None, :]
                    iou_cost[other] = _INFEASIBLE
                found = self._assign(iou_cost, recent, unmatched, self.max_iou_distance)
                matches += found
                taken_dets = {j for _, j in found}
                unmatched = [i for i in unmatched if i not in taken_dets]

        ids = np.full(n, -1, dtype=np.int64)
        for k, i in matches:
            track = self.tracks[k]
            track.kf.update(z[i][:, None], R=self._measurement_noise(self._height(track.kf)))
            older = track.gallery[max(0, len(track.gallery) - self.budget + 1) :]
            track.gallery = np.concatenate([older, features[i : i + 1]])
            track.hits += 1
            track.time_since_update = 0
            ids[i] = track.id
        for i in unmatched:
            kf = self._new_filter(z[i])
            self.tracks.append(_Track(self.next_id, int(labels[i]), kf, features[i : i + 1]))
            ids[i] = self.next_id
            self.next_id += 1
        # delete a tentative track at its first miss, and a track missed now with
        # time_since_update == max_age (in the next frame it would be beyond the cascade)
        self.tracks = [
            t
            for t in self.tracks
            if t.time_since_update == 0
            or (t.hits >= self.n_init and t.time_since_update < self.max_age)
        ]
        track_ids = torch.from_numpy(ids).to(detections.track_ids.device)
        return replace(detections, track_ids=track_ids)


# -- fitting the motion noise to a dataset -----------------------------------------------------
NOISE_SCALES = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)
"""Multiples of DeepSORT's noise (``std_position`` 1/20, ``std_velocity`` 1/160, ``std_aspect``
0.1, all scaled together) that :func:`fit_noise_scale` tries, smallest first."""


def gate_coverage(tracks: list[np.ndarray], scale: float, gate_probability: float = 0.95) -> float:
    """Share of the true re-detections of ``tracks`` that DeepSORT's motion gate admits.

    Each track is ``(T, 4)`` xyxy boxes per frame, NaN where the object is not visible. A
    Kalman filter with the noise ``scale`` times DeepSORT's runs along the track exactly as
    :class:`DeepSORTTracker` runs it (born at the first box, predicted every frame, updated at
    every box); at every box after the first it records whether the squared Mahalanobis distance
    to the prediction is within the gate, also after frames where the object was hidden.
    """
    tracker = DeepSORTTracker(gate_probability=gate_probability, **noise_overrides(scale))
    inside = total = 0
    for boxes in tracks:
        visible = ~np.isnan(boxes).any(axis=1)
        frames = np.flatnonzero(visible)
        if len(frames) < 2:
            continue
        z = xyxy_to_measurement(boxes[frames])
        kf = tracker._new_filter(z[0])
        for k in range(1, len(frames)):
            for _ in range(frames[k] - frames[k - 1]):
                kf.predict(Q=np.diag(tracker._noise(tracker._height(kf), 1.0, 1.0)))
            tracker.tracks = [_Track(0, 0, kf, np.zeros((1, 0)))]
            inside += int(tracker.mahalanobis(z[k : k + 1])[0, 0] <= tracker.gate)
            total += 1
            kf.update(z[k][:, None], R=tracker._measurement_noise(tracker._height(kf)))
    if total == 0:
        raise ValueError("no track is visible in two frames: nothing to fit the noise to")
    return inside / total


def noise_overrides(scale: float) -> dict[str, float]:
    """DeepSORT's noise times ``scale``: the ``std_*`` arguments of :class:`DeepSORTTracker`."""
    return {
        "std_position": scale / 20.0,
        "std_velocity": scale / 160.0,
        "std_aspect": scale / 10.0,
    }


def fit_noise_scale(
    tracks: list[np.ndarray], coverage: float = 0.95, gate_probability: float = 0.95
) -> tuple[float, dict[float, float]]:
    """The smallest of :data:`NOISE_SCALES` whose gate admits ``coverage`` of the true
    re-detections of ``tracks`` (ground truth of a *training* split), with every scale's
    coverage. With Gaussian motion DeepSORT's own noise (scale 1) would admit ~95 % at the
    0.95 gate; boxes of the visible part of occluded objects jump and need more. The largest
    scale is returned if none reaches ``coverage``."""
    coverages: dict[float, float] = {}
    for scale in NOISE_SCALES:
        coverages[scale] = gate_coverage(tracks, scale, gate_probability)
        if coverages[scale] >= coverage:
            return scale, coverages
    return NOISE_SCALES[-1], coverages


def annotation_tracks(path: str) -> list[np.ndarray]:
    """Every track of an OVIS / YouTube-VIS annotation file as ``(T, 4)`` xyxy boxes, NaN where
    the object is absent (for :func:`fit_noise_scale`)."""
    from ovisnet.data.annotations import load_annotations

    tracks = []
    for video in load_annotations(path).videos:
        for track in video.tracks:
            boxes = np.full((video.length, 4), np.nan)
            for t, box in enumerate(track.bboxes):
                if box is not None and box[2] > 0 and box[3] > 0:
                    x, y, w, h = box
                    boxes[t] = (x, y, x + w, y + h)
            tracks.append(boxes)
    return tracks

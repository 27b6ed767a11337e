"""STEm-Seg inference: clip-wise pixel clustering and cross-clip stitching (SPEC-models.md §7.4).

STEm-Seg (Athar et al. 2020) cuts a video into overlapping sub-clips, predicts for every foreground
pixel of a clip an embedding ``e``, a bandwidth ``b`` (inverse variance per dimension) and a
seediness ``s``, and then

1. clusters the pixels of each clip seed by seed (:func:`cluster_pixels`): the most "seedy"
   unassigned pixel becomes the centre of a Gaussian whose probability map claims the pixels it
   covers, until no confident seed is left;
2. links the clusters of consecutive clips into video tracks by Hungarian matching of mask IoU on
   the frames the clips share (:class:`ClipStitcher`), emitting each frame's track-id map as soon
   as no later clip can touch it.

The official code differs from the training objective and from its evident intent in three places
(SPEC-models.md §8 items 9-11); each has a flag whose default is the corrected behaviour, except
the stitching IoU threshold whose default (none) is the official rule:

- ``distance``: training uses ``exp(-½ Σ b (e - c)²)``, the official clusterer the square root of
  the sum (item 9);
- ``secondary``: the official leftover pass takes the *farthest* cluster, on a stale unassigned set
  when the cluster cap ended the loop (item 10);
- ``min_iou``: the official stitching merges any Hungarian pair, even at IoU 0 (item 11).

Everything is plain torch (plus scipy for the Hungarian assignment): no Lightning, no Hydra.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from itertools import pairwise

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

_DISTANCES = ("squared", "sqrt")
_SECONDARY = ("nearest", "official")


def _check_threshold(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie in (0, 1), got {value}")


def _cluster_probabilities(
    embeddings: Tensor, centres: Tensor, bandwidths: Tensor, distance: str
) -> Tensor:
    """Probability of every pixel under every cluster's Gaussian.

    Args:
        embeddings: ``(N, E)`` pixel embeddings.
        centres: ``(K, E)`` cluster centres (the seeds' embeddings).
        bandwidths: ``(K, E)`` cluster bandwidths (the seeds' inverse variances).
        distance: ``"squared"`` for ``exp(-½ d²)``, ``"sqrt"`` for ``exp(-½ d)``, where
            ``d² = Σ_d b_d (e_d - c_d)²``.

    Returns:
        ``(N, K)`` probabilities in ``[0, 1]``.
    """
    sq = (bandwidths[None] * (embeddings[:, None] - centres[None]).square()).sum(-1)
    dist = sq if distance == "squared" else sq.sqrt()
    return torch.exp(-0.5 * dist)


def cluster_pixels(
    embeddings: Tensor,
    bandwidths: Tensor,
    seediness: Tensor,
    *,
    seed_thresh: float = 0.8,
    primary_thresh: float = 0.5,
    secondary_thresh: float = 0.3,
    max_clusters: int = 20,
    distance: str = "squared",
    secondary: str = "nearest",
) -> Tensor:
    """Cluster the foreground pixels of one clip seed by seed (SPEC-models.md §7.4 step 4).

    Repeatedly, the unassigned pixel with maximum seediness becomes a seed (stop when its seediness
    is below ``seed_thresh``, when no pixel is unassigned, or once ``max_clusters`` clusters exist);
    the cluster's centre and bandwidth are the seed's embedding and bandwidth, and every unassigned
    pixel whose probability under it exceeds ``primary_thresh`` joins it (the seed always does).
    Pixels left over then get a secondary label when a cluster's probability exceeds
    ``secondary_thresh``; the others are outliers (-1).

    All work stays on the inputs' device and is vectorised over pixels; the only host sync is the
    stopping test, once per cluster.

    Args:
        embeddings: ``(N, E)`` float pixel embeddings.
        bandwidths: ``(N, E)`` positive inverse variances, free-dim bandwidths included.
        seediness: ``(N,)`` seediness in ``[0, 1]``.
        seed_thresh: minimum seediness of a seed (0.8 in the official config).
        primary_thresh: probability above which an unassigned pixel joins a new cluster (0.5).
        secondary_thresh: probability above which a leftover pixel gets a secondary label (0.3).
        max_clusters: cluster cap per clip (20).
        distance: ``"squared"`` (default): ``prob = exp(-½ Σ b (e - c)²)``, the Gaussian the model
            is trained with; ``"sqrt"``: ``prob = exp(-½ sqrt(Σ b (e - c)²))``, the official
            clusterer's form, kept for parity (SPEC-models.md §8 item 9).
        secondary: ``"nearest"`` (default): each pixel still unassigned after the loop takes the
            cluster of highest probability; ``"official"``: the official code's behaviour, kept for
            parity (SPEC-models.md §8 item 10): the cluster of *lowest* probability (largest
            distance) is taken, and when the cluster cap ended the loop the leftover set is the one
            from before the last cluster was formed, so pixels just given to that cluster can be
            relabelled (those whose chosen probability is too low keep their label).

    Returns:
        ``(N,)`` int64 labels ``0..K-1`` in seed order, -1 for outliers, on the inputs' device.

    Raises:
        ValueError: on inconsistent shapes or devices, a threshold outside ``(0, 1)``, a
            ``max_clusters`` below 1 or an unknown ``distance`` / ``secondary`` name.
    """
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (N, E), got shape {tuple(embeddings.shape)}")
    if bandwidths.shape != embeddings.shape:
        raise ValueError(
            f"bandwidths shape {tuple(bandwidths.shape)} != embeddings shape "
            f"{tuple(embeddings.shape)}"
        )
    if seediness.shape != embeddings.shape[:1]:
        raise ValueError(
            f"seediness must be ({embeddings.shape[0]},), got shape {tuple(seediness.shape)}"
        )
    if not (embeddings.device == bandwidths.device == seediness.device):
        raise ValueError("embeddings, bandwidths and seediness must be on the same device")
    if not all(t.is_floating_point() for t in (embeddings, bandwidths, seediness)):
        raise ValueError("embeddings, bandwidths and seediness must be floating point")
    _check_threshold("seed_thresh", seed_thresh)
    _check_threshold("primary_thresh", primary_thresh)
    _check_threshold("secondary_thresh", secondary_thresh)
    if max_clusters < 1:
        raise ValueError(f"max_clusters must be >= 1, got {max_clusters}")
    if distance not in _DISTANCES:
        raise ValueError(f"distance must be one of {_DISTANCES}, got {distance!r}")
    if secondary not in _SECONDARY:
        raise ValueError(f"secondary must be one of {_SECONDARY}, got {secondary!r}")

    device = embeddings.device
    n = embeddings.shape[0]
    labels = torch.full((n,), -1, dtype=torch.int64, device=device)
    if n == 0:
        return labels

    dtype = torch.promote_types(embeddings.dtype, torch.float32)
    emb = embeddings.to(dtype)
    bw = bandwidths.to(dtype)
    seed_score = seediness.to(dtype)
    neg_inf = torch.tensor(float("-inf"), dtype=dtype, device=device)

    centres: list[Tensor] = []
    seed_bws: list[Tensor] = []
    unassigned = torch.ones(n, dtype=torch.bool, device=device)
    previous_unassigned = unassigned
    while len(centres) < max_clusters:
        best, seed = torch.where(unassigned, seed_score, neg_inf).max(0)
        if best.item() < seed_thresh:  # also true when nothing is unassigned (-inf)
            break
        seed = seed.view(1)
        centre = emb.index_select(0, seed)
        seed_bw = bw.index_select(0, seed)
        prob = _cluster_probabilities(emb, centre, seed_bw, distance)[:, 0]
        joins = unassigned & (prob > primary_thresh)
        joins.index_fill_(0, seed, True)
        labels = torch.where(joins, len(centres), labels)
        centres.append(centre[0])
        seed_bws.append(seed_bw[0])
        previous_unassigned = unassigned
        unassigned = unassigned & ~joins

    if not centres:
        return labels

    probs = _cluster_probabilities(emb, torch.stack(centres), torch.stack(seed_bws), distance)
    if secondary == "nearest":
        chosen_prob, chosen = probs.max(1)
        leftover = unassigned
    else:
        chosen_prob, chosen = probs.min(1)
        leftover = previous_unassigned if len(centres) == max_clusters else unassigned
    return torch.where(leftover & (chosen_prob > secondary_thresh), chosen, labels)


class ClipStitcher:
    """Streamed linking of per-clip cluster labels into video tracks (SPEC-models.md §7.4 step 5).

    Clips are pushed in video order. Each clip's clusters are matched to the tracks held on the
    frames it shares with earlier clips by Hungarian assignment on ``1 - IoU`` (IoU over all shared
    frames jointly); matched clusters take the track's id, the others start new tracks. Shared
    frames keep the labels they already have, the clip's other frames are added under the new
    names. Frames that no later clip can reach (index below the caller's ``final_before``) are
    emitted and forgotten, so memory holds only the frames still overlapping future clips.

    Track ids are ints, unique in the video, assigned increasingly from 0 (per clip, in cluster-id
    order). Label maps may live on any device; only the small IoU matrix goes to the CPU.

    Args:
        min_iou: minimum IoU for a Hungarian pair to be merged. ``0`` (default) is the official
            rule: any pair is merged, even at IoU 0; a positive value (e.g. 0.1) starts a new track
            instead for pairs below it (SPEC-models.md §8 item 11).

    Raises:
        ValueError: if ``min_iou`` is outside ``[0, 1]``.
    """

    def __init__(self, min_iou: float = 0.0) -> None:
        if not 0.0 <= min_iou <= 1.0:
            raise ValueError(f"min_iou must lie in [0, 1], got {min_iou}")
        self.min_iou = min_iou
        self._held: dict[int, Tensor] = {}
        self._next_id = 0
        self._emit_bound: int | None = None
        self._spatial: tuple[int, int] | None = None

    @property
    def held_frames(self) -> list[int]:
        """Sorted indices of the frames pushed but not yet emitted."""
        return sorted(self._held)

    @property
    def num_tracks(self) -> int:
        """Number of track ids created so far (ids are ``0..num_tracks-1``)."""
        return self._next_id

    def push(
        self, frames: Sequence[int], labels: Tensor, final_before: int
    ) -> list[tuple[int, Tensor]]:
        """Add one clip's cluster labels and emit the frames that are final.

        Args:
            frames: the clip's video frame indices, strictly increasing, length ``T``.
            labels: ``(T, h, w)`` integer cluster ids (>= 0) with -1 for background / outliers;
                ids need not be contiguous nor related to earlier clips' ids.
            final_before: every held frame with an index below it is emitted; pass the next clip's
                first frame index, or the video length after the last clip.

        Returns:
            ``(frame_index, label_map)`` pairs in increasing frame order, each map ``(h, w)`` int64
            with global track ids and -1 for background, on the device of ``labels``.

        Raises:
            ValueError: if ``frames`` is empty, unsorted or has duplicates, its length differs
                from ``labels.shape[0]``, a frame lies before an earlier ``final_before`` (it was
                emitted, or would be emitted out of order), ``labels`` is not a 3-D integer tensor
                with values >= -1, or its spatial size differs from earlier clips'.
        """
        frame_list = self._validate(frames, labels, operator.index(final_before))
        labels = labels.to(torch.int64)

        # Compact the clip's cluster ids to 0..Kn-1 (-1 stays background): labels >= -1, so the
        # inverse index is shifted by the number of negative unique values (0 or 1).
        uniq, inverse = torch.unique(labels, return_inverse=True)
        cluster_ids = uniq[uniq >= 0]
        compact = inverse - (uniq.numel() - cluster_ids.numel())

        shared = [i for i, f in enumerate(frame_list) if f in self._held]
        lut = self._match(compact, cluster_ids.numel(), shared, [frame_list[i] for i in shared])
        if cluster_ids.numel() == 0:  # an all-background clip: nothing to index
            renamed = torch.full_like(labels, -1)
        else:
            renamed = torch.where(compact >= 0, lut.to(labels.device)[compact.clamp(min=0)], -1)
        shared_set = set(shared)
        for i, f in enumerate(frame_list):
            if i not in shared_set:
                self._held[f] = renamed[i].clone()  # not a view: frees the clip's tensor

        if self._emit_bound is None or final_before > self._emit_bound:
            self._emit_bound = final_before
        return [(f, self._held.pop(f)) for f in sorted(self._held) if f < final_before]

    def _validate(self, frames: Sequence[int], labels: Tensor, final_before: int) -> list[int]:
        """Check one ``push``'s arguments; return the frame indices as ints."""
        frame_list = [operator.index(f) for f in frames]
        if not frame_list:
            raise ValueError("a clip needs at least one frame")
        if any(b <= a for a, b in pairwise(frame_list)):
            raise ValueError(f"frames must be sorted and unique, got {frame_list}")
        if labels.ndim != 3 or labels.is_floating_point() or labels.is_complex():
            raise ValueError(
                f"labels must be a (T, h, w) integer tensor, got {labels.dtype} "
                f"of shape {tuple(labels.shape)}"
            )
        if labels.shape[0] != len(frame_list):
            raise ValueError(
                f"{len(frame_list)} frames but labels hold {labels.shape[0]} (shape "
                f"{tuple(labels.shape)})"
            )
        spatial = (labels.shape[1], labels.shape[2])
        if self._spatial is not None and spatial != self._spatial:
            raise ValueError(f"spatial size changed from {self._spatial} to {spatial}")
        if self._emit_bound is not None and frame_list[0] < self._emit_bound:
            raise ValueError(
                f"frame {frame_list[0]} lies before final_before={self._emit_bound} of an earlier "
                "push: it was already emitted (or would be emitted out of order)"
            )
        if labels.numel() and labels.min().item() < -1:
            raise ValueError("labels must be cluster ids >= 0 or -1 for background")
        self._spatial = spatial
        return frame_list

    def _match(
        self, compact: Tensor, num_clusters: int, shared: list[int], shared_frames: list[int]
    ) -> Tensor:
        """Global track id of each compact cluster id; creates the new tracks.

        Args:
            compact: ``(T, h, w)`` compact cluster ids of the clip, -1 background.
            num_clusters: number of compact ids ``Kn``.
            shared: positions in the clip of the frames still held.
            shared_frames: the matching frame indices.

        Returns:
            ``(Kn,)`` int64 CPU tensor of track ids.
        """
        lut = torch.full((num_clusters,), -1, dtype=torch.int64)
        if shared and num_clusters:
            old = torch.stack([self._held[f] for f in shared_frames]).reshape(-1)
            new = compact[shared].reshape(-1).to(old.device)
            old_uniq, old_inv = torch.unique(old, return_inverse=True)
            track_ids = old_uniq[old_uniq >= 0]
            old_c = old_inv - (old_uniq.numel() - track_ids.numel())
            k_old = track_ids.numel()
            if k_old:
                both = (old_c >= 0) & (new >= 0)
                inter = torch.bincount(
                    old_c[both] * num_clusters + new[both], minlength=k_old * num_clusters
                ).view(k_old, num_clusters)
                area_old = torch.bincount(old_c[old_c >= 0], minlength=k_old)
                area_new = torch.bincount(new[new >= 0], minlength=num_clusters)
                union = area_old[:, None] + area_new[None, :] - inter
                iou = (inter.double() / union.double()).cpu()  # union >= area_old > 0
                present = (area_new > 0).cpu().nonzero().view(-1)
                rows, cols = linear_sum_assignment(1.0 - iou[:, present].numpy())
                rows_t = torch.from_numpy(rows).long()
                cols_t = present[torch.from_numpy(cols).long()]
                keep = iou[rows_t, cols_t] >= self.min_iou
                lut[cols_t[keep]] = track_ids.cpu()[rows_t[keep]]
        fresh = lut < 0
        count = int(fresh.sum())
        lut[fresh] = torch.arange(self._next_id, self._next_id + count)
        self._next_id += count
        return lut

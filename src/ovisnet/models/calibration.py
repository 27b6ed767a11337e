"""Temporal Feature Calibration (TFC) of CMaskTrack R-CNN / CSipMask (SPEC-models.md §3.1).

One module with shared weights calibrates every FPN level: the query (current-frame) features are
correlated with the reference features, a small conv branch turns the correlation into the offsets
of a 3x3 deformable convolution sampling the reference, and the result is added to the query.
The ``difference`` and ``add`` fusions are the ablations of the OVIS paper (Fig. 8).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovisnet.ops.correlation import Backend, correlation
from ovisnet.ops.deform_conv import DeformBackend, DeformConv2d

Fusion = Literal["calibration", "difference", "add"]
FUSIONS: tuple[str, ...] = ("calibration", "difference", "add")
NUM_OFFSET_CONVS = 3
OFFSET_CHANNELS = 18  # 2 (dy, dx) per tap of the 3x3 deformable kernel, torchvision layout

Key = TypeVar("Key")


class TemporalFeatureCalibration(nn.Module):
    """Calibrate query features with a reference frame: ``DeformConv(R, offsets(Q, R)) + Q``.

    Fusions:
        ``"calibration"``: offsets from the correlation of Q against R (16x16 displacements, step
        2), divided by ``C``, LeakyReLU(0.1), three 3x3 conv + ReLU layers and a 3x3 conv to 18
        offsets; a 3x3 deformable conv without bias samples R; the query is added.
        ``"difference"``: as ``"calibration"`` but the offset branch reads ``Q - R`` (``C``
        channels) instead of the correlation.
        ``"add"``: ``Q + R``; no parameters.

    Args:
        channels: Feature channels ``C`` of every level.
        patch_size: Correlation displacements ``P`` per axis (the branch input has ``P^2``
            channels).
        dilation_patch: Step ``s`` between correlation displacements.
        fusion: ``"calibration"``, ``"difference"`` or ``"add"``.
        hidden_channels: Width of the three hidden offset convs.
        zero_init_offsets: Zero the 18-channel offset conv so that the module starts as a plain
            3x3 conv of R plus Q (the official code keeps PyTorch's default init).
        correlation_backend: ``backend`` of :func:`ovisnet.ops.correlation.correlation`.
        deform_backend: kernel of the deformable conv (see
            :class:`ovisnet.ops.deform_conv.DeformConv2d`; ``"auto"`` = the grid-sample path on
            CPU, torchvision's kernel on GPU).
    """

    def __init__(
        self,
        channels: int = 256,
        patch_size: int = 16,
        dilation_patch: int = 2,
        fusion: Fusion = "calibration",
        hidden_channels: int = 256,
        zero_init_offsets: bool = False,
        correlation_backend: Backend = "auto",
        deform_backend: DeformBackend = "auto",
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        self.channels = channels
        self.patch_size = patch_size
        self.dilation_patch = dilation_patch
        self.fusion: Fusion = fusion
        self.correlation_backend: Backend = correlation_backend
        self.offset_convs: nn.Sequential | None = None
        self.offset_head: nn.Conv2d | None = None
        self.deform_conv: DeformConv2d | None = None
        # running sums of the health statistics of training calls (see ``pop_stats``)
        self._stat_sums: Tensor | None = None
        self._stat_calls = 0
        if fusion == "add":
            return
        layers: list[nn.Module] = []
        in_channels = patch_size * patch_size if fusion == "calibration" else channels
        for _ in range(NUM_OFFSET_CONVS):
            conv = nn.Conv2d(in_channels, hidden_channels, 3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU(inplace=True)]
            in_channels = hidden_channels
        self.offset_convs = nn.Sequential(*layers)
        self.offset_head = nn.Conv2d(hidden_channels, OFFSET_CHANNELS, 3, padding=1)
        if zero_init_offsets:
            nn.init.zeros_(self.offset_head.weight)
            nn.init.zeros_(self.offset_head.bias)
        # torchvision's default init is uniform(±1/sqrt(C*9)), the official DCN init.
        self.deform_conv = DeformConv2d(
            channels, channels, 3, padding=1, bias=False, backend=deform_backend
        )

    def offset_features(self, query: Tensor, reference: Tensor) -> Tensor:
        """Input of the offset branch.

        Args:
            query: ``B x C x H x W``.
            reference: ``B x C x H x W``.

        Returns:
            ``B x P^2 x H x W`` LeakyReLU(0.1) of the correlation / C (channel ``i*P + j`` for
            displacement ``(d_i, d_j)``, computed in float32) for ``"calibration"``, or
            ``B x C x H x W`` ``query - reference`` for ``"difference"``.
        """
        if self.fusion == "difference":
            return query - reference
        corr = correlation(
            query.float(),
            reference.float(),
            patch_size=self.patch_size,
            dilation_patch=self.dilation_patch,
            backend=self.correlation_backend,
        )
        batch, _, _, height, width = corr.shape
        corr = corr.reshape(batch, self.patch_size * self.patch_size, height, width)
        return F.leaky_relu(corr / query.shape[1], negative_slope=0.1).to(query.dtype)

    def offsets(self, query: Tensor, reference: Tensor) -> Tensor:
        """Deformable-conv offsets, ``B x 18 x H x W`` (channel ``2k`` dy, ``2k+1`` dx of tap k)."""
        if self.offset_convs is None or self.offset_head is None:
            raise RuntimeError("the 'add' fusion has no offset branch")
        return self.offset_head(self.offset_convs(self.offset_features(query, reference)))

    def forward(self, query: Tensor, reference: Tensor) -> Tensor:
        """Calibrate one level.

        Args:
            query: Current-frame features, ``B x C x H x W``.
            reference: Reference-frame features, ``B x C x H x W``.

        Returns:
            Calibrated query features, ``B x C x H x W``.
        """
        if query.shape != reference.shape:
            raise ValueError(
                f"query and reference shapes differ: {tuple(query.shape)} vs "
                f"{tuple(reference.shape)}"
            )
        if self.deform_conv is None:
            return query + reference
        offsets = self.offsets(query, reference)
        sampled = self.deform_conv(reference, offsets)
        if self.training:
            self._record(offsets, sampled, query)
        return sampled + query

    @torch.no_grad()
    def _record(self, offsets: Tensor, sampled: Tensor, query: Tensor) -> None:
        # float32 accumulation without float32 copies of the (bf16 under autocast) maps
        def mean_abs(x: Tensor) -> Tensor:
            return x.abs().mean(dtype=torch.float32)

        stats = torch.stack(
            [mean_abs(offsets), mean_abs(sampled) / mean_abs(query).clamp_min(1e-12)]
        )
        self._stat_sums = stats if self._stat_sums is None else self._stat_sums + stats
        self._stat_calls += 1

    def pop_stats(self) -> dict[str, Tensor]:
        """Health of the calibration over the training calls since the last pop, then reset.

        A calibration can die silently: when its offsets grow past the feature maps every
        deformable tap samples zeros, the calibration adds nothing and gets no gradient (we saw
        it under AdamW at full lr), and CMaskTrack quietly becomes MaskTrack.

        Returns:
            ``offset_abs``: mean |offset| in feature-map cells of its level (levels and calls
            averaged);
            ``share``: mean |DeformConv(R, offsets)| / mean |Q|, the size of what the
            calibration adds relative to the query features (0 when dead). Empty when there was
            no training call (or for the ``add`` fusion).
        """
        if self._stat_sums is None:
            return {}
        offset_abs, share = (self._stat_sums / self._stat_calls).unbind()
        self._stat_sums, self._stat_calls = None, 0
        return {"offset_abs": offset_abs, "share": share}

    def calibrate_levels(
        self,
        query: Mapping[Key, Tensor] | Sequence[Tensor],
        reference: Mapping[Key, Tensor] | Sequence[Tensor],
    ) -> dict[Key, Tensor] | list[Tensor]:
        """Apply :meth:`forward` to every FPN level with the shared weights.

        Args:
            query: Levels of the current frame, a mapping (e.g. FPN ``OrderedDict``) or a sequence
                of ``B x C x H_l x W_l`` tensors.
            reference: The matching levels of the reference frame, same container and keys.

        Returns:
            The calibrated levels: a dict with the query's keys (in its order), or a list.
        """
        if isinstance(query, Mapping):
            if not isinstance(reference, Mapping) or set(query) != set(reference):
                raise ValueError("query and reference levels must have the same keys")
            return {key: self(level, reference[key]) for key, level in query.items()}
        if isinstance(reference, Mapping) or len(query) != len(reference):
            raise ValueError("query and reference must hold the same number of levels")
        return [self(q, r) for q, r in zip(query, reference, strict=True)]

    def extra_repr(self) -> str:
        """Configuration for ``repr``."""
        return (
            f"channels={self.channels}, patch_size={self.patch_size}, "
            f"dilation_patch={self.dilation_patch}, fusion={self.fusion!r}, "
            f"correlation_backend={self.correlation_backend!r}"
        )


# -- several references at inference (SPEC §3.3, §6) --------------------------------------------

ReferenceFusion = Literal["predictions", "features"]
REFERENCE_FUSIONS: tuple[str, ...] = ("predictions", "features")
"""How a calibrated model combines its ε_test references at inference: ``predictions`` (the
papers': the heads run on the query calibrated by each reference and their raw outputs are
averaged) or ``features`` (the calibrated feature maps are averaged and the heads run once)."""


def check_reference_fusion(fusion: str) -> ReferenceFusion:
    """``fusion`` if it is one of :data:`REFERENCE_FUSIONS`, else a ``ValueError``."""
    if fusion not in REFERENCE_FUSIONS:
        raise ValueError(f"reference_fusion must be one of {REFERENCE_FUSIONS}, got {fusion!r}")
    return fusion  # type: ignore[return-value]


def calibrate_references(
    calibration: nn.Module,
    query: Mapping[str, Tensor],
    references: Sequence[Mapping[str, Tensor]],
    keys: Sequence[str] | None = None,
) -> dict[str, Tensor]:
    """The query calibrated by every reference, in one batched call per level.

    Equal (to float tolerance) to ``calibration(query[k], ref[k])`` for each reference, but the
    ``R`` references ride along the batch dimension: one correlation, one offset branch and one
    deformable convolution per level instead of ``R`` of each.

    Args:
        calibration: the :class:`TemporalFeatureCalibration` (any module with
            ``forward(query, reference)`` on one level).
        query: levels of the query frames, batch ``B``.
        references: ``R >= 1`` feature dicts of the reference frames, batch ``B`` each.
        keys: the levels to calibrate (default every level of ``query``, in its order).

    Returns:
        ``{key: (R * B, C, H, W)}``, reference-major: row ``r * B + i`` is image ``i``
        calibrated by reference ``r``; :func:`reference_mean` averages over ``r``.
    """
    if not references:
        raise ValueError("calibrate_references needs at least one reference")
    num_refs = len(references)
    out = {}
    for key in keys if keys is not None else list(query):
        level = query[key]
        stacked_query = level.expand(num_refs, *level.shape).reshape(-1, *level.shape[1:])
        stacked_refs = torch.cat([ref[key] for ref in references])
        out[key] = calibration(stacked_query, stacked_refs)
    return out


def reference_mean(stacked: Tensor, num_refs: int) -> Tensor:
    """Uniform mean over the references of a reference-major ``(R * N, ...)`` tensor → ``(N, ...)``
    (in float32: the averaged logits feed decoding and NMS)."""
    if stacked.shape[0] % num_refs:
        raise ValueError(f"{stacked.shape[0]} rows are not a multiple of {num_refs} references")
    return stacked.float().view(num_refs, -1, *stacked.shape[1:]).mean(dim=0)

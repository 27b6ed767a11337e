"""STEm-Seg (SPEC-models.md §7): bottom-up spatio-temporal embeddings of a clip.

Every frame of a clip of ``T`` frames goes through a ResNet-FPN (P2–P5); the four levels are
stacked along time and decoded by two "temporal squeeze-expand" 3D decoders
(:class:`SqueezeExpandDecoder`): one feeds the embedding head (per-pixel embeddings, bandwidths
and seediness at stride 4), the other the semantic head (class logits with background, plus a
foreground logit). Each object is a Gaussian in the embedding space: training pulls the
Gaussian's probability map towards the object's mask over the whole clip (Lovász hinge, §7.2);
inference clusters the pixels seed by seed and stitches the clips
(:mod:`ovisnet.tracking.clustering`, :mod:`ovisnet.tracking.clip_predictor`).

Embeddings are "xyff": ``tanh(0.25 raw) + (y, x, 0, 0)`` where ``(y, x)`` is a coordinate grid over
the *padded* stride-4 map (the short side spans ``[-1, 1]``), spatial bandwidths (inverse
variances) are ``exp(raw) * 10`` and the free dimensions have a fixed bandwidth ``1 / 0.3**2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovisnet.models.common import IMAGENET_MEAN, IMAGENET_STD, VideoDetector
from ovisnet.models.lovasz import lovasz_hinge
from ovisnet.structures import ClipBatch, FeatureMaps, Instances

OUTPUT_STRIDE = 4
PYRAMID_LEVELS = ("0", "1", "2", "3")  # P2..P5 (strides 4, 8, 16, 32); P6 is not used


@dataclass(frozen=True)
class STEmSegConfig:
    """Head and loss hyper-parameters (SPEC §7.1, §7.2, §7.5).

    Attributes:
        embedding_widths: channels of the embedding decoder's branches at strides 32, 16, 8, 4.
        semantic_widths: channels of the semantic decoder's branches at strides 32, 16, 8, 4.
        num_groups: GroupNorm groups of the decoders (capped by the channel count).
        embedding_dims: ``2`` spatial (y, x) + free dimensions; 4 = the paper's "xyff".
        free_dim_std: standard deviation of the free dimensions (fixed bandwidth 1 / std²).
        tanh_scale: embedding offsets are ``tanh(tanh_scale * raw)``.
        bandwidth_scale: spatial bandwidths are ``exp(raw) * bandwidth_scale``.
        lovasz_weight: weight of the Lovász hinge on the instance probability maps.
        smoothness_weight: weight of the bandwidth-smoothness (variance) loss.
        seediness_weight: weight of the seediness regression.
        semantic_weight: weight of the semantic cross-entropy.
        foreground_weight: weight of the foreground BCE.
    """

    embedding_widths: tuple[int, int, int, int] = (256, 256, 128, 128)
    semantic_widths: tuple[int, int, int, int] = (256, 256, 256, 256)
    num_groups: int = 32
    embedding_dims: int = 4
    free_dim_std: float = 0.3
    tanh_scale: float = 0.25
    bandwidth_scale: float = 10.0
    lovasz_weight: float = 1.0
    smoothness_weight: float = 10.0
    seediness_weight: float = 1.0
    semantic_weight: float = 1.0
    foreground_weight: float = 1.0


@dataclass
class ClipOutputs:
    """The heads' outputs for a batch of clips, all at stride 4 of the padded canvas.

    Attributes:
        embeddings: ``(B, E, T, h, w)`` embeddings (offsets + coordinates).
        bandwidths: ``(B, E, T, h, w)`` activated bandwidths (inverse variances), the free
            dimensions' fixed values included.
        raw_bandwidths: ``(B, 2, T, h, w)`` pre-activation spatial bandwidths (smoothness loss).
        seediness: ``(B, T, h, w)`` in ``[0, 1]``.
        semantic: ``(B, C + 1, T, h, w)`` class logits, channel 0 = background.
        foreground: ``(B, T, h, w)`` foreground logits.
    """

    embeddings: Tensor
    bandwidths: Tensor
    raw_bandwidths: Tensor
    seediness: Tensor
    semantic: Tensor
    foreground: Tensor


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    groups = min(groups, channels)
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


class TemporalPool(nn.Module):
    """Average pooling, kernel 3, stride ``(2, 1, 1)``, zero padding 1: halves ``T``.

    The same as ``nn.AvgPool3d(3, (2, 1, 1), 1)`` (padding counted in the mean), written with an
    explicit pad so that clips shorter than the kernel (``T < 3``) work too.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool3d(F.pad(x, (1, 1, 1, 1, 1, 1)), 3, stride=(2, 1, 1))


def _conv_block(in_channels: int, out_channels: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False),
        _group_norm(out_channels, groups),
        nn.ReLU(inplace=True),
    )


class SqueezeExpandDecoder(nn.Module):
    """Temporal squeeze-expand 3D decoder (SPEC §7.1).

    Each pyramid level is squeezed in time by its own branch (3D conv, GN, ReLU, then average
    pooling with kernel 3, stride ``(2, 1, 1)``, padding 1, which halves ``T``): the stride-32
    branch has three blocks (pool, pool, none), stride 16 two (pool, pool), stride 8 one (pool),
    stride 4 one block without pooling. The coarse path is then expanded trilinearly to the next
    finer branch's ``(T, h, w)``, concatenated with it and mixed by a 1x1x1 conv, down to stride 4
    with the full ``T``. Upsampling to the finer branch's exact size (rather than by fixed
    factors) makes any ``T`` work, including a short clip.

    Args:
        in_channels: FPN width.
        widths: channels of the branches at strides 32, 16, 8, 4.
        num_groups: GroupNorm groups.
    """

    POOLS = ((True, True, False), (True, True), (True,), (False,))  # strides 32, 16, 8, 4

    def __init__(self, in_channels: int, widths: tuple[int, ...], num_groups: int = 32) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"widths must give 4 branch widths (strides 32..4), got {widths}")
        self.branches = nn.ModuleList()
        for width, pools in zip(widths, self.POOLS, strict=True):
            layers: list[nn.Module] = []
            channels = in_channels
            for pool in pools:
                layers.append(_conv_block(channels, width, num_groups))
                if pool:
                    layers.append(TemporalPool())
                channels = width
            self.branches.append(nn.Sequential(*layers))
        self.mixers = nn.ModuleList(
            nn.Conv3d(widths[i] + widths[i + 1], widths[i + 1], 1, bias=False) for i in range(3)
        )
        self.out_channels = widths[-1]

    def forward(self, levels: list[Tensor]) -> Tensor:
        """Decode ``[P5, P4, P3, P2]`` stacks, each ``(B, C, T, h_s, w_s)``, to stride 4.

        Returns:
            ``(B, widths[-1], T, h_4, w_4)``.
        """
        x = self.branches[0](levels[0])
        for branch, mixer, level in zip(self.branches[1:], self.mixers, levels[1:], strict=True):
            finer = branch(level)
            x = F.interpolate(x, size=finer.shape[2:], mode="trilinear", align_corners=False)
            x = mixer(torch.cat([x, finer], dim=1))
        return x


def coordinate_grid(height: int, width: int, device: torch.device | None = None) -> Tensor:
    """The ``(y, x)`` pixel coordinates of the embedding space over a padded map.

    Linearly spaced over ``[-max(1, H/W), max(1, H/W)]`` (y) and ``[-max(1, W/H), max(1, W/H)]``
    (x): the short side spans ``[-1, 1]`` and a unit step is the same length along both axes.

    Returns:
        ``(2, height, width)`` float32, channel 0 = y, channel 1 = x.
    """
    y_max, x_max = max(1.0, height / width), max(1.0, width / height)
    ys = torch.linspace(-y_max, y_max, height, device=device)
    xs = torch.linspace(-x_max, x_max, width, device=device)
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"))


class STEmSeg(VideoDetector):
    """STEm-Seg: per-frame ResNet-FPN, two squeeze-expand decoders, embedding + semantic heads.

    A plain ``nn.Module``: :meth:`loss` takes a clip batch, :meth:`extract_features` runs one
    frame's backbone (cached by the streamed predictor) and :meth:`clip_outputs` the heads on a
    clip's stacked features.

    Args:
        backbone: per-frame ``(B, 3, H, W) → FPN levels`` with levels ``'0'``..``'3'`` at strides
            4–32 (the ``p2p6`` pyramid; P6 is ignored).
        num_classes: foreground categories (the semantic head has ``num_classes + 1`` class
            channels with background first, plus one foreground channel).
        config: head and loss hyper-parameters.
    """

    def __init__(
        self, backbone: nn.Module, num_classes: int, config: STEmSegConfig | None = None
    ) -> None:
        super().__init__(backbone, pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD)
        strides = tuple(getattr(backbone, "strides", (4, 8, 16, 32)))[: len(PYRAMID_LEVELS)]
        if strides != (4, 8, 16, 32):
            raise ValueError(f"STEm-Seg needs FPN levels at strides 4, 8, 16, 32, got {strides}")
        self.config = cfg = config or STEmSegConfig()
        if cfg.embedding_dims < 2:
            raise ValueError("embedding_dims must be >= 2 (y, x and optional free dimensions)")
        self.num_classes = num_classes
        channels = backbone.out_channels
        self.embedding_decoder = SqueezeExpandDecoder(
            channels, cfg.embedding_widths, cfg.num_groups
        )
        self.semantic_decoder = SqueezeExpandDecoder(channels, cfg.semantic_widths, cfg.num_groups)
        width = self.embedding_decoder.out_channels
        self.embedding_out = nn.Conv3d(width, cfg.embedding_dims, 1, bias=False)
        self.bandwidth_out = nn.Conv3d(width, 2, 1)
        self.seediness_out = nn.Conv3d(width, 1, 1, bias=False)
        self.semantic_out = nn.Conv3d(
            self.semantic_decoder.out_channels, num_classes + 2, 1, bias=False
        )
        free = cfg.embedding_dims - 2
        self.register_buffer(
            "free_bandwidths",
            torch.full((free,), 1.0 / cfg.free_dim_std**2),
            persistent=False,
        )

    # -- network ------------------------------------------------------------------------------
    def clip_outputs(self, frames: list[FeatureMaps]) -> ClipOutputs:
        """Run both decoders and the heads on the per-frame features of a batch of clips.

        Args:
            frames: ``T`` feature dicts (one per time step), each level ``(B, C, h, w)``.

        Returns:
            The heads' outputs at stride 4 of the padded canvas.
        """
        levels = [torch.stack([f[k] for f in frames], dim=2) for k in reversed(PYRAMID_LEVELS)]
        cfg = self.config
        x = self.embedding_decoder(levels)
        raw = self.embedding_out(x)
        _, _, _, h, w = raw.shape
        grid = coordinate_grid(h, w, raw.device).to(raw.dtype)
        offsets = torch.tanh(cfg.tanh_scale * raw)
        embeddings = torch.cat(
            [offsets[:, :2] + grid[None, :, None], offsets[:, 2:]], dim=1
        )  # coordinates on y, x; the free dimensions stay offsets
        raw_bandwidths = self.bandwidth_out(x)
        spatial = torch.exp(raw_bandwidths) * cfg.bandwidth_scale
        free = self.free_bandwidths.to(spatial.dtype).view(1, -1, 1, 1, 1)
        bandwidths = torch.cat([spatial, free.expand(spatial.shape[0], -1, *spatial.shape[2:])], 1)
        seediness = torch.sigmoid(self.seediness_out(x))[:, 0]
        semantic = self.semantic_out(self.semantic_decoder(levels))
        return ClipOutputs(
            embeddings=embeddings,
            bandwidths=bandwidths,
            raw_bandwidths=raw_bandwidths,
            seediness=seediness,
            semantic=semantic[:, :-1],
            foreground=semantic[:, -1],
        )

    def forward_clips(self, images: Tensor, image_sizes: list[tuple[int, int]]) -> ClipOutputs:
        """Backbone on every frame, then the heads: ``images (B, T, 3, H, W)`` uint8."""
        b, t = images.shape[:2]
        sizes = [size for size in image_sizes for _ in range(t)]
        features = self.extract_features(images.flatten(0, 1), sizes)
        frames = [
            {k: features[k].unflatten(0, (b, t))[:, i] for k in PYRAMID_LEVELS} for i in range(t)
        ]
        return self.clip_outputs(frames)

    # -- training -----------------------------------------------------------------------------
    def loss(self, batch: ClipBatch) -> dict[str, Tensor]:
        """STEm-Seg losses of a clip batch (SPEC §7.2).

        Args:
            batch: ``images (B, T, 3, H, W)`` with per-frame targets (masks, labels, track ids).

        Returns:
            ``loss_lovasz``, ``loss_smoothness``, ``loss_seediness``, ``loss_semantic`` and
            ``loss_foreground``, each already weighted.
        """
        if batch.targets is None:
            raise ValueError("loss() needs ground truth targets")
        out = self.forward_clips(batch.images, batch.image_sizes)
        h, w = out.seediness.shape[-2:]
        cfg = self.config
        lovasz, smooth, seed, num_instances = [], [], [], 0
        sem_targets, ignores = [], []
        for i, clip in enumerate(batch.targets):
            masks, labels, ignore = clip_targets(clip, (h, w), out.seediness.device)
            sem_targets.append(semantic_targets(masks, labels))
            ignores.append(ignore)
            num_instances += masks.shape[0]
            terms = instance_losses(
                out.embeddings[i].float(),
                out.bandwidths[i].float(),
                out.raw_bandwidths[i].float(),
                out.seediness[i].float(),
                masks,
                ignore,
            )
            lovasz.append(terms["lovasz"])
            smooth.append(terms["smoothness"])
            seed.append(terms["seediness"])
        sem_target = torch.stack(sem_targets)
        ignore = torch.stack(ignores)
        valid = ~ignore
        ce = F.cross_entropy(out.semantic.float(), sem_target, reduction="none")
        semantic = (ce * valid).sum() / valid.sum().clamp(min=1)
        bce = F.binary_cross_entropy_with_logits(
            out.foreground.float(), (sem_target > 0).float(), reduction="none"
        )
        foreground = (bce * valid).sum() / valid.sum().clamp(min=1)
        b = len(batch)
        return {
            "loss_lovasz": cfg.lovasz_weight * torch.stack(lovasz).sum() / max(num_instances, 1),
            "loss_smoothness": cfg.smoothness_weight * torch.stack(smooth).sum() / b,
            "loss_seediness": cfg.seediness_weight * torch.stack(seed).mean(),
            "loss_semantic": cfg.semantic_weight * semantic,
            "loss_foreground": cfg.foreground_weight * foreground,
        }


def clip_targets(
    clip: list[Instances], size: tuple[int, int], device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """One clip's ground truth at stride 4: instance masks over the clip, labels, ignore map.

    Objects are identified across frames by ``track_ids``. Masks are average-pooled to the
    stride-4 map and thresholded at 0.5 (the official code's bilinear + uint8 cast keeps only
    pixels fully inside, eroding every mask by up to a pixel; see the README's deviations).
    Crowd objects form the ignore map.

    Args:
        clip: the ``T`` frames' targets, masks on the padded canvas or smaller (zero-padded).
        size: ``(h, w)`` of the stride-4 map.
        device: device of the outputs.

    Returns:
        ``masks (N, T, h, w)`` bool, ``labels (N,)`` 0-based classes, ``ignore (T, h, w)`` bool.
    """
    h, w = size
    t_len = len(clip)
    ids: dict[int, int] = {}
    labels: list[int] = []
    for inst in clip:
        keep = ~inst.iscrowd if inst.iscrowd is not None else torch.ones(len(inst), dtype=bool)
        for tid, label in zip(
            inst.track_ids[keep].tolist(), inst.labels[keep].tolist(), strict=True
        ):
            if tid not in ids:
                ids[tid] = len(ids)
                labels.append(label)
    masks = torch.zeros(len(ids), t_len, h, w, dtype=torch.bool, device=device)
    ignore = torch.zeros(t_len, h, w, dtype=torch.bool, device=device)
    for t, inst in enumerate(clip):
        if len(inst) == 0:
            continue
        if inst.masks is None:
            raise ValueError("STEm-Seg training needs instance masks")
        small = downsample_masks(inst.masks.to(device), (h, w))
        crowd = inst.iscrowd if inst.iscrowd is not None else torch.zeros(len(inst), dtype=bool)
        for k in range(len(inst)):
            if bool(crowd[k]):
                ignore[t] |= small[k]
            else:
                masks[ids[int(inst.track_ids[k])], t] = small[k]
    present = masks.flatten(1).any(1)
    label_tensor = torch.tensor(labels, dtype=torch.int64, device=device)
    return masks[present], label_tensor[present], ignore


def downsample_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """``(N, H', W')`` bool masks → ``(N, h, w)`` at stride 4 of the padded canvas.

    The masks are zero-padded to ``4h x 4w`` first (they cover the resized image, the canvas is
    padded bottom/right), then average-pooled by 4 and thresholded at 0.5.
    """
    h, w = size
    s = OUTPUT_STRIDE
    full = F.pad(masks.float(), (0, s * w - masks.shape[-1], 0, s * h - masks.shape[-2]))
    return F.avg_pool2d(full[:, None], OUTPUT_STRIDE)[:, 0] > 0.5


def semantic_targets(masks: Tensor, labels: Tensor) -> Tensor:
    """Per-pixel class targets ``(T, h, w)`` int64: 0 background, ``label + 1`` for objects."""
    target = torch.zeros(masks.shape[1:], dtype=torch.int64, device=masks.device)
    for mask, label in zip(masks, labels, strict=True):
        target[mask] = label + 1
    return target


def instance_losses(
    embeddings: Tensor,
    bandwidths: Tensor,
    raw_bandwidths: Tensor,
    seediness: Tensor,
    masks: Tensor,
    ignore: Tensor,
) -> dict[str, Tensor]:
    """Lovász, smoothness and seediness terms of one clip (SPEC §7.2), unweighted.

    For instance ``n`` with pixels ``S_n`` (over all ``T`` frames): ``μ_n`` is the mean embedding
    over ``S_n`` and ``b_n`` the mean bandwidth; its probability map over every clip pixel is
    ``φ_n = exp(-½ Σ_d b_n,d (e_d - μ_n,d)²)``.

    Args:
        embeddings: ``(E, T, h, w)``.
        bandwidths: ``(E, T, h, w)`` activated (inverse variances).
        raw_bandwidths: ``(2, T, h, w)`` pre-activation spatial bandwidths.
        seediness: ``(T, h, w)``.
        masks: ``(N, T, h, w)`` bool instance masks.
        ignore: ``(T, h, w)`` bool pixels no loss looks at.

    Returns:
        ``lovasz``: sum over instances of the Lovász hinge on logits ``2 φ_n - 1`` against the
        mask (ignored pixels left out); ``smoothness``: mean over instances of the variance of
        the raw bandwidths inside ``S_n``; ``seediness``: (Σ_n MSE of the seediness to the
        detached ``φ_n`` inside ``S_n`` + MSE to 0 on background pixels, ignored pixels counting
        zero in the mean) / (N + 1).
    """
    emb = embeddings.flatten(1)  # (E, P)
    bw = bandwidths.flatten(1)
    raw = raw_bandwidths.flatten(1)
    seeds = seediness.flatten()
    flat_masks = masks.flatten(1)  # (N, P)
    valid = ~ignore.flatten()
    zero = emb.sum() * 0.0
    lovasz, smooth, seed = [zero], [zero], []
    for mask in flat_masks:
        count = mask.sum()
        mean = (emb * mask).sum(1) / count
        mean_bw = (bw * mask).sum(1) / count
        prob = torch.exp(-0.5 * (mean_bw[:, None] * (emb - mean[:, None]) ** 2).sum(0))
        lovasz.append(lovasz_hinge(2.0 * prob[valid] - 1.0, mask[valid]))
        inside = raw[:, mask]
        smooth.append(((inside - inside.mean(1, keepdim=True)) ** 2).mean())
        seed.append(((seeds[mask] - prob[mask].detach()) ** 2).mean())
    background = (~flat_masks.any(0)) & valid
    bg_loss = (seeds**2 * background).sum() / (~flat_masks.any(0)).sum().clamp(min=1)
    seed.append(bg_loss)
    num = flat_masks.shape[0]
    return {
        "lovasz": torch.stack(lovasz).sum(),
        "smoothness": torch.stack(smooth).sum() / max(num, 1),
        "seediness": torch.stack(seed).sum() / (num + 1),
    }

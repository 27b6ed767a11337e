"""Benchmark the correlation op: native kernels vs the pure-torch path vs a naive F.unfold version.

CMaskTrack shapes (B=2, C=256, P=16, s=2) at P3 (45x80) and P2 (90x160); forward (no grad) and
forward+backward, median of a few repeats after a warm-up, all implementations measured side by side
in one run and printed as ratios to the native op. The unfold version materialises all P^2 displaced
vectors (C*P^2*H*W values per image, about 4 GB at P2 in float32); it runs image by image and is
skipped, with the reason printed, when its estimated peak memory exceeds ``--mem-budget-gb``.
On a GPU the table also gives the native forward's achieved bandwidth (bytes that must move: both
inputs read once, the output written once) against the card's peak, when that can be derived.

Usage:
    python scripts/bench_correlation.py            # full run (P3 and P2)
    python scripts/bench_correlation.py --quick    # P3 only, fewer repeats
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ovisnet.ops.correlation import NativeBuildError, correlation, load_native

LEVELS = {"P3": (45, 80), "P2": (90, 160)}
PATCH, STEP = 16, 2
Impl = Callable[[Tensor, Tensor], Tensor]


def correlation_unfold(input1: Tensor, input2: Tensor) -> Tensor:
    """Naive correlation via ``F.unfold`` (SPEC §4.4), one image at a time.

    Args:
        input1: ``B x C x H x W``.
        input2: ``B x C x H x W``.

    Returns:
        ``B x P x P x H x W``.
    """
    batch, channels, height, width = input1.shape
    before = STEP * (PATCH - 1) // 2
    after = STEP * (PATCH - 1) - before
    outs = []
    for b in range(batch):
        padded = F.pad(input2[b : b + 1], (before, after, before, after))
        cols = F.unfold(padded, kernel_size=PATCH, dilation=STEP)  # 1 x C*P^2 x H*W
        cols = cols.view(1, channels, PATCH * PATCH, height, width)
        outs.append((input1[b : b + 1, :, None] * cols).sum(1))
    return torch.cat(outs).view(batch, PATCH, PATCH, height, width)


def unfold_peak_bytes(batch: int, channels: int, height: int, width: int, elem: int) -> int:
    """Estimated peak of the unfold version's forward+backward.

    Autograd keeps every image's unfolded tensor (``C*P^2*H*W``); the product and its gradient add
    two more of one image's size while an image is processed.
    """
    return (batch + 2) * channels * PATCH * PATCH * height * width * elem


def available_memory_bytes() -> int:
    """Memory currently available to this process (Linux ``MemAvailable``, else total / 2)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int, device: str) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after ``warmup`` calls."""
    times = []
    for k in range(warmup + repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if k >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_impl(
    impl: Impl, q: Tensor, r: Tensor, grad: Tensor, repeats: int, warmup: int
) -> tuple[float, float]:
    """Median seconds of the forward (no grad) and of forward+backward."""
    device = q.device.type

    def forward() -> None:
        with torch.no_grad():
            impl(q, r)

    def forward_backward() -> None:
        qg = q.detach().requires_grad_(True)
        rg = r.detach().requires_grad_(True)
        impl(qg, rg).backward(grad)

    return (
        median_seconds(forward, repeats, warmup, device),
        median_seconds(forward_backward, repeats, warmup, device),
    )


def peak_bandwidth(device: torch.device) -> float | None:
    """Peak DRAM bandwidth of a CUDA device in bytes/s (DDR: 2 transfers per clock), if known."""
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", None)
    bus_bits = getattr(props, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2.0 * clock_khz * 1e3 * bus_bits / 8


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run every implementation at every level, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="P3 only, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (default 5, quick 3)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--mem-budget-gb",
        type=float,
        default=None,
        help="skip the unfold version above this estimate (default: half the available memory)",
    )
    parser.add_argument(
        "--peak-gbs", type=float, default=None, help="GPU peak bandwidth in GB/s (else derived)"
    )
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    levels = ["P3"] if args.quick else list(LEVELS)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    budget = (
        args.mem_budget_gb * 1e9 if args.mem_budget_gb is not None else available_memory_bytes() / 2
    )
    if device.type == "cuda":
        budget = min(budget, torch.cuda.mem_get_info(device)[0] / 2)

    try:
        load_native()
        native_ok = True
    except NativeBuildError as error:
        print(f"native op unavailable ({error}); only torch and unfold are measured")
        native_ok = False

    impls: dict[str, Impl] = {}
    if native_ok:
        impls["native"] = lambda a, b: correlation(
            a, b, patch_size=PATCH, dilation_patch=STEP, backend="native"
        )
    impls["torch"] = lambda a, b: correlation(
        a, b, patch_size=PATCH, dilation_patch=STEP, backend="torch"
    )
    impls["unfold"] = correlation_unfold

    print(
        f"correlation benchmark: device={device} threads={torch.get_num_threads()} "
        f"B={args.batch} C={args.channels} P={PATCH} s={STEP} float32, median of {repeats} "
        f"after {args.warmup} warm-up"
    )
    header = f"{'level':<6}{'pass':<9}" + "".join(f"{name + ' ms':>12}" for name in impls)
    header += "".join(f"{name + '/native':>15}" for name in impls if name != "native")
    if device.type == "cuda" and native_ok:
        header += f"{'native GB/s':>13}{'% of peak':>11}"
    rows, notes = [header], []
    gen = torch.Generator().manual_seed(0)
    for level in levels:
        height, width = LEVELS[level]
        shape = (args.batch, args.channels, height, width)
        q = torch.randn(shape, generator=gen).to(device)
        r = torch.randn(shape, generator=gen).to(device)
        grad = torch.randn(args.batch, PATCH, PATCH, height, width, generator=gen).to(device)
        results: dict[str, tuple[float, float] | None] = {}
        outputs: dict[str, Tensor] = {}
        for name, impl in impls.items():
            if name == "unfold":
                need = unfold_peak_bytes(*shape, elem=4)
                if need > budget:
                    notes.append(
                        f"{level}: unfold skipped, needs ~{need / 1e9:.1f} GB > budget "
                        f"{budget / 1e9:.1f} GB (--mem-budget-gb)"
                    )
                    results[name] = None
                    continue
            with torch.no_grad():
                outputs[name] = impl(q, r)
            results[name] = time_impl(impl, q, r, grad, repeats, args.warmup)
        reference = outputs.get("native", outputs["torch"])
        for name, out in outputs.items():
            diff = (out - reference).abs().max().item()
            notes.append(f"{level}: max |{name} - reference| = {diff:.2e}")
        for index, label in enumerate(("fwd", "fwd+bwd")):
            row = f"{level:<6}{label:<9}"
            for name in impls:
                timing = results[name]
                row += f"{timing[index] * 1e3:>12.1f}" if timing else f"{'skipped':>12}"
            base = results.get("native")
            for name in impls:
                if name == "native":
                    continue
                timing = results[name]
                ratio = timing[index] / base[index] if timing and base else None
                row += f"{ratio:>14.1f}x" if ratio else f"{'-':>15}"
            if device.type == "cuda" and base and label == "fwd":
                achieved = (2 * q.numel() + grad.numel()) * 4 / base[0]  # bytes/s, float32
                peak = args.peak_gbs * 1e9 if args.peak_gbs else peak_bandwidth(device)
                share = f"{100 * achieved / peak:>10.1f}%" if peak else f"{'n/a':>11}"
                row += f"{achieved / 1e9:>13.1f}{share}"
            rows.append(row)
    print("\n".join(rows))
    for note in notes:
        print("  " + note)


if __name__ == "__main__":
    main()

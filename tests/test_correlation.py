"""Spatial correlation op: naive loop references, closed-form gradients, backends, builds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from ovisnet.ops.correlation import (
    NativeBuildError,
    SpatialCorrelation,
    compile_cuda_extension,
    correlation,
    correlation_torch,
    displacements,
    find_cuda_home,
    load_native,
    output_size,
)

SPEC_CASES = [(16, 2), (3, 1), (5, 2), (4, 1)]  # (patch_size, dilation_patch), SPEC §4.5.1
# (kernel_size, patch_size, stride, padding, dilation, dilation_patch) beyond the CMTR setting.
GENERAL_CASES = [(3, 5, 2, 1, 1, 2), (2, 4, 1, 2, 2, 1), (3, 4, 3, 0, 2, 3), (1, 3, 2, 1, 1, 1)]
BACKENDS = ["native", "torch"]


def _kw(case: tuple[int, ...]) -> dict[str, int]:
    """Keyword arguments of ``correlation`` from ``(k, P, t, p, δ, s)``."""
    names = ("kernel_size", "patch_size", "stride", "padding", "dilation", "dilation_patch")
    return dict(zip(names, case, strict=True))


def _has_cxx() -> bool:
    return shutil.which(os.environ.get("CXX", "c++")) is not None


@pytest.fixture(scope="module")
def native():
    """The compiled extension (built once; first build time printed with ``-s``)."""
    if not _has_cxx():
        pytest.skip("no C++ compiler: the native extension cannot be built")
    start = time.perf_counter()
    module = load_native()
    print(f"\nnative correlation extension ready in {time.perf_counter() - start:.1f} s")
    return module


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    if request.param == "native":
        request.getfixturevalue("native")
    return request.param


def _lists(t: torch.Tensor) -> list:
    return t.tolist()


def naive_forward(q, r, k=1, patch=16, t=1, p=0, dil=1, s=2) -> torch.Tensor:
    """Explicit loops over b, i, j, yo, xo, ky, kx, c (float64), SPEC §4.1 / §4.2."""
    batch, channels, height, width = q.shape
    d = displacements(patch, s)
    out_h = output_size(height, k, t, p, dil)
    out_w = output_size(width, k, t, p, dil)
    ql, rl = _lists(q), _lists(r)
    out = torch.zeros(batch, patch, patch, out_h, out_w, dtype=torch.float64)
    for b in range(batch):
        for i in range(patch):
            for j in range(patch):
                for yo in range(out_h):
                    for xo in range(out_w):
                        acc = 0.0
                        for ky in range(k):
                            for kx in range(k):
                                y, x = yo * t - p + ky * dil, xo * t - p + kx * dil
                                y2, x2 = y + d[i], x + d[j]
                                inside = 0 <= y < height and 0 <= x < width
                                if inside and 0 <= y2 < height and 0 <= x2 < width:
                                    for c in range(channels):
                                        acc += ql[b][c][y][x] * rl[b][c][y2][x2]
                        out[b, i, j, yo, xo] = acc
    return out


def naive_gradients(q, r, g, patch, s) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed forms of SPEC §4.2 (k = 1, t = 1, p = 0) with explicit loops, float64.

    dQ[b,c,y,x] = sum_ij G[b,i,j,y,x] R[b,c,y+d_i,x+d_j];
    dR[b,c,y,x] = sum_ij G[b,i,j,y-d_i,x-d_j] Q[b,c,y-d_i,x-d_j] (valid terms only).
    """
    batch, channels, height, width = q.shape
    d = displacements(patch, s)
    ql, rl, gl = _lists(q), _lists(r), _lists(g)
    grad_q = torch.zeros_like(q)
    grad_r = torch.zeros_like(r)
    for b in range(batch):
        for c in range(channels):
            for y in range(height):
                for x in range(width):
                    acc_q = acc_r = 0.0
                    for i in range(patch):
                        for j in range(patch):
                            y2, x2 = y + d[i], x + d[j]
                            if 0 <= y2 < height and 0 <= x2 < width:
                                acc_q += gl[b][i][j][y][x] * rl[b][c][y2][x2]
                            y1, x1 = y - d[i], x - d[j]
                            if 0 <= y1 < height and 0 <= x1 < width:
                                acc_r += gl[b][i][j][y1][x1] * ql[b][c][y1][x1]
                    grad_q[b, c, y, x] = acc_q
                    grad_r[b, c, y, x] = acc_r
    return grad_q, grad_r


def _inputs(shape, dtype=torch.float64, seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(shape, generator=gen, dtype=dtype).requires_grad_(requires_grad)
    r = torch.randn(shape, generator=gen, dtype=dtype).requires_grad_(requires_grad)
    return q, r


def test_displacements_match_the_spec():
    assert displacements(16, 2) == list(range(-15, 16, 2))
    assert displacements(3, 1) == [-1, 0, 1]
    assert displacements(5, 2) == [-4, -2, 0, 2, 4]
    assert displacements(4, 1) == [-1, 0, 1, 2]
    assert output_size(45, 1, 1, 0, 1) == 45
    assert output_size(9, 3, 2, 1, 2) == 4  # floor((9 + 2 - 5) / 2) + 1


@pytest.mark.parametrize(("patch", "step"), SPEC_CASES)
def test_forward_and_gradients_match_naive_loops(backend, patch, step):
    q, r = _inputs((2, 3, 7, 9), requires_grad=True)
    expected = naive_forward(q.detach(), r.detach(), patch=patch, s=step)
    out = correlation(q, r, patch_size=patch, dilation_patch=step, backend=backend)
    assert out.shape == (2, patch, patch, 7, 9)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=0)

    radius = step * (patch - 1) // 2
    if radius >= 7:  # displacement larger than the image: whole channels are zero
        empty = expected.abs().amax(dim=(0, 3, 4)) == 0
        assert empty.any()
        assert torch.all(out.detach()[:, empty] == 0)

    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grad_q, grad_r = torch.autograd.grad(out, (q, r), g)
    exp_q, exp_r = naive_gradients(q.detach(), r.detach(), g, patch, step)
    torch.testing.assert_close(grad_q, exp_q, atol=1e-10, rtol=0)
    torch.testing.assert_close(grad_r, exp_r, atol=1e-10, rtol=0)


@pytest.mark.parametrize(("k", "patch", "t", "p", "dil", "s"), GENERAL_CASES)
def test_kernel_stride_padding_dilation_match_naive_loops(backend, k, patch, t, p, dil, s):
    q, r = _inputs((2, 3, 8, 9), seed=2)
    expected = naive_forward(q, r, k, patch, t, p, dil, s)
    out = correlation(q, r, **_kw((k, patch, t, p, dil, s)), backend=backend)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("case", [(1, 4, 1, 0, 1, 2), (1, 3, 1, 0, 1, 1), *GENERAL_CASES[:2]])
def test_gradcheck(backend, case):
    q, r = _inputs((1, 2, 5, 6), seed=3, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: correlation(a, b, **_kw(case), backend=backend), (q, r)
    )


def test_only_requested_gradients_are_computed(native):
    q, r = _inputs((1, 2, 5, 6), seed=4)
    q.requires_grad_(True)
    out = correlation(q, r, patch_size=3, dilation_patch=1, backend="native")
    (grad_q,) = torch.autograd.grad(out.sum(), (q,))
    ref_q = q.detach().clone().requires_grad_(True)
    ref = correlation(ref_q, r, patch_size=3, dilation_patch=1, backend="torch")
    (expected,) = torch.autograd.grad(ref.sum(), (ref_q,))
    torch.testing.assert_close(grad_q, expected, atol=1e-10, rtol=0)
    assert r.grad is None


def test_shift_peaks_at_channel_149(backend):
    """SPEC §4.5.3: R = Q translated by (3, -5) peaks at i = 9, j = 5 (channel 149)."""
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(1, 64, 24, 28, generator=gen)
    r = torch.zeros_like(q)
    r[:, :, 3:, :-5] = q[:, :, :-3, 5:]  # R[y + 3, x - 5] = Q[y, x]
    corr = correlation(q, r, patch_size=16, dilation_patch=2, backend=backend)
    best = corr.reshape(1, 256, 24, 28).argmax(dim=1)[0]
    interior = best[:-3, 5:]  # pixels whose displaced partner (y + 3, x - 5) is inside
    assert torch.all(interior == 149)
    assert displacements(16, 2)[9] == 3 and displacements(16, 2)[5] == -5


def test_symmetry(backend):
    """SPEC §4.5.4: corr(Q,R)[i,j,y,x] = corr(R,Q)[P-1-i, P-1-j, y+d_i, x+d_j] where in range."""
    q, r = _inputs((2, 4, 9, 11), seed=6)
    patch, step = 16, 2
    forward = correlation(q, r, patch_size=patch, dilation_patch=step, backend=backend)
    backward = correlation(r, q, patch_size=patch, dilation_patch=step, backend=backend)
    d = displacements(patch, step)
    height, width = q.shape[-2:]
    compared = 0
    for i in range(patch):
        for j in range(patch):
            ys = slice(max(0, -d[i]), min(height, height - d[i]))
            xs = slice(max(0, -d[j]), min(width, width - d[j]))
            if ys.start >= ys.stop or xs.start >= xs.stop:
                continue
            ys2 = slice(ys.start + d[i], ys.stop + d[i])
            xs2 = slice(xs.start + d[j], xs.stop + d[j])
            lhs = forward[:, i, j, ys, xs]
            rhs = backward[:, patch - 1 - i, patch - 1 - j, ys2, xs2]
            torch.testing.assert_close(lhs, rhs, atol=1e-12, rtol=0)
            compared += lhs.numel()
    assert compared > 0


def test_zero_displacement_is_squared_norm(backend):
    """SPEC §4.5.5: Q = R, P = 3, s = 1: channel 4 (d = (0, 0)) is sum_c Q^2."""
    q, _ = _inputs((2, 5, 6, 7), seed=7)
    corr = correlation(q, q, patch_size=3, dilation_patch=1, backend=backend)
    torch.testing.assert_close(corr.reshape(2, 9, 6, 7)[:, 4], q.square().sum(1))


@pytest.mark.parametrize(
    ("k", "patch", "t", "p", "dil", "s"),
    [(1, 16, 1, 0, 1, 2), (3, 16, 2, 1, 1, 2), (3, 5, 1, 1, 2, 1), (2, 7, 3, 2, 1, 3)],
)
def test_native_matches_torch_float32(native, k, patch, t, p, dil, s):
    q, r = _inputs((2, 32, 12, 20), dtype=torch.float32, seed=8, requires_grad=True)
    q2 = q.detach().clone().requires_grad_(True)
    r2 = r.detach().clone().requires_grad_(True)
    kwargs = _kw((k, patch, t, p, dil, s))
    out = correlation(q, r, **kwargs, backend="native")
    ref = correlation_torch(q2, r2, **kwargs)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(9))
    grads = torch.autograd.grad(out, (q, r), g)
    expected = torch.autograd.grad(ref, (q2, r2), g)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-4)


def test_native_cpu_half_inputs_are_computed_in_float32(native):
    q, r = _inputs((1, 8, 6, 7), dtype=torch.float32, seed=10)
    out = correlation(q.bfloat16(), r.bfloat16(), patch_size=4, dilation_patch=1, backend="native")
    assert out.dtype == torch.bfloat16
    ref = correlation_torch(
        q.bfloat16().float(), r.bfloat16().float(), patch_size=4, dilation_patch=1
    )
    torch.testing.assert_close(out, ref.bfloat16())


def test_positional_order_and_kernel_dilation(backend):
    """Positional order (k, P, t, p, s, backend); the kernel dilation is keyword only."""
    q, r = _inputs((1, 2, 9, 8), seed=16)
    out = correlation(q, r, 3, 4, 2, 1, 3, backend, dilation=2)
    torch.testing.assert_close(out, naive_forward(q, r, 3, 4, 2, 1, 2, 3), atol=1e-10, rtol=0)
    module = SpatialCorrelation(3, 4, 2, 1, 3, backend, dilation=2)
    torch.testing.assert_close(module(q, r), out, atol=0, rtol=0)


def test_module_and_validation(backend):
    q, r = _inputs((1, 3, 6, 6), seed=11)
    module = SpatialCorrelation(patch_size=5, dilation_patch=2, backend=backend)
    assert "patch_size=5" in repr(module)
    torch.testing.assert_close(module(q, r), naive_forward(q, r, patch=5, s=2), atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="same shape"):
        correlation(q, r[:, :2], backend=backend)
    with pytest.raises(ValueError, match=">= 1"):
        correlation(q, r, patch_size=0, backend=backend)
    with pytest.raises(ValueError, match="does not fit"):
        correlation(q, r, kernel_size=9, backend=backend)
    with pytest.raises(ValueError, match="backend"):
        correlation(q, r, backend="cudnn")  # type: ignore[arg-type]


def test_without_native_build_import_and_torch_path_still_work(tmp_path: Path):
    """Force the build to fail (env var) in a fresh process: auto warns once, native raises."""
    script = textwrap.dedent(
        """
        import json, sys, warnings
        import ovisnet
        import ovisnet.models.calibration
        from ovisnet.ops.correlation import NativeBuildError, correlation
        import torch
        cheap = "torch.utils.cpp_extension" not in sys.modules
        q = torch.randn(1, 4, 6, 7, dtype=torch.float64)
        r = torch.randn(1, 4, 6, 7, dtype=torch.float64)
        ref = correlation(q, r, patch_size=3, dilation_patch=1, backend="torch")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            a = correlation(q, r, patch_size=3, dilation_patch=1, backend="auto")
            b = correlation(q, r, patch_size=3, dilation_patch=1, backend="auto")
        try:
            correlation(q, r, patch_size=3, dilation_patch=1, backend="native")
            error = None
        except NativeBuildError as exc:
            error = str(exc)
        print(json.dumps({
            "cheap": cheap,
            "warnings": [str(w.message) for w in caught],
            "auto_equal": bool(torch.equal(a, ref) and torch.equal(b, ref)),
            "zero_shift": bool(torch.allclose(ref[0, 1, 1], (q * r).sum(1)[0])),
            "error": error,
        }))
        """
    )
    env = {**os.environ, "OVISNET_DISABLE_NATIVE": "1", "OVISNET_EXT_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["cheap"]
    assert len(result["warnings"]) == 1
    assert "torch path" in result["warnings"][0]
    assert result["auto_equal"] and result["zero_shift"]
    assert result["error"] is not None and "OVISNET_DISABLE_NATIVE" in result["error"]
    assert list(tmp_path.iterdir()) == []  # nothing was compiled


@pytest.mark.slow  # nvcc + two C++ files take about 100 s on 2 cores
@pytest.mark.cuda_build
def test_cuda_sources_compile_and_link(tmp_path: Path):
    """Compile the CUDA kernels with nvcc (no GPU needed); the CPU kernels of that build still run."""
    if find_cuda_home() is None:
        pytest.skip("nvcc / CUDA toolkit not found")
    if torch.version.cuda is None:
        pytest.skip("CPU-only torch cannot link CUDA kernels")
    if not _has_cxx():
        pytest.skip("no C++ compiler")
    start = time.perf_counter()
    module = compile_cuda_extension(build_root=tmp_path)
    print(f"\nCUDA extension compiled in {time.perf_counter() - start:.1f} s")
    assert module.has_cuda()
    q, r = _inputs((1, 3, 5, 6), seed=12)
    out = module.forward(q, r, 1, 4, 1, 0, 1, 2)
    torch.testing.assert_close(out, naive_forward(q, r, patch=4, s=2), atol=1e-10, rtol=0)


def test_build_failure_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("OVISNET_DISABLE_NATIVE", "1")
    with pytest.raises(NativeBuildError, match="disabled"):
        compile_cuda_extension()


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("case", [(1, 4, 1, 0, 1, 2), (3, 5, 2, 1, 2, 1)])
def test_gradcheck_cuda(case):
    q, r = _inputs((1, 2, 5, 6), seed=13)
    q = q.cuda().requires_grad_(True)
    r = r.cuda().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: correlation(a, b, **_kw(case), backend="native"), (q, r)
    )


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 1e-1)]
)
def test_cuda_matches_torch_reference(dtype, tol):
    q, r = _inputs((2, 64, 20, 24), dtype=torch.float32, seed=14)
    q, r = q.cuda().to(dtype), r.cuda().to(dtype)
    q.requires_grad_(True)
    r.requires_grad_(True)
    out = correlation(q, r, patch_size=16, dilation_patch=2, backend="native")
    assert out.dtype == dtype
    q32 = q.detach().float().requires_grad_(True)
    r32 = r.detach().float().requires_grad_(True)
    ref = correlation_torch(q32, r32, patch_size=16, dilation_patch=2)
    scale = ref.abs().max()
    torch.testing.assert_close(out.float() / scale, ref / scale, atol=tol, rtol=0)
    g = torch.randn(
        out.shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(15)
    )
    grads = torch.autograd.grad(out, (q, r), g.to(dtype))
    expected = torch.autograd.grad(ref, (q32, r32), g.to(dtype).float())
    for got, want in zip(grads, expected, strict=True):
        norm = want.abs().max()
        torch.testing.assert_close(got.float() / norm, want / norm, atol=tol, rtol=0)

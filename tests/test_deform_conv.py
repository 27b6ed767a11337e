"""The grid-sample deformable convolution against torchvision's kernel, values and gradients."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import DeformConv2d as TorchvisionDeformConv2d
from torchvision.ops import deform_conv2d

from ovisnet.ops.deform_conv import DeformConv2d, bounded_offsets, deform_conv2d_sampled

CASES = [
    # (batch, channels, out_channels, height, width, kernel, padding, dilation, offset scale[,
    # offset groups])
    (2, 3, 4, 7, 9, 3, 1, 1, 2.0),
    (1, 5, 2, 6, 5, 3, 0, 1, 1.5),
    (2, 2, 3, 8, 8, 3, 2, 2, 3.0),
    (1, 4, 4, 1, 6, 3, 1, 1, 1.0),  # a one-row map
    (1, 3, 2, 5, 5, 1, 0, 1, 0.7),
    (2, 3, 3, 6, 7, 3, 1, 1, 25.0),  # most taps leave the map
    (2, 8, 3, 6, 7, 3, 1, 1, 2.0, 4),  # SipMask's feature alignment: 4 offset groups
    (1, 6, 2, 5, 6, 3, 1, 1, 1.5, 2),
]


@pytest.mark.parametrize("case", CASES)
def test_sampled_equals_torchvision_in_value_and_gradient(case):
    batch, cin, cout, h, w, k, pad, dil, scale = case[:9]
    groups = case[9] if len(case) > 9 else 1
    gen = torch.Generator().manual_seed(sum(case[:6]))
    x = torch.randn(batch, cin, h, w, generator=gen, dtype=torch.float64)
    out_h, out_w = h + 2 * pad - dil * (k - 1), w + 2 * pad - dil * (k - 1)
    off_shape = (batch, 2 * groups * k * k, out_h, out_w)
    off = scale * torch.randn(off_shape, generator=gen, dtype=torch.float64)
    weight = torch.randn(cout, cin, k, k, generator=gen, dtype=torch.float64)
    bias = torch.randn(cout, generator=gen, dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (x, off, weight, bias)]
    expected = deform_conv2d(*inputs[:2], inputs[2], inputs[3], padding=pad, dilation=dil)
    actual = deform_conv2d_sampled(*inputs, padding=pad, dilation=dil)
    torch.testing.assert_close(actual, expected, atol=1e-10, rtol=1e-10)
    grad_out = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
    g_exp = torch.autograd.grad(expected, inputs, grad_out)
    g_act = torch.autograd.grad(actual, inputs, grad_out)
    for name, a, e in zip(("input", "offset", "weight", "bias"), g_act, g_exp, strict=True):
        torch.testing.assert_close(a, e, atol=1e-9, rtol=1e-9, msg=name)


def test_integer_offsets_shift_the_taps_exactly():
    # A 1x1 kernel whose offset is (+1, -2) everywhere reads x[y + 1, x - 2].
    x = torch.arange(30, dtype=torch.float64).view(1, 1, 5, 6)
    off = torch.tensor([1.0, -2.0], dtype=torch.float64).view(1, 2, 1, 1).expand(1, 2, 5, 6)
    out = deform_conv2d_sampled(x, off.contiguous(), torch.ones(1, 1, 1, 1, dtype=torch.float64))
    expected = torch.zeros(5, 6, dtype=torch.float64)
    expected[:4, 2:] = x[0, 0, 1:, :4]
    torch.testing.assert_close(out[0, 0], expected)


@pytest.mark.parametrize("backend", ["sampled", "torchvision"])
def test_module_keeps_torchvision_parameters_and_values(backend):
    torch.manual_seed(0)
    reference = TorchvisionDeformConv2d(4, 6, 3, padding=1, bias=False)
    module = DeformConv2d(4, 6, 3, padding=1, bias=False, backend=backend)
    assert module.state_dict().keys() == reference.state_dict().keys()
    module.load_state_dict(reference.state_dict())
    x, off = torch.randn(2, 4, 5, 7), torch.randn(2, 18, 5, 7)
    torch.testing.assert_close(module(x, off), reference(x, off), atol=1e-5, rtol=1e-5)
    assert f"backend={backend!r}" in repr(module)


def test_strided_views_read_the_right_frames():
    torch.manual_seed(1)
    module = DeformConv2d(3, 3, 3, padding=1, backend="torchvision")
    x, off = torch.randn(4, 3, 6, 8), torch.randn(4, 18, 6, 8)
    torch.testing.assert_close(module(x[1::2], off[0::2]), module(x[1::2].clone(), off[0::2]))


@pytest.mark.parametrize("backend", ["sampled", "torchvision"])
def test_huge_and_nan_offsets_sample_only_the_zero_padding(backend):
    # A diverging run once gave torchvision's CPU kernel NaN offsets: a segmentation fault.
    module = DeformConv2d(2, 2, 3, padding=1, bias=False, backend=backend)
    x = torch.randn(1, 2, 5, 6)
    for value in (1e12, -1e12, float("nan"), float("inf")):
        out = module(x, torch.full((1, 18, 5, 6), value))
        assert torch.equal(out, torch.zeros_like(out)), value


def test_bounded_offsets_changes_no_finite_value_that_matters():
    off = torch.tensor([[[[0.5, -3.0], [40.0, float("nan")]]]])
    bound = 2 + 2 + 2
    assert bounded_offsets(off).flatten().tolist() == [0.5, -3.0, bound, bound]


def test_invalid_backend_and_offset_groups():
    with pytest.raises(ValueError, match="backend"):
        DeformConv2d(2, 2, 3, backend="cuda")
    with pytest.raises(ValueError, match="offset must be"):  # 2 offset groups, 3 channels
        deform_conv2d_sampled(
            torch.zeros(1, 3, 4, 4), torch.zeros(1, 36, 4, 4), torch.zeros(2, 3, 3, 3), padding=1
        )
    with pytest.raises(ValueError, match="offset must be"):  # not a multiple of 2 * 9
        deform_conv2d_sampled(
            torch.zeros(1, 2, 4, 4), torch.zeros(1, 20, 4, 4), torch.zeros(2, 2, 3, 3), padding=1
        )

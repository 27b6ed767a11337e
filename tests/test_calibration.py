"""Temporal Feature Calibration: shapes, gradients, zero offsets, fusion variants, init."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from ovisnet.models.calibration import TemporalFeatureCalibration
from ovisnet.ops.correlation import NativeBuildError, correlation_torch, load_native

SMALL = {"channels": 8, "patch_size": 4, "dilation_patch": 2, "hidden_channels": 6}


def _features(batch=2, channels=8, height=10, width=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, channels, height, width, generator=gen)
    reference = torch.randn(batch, channels, height, width, generator=gen)
    return query, reference


def _native_available() -> bool:
    try:
        load_native()
    except NativeBuildError:
        return False
    return True


def _module(fusion="calibration", seed=0, **kwargs) -> TemporalFeatureCalibration:
    torch.manual_seed(seed)
    return TemporalFeatureCalibration(
        **{**SMALL, "correlation_backend": "torch", **kwargs}, fusion=fusion
    )


def test_default_layers_follow_the_spec():
    module = TemporalFeatureCalibration()
    convs = [m for m in module.offset_convs if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (256, 256, (3, 3)),
        (256, 256, (3, 3)),
        (256, 256, (3, 3)),
    ]
    assert sum(isinstance(m, torch.nn.ReLU) for m in module.offset_convs) == 3
    head = module.offset_head
    assert (head.in_channels, head.out_channels, head.padding) == (256, 18, (1, 1))
    deform = module.deform_conv
    assert deform.weight.shape == (256, 256, 3, 3) and deform.bias is None
    assert deform.padding == (1, 1)
    # Kaiming normal, fan_out, ReLU gain: std sqrt(2 / (256 * 9)); zero biases.
    for conv in convs:
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.02)
        assert torch.all(conv.bias == 0)
    assert head.weight.abs().sum() > 0  # PyTorch default init, not zero
    assert deform.weight.abs().max() <= 1 / math.sqrt(256 * 9)


@pytest.mark.parametrize("fusion", ["calibration", "difference", "add"])
def test_output_shape_and_dtype(fusion):
    query, reference = _features()
    out = _module(fusion)(query, reference)
    assert out.shape == query.shape and out.dtype == query.dtype


@pytest.mark.parametrize("fusion", ["calibration", "difference"])
def test_every_parameter_gets_a_gradient(fusion):
    query, reference = _features(seed=1)
    query.requires_grad_(True)
    reference.requires_grad_(True)
    module = _module(fusion, seed=1)
    module(query, reference).square().mean().backward()
    names = [name for name, _ in module.named_parameters()]
    assert len(names) == 2 * 3 + 2 + 1  # 3 hidden convs, 18-channel conv, deformable weight
    for name, param in module.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name
    assert query.grad.abs().sum() > 0 and reference.grad.abs().sum() > 0


def test_add_fusion_is_the_plain_sum_and_has_no_parameters():
    query, reference = _features(seed=2)
    module = _module("add")
    assert list(module.parameters()) == []
    torch.testing.assert_close(module(query, reference), query + reference)


@pytest.mark.parametrize("fusion", ["calibration", "difference"])
def test_zero_offsets_reduce_to_a_3x3_conv_of_the_reference_plus_query(fusion):
    query, reference = _features(seed=3)
    module = _module(fusion, zero_init_offsets=True)
    assert torch.all(module.offsets(query, reference) == 0)
    expected = F.conv2d(reference, module.deform_conv.weight, padding=1) + query
    torch.testing.assert_close(module(query, reference), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("deform_backend", ["sampled", "torchvision"])
def test_deform_backends_agree(deform_backend):
    query, reference = _features(seed=6)
    module = _module("calibration", seed=6, deform_backend=deform_backend)
    with torch.no_grad():
        module.offset_head.bias.normal_(0.0, 2.0)  # non-trivial offsets
    expected = _module("calibration", seed=6, deform_backend="torchvision")
    expected.load_state_dict(module.state_dict())
    torch.testing.assert_close(
        module(query, reference), expected(query, reference), atol=1e-5, rtol=1e-5
    )


def test_calibration_offsets_read_the_normalised_correlation():
    query, reference = _features(seed=4)
    module = _module("calibration")
    corr = correlation_torch(query, reference, patch_size=4, dilation_patch=2)  # B x 4 x 4 x H x W
    expected = F.leaky_relu(corr.reshape(2, 16, 10, 12) / 8, negative_slope=0.1)
    torch.testing.assert_close(module.offset_features(query, reference), expected)


def test_difference_offsets_read_query_minus_reference():
    query, reference = _features(seed=5)
    module = _module("difference")
    torch.testing.assert_close(module.offset_features(query, reference), query - reference)
    # Adding the same tensor to both inputs leaves the offsets unchanged.
    shift = torch.randn_like(query)
    torch.testing.assert_close(
        module.offsets(query + shift, reference + shift),
        module.offsets(query, reference),
        atol=1e-5,
        rtol=1e-5,
    )
    calibration = _module("calibration")
    moved = calibration.offsets(query + shift, reference + shift)
    assert not torch.allclose(moved, calibration.offsets(query, reference), atol=1e-3)


def test_levels_share_the_weights_and_keep_their_keys():
    module = _module("calibration", seed=6)
    sizes = {"0": (16, 20), "1": (8, 10), "2": (4, 5)}
    gen = torch.Generator().manual_seed(6)
    query = OrderedDict((k, torch.randn(1, 8, *hw, generator=gen)) for k, hw in sizes.items())
    reference = {k: torch.randn(1, 8, *hw, generator=gen) for k, hw in sizes.items()}
    out = module.calibrate_levels(query, reference)
    assert list(out) == ["0", "1", "2"]
    for key in sizes:
        torch.testing.assert_close(out[key], module(query[key], reference[key]))
    as_list = module.calibrate_levels(list(query.values()), list(reference.values()))
    for got, key in zip(as_list, sizes, strict=True):
        torch.testing.assert_close(got, out[key])
    with pytest.raises(ValueError, match="keys"):
        module.calibrate_levels(query, {"0": reference["0"]})


def test_correlation_backend_is_passed_through():
    if not _native_available():
        pytest.skip("native correlation extension unavailable")
    query, reference = _features(seed=7)
    torch_module = _module("calibration", seed=7)
    native_module = _module("calibration", seed=7, correlation_backend="native")
    assert native_module.correlation_backend == "native"
    torch.testing.assert_close(
        native_module(query, reference), torch_module(query, reference), atol=1e-5, rtol=1e-5
    )


def test_invalid_arguments():
    with pytest.raises(ValueError, match="fusion"):
        TemporalFeatureCalibration(fusion="concat")  # type: ignore[arg-type]
    query, reference = _features()
    with pytest.raises(ValueError, match="shapes differ"):
        _module()(query, reference[:, :, :5])
    with pytest.raises(RuntimeError, match="add"):
        _module("add").offsets(query, reference)


def test_pop_stats_reports_offsets_and_share_of_training_calls_then_resets():
    query, reference = _features(seed=8)
    module = _module("calibration", seed=8)
    with torch.no_grad():
        module.offset_head.bias.fill_(3.0)
    assert module.pop_stats() == {}
    module.eval()
    module(query, reference)
    assert module.pop_stats() == {}  # evaluation calls are not recorded
    module.train()
    offsets = [module.offsets(query, reference), module.offsets(query[:1], reference[:1])]
    sampled = [
        module.deform_conv(reference, offsets[0]),
        module.deform_conv(reference[:1], offsets[1]),
    ]
    module(query, reference)
    module(query[:1], reference[:1])
    stats = module.pop_stats()
    expected_offset = (offsets[0].abs().mean() + offsets[1].abs().mean()) / 2
    expected_share = (
        sampled[0].abs().mean() / query.abs().mean()
        + sampled[1].abs().mean() / query[:1].abs().mean()
    ) / 2
    torch.testing.assert_close(stats["offset_abs"], expected_offset)
    torch.testing.assert_close(stats["share"], expected_share)
    assert stats["offset_abs"] > 1.0  # the 3 px bias is in there
    assert module.pop_stats() == {}


def test_pop_stats_share_is_zero_when_offsets_leave_the_map():
    query, reference = _features(seed=9)
    module = _module("calibration", seed=9).train()
    with torch.no_grad():
        module.offset_head.bias.fill_(1e4)  # the dead state AdamW at full lr drove it into
    out = module(query, reference)
    torch.testing.assert_close(out, query)
    stats = module.pop_stats()
    assert stats["share"] == 0.0
    assert stats["offset_abs"] > 1e3


def test_add_fusion_has_no_stats():
    query, reference = _features(seed=10)
    module = _module("add").train()
    module(query, reference)
    assert module.pop_stats() == {}

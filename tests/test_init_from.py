"""``init_from=coco``: torchvision's pretrained weights read from torch hub's cache (never
downloaded), per model family, through the real loading path of
:func:`ovisnet.models.checkpoint.init_model`."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
from hydra import compose, initialize_config_dir
from torchvision.models import ResNet50_Weights, WeightsEnum, resnet50
from torchvision.models.detection import (
    FCOS_ResNet50_FPN_Weights,
    MaskRCNN_ResNet50_FPN_Weights,
    fcos_resnet50_fpn,
    maskrcnn_resnet50_fpn,
)

from ovisnet.models.backbones import resnet_fpn
from ovisnet.models.checkpoint import init_model
from ovisnet.models.masktrack import MaskTrackRCNN
from ovisnet.models.sipmask import SipMaskVIS
from ovisnet.models.stemseg import STEmSeg, STEmSegConfig
from ovisnet.train import CONFIG_DIR

MARK = 0.5
"""Value written into ``conv1.weight`` of every test checkpoint, recognisable after loading."""


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache (``$TORCH_HOME/hub``) under ``tmp_path``."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert Path(torch.hub.get_dir()) == tmp_path / "hub"
    return tmp_path / "hub"


def _place(hub: Path, weights: WeightsEnum, state: dict[str, torch.Tensor]) -> Path:
    """Write ``state`` where torchvision caches ``weights``."""
    path = hub / "checkpoints" / Path(urlparse(weights.url).path).name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def _marked(state: dict[str, torch.Tensor], key: str) -> dict[str, torch.Tensor]:
    state[key] = torch.full_like(state[key], MARK)
    return state


@pytest.fixture(scope="module")
def masktrack_r50() -> MaskTrackRCNN:
    torch.manual_seed(0)
    return MaskTrackRCNN(resnet_fpn("resnet50"), num_classes=25)


@pytest.fixture(scope="module")
def maskrcnn_coco_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    return _marked(model.state_dict(), "backbone.body.conv1.weight")


def test_masktrack_from_the_cached_coco_mask_rcnn(hub, masktrack_r50, maskrcnn_coco_state):
    model = masktrack_r50
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = _place(hub, MaskRCNN_ResNet50_FPN_Weights.COCO_V1, maskrcnn_coco_state)

    report = init_model(model, "coco")

    state = model.state_dict()
    assert torch.all(state["backbone.body.conv1.weight"] == MARK)
    for prefix in ("backbone.fpn.", "rpn.head.", "roi_heads.box_head.", "roi_heads.mask_head."):
        keys = [k for k in state if k.startswith(prefix)]
        assert keys and all(torch.equal(state[k], maskrcnn_coco_state[k]) for k in keys), prefix
    for key in (
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.box_predictor.bbox_pred.bias",
    ):
        assert state[key].shape[0] != maskrcnn_coco_state[key].shape[0]  # 26 (104) vs 91 (364)
        assert torch.equal(state[key], before[key])  # fresh
        assert key in report.skipped and key in report.missing
    assert "roi_heads.mask_predictor.mask_fcn_logits.weight" in report.skipped
    assert any(k.startswith("track_head.") for k in report.missing)
    text = str(report)
    assert str(path) in text and "MaskRCNN_ResNet50_FPN_Weights.COCO_V1" in text
    loaded, fresh = text.splitlines()[1:]
    assert "backbone.body" in loaded and "rpn.head" in loaded
    assert "track_head" in fresh and "roi_heads.box_predictor" in fresh


def test_missing_cache_file_names_the_path_url_and_from_scratch(hub, masktrack_r50):
    weights = MaskRCNN_ResNet50_FPN_Weights.COCO_V1
    expected = hub / "checkpoints" / Path(urlparse(weights.url).path).name
    with pytest.raises(FileNotFoundError) as info:
        init_model(masktrack_r50, "coco")
    message = str(info.value)
    assert str(expected) in message and weights.url in message and "init_from=null" in message


def test_a_light_backbone_is_refused_before_anything_is_read(hub):
    model = MaskTrackRCNN(resnet_fpn("resnet18", out_channels=64), num_classes=3)
    with pytest.raises(ValueError, match="ResNet-50 backbone with a 256-channel FPN"):
        init_model(model, "coco")
    with pytest.raises(TypeError, match="Linear"):
        init_model(torch.nn.Linear(2, 2), "coco")


def test_a_path_still_loads_a_local_mask_rcnn_checkpoint(tmp_path, masktrack_r50):
    state = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=26)
    path = tmp_path / "local.pth"
    torch.save({"model": _marked(state.state_dict(), "rpn.head.cls_logits.bias")}, path)
    report = init_model(masktrack_r50, str(path))
    assert torch.all(masktrack_r50.state_dict()["rpn.head.cls_logits.bias"] == MARK)
    assert report.source == str(path) and report.skipped == {}


def test_sipmask_takes_backbone_and_p3_p7_fpn_from_cached_fcos(hub):
    torch.manual_seed(0)
    model = SipMaskVIS(resnet_fpn("resnet50", pyramid="p3p7"), num_classes=25)
    head_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("head.")}
    fcos = _marked(
        fcos_resnet50_fpn(weights=None, weights_backbone=None).state_dict(),
        "backbone.body.conv1.weight",
    )
    _place(hub, FCOS_ResNet50_FPN_Weights.COCO_V1, fcos)

    report = init_model(model, "coco")

    state = model.state_dict()
    assert torch.all(state["backbone.body.conv1.weight"] == MARK)
    fpn = [k for k in state if k.startswith("backbone.fpn.")]
    assert any(".p6." in k for k in fpn) and any(".p7." in k for k in fpn)
    assert all(torch.equal(state[k], fcos[k]) and k in report.loaded for k in fpn)
    assert head_before and all(torch.equal(state[k], v) for k, v in head_before.items())
    assert set(head_before) <= set(report.missing)
    fcos_head = [k for k in fcos if k.startswith("head.")]
    assert fcos_head and all("FCOS head" in report.skipped[k] for k in fcos_head)


def test_stemseg_takes_the_cached_imagenet_resnet(hub):
    torch.manual_seed(0)
    config = STEmSegConfig(
        embedding_widths=(8, 8, 8, 8), semantic_widths=(8, 8, 8, 8), num_groups=4
    )
    model = STEmSeg(resnet_fpn("resnet50"), num_classes=25, config=config)
    fpn_before = {
        k: v.clone() for k, v in model.state_dict().items() if k.startswith("backbone.fpn.")
    }
    imagenet = _marked(resnet50(weights=None).state_dict(), "conv1.weight")
    _place(hub, ResNet50_Weights.IMAGENET1K_V1, imagenet)

    report = init_model(model, "coco")

    state = model.state_dict()
    body = [k for k in state if k.startswith("backbone.body.")]
    assert all(torch.equal(state[k], imagenet[k.removeprefix("backbone.body.")]) for k in body)
    assert torch.all(state["backbone.body.conv1.weight"] == MARK)
    assert report.skipped == {
        "fc.weight": "ImageNet classifier: not used",
        "fc.bias": "ImageNet classifier: not used",
    }
    assert all(torch.equal(state[k], v) for k, v in fpn_before.items())
    assert set(fpn_before) <= set(report.missing)
    assert "ResNet50_Weights.IMAGENET1K_V1" in str(report)


def test_train_build_applies_init_from(tmp_path):
    # the CLI path: build() hands init_from to init_model (here refused: a ResNet-18 preset)
    from ovisnet.train import build

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            ["experiment=cmasktrack_cpu", "init_from=coco", f"paths.output_dir={tmp_path}"],
        )
    with pytest.raises(ValueError, match="ResNet-50 backbone with a 256-channel FPN"):
        build(cfg)


# -- backbone.weights=imagenet ------------------------------------------------------------------


def test_torchvision_backbone_takes_imagenet_weights_from_the_cache(hub):
    from torchvision.models import ResNet18_Weights, resnet18

    weights = ResNet18_Weights.IMAGENET1K_V1
    with pytest.raises(FileNotFoundError) as info:
        resnet_fpn("resnet18", out_channels=64, weights="imagenet")
    message = str(info.value)
    assert weights.url in message and "backbone.weights=null" in message
    assert str(hub / "checkpoints") in message

    torch.manual_seed(3)
    imagenet = _marked(resnet18(weights=None).state_dict(), "conv1.weight")
    path = _place(hub, weights, imagenet)
    model = resnet_fpn("resnet18", out_channels=64, weights="imagenet", frozen_bn=False)
    body = model.body.state_dict()
    assert torch.all(body["conv1.weight"] == MARK)
    assert all(torch.equal(v, imagenet[k]) for k, v in body.items() if k in imagenet)
    # a path loads the same file; frozen BN takes the statistics too
    frozen = resnet_fpn("resnet18", out_channels=64, weights=str(path))
    assert torch.equal(frozen.body.state_dict()["bn1.running_var"], imagenet["bn1.running_var"])
    with pytest.raises(ValueError, match="does not fit this backbone"):
        resnet_fpn("resnet34", out_channels=64, weights=str(path))


def test_timm_backbone_takes_its_weights_from_the_hugging_face_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants
    import timm
    from safetensors.torch import save_file

    from ovisnet.models.backbones import TimmFPN

    cache = tmp_path / "hf"
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    with pytest.raises(FileNotFoundError, match=r"timm/resnet18\.a1_in1k.*backbone\.weights=null"):
        TimmFPN("resnet18", out_channels=32, weights="imagenet")

    # the cache layout huggingface_hub writes: refs/main names the snapshot holding the file
    torch.manual_seed(4)
    state = _marked(timm.create_model("resnet18", pretrained=False).state_dict(), "conv1.weight")
    repo = cache / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))

    model = TimmFPN("resnet18", out_channels=32, weights="imagenet")
    body = model.body.state_dict()
    assert torch.all(body["conv1.weight"] == MARK)
    assert all(torch.equal(v, state[k]) for k, v in body.items() if k in state)
    with pytest.raises(FileNotFoundError, match="no such file"):
        TimmFPN("resnet18", weights=str(tmp_path / "none.safetensors"))


# -- which runs start from pretrained weights ---------------------------------------------------

RECIPES = ["masktrack", "cmasktrack", "sipmask", "csipmask", "stemseg", "stemseg_x101"]
CPU_PRESETS = ["cmasktrack_cpu", "csipmask_cpu", "stemseg_cpu"]


@pytest.mark.parametrize("experiment", RECIPES + CPU_PRESETS)
def test_paper_recipes_default_to_the_papers_initialisation(experiment):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", [f"experiment={experiment}"])
    assert cfg.init_from == ("coco" if experiment in RECIPES else None)
    assert cfg.model.backbone.weights is None  # the recipes' init_from covers the backbone

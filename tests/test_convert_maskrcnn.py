"""mmdet Mask R-CNN checkpoint conversion: class order, strictness, and the key manifests of the released COCO
checkpoints (the fixture's outputs are compared in test_convert_parity.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pacavit import PaCaViTForInstanceSegmentation
from pacavit.convert import ConversionError
from pacavit.convert.maskrcnn import convert_maskrcnn_checkpoint, mmdet_class_to_torchvision

from helpers import reference_dir


@pytest.fixture(scope="module")
def maskrcnn_fixture(request):
    path = reference_dir()
    if path is None or not (path / "maskrcnn_visible.pth").exists():
        pytest.skip(
            "maskrcnn_visible fixture not found: set PACAVIT_REFERENCE_DIR (../shared/reference in the workspace)"
        )
    return path


def _fixture_state_dict(reference: Path) -> tuple[dict, dict]:
    checkpoint = torch.load(reference / "maskrcnn_visible.pth", weights_only=True)
    return checkpoint, json.loads((reference / "maskrcnn_visible.json").read_text())


def test_class_order_and_strictness(maskrcnn_fixture, tmp_path):
    checkpoint, spec = _fixture_state_dict(maskrcnn_fixture)
    sd = checkpoint["state_dict"]
    num_classes = sd["roi_head.bbox_head.fc_cls.weight"].shape[0] - 1
    assert (
        mmdet_class_to_torchvision(num_classes, num_classes) == 0 and mmdet_class_to_torchvision(2, num_classes) == 3
    )
    model = convert_maskrcnn_checkpoint(checkpoint, tmp_path / "a", original_config=spec, verbose=False)
    weights = model.state_dict()
    cls = weights["detector.roi_heads.box_predictor.cls_score.weight"]
    torch.testing.assert_close(cls[3], sd["roi_head.bbox_head.fc_cls.weight"][2], rtol=0, atol=0)  # class 2 -> row 3
    torch.testing.assert_close(cls[0], sd["roi_head.bbox_head.fc_cls.weight"][num_classes], rtol=0, atol=0)  # bg
    reg = weights["detector.roi_heads.box_predictor.bbox_pred.weight"]
    torch.testing.assert_close(reg[12:16], sd["roi_head.bbox_head.fc_reg.weight"][8:12], rtol=0, atol=0)
    assert reg[:4].abs().sum() == 0
    logits = weights["detector.roi_heads.mask_predictor.mask_fcn_logits.weight"]
    torch.testing.assert_close(logits[3], sd["roi_head.mask_head.conv_logits.weight"][2], rtol=0, atol=0)
    assert model.config.id2label == {0: "c0", 1: "c1", 2: "c2", 3: "c3"}  # from meta.dataset_meta.classes

    unknown = {"meta": {}, "state_dict": {**sd, "roi_head.mask_head.mystery.weight": torch.zeros(1)}}
    with pytest.raises(ConversionError, match=r"roi_head\.mask_head\.mystery\.weight"):
        convert_maskrcnn_checkpoint(unknown, tmp_path / "b", original_config=spec, verbose=False)
    missing = {"meta": {}, "state_dict": {k: v for k, v in sd.items() if k != "rpn_head.rpn_conv.bias"}}
    with pytest.raises(
        ConversionError, match=r"missing from the checkpoint \(1\): \['detector\.rpn\.head\.conv\.0\.0\.bias'\]"
    ):
        convert_maskrcnn_checkpoint(missing, tmp_path / "c", original_config=spec, verbose=False)
    agnostic = {"meta": {}, "state_dict": {**sd, "roi_head.bbox_head.fc_reg.weight": torch.zeros(4, 48)}}
    with pytest.raises(ConversionError, match="class-agnostic"):
        convert_maskrcnn_checkpoint(agnostic, tmp_path / "d", original_config=spec, verbose=False)


@pytest.mark.parametrize(
    "name",
    [
        "mask_rcnn_pacavit_tiny_p2cconv_100_0_mstrain_480_800_1x_coco",
        "mask_rcnn_pacavit_convmixer_tiny_100_0_mstrain_480_800_1x_coco",
        "mask_rcnn_pacavit_small_p2cmlp_100_0_mstrain_480_800_1x_coco",
    ],
)
def test_released_checkpoint_manifests(maskrcnn_fixture, name):
    """Names, shapes and parameter counts of released checkpoints (meta tensors: no weights needed)."""
    from pacavit.convert import check_against_model
    from pacavit.convert.maskrcnn import build_maskrcnn_config, convert_maskrcnn_state_dict

    path = maskrcnn_fixture / "manifests" / f"{name}.json"
    manifest = json.loads(path.read_text())
    sd = {k: torch.empty(s, dtype=getattr(torch, d), device="meta") for k, s, d in manifest["keys"]}
    config = build_maskrcnn_config(sd, original_config=manifest)
    converted, report = convert_maskrcnn_state_dict(sd, config)
    with torch.device("meta"):
        model = PaCaViTForInstanceSegmentation(config)
    check_against_model(converted, model)
    assert report.mapped == len(sd) and not report.dropped
    from torchvision.models._meta import _COCO_CATEGORIES

    assert config.num_labels == 80 and config.fpn_hidden_size == 256
    assert list(config.id2label.values()) == [c for c in _COCO_CATEGORIES if c not in ("__background__", "N/A")]
    # torchvision's extra background slot: 4 x 1024 + 4 box-regression and 256 + 1 mask-logit parameters
    extra = 4 * config.box_head_hidden_size + 4 + config.mask_head_hidden_size + 1
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"] + extra

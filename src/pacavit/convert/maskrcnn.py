"""Instance-segmentation part of the converter: mmdetection 3 Mask R-CNN checkpoints
(`mask_rcnn_pacavit_*_mstrain_480_800_1x_coco.pth`) -> `PaCaViTForInstanceSegmentation` folders.

    python -m pacavit.convert --task instance-segmentation --checkpoint mask_rcnn_pacavit_tiny_p2cconv_100_0_....pth \
        --preset pacavit_tiny_p2cconv_100_0 --output-dir mask-rcnn-pacavit-tiny-coco

Backbone keys (`backbone.`) go through the backbone rules (`pacavit.convert.backbone`); the neck/RPN/RoI-head keys
are renamed by `HEAD_RULES`. Strict like the other tasks: a key that no
rule knows, a missing model key or a shape mismatch is an error naming the keys.

Class order: mmdet puts the background LAST (`fc_cls` row K of K+1) and has no background slot in the box
regression and mask logits; torchvision puts it FIRST. So `cls_score` rows become `[K, 0, 1, ..., K-1]`, and one
zero class is prepended to `bbox_pred` (4 rows) and `mask_fcn_logits` (1 channel). This is exact: the softmax over
the same logits gives the same probabilities, and the background regression/mask are never used.

The detector settings come from `--original-config` (the fixture JSON's `head`, or a manifest's top-level
`neck`/`rpn_head`/`roi_head`/`test_cfg`) and otherwise from the config defaults (= the original detection configs),
with the widths and the class count read from the checkpoint's shapes. Class names come from the checkpoint's
`meta.dataset_meta.classes`, else the 80 COCO names when there are 80 classes.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from functools import partial
from pathlib import Path

import torch

from ..configuration_pacavit_maskrcnn import PaCaViTMaskRCNNConfig
from ..modeling_pacavit_maskrcnn import PaCaViTForInstanceSegmentation
from ..preprocessing import default_image_processor
from .backbone import build_backbone_config, convert_backbone_state_dict
from .common import (
    BACKBONE,
    BACKBONE_PREFIX,
    ConversionError,
    backbone_entries,
    check_supported,
    extract_state_dict,
    load_checkpoint_file,
    reading_original_config,
    save_converted_model,
    source_name,
)

# The 80 COCO classes in mmdet's order (`CocoDataset.METAINFO['classes']`, = the category ids sorted).
COCO_CLASSES = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)

_P = "(weight|bias)"
# (pattern on the mmdet key, replacement under `detector.`); the class-order keys are handled by `_reorder`.
HEAD_RULES = [
    (rf"^neck\.lateral_convs\.(\d+)\.conv\.{_P}$", r"backbone.fpn.inner_blocks.\1.0.\2"),
    (rf"^neck\.fpn_convs\.(\d+)\.conv\.{_P}$", r"backbone.fpn.layer_blocks.\1.0.\2"),
    (rf"^rpn_head\.rpn_conv\.{_P}$", r"rpn.head.conv.0.0.\1"),
    (rf"^rpn_head\.rpn_cls\.{_P}$", r"rpn.head.cls_logits.\1"),
    (rf"^rpn_head\.rpn_reg\.{_P}$", r"rpn.head.bbox_pred.\1"),
    (rf"^roi_head\.bbox_head\.shared_fcs\.0\.{_P}$", r"roi_heads.box_head.fc6.\1"),
    (rf"^roi_head\.bbox_head\.shared_fcs\.1\.{_P}$", r"roi_heads.box_head.fc7.\1"),
    (rf"^roi_head\.bbox_head\.fc_cls\.{_P}$", r"roi_heads.box_predictor.cls_score.\1"),
    (rf"^roi_head\.bbox_head\.fc_reg\.{_P}$", r"roi_heads.box_predictor.bbox_pred.\1"),
    (rf"^roi_head\.mask_head\.convs\.(\d+)\.conv\.{_P}$", r"roi_heads.mask_head.\1.0.\2"),
    (rf"^roi_head\.mask_head\.upsample\.{_P}$", r"roi_heads.mask_predictor.conv5_mask.\1"),
    (rf"^roi_head\.mask_head\.conv_logits\.{_P}$", r"roi_heads.mask_predictor.mask_fcn_logits.\1"),
]
_require = partial(check_supported, what="mmdet configuration")


def mmdet_class_to_torchvision(mmdet_index: int, num_classes: int) -> int:
    """Row of torchvision's `cls_score` that holds mmdet's `fc_cls` row `mmdet_index` (background: K -> 0)."""
    return 0 if mmdet_index == num_classes else mmdet_index + 1


def _reorder(new_key: str, value: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Background-last (mmdet) -> background-first (torchvision) for the three class-indexed tensors."""
    if new_key.startswith("roi_heads.box_predictor.cls_score."):
        if value.shape[0] != num_classes + 1:
            raise ConversionError(f"fc_cls has {value.shape[0]} rows; expected num_classes + 1 = {num_classes + 1}.")
        order = [num_classes] + list(range(num_classes))
        return value[order]
    if new_key.startswith("roi_heads.box_predictor.bbox_pred."):
        if value.shape[0] != 4 * num_classes:
            raise ConversionError(
                f"fc_reg has {value.shape[0]} rows; expected 4 * num_classes = {4 * num_classes} "
                "(class-agnostic box regression, reg_class_agnostic=True, is not supported)."
            )
        return torch.cat([value.new_zeros((4,) + value.shape[1:]), value])
    if new_key.startswith("roi_heads.mask_predictor.mask_fcn_logits."):
        if value.shape[0] != num_classes:
            raise ConversionError(f"conv_logits has {value.shape[0]} channels; expected num_classes = {num_classes}.")
        return torch.cat([value.new_zeros((1,) + value.shape[1:]), value])
    return value


# --------------------------------------------------------------------------------------------
# mmdet model dicts -> detector settings
# --------------------------------------------------------------------------------------------
def detector_settings(head: dict | None, state_dict: dict) -> dict:
    """`PaCaViTMaskRCNNConfig` keyword arguments from the mmdet dicts (`neck`, `rpn_head`, `roi_head`,
    `test_cfg`; any may be missing) and the checkpoint's shapes (which always win for widths and class count).
    A value of the wrong type in the dicts is a `ConversionError` naming it."""
    with reading_original_config("original configuration's detector dicts (neck, rpn_head, roi_head, test_cfg)"):
        settings = _settings_from_original(head or {})

    # widths and counts from the weights
    def shape(key):
        if key not in state_dict:
            raise ConversionError(f"The checkpoint has no {key!r}: it is not an mmdet Mask R-CNN checkpoint.")
        return tuple(state_dict[key].shape)

    settings["fpn_hidden_size"] = shape("neck.lateral_convs.0.conv.weight")[0]
    settings["box_head_hidden_size"] = shape("roi_head.bbox_head.shared_fcs.0.weight")[0]
    settings["mask_head_hidden_size"] = shape("roi_head.mask_head.convs.0.conv.weight")[0]
    settings["mask_head_num_convs"] = len(
        {m.group(1) for k in state_dict if (m := re.match(r"^roi_head\.mask_head\.convs\.(\d+)\.", k))}
    )
    settings["num_labels"] = shape("roi_head.bbox_head.fc_cls.weight")[0] - 1
    num_anchors = shape("rpn_head.rpn_cls.weight")[0]
    ratios = settings.get("anchor_aspect_ratios", [0.5, 1.0, 2.0])
    _require(
        num_anchors == len(ratios), f"rpn_cls has {num_anchors} anchors per position, the anchor config {len(ratios)}"
    )
    _require(
        shape("rpn_head.rpn_cls.weight")[0] * 4 == shape("rpn_head.rpn_reg.weight")[0],
        "rpn_reg must have 4 deltas per anchor",
    )
    return settings


def _settings_from_original(head: dict) -> dict:
    """The settings the mmdet dicts give (see `detector_settings`)."""
    settings: dict = {}
    neck, rpn, roi = head.get("neck") or {}, head.get("rpn_head") or {}, head.get("roi_head") or {}
    if neck:
        _require(neck.get("type", "FPN") == "FPN", f"neck type {neck.get('type')!r} (only FPN)")
        _require(
            neck.get("num_outs", 5) == 5 and not neck.get("add_extra_convs", False),
            "FPN must have 5 outputs with a max-pool P6",
        )
        _require(neck.get("start_level", 0) == 0, "FPN start_level must be 0")
    if rpn:
        _require(rpn.get("type", "RPNHead") == "RPNHead", f"rpn_head type {rpn.get('type')!r}")
        anchors = rpn.get("anchor_generator") or {}
        _require(anchors.get("center_offset", 0.0) == 0.0, "anchor center_offset must be 0")
        strides = list(anchors.get("strides", [4, 8, 16, 32, 64]))
        scales = list(anchors.get("scales", [8]))
        _require(len(scales) == 1, f"one anchor scale per level, got {scales}")
        settings.update(
            anchor_strides=strides,
            anchor_sizes=[scales[0] * s for s in strides],
            anchor_aspect_ratios=list(anchors.get("ratios", [0.5, 1.0, 2.0])),
        )
        stds = (rpn.get("bbox_coder") or {}).get("target_stds", [1.0] * 4)
        _require(list(stds) == [1.0] * 4, f"RPN target_stds {stds} (torchvision's RPN box coder uses 1)")
        _require(
            rpn.get("feat_channels", rpn.get("in_channels")) == rpn.get("in_channels"),
            "RPN feat_channels must equal in_channels",
        )
    if roi:
        _require(roi.get("type", "StandardRoIHead") == "StandardRoIHead", f"roi_head type {roi.get('type')!r}")
        for name, size_key in (
            ("bbox_roi_extractor", "roi_output_size"),
            ("mask_roi_extractor", "mask_roi_output_size"),
        ):
            layer = (roi.get(name) or {}).get("roi_layer") or {}
            if layer:
                _require(layer.get("type", "RoIAlign") == "RoIAlign", f"{name} layer {layer.get('type')!r}")
                _require(layer.get("aligned", True), f"{name}: RoIAlign aligned=False")
                settings[size_key] = layer.get("output_size", 7 if size_key == "roi_output_size" else 14)
                settings["roi_sampling_ratio"] = layer.get("sampling_ratio", 0)
            extractor = roi.get(name) or {}
            if "finest_scale" in extractor:
                settings["roi_finest_scale"] = extractor["finest_scale"]
        bbox = roi.get("bbox_head") or {}
        if bbox:
            _require(
                bbox.get("type", "Shared2FCBBoxHead") == "Shared2FCBBoxHead", f"bbox_head type {bbox.get('type')!r}"
            )
            _require(not bbox.get("reg_class_agnostic", False), "class-agnostic box regression")
            stds = (bbox.get("bbox_coder") or {}).get("target_stds", [0.1, 0.1, 0.2, 0.2])
            settings["bbox_reg_weights"] = [1.0 / s for s in stds]
        mask = roi.get("mask_head") or {}
        if mask:
            _require(mask.get("type", "FCNMaskHead") == "FCNMaskHead", f"mask_head type {mask.get('type')!r}")
    test = head.get("test_cfg") or {}
    if test.get("rpn"):
        r = test["rpn"]
        settings.update(
            rpn_pre_nms_top_n_test=r.get("nms_pre", 1000),
            rpn_post_nms_top_n_test=r.get("max_per_img", 1000),
            rpn_nms_threshold=(r.get("nms") or {}).get("iou_threshold", 0.7),
        )
    if test.get("rcnn"):
        r = test["rcnn"]
        settings.update(
            box_score_threshold=r.get("score_thr", 0.05),
            box_nms_threshold=(r.get("nms") or {}).get("iou_threshold", 0.5),
            box_detections_per_image=r.get("max_per_img", 100),
            mask_threshold=r.get("mask_thr_binary", 0.5),
        )
    return settings


def _head_dicts(original_config: dict | None) -> dict | None:
    if not original_config:
        return None
    if original_config.get("head"):
        return original_config["head"]
    if "neck" in original_config or "roi_head" in original_config:  # manifest form
        return {k: original_config.get(k) for k in ("neck", "rpn_head", "roi_head", "test_cfg")}
    return None


def build_maskrcnn_config(
    state_dict: dict,
    preset: str | None = None,
    original_config: dict | None = None,
    class_names: list[str] | None = None,
) -> PaCaViTMaskRCNNConfig:
    """The detector's config: the backbone's (`build_backbone_config`) plus `detector_settings`, with the class names
    of `class_names` (the checkpoint's `meta`), else COCO's 80 when there are 80 classes."""
    manifest_builder = ((original_config or {}).get("backbone_cfg") or {}).get("type")
    if original_config is not None and "original_constructor" not in original_config and manifest_builder:
        preset, original_config_backbone = re.sub(r"_downstream$", "", manifest_builder), None
    else:
        original_config_backbone = original_config
    backbone_keys = OrderedDict((k[len(BACKBONE_PREFIX) :], v) for k, v in backbone_entries(state_dict).items())
    if not backbone_keys:
        raise ConversionError("The checkpoint has no 'backbone.' keys: it is not an mmdet Mask R-CNN checkpoint.")
    backbone = build_backbone_config(backbone_keys, BACKBONE, preset, original_config_backbone)
    settings = detector_settings(_head_dicts(original_config), state_dict)
    num_labels = settings.pop("num_labels")
    if class_names is None and num_labels == len(COCO_CLASSES):
        class_names = list(COCO_CLASSES)
    if class_names is not None and len(class_names) != num_labels:
        raise ConversionError(f"meta.dataset_meta.classes has {len(class_names)} names for {num_labels} classes.")
    names = class_names or [f"LABEL_{i}" for i in range(num_labels)]
    return PaCaViTMaskRCNNConfig.from_backbone_config(
        backbone,
        **settings,
        id2label={i: n for i, n in enumerate(names)},
        label2id={n: i for i, n in enumerate(names)},
    )


def convert_maskrcnn_state_dict(state_dict: dict, config: PaCaViTMaskRCNNConfig):
    """mmdet Mask R-CNN state dict -> `PaCaViTForInstanceSegmentation` keys (before the strict shape check)."""
    converted_backbone, report = convert_backbone_state_dict(backbone_entries(state_dict), config, BACKBONE)
    converted = OrderedDict(("detector.backbone.body." + k, v) for k, v in converted_backbone.items())
    unknown = []
    for key, value in state_dict.items():
        if key.startswith(BACKBONE_PREFIX):
            continue
        for pattern, replacement in HEAD_RULES:
            if re.match(pattern, key):
                new_key = re.sub(pattern, replacement, key)
                converted["detector." + new_key] = _reorder(new_key, value, config.num_labels)
                report.mapped += 1
                break
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(
            f"{len(unknown)} checkpoint keys match no Mask R-CNN conversion rule: {unknown[:12]}"
            f"{' ...' if len(unknown) > 12 else ''}. Only mmdet `MaskRCNN` (FPN, RPNHead, Shared2FCBBoxHead, "
            "FCNMaskHead) checkpoints are supported."
        )
    return converted, report


def convert_maskrcnn_checkpoint(
    checkpoint: str | Path | dict,
    output_dir: str | Path,
    preset: str | None = None,
    original_config: dict | None = None,
    use_ema: bool = False,
    verbose: bool = True,
):
    """Convert an mmdet Mask R-CNN checkpoint; save model + image processor to `output_dir`; return the model."""
    raw = load_checkpoint_file(checkpoint)
    state_dict = extract_state_dict(raw, use_ema=use_ema, source=source_name(checkpoint))
    meta = raw.get("meta") if isinstance(raw.get("meta"), dict) else {}
    class_names = (meta.get("dataset_meta") or {}).get("classes")
    config = build_maskrcnn_config(state_dict, preset, original_config, list(class_names) if class_names else None)
    converted, report = convert_maskrcnn_state_dict(state_dict, config)
    model = save_converted_model(
        PaCaViTForInstanceSegmentation, config, converted, output_dir, default_image_processor(config)
    )
    if verbose:
        print(report.summary())
        print(f"saved PaCaViTForInstanceSegmentation ({config.num_labels} classes) to {output_dir}")
    return model


__all__ = [
    "COCO_CLASSES",
    "HEAD_RULES",
    "build_maskrcnn_config",
    "convert_maskrcnn_checkpoint",
    "convert_maskrcnn_state_dict",
    "detector_settings",
    "mmdet_class_to_torchvision",
]

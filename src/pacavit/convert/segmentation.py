"""Semantic-segmentation part of the converter: mmseg checkpoints (`PaCaEncoderDecoder` + `PaCaSegHead`, or
`EncoderDecoder` + `UPerHead` + `FCNHead`) -> `PaCaViTForSemanticSegmentation` folders.

    python -m pacavit.convert --task semantic-segmentation --checkpoint upernet_pacavit_tiny_....pth \
        --preset pacavit_tiny_p2cconv_100_0 --output-dir upernet-pacavit-tiny-ade20k

Backbone keys (`backbone.`) go through the backbone rules (`pacavit.convert.backbone`); the head keys are mapped by
the tables below. Like the backbone converter this is strict:
a head key that no rule knows, a missing model key or a shape mismatch is an error naming the keys.

BatchNorm `num_batches_tracked` counters are mapped, not dropped: our BatchNorms keep the same buffer, and
`load_state_dict(strict=True)` then fills every buffer (the count only matters for `momentum=None`, which no head
uses, so mmseg's 0 is harmless).

The head configuration comes from `--original-config` (the JSON's `head` field, or the manifests' top-level
`decode_head`/`auxiliary_head`), or with `--preset` from the checkpoint's shapes.
"""

from __future__ import annotations

import re
from functools import partial

import torch

from ..configuration_pacavit import PaCaViTConfig
from ..configuration_pacavit_segmentation import PaCaViTSegmentationConfig
from ..modeling_pacavit_segmentation import PaCaViTForSemanticSegmentation
from ..preprocessing import default_image_processor
from .backbone import build_backbone_config, convert_backbone_state_dict
from .common import (
    BACKBONE,
    ConversionError,
    backbone_entries,
    check_supported,
    extract_state_dict,
    load_checkpoint_file,
    reading_original_config,
    save_converted_model,
    source_name,
)

_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
# mmcv ConvModule (conv, bn) -> transformers' UperNetConvModule (conv, batch_norm); same for our PaCa head
_CONV_MODULE = [(r"conv\.weight", "conv.weight"), (rf"bn\.{_BN}", r"batch_norm.\1")]

# (pattern on the key without `decode_head.`/`auxiliary_head.`, replacement); the first match wins.
PACA_HEAD_RULES = [(r"convs\.(\d+)\.", r"convs.\1."), (r"q\.0\.", "query."), (r"clustering\.0\.", "cluster_proj.")]
PACA_HEAD_PLAIN = [
    (r"clustering\.1\.(weight|bias)", r"cluster_logits.\1"),
    (r"k\.0\.(weight|bias)", r"key.dense.\1"),
    (rf"k\.2\.{_BN}", r"key.batch_norm.\1"),  # the original's hard-coded nn.SyncBatchNorm
    (r"v\.0\.(weight|bias)", r"value.dense.\1"),
    (rf"v\.2\.{_BN}", r"value.batch_norm.\1"),
    (r"conv_seg\.(weight|bias)", r"classifier.\1"),
]
PACA_HEAD_MODULES = [(r"proj\.", "proj.")]
UPERNET_HEAD_MODULES = [
    (r"psp_modules\.(\d+)\.1\.", r"psp_modules.\1.1."),
    (r"bottleneck\.", "bottleneck."),
    (r"lateral_convs\.(\d+)\.", r"lateral_convs.\1."),
    (r"fpn_convs\.(\d+)\.", r"fpn_convs.\1."),
    (r"fpn_bottleneck\.", "fpn_bottleneck."),
]
FCN_HEAD_MODULES = [(r"convs\.(\d+)\.", r"convs.\1."), (r"conv_cat\.", "conv_cat.")]
CLASSIFIER = [(r"conv_seg\.(weight|bias)", r"classifier.\1")]

# Keys of an mmseg checkpoint that hold no model weights.
DROPPED = {"data_preprocessor.": "data pre-processor constants (mean/std): the saved image processor carries them"}


def _rules(modules, plain):
    """Compiled (prefix pattern, target template, remainder table) rules; the remainder table maps what follows a
    ConvModule's prefix, a plain rule has none (its pattern is the whole key)."""
    conv_module = [(re.compile(f"^{src}$"), dst) for src, dst in _CONV_MODULE]
    return [(re.compile(f"^{src}(.*)$"), dst, conv_module) for src, dst in modules] + [
        (re.compile(f"^{src}$"), dst, None) for src, dst in plain
    ]


_TABLES = {
    ("decode_head", "paca"): _rules(PACA_HEAD_RULES + PACA_HEAD_MODULES, PACA_HEAD_PLAIN),
    ("decode_head", "upernet"): _rules(UPERNET_HEAD_MODULES, CLASSIFIER),
    ("auxiliary_head", "upernet"): _rules(FCN_HEAD_MODULES, CLASSIFIER),
}


def map_head_key(key: str, head_type: str) -> str | None:
    """Our key for an mmseg head key (`decode_head.*` / `auxiliary_head.*`), or None when no rule knows it."""
    prefix, _, rest = key.partition(".")
    for pattern, template, remainder_rules in _TABLES.get((prefix, head_type), []):
        m = pattern.match(rest)
        if not m:
            continue
        if remainder_rules is None:
            return f"{prefix}.{m.expand(template)}"
        remainder = m.groups()[-1]
        for sub_pattern, sub_template in remainder_rules:
            sub = sub_pattern.match(remainder)
            if sub:
                return f"{prefix}.{m.expand(template)}{sub.expand(sub_template)}"
        return None
    return None


# --------------------------------------------------------------------------------------------
# Head configuration
# --------------------------------------------------------------------------------------------
_HEAD_TYPES = {"PaCaSegHead": "paca", "UPerHead": "upernet"}


_require = partial(check_supported, what="head configuration")


def head_config_from_original(head: dict, backbone: PaCaViTConfig) -> dict:
    """`PaCaViTSegmentationConfig` fields from the mmseg head dicts `{"decode_head": {...}, "auxiliary_head": ...}`.
    A missing key or a value of the wrong type is a `ConversionError` naming it."""
    with reading_original_config("original configuration's head dicts (decode_head, auxiliary_head)"):
        return _head_fields_from_original(head, backbone)


def _head_fields_from_original(head: dict, backbone: PaCaViTConfig) -> dict:
    decode, auxiliary = head.get("decode_head"), head.get("auxiliary_head")
    _require(isinstance(decode, dict), "no decode_head dict")
    _require(decode.get("type") in _HEAD_TYPES, f"decode_head.type={decode.get('type')!r}; one of {list(_HEAD_TYPES)}")
    head_type = _HEAD_TYPES[decode["type"]]
    _require(
        list(decode.get("in_index", [0, 1, 2, 3])) == list(range(backbone.num_stages)), "in_index must use every stage"
    )
    _require(
        list(decode["in_channels"]) == list(backbone.hidden_sizes),
        f"in_channels {decode['in_channels']} != stage widths {backbone.hidden_sizes}",
    )
    _require(not decode.get("align_corners", False), "align_corners=True")
    _require((decode.get("act_cfg") or {"type": "ReLU"})["type"] == "ReLU", "act_cfg must be ReLU")
    for cfg in (decode, auxiliary or {}):
        norm = (cfg.get("norm_cfg") or {"type": "BN"})["type"]
        _require(norm in ("BN", "SyncBN"), f"norm_cfg.type={norm!r} (only BN/SyncBN)")
        _require(cfg.get("ignore_index", 255) == 255, "ignore_index other than 255")
    fields = dict(
        decode_head_type=head_type,
        decode_head_hidden_size=decode["channels"],
        decode_head_dropout=decode.get("dropout_ratio", 0.1),
        num_labels=decode["num_classes"],
        semantic_loss_ignore_index=255,
    )
    if head_type == "paca":
        _require(auxiliary is None, "an auxiliary head beside the PaCa head")
        fields["auxiliary_loss_weight"] = (decode.get("aux_loss_decode") or {}).get("loss_weight", 0.4)
    else:
        fields["pool_scales"] = list(decode.get("pool_scales", (1, 2, 3, 6)))
        fields["use_auxiliary_head"] = auxiliary is not None
        if auxiliary is not None:
            _require(
                auxiliary.get("type") == "FCNHead", f"auxiliary_head.type={auxiliary.get('type')!r} (only FCNHead)"
            )
            stage = auxiliary.get("in_index", 2)
            _require(
                auxiliary["in_channels"] == backbone.hidden_sizes[stage], "auxiliary in_channels != its stage width"
            )
            _require(
                auxiliary.get("kernel_size", 3) == 3 and auxiliary.get("dilation", 1) == 1,
                "FCN kernel 3, dilation 1 only",
            )
            _require(auxiliary["num_classes"] == decode["num_classes"], "auxiliary num_classes differs")
            fields.update(
                auxiliary_stage=stage + 1,
                auxiliary_hidden_size=auxiliary["channels"],
                auxiliary_num_convs=auxiliary.get("num_convs", 2),
                auxiliary_concat_input=auxiliary.get("concat_input", True),
                auxiliary_loss_weight=(auxiliary.get("loss_decode") or {}).get("loss_weight", 0.4),
            )
    return fields


def head_config_from_state_dict(state_dict: dict, backbone: PaCaViTConfig) -> dict:
    """The same fields read off the head tensors' shapes (for `--preset` conversions)."""
    _require(
        "decode_head.conv_seg.weight" in state_dict,
        "the checkpoint has no decode_head.conv_seg (not an mmseg segmentor?)",
    )
    num_labels, channels = state_dict["decode_head.conv_seg.weight"].shape[:2]
    if "decode_head.clustering.1.weight" in state_dict:
        return dict(decode_head_type="paca", decode_head_hidden_size=channels, num_labels=num_labels)
    _require("decode_head.bottleneck.conv.weight" in state_dict, "decode head is neither PaCaSegHead nor UPerHead")
    num_scales = len({k.split(".")[2] for k in state_dict if k.startswith("decode_head.psp_modules.")})
    _require(num_scales == 4, f"{num_scales} pyramid pooling scales: give --original-config with its pool_scales")
    fields = dict(decode_head_type="upernet", decode_head_hidden_size=channels, num_labels=num_labels)
    first = state_dict.get("auxiliary_head.convs.0.conv.weight")
    fields["use_auxiliary_head"] = first is not None
    if first is not None:
        _require(first.shape[1] in backbone.hidden_sizes, "auxiliary head input width matches no stage")
        fields.update(
            auxiliary_stage=backbone.hidden_sizes.index(first.shape[1]) + 1,
            auxiliary_hidden_size=first.shape[0],
            auxiliary_num_convs=len({k.split(".")[2] for k in state_dict if k.startswith("auxiliary_head.convs.")}),
            auxiliary_concat_input="auxiliary_head.conv_cat.conv.weight" in state_dict,
        )
    return fields


def original_head_dicts(spec: dict) -> dict | None:
    """The head dicts of a fixture JSON (`head`) or a manifest (top-level `decode_head`/`auxiliary_head`)."""
    if spec.get("head"):
        return spec["head"]
    if spec.get("decode_head"):
        return {"decode_head": spec["decode_head"], "auxiliary_head": spec.get("auxiliary_head")}
    return None


# --------------------------------------------------------------------------------------------
# State dict and end to end
# --------------------------------------------------------------------------------------------
def convert_segmentation_state_dict(state_dict: dict, config: PaCaViTSegmentationConfig):
    """Map an mmseg state dict to `PaCaViTForSemanticSegmentation` keys; returns (state dict, ConversionReport)."""
    backbone = backbone_entries(state_dict)
    if not backbone:
        raise ConversionError(
            "No 'backbone.' keys: an mmseg segmentor checkpoint keeps the PaCa-ViT under 'backbone.'."
        )
    converted, report = convert_backbone_state_dict(backbone, config, task=BACKBONE)
    unknown = []
    for key, value in state_dict.items():
        if key.startswith("backbone."):
            continue
        reason = next((why for prefix, why in DROPPED.items() if key.startswith(prefix)), None)
        if reason:
            report.drop(key, reason)
            continue
        new_key = map_head_key(key, config.decode_head_type)
        if new_key is None:
            unknown.append(key)
            continue
        converted[new_key] = value
        report.mapped += 1
    if unknown:
        raise ConversionError(
            f"{len(unknown)} head keys match no rule for decode_head_type={config.decode_head_type!r} "
            f"(use_auxiliary_head={config.use_auxiliary_head}): {unknown[:12]}{' ...' if len(unknown) > 12 else ''}."
        )
    return converted, report


def build_segmentation_config(
    state_dict: dict, preset: str | None, original_config: dict | None
) -> PaCaViTSegmentationConfig:
    """The segmentor's config: the backbone's (`build_backbone_config`) plus the head's, from the JSON's head dicts
    or read off the head tensors."""
    backbone_keys = {k[len("backbone.") :]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    head_dicts = original_head_dicts(original_config) if original_config else None
    if (
        original_config is not None
        and "original_constructor" not in original_config
        and "arch_cfg" not in original_config
    ):
        # a manifest-style JSON: head dicts only, the backbone comes from --preset
        backbone = build_backbone_config(backbone_keys, BACKBONE, preset=preset)
    else:
        backbone = build_backbone_config(
            backbone_keys, BACKBONE, preset=None if original_config else preset, original_config=original_config
        )
    if head_dicts is not None:
        fields = head_config_from_original(head_dicts, backbone)
    elif original_config is not None:
        raise ConversionError(
            "The --original-config JSON has no 'head' field (needed for --task semantic-segmentation)."
        )
    else:
        fields = head_config_from_state_dict(state_dict, backbone)
    return PaCaViTSegmentationConfig.from_backbone_config(backbone, **fields)


def convert_segmentation_checkpoint(
    checkpoint, output_dir, preset=None, original_config=None, use_ema=False, verbose=True
):
    """Convert an mmseg segmentor checkpoint (a path or a loaded dict); save the model with the ADE20K test
    preprocessing (`pacavit.preprocessing`) to `output_dir`; return the model. The class names come from the
    checkpoint's `meta.dataset_meta.classes` when they fit."""
    raw = load_checkpoint_file(checkpoint)
    state_dict = extract_state_dict(raw, use_ema=use_ema, source=source_name(checkpoint))
    config = build_segmentation_config(state_dict, preset, original_config)
    classes = ((raw.get("meta") or {}).get("dataset_meta") or {}).get("classes") if isinstance(raw, dict) else None
    if classes and len(classes) == config.num_labels:
        config.id2label = dict(enumerate(classes))
        config.label2id = {name: i for i, name in enumerate(classes)}
    converted, report = convert_segmentation_state_dict(state_dict, config)
    model = save_converted_model(
        PaCaViTForSemanticSegmentation, config, converted, output_dir, default_image_processor(config)
    )
    if verbose:
        print(report.summary())
        print(f"saved PaCaViTForSemanticSegmentation ({config.decode_head_type} head) to {output_dir}")
    return model


@torch.no_grad()
def reference_outputs(model, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
    """The outputs of a converted model under the names of the mmseg parity fixtures (`seg_logits`,
    `seg_logits_upsampled`, `feature_maps.i`, and `cluster_logits` or `auxiliary_seg_logits`), in eval mode."""
    out = model.eval()(pixel_values, output_hidden_states=True, output_cluster_assignments=True)
    features = list(out.hidden_states[1:])
    outputs = {
        "seg_logits": out.logits,
        # what mmseg's EncoderDecoder returns: the logits resized to the input
        "seg_logits_upsampled": torch.nn.functional.interpolate(
            out.logits, size=pixel_values.shape[2:], mode="bilinear", align_corners=False
        ),
        **{f"feature_maps.{i}": feature for i, feature in enumerate(features)},
    }
    if out.head_cluster_logits is not None:
        outputs["cluster_logits"] = out.head_cluster_logits
    if model.auxiliary_head is not None:
        outputs["auxiliary_seg_logits"] = model.auxiliary_head(features)
    return outputs


__all__ = [
    "build_segmentation_config",
    "convert_segmentation_checkpoint",
    "convert_segmentation_state_dict",
    "head_config_from_original",
    "head_config_from_state_dict",
    "map_head_key",
    "original_head_dicts",
    "reference_outputs",
]

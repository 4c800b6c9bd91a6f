"""mmseg checkpoint conversion (`--task semantic-segmentation`): strict on checkpoints built here from the mmseg naming
scheme, and on the key manifests of every released ADE20K checkpoint (the parity fixtures: test_convert_parity.py)."""

import json
import re

import pytest
import torch

from pacavit import PaCaViTForSemanticSegmentation
from pacavit.convert import ConversionError, check_against_model, convert_checkpoint, extract_state_dict, main
from pacavit.convert.segmentation import build_segmentation_config, convert_segmentation_state_dict

from helpers import ORIGINAL_TINY, original_checkpoint, reference_dir

WIDTHS = ORIGINAL_TINY["arch_cfg"]["embed_dims"]  # [16, 32, 48, 64]
C, AUX, CLASSES = 12, 8, 6


def _conv_module(prefix, out_channels, in_channels, kernel=1):
    """mmcv ConvModule keys: a bias-free conv and a BatchNorm (with its int64 counter)."""
    return {
        f"{prefix}.conv.weight": torch.randn(out_channels, in_channels, kernel, kernel),
        f"{prefix}.bn.weight": torch.randn(out_channels),
        f"{prefix}.bn.bias": torch.randn(out_channels),
        f"{prefix}.bn.running_mean": torch.randn(out_channels),
        f"{prefix}.bn.running_var": torch.rand(out_channels) + 0.5,
        f"{prefix}.bn.num_batches_tracked": torch.tensor(0),
    }


def mmseg_head_keys(head: str) -> dict:
    """Head tensors named as mmseg's PaCaEncoderDecoder/EncoderDecoder state_dict() names them."""
    keys = {
        "decode_head.conv_seg.weight": torch.randn(CLASSES, C, 1, 1),
        "decode_head.conv_seg.bias": torch.randn(CLASSES),
    }
    if head == "paca":
        for i, width in enumerate(WIDTHS):
            keys.update(_conv_module(f"decode_head.convs.{i}", C, width))
        keys.update(_conv_module("decode_head.q.0", C, 4 * C))
        keys.update(_conv_module("decode_head.clustering.0", C, 4 * C))
        keys["decode_head.clustering.1.weight"] = torch.randn(CLASSES, C, 1, 1)
        keys["decode_head.clustering.1.bias"] = torch.randn(CLASSES)
        for branch in ("k", "v"):
            keys[f"decode_head.{branch}.0.weight"] = torch.randn(C, 4 * C)
            keys[f"decode_head.{branch}.0.bias"] = torch.randn(C)
            bn = _conv_module(f"decode_head.{branch}", C, 1)
            keys.update({k.replace(f"{branch}.bn.", f"{branch}.2."): v for k, v in bn.items() if ".bn." in k})
        keys.update(_conv_module("decode_head.proj", C, C))
    else:
        for i in range(4):
            keys.update(_conv_module(f"decode_head.psp_modules.{i}.1", C, WIDTHS[-1]))
        keys.update(_conv_module("decode_head.bottleneck", C, WIDTHS[-1] + 4 * C, 3))
        for i, width in enumerate(WIDTHS[:-1]):
            keys.update(_conv_module(f"decode_head.lateral_convs.{i}", C, width))
            keys.update(_conv_module(f"decode_head.fpn_convs.{i}", C, C, 3))
        keys.update(_conv_module("decode_head.fpn_bottleneck", C, 4 * C, 3))
        keys.update(_conv_module("auxiliary_head.convs.0", AUX, WIDTHS[2], 3))
        keys["auxiliary_head.conv_seg.weight"] = torch.randn(CLASSES, AUX, 1, 1)
        keys["auxiliary_head.conv_seg.bias"] = torch.randn(CLASSES)
    return keys


def head_dicts(head: str) -> dict:
    common = dict(
        in_channels=WIDTHS,
        in_index=[0, 1, 2, 3],
        channels=C,
        dropout_ratio=0.1,
        num_classes=CLASSES,
        norm_cfg={"type": "SyncBN", "requires_grad": True},
        align_corners=False,
    )
    if head == "paca":
        decode = dict(common, type="PaCaSegHead", aux_loss_decode={"type": "CrossEntropyLoss", "loss_weight": 0.4})
        return {"decode_head": decode, "auxiliary_head": None}
    decode = dict(common, type="UPerHead", pool_scales=[1, 2, 3, 6])
    auxiliary = dict(
        type="FCNHead",
        in_channels=WIDTHS[2],
        in_index=2,
        channels=AUX,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=CLASSES,
        norm_cfg={"type": "SyncBN"},
        align_corners=False,
        loss_decode={"type": "CrossEntropyLoss", "loss_weight": 0.4},
    )
    return {"decode_head": decode, "auxiliary_head": auxiliary}


def mmseg_checkpoint(tmp_path, head, edit=lambda sd: sd):
    _, backbone = original_checkpoint(tmp_path)
    state_dict = {"backbone." + k: v for k, v in backbone.items() if not k.startswith("head.")}
    state_dict.update(mmseg_head_keys(head))
    path = tmp_path / f"{head}.pth"
    meta = {"mmseg_version": "1.2.2", "dataset_meta": {"classes": [f"class{i}" for i in range(CLASSES)]}}
    torch.save({"meta": meta, "state_dict": edit(state_dict)}, path)
    spec = {"original_constructor": ORIGINAL_TINY, "head": head_dicts(head), "task": "semantic-segmentation"}
    (tmp_path / f"{head}.json").write_text(json.dumps(spec))
    return path, state_dict


@pytest.mark.parametrize("head", ["paca", "upernet"])
def test_strict_conversion_of_an_mmseg_checkpoint(tmp_path, head, capsys):
    path, source = mmseg_checkpoint(tmp_path, head)
    main(
        [
            "--task",
            "semantic-segmentation",
            "--checkpoint",
            str(path),
            "--original-config",
            str(tmp_path / f"{head}.json"),
            "--output-dir",
            str(tmp_path / "out"),
        ]
    )
    assert f"mapped {len(source)} tensors" in capsys.readouterr().out  # every key mapped, num_batches_tracked too
    model = PaCaViTForSemanticSegmentation.from_pretrained(tmp_path / "out")
    weights = model.state_dict()
    assert model.config.decode_head_type == head and model.config.id2label[5] == "class5"
    assert torch.equal(weights["decode_head.classifier.weight"], source["decode_head.conv_seg.weight"])
    if head == "paca":
        pairs = {
            "decode_head.key.batch_norm.running_var": "decode_head.k.2.running_var",
            "decode_head.value.dense.weight": "decode_head.v.0.weight",
            "decode_head.cluster_logits.bias": "decode_head.clustering.1.bias",
            "decode_head.cluster_proj.batch_norm.weight": "decode_head.clustering.0.bn.weight",
            "decode_head.query.conv.weight": "decode_head.q.0.conv.weight",
            "decode_head.convs.3.batch_norm.running_mean": "decode_head.convs.3.bn.running_mean",
        }
    else:
        assert model.config.auxiliary_stage == 3 and model.config.auxiliary_hidden_size == AUX
        pairs = {
            "decode_head.psp_modules.2.1.batch_norm.bias": "decode_head.psp_modules.2.1.bn.bias",
            "decode_head.fpn_convs.1.conv.weight": "decode_head.fpn_convs.1.conv.weight",
            "decode_head.fpn_bottleneck.batch_norm.running_var": "decode_head.fpn_bottleneck.bn.running_var",
            "auxiliary_head.convs.0.conv.weight": "auxiliary_head.convs.0.conv.weight",
            "auxiliary_head.classifier.bias": "auxiliary_head.conv_seg.bias",
        }
    for ours, theirs in pairs.items():
        assert torch.equal(weights[ours], source[theirs]), ours


@pytest.mark.parametrize("head", ["paca", "upernet"])
def test_head_configuration_from_shapes_equals_the_original_config(tmp_path, head):
    """What --preset conversions read off the tensors equals what the original head config says."""
    path, source = mmseg_checkpoint(tmp_path, head)
    from_json = build_segmentation_config(source, None, json.loads((tmp_path / f"{head}.json").read_text()))
    # the backbone from the JSON, the head only from the tensors
    spec = {"original_constructor": ORIGINAL_TINY}
    from pacavit.convert.backbone import build_backbone_config
    from pacavit.convert.segmentation import head_config_from_state_dict

    backbone = build_backbone_config(
        {k[9:]: v for k, v in source.items() if k.startswith("backbone.")}, "backbone", original_config=spec
    )
    fields = head_config_from_state_dict(source, backbone)
    for key, value in fields.items():
        assert getattr(from_json, key) == value, key


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda sd: {**sd, "decode_head.mystery.weight": torch.zeros(1)}, r"decode_head\.mystery\.weight"),
        (
            lambda sd: {k: v for k, v in sd.items() if k != "decode_head.k.2.running_var"},
            r"missing from the checkpoint \(1\): \['decode_head\.key\.batch_norm\.running_var'\]",
        ),
        (lambda sd: {**sd, "decode_head.conv_seg.weight": torch.zeros(CLASSES, C + 1, 1, 1)}, "shape mismatches"),
        (
            lambda sd: (
                {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
                | {k: v for k, v in sd.items() if not k.startswith("backbone.")}
            ),
            "No 'backbone.' keys",
        ),
    ],
    ids=["unknown_key", "missing_key", "shape", "no_backbone_prefix"],
)
def test_conversion_errors_name_the_keys(tmp_path, edit, message):
    path, _ = mmseg_checkpoint(tmp_path, "paca", edit)
    with pytest.raises(ConversionError, match=message):
        convert_checkpoint(
            path,
            tmp_path / "out",
            task="semantic-segmentation",
            original_config=json.loads((tmp_path / "paca.json").read_text()),
            verbose=False,
        )


def test_missing_head_field_is_an_error(tmp_path):
    path, _ = mmseg_checkpoint(tmp_path, "paca")
    with pytest.raises(ConversionError, match="no 'head' field"):
        convert_checkpoint(
            path,
            tmp_path / "out",
            task="semantic-segmentation",
            original_config={"original_constructor": ORIGINAL_TINY},
            verbose=False,
        )


# --------------------------------------------------------------------------------------------
# The key manifests of the released ADE20K checkpoints (names and shapes only, on the meta device)
# --------------------------------------------------------------------------------------------
_REFERENCE = reference_dir()
MANIFESTS = sorted(
    p for p in ((_REFERENCE / "manifests").rglob("*_ade20k.json") if _REFERENCE else []) if "pacavit" in p.name
)


@pytest.mark.skipif(not MANIFESTS, reason="checkpoint manifests not found (set PACAVIT_REFERENCE_DIR)")
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
@pytest.mark.parametrize("head_source", ["manifest_head_dicts", "checkpoint_shapes"])
def test_released_ade20k_checkpoints_convert_strictly(path, head_source):
    manifest = json.loads(path.read_text())
    state_dict = extract_state_dict(
        {
            "meta": {},
            "state_dict": {k: torch.empty(s, dtype=getattr(torch, d), device="meta") for k, s, d in manifest["keys"]},
        }
    )
    preset = re.sub(r"_downstream$", "", manifest["backbone_type"])
    preset = re.sub(r"^(pacavit_convmixer_(?:tiny|small|base)_100)_0$", r"\1", preset)
    original = manifest if head_source == "manifest_head_dicts" else None
    config = build_segmentation_config(state_dict, preset, original)
    assert config.num_labels == 150 and config.decode_head_type == (
        "paca" if "PaCaSeg" in manifest["decode_head"]["type"] else "upernet"
    )
    converted, report = convert_segmentation_state_dict(state_dict, config)
    assert report.mapped == len(state_dict) and not report.dropped, report.summary()
    with torch.device("meta"):
        model = PaCaViTForSemanticSegmentation(config)
    check_against_model(converted, model)
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"]

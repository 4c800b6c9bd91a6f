"""The converter against the key manifests of every released PaCa-ViT checkpoint.

A manifest (`<reference>/manifests/*.json` and `manifests/unlinked/*.json`) lists every state-dict entry of one
released checkpoint (name, shape, dtype), made with the original code; no weights are needed. For each manifest we
build a zero-filled checkpoint in the listed layout (bare timm dict or mmengine `{"meta", "state_dict"}`) and
convert it with the preset named by the file:

    IMNET_224_<builder>.json                          -> preset <builder>, task image-classification
    mask_rcnn_pacavit_<x>_mstrain_480_800_1x_coco     -> preset pacavit_<x>, task backbone
    {pacahead,upernet}_pacavit_<x>_512x512_160k_ade20k -> preset pacavit_<x>, task backbone
    (teacher files `convmixer_<size>_100_0` use the builder `pacavit_convmixer_<size>_100`)

`test_manifest_keys_shapes_and_parameter_count` runs on every manifest, with meta tensors and the model on the
meta device (names, shapes, dtypes and counts only, so it is fast). `test_convert_checkpoint_end_to_end` runs the
whole `convert_checkpoint` (real zero tensors saved with torch.save -> saved pacavit folder) on one manifest of
each layout and backbone family (`END_TO_END`): building and saving full-size models dominates the run time, and
the per-manifest differences (names, shapes, counts) are all covered by the first test. The manifests are looked
up in $PACAVIT_REFERENCE_DIR/manifests, else in ../shared/reference/manifests beside the checkout.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from pacavit import PaCaViTBackbone, PaCaViTConfig, PaCaViTForImageClassification
from pacavit.convert import check_against_model, convert_checkpoint, convert_state_dict, extract_state_dict
from pacavit.convert.backbone import build_backbone_config

from helpers import MANIFEST_DIR, MANIFEST_IDS, MANIFESTS, expected_parameters, fake_checkpoint

try:  # transformers >= 5
    from transformers.initialization import no_init_weights
except ImportError:  # pragma: no cover - transformers 4.x
    from transformers.modeling_utils import no_init_weights


# one manifest per layout (timm / mmdet / mmseg with either head) and backbone family for the full conversion
END_TO_END = {
    "IMNET_224_pacavit_tiny_p2cconv_100_0",  # conv clustering, stage-wise, ImageNet head
    "IMNET_224_pacavit_small_p2cmlp_100_0",  # mlp clustering
    "IMNET_224_pacavit_small_p2cconv_100_blockwise",  # clustering in every block
    "IMNET_224_pacavit_convmixer_small_100",  # ConvMixer teacher
    "mask_rcnn_pacavit_tiny_p2cconv_100_0_mstrain_480_800_1x_coco",
    "mask_rcnn_pacavit_convmixer_tiny_100_0_mstrain_480_800_1x_coco",
    "pacahead_pacavit_tiny_p2cconv_100_0_512x512_160k_ade20k",  # downstream_cluster_num [200, 200, 200, 0]
    "pacahead_pacavit_convmixer_small_100_0_512x512_160k_ade20k",  # teacher with [200] * 4
    "upernet_pacavit_tiny_p2cconv_100_0_512x512_160k_ade20k",
    "upernet_pacavit_small_p2cconv_49_100_512x512_160k_ade20k",  # [49, 64, 81, 100] -> [200] * 4
}
END_TO_END_MANIFESTS = [p for p, i in zip(MANIFESTS, MANIFEST_IDS) if i in END_TO_END]

pytestmark = pytest.mark.skipif(
    not MANIFESTS,
    reason=f"checkpoint manifests not found in {MANIFEST_DIR}: set PACAVIT_REFERENCE_DIR to the reference folder "
    "(the one holding manifests/; it sits in ../shared/reference in the project workspace)",
)

_DENSE_HEADS = ("decode_head.", "auxiliary_head.", "neck.", "rpn_head.", "roi_head.")


def preset_and_task(path: Path) -> tuple[str, str]:
    """The original builder name and the conversion task that the manifest's file name stands for."""
    name = path.stem
    match = re.fullmatch(r"IMNET_224_(pacavit_.+)", name)
    if match:
        preset, task = match.group(1), "image-classification"
    else:
        match = re.fullmatch(
            r"(?:mask_rcnn|pacahead|upernet)_(pacavit_.+?)_(?:mstrain_480_800_1x_coco|512x512_160k_ade20k)", name
        )
        assert match, f"cannot tell the architecture from the manifest name {name!r}"
        preset, task = match.group(1), "backbone"
    # the dense-prediction teacher files end in `_100_0`; their builder is `pacavit_convmixer_<size>_100`
    preset = re.sub(r"^(pacavit_convmixer_(?:tiny|small|base)_100)_0$", r"\1", preset)
    return preset, task


def _load(path: Path) -> tuple[dict, str, str]:
    manifest = json.loads(path.read_text())
    preset, task = preset_and_task(path)
    # the file name and the builder the manifest was made with must agree
    built_with = manifest.get("builder") or (manifest.get("backbone_cfg") or {}).get("type", "")
    built_with = re.sub(r"_downstream$", "", built_with)
    assert built_with == preset, f"file name says {preset!r}, the manifest was built with {built_with!r}"
    assert manifest["framework"] == ("timm" if task == "image-classification" else manifest["layout"])
    return manifest, preset, task


@pytest.mark.parametrize("path", MANIFESTS, ids=MANIFEST_IDS)
def test_manifest_keys_shapes_and_parameter_count(path):
    manifest, preset, task = _load(path)
    state_dict = extract_state_dict(fake_checkpoint(manifest, device="meta"))  # names, shapes, dtypes only
    assert len(state_dict) == manifest["num_state_dict_entries"]

    config = build_backbone_config(state_dict, task, preset=preset)
    converted, report = convert_state_dict(state_dict, config, task)
    with torch.device("meta"):
        model = (PaCaViTForImageClassification if task == "image-classification" else PaCaViTBackbone)(config)
    check_against_model(converted, model)  # no missing / unexpected keys, every shape equal
    expected = model.state_dict()
    assert [k for k in expected if converted[k].dtype != expected[k].dtype] == []

    # every source entry is mapped or dropped for a stated reason, and only dense heads are dropped
    dropped = [key for keys in report.dropped.values() for key in keys]
    assert report.mapped + len(dropped) == len(state_dict), report.summary()
    if task == "image-classification":
        assert not dropped, report.summary()
    else:
        assert sorted(dropped) == sorted(k for k in state_dict if not k.startswith("backbone.")), report.summary()
        assert all(key.startswith(_DENSE_HEADS) for key in dropped), report.summary()

    assert sum(p.numel() for p in model.parameters()) == expected_parameters(manifest, task)


@pytest.mark.parametrize("path", END_TO_END_MANIFESTS, ids=lambda p: p.stem)
def test_convert_checkpoint_end_to_end(path, tmp_path):
    manifest, preset, task = _load(path)
    checkpoint_path = tmp_path / path.with_suffix(".pth").name
    torch.save(fake_checkpoint(manifest), checkpoint_path)
    output_dir = tmp_path / "converted"
    # the random initialisation is overwritten by the strict load; skipping it keeps the test fast
    with no_init_weights():
        model = convert_checkpoint(checkpoint_path, output_dir, task=task, preset=preset, verbose=False)

    assert sum(p.numel() for p in model.parameters()) == expected_parameters(manifest, task)
    saved = PaCaViTConfig.from_pretrained(output_dir)
    assert saved.num_clusters == model.config.num_clusters
    if task == "image-classification":
        assert saved.num_labels == manifest["num_classes"]
    else:
        assert saved.out_features == ["stage1", "stage2", "stage3", "stage4"]

"""Every released checkpoint converts by its file name (`python -m pacavit.convert --checkpoint FILE --output-dir D`).

For every manifest (one per released file, plus `unlinked/`), a checkpoint with the manifest's keys, shapes, dtypes
and layout is built and converted with nothing but its file name:

* `test_name_tells_architecture_task_and_head` (all manifests): the name gives the builder the manifest was made
  with, the task of its prefix, and cluster counts equal to the weights'; the strict check accepts the weights.
* `test_convert_by_name_meta` (all manifests): the name-driven conversion on the meta device (full-size models with
  no data, so it is fast), loaded strictly into the task's Auto class built on meta; the parameter count equals
  the manifest's.
* `test_cli_by_name_end_to_end` (one file per layout/family): random weights saved with `torch.save` under the
  released name, the CLI with no --preset/--task, and `from_pretrained` with the task's Auto class.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import pacavit  # noqa: F401  (registers the Auto classes)
from pacavit import convert
from pacavit.convert import convert_by_name
from pacavit.convert.backbone import build_backbone_config, infer_num_clusters
from pacavit.convert.checkpoint_names import (
    CheckpointNameError,
    check_checkpoint_matches_name,
    decode_head_type,
    parse_checkpoint_name,
)
from pacavit.convert.common import split_backbone_and_heads

from helpers import MANIFEST_DIR, MANIFEST_IDS, MANIFESTS, expected_parameters, fake_checkpoint

pytestmark = pytest.mark.skipif(not MANIFESTS, reason=f"checkpoint manifests not found in {MANIFEST_DIR}")

AUTO_CLASS = {
    "image-classification": "AutoModelForImageClassification",
    "backbone": "AutoBackbone",
    "semantic-segmentation": "AutoModelForSemanticSegmentation",
    "instance-segmentation": "AutoModelForInstanceSegmentation",
}
PREFIX_TASK = {"IMNET": "image-classification", "mask": "instance-segmentation"}


def _manifest(path):
    manifest = json.loads(path.read_text())
    return manifest, manifest["checkpoint_file"]


@pytest.mark.parametrize("path", MANIFESTS, ids=MANIFEST_IDS)
def test_name_tells_architecture_task_and_head(path):
    manifest, file_name = _manifest(path)
    parsed = parse_checkpoint_name(file_name)
    built_with = manifest.get("builder") or manifest["backbone_type"].removesuffix("_downstream")
    assert parsed.builder == built_with
    assert parsed.task == PREFIX_TASK.get(file_name.split("_")[0], "semantic-segmentation")
    state_dict = convert.extract_state_dict(fake_checkpoint(manifest, device="meta"))
    backbone, _ = split_backbone_and_heads(state_dict)
    clusters = infer_num_clusters(backbone, pacavit.PaCaViTConfig.from_preset(parsed.preset))
    head = check_checkpoint_matches_name(state_dict, parsed, clusters)
    if parsed.dataset == "ade20k":
        assert head == decode_head_type(state_dict)
        # the README's ablation rows link upernet_* files for PaCa-head models: both heads must be accepted
        if parsed.alternative_heads:
            paca = json.loads((MANIFEST_DIR / "unlinked" / path.name.replace("upernet_", "pacahead_")).read_text())
            paca_state = convert.extract_state_dict(fake_checkpoint(paca, device="meta"))
            assert check_checkpoint_matches_name(paca_state, parsed, clusters) == "paca"


@pytest.mark.parametrize("path", MANIFESTS, ids=MANIFEST_IDS)
def test_convert_by_name_meta(path):
    import transformers

    manifest, file_name = _manifest(path)
    parsed = parse_checkpoint_name(file_name)
    state_dict = convert.extract_state_dict(fake_checkpoint(manifest, device="meta"))
    backbone, _ = split_backbone_and_heads(state_dict)
    if parsed.task == "semantic-segmentation":
        from pacavit.convert.segmentation import build_segmentation_config

        config = build_segmentation_config(state_dict, parsed.preset, None)
        assert config.decode_head_type == decode_head_type(state_dict)
    elif parsed.task == "instance-segmentation":
        from pacavit.convert.maskrcnn import build_maskrcnn_config

        config = build_maskrcnn_config(state_dict, parsed.preset)
    else:
        config = build_backbone_config(backbone, parsed.task, preset=parsed.preset)
    converted, report = convert.convert_state_dict(state_dict, config, parsed.task)
    auto = getattr(transformers, AUTO_CLASS[parsed.task])
    with torch.device("meta"):
        model = auto.from_config(config)
    model.load_state_dict(converted, strict=True, assign=True)
    extra = 0
    if parsed.task == "instance-segmentation":  # torchvision's box/mask predictors keep a background slot
        extra = (
            4 * config.box_head_hidden_size + 4 + config.mask_head_hidden_size + 1
        )  # (see test_convert_maskrcnn.py)
    assert sum(p.numel() for p in model.parameters()) == expected_parameters(manifest, parsed.task) + extra
    assert not report.dropped, report.summary()  # a full-task conversion drops nothing


def test_unknown_and_renamed_names_fail_clearly():
    with pytest.raises(CheckpointNameError, match="--checkpoint-name"):
        parse_checkpoint_name("my_model_final.pth")
    with pytest.raises(CheckpointNameError, match="unknown architecture"):
        parse_checkpoint_name("IMNET_224_pacavit_huge_p2cconv_100_0.pth")
    # the weights of the tiny classifier under the name of the [2,2,2,0] ablation: the cluster counts betray it
    manifest = json.loads((MANIFEST_DIR / "IMNET_224_pacavit_tiny_p2cconv_100_0.json").read_text())
    parsed = parse_checkpoint_name("IMNET_224_pacavit_small_p2cconv_2_0.pth")
    state_dict = fake_checkpoint(manifest, device="meta")
    with pytest.raises(CheckpointNameError, match=r"weights have \[100, 100, 100, 0\]"):
        check_checkpoint_matches_name(state_dict, parsed, [100, 100, 100, 0])


# one released file per layout and backbone family (full-size, real random tensors)
END_TO_END = [
    "IMNET_224_pacavit_tiny_p2cconv_100_0",
    "IMNET_224_pacavit_convmixer_small_100",
    "upernet_pacavit_tiny_p2cconv_100_0_512x512_160k_ade20k",
    "pacahead_pacavit_tiny_p2cconv_100_0_512x512_160k_ade20k",
    "mask_rcnn_pacavit_tiny_p2cconv_100_0_mstrain_480_800_1x_coco",
]


def _random_checkpoint(manifest: dict) -> dict:
    """`fake_checkpoint` with random values: its tensors of one dtype are views of one pool, which the largest
    tensor covers, so filling that one fills them all (the file stays the size of the largest tensor)."""
    checkpoint = fake_checkpoint(manifest)
    state_dict = checkpoint if manifest["layout"] == "bare" else checkpoint["state_dict"]
    largest: dict[torch.dtype, torch.Tensor] = {}
    for tensor in state_dict.values():
        if tensor.is_floating_point() and tensor.numel() > largest.get(tensor.dtype, torch.empty(0)).numel():
            largest[tensor.dtype] = tensor
    for tensor in largest.values():
        tensor.normal_(0.0, 0.02)
    return checkpoint


@pytest.mark.parametrize("stem", END_TO_END)
def test_cli_by_name_end_to_end(stem, tmp_path, capsys):
    import transformers

    manifest = json.loads((MANIFEST_DIR / f"{stem}.json").read_text())
    parsed = parse_checkpoint_name(stem)
    renamed = tmp_path / "downloaded.pth"
    torch.save(_random_checkpoint(manifest), renamed)
    out = tmp_path / "out"
    # a renamed file: its released name is given with --checkpoint-name
    convert.main(["--checkpoint", str(renamed), "--checkpoint-name", f"{stem}.pth", "--output-dir", str(out)])
    assert f"task {parsed.task}" in capsys.readouterr().out
    model = getattr(transformers, AUTO_CLASS[parsed.task]).from_pretrained(out)
    extra = 0
    if parsed.task == "instance-segmentation":  # torchvision's background slot, as above
        extra = 4 * model.config.box_head_hidden_size + 4 + model.config.mask_head_hidden_size + 1
    assert sum(p.numel() for p in model.parameters()) == expected_parameters(manifest, parsed.task) + extra
    # the file under its own name converts without --checkpoint-name too
    released = tmp_path / f"{stem}.pth"
    shutil.move(renamed, released)
    model2 = convert_by_name(released, tmp_path / "out2", verbose=False)
    first = next(iter(model.state_dict().values()))
    assert torch.equal(next(iter(model2.state_dict().values())), first)

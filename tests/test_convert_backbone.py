"""The backbone/classifier converter on checkpoints in the original naming scheme: every checkpoint layout, and a
clear error for each kind of key, shape or configuration it cannot accept (the fixtures: test_convert_parity.py)."""

import json
import subprocess
import sys

import pytest
import torch

from pacavit import PaCaViTBackbone
from pacavit.convert import ConversionError, convert_checkpoint, extract_state_dict, main

from helpers import ORIGINAL_TINY, original_checkpoint


@pytest.mark.parametrize(
    "layout", ["bare", "state_dict", "model", "state_dict_ema", "module_prefix", "mmseg_with_heads"]
)
def test_checkpoint_layouts(tmp_path, layout):
    wraps = {
        "bare": lambda sd: sd,
        "state_dict": lambda sd: {"state_dict": sd, "epoch": 3},
        "model": lambda sd: {"model": sd, "optimizer": {"lr": 0.1}},
        "state_dict_ema": lambda sd: {"state_dict_ema": sd},
        "module_prefix": lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}},
        "mmseg_with_heads": lambda sd: {
            "meta": {"mmseg_version": "1.2.2"},
            "state_dict": {
                **{"backbone." + k: v for k, v in sd.items() if not k.startswith("head.")},
                "decode_head.conv_seg.weight": torch.zeros(150, 512, 1, 1),
                "auxiliary_head.conv_seg.weight": torch.zeros(150, 256, 1, 1),
            },
        },
    }
    path, state_dict = original_checkpoint(tmp_path, wraps[layout])
    task = "backbone" if layout == "mmseg_with_heads" else "image-classification"
    model = convert_checkpoint(
        path,
        tmp_path / "out",
        task=task,
        original_config=json.loads((tmp_path / "original.json").read_text()),
        verbose=False,
    )
    weights = model.state_dict()
    q = weights["pacavit.stages.0.layers.0.attention.query.weight"]
    assert torch.equal(q, state_dict["stage1.0.attn.q.weight"])
    key_value = weights["pacavit.stages.2.layers.1.attention.key_value.bias"]
    assert torch.equal(key_value, torch.cat([state_dict["stage3.1.attn.k.bias"], state_dict["stage3.1.attn.v.bias"]]))
    to_clusters = weights["pacavit.stages.1.layers.0.attention.clustering.to_clusters.weight"]
    assert torch.equal(to_clusters, state_dict["stage2.0.attn.clustering.clustering.4.weight"].flatten(1))
    if task == "image-classification":
        assert torch.equal(weights["classifier.weight"], state_dict["head.weight"])


def test_mmseg_checkpoint_reports_dropped_heads(tmp_path, capsys):
    path, state_dict = original_checkpoint(
        tmp_path,
        lambda sd: {
            "meta": {},
            "state_dict": {**{"backbone." + k: v for k, v in sd.items()}, "decode_head.conv_seg.bias": torch.zeros(3)},
        },
    )
    main(
        [
            "--checkpoint",
            str(path),
            "--original-config",
            str(tmp_path / "original.json"),
            "--task",
            "backbone",
            "--output-dir",
            str(tmp_path / "o"),
        ]
    )
    printed = capsys.readouterr().out
    assert "dropped 2 (ImageNet classification head" in printed
    assert "dropped 1 (decode_head" in printed
    backbone = PaCaViTBackbone.from_pretrained(tmp_path / "o")
    assert backbone.out_features == ["stage1", "stage2", "stage3", "stage4"]


def test_unknown_key_is_an_error_that_names_it(tmp_path):
    path, _ = original_checkpoint(tmp_path, lambda sd: {**sd, "stage1.0.attn.mystery.weight": torch.zeros(3)})
    with pytest.raises(ConversionError, match=r"stage1\.0\.attn\.mystery\.weight"):
        convert_checkpoint(
            path, tmp_path / "out", original_config=json.loads((tmp_path / "original.json").read_text()), verbose=False
        )


def test_missing_key_is_an_error_that_names_it(tmp_path):
    path, _ = original_checkpoint(tmp_path, lambda sd: {k: v for k, v in sd.items() if k != "norm4.bias"})
    with pytest.raises(
        ConversionError, match=r"missing from the checkpoint \(1\): \['pacavit\.stages\.3\.layernorm\.bias'\]"
    ):
        convert_checkpoint(
            path, tmp_path / "out", original_config=json.loads((tmp_path / "original.json").read_text()), verbose=False
        )


def test_half_a_key_value_pair_is_an_error(tmp_path):
    path, _ = original_checkpoint(tmp_path, lambda sd: {k: v for k, v in sd.items() if k != "stage1.0.attn.v.weight"})
    with pytest.raises(ConversionError, match="attn.v is missing"):
        convert_checkpoint(
            path, tmp_path / "out", original_config=json.loads((tmp_path / "original.json").read_text()), verbose=False
        )


def test_wrong_preset_reports_shape_mismatches(tmp_path):
    path, _ = original_checkpoint(tmp_path)
    with pytest.raises(
        ConversionError, match="shape mismatches.*checkpoint \\(16, 8, 3, 3\\) vs model \\(96, 48, 3, 3\\)"
    ):
        convert_checkpoint(path, tmp_path / "out", preset="pacavit-tiny", verbose=False)


def test_wrong_clustering_type_is_an_error(tmp_path):
    path, _ = original_checkpoint(tmp_path)
    config = json.loads((tmp_path / "original.json").read_text())
    config["original_constructor"]["paca_cfg"]["type"] = "P2CMlp"
    with pytest.raises(ConversionError, match="clustering layer index 4 does not exist in 'mlp' clustering"):
        convert_checkpoint(path, tmp_path / "out", original_config=config, verbose=False)


def test_dense_checkpoint_as_classifier_is_an_error(tmp_path):
    path, _ = original_checkpoint(
        tmp_path,
        lambda sd: {"meta": {}, "state_dict": {"backbone." + k: v for k, v in sd.items() if not k.startswith("head")}},
    )
    with pytest.raises(ConversionError, match="use --task backbone"):
        convert_checkpoint(
            path, tmp_path / "out", original_config=json.loads((tmp_path / "original.json").read_text()), verbose=False
        )


def test_cli_reports_errors_without_a_traceback(tmp_path):
    path, _ = original_checkpoint(tmp_path)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pacavit.convert",
            "--checkpoint",
            str(path),
            "--preset",
            "pacavit-nano",
            "--output-dir",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Unknown PaCa-ViT preset 'pacavit-nano'" in result.stderr and "Traceback" not in result.stderr


def test_extract_state_dict_prefers_ema_on_request():
    plain, ema = {"a": torch.zeros(1)}, {"a": torch.ones(1)}
    assert extract_state_dict({"state_dict": plain, "state_dict_ema": ema})["a"].item() == 0
    assert extract_state_dict({"state_dict": plain, "state_dict_ema": ema}, use_ema=True)["a"].item() == 1
    with pytest.raises(ConversionError, match="no 'state_dict_ema'"):
        extract_state_dict({"state_dict": plain}, use_ema=True)
    with pytest.raises(ConversionError, match="found keys \\['epoch', 'optimizer'\\]"):
        extract_state_dict({"epoch": 1, "optimizer": {}})


def test_original_img_size_forms():
    from pacavit.convert import config_from_original

    square = dict(ORIGINAL_TINY, img_size=[64, 64], with_pos_embed=True)
    assert config_from_original(square).image_size == 64
    with pytest.raises(ConversionError, match="non-square img_size"):
        config_from_original(dict(ORIGINAL_TINY, img_size=[64, 80], with_pos_embed=True))
    # without position embeddings the training size does not matter
    assert config_from_original(dict(ORIGINAL_TINY, img_size=[64, 80])).image_size == 64

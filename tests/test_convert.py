"""Converter tests: parity with the original implementation (reference fixtures) and strictness."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, AutoModelForSemanticSegmentation

from pacavit import PaCaViTBackbone
from pacavit.convert import ConversionError, convert_checkpoint, extract_state_dict, main

# A tiny architecture written as the original constructor's kwargs.
ORIGINAL_TINY = {
    "in_chans": 3,
    "num_classes": 7,
    "img_size": 64,
    "arch_cfg": {"embed_dims": [16, 32, 48, 64], "num_heads": [1, 2, 2, 4], "mlp_ratios": [4, 4, 4, 4], "depths": [1, 1, 2, 1]},
    "paca_cfg": {
        "type": "P2CConv2d",
        "clusters": [8, 8, 8, 0],
        "onsite_clustering": [0, 0, 0, 0],
        "clustering_kernel_size": [7, 7, 7, 7],
        "cluster_norm_cfg": {"type": "LN", "eps": 1e-6},
        "cluster_pos_embed": False,
        "norm_cfg1": {"type": "LN", "eps": 1e-6},
        "norm_cfg2": {"type": "LN", "eps": 1e-6},
        "mlp_func": "Mlp",
        "with_dwconv_in_mlp": True,
        "with_shortcut_in_mlp": True,
    },
    "paca_teacher_cfg": None,
    "norm_cfg": {"type": "LN", "eps": 1e-6},
    "act_cfg": {"type": "GELU"},
    "out_indices": [],
}


# fixture tasks the converter handles; the others are checked by their own tests
CONVERTED_TASKS = ("image-classification", "backbone", "semantic-segmentation", "instance-segmentation")


def fixtures(reference_path: Path):
    return sorted(p.stem for p in reference_path.glob("*.json"))


def run_fixture(reference, name, tmp_path, via_subprocess=False):
    spec = json.loads((reference / f"{name}.json").read_text())
    task = spec["task"]
    if task not in CONVERTED_TASKS:
        pytest.skip(f"fixture {name}: task {task!r} is covered by its own issue")
    if task == "instance-segmentation":  # detections, FPN and RPN maps: compared by the Mask R-CNN tests' helper
        from test_maskrcnn import check_maskrcnn_fixture

        return check_maskrcnn_fixture(reference, name, tmp_path / name)
    args = [
        "--checkpoint", str(reference / f"{name}.pth"),
        "--original-config", str(reference / f"{name}.json"),
        "--task", task,
        "--output-dir", str(tmp_path / name),
    ]
    if via_subprocess:
        subprocess.run([sys.executable, "-m", "pacavit.convert", *args], check=True, capture_output=True, text=True)
    else:
        main(args)
    tensors = load_file(reference / f"{name}.safetensors")
    pixel_values = tensors[spec["input_name"]]
    if task == "image-classification":
        model = AutoModelForImageClassification.from_pretrained(tmp_path / name).eval()
        with torch.no_grad():
            outputs = {"logits": model(pixel_values).logits}
    elif task == "semantic-segmentation":
        from pacavit.convert.segmentation import reference_outputs

        model = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / name)
        outputs = reference_outputs(model, pixel_values)
    else:
        model = PaCaViTBackbone.from_pretrained(tmp_path / name).eval()
        with torch.no_grad():
            outputs = {f"feature_maps.{i}": f for i, f in enumerate(model(pixel_values).feature_maps)}
    assert sorted(outputs) == sorted(spec["outputs"])
    errors = {}
    for key in spec["outputs"]:
        torch.testing.assert_close(outputs[key], tensors[key], **spec["tolerance"], msg=f"{name}:{key}")
        errors[key] = (outputs[key] - tensors[key]).abs().max().item()
    return errors


def test_reference_fixtures_reproduce_original_outputs(reference, tmp_path):
    names = fixtures(reference)
    assert {"conv_stagewise", "mlp_stagewise", "conv_backbone"} <= set(names)
    names = [n for n in names if json.loads((reference / f"{n}.json").read_text())["task"] in CONVERTED_TASKS]
    for index, name in enumerate(names):
        errors = run_fixture(reference, name, tmp_path, via_subprocess=index == 0)
        print(name, errors)


def _original_checkpoint(tmp_path, wrap=lambda sd: sd):
    """A random checkpoint with the original key names and shapes (ORIGINAL_TINY architecture)."""
    from pacavit.convert import config_from_original, convert_state_dict

    from pacavit import PaCaViTForImageClassification

    config = config_from_original(ORIGINAL_TINY)
    ours = PaCaViTForImageClassification(config).state_dict()
    template = {}  # original key -> shape, written out from the original naming scheme
    for i, depth in enumerate(config.depths, start=1):
        dim = config.hidden_sizes[i - 1]
        template[f"norm{i}.weight"] = (dim,)
        template[f"norm{i}.bias"] = (dim,)
        if i > 1:
            template[f"transition{i - 1}.proj.weight"] = (dim, config.hidden_sizes[i - 2], 3, 3)
            template[f"transition{i - 1}.proj.bias"] = (dim,)
            template[f"transition{i - 1}.norm.weight"] = (dim,)
            template[f"transition{i - 1}.norm.bias"] = (dim,)
        for j in range(depth):
            p = f"stage{i}.{j}."
            for n in ("norm1_before", "norm2_before"):
                template[p + n + ".weight"] = (dim,)
                template[p + n + ".bias"] = (dim,)
            for n in ("q", "k", "v", "proj"):
                template[p + f"attn.{n}.weight"] = (dim, dim)
                template[p + f"attn.{n}.bias"] = (dim,)
            m = config.num_clusters[i - 1]
            if m:
                template[p + "attn.cluster_norm.weight"] = (dim,)
                template[p + "attn.cluster_norm.bias"] = (dim,)
                if j == 0:
                    template[p + "attn.clustering.clustering.0.weight"] = (dim, 1, 7, 7)
                    template[p + "attn.clustering.clustering.0.bias"] = (dim,)
                    template[p + "attn.clustering.clustering.2.weight"] = (dim, dim, 1, 1)
                    template[p + "attn.clustering.clustering.2.bias"] = (dim,)
                    template[p + "attn.clustering.clustering.4.weight"] = (m, dim, 1, 1)
            template[p + "mlp.fc1.weight"] = (4 * dim, dim)
            template[p + "mlp.fc1.bias"] = (4 * dim,)
            template[p + "mlp.dwconv.dwconv.weight"] = (4 * dim, 1, 3, 3)
            template[p + "mlp.dwconv.dwconv.bias"] = (4 * dim,)
            template[p + "mlp.fc2.weight"] = (dim, 4 * dim)
            template[p + "mlp.fc2.bias"] = (dim,)
    template.update(
        {
            "patch_embed.proj.0.weight": (8, 3, 3, 3),
            "patch_embed.proj.0.bias": (8,),
            "patch_embed.proj.1.weight": (16, 8, 3, 3),
            "patch_embed.proj.1.bias": (16,),
            "patch_embed.norm.weight": (16,),
            "patch_embed.norm.bias": (16,),
            "head.weight": (7, 64),
            "head.bias": (7,),
        }
    )
    state_dict = {k: torch.randn(shape) for k, shape in template.items()}
    converted, _ = convert_state_dict(state_dict, config)
    assert sorted(converted) == sorted(ours)  # the template covers the whole model
    path = tmp_path / "original.pth"
    torch.save(wrap(state_dict), path)
    (tmp_path / "original.json").write_text(json.dumps({"original_constructor": ORIGINAL_TINY}))
    return path, state_dict


@pytest.mark.parametrize(
    "layout",
    ["bare", "state_dict", "model", "state_dict_ema", "module_prefix", "mmseg_with_heads"],
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
    path, state_dict = _original_checkpoint(tmp_path, wraps[layout])
    task = "backbone" if layout == "mmseg_with_heads" else "image-classification"
    model = convert_checkpoint(path, tmp_path / "out", task=task, original_config=json.loads((tmp_path / "original.json").read_text()), verbose=False)
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
    path, state_dict = _original_checkpoint(
        tmp_path,
        lambda sd: {"meta": {}, "state_dict": {**{"backbone." + k: v for k, v in sd.items()}, "decode_head.conv_seg.bias": torch.zeros(3)}},
    )
    main(["--checkpoint", str(path), "--original-config", str(tmp_path / "original.json"), "--task", "backbone", "--output-dir", str(tmp_path / "o")])
    printed = capsys.readouterr().out
    assert "dropped 2 (ImageNet classification head" in printed
    assert "dropped 1 (decode_head" in printed
    backbone = PaCaViTBackbone.from_pretrained(tmp_path / "o")
    assert backbone.out_features == ["stage1", "stage2", "stage3", "stage4"]


def test_unknown_key_is_an_error_that_names_it(tmp_path):
    path, _ = _original_checkpoint(tmp_path, lambda sd: {**sd, "stage1.0.attn.mystery.weight": torch.zeros(3)})
    with pytest.raises(ConversionError, match=r"stage1\.0\.attn\.mystery\.weight"):
        convert_checkpoint(path, tmp_path / "out", original_config=json.loads((tmp_path / "original.json").read_text()), verbose=False)


def test_missing_key_is_an_error_that_names_it(tmp_path):
    path, _ = _original_checkpoint(tmp_path, lambda sd: {k: v for k, v in sd.items() if k != "norm4.bias"})
    with pytest.raises(ConversionError, match=r"missing from the checkpoint \(1\): \['pacavit\.stages\.3\.layernorm\.bias'\]"):
        convert_checkpoint(path, tmp_path / "out", original_config=json.loads((tmp_path / "original.json").read_text()), verbose=False)


def test_half_a_key_value_pair_is_an_error(tmp_path):
    path, _ = _original_checkpoint(tmp_path, lambda sd: {k: v for k, v in sd.items() if k != "stage1.0.attn.v.weight"})
    with pytest.raises(ConversionError, match="attn.v is missing"):
        convert_checkpoint(path, tmp_path / "out", original_config=json.loads((tmp_path / "original.json").read_text()), verbose=False)


def test_wrong_preset_reports_shape_mismatches(tmp_path):
    path, _ = _original_checkpoint(tmp_path)
    with pytest.raises(ConversionError, match="shape mismatches.*checkpoint \\(16, 8, 3, 3\\) vs model \\(96, 48, 3, 3\\)"):
        convert_checkpoint(path, tmp_path / "out", preset="pacavit-tiny", verbose=False)


def test_wrong_clustering_type_is_an_error(tmp_path):
    path, _ = _original_checkpoint(tmp_path)
    config = json.loads((tmp_path / "original.json").read_text())
    config["original_constructor"]["paca_cfg"]["type"] = "P2CMlp"
    with pytest.raises(ConversionError, match="clustering layer index 4 does not exist in 'mlp' clustering"):
        convert_checkpoint(path, tmp_path / "out", original_config=config, verbose=False)


def test_dense_checkpoint_as_classifier_is_an_error(tmp_path):
    path, _ = _original_checkpoint(tmp_path, lambda sd: {"meta": {}, "state_dict": {"backbone." + k: v for k, v in sd.items() if not k.startswith("head")}})
    with pytest.raises(ConversionError, match="use --task backbone"):
        convert_checkpoint(path, tmp_path / "out", original_config=json.loads((tmp_path / "original.json").read_text()), verbose=False)


def test_cli_reports_errors_without_a_traceback(tmp_path):
    path, _ = _original_checkpoint(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "pacavit.convert", "--checkpoint", str(path), "--preset", "pacavit-nano", "--output-dir", str(tmp_path / "o")],
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

"""Parity with the original implementation: every reference fixture (classification, backbone, both segmentation
heads, Mask R-CNN) converted with `python -m pacavit.convert` reproduces the original's outputs."""

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, AutoModelForSemanticSegmentation

from pacavit import PaCaViTBackbone
from pacavit.convert import main

from helpers import check_maskrcnn_fixture


def fixtures(reference_path: Path):
    return sorted(p.stem for p in reference_path.glob("*.json"))


def run_fixture(reference, name, tmp_path, via_subprocess=False):
    spec = json.loads((reference / f"{name}.json").read_text())
    task = spec["task"]
    if task == "instance-segmentation":  # detections, FPN and RPN maps: compared by the shared Mask R-CNN check
        errors = check_maskrcnn_fixture(reference, name, tmp_path / name)
        assert errors["det_masks"] == 0  # every pasted mask pixel agrees
        return errors
    args = [
        "--checkpoint",
        str(reference / f"{name}.pth"),
        "--original-config",
        str(reference / f"{name}.json"),
        "--task",
        task,
        "--output-dir",
        str(tmp_path / name),
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
    for index, name in enumerate(names):
        errors = run_fixture(reference, name, tmp_path, via_subprocess=index == 0)
        print(name, errors)

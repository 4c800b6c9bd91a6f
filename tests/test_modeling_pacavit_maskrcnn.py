"""PaCa-ViT Mask R-CNN: model (training/inference/save-load), processor, pipelines, remote code (conversion:
test_convert_maskrcnn.py; parity with the original: test_convert_parity.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pacavit import PaCaViTForInstanceSegmentation, PaCaViTMaskRCNNImageProcessor

from helpers import tiny_maskrcnn


def _target(height, width, boxes, classes):
    masks = torch.zeros(len(boxes), height, width, dtype=torch.uint8)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes):
        mask[int(y0) : int(y1), int(x0) : int(x1)] = 1
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "class_labels": torch.tensor(classes),
        "masks": masks,
    }


def test_training_step_with_normal_and_empty_targets():
    model = tiny_maskrcnn().train()
    pixel_values = torch.randn(2, 3, 96, 128)
    labels = [_target(90, 125, [[10, 12, 60, 70], [70, 20, 120, 85]], [0, 2]), _target(96, 100, [], [])]
    out = model(pixel_values, image_sizes=[(90, 125), (96, 100)], labels=labels)
    assert set(out.loss_dict) == {
        "loss_objectness",
        "loss_rpn_box_reg",
        "loss_classifier",
        "loss_box_reg",
        "loss_mask",
    }
    assert torch.isfinite(out.loss) and torch.allclose(out.loss, sum(out.loss_dict.values()))
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # a batch with no objects at all trains too (only background samples)
    empty = model(torch.randn(1, 3, 64, 64), labels=[_target(64, 64, [], [])])
    assert torch.isfinite(empty.loss) and empty.loss_dict["loss_mask"] == 0


def test_bad_targets_have_clear_errors():
    model = tiny_maskrcnn().train()
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match="zero area or lie outside"):
        model(x, labels=[_target(64, 64, [[10, 10, 10, 30]], [0])])
    with pytest.raises(ValueError, match="zero area or lie outside"):
        model(x, labels=[_target(64, 64, [[70, 10, 90, 30]], [0])])
    with pytest.raises(ValueError, match="0-based ids below num_labels=3"):
        model(x, labels=[_target(64, 64, [[1, 1, 9, 9]], [3])])
    with pytest.raises(ValueError, match="needs `labels`"):
        model(x)
    with pytest.raises(ValueError, match="without the batch dimension"):  # the shared input checks
        model(x[0], labels=[_target(64, 64, [[1, 1, 9, 9]], [0])])


def test_inference_at_odd_sizes_and_save_load_round_trip(tmp_path):
    from transformers import AutoModelForInstanceSegmentation, AutoModelForObjectDetection

    model = tiny_maskrcnn(box_score_threshold=0.0).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 77, 93), image_sizes=[(77, 93), (70, 81)], original_sizes=[(154, 186), (70, 81)])
    first, second = out.detections
    assert (
        first["boxes"].shape[1] == 4
        and first["masks"].shape[1:] == (154, 186)
        and second["masks"].shape[1:] == (70, 81)
    )
    assert len(first["boxes"]) == len(first["scores"]) == len(first["labels"]) == len(first["masks"]) > 0
    assert first["labels"].min() >= 0 and first["labels"].max() < 3
    assert (first["scores"][:-1] >= first["scores"][1:]).all()
    assert (first["boxes"][:, 2] <= 186).all() and out.image_sizes.tolist() == [[154, 186], [70, 81]]

    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    for auto in (AutoModelForInstanceSegmentation, AutoModelForObjectDetection):
        loaded = auto.from_pretrained(tmp_path).eval()
        assert isinstance(loaded, PaCaViTForInstanceSegmentation)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = model(x).detections[0], loaded(x).detections[0]
    torch.testing.assert_close(a["boxes"], b["boxes"])
    torch.testing.assert_close(a["masks"], b["masks"])


# --------------------------------------------------------------------------------------------
# Processor and pipelines
# --------------------------------------------------------------------------------------------
def test_processor_resizes_like_mmdet():
    from PIL import Image

    processor = PaCaViTMaskRCNNImageProcessor()
    assert processor.resized_size(480, 640) == (800, 1067)  # 1066.67 rounds up (torchvision floors to 1066)
    assert processor.resized_size(427, 640) == (800, 1199)  # scale 800/427: 1199.06
    assert processor.resized_size(300, 1000) == (400, 1333)  # the long side limits
    image = Image.fromarray(np.full((48, 64, 3), 128, dtype=np.uint8))
    annotation = {"boxes": [[8, 4, 40, 36]], "class_labels": [1], "masks": np.ones((1, 48, 64), dtype=np.uint8)}
    batch = processor(image, annotations=annotation)
    assert batch["pixel_values"].shape == (1, 3, 800, 1088)  # 800x1067 padded to a multiple of 32
    assert batch["image_sizes"].tolist() == [[800, 1067]] and batch["original_sizes"].tolist() == [[48, 64]]
    assert (
        batch["pixel_values"][0, :, 800:, :].abs().sum() == 0
        and batch["pixel_values"][0, :, :, 1067:].abs().sum() == 0
    )
    torch.testing.assert_close(batch["pixel_values"][0, 0, 0, 0], torch.tensor((128 - 123.675) / 58.395))
    label = batch["labels"][0]
    torch.testing.assert_close(
        label["boxes"], torch.tensor([[8 * 1067 / 64, 4 * 800 / 48, 40 * 1067 / 64, 36 * 800 / 48]])
    )
    assert label["masks"].shape == (1, 800, 1067)


def test_both_pipelines_on_a_pil_image(tmp_path):
    from PIL import Image
    from transformers import pipeline

    model = tiny_maskrcnn(box_score_threshold=0.0)
    model.save_pretrained(tmp_path)
    PaCaViTMaskRCNNImageProcessor(size={"shortest_edge": 96, "longest_edge": 160}).save_pretrained(tmp_path)
    image = Image.fromarray((np.random.default_rng(0).random((75, 110, 3)) * 255).astype(np.uint8))
    # trust_remote_code=False: use the installed package (else transformers asks whether to run the folder's copy)
    detections = pipeline("object-detection", model=str(tmp_path), trust_remote_code=False)(image, threshold=0.0)
    assert detections and {d["label"] for d in detections} <= {"cat", "dog", "bird"}
    assert all(0 <= d["box"]["xmin"] <= d["box"]["xmax"] <= 110 and d["box"]["ymax"] <= 75 for d in detections)
    segments = pipeline("image-segmentation", model=str(tmp_path), subtask="instance", trust_remote_code=False)(
        image, threshold=0.0
    )
    assert segments and all(s["mask"].size == (110, 75) and s["label"] in {"cat", "dog", "bird"} for s in segments)
    assert all(np.asarray(s["mask"]).max() == 255 for s in segments)


def test_remote_code_folder_loads_its_own_copy(tmp_path):
    """A saved folder carries its code: with trust_remote_code the Auto classes load the folder's copy (flat files
    with single-dot relative imports only), not the installed package."""
    import re

    folder = tmp_path / "m"
    tiny_maskrcnn().save_pretrained(folder)
    PaCaViTMaskRCNNImageProcessor().save_pretrained(folder)
    for path in folder.glob("*.py"):
        source = path.read_text()
        assert not re.search(r"^\s*(from|import) pacavit", source, re.M), f"{path.name} imports the package"
        for module in re.findall(r"^from \.(\w+) import", source, re.M):
            assert (folder / f"{module}.py").exists(), f"{path.name} needs {module}.py"
    # a fresh process that never imports pacavit (in this one the registered classes would take precedence)
    script = (
        "import sys, torch, numpy as np; from transformers import AutoModelForObjectDetection, AutoImageProcessor\n"
        f"m = AutoModelForObjectDetection.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()\n"
        f"p = AutoImageProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)\n"
        "assert 'pacavit' not in sys.modules, 'the package was imported'\n"
        "print(type(m).__module__, type(p).__name__, len(m(**p(np.zeros((40, 60, 3), np.uint8))).detections))\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "transformers_modules" in result.stdout and "PaCaViTMaskRCNNImageProcessor 1" in result.stdout


def test_torchvision_is_a_soft_dependency(monkeypatch):
    """The module imports without torchvision (its imports sit in a try block, so transformers' remote-code import
    check does not demand it); building the model then names the extra to install."""
    import pacavit.modeling_pacavit_maskrcnn as module

    source = Path(module.__file__).read_text()
    assert "\nimport torchvision" not in source and "\nfrom torchvision" not in source  # only inside `try:`
    monkeypatch.setattr(module, "_TORCHVISION_AVAILABLE", False)
    with pytest.raises(ImportError, match=r"pip install 'pacavit\[detection\]'"):
        tiny_maskrcnn()

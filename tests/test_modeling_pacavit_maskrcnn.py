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
from pacavit.image_processing_pacavit_maskrcnn import mmdet_rescale_size, to_uint8_chw

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


# --------------------------------------------------------------------------------------------
# Input validation (issue 19): how the processor reads images, checks annotations and sizes, and what the model and
# the post-processing refuse. Errors name the image/annotation index and the fix.
# --------------------------------------------------------------------------------------------
SMALL = {"shortest_edge": 32, "longest_edge": 64}


def _gradient16(height=16, width=16):
    """0..65535 in steps that are not multiples of 257 (those would survive a wrap-around cast to uint8)."""
    return np.linspace(0, 65535, height * width).round().astype(np.uint16).reshape(height, width) // 3 * 3


@pytest.mark.parametrize("height", [1, 2, 3])
def test_pil_images_1_to_3_px_high_are_read_as_height_width_channels(height):
    """A PIL image's layout is (H, W, C); the old shape guess read 1- and 3-px-high images as channels-first."""
    from PIL import Image

    array = np.arange(height * 5 * 3, dtype=np.uint8).reshape(height, 5, 3)
    image = to_uint8_chw(Image.fromarray(array))
    assert torch.equal(image, torch.from_numpy(array).permute(2, 0, 1))
    batch = PaCaViTMaskRCNNImageProcessor(size=SMALL)(Image.fromarray(array))
    assert batch["original_sizes"].tolist() == [[height, 5]]


def test_array_layout_follows_transformers_and_ambiguous_shapes_say_so(caplog):
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert torch.equal(to_uint8_chw(hwc), torch.from_numpy(hwc).permute(2, 0, 1))
    assert torch.equal(to_uint8_chw(torch.from_numpy(hwc).permute(2, 0, 1)), torch.from_numpy(hwc).permute(2, 0, 1))
    gray = rng.integers(0, 256, (3, 3), dtype=np.uint8)  # 2-D: grayscale, never ambiguous
    assert torch.equal(to_uint8_chw(gray), torch.from_numpy(gray).expand(3, 3, 3))
    cube = rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)
    with caplog.at_level("WARNING", logger="pacavit.image_processing_pacavit_maskrcnn"):
        assert torch.equal(to_uint8_chw(cube, index=4), torch.from_numpy(cube))  # transformers' default: first
    assert "images[4] has shape (3, 3, 3)" in caplog.text and "input_data_format='channels_last'" in caplog.text
    caplog.clear()
    processor = PaCaViTMaskRCNNImageProcessor(do_normalize=False, do_resize=False, size_divisor=1)
    batch = processor(cube, input_data_format="channels_last")
    assert torch.equal(batch["pixel_values"][0], torch.from_numpy(cube).permute(2, 0, 1).float())
    assert not caplog.text  # told, it does not warn
    with pytest.raises(ValueError, match=r"input_data_format='last'.*'channels_first'.*'channels_last'"):
        processor(cube, input_data_format="last")


@pytest.mark.parametrize("kind", ["I;16", "I;16B", "I", "numpy uint16", "torch uint16"])
def test_sixteen_bit_images_are_rescaled_to_8_bits(kind):
    """0..65535 -> 0..255 (v / 257, rounded); PIL's convert('RGB') clips mode I at 255 (all white)."""
    from PIL import Image

    values = _gradient16()
    image = {
        "I;16": lambda: Image.fromarray(values),
        "I;16B": lambda: Image.frombytes("I;16B", (16, 16), values.astype(">u2").tobytes()),
        "I": lambda: Image.fromarray(values.astype(np.int32)),
        "numpy uint16": lambda: values,
        "torch uint16": lambda: torch.from_numpy(values),
    }[kind]()
    expected = torch.from_numpy(np.round(values / 257).astype(np.uint8)).expand(3, -1, -1)
    result = to_uint8_chw(image)
    assert torch.equal(result, expected) and result.min() == 0 and result.max() == 255  # the full range
    assert 120 < result.float().mean() < 135


def test_image_values_that_cannot_be_read_as_8_bits_are_refused():
    from PIL import Image

    with pytest.raises(ValueError, match=r"images\[0\] is a PIL image of mode 'I' with values -5\.\.70000.*16-bit"):
        PaCaViTMaskRCNNImageProcessor()(Image.fromarray(np.array([[-5, 70000]], dtype=np.int32)))
    with pytest.raises(
        ValueError, match=r"images\[1\] has dtype int64 with values 0\.\.300.*Cast 16-bit data to uint16"
    ):
        PaCaViTMaskRCNNImageProcessor()([np.zeros((4, 4, 3), np.uint8), np.array([[0, 300]], dtype=np.int64)])
    with pytest.raises(ValueError, match=r"images\[0\] is a floating-point image with values -1\.\.1: only 0\.\.1 or"):
        PaCaViTMaskRCNNImageProcessor()(np.array([[-1.0, 1.0]]))
    with pytest.raises(ValueError, match=r"images\[0\] holds NaN or infinite values"):
        PaCaViTMaskRCNNImageProcessor()(np.array([[np.nan, 1.0]]))


def test_float_bool_and_small_integer_images_are_read_as_documented():
    levels = np.array([[0, 51, 128, 255]], dtype=np.uint8)
    expected = torch.from_numpy(levels).expand(3, -1, -1)
    assert torch.equal(to_uint8_chw(levels / 255.0), expected)  # 0..1 floats x 255
    assert torch.equal(to_uint8_chw(levels.astype(np.float32)), expected)  # 0..255 floats as levels (not white)
    assert torch.equal(to_uint8_chw(torch.from_numpy(levels / 255.0).to(torch.bfloat16))[:, 0, 0], expected[:, 0, 0])
    assert torch.equal(to_uint8_chw(levels.astype(np.int64)), expected)  # other integers: 0..255
    assert to_uint8_chw(np.array([[True, False]])).tolist()[0] == [[255, 0]]


def test_rgba_arrays_drop_alpha_and_palette_images_use_their_colours():
    from PIL import Image

    rgba = np.random.default_rng(0).integers(0, 256, (6, 5, 4), dtype=np.uint8)
    assert torch.equal(to_uint8_chw(rgba), torch.from_numpy(rgba[..., :3]).permute(2, 0, 1))
    assert torch.equal(to_uint8_chw(Image.fromarray(rgba)), torch.from_numpy(rgba[..., :3]).permute(2, 0, 1))
    palette = Image.new("P", (3, 2))
    palette.putpalette([10, 20, 30] + [0] * 765)
    assert to_uint8_chw(palette)[:, 0, 0].tolist() == [10, 20, 30]


@pytest.mark.parametrize(
    "images, message",
    [
        ("image.png", r"images\[0\] is a str; give a PIL image, a NumPy array or a torch tensor.*PIL.Image.open"),
        ([np.zeros((4, 4, 3), np.uint8), np.zeros((0, 5, 3), np.uint8)], r"images\[1\] is empty \(0x5 pixels"),
        (np.zeros((5, 5, 2), np.uint8), r"images\[0\] has shape \(5, 5, 2\): neither its first nor its last"),
        ([np.zeros((1, 4, 4, 3), np.uint8)], r"images\[0\] has shape \(1, 4, 4, 3\).*pass a list of images"),
        ([], r"images is empty"),
    ],
)
def test_unreadable_images_name_the_index(images, message):
    with pytest.raises(ValueError, match=message):
        PaCaViTMaskRCNNImageProcessor(size=SMALL)(images)


def test_pil_modes_that_cannot_be_converted_name_the_image():
    from PIL import Image

    with pytest.raises(ValueError, match=r"Cannot read images\[0\], a PIL image of mode 'La'.*image.convert\('RGB'\)"):
        PaCaViTMaskRCNNImageProcessor(size=SMALL)(Image.new("La", (4, 4)))


def test_a_4d_array_is_a_batch():
    batch = PaCaViTMaskRCNNImageProcessor(size=SMALL)(np.zeros((2, 10, 20, 3), np.uint8))
    assert batch["pixel_values"].shape == (2, 3, 32, 64) and batch["original_sizes"].tolist() == [[10, 20]] * 2


@pytest.mark.parametrize("width, height", [(2, 4000), (4000, 2)])
def test_extreme_aspect_ratios_keep_at_least_one_pixel(width, height):
    """mmcv's rounding gives 0 px for 4000x2 at <= 160 px (torch then failed in the resize); now 1 px, and the
    detections come back at the original size through both post-processing functions."""
    from PIL import Image

    assert mmdet_rescale_size(4000, 2, 96, 160) == (160, 1) and mmdet_rescale_size(2, 4000, 96, 160) == (1, 160)
    processor = PaCaViTMaskRCNNImageProcessor(size={"shortest_edge": 96, "longest_edge": 160})
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))
    batch = processor(image)
    assert min(batch["image_sizes"][0].tolist()) == 1
    model = tiny_maskrcnn(box_score_threshold=0.0).eval()
    with torch.no_grad():
        outputs = model(**batch)
    boxes = processor.post_process_object_detection(outputs, threshold=0.0)[0]["boxes"]
    assert len(boxes) and (boxes[:, 2] <= width + 1e-3).all() and (boxes[:, 3] <= height + 1e-3).all()
    segmentation = processor.post_process_instance_segmentation(outputs, threshold=0.0)[0]["segmentation"]
    assert segmentation.shape == (height, width)
    doubled = processor.post_process_instance_segmentation(
        outputs, threshold=0.0, target_sizes=[(2 * height, 2 * width)]
    )
    assert doubled[0]["segmentation"].shape == (2 * height, 2 * width)


def test_processor_settings_and_arguments_are_checked():
    with pytest.raises(ValueError, match=r"size=\{'height': 800\}: give \{'shortest_edge': S, 'longest_edge': L\}"):
        PaCaViTMaskRCNNImageProcessor(size={"height": 800})
    with pytest.raises(ValueError, match=r"image_mean=.*image_std=\[0\.2, 0\.0, 0\.2\]: give 3 values each"):
        PaCaViTMaskRCNNImageProcessor(image_std=[0.2, 0.0, 0.2])
    processor = PaCaViTMaskRCNNImageProcessor(size=SMALL)
    with pytest.raises(ValueError, match=r"size=\{'shortest_edge': 0, 'longest_edge': 64\}"):
        processor(np.zeros((4, 4, 3), np.uint8), size={"shortest_edge": 0, "longest_edge": 64})
    with pytest.raises(
        ValueError, match=r"unsupported arguments \['do_rezise'\]; it takes images, annotations, do_res"
    ):
        processor(np.zeros((4, 4, 3), np.uint8), do_rezise=False)
    # what the processor does anyway is accepted
    processor(np.zeros((4, 4, 3), np.uint8), data_format="channels_first", do_convert_rgb=True)


# ---------------------------------------------------------------- annotations (processor) and labels (model)
def _annotation(height=48, width=64, boxes=((8, 4, 40, 36),), classes=(1,), **overrides):
    masks = np.zeros((len(boxes), height, width), dtype=np.uint8)
    masks[:, 4:36, 8:40] = 1
    return {"boxes": [list(b) for b in boxes], "class_labels": list(classes), "masks": masks, **overrides}


def _image(height=48, width=64):
    return np.full((height, width, 3), 100, dtype=np.uint8)


def test_masks_of_another_size_than_the_image_are_refused():
    processor = PaCaViTMaskRCNNImageProcessor(size=SMALL)
    annotations = [_annotation(), _annotation(height=24, width=32)]
    with pytest.raises(
        ValueError,
        match=r"annotations\[1\]: masks are 24x32 but images\[1\] is 48x64\. Give the masks at the size of the "
        r"image the boxes refer to \(the processor resizes both with the image\)",
    ):
        processor([_image(), _image()], annotations=annotations)
    model = tiny_maskrcnn().train()
    target = _target(60, 90, [[1, 1, 30, 30]], [0])
    target["masks"] = target["masks"][:, :30, :45]
    with pytest.raises(
        ValueError,
        match=r"labels\[0\]: masks are 30x45 but image_sizes\[0\] is 60x90\. .*\(or the padded batch, 64x96\).*"
        r"annotations=",
    ):
        model(torch.randn(1, 3, 64, 96), image_sizes=[(60, 90)], labels=[target])
    # masks of the padded batch's size align at the top-left and are accepted
    padded = _target(64, 96, [[1, 1, 30, 30]], [0])
    assert torch.isfinite(model(torch.randn(1, 3, 64, 96), image_sizes=[(60, 90)], labels=[padded]).loss)


@pytest.mark.parametrize(
    "annotations, message",
    [
        ([_annotation()], r"Got 1 annotations for 2 images; give one dict per image, in the order of the images"),
        ({"boxes": []}, r"annotations is a dict for 2 images; give a list with one dict per image"),
        ([_annotation(), [[8, 4, 40, 36]]], r"annotations\[1\] is a list, not a dict: give 'boxes' \(N, 4\)"),
        ([_annotation(), {"boxes": [], "masks": []}], r"annotations\[1\] has no \['class_labels'\] \(its keys:"),
        ([_annotation(), _annotation(boxes=[[8, 4, 40, 36, 1]])], r"annotations\[1\]: boxes have shape \(1, 5\)"),
        ([_annotation(), _annotation(classes=[[1]])], r"annotations\[1\]: class_labels have shape \(1, 1\)"),
        (
            [_annotation(), dict(_annotation(), masks=np.ones((48, 64)))],
            r"annotations\[1\]: masks have shape \(48, 64\); give \(N, H, W\).*mask\[None\]",
        ),
        (
            [_annotation(), dict(_annotation(), class_labels=[1, 2])],
            r"annotations\[1\]: 1 boxes, 2 class_labels and 1 masks; give one class id and one mask per box",
        ),
        (
            [_annotation(), _annotation(boxes=[[40, 4, 8, 36]])],
            r"annotations\[1\]: boxes \[\[40\.0, 4\.0, 8\.0, 36\.0\]\] \(index \[0\]\) have zero area or lie outside "
            r"the 48x64 image \(images\[1\]\).*not x, y, width, height.*clip_boxes",
        ),
        ([_annotation(), _annotation(boxes=[[8, 4, 80, 36]])], r"annotations\[1\]: boxes \[\[8\.0, 4\.0, 80\.0"),
        ([_annotation(), _annotation(boxes=[[8, 4, np.nan, 36]])], r"annotations\[1\]: boxes \[\[8\.0, 4\.0, nan"),
        (
            [_annotation(), _annotation(classes=[-1])],
            r"annotations\[1\]: class_labels must be 0-based ids \(>= 0\), got",
        ),
        (
            [_annotation(), _annotation(classes=[1.5])],
            r"annotations\[1\]: class_labels \[1\.5\] are not whole numbers",
        ),
        (
            [_annotation(), _annotation(iscrowd=[1])],
            r"annotations\[1\]: objects \[0\] are marked iscrowd.*leave them out of the training targets",
        ),
        (
            [_annotation(), dict(_annotation(), masks=np.full((1, 48, 64), 2.0))],
            r"annotations\[1\]: float masks hold values 2\.\.2; float masks are read as 0\.\.1",
        ),
        (
            [_annotation(), dict(_annotation(), boxes=[[1, 2], [3, 4, 5, 6]])],
            r"annotations\[1\]: 'boxes' cannot be read as one array",
        ),
    ],
)
def test_wrong_annotations_name_the_image_and_the_fix(annotations, message):
    with pytest.raises(ValueError, match=message):
        PaCaViTMaskRCNNImageProcessor(size=SMALL)([_image(), _image()], annotations=annotations)


def test_annotations_are_normalised_binarised_and_empty_ones_train_as_negatives():
    processor = PaCaViTMaskRCNNImageProcessor(size=SMALL)
    soft = _annotation(classes=[1.0])  # whole-number floats are class ids
    soft["masks"] = soft["masks"].astype(np.float32) * 0.75  # inside from 0.5
    white = dict(_annotation(), masks=_annotation()["masks"] * 255)  # 0/255 masks: nonzero is inside
    empty = {"boxes": [], "class_labels": [], "masks": []}
    batch = processor([_image(), _image(), _image()], annotations=[soft, white, empty])
    for label in batch["labels"][:2]:
        assert label["masks"].dtype == torch.uint8 and set(label["masks"].unique().tolist()) == {0, 1}
        assert label["class_labels"].dtype == torch.int64 and label["class_labels"].tolist() == [1]
    assert [tuple(v.shape) for v in batch["labels"][2].values()] == [(0, 4), (0,), (0, 32, 43)]
    model = tiny_maskrcnn().train()
    out = model(batch["pixel_values"], image_sizes=batch["image_sizes"], labels=batch["labels"])
    assert torch.isfinite(out.loss)
    only_empty = processor(_image(), annotations=empty)  # a dict alone for one image
    out = model(only_empty["pixel_values"], image_sizes=only_empty["image_sizes"], labels=only_empty["labels"])
    assert torch.isfinite(out.loss) and out.loss_dict["loss_mask"] == 0


def test_model_labels_and_sizes_are_checked():
    model = tiny_maskrcnn().train()
    x = torch.randn(2, 3, 64, 96)
    good = [_target(60, 90, [[1, 1, 30, 30]], [0]), _target(64, 80, [], [])]
    sizes = [(60, 90), (64, 80)]
    with pytest.raises(ValueError, match=r"labels is one dict for 2 image\(s\); give a list with one dict per image"):
        model(x, image_sizes=sizes, labels=good[0])
    with pytest.raises(ValueError, match=r"labels has 1 entries for 2 images"):
        model(x, image_sizes=sizes, labels=good[:1])
    for classes, found in [([3], r"\[3\]"), ([-1], r"\[-1\]")]:
        with pytest.raises(
            ValueError,
            match=rf"labels\[0\]: class_labels must be 0-based ids below num_labels=3, got {found}.*num_labels=K.*"
            r"ignore_mismatched_sizes=True",
        ):
            model(x, image_sizes=sizes, labels=[_target(60, 90, [[1, 1, 30, 30]], classes), good[1]])
    with pytest.raises(ValueError, match=r"labels\[1\]: boxes .* lie outside the 64x80 image \(image_sizes\[1\]\)"):
        model(x, image_sizes=sizes, labels=[good[0], _target(64, 80, [[10, 10, 85, 20]], [1])])
    nan_box = dict(good[0], boxes=torch.tensor([[1.0, 1.0, float("nan"), 30.0]]))
    with pytest.raises(ValueError, match=r"labels\[0\]: boxes \[\[1\.0, 1\.0, nan, 30\.0\]\]"):  # was a NaN loss
        model(x, image_sizes=sizes, labels=[nan_box, good[1]])
    # 0/255 masks (were: BCE against targets of 255, loss_mask ~300) are binarised as the processor does
    white = [dict(good[0], masks=good[0]["masks"] * 255), good[1]]
    losses = []
    for labels in (good, white):
        torch.manual_seed(0)
        losses.append(model(x, image_sizes=sizes, labels=labels).loss_dict["loss_mask"])
    torch.testing.assert_close(losses[0], losses[1])
    with pytest.raises(
        ValueError, match=r"image_sizes \[\(60, 90\), \(0, 5\)\] must give one \(height, width\) within"
    ):
        model(x, image_sizes=[(60, 90), (0, 5)], labels=good)
    with pytest.raises(ValueError, match=r"image_sizes \[\(60, 90, 1\), \(10, 5\)\] must give one \(height, width\)"):
        model(x, image_sizes=[(60, 90, 1), (10, 5)], labels=good)
    model.eval()
    with pytest.raises(ValueError, match=r"labels were given in eval mode.*model.train\(\)"):
        model(x, image_sizes=sizes, labels=good)
    # was: the second image's detections silently dropped (zip over the shorter list)
    with pytest.raises(
        ValueError, match=r"original_sizes \[\(10, 10\)\] must give one \(height, width\) per image \(2\)"
    ):
        model(x, original_sizes=[(10, 10)])
    with pytest.raises(ValueError, match=r"original_sizes \[\[10, 10\], \[0, 3\]\] must give one"):
        model(x, original_sizes=torch.tensor([[10, 10], [0, 3]]))


def test_post_processing_arguments_are_checked():
    model = tiny_maskrcnn(box_score_threshold=0.0).eval()
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 64, 64))
    processor = PaCaViTMaskRCNNImageProcessor()
    for post_process in (processor.post_process_object_detection, processor.post_process_instance_segmentation):
        with pytest.raises(ValueError, match=r"target_sizes has 1 entries for 2 images; give one \(height, width\)"):
            post_process(outputs, target_sizes=[(10, 10)])
        for bad, shown in [([(10, 10), (0, 10)], r"\(0, 10\)"), (torch.tensor([[10, 10], [-1, 10]]), r"\[-1, 10\]")]:
            with pytest.raises(ValueError, match=rf"target_sizes\[1\] is {shown}: give \(height, width\) in whole"):
                post_process(outputs, target_sizes=bad)
        for threshold in (-0.1, 1.5, float("nan")):
            with pytest.raises(ValueError, match=r"threshold=.* is outside \[0, 1\] \(scores are probabilities"):
                post_process(outputs, threshold=threshold)
        with pytest.raises(ValueError, match=r"outputs \(tuple\) has no detections.*eval mode"):
            post_process(outputs.to_tuple())
    with pytest.raises(ValueError, match=r"mask_threshold=2 is outside \[0, 1\]"):
        processor.post_process_instance_segmentation(outputs, mask_threshold=2)
    with pytest.raises(ValueError, match=r"overlap_mask_area_threshold=-1 is outside \[0, 1\]"):
        processor.post_process_instance_segmentation(outputs, overlap_mask_area_threshold=-1)
    with pytest.raises(ValueError, match=r"unsupported arguments \['treshold'\]"):
        processor.post_process_instance_segmentation(outputs, treshold=0.2)
    model.train()
    trained = model(torch.randn(1, 3, 64, 64), labels=[_target(64, 64, [], [])])
    with pytest.raises(ValueError, match=r"outputs \(PaCaViTInstanceSegmentationOutput\) has no detections"):
        processor.post_process_object_detection(trained)
    # the edges of the ranges are fine
    assert len(processor.post_process_instance_segmentation(outputs, threshold=0.0, mask_threshold=1.0)) == 2

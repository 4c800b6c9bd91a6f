"""torch.export (dynamic batch/height/width) and ONNX graphs equal eager outputs.

Tracing with symbolic shapes costs ~13 s of CPU per model even at the tiny widths, and the ONNX translation
~20 s more, so by default only the classifier's torch.export program is checked; its ONNX file and both graphs
of the backbone are checked with RUN_SLOW=1 (transformers' `slow` marker; about 1.5 CPU-minutes).

What a user runs is checked by default at a static shape (a static trace is ~4x quicker than a dynamic one): PIL
images through the saved image processor to a NumPy array, into an onnxruntime session of the exported classifier
and of the backbone, equal to the PyTorch model on the same array.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor
from transformers.testing_utils import slow

from pacavit import PaCaViTBackbone, PaCaViTForImageClassification
from pacavit.graph_export import (
    GraphOutputs,
    eager_outputs,
    export_onnx,
    export_program,
    max_abs_error,
    onnx_outputs,
    program_outputs,
)

from helpers import tiny_config

# sizes the graph never saw (it was traced at 2x3x96x128): other batch, odd and non-square, not multiples of 32
INPUTS = [(1, 97, 131), (3, 64, 40), (1, 224, 224)]


def _classifier():
    return PaCaViTForImageClassification(tiny_config(depths=[1, 1, 1, 1])).eval()


def _backbone():
    config = tiny_config(depths=[1, 1, 1, 1], out_features=["stage1", "stage2", "stage3", "stage4"])
    return PaCaViTBackbone(config).eval()


def _check_program(model):
    program = export_program(model)
    for b, h, w in INPUTS:
        x = torch.randn(b, 3, h, w)
        assert max_abs_error(program_outputs(program, x), eager_outputs(model, x)) < 1e-5
    return program


def _check_onnx(model, program, tmp_path):
    path = export_onnx(model, tmp_path / "model.onnx", program)
    for b, h, w in INPUTS:
        x = torch.randn(b, 3, h, w)
        assert max_abs_error(onnx_outputs(path, x), eager_outputs(model, x)) < 1e-4


def test_classifier_program_equals_eager():
    _check_program(_classifier())


@slow
def test_classifier_onnx_equals_eager(tmp_path):
    model = _classifier()
    _check_onnx(model, _check_program(model), tmp_path)


@slow
def test_backbone_program_and_onnx_equal_eager(tmp_path):
    model = _backbone()
    _check_onnx(model, _check_program(model), tmp_path)


def _processed_images(tmp_path, size: int = 64) -> np.ndarray:
    """Two PIL images of other sizes (one grayscale) through the saved classification processor, as NumPy."""
    from pacavit.preprocessing import classification_image_processor

    classification_image_processor(image_size=size).save_pretrained(tmp_path / "processor")
    image_processor = AutoImageProcessor.from_pretrained(tmp_path / "processor")
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (80, 71), dtype=np.uint8)),  # "L": the processor converts it to RGB
    ]
    pixel_values = image_processor(images, return_tensors="np")["pixel_values"]
    assert pixel_values.shape == (2, 3, size, size) and pixel_values.dtype == np.float32
    return pixel_values


@pytest.mark.parametrize("make_model", [_classifier, _backbone], ids=["classifier", "backbone"])
def test_onnxruntime_on_processed_images_equals_pytorch(make_model, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    model = make_model()
    pixel_values = _processed_images(tmp_path)
    # a static trace at the processor's output shape: the dynamic-shape graph is checked by the RUN_SLOW tests
    program = export_program(model, torch.from_numpy(pixel_values), dynamic=False)
    path = export_onnx(model, tmp_path / "model.onnx", program)

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixel_values"]
    assert [o.name for o in session.get_outputs()] == GraphOutputs(model).output_names
    got = session.run(None, {"pixel_values": pixel_values})
    expected = eager_outputs(model, torch.from_numpy(pixel_values))
    assert len(got) == len(expected)
    for ort_out, torch_out in zip(got, expected):
        assert ort_out.shape == tuple(torch_out.shape)
        # float32 with the same ops in another order (ORT's fused kernels): errors of a few float32 ulps of the
        # output's scale, ~1e-7 measured; 1e-5 of the scale leaves 100x headroom and still fails on any wrong op,
        # which moves outputs by 1e-3 or more. Scaled because the backbone's feature maps are unnormalised.
        scale = max(1.0, torch_out.abs().max().item())
        assert np.abs(ort_out - torch_out.numpy()).max() <= 1e-5 * scale
    if isinstance(model, PaCaViTForImageClassification):
        assert (got[0].argmax(-1) == expected[0].argmax(-1).numpy()).all()


def test_unsupported_model_is_a_clear_error():
    with pytest.raises(ValueError, match="supports PaCaViTForImageClassification"):
        GraphOutputs(torch.nn.Linear(2, 2))

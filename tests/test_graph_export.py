"""torch.export (dynamic batch/height/width) and ONNX graphs equal eager outputs.

Tracing with symbolic shapes costs ~13 s of CPU per model even at the tiny widths, and the ONNX translation
~20 s more, so by default only the classifier's torch.export program is checked; its ONNX file and both graphs
of the backbone are checked with RUN_SLOW=1 (transformers' `slow` marker; about 1.5 CPU-minutes).
"""

from __future__ import annotations

import pytest
import torch
from transformers.testing_utils import slow

from pacavit import PaCaViTBackbone, PaCaViTForImageClassification
from pacavit.graph_export import (
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


def test_unsupported_model_is_a_clear_error():
    from pacavit.graph_export import GraphOutputs

    with pytest.raises(ValueError, match="supports PaCaViTForImageClassification"):
        GraphOutputs(torch.nn.Linear(2, 2))

"""Property-based tests (hypothesis) over input sizes, batch sizes and small-width versions of
the presets, for every model class: a forward on valid input never fails, outputs have the documented shapes and
are finite, and in eval mode an image's outputs do not depend on the other images of the batch (BatchNorm of the
clustering teacher included). Few examples each, derandomized, so the suite stays fast and reproducible."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pacavit import (
    PaCaViTBackbone,
    PaCaViTConfig,
    PaCaViTForImageClassification,
    PaCaViTForSemanticSegmentation,
    PaCaViTModel,
    PaCaViTSegmentationConfig,
)

from helpers import TINY, tiny_maskrcnn

# every architectural family of the presets, at tiny widths (the preset's own switches are kept)
PRESETS = {
    "pacavit-tiny": {},
    "pacavit-small-mlp": {},
    "pacavit-small-blockwise": dict(num_clusters=[4, 4, 4, 4]),
    "pacavit-small-clusters-49-64-81-100": dict(num_clusters=[3, 5, 7, 9]),
    "pacavit-tiny-teacher": dict(num_clusters=[4, 4, 4, 4], teacher_depths=[1, 1, 1, 1]),
}
OUT_FEATURES = ["stage1", "stage2", "stage3", "stage4"]
STRIDES = [4, 8, 16, 32]
PROPERTY_SETTINGS = settings(
    max_examples=8, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
HEAVY_SETTINGS = settings(PROPERTY_SETTINGS, max_examples=5)  # segmentation, detection, training steps


def expected_grid(size: int, stride: int) -> int:
    return -(-size // stride)  # every stride-2 convolution rounds up


@functools.cache
def build(cls, preset: str):
    torch.manual_seed(0)
    config = PaCaViTConfig.from_preset(
        preset, **TINY, num_labels=4, out_features=OUT_FEATURES, drop_path_rate=0.1, **PRESETS[preset]
    )
    return cls(config).eval()


@functools.cache
def build_segmentation(head: str, preset: str):
    torch.manual_seed(0)
    base = PaCaViTConfig.from_preset(preset, **TINY, **PRESETS[preset])
    config = PaCaViTSegmentationConfig.from_backbone_config(
        base, num_labels=3, decode_head_type=head, decode_head_hidden_size=16, auxiliary_hidden_size=8
    )
    return PaCaViTForSemanticSegmentation(config).eval()


sizes = st.integers(min_value=1, max_value=80)
batches = st.integers(min_value=1, max_value=3)
presets = st.sampled_from(sorted(PRESETS))


def _outputs(cls, model, pixel_values) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(pixel_values, output_hidden_states=True)
    if cls is PaCaViTBackbone:
        return {f"feature_map_{i}": m for i, m in enumerate(out.feature_maps)}
    tensors = {f"hidden_state_{i}": h for i, h in enumerate(out.hidden_states)}
    if cls is PaCaViTModel:
        tensors.update(last_hidden_state=out.last_hidden_state, pooler_output=out.pooler_output)
    else:
        tensors["logits"] = out.logits
    return tensors


def _check_batch_independence(tensors, model, pixel_values, call):
    """Each image alone gives the outputs it gets in the batch."""
    for index in range(pixel_values.shape[0]):
        alone = call(model, pixel_values[index : index + 1])
        for name, tensor in tensors.items():
            torch.testing.assert_close(
                alone[name][0], tensor[index], atol=2e-5, rtol=1e-4, msg=f"{name}, image {index}"
            )


@pytest.mark.parametrize("cls", [PaCaViTModel, PaCaViTForImageClassification, PaCaViTBackbone])
@PROPERTY_SETTINGS
@given(preset=presets, batch=batches, height=sizes, width=sizes)
def test_base_models_take_any_valid_input(cls, preset, batch, height, width):
    model = build(cls, preset)
    pixel_values = torch.randn(batch, 3, height, width)
    tensors = _outputs(cls, model, pixel_values)
    widths = model.config.hidden_sizes
    for name, tensor in tensors.items():
        assert torch.isfinite(tensor).all(), name
        assert tensor.shape[0] == batch, name
    if cls is PaCaViTBackbone:
        maps = [tensors[f"feature_map_{i}"] for i in range(4)]
    else:
        maps = [tensors[f"hidden_state_{i}"] for i in range(1, 5)]
        stem = tensors["hidden_state_0"]
        assert stem.shape == (batch, widths[0], expected_grid(height, 4), expected_grid(width, 4))
    for feature_map, stride, channels in zip(maps, STRIDES, widths):
        assert feature_map.shape == (batch, channels, expected_grid(height, stride), expected_grid(width, stride))
    if cls is PaCaViTForImageClassification:
        assert tensors["logits"].shape == (batch, 4)
    if cls is PaCaViTModel:
        assert tensors["pooler_output"].shape == (batch, widths[-1])
    _check_batch_independence(tensors, model, pixel_values, lambda m, x: _outputs(cls, m, x))


@pytest.mark.parametrize("head", ["paca", "upernet"])
@HEAVY_SETTINGS
@given(preset=presets, batch=batches, height=sizes, width=sizes)
def test_segmentation_models_take_any_valid_input(head, preset, batch, height, width):
    model = build_segmentation(head, preset)
    pixel_values = torch.randn(batch, 3, height, width)

    def call(m, x):
        with torch.no_grad():
            return {"logits": m(x).logits}

    tensors = call(model, pixel_values)
    # logits at stride 4 (upsample to the label size for the loss, as the model does)
    assert tensors["logits"].shape == (batch, 3, expected_grid(height, 4), expected_grid(width, 4))
    assert torch.isfinite(tensors["logits"]).all()
    _check_batch_independence(tensors, model, pixel_values, call)


@HEAVY_SETTINGS
@given(preset=presets, height=st.integers(min_value=1, max_value=70), width=st.integers(min_value=1, max_value=70))
def test_training_forward_and_backward_work_wherever_the_teacher_allows(preset, height, width):
    """Training mode (dropout, drop-path, BatchNorm batch statistics): loss and gradients are finite for a batch
    of two; the one size limit (teacher, a single value per channel at stride 32) is covered elsewhere."""
    model = build(PaCaViTForImageClassification, preset).train()
    try:
        out = model(torch.randn(2, 3, height, width), labels=torch.tensor([0, 3]))
        out.loss.backward()
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)
    assert torch.isfinite(out.loss)


@functools.cache
def detection_model():
    torch.manual_seed(0)
    return tiny_maskrcnn().eval()


@HEAVY_SETTINGS
@given(batch=batches, height=sizes, width=sizes)
def test_mask_rcnn_takes_any_valid_input(batch, height, width):
    model = detection_model()
    pixel_values = torch.randn(batch, 3, height, width)
    with torch.no_grad():
        detections = model(pixel_values).detections
        alone = [model(pixel_values[i : i + 1]).detections[0] for i in range(batch)]
    assert len(detections) == batch
    num_classes = len(model.config.id2label)
    for found, single in zip(detections, alone):
        count = len(found["scores"])
        assert found["boxes"].shape == (count, 4) and found["masks"].shape == (count, height, width)
        assert torch.isfinite(found["boxes"]).all() and torch.isfinite(found["masks"]).all()
        assert ((found["scores"] >= 0) & (found["scores"] <= 1)).all()
        assert ((found["labels"] >= 0) & (found["labels"] < num_classes)).all()
        boxes = found["boxes"]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        # the same detections when the image is alone in the batch
        assert len(single["scores"]) == count
        torch.testing.assert_close(single["scores"], found["scores"], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(single["boxes"], found["boxes"], atol=1e-3, rtol=1e-4)

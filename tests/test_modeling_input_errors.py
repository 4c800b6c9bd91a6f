"""Every bad input to a PaCa-ViT model class gets an error that says what was wrong and
what to do, or a documented, tested handling (NaN/Inf, float precision, tiny and extreme sizes);
the returned hidden states receive gradients; compile/export keep working with the checks in place."""

import re

import numpy as np
import pytest
import torch

from pacavit import PaCaViTBackbone, PaCaViTForImageClassification, PaCaViTModel

from helpers import tiny_config

CLUSTERED = dict(num_clusters=[8, 8, 8, 0])
TEACHER = dict(use_clustering_teacher=True, num_clusters=[8, 8, 8, 8], teacher_depths=[1, 1, 1, 1])
CLASSES = [PaCaViTModel, PaCaViTForImageClassification, PaCaViTBackbone]


def build(cls=PaCaViTForImageClassification, **overrides):
    return cls(tiny_config(**{**CLUSTERED, **overrides})).eval()


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return build()


# ---------------------------------------------------------------- channels
@pytest.mark.parametrize(
    "shape, hint",
    [
        ((1, 1, 32, 32), r"grayscale.*convert\('RGB'\).*do_convert_rgb=True"),
        ((1, 4, 32, 32), r"RGBA"),
        ((1, 32, 32, 3), r"channels-last.*permute\(0, 3, 1, 2\)"),
        ((1, 5, 32, 32), r"num_channels=5"),
    ],
)
def test_wrong_channel_count_names_the_shape_and_the_fix(classifier, shape, hint):
    prefix = re.escape(f"Expected pixel_values of shape (batch, 3, height, width), got {shape}. ")
    with pytest.raises(ValueError, match=prefix + ".*" + hint):
        classifier(torch.randn(shape))


def test_a_model_built_for_one_channel_takes_one_channel():
    model = build(num_channels=1)
    assert model(torch.randn(2, 1, 32, 32)).logits.shape == (2, 5)
    with pytest.raises(ValueError, match=r"\(batch, 1, height, width\), got \(2, 3, 32, 32\)"):
        model(torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16", "1", "CMYK"])
def test_grayscale_and_other_pil_modes_are_converted_by_the_saved_processor(tmp_path, classifier, mode):
    """The processors pacavit writes (converter, training script) convert every PIL mode to RGB."""
    from PIL import Image
    from transformers import AutoImageProcessor

    from pacavit.preprocessing import default_image_processor

    config = tiny_config(image_size=32)
    default_image_processor(config).save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    image = Image.new(mode, (20, 30), 1)
    pixel_values = processor(image, return_tensors="pt").pixel_values
    assert pixel_values.shape == (1, 3, 32, 32)
    assert torch.isfinite(classifier(pixel_values).logits).all()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_the_saved_segmentation_processor_converts_every_pil_mode(tmp_path, mode):
    """transformers' SegformerImageProcessor fails on a grayscale image with a broadcast error unless told to
    convert; the folders pacavit writes tell it to."""
    from PIL import Image
    from transformers import AutoImageProcessor

    from pacavit.preprocessing import segmentation_image_processor

    segmentation_image_processor(crop_size=32).save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    pixel_values = processor(Image.new(mode, (20, 30), 1), return_tensors="pt").pixel_values
    assert pixel_values.shape == (1, 3, 32, 32) and torch.isfinite(pixel_values).all()


# ---------------------------------------------------------------- rank
def test_missing_batch_dimension_says_how_to_add_it(classifier):
    with pytest.raises(
        ValueError, match=r"got \(3, 32, 32\): one image without the batch dimension. Pass pixel_values\[None\]"
    ):
        classifier(torch.randn(3, 32, 32))


def test_five_dimensional_input_says_how_to_merge_it(classifier):
    with pytest.raises(ValueError, match=r"got \(2, 4, 3, 32, 32\) \(5 dimensions.*pixel_values.flatten\(0, 1\)"):
        classifier(torch.randn(2, 4, 3, 32, 32))


@pytest.mark.parametrize("value", [[[0.0]], "image.png", None])
def test_non_tensor_input_points_to_the_image_processor(classifier, value):
    with pytest.raises(
        TypeError, match=r"got a (list|str|NoneType). Turn images into a tensor with the model's image processor"
    ):
        classifier(value)


def test_numpy_input_is_a_type_error(classifier):
    with pytest.raises(TypeError, match="got a ndarray"):
        classifier(np.zeros((1, 3, 32, 32), dtype=np.float32))


# ---------------------------------------------------------------- sizes
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (31, 31), (32, 1024), (1024, 32)])
def test_any_size_down_to_one_pixel_works_with_the_documented_shapes(cls, size):
    """There is no minimum size in eval mode: every stride-2 conv (kernel 3, padding 1) rounds up."""
    model = build(cls, out_features=["stage1", "stage2", "stage3", "stage4"])
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size), output_hidden_states=True)
    maps = out.feature_maps if cls is PaCaViTBackbone else out.hidden_states[1:]
    for stage, feature_map in enumerate(maps):
        stride = 4 * 2**stage
        assert feature_map.shape[-2:] == tuple(-(-s // stride) for s in size)
        assert torch.isfinite(feature_map).all()


def test_teacher_in_training_needs_two_values_per_channel_at_stride_32():
    model = build(**TEACHER).train()
    with pytest.raises(
        ValueError, match=r"1 image\(s\) of 31x31 give a 1x1 map at stride 32.*at least 2 images.*model.eval\(\)"
    ):
        model(torch.randn(1, 3, 31, 31))
    # the limit is exact: two images, or one image with a 1x2 map at stride 32, train
    for shape in [(2, 3, 31, 31), (1, 3, 32, 33)]:
        model(torch.randn(shape), labels=torch.zeros(shape[0], dtype=torch.long)).loss.backward()
    assert torch.isfinite(model.eval()(torch.randn(1, 3, 1, 1)).logits).all()  # eval: running statistics


def test_empty_input_is_an_error(classifier):
    for shape in [(0, 3, 32, 32), (1, 3, 0, 32)]:
        with pytest.raises(ValueError, match=r"pixel_values is empty \(shape \(" + ", ".join(map(str, shape))):
            classifier(torch.randn(shape))


# ---------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_integer_input_is_an_error_saying_how_to_normalise(classifier, dtype):
    pixel_values = torch.randint(0, 2, (1, 3, 32, 32)).to(dtype)
    with pytest.raises(
        TypeError, match=rf"dtype {dtype}; the model takes floating-point pixel values.*image_mean/image_std"
    ):
        classifier(pixel_values)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_precisions_are_cast_to_the_weights(classifier, dtype):
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = classifier(pixel_values).logits
        logits = classifier(pixel_values.to(dtype)).logits
    assert logits.dtype == torch.float32
    tolerance = {torch.float64: 1e-6, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(logits, expected, atol=tolerance, rtol=tolerance)


# ----------------------------------------------------------------  (model side): NaN / Inf
@pytest.mark.parametrize("variant", [CLUSTERED, TEACHER])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_pixels_only_reach_the_outputs_of_their_own_image(variant, bad):
    """Documented behaviour: inputs are not scanned for NaN/Inf (that would cost a device sync per call); in eval
    mode a non-finite pixel makes that image's outputs non-finite and leaves the other images untouched."""
    model = build(**variant)
    pixel_values = torch.randn(3, 3, 40, 40)
    with torch.no_grad():
        clean = model(pixel_values).logits
        pixel_values[1, 0, 5, 7] = bad
        logits = model(pixel_values).logits
    assert not torch.isfinite(logits[1]).all()
    torch.testing.assert_close(logits[[0, 2]], clean[[0, 2]], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- classification labels
@pytest.mark.parametrize("labels, found", [([0, 12], r"\[12\]"), ([-1, 2], r"\[-1\]"), ([5, 7], r"\[5, 7\]")])
def test_labels_out_of_range_name_the_values_and_num_labels(classifier, labels, found):
    with pytest.raises(
        ValueError,
        match=rf"class indices in \[0, 4\] \(or -100 to ignore a sample\), got {found}"
        r".*num_labels=5.*ignore_mismatched_sizes=True",
    ):
        classifier(torch.randn(2, 3, 32, 32), labels=torch.tensor(labels))


def test_ignore_index_is_accepted(classifier):
    pixel_values = torch.randn(2, 3, 32, 32)
    out = classifier(pixel_values, labels=torch.tensor([3, -100]))
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits[:1], torch.tensor([3])))


def test_label_shape_and_dtype_mistakes_are_explained():
    # fresh models: transformers' loss fixes config.problem_type at the first call with labels
    pixel_values = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"labels of shape \(3,\).*do not fit 2 images.*shape \(2,\)"):
        build()(pixel_values, labels=torch.tensor([0, 1, 2]))
    with pytest.raises(
        ValueError, match=r"read as multi-label targets, which need the logits' shape \(2, 5\).*labels.long\(\)"
    ):
        build()(pixel_values, labels=torch.tensor([0.0, 1.0]))
    model = build()
    model(pixel_values, labels=torch.tensor([0, 1]))  # now a single-label model: float indices are explained too
    with pytest.raises(ValueError, match=r"dtype torch.float32 do not fit 2 images: give one integer class index"):
        model(pixel_values, labels=torch.tensor([0.0, 1.0]))
    multi_label = torch.zeros(2, 5)
    multi_label[0, 1] = multi_label[1, 3] = 1
    assert torch.isfinite(build()(pixel_values, labels=multi_label).loss)
    with pytest.raises(ValueError, match=r"no classification head \(num_labels=0\)"):
        build(num_labels=0)(pixel_values, labels=torch.tensor([0, 1]))


# ---------------------------------------------------------------- gradients reach the returned hidden states
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("variant", [CLUSTERED, TEACHER])
def test_returned_hidden_states_receive_gradients(cls, variant):
    """Grad-CAM-style attribution: the returned maps are the tensors the forward continues from (transformers'
    test_retain_grad_hidden_states_attentions)."""
    model = build(cls, **variant, out_features=["stage2", "stage4"]).train()
    out = model(torch.randn(2, 3, 64, 64), output_hidden_states=True, output_attentions=True)
    returned = list(out.hidden_states) + [out.attentions[0]]
    if cls is PaCaViTModel:
        returned.append(out.last_hidden_state)
        assert out.last_hidden_state is out.hidden_states[-1]
    for tensor in returned:
        tensor.retain_grad()
    first = out[0] if cls is not PaCaViTBackbone else out.feature_maps[-1]
    first.flatten()[0].backward()
    # every stage output feeds the last stage; stage 4 has plain self-attention, so even its first position
    # depends on every earlier position
    for i, tensor in enumerate(returned):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0, f"returned tensor {i} got no gradient"


def test_hidden_states_do_not_change_the_outputs(classifier):
    pixel_values = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        plain = classifier(pixel_values).logits
        with_hidden = classifier(pixel_values, output_hidden_states=True).logits
    assert torch.equal(plain, with_hidden)


# ---------------------------------------------------------------- compile / export with the checks in place
def test_checks_trace_under_compile():
    """The checks keep torch.compile(fullgraph=True) working, labels included (torch.export is covered by
    test_modeling_pacavit.py; a dynamic-shape export, Dim(min=33) for height/width, was checked by hand)."""
    model = build()
    pixel_values, labels = torch.randn(2, 3, 48, 40), torch.tensor([1, 4])
    with torch.no_grad():
        expected = model(pixel_values, labels=labels)
        compiled = torch.compile(model, fullgraph=True, backend="eager")
        out = compiled(pixel_values, labels=labels)
        torch.testing.assert_close(out.logits, expected.logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.loss, expected.loss, atol=1e-5, rtol=1e-5)
        # the static checks are part of the traced function: a wrong input is still explained
        # (fullgraph=True reports it as dynamo's Unsupported error that quotes the message; after a shape change
        # dynamo may retrace with symbolic sizes, so the batch/height/width may read as s0, s1, ...)
        with pytest.raises(Exception, match=r"got \(\w+, 1, \w+, \w+\)\. Convert grayscale"):
            compiled(torch.randn(2, 1, 48, 40))


# ---------------------------------------------------------------- Mask R-CNN processor: every PIL mode
# (fill value, expected 8-bit gray level or None for "what convert('RGB') gives")
MASKRCNN_MODES = {
    "1": (1, None),
    "L": (90, None),
    "LA": ((90, 10), None),
    "P": (7, None),
    "PA": ((7, 10), None),
    "RGBA": ((10, 20, 30, 0), None),
    "CMYK": ((0, 50, 100, 0), None),
    "YCbCr": ((90, 40, 200), None),
    "I;16": (40000, 156),
    "I;16B": (40000, 156),
    "I": (40000, 156),
    "F": (0.5, 128),
}


@pytest.mark.parametrize("mode", list(MASKRCNN_MODES))
def test_the_saved_maskrcnn_processor_reads_every_pil_mode(tmp_path, mode):
    """PaCaViTMaskRCNNImageProcessor reads PIL modes itself (to_uint8_chw): 16-bit modes rescaled to 8 bits (40000 ->
    156, where convert('RGB') clips mode I to 255), F in 0..1 x 255, the rest through convert('RGB') (alpha
    dropped, as mmdet and pacavit.data.common.to_rgb do)."""
    from PIL import Image
    from transformers import AutoImageProcessor

    from pacavit.preprocessing import instance_segmentation_image_processor

    from helpers import tiny_maskrcnn

    model = tiny_maskrcnn().eval()
    model.save_pretrained(tmp_path)  # the folder's config.json names the processor class
    instance_segmentation_image_processor(shortest_edge=32, longest_edge=64).save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    fill, gray = MASKRCNN_MODES[mode]
    image = Image.new(mode, (20, 30), fill)
    inputs = processor(image)
    assert inputs["pixel_values"].shape == (1, 3, 64, 32) and inputs["image_sizes"].tolist() == [[48, 32]]
    mean, std = torch.tensor(processor.image_mean) * 255, torch.tensor(processor.image_std) * 255
    pixel = inputs["pixel_values"][0, :, 10, 10] * std + mean
    expected = [gray] * 3 if gray is not None else np.asarray(image.convert("RGB"))[0, 0].tolist()
    torch.testing.assert_close(pixel, torch.tensor(expected, dtype=torch.float32), atol=1e-3, rtol=0)
    with torch.no_grad():
        detections = model(**inputs).detections
    assert detections[0]["masks"].shape[1:] == (30, 20)

"""PaCaViTForSemanticSegmentation (PaCa head and UperNet), transformers' UperNet with our backbone, remote code,
the image-segmentation pipeline, and starting from ImageNet weights with other cluster counts."""

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoModelForSemanticSegmentation,
    SegformerImageProcessor,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)

from pacavit import (
    PaCaViTConfig,
    PaCaViTForImageClassification,
    PaCaViTForSemanticSegmentation,
    PaCaViTSegmentationConfig,
)
from pacavit.modeling_pacavit_segmentation import slide_inference

from helpers import TINY

HEADS = ["paca", "upernet"]


def seg_config(head="paca", **overrides):
    values = dict(
        TINY,
        num_clusters=[8, 8, 8, 0],
        num_labels=4,
        decode_head_type=head,
        decode_head_hidden_size=16,
        auxiliary_hidden_size=8,
        id2label={0: "background", 1: "one", 2: "two", 3: "three"},
    )
    values.update(overrides)
    return PaCaViTSegmentationConfig(**values)


@pytest.mark.parametrize("head", HEADS)
def test_odd_input_size_shapes_and_cluster_outputs(head):
    model = PaCaViTForSemanticSegmentation(seg_config(head)).eval()
    pixel_values = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        out = model(pixel_values, output_cluster_assignments=True, output_hidden_states=True)
    # stride 4 with the stem's rounding up: 97 -> 49 -> 25, 131 -> 66 -> 33
    assert out.logits.shape == (2, 4, 25, 33)
    assert [h.shape[-2:] for h in out.hidden_states[1:]] == [(25, 33), (13, 17), (7, 9), (4, 5)]
    assert out.loss is None and out.decode_loss is None
    assert len(out.cluster_assignments) == sum(TINY["depths"])
    if head == "paca":
        assert out.head_cluster_logits.shape == (2, 4, 25, 33)
        sums = out.head_cluster_assignments.flatten(2).sum(-1)
        torch.testing.assert_close(sums, torch.ones_like(sums))
    else:
        assert out.head_cluster_logits is None and out.head_cluster_assignments is None
    with torch.no_grad():
        plain = model(pixel_values)
    assert plain.head_cluster_logits is None and plain.cluster_assignments is None
    torch.testing.assert_close(plain.logits, out.logits)


@pytest.mark.parametrize("head", HEADS)
def test_loss_is_decode_plus_weighted_auxiliary(head):
    torch.manual_seed(0)
    model = PaCaViTForSemanticSegmentation(seg_config(head, decode_head_dropout=0.0)).eval()
    pixel_values = torch.randn(2, 3, 64, 80)
    labels = torch.randint(0, 4, (2, 64, 80))
    labels[:, :5] = 255  # ignored
    with torch.no_grad():
        out = model(pixel_values, labels=labels)
    assert out.decode_loss is not None and out.auxiliary_loss is not None
    torch.testing.assert_close(out.loss, out.decode_loss + 0.4 * out.auxiliary_loss)
    # the decode loss is the cross-entropy of the logits upsampled to the labels, ignoring 255
    upsampled = torch.nn.functional.interpolate(out.logits, size=(64, 80), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out.decode_loss, torch.nn.functional.cross_entropy(upsampled, labels, ignore_index=255))
    if head == "upernet":  # FCN head on stage 3: stride 16
        assert out.auxiliary_logits.shape == (2, 4, 4, 5)
    model.config.auxiliary_loss_weight = 1.5
    with torch.no_grad():
        again = model(pixel_values, labels=labels)
    torch.testing.assert_close(again.loss, out.decode_loss + 1.5 * out.auxiliary_loss)
    # both losses reach the parameters they should
    model.train()
    model(pixel_values, labels=labels).loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("decode_head.") for n in grads)
    if head == "upernet":
        assert any(n.startswith("auxiliary_head.") for n in grads)
    else:
        assert "decode_head.cluster_logits.weight" in grads


def test_bad_labels_give_clear_errors():
    model = PaCaViTForSemanticSegmentation(seg_config()).eval()
    pixel_values = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\] or 255.*\[7\]"):
        model(pixel_values, labels=torch.full((1, 32, 32), 7))
    with pytest.raises(ValueError, match="shape \\(batch=1, height, width\\)"):
        model(pixel_values, labels=torch.zeros(2, 32, 32, dtype=torch.long))
    with pytest.raises(TypeError, match="integer tensor"):
        model(pixel_values, labels=torch.zeros(1, 32, 32))


# ---------------------------------------------------------------------------------------------- all-ignored batches
@pytest.mark.parametrize(
    "head, auxiliary",
    [("paca", True), ("upernet", True), ("upernet", False)],
    ids=["paca", "upernet", "upernet-no-aux"],
)
def test_batch_without_labelled_pixels_gives_zero_loss_zero_gradients_in_the_graph(head, auxiliary):
    torch.manual_seed(0)
    model = PaCaViTForSemanticSegmentation(seg_config(head, use_auxiliary_head=auxiliary)).train()
    pixel_values = torch.randn(2, 3, 32, 32)
    out = model(pixel_values, labels=torch.full((2, 32, 32), 255))  # e.g. an all-"other" crop, reduced
    assert out.loss.item() == 0.0 and out.decode_loss.item() == 0.0  # not NaN: a mean over no pixel
    assert (out.auxiliary_loss is not None) == (head == "paca" or auxiliary)
    assert out.loss.grad_fn is not None  # still in the graph: DDP and accumulation see every parameter
    out.loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.count_nonzero(g) == 0 for g in grads.values())
    # a labelled batch after it trains normally (accumulated on top of the zeros)
    labels = torch.randint(0, 4, (2, 32, 32))
    mixed = model(pixel_values, labels=torch.where(torch.arange(2)[:, None, None] == 0, labels, 255))
    assert torch.isfinite(mixed.loss) and mixed.loss > 0
    mixed.loss.backward()
    assert any(torch.count_nonzero(p.grad) for n, p in model.named_parameters() if n.startswith("decode_head."))


def test_batch_norm_train_and_eval_behaviour():
    model = PaCaViTForSemanticSegmentation(seg_config("paca", decode_head_dropout=0.0))
    batch = torch.randn(3, 3, 48, 48)
    bn = model.decode_head.key.batch_norm
    before = bn.running_mean.clone()
    model.train()
    with torch.no_grad():
        train_first = model(batch).logits[:1]
        train_alone = model(batch[:1]).logits
    assert not torch.equal(bn.running_mean, before)  # training updates the running statistics
    assert not torch.allclose(train_first, train_alone, atol=1e-5)  # and normalises with batch statistics
    model.eval()
    frozen = bn.running_mean.clone()
    with torch.no_grad():
        eval_first = model(batch).logits[:1]
        eval_alone = model(batch[:1]).logits
    assert torch.equal(bn.running_mean, frozen)
    torch.testing.assert_close(eval_first, eval_alone, atol=1e-5, rtol=1e-4)  # per-sample in eval mode


def test_save_load_round_trip_and_auto_class(tmp_path):
    model = PaCaViTForSemanticSegmentation(seg_config("upernet")).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["auto_map"]["AutoModelForSemanticSegmentation"].startswith("modeling_pacavit_segmentation.")
    assert (tmp_path / "modeling_pacavit_segmentation.py").exists() and (tmp_path / "modeling_pacavit.py").exists()
    loaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert type(loaded) is PaCaViTForSemanticSegmentation and loaded.config.decode_head_type == "upernet"
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits)


def test_transformers_upernet_with_pacavit_backbone(tmp_path):
    backbone = PaCaViTConfig(**TINY, num_clusters=[8, 8, 8, 0], out_features=["stage1", "stage2", "stage3", "stage4"])
    config = UperNetConfig(
        backbone_config=backbone, hidden_size=16, auxiliary_channels=8, num_labels=3, use_auxiliary_head=True
    )
    model = UperNetForSemanticSegmentation(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pixel_values, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    out = model(pixel_values, labels=labels)
    assert out.logits.shape == (2, 3, 64, 64)
    out.loss.backward()
    before = model.backbone.pacavit.embeddings.projection[0].weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, model.backbone.pacavit.embeddings.projection[0].weight)  # the backbone trains
    model.eval().save_pretrained(tmp_path)
    loaded = UperNetForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert loaded.config.backbone_config.model_type == "pacavit"
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).logits, model(pixel_values).logits)


def _scene_image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8))


def _save_with_processor(model, folder):
    model.save_pretrained(folder)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)


@pytest.mark.parametrize("head", HEADS)
def test_pipeline_returns_one_mask_per_present_class(tmp_path, head):
    from transformers import pipeline

    torch.manual_seed(1)
    model = PaCaViTForSemanticSegmentation(seg_config(head)).eval()
    _save_with_processor(model, tmp_path)
    segmenter = pipeline("image-segmentation", model=str(tmp_path))
    image = _scene_image()
    results = segmenter(image)
    # what the model predicts at the image's resolution, through the processor's own post-processing
    processor = SegformerImageProcessor.from_pretrained(tmp_path)
    with torch.no_grad():
        outputs = model(**processor(image, return_tensors="pt"))
    prediction = processor.post_process_semantic_segmentation(outputs, target_sizes=[(50, 70)])[0]
    present = sorted(prediction.unique().tolist())
    assert [r["label"] for r in results] == [model.config.id2label[i] for i in present]
    for r, class_id in zip(results, present):
        assert r["mask"].size == (70, 50)
        assert np.array_equal(np.array(r["mask"]) > 0, (prediction == class_id).numpy())


def test_remote_code_without_our_package(tmp_path):
    """The saved folder loads (both heads) and runs in the pipeline in a fresh process that cannot import pacavit."""
    for head in HEADS:
        torch.manual_seed(2)
        model = PaCaViTForSemanticSegmentation(seg_config(head)).eval()
        _save_with_processor(model, tmp_path / head)
        with torch.no_grad():
            expected = model(torch.ones(1, 3, 64, 64)).logits
        torch.save(expected, tmp_path / head / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["pacavit"] = None  # any `import pacavit` now fails
        import torch
        from PIL import Image
        from transformers import AutoModelForSemanticSegmentation, pipeline
        for head in {HEADS!r}:
            folder = {str(tmp_path)!r} + "/" + head
            model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
            assert model.__class__.__module__.startswith("transformers_modules"), model.__class__.__module__
            with torch.no_grad():
                logits = model(torch.ones(1, 3, 64, 64)).logits
            torch.testing.assert_close(logits, torch.load(folder + "/expected.pt", weights_only=True))
            result = pipeline("image-segmentation", model=folder, trust_remote_code=True)(Image.new("RGB", (40, 30)))
            assert result and all(r["mask"].size == (40, 30) for r in result), result
        assert not any(name == "pacavit" or name.startswith("pacavit.") for name in sys.modules if sys.modules[name])
        print("remote ok")
        """
    )
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", PYTHONPATH="")
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "remote ok" in result.stdout, result.stderr[-3000:]


def test_from_pretrained_backbone_reinitialises_only_changed_cluster_layers(tmp_path, caplog):
    torch.manual_seed(3)
    imagenet = PaCaViTForImageClassification(PaCaViTConfig(**TINY, num_clusters=[8, 8, 8, 0], num_labels=10))
    imagenet.save_pretrained(tmp_path)
    model = PaCaViTForSemanticSegmentation.from_pretrained_backbone(
        tmp_path, num_labels=5, num_clusters=[12, 8, 12, 0], decode_head_type="paca", decode_head_hidden_size=16
    )
    assert model.config.num_clusters == [12, 8, 12, 0] and model.config.num_labels == 5
    assert model.reinitialized_backbone_keys == [
        "pacavit.stages.0.layers.0.attention.clustering.to_clusters.weight",
        "pacavit.stages.2.layers.0.attention.clustering.to_clusters.weight",
    ]
    assert model.pacavit.stages[0].layers[0].attention.clustering.to_clusters.weight.shape == (12, 16)
    source, target = imagenet.state_dict(), model.state_dict()
    for key, value in source.items():
        if key.startswith("pacavit.") and key not in model.reinitialized_backbone_keys:
            assert torch.equal(target[key], value), key
    # a change beyond the cluster counts is an error, not a silent re-initialisation
    with pytest.raises(ValueError, match="beyond the cluster counts"):
        PaCaViTForSemanticSegmentation.from_pretrained_backbone(tmp_path, num_labels=5, mlp_ratios=[2, 2, 2, 2])


class _PerPixelModel(torch.nn.Module):
    """Logits equal to the input at full resolution, so slide inference must give the input back exactly."""

    def __init__(self):
        super().__init__()
        self.windows = []

    def forward(self, pixel_values):
        self.windows.append(tuple(pixel_values.shape[-2:]))
        return SimpleNamespace(logits=pixel_values * 1.0)


def test_slide_inference_covers_every_pixel_once_averaged_on_mmseg_grid():
    model = _PerPixelModel()
    pixel_values = torch.randn(2, 3, 50, 37)
    out = slide_inference(model, pixel_values, crop_size=16, stride=10)
    torch.testing.assert_close(out, pixel_values)  # every window's value, averaged over overlaps
    # mmseg's grid: ceil((H - crop) / stride) + 1 rows, the last window flush with the border, all full crops
    assert len(model.windows) == 5 * 4 and set(model.windows) == {(16, 16)}
    model.windows.clear()
    slide_inference(model, torch.randn(1, 3, 12, 40), crop_size=16)  # default stride 2/3 of the crop (10)
    assert model.windows == [(12, 16)] * 4  # a side shorter than the crop is one window of that side


@pytest.mark.parametrize("head", HEADS)
def test_slide_inference_with_one_window_is_the_upsampled_whole_image(head):
    model = PaCaViTForSemanticSegmentation(seg_config(head)).eval()
    pixel_values = torch.randn(1, 3, 40, 52)
    with torch.no_grad():
        whole = torch.nn.functional.interpolate(model(pixel_values).logits, size=(40, 52), mode="bilinear")
        slid = slide_inference(model, pixel_values, crop_size=64)
    torch.testing.assert_close(slid, whole)

"""Adapters, hooks and quantized layers see every call of the modules they wrap: PEFT LoRA is exact (adapted logits
equal the merged model's) on every layer family and model class, forward hooks count every call, dynamic int8
quantization of the Linear layers runs and stays close to fp32, and the LoRA snippet of docs/models.md runs."""

import copy
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import pacavit.modeling_pacavit as modeling
from pacavit import (
    PaCaViTForImageClassification,
    PaCaViTForSemanticSegmentation,
    PaCaViTSegmentationConfig,
)

from helpers import REPO_ROOT, TINY, tiny_config, tiny_maskrcnn

peft = pytest.importorskip("peft")

# a stage-wise, a block-wise, a teacher and a linear-clustering variant (plus the MLP clustering); every one keeps a
# self-attention last stage (num_clusters 0), where q/k/v share one fused matmul in the plain case
VARIANTS = {
    "stagewise": dict(num_clusters=[8, 8, 8, 0], depths=[1, 1, 2, 1]),
    "blockwise": dict(num_clusters=[8, 8, 8, 0], depths=[1, 2, 2, 1], clustering_schedule=[1, 1, 1, 1]),
    "teacher": dict(use_clustering_teacher=True, num_clusters=[8, 8, 8, 0], teacher_depths=[1, 1, 1, 1]),
    "linear-clustering": dict(clustering_type="linear", num_clusters=[8, 8, 8, 0]),
    "mlp-clustering": dict(clustering_type="mlp", num_clusters=[8, 8, 8, 0]),
}

# one regex per layer family (PEFT matches a string target_modules with re.fullmatch on the module name). The
# convolutions are those PEFT's LoRA can merge: nn.Conv2d with groups=1. Depth-wise convs (mlp.dwconv,
# clustering.dwconv, the teacher's depthwise) take LoRA only with a rank divisible by the groups and PEFT 0.21 cannot
# merge them ("Merging is not supported for _ConvNd layers with groups > 1"); that those are called, not unpacked, is
# shown by the hook and fast-path tests below.
FAMILIES = {
    "query": r".*attention\.query",
    "key_value": r".*attention\.key_value",
    "dense": r".*attention\.dense",
    "fc1": r".*mlp\.fc1",
    "fc2": r".*mlp\.fc2",
    "to_clusters": r".*clustering\.to_clusters",
    "clustering-pwconv-fc": r".*clustering\.(pwconv|fc)",
    "stem-and-downsample-convs": r".*(embeddings\.projection\.\d|downsample\.projection)",
    "teacher-convs": r".*clustering_teacher\..*(pointwise|conv|to_clusters\.\d)",
}


def build(variant: str) -> PaCaViTForImageClassification:
    return PaCaViTForImageClassification(tiny_config(**VARIANTS[variant])).eval()


def lora(model: nn.Module, target_modules: str, r: int = 4) -> nn.Module:
    """The model with clearly non-zero LoRA adapters (init_lora_weights=False draws B at random too; B is scaled up so
    that the adapters move the tiny model's logits well beyond float precision)."""
    config = peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=target_modules, init_lora_weights=False)
    model = peft.get_peft_model(model, config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(30)
    return model


def matched(model: nn.Module, pattern: str) -> int:
    return sum(1 for name, _ in model.named_modules() if re.fullmatch(pattern, name))


def assert_lora_exact(model: nn.Module, run, pattern: str, base: torch.Tensor | None = None, atol=1e-5) -> None:
    """`run(model)` -> tensor: the adapted model agrees with itself after merge_and_unload, and the adapters do
    change the output (so the comparison could fail). `model` is modified (wrapped, then merged)."""
    with torch.no_grad():
        base = run(model) if base is None else base
        adapted_model = lora(model, pattern)
        adapted = run(adapted_model)
        merged = run(adapted_model.merge_and_unload())
    # at least 100 x the tolerance (the tiny random models' logits are ~0.1)
    assert (adapted - base).abs().max() > 100 * atol, "the adapters do not change the output: the test proves nothing"
    # float32 rounding grows with the values (the detector's FPN maps reach ~100 with strong adapters)
    torch.testing.assert_close(adapted, merged, atol=atol * max(1.0, adapted.abs().max().item()), rtol=1e-5)


PIXELS = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("variant", VARIANTS)
def test_lora_on_each_layer_family_equals_the_merged_model(variant):
    model = build(variant)
    with torch.no_grad():
        base = model(PIXELS).logits
    families = [family for family, pattern in FAMILIES.items() if matched(model, pattern)]
    assert {"query", "key_value", "dense", "fc1", "fc2"} <= set(families)
    for family in families:
        try:
            assert_lora_exact(copy.deepcopy(model), lambda m: m(PIXELS).logits, FAMILIES[family], base)
        except AssertionError as error:
            raise AssertionError(f"LoRA on {family} ({variant}): {error}") from None


@pytest.mark.parametrize("variant", ["stagewise", "teacher"])
def test_lora_is_exact_in_cpu_inference_slices_and_image_groups(variant, monkeypatch):
    """With tiny thresholds, CPU inference runs images in groups and the MLP in hidden-channel slices; adapters on
    fc1/fc2 and q/k/v must still see every call (the merged model takes the fast paths)."""
    monkeypatch.setattr(modeling, "CPU_INFERENCE_SLICE_BYTES", 4096)
    monkeypatch.setattr(modeling, "CPU_INFERENCE_GROUP_BYTES", 4096)
    pattern = r".*(mlp\.(fc1|fc2)|attention\.(query|key_value))"
    assert_lora_exact(build(variant), lambda m: m(PIXELS).logits, pattern)


def test_lora_on_the_semantic_segmentation_model():
    config = PaCaViTSegmentationConfig(
        **TINY, num_clusters=[8, 8, 8, 0], num_labels=3, decode_head_hidden_size=16, auxiliary_hidden_size=8
    )
    model = PaCaViTForSemanticSegmentation(config).eval()
    pattern = r"pacavit\..*\.(query|key_value|dense|fc1|fc2|to_clusters|pwconv)"
    assert_lora_exact(model, lambda m: m(PIXELS).logits, pattern)


def test_lora_on_the_mask_rcnn_model():
    model = tiny_maskrcnn(box_score_threshold=0.0).eval()
    # the layers a fast path reads (all families at once, with strong random adapters, amplify float rounding
    # beyond any fixed tolerance in this deep net; each family alone agrees to ~1e-6 of the map values)
    pattern = r"detector\.backbone\.body\..*\.(query|key_value|fc1|to_clusters)"

    def features(m):  # the FPN maps (detections after NMS/top-k would reorder on near-ties)
        detector = m.detector if hasattr(m, "detector") else m.base_model.model.detector
        return torch.cat([level.flatten() for level in detector.backbone(PIXELS).values()])

    assert_lora_exact(model, features, pattern)
    # and the whole detector runs with the adapters
    with torch.no_grad():
        detections = lora(tiny_maskrcnn(box_score_threshold=0.0).eval(), pattern)(PIXELS).detections
    assert len(detections) == 2 and detections[0]["boxes"].shape[-1] == 4


@pytest.mark.parametrize("hook_kind", ["module", "global"])
@pytest.mark.parametrize("variant", ["stagewise", "linear-clustering"])
def test_forward_hooks_see_every_call(variant, hook_kind, monkeypatch):
    monkeypatch.setattr(modeling, "CPU_INFERENCE_SLICE_BYTES", 4096)  # the MLP slices would apply
    model = build(variant)
    watched = {
        name: module
        for name, module in model.named_modules()
        if name.endswith(("attention.query", "attention.key_value", "mlp.fc1", "mlp.dwconv", "clustering.to_clusters"))
    }
    calls = dict.fromkeys(watched.values(), 0)

    def count(module, args, output):
        if module in calls:
            calls[module] += 1

    if hook_kind == "module":
        handles = [module.register_forward_hook(count) for module in watched.values()]
    else:
        handles = [nn.modules.module.register_module_forward_hook(count)]
    try:
        with torch.no_grad():
            model(PIXELS)
    finally:
        for handle in handles:
            handle.remove()
    blocks = sum(model.config.depths)
    clustering_blocks = sum(
        model.config.computes_clusters(stage, block)
        for stage, depth in enumerate(model.config.depths)
        for block in range(depth)
    )
    by_kind = {}
    for name, module in watched.items():
        kind = name.rsplit(".", 1)[-1]
        by_kind[kind] = by_kind.get(kind, 0) + calls[module]
    assert by_kind == {
        "query": blocks,
        "key_value": blocks,
        "fc1": blocks,
        "dwconv": blocks,
        "to_clusters": clustering_blocks,
    }


def test_fast_paths_equal_the_module_calls(monkeypatch):
    """The plain model's fused q/k/v matmul, MLP slices and folded depth-wise shortcut give what calling the modules
    gives (a no-op hook on every Linear/Conv2d forces the module calls)."""
    monkeypatch.setattr(modeling, "CPU_INFERENCE_SLICE_BYTES", 4096)
    model = build("stagewise")
    with torch.no_grad():
        fast = model(PIXELS).logits
        handle = nn.modules.module.register_module_forward_pre_hook(lambda module, args: None)
        try:
            called = model(PIXELS).logits
        finally:
            handle.remove()
    torch.testing.assert_close(fast, called, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- quantization
def _quantization_inputs():
    return torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(2))


def _assert_close_to_fp32(reference: torch.Tensor, quantized: torch.Tensor) -> None:
    # int8 weights (per tensor or per channel) with dynamically quantized int8 activations: each Linear is off by
    # ~1 % of its output's scale, and ~20 of them run in series here, so a few % of the logits' norm is the expected
    # error; a model that silently skipped or broke a layer is off by O(100 %).
    relative = (quantized - reference).norm() / reference.norm()
    assert relative < 0.1, f"int8 logits are {relative:.1%} off the fp32 logits"
    cosine = nn.functional.cosine_similarity(quantized, reference, dim=-1)
    assert cosine.min() > 0.99


def _logits_spread_model(variant: str) -> PaCaViTForImageClassification:
    model = build(variant)
    with torch.no_grad():  # a random model's logits are nearly equal; spread them so that the comparison has teeth
        model.classifier.weight.mul_(20)
    return model


@pytest.mark.parametrize("variant", ["stagewise", "teacher", "linear-clustering"])
def test_dynamic_int8_quantization_with_torch_ao(variant):
    # torch.ao.quantization.quantize_dynamic swaps every nn.Linear for a dynamically quantized Linear (a different
    # module type, so the fast paths that read `.weight` must step aside and call it)
    model = _logits_spread_model(variant)
    pixel_values = _quantization_inputs()
    with torch.no_grad():
        reference = model(pixel_values).logits
        quantized_model = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        assert type(quantized_model.pacavit.stages[3].layers[0].attention.query) is not nn.Linear
        quantized = quantized_model(pixel_values).logits
    _assert_close_to_fp32(reference, quantized)
    assert (quantized - reference).abs().max() > 0  # the int8 layers did run


@pytest.mark.parametrize("variant", ["stagewise", "linear-clustering"])
def test_dynamic_int8_quantization_with_torchao(variant):
    # torchao's quantize_ keeps nn.Linear modules but swaps their weights for quantized tensor subclasses: the fast
    # paths must not concatenate or matmul those weights themselves
    quantization = pytest.importorskip("torchao.quantization")
    model = _logits_spread_model(variant)
    pixel_values = _quantization_inputs()
    with torch.no_grad():
        reference = model(pixel_values).logits
        quantization.quantize_(model, quantization.Int8DynamicActivationInt8WeightConfig())
        weight = model.pacavit.stages[3].layers[0].attention.query.weight
        assert type(weight) not in (torch.Tensor, nn.Parameter)
        quantized = model(pixel_values).logits
    _assert_close_to_fp32(reference, quantized)
    assert (quantized - reference).abs().max() > 0


# ---------------------------------------------------------------------------------------------- docs snippet
def _docs_snippet(marker: str) -> str:
    text = Path(REPO_ROOT, "docs", "models.md").read_text()
    match = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"docs/models.md has no python block after <!-- {marker} -->"
    return match.group(1)


def test_docs_lora_fine_tuning_snippet_runs(tmp_path):
    PaCaViTForImageClassification(tiny_config(num_clusters=[8, 8, 8, 0], num_labels=3)).save_pretrained(
        tmp_path / "base"
    )
    generator = torch.Generator().manual_seed(3)
    batches = [(torch.randn(2, 3, 32, 32, generator=generator), torch.randint(0, 3, (2,), generator=generator))] * 2
    namespace = {"model_dir": str(tmp_path / "base"), "train_batches": batches, "output_dir": str(tmp_path / "out")}
    exec(compile(_docs_snippet("lora-snippet"), "docs/models.md", "exec"), namespace)

    merged = PaCaViTForImageClassification.from_pretrained(tmp_path / "out").eval()
    base = PaCaViTForImageClassification.from_pretrained(tmp_path / "base").eval()
    adapted = namespace["model"].eval()  # the PEFT model the snippet trained
    with torch.no_grad():
        expected = adapted(PIXELS).logits
        assert (expected - base(PIXELS).logits).abs().max() > 1e-4  # training moved the adapters (and the head)
        torch.testing.assert_close(merged(PIXELS).logits, expected, atol=1e-5, rtol=1e-5)
    # the saved folder is a plain pacavit model: no adapter modules left
    assert not any("lora" in name for name, _ in merged.named_parameters())

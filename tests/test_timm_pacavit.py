"""PaCa-ViT through timm: registration on `import pacavit`, the timm API, and the same logits as transformers."""

from __future__ import annotations

import pytest
import timm
import torch

import pacavit  # noqa: F401  (registers the timm entry points)
from pacavit import PaCaViTConfig, PaCaViTForImageClassification, list_presets
from pacavit.timm_pacavit import PaCaViT, checkpoint_filter_fn, timm_name

from helpers import TINY


def _pair(preset="pacavit-tiny", **overrides):
    values = dict(TINY, **overrides)
    hf = PaCaViTForImageClassification(PaCaViTConfig.from_preset(preset, num_labels=7, **values)).eval()
    tm = timm.create_model(timm_name(preset), pretrained=False, num_classes=7, **values).eval()
    return hf, tm


def test_every_preset_is_registered_with_a_pretrained_cfg():
    names = timm.list_models("pacavit_*")
    assert sorted(names) == sorted(timm_name(p) for p in list_presets())
    cfg = timm.models.get_pretrained_cfg("pacavit_small_clusters_2_2_2_0")
    assert cfg.hf_hub_id == "ivmcl/pacavit-small-clusters-2-2-2-0" and cfg.classifier == "head"
    assert cfg.interpolation == "bicubic" and cfg.crop_pct == 0.9


@pytest.mark.parametrize("preset", ["pacavit-tiny", "pacavit-tiny-teacher", "pacavit-small-mlp"])
def test_same_weights_same_logits(preset):
    hf, tm = _pair(preset)
    missing_unexpected = tm.load_state_dict(checkpoint_filter_fn(hf.state_dict(), tm), strict=True)
    assert not missing_unexpected.missing_keys and not missing_unexpected.unexpected_keys
    x = torch.randn(2, 3, 72, 88)
    with torch.no_grad():
        torch.testing.assert_close(tm(x), hf(x).logits, rtol=0, atol=0)
        features = tm.forward_features(x)
        assert features.shape == (2, TINY["hidden_sizes"][-1], 3, 3)
        torch.testing.assert_close(tm.forward_head(features, pre_logits=True), hf.pacavit(x).pooler_output)


def test_original_timm_checkpoint_loads_and_matches_the_original_outputs(reference):
    """The parity fixture is a checkpoint written by the original (timm) code, with its outputs."""
    import json

    from safetensors.torch import load_file

    from pacavit.convert import config_from_original

    fixture = json.loads((reference / "conv_stagewise.json").read_text())
    config = config_from_original(fixture)
    tm = timm.create_model(
        "pacavit_tiny",
        pretrained=True,  # timm's own loading path, from a local file through checkpoint_filter_fn
        pretrained_cfg_overlay=dict(file=str(reference / "conv_stagewise.pth"), num_classes=config.num_labels),
        num_classes=config.num_labels,
        config=config,
    ).eval()
    tensors = load_file(reference / "conv_stagewise.safetensors")
    with torch.no_grad():
        logits = tm(tensors["pixel_values"])
    torch.testing.assert_close(logits, tensors["logits"], **fixture["tolerance"])


def test_checkpoint_filter_accepts_base_model_keys():
    hf, tm = _pair()
    # PaCaViTModel.save_pretrained keys carry no prefix; the classifier then keeps its initialisation
    result = tm.load_state_dict(checkpoint_filter_fn(hf.pacavit.state_dict(), tm), strict=False)
    assert result.missing_keys == ["head.weight", "head.bias"] and not result.unexpected_keys


def test_features_only_and_intermediates():
    values = dict(TINY)
    features = timm.create_model("pacavit_tiny", features_only=True, out_indices=(1, 3), **values).eval()
    x = torch.randn(1, 3, 64, 96)
    maps = features(x)
    assert [tuple(m.shape) for m in maps] == [(1, 32, 8, 12), (1, 64, 2, 3)]
    assert features.feature_info.channels() == [32, 64] and features.feature_info.reduction() == [8, 32]
    _, tm = _pair()
    final, intermediates = tm.forward_intermediates(x)
    assert len(intermediates) == 4 and torch.equal(final, intermediates[-1])
    tm.prune_intermediate_layers((0, 1))
    assert len(tm.pacavit.stages) == 2 and isinstance(tm.head, torch.nn.Identity)


def test_timm_api_helpers():
    _, tm = _pair()
    assert isinstance(tm, PaCaViT) and tm.get_classifier().out_features == 7
    tm.reset_classifier(3)
    assert tm(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    from timm.optim import param_groups_layer_decay

    groups = param_groups_layer_decay(tm, layer_decay=0.75)
    assert len(groups) > 2
    assert all(n.startswith("pacavit.") for n in tm.no_weight_decay())
    tm.set_grad_checkpointing(True)
    assert tm.pacavit.is_activation_checkpointing


def test_pretrained_from_an_installed_hub_export(tmp_path, monkeypatch):
    """`pretrained=True` downloads `model.safetensors` of the Hub id (here from an offline cache laid out by
    `pacavit.hub install`) and loads our transformers keys through checkpoint_filter_fn."""
    from huggingface_hub import constants

    from pacavit.hub import export_folder, install_to_cache

    hf, _ = _pair()
    hf.save_pretrained(tmp_path / "src")
    install_to_cache(
        export_folder(tmp_path / "src", tmp_path / "export"), "ivmcl/test-tiny", cache_dir=tmp_path / "hub"
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    overlay = dict(hf_hub_id="ivmcl/test-tiny", num_classes=7)
    # the cfg's num_classes must match the weights, else timm (by design) drops the head and re-initialises it
    tm = timm.create_model(
        "pacavit_tiny",
        pretrained=True,
        num_classes=7,
        pretrained_cfg_overlay=overlay,
        **TINY,
    ).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(tm(x), hf(x).logits, rtol=0, atol=0)
    # as timm's test_model_load_pretrained: other in_chans adapt `first_conv`, another num_classes drops the head
    gray = timm.create_model(
        "pacavit_tiny", pretrained=True, in_chans=1, num_classes=5, pretrained_cfg_overlay=overlay, **TINY
    ).eval()
    first_conv = gray.get_submodule(gray.pretrained_cfg["first_conv"])
    torch.testing.assert_close(
        first_conv.weight, hf.state_dict()[f"{gray.pretrained_cfg['first_conv']}.weight"].sum(1, keepdim=True)
    )
    assert gray(torch.randn(1, 1, 64, 64)).shape == (1, 5)


def test_unknown_arguments_raise_as_in_timm():
    """timm raises TypeError for an argument the model does not take; a typo is not silently ignored."""
    with pytest.raises(TypeError, match="not_a_model_arg"):
        timm.create_model("pacavit_tiny", not_a_model_arg=1, **TINY)
    with pytest.raises(TypeError, match="Did you mean 'drop_path_rate'"):
        timm.create_model("pacavit_tiny", drop_path_rat=0.3, **TINY)
    model = timm.create_model("pacavit_tiny", drop_path_rate=0.3, num_clusters=[8, 8, 8, 0], in_chans=1, **TINY)
    assert model.config.drop_path_rate == 0.3 and model.config.num_clusters == [8, 8, 8, 0]
    assert model.in_chans == 1 == model.config.num_channels


def test_factory_device_dtype_and_reset_classifier_follow_the_model():
    model = timm.create_model("pacavit_tiny_teacher", device="meta", dtype=torch.bfloat16, **TINY)
    assert {(t.device.type, t.dtype) for t in model.parameters()} == {("meta", torch.bfloat16)}
    assert all(t.device.type == "meta" for t in model.buffers()) and model.config.dtype == torch.bfloat16
    model.to(dtype=torch.float64).eval()
    model.reset_classifier(3)
    assert (model.head.weight.device.type, model.head.weight.dtype, model.head.training) == (
        "meta",
        torch.float64,
        False,
    )


@pytest.mark.parametrize("indices", [(0, 1, 2), (0,)])
def test_pruned_teacher_model_uses_every_parameter(indices):
    """features_only prunes the stages after the last index: the teacher's cluster heads of those stages go too, so
    that every parameter gets a gradient (DDP without find_unused_parameters)."""
    model = timm.create_model("pacavit_tiny_teacher", features_only=True, out_indices=indices, **TINY).train()
    sum(f.sum() for f in model(torch.randn(2, 3, 64, 64))).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    # the kept stages see the same teacher assignments as in the unpruned model
    full = timm.create_model("pacavit_tiny_teacher", **TINY).eval()
    pruned = timm.create_model("pacavit_tiny_teacher", **TINY).eval()
    pruned.load_state_dict(full.state_dict())
    pruned.prune_intermediate_layers(indices)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = full.forward_intermediates(x, indices=list(indices), intermediates_only=True)
        for got, want in zip(
            pruned.forward_intermediates(x, indices=list(indices), intermediates_only=True), expected
        ):
            torch.testing.assert_close(got, want)


def test_torchvision_fx_feature_extraction():
    """torchvision's `create_feature_extractor` (torch.fx) traces the timm model; its output equals eager."""
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    model = timm.create_model(
        "pacavit_tiny", hidden_sizes=[16, 32, 48, 64], num_attention_heads=[1, 1, 2, 2], depths=[1, 1, 1, 1],
        num_clusters=[8, 8, 8, 0],
    ).eval()  # fmt: skip
    last = get_graph_node_names(model)[1][-1]
    extractor = create_feature_extractor(model, return_nodes={last: "logits"})
    pixel_values = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        torch.testing.assert_close(extractor(pixel_values)["logits"], model(pixel_values))

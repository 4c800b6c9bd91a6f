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
    # the cfg's num_classes must match the weights, else timm (by design) drops the head and re-initialises it
    tm = timm.create_model(
        "pacavit_tiny",
        pretrained=True,
        num_classes=7,
        pretrained_cfg_overlay=dict(hf_hub_id="ivmcl/test-tiny", num_classes=7),
        **TINY,
    ).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(tm(x), hf(x).logits, rtol=0, atol=0)

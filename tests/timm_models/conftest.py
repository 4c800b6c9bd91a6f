"""Collection rules for timm's own model tests (`test_timm_models.py`, run by `run.sh`): only the cases of the
`pacavit_*` models are kept; their TorchScript cases are skipped with the reason, and the pretrained-weight cases
are skipped when the Hub is offline and the weights are not in the local cache."""

from __future__ import annotations

import pytest

TORCHSCRIPT_REASON = (
    "TorchScript is not supported: torch.jit.script cannot compile a transformers PreTrainedModel (PaCaViT wraps "
    "PaCaViTModel; scripting stops at its config, `Unknown type annotation: 'PaCaViTConfig'`, and transformers "
    "models are not written for TorchScript). torch.jit.script is deprecated in torch; use torch.export / ONNX "
    "(pacavit.graph_export) or torch.compile."
)


# timm's markers (its pyproject.toml registers them; that file is not in this repository)
TIMM_MARKERS = (
    "base",
    "cfg",
    "cfg_nonstd",
    "torchscript",
    "features",
    "fxforward",
    "fxbackward",
    "backward",
    "timeout",
)


def pytest_configure(config):
    for marker in TIMM_MARKERS:
        config.addinivalue_line("markers", f"{marker}: timm test-suite marker")


def _weights_missing(model_name: str) -> str | None:
    """Why `pretrained=True` cannot load `model_name` here (offline and not cached), or None."""
    from huggingface_hub import constants, try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    if not constants.HF_HUB_OFFLINE or cfg is None or not cfg.hf_hub_id:
        return None
    if isinstance(try_to_load_from_cache(cfg.hf_hub_id, cfg.hf_hub_filename or "model.safetensors"), str):
        return None
    return (
        f"HF_HUB_OFFLINE is set and {cfg.hf_hub_id} is not in the local Hugging Face cache: run with HF_HUB_OFFLINE=0 "
        f"(network), or lay the converted weights out with `python -m pacavit.hub install`"
    )


def _model_name(item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("model_name") if callspec is not None else None


def pytest_collection_modifyitems(config, items):
    kept, dropped = [], []
    for item in items:
        name = _model_name(item)
        if item.path.parent.name != "timm_models" or name is None or not str(name).startswith("pacavit_"):
            (dropped if item.path.parent.name == "timm_models" else kept).append(item)
            continue
        if "torchscript" in item.name:
            item.add_marker(pytest.mark.skip(reason=TORCHSCRIPT_REASON))
        elif "pretrained" in item.originalname and (reason := _weights_missing(name)):
            item.add_marker(pytest.mark.skip(reason=reason))
        kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept

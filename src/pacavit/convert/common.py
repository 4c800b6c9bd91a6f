"""What every task's converter shares: the error and report types, reading a checkpoint file, separating the
backbone's keys from the heads', the strict check against the target model, and the atomic save.

This is the bottom of `pacavit.convert`: it imports nothing else of the converter.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..safe_io import atomic_directory, load_torch_checkpoint

try:
    from transformers.initialization import no_init_weights
except ImportError:  # pragma: no cover - transformers 4.x
    from transformers.modeling_utils import no_init_weights

IMAGE_CLASSIFICATION = "image-classification"
BACKBONE = "backbone"
SEMANTIC_SEGMENTATION = "semantic-segmentation"
INSTANCE_SEGMENTATION = "instance-segmentation"
TASKS = (IMAGE_CLASSIFICATION, BACKBONE, SEMANTIC_SEGMENTATION, INSTANCE_SEGMENTATION)

# Prefixes of mmseg/mmdet heads: never part of the backbone, dropped for the backbone task.
HEAD_PREFIXES = ("decode_head.", "auxiliary_head.", "neck.", "rpn_head.", "roi_head.")
BACKBONE_PREFIX = "backbone."  # mmseg/mmdet keep the backbone under it


class ConversionError(ValueError):
    """A checkpoint does not fit the requested architecture; the message names the offending keys."""


def check_supported(condition: bool, message: str, *, what: str) -> None:
    """Raise `ConversionError("Unsupported <what>: <message>")` unless `condition`."""
    if not condition:
        raise ConversionError(f"Unsupported {what}: {message}")


@dataclass
class ConversionReport:
    """How many tensors were mapped, and which source keys were dropped for which stated reason."""

    mapped: int = 0
    dropped: dict[str, list[str]] = field(default_factory=dict)  # reason -> source keys

    def drop(self, key: str, reason: str) -> None:
        self.dropped.setdefault(reason, []).append(key)

    def summary(self) -> str:
        lines = [f"mapped {self.mapped} tensors"]
        for reason, keys in self.dropped.items():
            shown = ", ".join(keys[:4]) + (" ..." if len(keys) > 4 else "")
            lines.append(f"dropped {len(keys)} ({reason}): {shown}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Reading checkpoints
# --------------------------------------------------------------------------------------------
def extract_state_dict(checkpoint, use_ema: bool = False) -> OrderedDict[str, torch.Tensor]:
    """Return the model state dict of a bare dict, `{"state_dict"}`, `{"model"}`, `{"state_dict_ema"}` or an
    mmengine checkpoint (`{"meta", "state_dict", ...}`). A leading DDP `module.` prefix is removed."""
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"Expected a dict checkpoint, got {type(checkpoint).__name__}.")
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        state_dict = checkpoint
    else:
        if use_ema:
            order = ("state_dict_ema", "model_ema", "state_dict", "model")
        else:
            order = ("state_dict", "model", "state_dict_ema")
        found = [k for k in order if isinstance(checkpoint.get(k), dict)]
        if not found:
            raise ConversionError(
                "Could not find the model weights in the checkpoint: expected a bare state dict or one of the keys "
                f"'state_dict', 'model', 'state_dict_ema'; found keys {sorted(checkpoint)[:10]}."
            )
        if use_ema and found[0] not in ("state_dict_ema", "model_ema"):
            raise ConversionError("--ema was given but the checkpoint has no 'state_dict_ema'/'model_ema' entry.")
        state_dict = checkpoint[found[0]]
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    return OrderedDict(state_dict)


def load_checkpoint_file(checkpoint: str | Path | dict):
    """The checkpoint as a dict: loaded from a file (`torch.load(weights_only=True)`; a pickle that needs code is
    refused), or returned as is when already loaded. Converters keep the whole dict (mmengine's `meta` holds the
    class names)."""
    return checkpoint if isinstance(checkpoint, dict) else load_torch_checkpoint(checkpoint)


def load_original_checkpoint(path: str | Path, use_ema: bool = False) -> OrderedDict[str, torch.Tensor]:
    """The model state dict of an original checkpoint file (see `extract_state_dict`)."""
    return extract_state_dict(load_checkpoint_file(path), use_ema=use_ema)


def split_backbone_and_heads(state_dict: dict) -> tuple[OrderedDict, OrderedDict]:
    """Separate the backbone's keys (stripping mmseg/mmdet's `backbone.`) from the heads' keys."""
    has_backbone_prefix = any(k.startswith(BACKBONE_PREFIX) for k in state_dict)
    backbone, heads = OrderedDict(), OrderedDict()
    for key, value in state_dict.items():
        if has_backbone_prefix:
            if key.startswith(BACKBONE_PREFIX):
                backbone[key[len(BACKBONE_PREFIX) :]] = value
            else:
                heads[key] = value
        elif key.startswith(HEAD_PREFIXES):
            heads[key] = value
        else:
            backbone[key] = value
    return backbone, heads


def backbone_entries(state_dict: dict) -> OrderedDict:
    """The `backbone.`-prefixed entries of an mmseg/mmdet state dict, prefix kept."""
    return OrderedDict((k, v) for k, v in state_dict.items() if k.startswith(BACKBONE_PREFIX))


# --------------------------------------------------------------------------------------------
# Strict load and atomic save
# --------------------------------------------------------------------------------------------
def check_against_model(converted: dict, model: torch.nn.Module) -> None:
    """Raise a ConversionError naming missing/unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in converted]
    unexpected = [k for k in converted if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in converted and converted[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint ({len(missing)}): {missing[:12]}")
    if unexpected:
        problems.append(f"not in the model ({len(unexpected)}): {unexpected[:12]}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {mismatched[:8]}")
    if problems:
        raise ConversionError(
            "The checkpoint does not fit the chosen architecture:\n  "
            + "\n  ".join(problems)
            + "\nPick the preset/original config the checkpoint was trained with."
        )


def save_converted_model(model_class, config, converted: dict, output_dir, image_processor=None):
    """Strictly load converted weights into a fresh `model_class(config)` and save it (with `image_processor`, if
    given) atomically: concurrent or killed conversions never leave a half-written folder. Every task's converter
    ends here; returns the model in eval mode."""
    with no_init_weights():  # every weight is overwritten by the strict load below
        model = model_class(config).eval()
    check_against_model(converted, model)
    model.load_state_dict(converted, strict=True)
    with atomic_directory(Path(output_dir)) as tmp:
        model.save_pretrained(tmp)
        if image_processor is not None:
            image_processor.save_pretrained(tmp)
    return model


__all__ = [
    "BACKBONE",
    "BACKBONE_PREFIX",
    "HEAD_PREFIXES",
    "IMAGE_CLASSIFICATION",
    "INSTANCE_SEGMENTATION",
    "SEMANTIC_SEGMENTATION",
    "TASKS",
    "ConversionError",
    "ConversionReport",
    "backbone_entries",
    "check_against_model",
    "check_supported",
    "extract_state_dict",
    "load_checkpoint_file",
    "load_original_checkpoint",
    "save_converted_model",
    "split_backbone_and_heads",
]

"""What every task's converter shares: the error and report types, reading a checkpoint file, separating the
backbone's keys from the heads', the strict check against the target model, and the atomic save.

This is the bottom of `pacavit.convert`: it imports nothing else of the converter.
"""

from __future__ import annotations

import contextlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError

from ..safe_io import OutputFolderError, atomic_directory, check_input_file, check_output_folder, load_weights_file

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
# How the output folder is named in messages (the argument `output_dir`, the CLI's --output-dir).
OUTPUT_DIR = "output folder (--output-dir)"


class ConversionError(ValueError):
    """A checkpoint does not fit the requested architecture; the message names the offending keys."""


def check_supported(condition: bool, message: str, *, what: str) -> None:
    """Raise `ConversionError("Unsupported <what>: <message>")` unless `condition`."""
    if not condition:
        raise ConversionError(f"Unsupported {what}: {message}")


@contextlib.contextmanager
def reading_original_config(what: str):
    """Turn a missing key or a value of the wrong type met while reading the original configuration dicts
    (`--original-config`) into a `ConversionError` naming it, instead of a KeyError/TypeError traceback."""
    try:
        yield
    except KeyError as error:
        raise ConversionError(
            f"The {what} lacks the key {error.args[0]!r}. Give the original model's keyword arguments, as the "
            "fixture/manifest JSON files hold them (--original-config)."
        ) from error
    except (TypeError, AttributeError, IndexError, ZeroDivisionError) as error:
        raise ConversionError(
            f"The {what} has a value of the wrong type ({error}). Give the original model's keyword arguments, as "
            "the fixture/manifest JSON files hold them (--original-config)."
        ) from error


def load_original_config(path: str | Path) -> dict:
    """The JSON object of an `--original-config` file; `ConversionError` naming the file when it is missing, not
    JSON or not an object."""
    path = Path(path)
    if not path.is_file():
        state = "is a folder" if path.is_dir() else "does not exist"
        raise ConversionError(f"--original-config {path} {state}: pass a JSON file of the original constructor.")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConversionError(
            f"--original-config {path} is not valid JSON ({error}): pass a JSON file of the original constructor "
            "(the fixture/manifest form, or the bare keyword arguments)."
        ) from error
    if not isinstance(value, dict):
        raise ConversionError(
            f"--original-config {path} holds a JSON {type(value).__name__}, not an object of the original "
            "constructor's keyword arguments."
        )
    return value


def check_output_dir(output_dir: str | Path, *inputs) -> Path:
    """Check before converting that `output_dir` can be written (`pacavit.safe_io.check_output_folder`) and holds
    none of the input files (`inputs`: paths, others are skipped): replacing the folder would delete them."""
    final = check_output_folder(output_dir, OUTPUT_DIR)
    for source in inputs:
        if isinstance(source, (str, Path)) and Path(source).resolve().is_relative_to(final.resolve()):
            raise OutputFolderError(
                f"The {OUTPUT_DIR} {final} holds the input {source}: the conversion replaces that folder, which "
                "would delete it. Choose another output folder."
            )
    return final


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
def extract_state_dict(checkpoint, use_ema: bool = False, source=None) -> OrderedDict[str, torch.Tensor]:
    """Return the model state dict of a bare dict, `{"state_dict"}`, `{"model"}`, `{"state_dict_ema"}` or an
    mmengine checkpoint (`{"meta", "state_dict", ...}`). A leading DDP `module.` prefix is removed. Entries that
    are not tensors are an error naming them; `source` (the file) is named in the messages."""
    where = f"{source}: " if source is not None else ""
    if not isinstance(checkpoint, dict):
        raise ConversionError(
            f"{where}Expected a dict checkpoint (a state dict of tensors, or {{'state_dict': ...}}), got "
            f"{type(checkpoint).__name__}. Save the model's state dict: torch.save(model.state_dict(), path)."
        )
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
                f"{where}Could not find the model weights in the checkpoint: expected a bare state dict or one of "
                f"the keys 'state_dict', 'model', 'state_dict_ema'; found keys {sorted(checkpoint)[:10]}."
            )
        if use_ema and found[0] not in ("state_dict_ema", "model_ema"):
            raise ConversionError(
                f"{where}--ema was given but the checkpoint has no 'state_dict_ema'/'model_ema' entry."
            )
        state_dict = checkpoint[found[0]]
    if not state_dict:
        raise ConversionError(f"{where}The checkpoint's state dict is empty: it holds no weights.")
    foreign = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if foreign:
        raise ConversionError(
            f"{where}{len(foreign)} entries of the state dict are not tensors: {foreign[:8]}"
            f"{' ...' if len(foreign) > 8 else ''}. A model checkpoint maps parameter names to tensors."
        )
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    return OrderedDict(state_dict)


def load_checkpoint_file(checkpoint: str | Path | dict):
    """The checkpoint as a dict: loaded from a file, or returned as is when already loaded. Converters keep the
    whole dict (mmengine's `meta` holds the class names).

    A `.pth` is read with `torch.load(weights_only=True)` (a pickle that needs code is refused:
    `UnsafeCheckpointError`); a safetensors file (by its content) with `safetensors`. A missing, empty, truncated
    or foreign file raises `pacavit.safe_io.CheckpointFileError` naming it, and one that holds no dict a
    `ConversionError`."""
    if isinstance(checkpoint, dict):
        return checkpoint
    loaded = load_weights_file(checkpoint)
    if not isinstance(loaded, dict):
        extract_state_dict(loaded, source=checkpoint)  # raises, naming the file
    return loaded


def source_name(checkpoint) -> str | None:
    """The file a checkpoint came from, for messages (None for an already loaded dict)."""
    return None if isinstance(checkpoint, dict) else str(checkpoint)


def check_checkpoint_path(checkpoint) -> None:
    """Fail at once for a checkpoint path that is missing, a folder or empty (before anything else is done)."""
    if not isinstance(checkpoint, dict):
        check_input_file(checkpoint)


def load_original_checkpoint(path: str | Path, use_ema: bool = False) -> OrderedDict[str, torch.Tensor]:
    """The model state dict of an original checkpoint file (see `extract_state_dict`)."""
    return extract_state_dict(load_checkpoint_file(path), use_ema=use_ema, source=source_name(path))


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
    given) atomically: concurrent or killed conversions never leave a half-written folder, and a folder that
    cannot be written raises `OutputFolderError` naming it (--output-dir) with nothing left behind. Every task's
    converter ends here; returns the model in eval mode."""
    check_output_folder(output_dir, OUTPUT_DIR)  # before building the model
    with no_init_weights():  # every weight is overwritten by the strict load below
        model = model_class(config).eval()
    check_against_model(converted, model)
    model.load_state_dict(converted, strict=True)
    with atomic_directory(Path(output_dir), OUTPUT_DIR) as tmp:
        try:
            model.save_pretrained(tmp)
            if image_processor is not None:
                image_processor.save_pretrained(tmp)
        except SafetensorError as error:  # safetensors' own write errors (e.g. a full disk); OSErrors: see above
            raise OutputFolderError(
                f"Writing the {OUTPUT_DIR} {Path(output_dir).absolute()} failed ({error}). Nothing was written "
                "there; free some disk space or choose a folder you can write to."
            ) from error
    return model


__all__ = [
    "BACKBONE",
    "BACKBONE_PREFIX",
    "HEAD_PREFIXES",
    "IMAGE_CLASSIFICATION",
    "INSTANCE_SEGMENTATION",
    "OUTPUT_DIR",
    "SEMANTIC_SEGMENTATION",
    "TASKS",
    "ConversionError",
    "ConversionReport",
    "backbone_entries",
    "check_against_model",
    "check_checkpoint_path",
    "check_output_dir",
    "check_supported",
    "extract_state_dict",
    "load_checkpoint_file",
    "load_original_checkpoint",
    "load_original_config",
    "reading_original_config",
    "save_converted_model",
    "source_name",
    "split_backbone_and_heads",
]

"""The one dispatcher from a task to its converter: `convert_state_dict` (keys only), `convert_checkpoint` (a
file or a loaded checkpoint to a saved folder) and `convert_by_name` (the task, preset and head read from a
released file's name, checked against the weights).

| task                    | converter                        | saved folder                        |
|-------------------------|----------------------------------|-------------------------------------|
| `image-classification`  | `backbone.convert_backbone_*`    | `PaCaViTForImageClassification`     |
| `backbone`              | `backbone.convert_backbone_*`    | `PaCaViTBackbone`                   |
| `semantic-segmentation` | `segmentation.convert_segmentation_*` | `PaCaViTForSemanticSegmentation` |
| `instance-segmentation` | `maskrcnn.convert_maskrcnn_*`    | `PaCaViTForInstanceSegmentation`    |
"""

from __future__ import annotations

from pathlib import Path

from ..configuration_pacavit import PaCaViTConfig
from .backbone import BACKBONE_TASKS, convert_backbone_checkpoint, convert_backbone_state_dict, infer_num_clusters
from .checkpoint_names import CheckpointNameError, check_checkpoint_matches_name, parse_checkpoint_name
from .common import (
    BACKBONE,
    IMAGE_CLASSIFICATION,
    INSTANCE_SEGMENTATION,
    SEMANTIC_SEGMENTATION,
    TASKS,
    ConversionError,
    check_checkpoint_path,
    check_output_dir,
    extract_state_dict,
    load_checkpoint_file,
    source_name,
    split_backbone_and_heads,
)
from .maskrcnn import convert_maskrcnn_checkpoint, convert_maskrcnn_state_dict
from .segmentation import convert_segmentation_checkpoint, convert_segmentation_state_dict


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ConversionError(f"Unknown task {task!r}; choose one of {', '.join(TASKS)}.")


def convert_state_dict(state_dict: dict, config: PaCaViTConfig, task: str = IMAGE_CLASSIFICATION):
    """Map an original state dict to the keys of the pacavit model for `task` (before the strict shape check);
    returns `(state dict, ConversionReport)`."""
    _check_task(task)
    if task == SEMANTIC_SEGMENTATION:
        return convert_segmentation_state_dict(state_dict, config)
    if task == INSTANCE_SEGMENTATION:
        return convert_maskrcnn_state_dict(state_dict, config)
    return convert_backbone_state_dict(state_dict, config, task)


def convert_checkpoint(
    checkpoint: str | Path | dict,
    output_dir: str | Path,
    task: str = IMAGE_CLASSIFICATION,
    preset: str | None = None,
    original_config: dict | None = None,
    use_ema: bool = False,
    verbose: bool = True,
):
    """Convert `checkpoint` (a path, or an already loaded checkpoint dict), save a folder loadable with the Auto
    class of `task`, and return the model. The architecture is `preset` (a preset or original builder name) or
    `original_config` (the original constructor's arguments, the fixture/manifest JSON form).

    Checked before anything is converted: the file (`pacavit.safe_io.CheckpointFileError` when it is missing, a
    folder, empty, truncated or not a checkpoint) and `output_dir` (`pacavit.safe_io.OutputFolderError` when it
    cannot be written, or holds the checkpoint)."""
    _check_task(task)
    check_checkpoint_path(checkpoint)
    check_output_dir(output_dir, checkpoint)
    if original_config is not None and not isinstance(original_config, dict):
        raise ConversionError(
            f"original_config must be a dict (the JSON of --original-config), got {type(original_config).__name__}."
        )
    if task == SEMANTIC_SEGMENTATION:
        return convert_segmentation_checkpoint(checkpoint, output_dir, preset, original_config, use_ema, verbose)
    if task == INSTANCE_SEGMENTATION:
        return convert_maskrcnn_checkpoint(checkpoint, output_dir, preset, original_config, use_ema, verbose)
    return convert_backbone_checkpoint(checkpoint, output_dir, task, preset, original_config, use_ema, verbose)


def convert_by_name(
    checkpoint: str | Path | dict,
    output_dir: str | Path,
    checkpoint_name: str | None = None,
    task: str | None = None,
    use_ema: bool = False,
    verbose: bool = True,
):
    """Convert a released file using what its name (or `checkpoint_name`, for a renamed file) says.

    `task` may narrow the conversion to `"backbone"`; otherwise the task of the name is used. `checkpoint` may
    be a path or an already loaded checkpoint dict (then `checkpoint_name` is required). The file and
    `output_dir` are checked first, as in `convert_checkpoint`.
    """
    if task is not None:
        _check_task(task)
    check_checkpoint_path(checkpoint)
    check_output_dir(output_dir, checkpoint)
    if checkpoint_name is None:
        if isinstance(checkpoint, dict):
            raise CheckpointNameError("A loaded checkpoint has no file name: pass checkpoint_name.")
        checkpoint_name = str(checkpoint)
    parsed = parse_checkpoint_name(checkpoint_name)
    if task is not None and task not in (parsed.task, BACKBONE):
        raise CheckpointNameError(
            f"--task {task} does not fit {parsed.stem!r}, whose task is {parsed.task}: drop --task, or give "
            f"--task {BACKBONE} to convert only its backbone."
        )
    source = source_name(checkpoint)
    checkpoint = load_checkpoint_file(checkpoint)  # loaded once; the converters take the whole dict (its `meta`)
    state_dict = extract_state_dict(checkpoint, use_ema=use_ema, source=source)
    backbone, _ = split_backbone_and_heads(state_dict)
    clusters = infer_num_clusters(backbone, PaCaViTConfig.from_preset(parsed.preset))
    head = check_checkpoint_matches_name(state_dict, parsed, clusters)
    if verbose:
        print(f"{parsed.stem}: preset {parsed.preset} ({parsed.builder}), task {parsed.task}, head {head}")
        if parsed.note:
            print(f"note: {parsed.note}")
    return convert_checkpoint(
        checkpoint, output_dir, task=task or parsed.task, preset=parsed.preset, use_ema=use_ema, verbose=verbose
    )


__all__ = ["BACKBONE_TASKS", "convert_by_name", "convert_checkpoint", "convert_state_dict"]

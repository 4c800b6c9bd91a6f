"""Convert the original PaCa-ViT checkpoints (timm, mmseg, mmdet) to pacavit folders: `python -m pacavit.convert`.

Read from the bottom up, each module imports only those below it:

- `common`: the error and report types, reading a checkpoint file, the backbone/head key split, the strict check
  and the atomic save;
- `backbone`: the original constructor -> `PaCaViTConfig`, the backbone's key rules, the classifier and backbone
  folders;
- `segmentation` (mmseg: PaCa head, UperNet + FCN) and `maskrcnn` (mmdet Mask R-CNN): their head rules and
  configs, mapping the `backbone.` keys through `backbone`;
- `checkpoint_names`: the preset, task and head of a released file, read from its name;
- `dispatch`: one entry per task (`convert_state_dict`, `convert_checkpoint`, `convert_by_name`);
- `cli` (and `__main__`): the command line.
"""

from .backbone import config_from_original
from .checkpoint_names import CheckpointNameError, parse_checkpoint_name
from .cli import main
from .common import (
    TASKS,
    ConversionError,
    ConversionReport,
    check_against_model,
    extract_state_dict,
    load_original_checkpoint,
)
from .dispatch import convert_by_name, convert_checkpoint, convert_state_dict

__all__ = [
    "TASKS",
    "CheckpointNameError",
    "ConversionError",
    "ConversionReport",
    "check_against_model",
    "config_from_original",
    "convert_by_name",
    "convert_checkpoint",
    "convert_state_dict",
    "extract_state_dict",
    "load_original_checkpoint",
    "main",
    "parse_checkpoint_name",
]

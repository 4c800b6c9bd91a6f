"""What a Hub-ready folder holds and what is left out of it: the one list of files that `push` uploads and
`install` places, and the error of the Hub tools."""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

PREPROCESSOR_CONFIG = "preprocessor_config.json"
# What a training output folder holds that is not part of the model: checkpoints (complete or being written),
# TensorBoard logs, Accelerate RNG states.
TRAINING_ARTIFACTS = ("step_*", "epoch_*", ".tmp_*", "runs/*", "*/random_states_*")


class HubFolderError(ValueError):
    """A folder that cannot be exported, installed or pushed; the message says what to do."""


def files_to_upload(folder: str | Path) -> list[str]:
    """Relative paths (posix, sorted) of what `push` uploads and `install` places: everything in the folder but
    hidden files, `__pycache__` and training artifacts (checkpoints, logs, RNG states)."""
    folder = Path(folder)
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or any(part.startswith(".") or part == "__pycache__" for part in rel.split("/")):
            continue
        if any(fnmatch(rel, pattern) or fnmatch(rel.split("/")[0], pattern) for pattern in TRAINING_ARTIFACTS):
            continue
        out.append(rel)
    return out


def model_files(folder: str | Path, action: str) -> list[str]:
    """`files_to_upload(folder)`, which must hold a `config.json` (a `HubFolderError` saying what to `action`
    otherwise)."""
    files = files_to_upload(folder)
    if "config.json" not in files:
        raise HubFolderError(f"{folder} has no config.json: {action} a folder written by `pacavit.hub export`.")
    return files


def default_repo_id(output_dir: str | Path) -> str:
    """The repository name used when none is given: the output folder's name."""
    return Path(output_dir).absolute().name


__all__ = [
    "PREPROCESSOR_CONFIG",
    "TRAINING_ARTIFACTS",
    "HubFolderError",
    "default_repo_id",
    "files_to_upload",
    "model_files",
]

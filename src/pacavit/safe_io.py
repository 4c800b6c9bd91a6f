"""Loading and writing files safely: pickles that would run code are refused with a clear message, and output
folders appear complete or not at all.

* `load_torch_checkpoint(path)`: `torch.load(weights_only=True)` (tensors, dicts, lists, numbers only). A file
  that needs arbitrary code to unpickle raises `UnsafeCheckpointError` saying so, instead of torch's generic
  advice to retry with `weights_only=False`.
* `atomic_directory(path)`: a context manager that yields a temporary sibling folder to write into and, when the
  block succeeds, swaps it in for `path` with `os.rename` (atomic on one file system). Another process, or a
  kill at any moment, sees either the previous complete folder, no folder, or the new complete one; concurrent
  writers of the same folder each finish with a complete folder in place (the last rename wins).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import torch


class UnsafeCheckpointError(ValueError):
    """A checkpoint would need to execute code to load, so it is not loaded."""


class OutputFolderError(FileExistsError, ValueError):
    """The output folder holds files that are not a model folder; it is not replaced."""


def unpickling_detail(error: pickle.UnpicklingError) -> str:
    """The reason in torch's weights_only error (the blocked GLOBAL, or an unsupported opcode), without the
    generic advice to retry with weights_only=False."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = next((line for line in lines if "GLOBAL" in line), lines[-2] if len(lines) > 1 else str(error))
    return detail.split(". Please use `torch.serialization.add_safe_globals")[0]  # not advice to allowlist it


def load_torch_checkpoint(path: str | os.PathLike, map_location="cpu"):
    """`torch.load(path, weights_only=True)`; a pickle that needs code (classes, functions) is refused."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        detail = unpickling_detail(error)
        raise UnsafeCheckpointError(
            f"Refusing to load {path}: it is not a plain tensor checkpoint, and unpickling it would need code that "
            f"torch.load(weights_only=True) does not run ({detail}). pacavit reads .pth files only that way, which "
            "allows tensors, dicts, lists and numbers - enough for every released PaCa-ViT checkpoint. If you trust "
            "this file and know what it holds, load it yourself with torch.load(path, weights_only=False), save its "
            "state dict (torch.save(state_dict, 'clean.pth')) and convert that."
        ) from error


def _is_replaceable(path: Path) -> bool:
    """An output folder we may replace: absent, empty, or a model folder (config.json) written before."""
    if not path.exists():
        return True
    if not path.is_dir():
        return False
    return not any(path.iterdir()) or (path / "config.json").is_file()


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike):
    """Yield a temporary folder beside `path`; on success it replaces `path` atomically (see the module doc).

    Refuses (OutputFolderError, a FileExistsError and ValueError) to replace a folder that holds files but no
    `config.json`, so that pointing the output at, e.g., the current directory cannot delete unrelated files.
    """
    final = Path(path).absolute()
    if not _is_replaceable(final):
        raise OutputFolderError(
            f"{final} exists and holds files that are not a model folder (no config.json); refusing to replace it. "
            "Choose a new or empty output folder."
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        _swap_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_into_place(tmp: Path, final: Path, attempts: int = 20) -> None:
    for _ in range(attempts):
        with contextlib.suppress(OSError):
            os.rename(tmp, final)  # succeeds when `final` is absent (or an empty folder)
            return
        trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        with contextlib.suppress(FileNotFoundError):  # another writer may have moved it aside already
            os.rename(final, trash / final.name)
        with contextlib.suppress(OSError):  # ... or put its own folder in place again: then we retry
            os.rename(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)  # the previous folder goes once ours is in place (or we retry)
        if not tmp.exists():
            return
    raise OSError(f"Could not move {tmp} into place as {final}: other processes keep replacing it.")


__all__ = ["UnsafeCheckpointError", "OutputFolderError", "load_torch_checkpoint", "atomic_directory"]

"""Loading and writing files safely: pickles that would run code are refused with a clear message, files that are
not checkpoints at all are named as such, and output folders appear complete or not at all.

* `load_torch_checkpoint(path)`: `torch.load(weights_only=True)` (tensors, dicts, lists, numbers only). A file
  that needs arbitrary code to unpickle raises `UnsafeCheckpointError` saying so, instead of torch's generic
  advice to retry with `weights_only=False`. A missing, empty, truncated or foreign file (a folder, a text file,
  an HTML page or a Git LFS pointer saved instead of the weights, random bytes) raises `CheckpointFileError`
  naming the file and what it looks like, instead of torch's `EOFError`/`KeyError`/`RuntimeError`.
* `load_weights_file(path)`: the same for any weights file: a safetensors file (recognised by its content, any
  extension) is read with `safetensors` (a flat dict of tensors), anything else with `load_torch_checkpoint`.
* `check_safetensors_file(path)`: the header of a safetensors file is read and checked to cover the whole file
  (a truncated file fails here), without loading the tensors.
* `atomic_directory(path)`: a context manager that yields a temporary sibling folder to write into and, when the
  block succeeds, swaps it in for `path` with `os.rename` (atomic on one file system). Another process, or a
  kill at any moment, sees either the previous complete folder, no folder, or the new complete one; concurrent
  writers of the same folder each finish with a complete folder in place (the last rename wins). A folder that
  cannot be written (a parent that is a file, no permission, a read-only or full disk) raises
  `OutputFolderError` naming it, and leaves nothing behind: neither the temporary folder nor the parent folders
  it created. `check_output_folder(path)` runs the same checks up front, before a long computation.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import pickle
import pickletools
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch


class UnsafeCheckpointError(ValueError):
    """A checkpoint would need to execute code to load, so it is not loaded."""


class CheckpointFileError(ValueError):
    """A weights file that cannot be read: missing, a folder, empty, truncated or corrupt, or not a checkpoint at
    all; the message names the file, what it looks like and what to do."""


class OutputFolderError(FileExistsError, ValueError):
    """The output folder cannot be written: it holds files that are not a model folder (it is not replaced), it is a
    file, a parent of it is a file, or the file system refuses the write; the message names it."""


def unpickling_detail(error: pickle.UnpicklingError) -> str:
    """The reason in torch's weights_only error (the blocked GLOBAL, or an unsupported opcode), without the
    generic advice to retry with weights_only=False."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = next((line for line in lines if "GLOBAL" in line), lines[-2] if len(lines) > 1 else str(error))
    return detail.split(". Please use `torch.serialization.add_safe_globals")[0]  # not advice to allowlist it


# --------------------------------------------------------------------------------------------
# Reading weights files
# --------------------------------------------------------------------------------------------
_AGAIN = "Download or copy the file again (a transfer that did not finish leaves such a file)."
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def _first_error_line(error: BaseException) -> str:
    """`Type: first sentence of the message` (torch appends paragraphs of generic advice)."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    first = text.splitlines()[0]
    return f"{type(error).__name__}: {first.split('. ')[0].rstrip('.')}"


def _is_safetensors_header(head: bytes) -> bool:
    """A safetensors file starts with the little-endian length of its JSON header, then the header's `{`."""
    return len(head) >= 9 and 1 < int.from_bytes(head[:8], "little") < 100 << 20 and head[8:9] == b"{"


def describe_file_content(head: bytes) -> str:
    """What the first bytes of a file that is not a readable checkpoint look like, for error messages."""
    stripped = head.lstrip()
    if stripped.startswith(b"version https://git-lfs"):
        return (
            "it is a Git LFS pointer (a small text file standing in for the weights), not the weights: run "
            "`git lfs pull` in its repository, or download the file itself"
        )
    if stripped[:15].lower().startswith((b"<!doctype html", b"<html")):
        return "it is an HTML page, not a checkpoint (a download that saved an error or login page?)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(ch.isprintable() or ch in "\n\r\t" for ch in text):
        return f"it is a text file beginning {text[:40]!r}, not a checkpoint"
    return (
        "it is neither a torch.save file (a zip archive or a pickle) nor a safetensors file: not a checkpoint, or "
        "a corrupt one"
    )


def check_input_file(path: str | os.PathLike, what: str = "checkpoint") -> Path:
    """`path` as a Path when it is an existing, non-empty, readable file; else `CheckpointFileError` saying what it
    is instead (missing, a folder, empty, unreadable)."""
    path = Path(path)
    if not path.exists():
        hint = " (a broken symbolic link)" if path.is_symlink() else ""
        raise CheckpointFileError(f"The {what} {path} does not exist{hint}: check the path.")
    if path.is_dir():
        if (path / "config.json").is_file():
            advice = (
                "it holds a config.json, so it is already a converted or saved model folder: load it with "
                "from_pretrained, or export it with `python -m pacavit.hub export`"
            )
        else:
            inside = sorted(p.name for p in path.iterdir() if p.suffix in (".pth", ".pt", ".bin", ".safetensors"))
            advice = f"pass one of the files in it ({', '.join(inside[:5])})" if inside else "pass the file itself"
        raise CheckpointFileError(f"The {what} {path} is a folder, not a file: {advice}.")
    try:
        with open(path, "rb") as handle:
            empty = not handle.read(1)
    except OSError as error:
        raise CheckpointFileError(f"The {what} {path} cannot be read ({error.strerror or error}).") from error
    if empty:
        raise CheckpointFileError(f"The {what} {path} is empty (0 bytes). {_AGAIN}")
    return path


def _read_head(path: Path, size: int = 64) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(size)


def _is_complete_pickle(path: Path, head: bytes) -> bool:
    """Whether the pickle torch refused is well formed (parsed with `pickletools`, never run): a real pickle that
    needs code, as opposed to random bytes that torch's unpickler also rejects."""
    try:
        if head.startswith(_ZIP_MAGIC):
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                stream = io.BytesIO(archive.read(name))
        else:
            stream = open(path, "rb")  # noqa: SIM115 - closed below
        with stream:
            pickletools.dis(stream, out=io.StringIO())
    except Exception:
        return False
    return True


def load_torch_checkpoint(path: str | os.PathLike, map_location="cpu"):
    """`torch.load(path, weights_only=True)`; a pickle that needs code (classes, functions) is refused
    (`UnsafeCheckpointError`), and a file that is not a readable checkpoint raises `CheckpointFileError`."""
    path = check_input_file(path)
    head = _read_head(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if not _is_complete_pickle(path, head):
            raise _unreadable(path, head, error) from error
        detail = unpickling_detail(error)
        raise UnsafeCheckpointError(
            f"Refusing to load {path}: it is not a plain tensor checkpoint, and unpickling it would need code that "
            f"torch.load(weights_only=True) does not run ({detail}). pacavit reads .pth files only that way, which "
            "allows tensors, dicts, lists and numbers - enough for every released PaCa-ViT checkpoint. If you trust "
            "this file and know what it holds, load it yourself with torch.load(path, weights_only=False), save its "
            "state dict (torch.save(state_dict, 'clean.pth')) and convert that."
        ) from error
    except MemoryError:
        raise
    except Exception as error:  # EOFError, KeyError, IndexError, RuntimeError (miniz), struct.error, ...
        raise _unreadable(path, head, error) from error


def _unreadable(path: Path, head: bytes, error: BaseException) -> CheckpointFileError:
    if head.startswith(_ZIP_MAGIC):
        what = f"it is a zip archive (the torch.save format) but truncated or corrupt ({_first_error_line(error)})"
    elif head.startswith(b"\x80"):
        what = f"it is a pickle (the legacy torch.save format) but truncated or corrupt ({_first_error_line(error)})"
    else:
        what = describe_file_content(head)
    return CheckpointFileError(f"Cannot read the checkpoint {path}: {what}. {_AGAIN}")


def check_safetensors_file(path: str | os.PathLike, what: str = "weights file") -> list[str]:
    """The tensor names of a safetensors file, after checking that its header is valid and covers the whole file
    (a truncated file fails); `CheckpointFileError` naming the file otherwise. No tensor is loaded."""
    from safetensors import safe_open

    path = check_input_file(path, what)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    except Exception as error:  # SafetensorError: header too small / too large / file not fully covered
        raise CheckpointFileError(
            f"Cannot read the {what} {path}: it is not a complete safetensors file ({_first_error_line(error)}); "
            f"it is truncated or corrupt. {_AGAIN}"
        ) from error


def load_weights_file(path: str | os.PathLike, map_location="cpu"):
    """A checkpoint file of either format: safetensors (recognised by its content or its `.safetensors` name: a
    flat dict of tensors) or torch.save (`load_torch_checkpoint`: pickles that need code are refused). Raises
    `CheckpointFileError` for a file that is neither, or is truncated."""
    from safetensors.torch import load_file

    path = check_input_file(path)
    if path.suffix == ".safetensors" or _is_safetensors_header(_read_head(path)):
        check_safetensors_file(path, "checkpoint")
        try:
            return load_file(str(path), device=str(map_location))
        except Exception as error:  # a header that passed but data that does not
            raise CheckpointFileError(
                f"Cannot read the checkpoint {path}: a corrupt safetensors file ({_first_error_line(error)}). {_AGAIN}"
            ) from error
    return load_torch_checkpoint(path, map_location=map_location)


# --------------------------------------------------------------------------------------------
# Writing output folders
# --------------------------------------------------------------------------------------------
def _is_replaceable(path: Path) -> bool:
    """An output folder we may replace: absent, empty, or a model folder (config.json) written before."""
    if not path.exists():
        return True
    if not path.is_dir():
        return False
    return not any(path.iterdir()) or (path / "config.json").is_file()


def _existing_ancestor(path: Path) -> Path:
    return next(parent for parent in path.parents if parent.exists() or parent.is_symlink())


def _write_advice(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return "the disk is full: free some space or choose a folder on another disk"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied (or a read-only file system): choose a folder you can write to"
    return "choose a folder you can write to"


def check_output_folder(path: str | os.PathLike, label: str = "output folder") -> Path:
    """The absolute `path` when `atomic_directory(path)` can write it: a new path under a folder, an empty folder,
    or a model folder (`config.json`) written before. Else `OutputFolderError` naming `label` (e.g.
    "output folder (--output-dir)") and the path: it is a file, it holds other files, a parent is a file, or its
    parent is not writable. Run it before a long computation whose result goes there."""
    final = Path(path).absolute()
    if final.exists() and not final.is_dir():
        raise OutputFolderError(
            f"The {label} {final} is a file, not a folder. Choose a new or empty folder (or a model folder written "
            "before, which is replaced)."
        )
    if not _is_replaceable(final):
        raise OutputFolderError(
            f"The {label} {final} exists and holds files that are not a model folder (no config.json); refusing to "
            "replace it. Choose a new or empty output folder."
        )
    parent = final.parent if final.exists() else _existing_ancestor(final)
    if not parent.is_dir():
        raise OutputFolderError(
            f"The {label} {final} cannot be created: {parent} is a file, not a folder. Choose a path under a folder."
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputFolderError(
            f"The {label} {final} cannot be written: {parent} is not writable (permission denied or a read-only "
            "file system). Choose a folder you can write to."
        )
    return final


def _is_under(name, folder: Path) -> bool:
    return name is not None and Path(os.fsdecode(name)).absolute().is_relative_to(folder)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, label: str = "output folder"):
    """Yield a temporary folder beside `path`; on success it replaces `path` atomically (see the module doc).

    Refuses (OutputFolderError, a FileExistsError and ValueError) to replace a folder that holds files but no
    `config.json`, so that pointing the output at, e.g., the current directory cannot delete unrelated files, and
    raises it for a path that cannot be written (`check_output_folder`; `label` names the path in the message, e.g.
    "output folder (--output-dir)"). An OSError while writing into the temporary folder (a full disk, ...) becomes
    an `OutputFolderError` too. On any failure the temporary folder and the parent folders created for it are
    removed, and a previous folder at `path` is left as it was.
    """
    final = check_output_folder(path, label)
    created = [parent for parent in [final.parent, *final.parent.parents] if not parent.exists()]
    try:
        tmp = _make_temporary_sibling(final)
    except OSError as error:
        _remove_empty(created)
        raise OutputFolderError(
            f"The {label} {final} cannot be written: creating a folder in {final.parent} failed "
            f"({error.strerror or error}); {_write_advice(error)}."
        ) from error
    try:
        yield tmp
        _swap_into_place(tmp, final, label)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        if isinstance(error, OSError) and not isinstance(error, ValueError):
            if _is_under(error.filename, tmp) or _is_under(error.filename2, tmp):
                raise OutputFolderError(
                    f"Writing the {label} {final} failed ({error.strerror or error}); {_write_advice(error)}. "
                    "Nothing was written there."
                ) from error
        raise


def _make_temporary_sibling(final: Path) -> Path:
    for attempt in range(3):
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        except FileNotFoundError:  # a concurrent writer's failure removed the parent it had created: again
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _remove_empty(folders: list[Path]) -> None:
    """Remove the parent folders created for an output that failed, deepest first, where they are empty."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _swap_into_place(tmp: Path, final: Path, label: str = "output folder", attempts: int = 20) -> None:
    try:
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
    except OSError as error:
        raise OutputFolderError(
            f"Could not move the new {label} into place as {final} ({error.strerror or error}); "
            f"{_write_advice(error)}."
        ) from error
    raise OutputFolderError(f"Could not move {tmp} into place as {final}: other processes keep replacing it.")


__all__ = [
    "CheckpointFileError",
    "OutputFolderError",
    "UnsafeCheckpointError",
    "atomic_directory",
    "check_input_file",
    "check_output_folder",
    "check_safetensors_file",
    "describe_file_content",
    "load_torch_checkpoint",
    "load_weights_file",
]

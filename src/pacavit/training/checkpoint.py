"""Checkpoints that a kill cannot corrupt, rotation, `latest` discovery, resume, and the output-folder guard.

A checkpoint is `<output_dir>/step_<N>` or `<output_dir>/epoch_<E>`: Accelerate's `save_state` (model,
optimizer, RNG and sampler states, and every object registered with
`accelerator.register_for_checkpointing`, e.g. an EMA) plus `training_state.json` (updates done, histories).

Why not Accelerate's own `ProjectConfiguration(automatic_checkpoint_naming=True, total_limit=...)`: it writes
straight into the final folder (a run killed mid-save leaves a folder that looks complete) and names folders
`checkpoint_<i>` by save count rather than by training progress. Here `save_state` writes into
`.tmp_<name>`, `training_state.json` is written last, and the folder is renamed into place: a checkpoint is
complete exactly when `<name>/training_state.json` exists, and `list_checkpoints` ignores everything else.

Loading runs no code from a checkpoint: Accelerate unpickles registered objects' states with
`torch.load(weights_only=False)`, so `load_checkpoint` first checks that every pickle of the folder (optimizer,
scheduler, sampler, random states, registered objects) loads with `weights_only=True`, and refuses the folder
otherwise, naming the file (`check_checkpoint_pickles`); a truncated file is named the same way.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..safe_io import CheckpointFileError, UnsafeCheckpointError, unpickling_detail

CHECKPOINT_PATTERN = re.compile(r"^(step|epoch)_(\d+)$")
# the files of a checkpoint that Accelerate's load_state unpickles (torch.save'd), checked before it does
PICKLE_SUFFIXES = (".bin", ".pkl", ".pt", ".pth")
# what Accelerate would do with a code-carrying file, by file-name stem (without `_<i>`)
RISKS = {
    "custom_checkpoint": "Accelerate would unpickle it with weights_only=False, running that code",
    "random_states": "Accelerate would skip it silently, and the resume would not be exact",
}
TRAINING_STATE = "training_state.json"
TMP_PREFIX = ".tmp_"
# Files a finished run leaves in its output folder (any task); their presence means "this folder holds a run".
RUN_FILES = ("all_results.json", "train_log.json", "model.safetensors")
EXPORT_TMP = f"{TMP_PREFIX}export"  # where a run's final folder is written before it is moved into place


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints in `output_dir` as `(completed_updates, path)`, oldest first (by update count,
    then modification time; names are not compared, so `epoch_3` and `step_40` order correctly)."""
    found = []
    root = Path(output_dir)
    if not root.is_dir():
        return found
    for path in root.iterdir():
        if path.is_dir() and CHECKPOINT_PATTERN.match(path.name) and (path / TRAINING_STATE).is_file():
            state = json.loads((path / TRAINING_STATE).read_text())
            found.append((int(state["completed_steps"]), path))
    return sorted(found, key=lambda item: (item[0], item[1].stat().st_mtime))


def find_latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint in `output_dir`, or None."""
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1][1] if checkpoints else None


def write_checkpoint_atomically(output_dir: str | os.PathLike, name: str, write_into, state: dict) -> Path:
    """Single-process core of `save_checkpoint`: `write_into(tmp_dir)` writes the files, then
    `training_state.json` is written and the folder renamed to `output_dir/name` (replacing an older one)."""
    final = Path(output_dir) / name
    tmp = Path(output_dir) / f"{TMP_PREFIX}{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    write_into(tmp)
    _write_state_and_rename(tmp, final, state)
    return final


def _write_state_and_rename(tmp: Path, final: Path, state: dict) -> None:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / TRAINING_STATE).write_text(json.dumps(state, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)  # atomic on one file system: the checkpoint appears complete or not at all


@contextmanager
def export_atomically(output_dir: str | os.PathLike) -> Iterator[Path]:
    """Write a run's final folder (weights, processor, card, results, figures) so that a crash or a SIGTERM
    while writing it leaves no half-export behind: the block writes into `output_dir/.tmp_export` (yielded),
    and its files are moved into `output_dir` only once the block has finished -- the files that mark a
    finished run (`RUN_FILES`) last, `all_results.json` the very last. On an exception the temporary folder is
    removed and nothing of the export reaches `output_dir`; after a kill it stays as `.tmp_export`, which
    `--resume_from_checkpoint latest` ignores (it resumes the newest checkpoint and exports again) and which a
    new export replaces.

    Why not one rename of the whole folder, as for checkpoints and conversions: `output_dir` also holds the
    run's checkpoints and logs, which must stay where a resume finds them; the moves are renames within one
    file system (microseconds each), done in an order in which a folder with results always has its model."""
    root = Path(output_dir)
    tmp = root / EXPORT_TMP
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    last = ("model.safetensors", "train_log.json", "all_results.json")
    for name in sorted((p.name for p in tmp.iterdir()), key=lambda n: last.index(n) + 1 if n in last else 0):
        target = root / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(tmp / name, target)
    tmp.rmdir()


def prune_checkpoints(output_dir: str | os.PathLike, total_limit: int | None) -> list[Path]:
    """Delete all but the newest `total_limit` complete checkpoints; returns the deleted paths."""
    if total_limit is None or total_limit <= 0:
        return []
    old = [path for _, path in list_checkpoints(output_dir)[:-total_limit]]
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return old


def save_checkpoint(accelerator, output_dir: str, name: str, state: dict, total_limit: int | None) -> Path:
    """`accelerator.save_state` into `.tmp_<name>`, renamed into place once complete (see the module
    docstring), then prune to the newest `total_limit`. Call on every process."""
    final = Path(output_dir) / name
    tmp = Path(output_dir) / f"{TMP_PREFIX}{name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_state_and_rename(tmp, final, state)
        prune_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()
    return final


class NoCheckpointError(FileNotFoundError):
    """`--resume_from_checkpoint latest` into a folder that holds a run but no complete checkpoint."""


def run_files(output_dir: str | os.PathLike) -> list[str]:
    """The files of a finished run (`RUN_FILES`) present in `output_dir`."""
    root = Path(output_dir)
    return [name for name in RUN_FILES if (root / name).exists()]


def resolve_resume_path(resume_from_checkpoint: str | None, output_dir: str, overwrite: bool = False) -> Path | None:
    """`--resume_from_checkpoint`: None, 'latest' or a checkpoint folder (must hold `training_state.json`).

    'latest' is the newest complete checkpoint in `output_dir`. Without one it returns None (start afresh:
    an empty or new folder, or one holding only a checkpoint killed mid-write, e.g. a requeued job) -- unless
    the folder holds a finished run (results or weights, `RUN_FILES`) and not `overwrite`: then
    `NoCheckpointError`, since starting afresh would replace that run and there is nothing to resume."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        latest = find_latest_checkpoint(output_dir)
        held = run_files(output_dir)
        if latest is None and held and not overwrite:
            raise NoCheckpointError(
                f"--resume_from_checkpoint latest: --output_dir {str(output_dir)!r} holds a run "
                f"({', '.join(held)}) but no complete checkpoint (step_N/ or epoch_N/ with {TRAINING_STATE}) to "
                "resume from; it finished or was saved without --checkpointing_steps. Drop "
                "--resume_from_checkpoint and pass --overwrite_output_dir to train afresh in it (replacing it), "
                "or use another --output_dir."
            )
        return latest
    path = Path(resume_from_checkpoint)
    if not (path / TRAINING_STATE).is_file():
        raise FileNotFoundError(
            f"{path} is not a complete checkpoint (no {TRAINING_STATE}); pass a step_N/epoch_N folder of a "
            "run, or 'latest'."
        )
    return path


def check_checkpoint_pickles(path: str | os.PathLike) -> None:
    """Refuse a checkpoint folder holding a file that needs code to load (`UnsafeCheckpointError`) or that
    cannot be read at all (truncated, corrupt: `CheckpointFileError`), naming the file, before Accelerate's
    `load_state` reads it.

    Every torch pickle of the folder is checked (`*.bin`, `*.pkl`, `*.pt`, `*.pth`: the optimizer, scheduler,
    sampler, scaler, random states and the registered objects such as the EMA), with `weights_only=True` and
    Accelerate's allow-list of NumPy RNG types (a memory map would avoid the copy, but torch refuses it for
    non-zip pickles, which a modified file may be). Why every file:
    Accelerate unpickles registered objects' states (`custom_checkpoint_<i>.pkl`) with `weights_only=False`,
    which runs whatever code a pickle names; it skips a random-state file it cannot load safely (the resume is
    then silently not exact); and for the others its own `weights_only=True` load fails with a bare
    `UnpicklingError` traceback naming no file. Our own `save_state` writes only tensors, dicts, lists and
    numbers, so each file must pass."""
    from accelerate.utils import load as accelerate_load

    for file in sorted(Path(path).iterdir()):
        if file.suffix not in PICKLE_SUFFIXES or not file.is_file():
            continue
        try:
            accelerate_load(file, map_location="cpu")  # freed at once: a transient copy
        except pickle.UnpicklingError as error:
            risk = RISKS.get(file.name.rsplit("_", 1)[0], "Accelerate would refuse it with a bare traceback")
            raise UnsafeCheckpointError(
                f"Refusing to resume from {path}: {file.name} is a pickle that needs code to load "
                f"({unpickling_detail(error)}); {risk}. A "
                "checkpoint written by pacavit holds only tensors and numbers there, so this one was modified or "
                "comes from elsewhere. Resume from a checkpoint of your own run (or drop --resume_from_checkpoint "
                "and start afresh)."
            ) from error
        except Exception as error:  # torch raises RuntimeError/EOFError/ValueError for truncated or foreign files
            raise CheckpointFileError(
                f"Cannot resume from {path}: {file.name} cannot be read ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else 'no detail'}); the file is truncated or corrupt "
                "(a full disk or a copy that did not finish?). Resume from an earlier checkpoint "
                "(--resume_from_checkpoint <output_dir>/step_N), or drop --resume_from_checkpoint and start afresh."
            ) from error


def load_checkpoint(accelerator, path: str | os.PathLike) -> dict:
    """`accelerator.load_state(path)` (weights, optimizer, RNG and sampler states, registered objects), after
    `check_checkpoint_pickles` refused pickles that would need code; returns the checkpoint's
    `training_state.json`."""
    check_checkpoint_pickles(path)
    accelerator.load_state(str(path))
    return json.loads((Path(path) / TRAINING_STATE).read_text())


def resume_position(completed_steps: int, updates_per_epoch: int, gradient_accumulation_steps: int) -> tuple:
    """`(epoch, batches_to_skip)` where a run with `completed_steps` updates continues."""
    epoch = completed_steps // updates_per_epoch
    return epoch, (completed_steps % updates_per_epoch) * gradient_accumulation_steps


def check_output_dir(
    output_dir: str | os.PathLike, overwrite: bool, resuming: bool, remove_stale: bool = True
) -> None:
    """Refuse to train into a folder that already holds a run (its results, weights or checkpoints), unless
    resuming it or `overwrite` (then, with `remove_stale`, its checkpoints are deleted, so `latest` and
    rotation see only the new run's). Raises FileExistsError saying what to do. Call on every process, with
    `remove_stale=accelerator.is_main_process`, so that every process fails alike."""
    root = Path(output_dir)
    if resuming or not root.is_dir():
        return
    held = run_files(root)
    checkpoints = sorted(
        p.name for p in root.iterdir() if CHECKPOINT_PATTERN.match(p.name) or p.name.startswith(TMP_PREFIX)
    )
    if not held and not checkpoints:
        return
    if not overwrite:
        found = ", ".join(held + checkpoints[:3] + (["..."] if len(checkpoints) > 3 else []))
        raise FileExistsError(
            f"--output_dir {str(root)!r} already holds a run ({found}). Pass --overwrite_output_dir to "
            "replace it, --resume_from_checkpoint latest to continue it, or another --output_dir."
        )
    if remove_stale:
        for name in checkpoints:
            shutil.rmtree(root / name, ignore_errors=True)

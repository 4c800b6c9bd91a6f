"""pacavit.training.checkpoint: atomic save (also under SIGKILL), rotation, `latest`, resume, output guard."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from pacavit.training import (
    TRAINING_STATE,
    NoCheckpointError,
    check_output_dir,
    export_atomically,
    find_latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resolve_resume_path,
    resume_position,
    save_checkpoint,
    write_checkpoint_atomically,
)


def fake_checkpoint(root: Path, name: str, steps: int | None) -> Path:
    (root / name).mkdir(parents=True)
    if steps is not None:
        (root / name / TRAINING_STATE).write_text(json.dumps({"completed_steps": steps}))
    return root / name


def test_latest_is_the_newest_complete_checkpoint(tmp_path):
    assert find_latest_checkpoint(tmp_path) is None and find_latest_checkpoint(tmp_path / "absent") is None
    fake_checkpoint(tmp_path, "epoch_1", 20)
    fake_checkpoint(tmp_path, "step_30", 30)
    fake_checkpoint(tmp_path, ".tmp_step_40", 40)  # renamed into place only when complete: never picked
    fake_checkpoint(tmp_path, "step_50", None)  # no training state: incomplete
    fake_checkpoint(tmp_path, "best_model", 99)  # not a checkpoint name
    assert find_latest_checkpoint(tmp_path).name == "step_30"
    assert resolve_resume_path("latest", str(tmp_path)).name == "step_30"
    assert resolve_resume_path(None, str(tmp_path)) is None
    with pytest.raises(FileNotFoundError, match="step_50.*not a complete checkpoint"):
        resolve_resume_path(str(tmp_path / "step_50"), str(tmp_path))
    assert resume_position(30, 16, 2) == (1, 28)


def _killed_writer(output_dir: str) -> None:
    def write_into(tmp):
        tmp.mkdir(parents=True)
        (tmp / "model.safetensors").write_bytes(b"x" * 1000)
        (tmp / "WRITING").touch()
        time.sleep(120)  # killed here, mid-save

    write_checkpoint_atomically(output_dir, "step_7", write_into, {"completed_steps": 7})


def test_sigkill_during_save_leaves_no_complete_looking_checkpoint(tmp_path):
    fake_checkpoint(tmp_path, "step_3", 3)
    # a forked child (it has the package imported already) is killed while it writes the checkpoint
    process = multiprocessing.get_context("fork").Process(target=_killed_writer, args=(str(tmp_path),))
    process.start()
    deadline = time.time() + 60
    while not (tmp_path / ".tmp_step_7" / "WRITING").exists():
        assert process.is_alive(), "the writer exited early"
        assert time.time() < deadline, "the writer never started writing"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    assert process.exitcode == -signal.SIGKILL
    assert not (tmp_path / "step_7").exists()
    assert [p.name for _, p in list_checkpoints(tmp_path)] == ["step_3"]
    assert find_latest_checkpoint(tmp_path).name == "step_3"
    # the next save of the same name replaces the leftover
    final = write_checkpoint_atomically(tmp_path, "step_7", lambda tmp: tmp.mkdir(), {"completed_steps": 7})
    assert find_latest_checkpoint(tmp_path) == final and not (tmp_path / ".tmp_step_7").exists()


def test_save_prune_and_exact_load_with_accelerate(tmp_path, fresh_accelerate_state):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, project_dir=str(tmp_path))
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    saved = {}
    for step in (1, 2, 3):
        model(torch.randn(4, 3)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        path = save_checkpoint(accelerator, str(tmp_path), f"step_{step}", {"completed_steps": step}, 2)
        saved[step] = {k: v.clone() for k, v in model.state_dict().items()}
    rng_at_save = torch.get_rng_state()
    assert [p.name for _, p in list_checkpoints(tmp_path)] == ["step_2", "step_3"]
    assert not list(tmp_path.glob(".tmp_*"))
    torch.manual_seed(123)
    with torch.no_grad():
        model.weight.zero_()
    state = load_checkpoint(accelerator, path)
    assert state == {"completed_steps": 3}
    assert torch.equal(model.weight, saved[3]["weight"])
    assert torch.equal(torch.get_rng_state(), rng_at_save)  # the RNG state is part of the checkpoint
    assert len(optimizer.state_dict()["state"]) == 2


def test_output_dir_guard(tmp_path):
    check_output_dir(tmp_path / "new", overwrite=False, resuming=False)
    (tmp_path / "notes.txt").write_text("unrelated files are fine")
    check_output_dir(tmp_path, overwrite=False, resuming=False)
    fake_checkpoint(tmp_path, "step_10", 10)
    (tmp_path / "all_results.json").write_text("{}")
    with pytest.raises(FileExistsError, match="already holds a run.*all_results.json.*--overwrite_output_dir"):
        check_output_dir(tmp_path, overwrite=False, resuming=False)
    check_output_dir(tmp_path, overwrite=False, resuming=True)
    assert (tmp_path / "step_10").exists()
    check_output_dir(tmp_path, overwrite=True, resuming=False)  # stale checkpoints go, other files stay
    assert not (tmp_path / "step_10").exists() and (tmp_path / "notes.txt").exists()


def test_latest_into_a_finished_run_without_checkpoints_is_refused(tmp_path):
    assert resolve_resume_path("latest", str(tmp_path / "new")) is None  # nothing there: start afresh
    (tmp_path / ".tmp_step_5").mkdir()  # a requeued job killed while writing its first checkpoint
    assert resolve_resume_path("latest", str(tmp_path)) is None
    (tmp_path / "all_results.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(
        NoCheckpointError,
        match=r"latest: --output_dir '.*' holds a run \(all_results.json, model.safetensors\) but no complete "
        r"checkpoint .* to resume from.*Drop --resume_from_checkpoint and pass --overwrite_output_dir"
        r".*another --output_dir",
    ):
        resolve_resume_path("latest", str(tmp_path))
    assert resolve_resume_path("latest", str(tmp_path), overwrite=True) is None
    fake_checkpoint(tmp_path, "step_10", 10)
    assert resolve_resume_path("latest", str(tmp_path)).name == "step_10"


class _Touch:
    """A pickle that runs code when loaded: it creates a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_resume_restores_registered_state_and_refuses_pickles_that_run_code(tmp_path, fresh_accelerate_state):
    import pickle

    from accelerate import Accelerator

    from pacavit.safe_io import UnsafeCheckpointError

    accelerator = Accelerator(cpu=True, project_dir=str(tmp_path))
    model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)  # ema: a registered object, as the EMA model
    model = accelerator.prepare(model)
    accelerator.register_for_checkpointing(ema)
    path = save_checkpoint(accelerator, str(tmp_path), "step_1", {"completed_steps": 1}, None)
    assert (path / "custom_checkpoint_0.pkl").is_file()
    saved = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        ema.weight.add_(1.0)
    assert load_checkpoint(accelerator, path) == {"completed_steps": 1}
    assert all(torch.equal(ema.state_dict()[k], v) for k, v in saved.items())  # bitwise restored

    marker = tmp_path / "code_ran"
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl"):
        original = (path / name).read_bytes()
        (path / name).write_bytes(pickle.dumps({"weight": _Touch(marker)}, protocol=2))
        message = rf"Refusing to resume from .*step_1: {name} is a pickle that needs code to load \(.*GLOBAL getattr"
        with pytest.raises(
            UnsafeCheckpointError, match=message + r" was not an allowed global by default\); Accelerate would"
        ):
            load_checkpoint(accelerator, path)
        assert not marker.exists()  # nothing of it ran
        (path / name).write_bytes(original)


def test_every_pickle_of_a_checkpoint_is_checked_before_accelerate_reads_it(tmp_path, fresh_accelerate_state):
    """optimizer.bin, scheduler.bin, sampler/scaler states: Accelerate loads them with weights_only=True itself, but
    a code-carrying one ends in a bare UnpicklingError naming no file, and a truncated one in a zip-reader error:
    both are refused first, naming the file."""
    import pickle

    from accelerate import Accelerator

    from pacavit.safe_io import CheckpointFileError, UnsafeCheckpointError

    accelerator = Accelerator(cpu=True, project_dir=str(tmp_path))
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    path = save_checkpoint(accelerator, str(tmp_path), "step_1", {"completed_steps": 1}, None)
    assert {"optimizer.bin", "scheduler.bin"} <= {p.name for p in path.iterdir()}
    marker = tmp_path / "code_ran"
    for name in ("optimizer.bin", "scheduler.bin", "sampler.bin"):
        original = (path / name).read_bytes() if (path / name).exists() else None
        (path / name).write_bytes(pickle.dumps({"state": _Touch(marker)}, protocol=2))
        with pytest.raises(UnsafeCheckpointError, match=rf"step_1: {name} is a pickle that needs code to load"):
            load_checkpoint(accelerator, path)
        assert not marker.exists()
        if original is None:
            (path / name).unlink()
            continue
        (path / name).write_bytes(original[: len(original) // 2])  # a copy that did not finish
        with pytest.raises(CheckpointFileError, match=rf"step_1: {name} cannot be read .*truncated or corrupt"):
            load_checkpoint(accelerator, path)
        (path / name).write_bytes(original)
    assert load_checkpoint(accelerator, path) == {"completed_steps": 1}


# ---------------------------------------------------------------- the final export
def _killed_exporter(output_dir: str) -> None:
    with export_atomically(output_dir) as folder:
        (folder / "model.safetensors").write_bytes(b"weights")
        (folder / "WRITING").touch()
        time.sleep(120)  # killed here, after the weights, before the card and results


def test_export_is_moved_into_place_only_complete_and_results_last(tmp_path, monkeypatch):
    fake_checkpoint(tmp_path, "step_3", 3)
    with pytest.raises(OSError, match="full"), export_atomically(tmp_path) as folder:
        (folder / "model.safetensors").write_bytes(b"weights")
        raise OSError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_3"]  # nothing of it, no temporary folder

    process = multiprocessing.get_context("fork").Process(target=_killed_exporter, args=(str(tmp_path),))
    process.start()
    deadline = time.time() + 60
    while not (tmp_path / ".tmp_export" / "WRITING").exists():
        assert process.is_alive() and time.time() < deadline, "the exporter never started writing"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    assert not (tmp_path / "model.safetensors").exists()
    assert resolve_resume_path("latest", str(tmp_path)).name == "step_3"  # the resume ignores the leftover

    moved = []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (moved.append(Path(dst).name), replace(src, dst)))
    with export_atomically(tmp_path) as folder:  # replaces the leftover
        for name in ("all_results.json", "train_log.json", "README.md", "config.json", "model.safetensors"):
            (folder / name).write_text(name)
    assert moved[-3:] == ["model.safetensors", "train_log.json", "all_results.json"]
    assert sorted(moved[:2]) == ["README.md", "config.json"]
    assert (
        not (tmp_path / ".tmp_export").exists() and (tmp_path / "all_results.json").read_text() == "all_results.json"
    )

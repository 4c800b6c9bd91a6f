"""The Hub tools under concurrency: two processes exporting into one folder, or installing the same folder into
one cache, never leave a half-written result (sequential idempotence of `hub install` is tested in test_hub.py)."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest
import torch

from pacavit import PaCaViTForImageClassification, hub

from helpers import tiny_config


def _listing_of(path: Path):
    """The names in `path`, or None when `path` is absent or was swapped out while being listed."""
    try:
        folder = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return None
    try:
        names = frozenset(os.listdir(folder))
        return names if os.fstat(folder).st_ino == os.stat(path).st_ino else None
    except FileNotFoundError:
        return None
    finally:
        os.close(folder)


def _in_processes(target, args, copies=2):
    """Start `copies` forked processes running `target(*args)`; yield while any runs; then check they succeeded."""
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=target, args=args) for _ in range(copies)]
    for worker in workers:
        worker.start()
    while any(worker.is_alive() for worker in workers):
        yield
    for worker in workers:
        worker.join()
        assert worker.exitcode == 0, f"a concurrent writer failed (exit code {worker.exitcode})"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("hub_source") / "model"
    torch.manual_seed(0)
    PaCaViTForImageClassification(tiny_config()).save_pretrained(path)
    return path


def _export_repeatedly(src, dst, times):
    torch.set_num_threads(1)
    for _ in range(times):
        hub.export_folder(src, dst, overwrite=True)


def _install_repeatedly(folder, cache, times):
    for _ in range(times):
        hub.install_to_cache(folder, "ivmcl/pacavit-tiny", cache_dir=cache)


def test_concurrent_exports_into_one_folder_never_leave_a_half_written_result(source, tmp_path):
    dst = tmp_path / "export"
    hub.export_folder(source, dst)
    complete = frozenset(os.listdir(dst))
    seen = set()
    for _ in _in_processes(_export_repeatedly, (source, dst, 1)):
        names = _listing_of(dst)
        if names is not None:
            seen.add(names)
    assert seen <= {complete}, seen
    assert frozenset(os.listdir(dst)) == complete
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_concurrent_installs_of_one_folder_give_one_complete_snapshot(source, tmp_path):
    from huggingface_hub import scan_cache_dir

    folder = hub.export_folder(source, tmp_path / "export")
    cache = tmp_path / "cache"
    expected = frozenset(hub.files_to_upload(folder))
    snapshots = cache / "models--ivmcl--pacavit-tiny" / "snapshots"
    seen = set()
    for _ in _in_processes(_install_repeatedly, (folder, cache, 4)):
        if snapshots.is_dir():
            for snapshot in list(snapshots.iterdir()):
                names = _listing_of(snapshot)
                if names is not None and not snapshot.name.startswith("."):
                    seen.add(names)
    assert seen <= {expected}, seen
    [snapshot] = [p for p in snapshots.iterdir()]  # one snapshot, no temporary folders
    assert frozenset(os.listdir(snapshot)) == expected
    assert all((snapshot / name).resolve().is_file() for name in expected)  # every link points at a whole blob
    assert not [p.name for p in (snapshot.parent.parent / "blobs").iterdir() if ".incomplete" in p.name]
    info = scan_cache_dir(cache)
    [repo] = info.repos
    assert not info.warnings and [r.commit_hash for r in repo.revisions] == [snapshot.name]
    assert hub.install_to_cache(folder, "ivmcl/pacavit-tiny", cache_dir=cache) == snapshot  # and still idempotent

"""The offline Hugging Face cache: `python -m pacavit.hub install DIR --repo-id ORG/NAME` lays an exported folder
out exactly as `huggingface_hub` lays out a download, so that `from_pretrained("ORG/NAME")` finds it with
`HF_HUB_OFFLINE=1` (and `hf cache ls` / `scan_cache_dir()` see it like any download)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from huggingface_hub import constants
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import validate_repo_id

from ..safe_io import atomic_directory
from .folder import HubFolderError, model_files


def _git_blob_sha1(data: bytes) -> str:
    """The etag the Hub gives a file stored in git (not LFS): git's blob hash."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _is_lfs(path: Path) -> bool:
    """Files the Hub stores with git LFS (its default .gitattributes: weights and anything over 10 MB)."""
    return path.suffix in (".safetensors", ".bin", ".pth", ".pt", ".onnx", ".pt2") or path.stat().st_size > 10 << 20


def install_to_cache(
    folder: str | Path, repo_id: str, cache_dir: str | Path | None = None, revision: str = "main"
) -> Path:
    """Place `folder` in the Hugging Face cache exactly as `huggingface_hub` lays out a download, so that
    `from_pretrained(repo_id)` resolves it with HF_HUB_OFFLINE=1: `models--<org>--<name>/blobs/<etag>`,
    `snapshots/<commit>/<file>` (relative symlinks to the blobs; copies where symlinks are not available) and
    `refs/<revision>` holding the commit. The commit is a hash of the content, so installing the same folder
    again changes nothing; the snapshot is built in a temporary folder and renamed into place. Returns the
    snapshot folder.
    """
    folder = Path(folder)
    validate_repo_id(repo_id)
    if "/" not in repo_id:
        raise HubFolderError(f"repo id {repo_id!r} needs an owner: e.g. ivmcl/pacavit-base.")
    files = model_files(folder, "install")
    cache = Path(cache_dir or constants.HF_HUB_CACHE)
    repo = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "snapshots").mkdir(exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)

    etags, commit = {}, hashlib.sha1()
    for rel in files:
        data = (folder / rel).read_bytes()
        etag = hashlib.sha256(data).hexdigest() if _is_lfs(folder / rel) else _git_blob_sha1(data)
        etags[rel] = etag
        commit.update(f"{rel}\0{etag}\n".encode())
        blob = repo / "blobs" / etag
        if not blob.exists():
            partial = blob.with_name(f"{etag}.incomplete-{os.getpid()}")
            partial.write_bytes(data)
            os.replace(partial, blob)
    commit_hash = commit.hexdigest()
    snapshot = repo / "snapshots" / commit_hash
    if not snapshot.is_dir():  # the same content gives the same commit: an existing snapshot is complete
        with atomic_directory(snapshot) as tmp:
            for rel, etag in etags.items():
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                blob = repo / "blobs" / etag
                try:
                    target.symlink_to(os.path.relpath(blob, target.parent))
                except OSError:  # no symlinks (e.g. Windows without developer mode): huggingface_hub copies too
                    shutil.copyfile(blob, target)
    ref = repo / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    partial = ref.with_name(f".{ref.name}.tmp-{os.getpid()}")
    partial.write_text(commit_hash)  # no newline, as huggingface_hub writes it
    os.replace(partial, ref)
    return snapshot


__all__ = ["install_to_cache"]

"""The offline Hugging Face cache: `python -m pacavit.hub install DIR --repo-id ORG/NAME` lays an exported folder
out exactly as `huggingface_hub` lays out a download, so that `from_pretrained("ORG/NAME")` finds it with
`HF_HUB_OFFLINE=1` (and `hf cache ls` / `scan_cache_dir()` see it like any download).

Nothing is written outside the cache folder: the repo id is checked with huggingface_hub's own rules, the revision
with git's ref-name rules (`pacavit.hub.folder.check_revision`), and the resolved paths of the repository folder
and the ref file must lie inside the cache folder."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from huggingface_hub import constants
from huggingface_hub.file_download import repo_folder_name

from ..safe_io import atomic_directory
from .folder import HubFolderError, check_model_folder, check_repo_id, check_revision

CACHE_DIR = "cache folder (--cache-dir)"  # how the cache is named in messages


def _git_blob_sha1(data: bytes) -> str:
    """The etag the Hub gives a file stored in git (not LFS): git's blob hash."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _is_lfs(path: Path) -> bool:
    """Files the Hub stores with git LFS (its default .gitattributes: weights and anything over 10 MB)."""
    return path.suffix in (".safetensors", ".bin", ".pth", ".pt", ".onnx", ".pt2") or path.stat().st_size > 10 << 20


def _check_cache_dir(cache: Path, folder: Path) -> None:
    """The cache folder must be a folder (or creatable under one), writable, and outside the installed folder."""
    if cache.exists() and not cache.is_dir():
        raise HubFolderError(f"The {CACHE_DIR} {cache} is a file, not a folder: give a folder (or leave it out).")
    if not cache.exists():
        ancestor = next(parent for parent in cache.absolute().parents if parent.exists())
        if not ancestor.is_dir():
            raise HubFolderError(
                f"The {CACHE_DIR} {cache} cannot be created: {ancestor} is a file, not a folder. Give a path under "
                "a folder."
            )
    else:
        ancestor = cache
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise HubFolderError(
            f"The {CACHE_DIR} {cache} cannot be written: {ancestor} is not writable (permission denied or a "
            "read-only file system). Give a folder you can write to."
        )
    if cache.resolve().is_relative_to(folder.resolve()):
        raise HubFolderError(
            f"The {CACHE_DIR} {cache} is inside the folder to install, {folder}: the cache would become part of "
            "the model folder (and of every later upload). Give a cache folder outside it."
        )


def _inside(path: Path, root: Path, what: str, value: str) -> None:
    if not path.resolve().is_relative_to(root.resolve()):
        raise HubFolderError(
            f"{what} {value!r} would write {path.resolve()}, outside the {CACHE_DIR} {root.resolve()}; refusing."
        )


def _check_ref(refs: Path, revision: str) -> None:
    """The ref file must not clash with refs installed before (a ref file where a folder is needed, or the
    reverse)."""
    ref = refs / revision
    for parent in [ref, *ref.parents]:
        if parent == refs:
            break
        if parent != ref and parent.exists() and not parent.is_dir():
            taken = parent.relative_to(refs).as_posix()
            raise HubFolderError(
                f"revision {revision!r} (--revision) clashes with the installed revision {taken!r}: a ref cannot be "
                "both a revision and a folder of revisions. Choose another revision name."
            )
    if ref.is_dir():
        raise HubFolderError(
            f"revision {revision!r} (--revision) clashes with installed revisions under it ({revision}/...). "
            "Choose another revision name."
        )


def install_to_cache(
    folder: str | Path, repo_id: str, cache_dir: str | Path | None = None, revision: str = "main"
) -> Path:
    """Place `folder` in the Hugging Face cache exactly as `huggingface_hub` lays out a download, so that
    `from_pretrained(repo_id)` resolves it with HF_HUB_OFFLINE=1: `models--<org>--<name>/blobs/<etag>`,
    `snapshots/<commit>/<file>` (relative symlinks to the blobs; copies where symlinks are not available) and
    `refs/<revision>` holding the commit. The commit is a hash of the content, so installing the same folder
    again changes nothing; the snapshot is built in a temporary folder and renamed into place. Returns the
    snapshot folder.

    Checked first, each a `HubFolderError` naming the flag or file: `repo_id` (huggingface_hub's rules, with an
    owner), `revision` (a git ref name, not a commit hash), the folder (`check_model_folder`: a PaCa-ViT model
    folder with readable config and weights and working remote code), `cache_dir` (a writable folder outside
    `folder`), and that every path written resolves inside the cache folder.
    """
    folder = Path(folder)
    check_repo_id(repo_id, owner_required=True)
    check_revision(revision)
    files = check_model_folder(folder, "install", "FOLDER")
    cache = Path(cache_dir or constants.HF_HUB_CACHE)
    _check_cache_dir(cache, folder)
    repo = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    ref = repo / "refs" / revision
    _inside(repo, cache, "repo id", repo_id)
    _inside(ref, cache, "revision", revision)  # resolved: a symbolic link inside the cache cannot lead out either
    _check_ref(repo / "refs", revision)
    try:
        return _install(folder, files, repo, ref)
    except OSError as error:
        if isinstance(error, ValueError):  # OutputFolderError: names the snapshot folder already
            raise
        raise HubFolderError(
            f"Cannot write the {CACHE_DIR} {cache}: {error.strerror or error} ({error.filename}). Give a folder you "
            "can write to, with free space."
        ) from error


def _install(folder: Path, files: list[str], repo: Path, ref: Path) -> Path:
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
        with atomic_directory(snapshot, f"snapshot folder of the {CACHE_DIR}") as tmp:
            for rel, etag in etags.items():
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                blob = repo / "blobs" / etag
                try:
                    target.symlink_to(os.path.relpath(blob, target.parent))
                except OSError:  # no symlinks (e.g. Windows without developer mode): huggingface_hub copies too
                    shutil.copyfile(blob, target)
    ref.parent.mkdir(parents=True, exist_ok=True)
    partial = ref.with_name(f".{ref.name}.tmp-{os.getpid()}")
    try:
        partial.write_text(commit_hash)  # no newline, as huggingface_hub writes it
        os.replace(partial, ref)
    finally:
        partial.unlink(missing_ok=True)  # gone once renamed; removed when the write failed
    return snapshot


__all__ = ["install_to_cache"]

"""Pushing to the Hugging Face Hub: a fail-early check before a long run, and the upload of a folder.

The training scripts call `hub_preflight` before training (a run that cannot be pushed fails in seconds, not
after hours) and `push` at the end; `python -m pacavit.hub push` calls `push`. Both upload exactly
`files_to_upload(folder)`: the model, its processor, remote code and card, never checkpoints or logs.
`hub_preflight` speaks to the training scripts (SystemExit naming --push_to_hub / --hub_token); `push` raises
`HubFolderError` with what to do, which the hub CLI prints as one `error:` line.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi, constants

from .folder import HubFolderError, check_model_folder, check_repo_id, check_revision, default_repo_id


class RepoCreationError(HubFolderError):
    """The repository cannot be created or reached; `cause` says which and why, the caller adds what to do."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


def create_repo(api: HfApi, repo_id: str, private: bool) -> str:
    """`api.create_repo(exist_ok=True)` (idempotent); the full repo id, or `RepoCreationError`."""
    try:
        return api.create_repo(repo_id, exist_ok=True, private=private).repo_id
    except Exception as error:  # no network, no token, no permission, ...
        raise RepoCreationError(
            f"Cannot create/access the Hub repository {repo_id!r} ({type(error).__name__}: {error})."
        ) from error


def hub_preflight(
    output_dir: str | Path, repo_id: str | None = None, token: str | None = None, private: bool = False
) -> str:
    """Check that pushing can work and create the repository (idempotent); returns the full repo id.

    Raises SystemExit with what to do instead when offline mode is on (HF_HUB_OFFLINE=1), or when the
    repository cannot be created or reached (no network, no token, no permission).
    """
    repo_id = repo_id or default_repo_id(output_dir)
    later = f"run without --push_to_hub and upload later with `hf upload {repo_id} {output_dir}`."
    if constants.HF_HUB_OFFLINE:
        raise SystemExit(
            "--push_to_hub needs the Hugging Face Hub, but offline mode is on (HF_HUB_OFFLINE=1). Unset it, "
            f"or {later}"
        )
    try:
        return create_repo(HfApi(token=token), repo_id, private)
    except RepoCreationError as error:
        raise SystemExit(
            f"--push_to_hub: {error.cause} Check the network connection and your token "
            f"(`hf auth login` or --hub_token), or {later}"
        ) from error


def push(
    folder: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload PaCa-ViT model",
    revision: str | None = None,
    dry_run: bool = False,
) -> list[str]:
    """Upload exactly `files_to_upload(folder)` to the model repository `repo_id` (created if missing).

    `dry_run` returns (and the CLI prints) the list without touching the network. Checked first, each a
    `HubFolderError` naming the flag or file: `repo_id` (huggingface_hub's rules), `revision` (a git ref name),
    an empty `commit_message`, the folder (`check_model_folder`: a PaCa-ViT model folder with readable config and
    weights and working remote code). Offline mode (HF_HUB_OFFLINE=1), a repository that cannot be created or
    reached and a failed upload are `HubFolderError`s saying what to do.
    """
    check_repo_id(repo_id)
    if revision is not None:
        check_revision(revision)
    if not isinstance(commit_message, str) or not commit_message.strip():
        raise HubFolderError("The commit message (--commit-message) is empty: give one.")
    files = check_model_folder(folder, "push", "FOLDER")
    if dry_run:
        return files
    if constants.HF_HUB_OFFLINE:
        raise HubFolderError(
            f"Offline mode is on (HF_HUB_OFFLINE=1), so nothing can be uploaded to {repo_id!r}. Unset "
            "HF_HUB_OFFLINE on a machine with network access, or list the files with a dry run "
            "(`python -m pacavit.hub push FOLDER --repo-id ID --dry-run`)."
        )
    api = HfApi(token=token)
    try:
        repo_id = create_repo(api, repo_id, private)
    except RepoCreationError as error:
        raise HubFolderError(
            f"{error.cause} Check the network connection and your token (`hf auth login`, or pass one), or upload "
            f"later with `hf upload {repo_id} {folder}`."
        ) from error
    try:
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            commit_message=commit_message,
            revision=revision,
            allow_patterns=files,  # exactly the dry-run list
        )
    except Exception as error:  # the network, the token's rights, a revision that does not exist, ...
        raise HubFolderError(
            f"Uploading {folder} to {repo_id!r} failed ({type(error).__name__}: {error}). Check the network "
            "connection, your token's write access and that the revision (a branch) exists, then push again."
        ) from error
    return files


__all__ = ["hub_preflight", "push"]

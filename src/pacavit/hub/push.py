"""Pushing to the Hugging Face Hub: a fail-early check before a long run, and the upload of a folder.

The training scripts call `hub_preflight` before training (a run that cannot be pushed fails in seconds, not
after hours) and `push` at the end; `python -m pacavit.hub push` calls `push`. Both upload exactly
`files_to_upload(folder)`: the model, its processor, remote code and card, never checkpoints or logs.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi, constants

from .folder import default_repo_id, model_files


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
        return HfApi(token=token).create_repo(repo_id, exist_ok=True, private=private).repo_id
    except Exception as error:  # no network, no token, no permission, ...
        raise SystemExit(
            f"--push_to_hub: cannot create/access the Hub repository {repo_id!r} "
            f"({type(error).__name__}: {error}). Check the network connection and your token "
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

    `dry_run` returns (and the CLI prints) the list without touching the network. Offline mode
    (HF_HUB_OFFLINE=1) fails at once with what to do.
    """
    files = model_files(folder, "push")
    if dry_run:
        return files
    if constants.HF_HUB_OFFLINE:
        raise SystemExit(
            f"pacavit.hub push: offline mode is on (HF_HUB_OFFLINE=1), so nothing can be uploaded to {repo_id!r}. "
            "Unset HF_HUB_OFFLINE on a machine with network access, or use --dry-run to list the files."
        )
    hub_preflight(folder, repo_id, token=token, private=private)
    HfApi(token=token).upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=commit_message,
        revision=revision,
        allow_patterns=files,  # exactly the dry-run list
    )
    return files


__all__ = ["hub_preflight", "push"]

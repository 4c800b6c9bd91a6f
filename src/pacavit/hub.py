"""Hugging Face Hub helpers: fail-early checks before a long run, and pushing a finished output folder.

The training scripts call `hub_preflight` before training (so a run that cannot be pushed fails in seconds,
not after hours) and `push_folder` at the end. Nothing here runs unless --push_to_hub is given.
"""

from __future__ import annotations

from pathlib import Path

# What a training output folder holds that is not part of the model: checkpoints (complete or being
# written), TensorBoard logs, Accelerate RNG states.
TRAINING_ARTIFACTS = ("step_*", "epoch_*", ".tmp_*", "runs/*", "*/random_states_*")


def default_repo_id(output_dir: str | Path) -> str:
    """The repository name used when none is given: the output folder's name."""
    return Path(output_dir).absolute().name


def hub_preflight(
    output_dir: str | Path, repo_id: str | None = None, token: str | None = None, private: bool = False
) -> str:
    """Check that pushing can work and create the repository (idempotent); returns the full repo id.

    Raises SystemExit with what to do instead when offline mode is on (HF_HUB_OFFLINE=1), or when the
    repository cannot be created or reached (no network, no token, no permission).
    """
    from huggingface_hub import HfApi, constants

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


def push_folder(
    repo_id: str,
    folder: str | Path,
    token: str | None = None,
    commit_message: str = "Upload model",
    ignore_patterns=TRAINING_ARTIFACTS,
):
    """Upload `folder` to the model repository `repo_id`, leaving out training artifacts by default."""
    from huggingface_hub import HfApi

    return HfApi(token=token).upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=commit_message,
        ignore_patterns=list(ignore_patterns),
    )

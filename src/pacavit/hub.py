"""Hugging Face Hub helpers: fail-early checks before a long run, and pushing a finished output folder.

The training scripts call `hub_preflight` before training (so a run that cannot be pushed fails in seconds,
not after hours) and `push_folder` at the end. Nothing here runs unless --push_to_hub is given.
"""

from __future__ import annotations

import os
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


# ============================================================================================================
# Export (Hub-ready folder with remote code), offline cache install and push: `python -m pacavit.hub ...`
# ============================================================================================================
MODEL_WEIGHTS = "model.safetensors"
PREPROCESSOR_CONFIG = "preprocessor_config.json"


class HubFolderError(ValueError):
    """A folder that cannot be exported, installed or pushed; the message says what to do."""


def _package():
    import pacavit

    return pacavit


def _module_stem(cls) -> str:
    return cls.__module__.rsplit(".", 1)[-1]


def auto_map_for(config_class) -> dict[str, str]:
    """Every Auto class registered for `config_class` (on `import pacavit`), as `module.Class` of the flat
    remote-code files: `save_pretrained` writes only the saved class, which makes the others fail with
    trust_remote_code. Exact config types only, as the Auto mappings match them."""
    import transformers

    _package()  # registrations
    auto_map = {"AutoConfig": f"{_module_stem(config_class)}.{config_class.__name__}"}
    names = sorted(n for n in dir(transformers) if n.startswith("AutoModel") or n == "AutoBackbone")
    for name in names:
        mapping = getattr(getattr(transformers, name), "_model_mapping", None)
        model_class = mapping.get(config_class, None) if mapping is not None else None
        if model_class is not None and model_class.__module__.startswith("pacavit."):
            auto_map[name] = f"{_module_stem(model_class)}.{model_class.__name__}"
    return auto_map


def remote_code_files(classes) -> list[Path]:
    """The source files of `classes` and everything they reach by flat relative imports (found as transformers
    does when it loads remote code)."""
    import inspect

    from transformers.dynamic_module_utils import get_relative_import_files

    files: dict[str, Path] = {}
    for cls in classes:
        source = Path(inspect.getfile(cls))
        for path in [source, *map(Path, get_relative_import_files(source))]:
            files[path.name] = path
    return [files[name] for name in sorted(files)]


def check_remote_code(folder: str | Path) -> list[str]:
    """Problems that would break the folder as Hub remote code: a relative import that is not a single-dot
    import of a sibling file in the folder, or an absolute import of our package (`pacavit`), which a user
    without it does not have. Returns the problems (empty: fine)."""
    import ast

    folder = Path(folder)
    problems = []
    present = {p.stem for p in folder.glob("*.py")}
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level:
                module = node.module or ""
                if node.level != 1 or not module or "." in module:
                    problems.append(f"{path.name}:{node.lineno}: relative import must be `from .<sibling> import`")
                elif module not in present:
                    problems.append(f"{path.name}:{node.lineno}: imports .{module}, which is not in the folder")
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in names:
                    if name.split(".")[0] in ("pacavit", "pacavit_openmp_guard"):
                        problems.append(f"{path.name}:{node.lineno}: imports {name}, which remote-code users lack")
    return problems


def _model_class(config):
    """Our model class named by `config.architectures` (what `save_pretrained` wrote)."""
    package = _package()
    names = config.architectures or []
    for name in names:
        cls = getattr(package, name, None)
        if cls is not None:
            return cls
    raise HubFolderError(
        f"config.json names the architectures {names}, none of which is a pacavit model class. Export folders "
        "written by pacavit (save_pretrained, pacavit.convert, the training scripts)."
    )


def _default_image_processor(model, folder: Path) -> None:
    """The image processor a model of this kind was evaluated with, where the source folder has none."""
    name = type(model).__name__
    if name == "PaCaViTForImageClassification":
        from .convert import save_image_processor

        save_image_processor(folder, model.config)
    elif name == "PaCaViTForSemanticSegmentation":
        from .convert_segmentation import save_segmentation_image_processor

        save_segmentation_image_processor(folder)
    elif name == "PaCaViTForInstanceSegmentation":
        _package().PaCaViTMaskRCNNImageProcessor().save_pretrained(folder)
    # base models and backbones take tensors: no processor


def _pipeline_tag(model) -> str | None:
    return {
        "PaCaViTForImageClassification": "image-classification",
        "PaCaViTForSemanticSegmentation": "image-segmentation",
        "PaCaViTForInstanceSegmentation": "object-detection",
        "PaCaViTModel": "image-feature-extraction",
        "PaCaViTBackbone": "image-feature-extraction",
    }.get(type(model).__name__)


def _write_generic_card(folder: Path, model, repo_id: str | None) -> None:
    from .model_card import write_model_card

    name = (repo_id or folder.name).split("/")[-1]
    task = _pipeline_tag(model) or "image-feature-extraction"
    params = sum(p.numel() for p in model.parameters())
    write_model_card(
        folder / "README.md",
        model_name=name,
        task=task,
        dataset_name="unknown",
        metrics=[],
        tags=["custom_code"],
        intro=(
            f"A PaCa-ViT model (`{type(model).__name__}`, {params / 1e6:.2f}M parameters) exported with "
            "`python -m pacavit.hub export`. Load it with `trust_remote_code=True`, or `import pacavit` first."
        ),
        sections={},
    )


def export_folder(
    src: str | Path, dst: str | Path, repo_id: str | None = None, card: str | Path | None = None, overwrite=False
) -> Path:
    """Write a Hub-ready folder `dst` from a pacavit model folder `src` (converted or a training output).

    `dst` gets: `config.json` with the complete `auto_map`, `model.safetensors` (re-saved from a strict load),
    the image processor config (the source's, or the task's default), the flat model files for remote code,
    and `README.md`: `card` if given, else the released-checkpoint card when `repo_id` is one of them
    (`pacavit.release_cards`), else the source's README, else a generic card. Written to a temporary sibling
    folder and swapped into place (`pacavit.safe_io.atomic_directory`), so `dst` is never half-written.
    """
    import json
    import shutil

    from transformers import AutoConfig, AutoImageProcessor

    from .safe_io import atomic_directory

    src, dst = Path(src), Path(dst)
    if dst.exists() and not overwrite:
        raise HubFolderError(f"{dst} exists; pass --overwrite to replace it.")
    if not (src / "config.json").is_file():
        raise HubFolderError(f"{src} has no config.json: export a folder written by save_pretrained.")
    _package()
    config = AutoConfig.from_pretrained(src)
    model_class = _model_class(config)
    model, info = model_class.from_pretrained(src, output_loading_info=True)
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise HubFolderError(f"The weights in {src} do not fit {model_class.__name__}: {bad}")
    with atomic_directory(dst) as tmp:  # written beside dst, swapped into place when complete
        model.save_pretrained(tmp, safe_serialization=True)
        for stray in tmp.glob("*.py"):  # save_pretrained's own code copy; the full set is written below
            stray.unlink()
        if (src / PREPROCESSOR_CONFIG).is_file():
            AutoImageProcessor.from_pretrained(src).save_pretrained(tmp)
        else:
            _default_image_processor(model, tmp)
        config_file = tmp / "config.json"
        saved = json.loads(config_file.read_text())
        auto_map = auto_map_for(type(config))
        # Our own image processor (Mask R-CNN) is found through config.json's auto_map, which its model's
        # save_pretrained writes; its preprocessor_config.json deliberately names no class (see
        # PaCaViTMaskRCNNImageProcessor.save_pretrained), so nothing is added there.
        processor_ref = (saved.get("auto_map") or {}).get("AutoImageProcessor")
        processor_config = json.loads((tmp / PREPROCESSOR_CONFIG).read_text()) if (tmp / PREPROCESSOR_CONFIG).is_file() else {}
        named = getattr(_package(), processor_config.get("image_processor_type", ""), None)
        if named is not None:  # a processor class of ours named in the file
            processor_ref = f"{_module_stem(named)}.{named.__name__}"
        if processor_ref:
            auto_map["AutoImageProcessor"] = processor_ref
        package = _package()
        classes = [type(config), model_class] + [getattr(package, ref.split(".")[1]) for ref in auto_map.values()]
        for path in remote_code_files(classes):
            shutil.copyfile(path, tmp / path.name)
        problems = check_remote_code(tmp)
        if problems:
            raise HubFolderError("The model files do not work as Hub remote code:\n  " + "\n  ".join(problems))
        saved["auto_map"] = auto_map
        config_file.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
        if card is not None:
            shutil.copyfile(card, tmp / "README.md")
        elif repo_id is not None and _release_card(repo_id) is not None:
            (tmp / "README.md").write_text(_release_card(repo_id))
        elif (src / "README.md").is_file():
            shutil.copyfile(src / "README.md", tmp / "README.md")
        else:
            _write_generic_card(tmp, model, repo_id)
    return dst


def _release_card(repo_id: str) -> str | None:
    from .release_cards import card_for_hub_id

    return card_for_hub_id(repo_id)


# ------------------------------------------------------------------------------------------------------------
# Offline cache install
# ------------------------------------------------------------------------------------------------------------
def _git_blob_sha1(data: bytes) -> str:
    import hashlib

    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _is_lfs(path: Path) -> bool:
    """Files the Hub stores with git LFS (its default .gitattributes: weights and anything over 10 MB)."""
    return path.suffix in (".safetensors", ".bin", ".pth", ".pt", ".onnx", ".pt2") or path.stat().st_size > 10 << 20


def files_to_upload(folder: str | Path) -> list[str]:
    """Relative paths (posix, sorted) of what `push` uploads and `install` places: everything in the folder but
    hidden files, `__pycache__` and training artifacts (checkpoints, logs, RNG states)."""
    from fnmatch import fnmatch

    folder = Path(folder)
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or any(part.startswith(".") or part == "__pycache__" for part in rel.split("/")):
            continue
        if any(fnmatch(rel, pattern) or fnmatch(rel.split("/")[0], pattern) for pattern in TRAINING_ARTIFACTS):
            continue
        out.append(rel)
    return out


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
    import hashlib
    import shutil

    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name
    from huggingface_hub.utils import validate_repo_id

    from .safe_io import atomic_directory

    folder = Path(folder)
    validate_repo_id(repo_id)
    if "/" not in repo_id:
        raise HubFolderError(f"repo id {repo_id!r} needs an owner: e.g. ivmcl/pacavit-base.")
    files = files_to_upload(folder)
    if "config.json" not in files:
        raise HubFolderError(f"{folder} has no config.json: install a folder written by `pacavit.hub export`.")
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


# ------------------------------------------------------------------------------------------------------------
# Push
# ------------------------------------------------------------------------------------------------------------
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
    from huggingface_hub import constants

    folder = Path(folder)
    files = files_to_upload(folder)
    if "config.json" not in files:
        raise HubFolderError(f"{folder} has no config.json: push a folder written by `pacavit.hub export`.")
    if dry_run:
        return files
    if constants.HF_HUB_OFFLINE:
        raise SystemExit(
            f"pacavit.hub push: offline mode is on (HF_HUB_OFFLINE=1), so nothing can be uploaded to {repo_id!r}. "
            "Unset HF_HUB_OFFLINE on a machine with network access, or use --dry-run to list the files."
        )
    hub_preflight(folder, repo_id, token=token, private=private)
    from huggingface_hub import HfApi

    HfApi(token=token).upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=commit_message,
        revision=revision,
        allow_patterns=files,  # exactly the dry-run list
    )
    return files


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m pacavit.hub",
        description="Export a pacavit model folder for the Hub, install it in the offline cache, or push it.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="SRC (converted or training output folder) -> Hub-ready DIR")
    export.add_argument("src")
    export.add_argument("dst")
    export.add_argument("--repo-id", help="the Hub id; a released checkpoint's id selects its model card")
    export.add_argument("--card", help="README.md to use as the model card")
    export.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    install = commands.add_parser("install", help="place an exported DIR in the local Hugging Face cache")
    install.add_argument("folder")
    install.add_argument("--repo-id", required=True)
    install.add_argument("--cache-dir", help="default: the huggingface_hub cache ($HF_HUB_CACHE / $HF_HOME/hub)")
    install.add_argument("--revision", default="main")
    push_parser = commands.add_parser("push", help="upload an exported DIR with huggingface_hub")
    push_parser.add_argument("folder")
    push_parser.add_argument("--repo-id", required=True)
    push_parser.add_argument("--dry-run", action="store_true", help="list the files that would be uploaded")
    push_parser.add_argument("--private", action="store_true")
    push_parser.add_argument("--token")
    push_parser.add_argument("--revision")
    push_parser.add_argument("--commit-message", default="Upload PaCa-ViT model")
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            out = export_folder(args.src, args.dst, args.repo_id, args.card, args.overwrite)
            print(f"exported {args.src} -> {out}: " + ", ".join(files_to_upload(out)))
        elif args.command == "install":
            snapshot = install_to_cache(args.folder, args.repo_id, args.cache_dir, args.revision)
            print(f"installed {args.folder} as {args.repo_id}@{args.revision}: {snapshot}")
        else:
            files = push(
                args.folder, args.repo_id, args.token, args.private, args.commit_message, args.revision, args.dry_run
            )
            folder = Path(args.folder)
            if args.dry_run:
                print(f"dry run: would upload {len(files)} files to {args.repo_id}:")
            else:
                print(f"uploaded {len(files)} files to {args.repo_id}:")
            for rel in files:
                print(f"  {rel}  ({(folder / rel).stat().st_size} bytes)")
    except (HubFolderError, OSError) as error:
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    main()

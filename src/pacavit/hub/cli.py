"""`python -m pacavit.hub export|install|push`: a Hub-ready folder, the offline cache, the upload.

Every error the tools know (a folder that is not a PaCa-ViT model folder, a corrupt config.json or truncated
weights, an invalid --repo-id / --revision, a --cache-dir or DST that cannot be written, offline mode for a push,
...) is one `error:` line naming the file or flag, and exit status 2."""

from __future__ import annotations

import argparse
from pathlib import Path

from .cache import install_to_cache
from .export import export_folder
from .folder import files_to_upload
from .push import push


def build_parser() -> argparse.ArgumentParser:
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
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
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
    except ValueError as error:  # HubFolderError, OutputFolderError, CheckpointFileError: the message says it all
        parser.exit(2, f"error: {error}\n")
    except OSError as error:  # what no check foresaw (a disk failing while reading, ...): still one line
        where = f"{error.filename}: " if error.filename else ""
        parser.exit(2, f"error: {where}{error.strerror or error}\n")


__all__ = ["build_parser", "main"]

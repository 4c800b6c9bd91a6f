"""Convert original PaCa-ViT checkpoints (timm, mmseg and mmdet layouts) to pacavit folders.

    python -m pacavit.convert --checkpoint IMNET_224_pacavit_tiny_p2cconv_100_0.pth --output-dir pacavit-tiny
    python -m pacavit.convert --checkpoint IMNET_224_pacavit_tiny_p2cconv_100_0.pth \
        --preset pacavit-tiny --task image-classification --output-dir pacavit-tiny

Without --preset/--original-config the architecture, task and head come from the released file's name, checked
strictly against the weights. The conversion is strict: every source key is either mapped or dropped for a stated
reason (the dropped keys are listed), and a key that no rule understands, a missing target key or a shape mismatch
is an error that names the keys.

Errors in the inputs (a checkpoint file that is missing, truncated or not a checkpoint, an --original-config that
is not JSON, an --output-dir that cannot be written or holds the checkpoint, ...) are one `error:` line naming the
file or flag, and exit status 2.
"""

from __future__ import annotations

import argparse

from .common import IMAGE_CLASSIFICATION, TASKS, check_output_dir, load_original_config
from .dispatch import convert_by_name, convert_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pacavit.convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", required=True, help="original .pth (timm, mmseg or mmdet layout), or its .safetensors"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--preset", help="preset or original builder name, e.g. pacavit-tiny / pacavit_tiny_p2cconv_100_0"
    )
    source.add_argument("--original-config", help="JSON with the original constructor kwargs (fixture/manifest form)")
    source.add_argument(
        "--checkpoint-name",
        help="the released file name to read preset/task/head from, for a renamed file "
        "(e.g. upernet_pacavit_tiny_p2cconv_100_0_512x512_160k_ade20k.pth)",
    )
    parser.add_argument(
        "--task", choices=TASKS, default=None, help="default: from the file name, or image-classification"
    )
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--ema", action="store_true", help="convert the EMA weights (state_dict_ema)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_output_dir(args.output_dir, args.checkpoint, *([args.original_config] if args.original_config else []))
        original = load_original_config(args.original_config) if args.original_config else None
        if args.preset is None and original is None:
            convert_by_name(args.checkpoint, args.output_dir, args.checkpoint_name, args.task, args.ema)
        else:
            task = args.task or IMAGE_CLASSIFICATION
            convert_checkpoint(args.checkpoint, args.output_dir, task, args.preset, original, args.ema)
    except ValueError as error:  # the converter's and safe_io's errors, unknown presets: a message, no traceback
        parser.exit(2, f"error: {error}\n")
    except OSError as error:  # what no check foresaw (a disk failing while reading, ...): still one line
        parser.exit(2, f"error: {error.filename or args.output_dir}: {error.strerror or error}\n")


__all__ = ["build_parser", "main"]

"""Convert original PaCa-ViT checkpoints (timm, mmseg and mmdet layouts) to pacavit folders.

    python -m pacavit.convert --checkpoint IMNET_224_pacavit_tiny_p2cconv_100_0.pth --output-dir pacavit-tiny
    python -m pacavit.convert --checkpoint IMNET_224_pacavit_tiny_p2cconv_100_0.pth \
        --preset pacavit-tiny --task image-classification --output-dir pacavit-tiny

Without --preset/--original-config the architecture, task and head come from the released file's name, checked
strictly against the weights. The conversion is strict: every source key is either mapped or dropped for a stated
reason (the dropped keys are listed), and a key that no rule understands, a missing target key or a shape mismatch
is an error that names the keys.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import IMAGE_CLASSIFICATION, TASKS
from .dispatch import convert_by_name, convert_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pacavit.convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="original .pth (timm, mmseg or mmdet layout)")
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
    original = json.loads(Path(args.original_config).read_text()) if args.original_config else None
    try:
        if args.preset is None and original is None:
            convert_by_name(args.checkpoint, args.output_dir, args.checkpoint_name, args.task, args.ema)
        else:
            task = args.task or IMAGE_CLASSIFICATION
            convert_checkpoint(args.checkpoint, args.output_dir, task, args.preset, original, args.ema)
    except ValueError as error:  # ConversionError and unknown presets: a message, not a traceback
        parser.exit(2, f"error: {error}\n")


__all__ = ["build_parser", "main"]

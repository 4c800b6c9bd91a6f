#!/usr/bin/env python
"""Draw what a PaCa-ViT's clusters look at: one PNG per figure plus index.html / index.md.

    python examples/visualize_clusters.py --model path/to/model_folder --image cat.png --output_dir clusters
    python examples/visualize_clusters.py --preset pacavit-tiny   # random weights, built-in digit image

Figures (see `pacavit.visualization`):
  cluster_map.png      per stage, the hard cluster map (argmax over clusters, one colour per cluster)
  top_clusters.png     per stage, the top-k clusters (by attention received, area or entropy) as heatmaps
  query_attention.png  per stage, where one query patch reads from: its attention over the clusters
                       back-projected onto the image (sum_m attn[q, m] z[m], mean over heads), and the weights

Without --model/--preset, the model folder of the default training run (examples/run_classification.py)
is used when it exists, else a random-weight pacavit-tiny. Without --image, a scikit-learn handwritten digit
is used.
Hub ids are read from the local cache when HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Where examples/run_classification.py writes its model when run without arguments.
DEFAULT_TRAINED_MODEL = "runs/pacavit-digits"


def parse_query(text: str) -> tuple:
    """'0.5,0.25' -> normalised (row, col) floats; '12,30' -> input pixel (row, col) ints."""
    parts = [p.strip() for p in text.replace(" ", ",").split(",") if p.strip()]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"--query_patch takes 'row,col', got {text!r}")
    try:
        if any("." in p for p in parts):
            values = tuple(float(p) for p in parts)
            if not all(0.0 <= v <= 1.0 for v in values):
                raise argparse.ArgumentTypeError("normalised --query_patch coordinates must lie in [0, 1]")
            return values
        values = tuple(int(p) for p in parts)
        if any(v < 0 for v in values):
            raise argparse.ArgumentTypeError("pixel --query_patch coordinates must be >= 0")
        return values
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--query_patch takes 'row,col' numbers, got {text!r}") from error


def parse_size(text: str):
    """'64' -> 64; '48,64' or '48x64' -> (48, 64)."""
    parts = [p for p in text.lower().replace("x", ",").split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--image_size takes N or H,W, got {text!r}") from error
    if len(values) not in (1, 2) or any(v < 4 for v in values):
        raise argparse.ArgumentTypeError(f"--image_size takes N or H,W (each >= 4), got {text!r}")
    return values[0] if len(values) == 1 else tuple(values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", "--model_name_or_path", dest="model", help="model folder or Hub id")
    source.add_argument("--preset", help="build this preset with random weights (demo), e.g. pacavit-tiny")
    parser.add_argument(
        "--image", help="image file (any size; grayscale is converted to RGB). Default: a scikit-learn digit"
    )
    parser.add_argument("--digit_index", type=int, default=0, help="which scikit-learn digit to use without --image")
    parser.add_argument("--output_dir", default="cluster_figures", help="where the PNGs and index go")
    parser.add_argument(
        "--query_patch",
        type=parse_query,
        default=(0.5, 0.5),
        help="query as 'row,col': floats in [0,1] are normalised coordinates, integers pixels of the image "
        "(default 0.5,0.5)",
    )
    parser.add_argument("--top_k", type=int, default=6, help="clusters per stage in top_clusters.png")
    parser.add_argument("--rank_by", choices=("attention", "area", "entropy"), default="attention")
    parser.add_argument(
        "--image_size",
        type=parse_size,
        default=None,
        help="resize the input to N (square) or H,W; default: the model's image processor, else config.image_size",
    )
    parser.add_argument("--block", type=int, default=-1, help="block of each stage to show (default: the last)")
    parser.add_argument("--num_labels", type=int, default=10, help="classes of a --preset model")
    parser.add_argument("--seed", type=int, default=0, help="seed of a --preset model's random weights")
    parser.add_argument("--dpi", type=int, default=110)
    parser.add_argument("--device", default="cpu", help="e.g. cpu, cuda")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.top_k < 1:
        print("error: --top_k must be >= 1", file=sys.stderr)
        return 2

    from pacavit.visualization import load_image_processor, load_model, sample_image, save_cluster_figures

    model_name, preset = args.model, args.preset
    if model_name is None and preset is None:
        candidates = [Path(DEFAULT_TRAINED_MODEL), Path(__file__).resolve().parents[1] / DEFAULT_TRAINED_MODEL]
        found = [c for c in candidates if (c / "config.json").is_file()]
        if found:
            model_name = str(found[0])
            print(f"No --model given: using the default training run's model in {model_name}.")
        else:
            preset = "pacavit-tiny"
            print(f"No --model given and no trained model in {DEFAULT_TRAINED_MODEL}: using a random-weight {preset}.")

    try:
        if preset is not None:
            model = load_model(preset=preset, seed=args.seed, num_labels=args.num_labels)
            processor = None
            source = f"{preset} (random weights, seed {args.seed})"
        else:
            model = load_model(model_name)
            processor = load_image_processor(model_name)
            source = model_name
    except (OSError, ValueError) as error:
        print(f"error: could not load the model: {error}", file=sys.stderr)
        return 1
    model.to(args.device)

    if args.image is not None:
        image, image_name = args.image, os.path.basename(args.image)
    else:
        image, image_name = sample_image(args.digit_index), f"scikit-learn digit #{args.digit_index} (8x8)"

    try:
        paths = save_cluster_figures(
            model,
            image,
            args.output_dir,
            image_processor=processor,
            image_size=args.image_size,
            query=args.query_patch,
            top_k=args.top_k,
            rank_by=args.rank_by,
            block=args.block,
            dpi=args.dpi,
            title=f"PaCa-ViT clusters: {source} on {image_name}",
        )
    except (FileNotFoundError, ValueError, IndexError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Data helpers shared by every task: reading images with errors that name the failing file, and seeds that
make per-sample augmentation independent of loading order, process count and resume point; choosing
columns and train/validation splits of a 🤗 dataset.
"""

from __future__ import annotations

import io
import os
import random
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage


# --------------------------------------------------------------------------------------------
# Reading images, with errors that say which image failed
# --------------------------------------------------------------------------------------------
class CorruptImageError(ValueError):
    """An image that PIL cannot read; the message names the file (or the dataset index) that failed."""


def describe_image_source(value: Any, index: int | None = None, split: str | None = None) -> str:
    """A human-readable name for an (undecoded) image value: its file path when known, else its index."""
    where = []
    if isinstance(value, dict) and value.get("path"):
        where.append(f"file {value['path']!r}")
    elif isinstance(value, (str, os.PathLike)):
        where.append(f"file {str(value)!r}")
    if index is not None:
        where.append(f"index {index}" + (f" of the {split!r} split" if split else ""))
    return ", ".join(where) or "an image"


# Pillow's modes of more than 8 bits per sample: `convert("RGB")` clips them at 255 (a 16-bit photo turns white)
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
CORRUPT_IMAGE_FIX = (
    "Fix or remove the image; or pass --skip_corrupt_images to the training script to leave unreadable images out "
    "(--verify_images checks all of them before training)."
)


def to_rgb(image: PILImage.Image, where: str = "an image") -> PILImage.Image:
    """An 8-bit RGB image from a PIL image of any mode, rescaling deeper ones instead of clipping them.

    - 16-bit modes (`I;16*`, and `I`, in which Pillow opens some 16-bit PNG/TIFF files): values 0..65535 map
      linearly to 0..255 (`round(v / 257)`); an `I` image with values outside 0..65535 is refused.
    - `F` (32-bit float): values in [0, 1] are scaled by 255, values in [0, 255] are taken as 8-bit levels;
      other ranges cannot be interpreted and are refused.
    - every other mode (L, P, RGBA, CMYK, YCbCr, ...) through Pillow's own `convert("RGB")`.
    `where` names the image in errors."""
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if image.mode == "F":
            if low < 0 or high > 255 or not np.isfinite(array).all():
                raise CorruptImageError(
                    f"Cannot read {where}: a floating-point (mode 'F') image with values in [{low:g}, {high:g}]; "
                    "only [0, 1] or [0, 255] can be read as intensities. Save it as an 8- or 16-bit image."
                )
            scale = 255.0 if high <= 1.0 else 1.0
        else:
            if low < 0 or high > 65535:
                raise CorruptImageError(
                    f"Cannot read {where}: a 32-bit integer (mode 'I') image with values in [{low:g}, {high:g}], "
                    "outside the 16-bit range 0..65535. Save it as an 8- or 16-bit image."
                )
            scale = 255.0 / 65535.0
        image = PILImage.fromarray(np.clip(np.round(array * scale), 0, 255).astype(np.uint8), mode="L")
    return image if image.mode == "RGB" else image.convert("RGB")


def open_image(value: Any, index: int | None = None, split: str | None = None) -> PILImage.Image:
    """Open and fully decode a 🤗 `Image(decode=False)` value (`{"bytes", "path"}`), a path or a PIL image, in its
    own mode. Raises `CorruptImageError` naming the file and index when it cannot be read completely."""
    try:
        if isinstance(value, PILImage.Image):
            image = value
        elif isinstance(value, dict):
            if value.get("bytes") is not None:
                image = PILImage.open(io.BytesIO(value["bytes"]))
            elif value.get("path"):
                image = PILImage.open(value["path"])
            else:
                raise ValueError("the image value has neither bytes nor a path")
        elif isinstance(value, (str, os.PathLike)):
            image = PILImage.open(value)
        else:
            raise TypeError(f"unsupported image value of type {type(value).__name__}")
        image.load()  # forces a full decode: truncated or corrupt files fail here
        return image
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        where = describe_image_source(value, index, split)
        raise CorruptImageError(
            f"Cannot read {where}: {type(error).__name__}: {error}. {CORRUPT_IMAGE_FIX}"
        ) from error


def decode_image(value: Any, index: int | None = None, split: str | None = None) -> PILImage.Image:
    """`open_image`, as an 8-bit RGB image (`to_rgb`: 16-bit and float images are rescaled, not clipped)."""
    return to_rgb(open_image(value, index, split), describe_image_source(value, index, split))


def find_unreadable(values, split: str | None = None) -> list[tuple[int, str]]:
    """`(index, message)` of each of `values` (paths, PIL images, `{"bytes", "path"}`) that `open_image` cannot
    read."""
    bad = []
    for index, value in enumerate(values):
        try:
            open_image(value, index, split)
        except CorruptImageError as error:
            bad.append((index, str(error)))
    return bad


def find_corrupt_images(dataset, image_column: str = "image", split: str | None = None) -> list[tuple[int, str]]:
    """Try to decode every image of a 🤗 dataset's `image_column` (an `Image` feature; other columns, e.g. masks
    stored as arrays, have no files to check: []); return `(index, message)` for each one that fails."""
    import datasets

    if not isinstance(dataset.features[image_column], datasets.Image):
        return []
    raw = dataset.cast_column(image_column, datasets.Image(decode=False)).select_columns([image_column])
    return find_unreadable((row[image_column] for row in raw), split)


def sample_seed(*parts: int) -> int:
    """A 32-bit seed derived from integers (e.g. seed, epoch, index) with a proper mixing function."""
    return int(np.random.SeedSequence([int(p) % (2**63) for p in parts]).generate_state(1)[0])


def seed_everything_from(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU) global generators, which timm/torchvision transforms use."""
    random.seed(seed)
    np.random.seed(seed)
    torch.random.default_generator.manual_seed(seed)


def drop_corrupt_images(dataset, image_column: str, split: str, skip: bool):
    """Check every image of a 🤗 dataset's `image_column`. Fail naming the unreadable ones, or (`skip=True`)
    drop them.

    Returns `(dataset, messages)`, one message (naming the file and index) per dropped image."""
    bad = find_corrupt_images(dataset, image_column, split)
    check_unreadable(bad, split, skip)
    if not bad:
        return dataset, []
    bad_indices = {i for i, _ in bad}
    keep = [i for i in range(len(dataset)) if i not in bad_indices]
    return dataset.select(keep), [message for _, message in bad]


def check_unreadable(bad: list[tuple[int, str]], split: str, skip: bool) -> None:
    """Unless `skip`, fail listing the unreadable images `bad` (`(index, message)`, from `find_unreadable`)."""
    if bad and not skip:
        listing = "\n  ".join(message for _, message in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise CorruptImageError(f"{len(bad)} unreadable image(s) in the {split!r} split:\n  {listing}{more}")


# --------------------------------------------------------------------------------------------
# Columns and splits
# --------------------------------------------------------------------------------------------
VALIDATION_SPLIT_NAMES = ("validation", "valid", "val", "test")


def pick_column(names: list[str], requested: str | None, candidates: tuple[str, ...], what: str) -> str:
    """The column to use for `what` ("image", "label", ...): `requested` (checked), else the first of
    `candidates` present; the error names the flag `--<what>_column_name`."""
    if requested is not None:
        if requested not in names:
            raise ValueError(f"--{what}_column_name {requested!r} is not a column; columns: {names}")
        return requested
    for name in candidates:
        if name in names:
            return name
    raise ValueError(f"Cannot find the {what} column among {names}; pass --{what}_column_name.")


def select_splits(
    splits: dict,
    train_split: str = "train",
    validation_split: str | None = None,
    held_out_fraction: float = 0.15,
    seed: int = 42,
    split_fn=None,
) -> tuple[dict, str | None]:
    """`{"train": ..., "validation": ...}` from a dataset's splits.

    The evaluation split is `validation_split`, else the first of 'validation', 'valid', 'val', 'test'; when
    there is none, `split_fn(train, held_out_fraction, seed)` holds out part of the train split (returns a
    `{"train", "validation"}` mapping; e.g. a stratified split). Returns the splits and a note describing the
    hold-out (None when the dataset had an evaluation split)."""
    out = {}
    if train_split in splits:
        out["train"] = splits[train_split]
    name = validation_split
    if name is None:
        name = next((n for n in VALIDATION_SPLIT_NAMES if n in splits and n != train_split), None)
    if name is not None:
        if name not in splits:
            raise ValueError(f"Split {name!r} not found; splits: {list(splits)}")
        out["validation"] = splits[name]
    if "validation" in out:
        return out, None
    if "train" not in out:
        raise ValueError(f"No train or validation split found; splits: {list(splits)}")
    if split_fn is None:
        raise ValueError(f"No evaluation split among {list(splits)}; pass --validation_split.")
    return dict(split_fn(out["train"], held_out_fraction, seed)), (
        f"{held_out_fraction:.0%} of the train split held out"
    )


# --------------------------------------------------------------------------------------------
# Empty splits: one clear error naming the split, where it came from, and what to do
# --------------------------------------------------------------------------------------------
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SAMPLE_LIMIT_FLAGS = {"train": "max_train_samples", "validation": "max_eval_samples"}


class EmptySplitError(ValueError):
    """A train or validation split without a single sample; the message names the split, its source and
    what to do."""


FOLDER_FIX = "Put images in it (see the script's --help for the layout) or point the flag at another folder."


def split_source(args, split: str) -> tuple[str, str]:
    """Where a script's `split` ('train' or 'validation') comes from, as the user gave it -- a folder flag
    (`--<split>_dir`), a 🤗 dataset (`--dataset_name`, with `--<split>_split` when the script has it), or
    the built-in data -- and what to do when it is empty."""
    folder = getattr(args, f"{split}_dir", None)
    if folder:
        return f"the folder {str(folder)!r} (--{split}_dir)", FOLDER_FIX
    if split == "validation" and getattr(args, "train_dir", None):
        return f"the folder {str(args.train_dir)!r} (--train_dir; no --validation_dir)", FOLDER_FIX
    name = getattr(args, "dataset_name", None)
    if name:
        chosen = getattr(args, f"{split}_split", None)
        source = f"the 🤗 dataset {name!r}" + (f" (split {chosen!r}, --{split}_split)" if chosen else "")
        return (
            source,
            "Choose another split or dataset (--train_split/--validation_split where the script has them).",
        )
    return "the built-in data", "Check the --built_in_* and --max_*_samples flags."


def check_sample_limit(limit: int | None, split: str) -> None:
    """`--max_train_samples` / `--max_eval_samples` must keep at least one sample (None keeps all)."""
    if limit is not None and limit < 1:
        flag = SAMPLE_LIMIT_FLAGS.get(split, f"max_{split}_samples")
        raise EmptySplitError(
            f"--{flag} {limit} leaves the {split!r} split without samples. Pass a positive number, or drop "
            f"--{flag} to use the whole split."
        )


def limit_samples(count: int, limit: int | None, split: str) -> int:
    """How many of `count` samples a `--max_<split>_samples` limit keeps (checked by `check_sample_limit`)."""
    check_sample_limit(limit, split)
    return count if limit is None else min(limit, count)


def check_splits_not_empty(splits, args, required: tuple[str, ...] | None = None) -> None:
    """Raise `EmptySplitError` when one of the `required` splits of `splits` (a mapping to anything with a
    length) has no samples, naming the split, where it came from (`split_source(args, ...)`) and what to do
    -- instead of a 🤗 Datasets, DataLoader or metric error later. Call once the script has selected, limited
    and filtered its splits, before building the data loaders (a missing split is the caller's error).
    `required` defaults to the validation split under `--eval_only`, else to train and validation."""
    if required is None:
        required = ("validation",) if getattr(args, "eval_only", False) else ("train", "validation")
    for split in required:
        if split not in splits or len(splits[split]) > 0:
            continue
        check_sample_limit(getattr(args, SAMPLE_LIMIT_FLAGS.get(split, ""), None), split)
        source, fix = split_source(args, split)
        after = " after --skip_corrupt_images" if getattr(args, "skip_corrupt_images", False) else ""
        what = "to train on" if split == "train" else "to evaluate on"
        raise EmptySplitError(
            f"The {split!r} split from {source} has no samples (0 rows){after}: nothing {what}. {fix}"
        )


def check_folder_has_images(folder: str | os.PathLike, flag: str, split: str | None = None) -> None:
    """Fail naming `--<flag>` when `folder` (the flag's value, or a subfolder of it) does not exist or holds
    no image file (searched recursively), before a 🤗 Datasets loader raises its own, less telling error."""
    from pathlib import Path

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{str(folder)!r} (from --{flag}) is not a folder.")
    if not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in root.rglob("*") if p.is_file()):
        split = split or flag.removesuffix("_dir")
        raise EmptySplitError(
            f"The {split!r} split from the folder {str(folder)!r} (--{flag}) has no images (0 rows; looked for "
            f"{', '.join(IMAGE_EXTENSIONS)} files in it and its subfolders). {FOLDER_FIX}"
        )

"""Data helpers shared by every task: reading images with errors that name the failing file, and seeds that
make per-sample augmentation independent of loading order, process count and resume point.
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
    elif isinstance(value, str):
        where.append(f"file {value!r}")
    if index is not None:
        where.append(f"index {index}" + (f" of the {split!r} split" if split else ""))
    return ", ".join(where) or "an image"


def decode_image(value: Any, index: int | None = None, split: str | None = None) -> PILImage.Image:
    """Decode a 🤗 `Image(decode=False)` value (`{"bytes", "path"}`), a path or a PIL image into an RGB image.

    Raises `CorruptImageError` naming the file and index when the image cannot be read completely.
    """
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
        return image if image.mode == "RGB" else image.convert("RGB")
    except CorruptImageError:
        raise
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        raise CorruptImageError(
            f"Cannot read {describe_image_source(value, index, split)}: {type(error).__name__}: {error}. "
            "Fix or remove the image, or pass --skip_corrupt_images to skip unreadable images."
        ) from error


def find_corrupt_images(
    dataset, image_column: str = "image", split: str | None = None
) -> list[tuple[int, str]]:
    """Try to decode every image of a 🤗 dataset; return `(index, message)` for each one that fails."""
    import datasets

    raw = dataset.cast_column(image_column, datasets.Image(decode=False))
    bad, index = [], 0
    for batch in raw.select_columns([image_column]).iter(batch_size=256):
        for value in batch[image_column]:
            try:
                decode_image(value, index, split)
            except CorruptImageError as error:
                bad.append((index, str(error)))
            index += 1
    return bad


def sample_seed(*parts: int) -> int:
    """A 32-bit seed derived from integers (e.g. seed, epoch, index) with a proper mixing function."""
    return int(np.random.SeedSequence([int(p) % (2**63) for p in parts]).generate_state(1)[0])


def seed_everything_from(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU) global generators, which timm/torchvision transforms use."""
    random.seed(seed)
    np.random.seed(seed)
    torch.random.default_generator.manual_seed(seed)

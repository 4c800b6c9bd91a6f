"""Data helpers per task (`classification`, ...) and what they share (`common`).

The names below are re-exported so `from pacavit.data import load_digits_dataset` keeps working.
"""

from .classification import (
    DIGITS_DESCRIPTION,
    DIGITS_NAME,
    ImageClassificationDataset,
    digits_to_pil,
    load_digits_dataset,
    split_train_validation,
)
from .common import (
    CorruptImageError,
    decode_image,
    describe_image_source,
    find_corrupt_images,
    sample_seed,
    seed_everything_from,
)

__all__ = [
    "DIGITS_DESCRIPTION",
    "DIGITS_NAME",
    "CorruptImageError",
    "ImageClassificationDataset",
    "decode_image",
    "describe_image_source",
    "digits_to_pil",
    "find_corrupt_images",
    "load_digits_dataset",
    "sample_seed",
    "seed_everything_from",
    "split_train_validation",
]

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
    EmptySplitError,
    check_folder_has_images,
    check_splits_not_empty,
    check_unreadable,
    decode_image,
    describe_image_source,
    drop_corrupt_images,
    find_corrupt_images,
    find_unreadable,
    limit_samples,
    open_image,
    pick_column,
    sample_seed,
    seed_everything_from,
    select_splits,
    to_rgb,
)

__all__ = [
    "DIGITS_DESCRIPTION",
    "DIGITS_NAME",
    "CorruptImageError",
    "EmptySplitError",
    "ImageClassificationDataset",
    "check_folder_has_images",
    "check_splits_not_empty",
    "check_unreadable",
    "decode_image",
    "describe_image_source",
    "digits_to_pil",
    "drop_corrupt_images",
    "find_corrupt_images",
    "find_unreadable",
    "limit_samples",
    "load_digits_dataset",
    "open_image",
    "pick_column",
    "sample_seed",
    "seed_everything_from",
    "select_splits",
    "split_train_validation",
    "to_rgb",
]

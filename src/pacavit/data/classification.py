"""Data helpers for image classification: the built-in digits dataset and a dataset wrapper.

Nothing here is needed to *use* a PaCa-ViT model; it serves `examples/run_classification.py` and its tests.

* `load_digits_dataset()` turns scikit-learn's copy of the UCI handwritten digits (1,797 real 8x8 grayscale
  images, 10 classes, installed with scikit-learn, no download) into a 🤗 `datasets.Dataset` with a PIL
  `Image` column and a `ClassLabel` column.
* `ImageClassificationDataset` wraps a 🤗 dataset for a `DataLoader`. Random augmentation of a sample is
  seeded from `(seed, epoch, index)`, so it does not depend on the order in which samples are loaded, on the
  number of processes or workers, or on where a run was resumed.

The evaluation preprocessing (timm's eval transform as a `ConvNextImageProcessor`) is
`pacavit.preprocessing.classification_image_processor`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage

from ..extras import require
from .common import decode_image, sample_seed, seed_everything_from

DIGITS_NAME = "sklearn-digits"
DIGITS_DESCRIPTION = (
    "UCI ML hand-written digits (optical recognition of handwritten digits, test part), as shipped with "
    "scikit-learn (`sklearn.datasets.load_digits`): 1,797 images of 8x8 pixels, 10 classes ('0'..'9'). "
    "Each pixel is an integer count 0..16 (the number of 'on' pixels in a 4x4 block of the original 32x32 "
    "bitmap). Converted for image models by `pacavit.data.digits_to_pil`: value v -> round(v * 255 / 16) as "
    "uint8 (0 = background, 255 = ink), grayscale replicated to 3 RGB channels; the images stay 8x8 and the "
    "image processor upscales them."
)
DIGITS_CITATION = (
    "Alpaydin, E. and Kaynak, C. (1998). Optical Recognition of Handwritten Digits. UCI Machine Learning "
    "Repository. https://doi.org/10.24432/C50P49"
)
DIGITS_MAX_VALUE = 16


def digits_to_pil(pixels: np.ndarray, max_value: int = DIGITS_MAX_VALUE) -> PILImage.Image:
    """One 8x8 digits array (values 0..`max_value`) -> an RGB PIL image with values scaled to 0..255."""
    pixels = np.asarray(pixels, dtype=np.float64)
    if pixels.ndim != 2:
        raise ValueError(f"Expected a 2-D image array, got shape {pixels.shape}.")
    if pixels.min() < 0 or pixels.max() > max_value:
        raise ValueError(f"Digit pixel values must lie in 0..{max_value}, got {pixels.min()}..{pixels.max()}.")
    scaled = np.rint(pixels * (255.0 / max_value)).astype(np.uint8)
    return PILImage.fromarray(scaled, mode="L").convert("RGB")


def load_digits_dataset():
    """The 1,797 scikit-learn digits as a `datasets.Dataset` with features `image` (PIL RGB 8x8) and `label`
    (`ClassLabel` with names '0'..'9'); the conversion is recorded in `dataset.info.description`."""
    import datasets

    sklearn_datasets = require("sklearn.datasets", extra="train", purpose="the built-in digits dataset")
    digits = sklearn_datasets.load_digits()
    names = [str(int(n)) for n in digits.target_names]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    info = datasets.DatasetInfo(
        description=DIGITS_DESCRIPTION,
        citation=DIGITS_CITATION,
        homepage="https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits",
        license="CC BY 4.0",
        features=features,
    )
    return datasets.Dataset.from_dict(
        {"image": [digits_to_pil(img) for img in digits.images], "label": [int(t) for t in digits.target]},
        features=features,
        info=info,
    )


def split_train_validation(dataset, validation_fraction: float, seed: int, label_column: str = "label"):
    """Split a `Dataset` into `DatasetDict(train=..., validation=...)`, stratified by label when possible."""
    import datasets

    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"The validation fraction must be in (0, 1), got {validation_fraction}.")
    stratify = label_column if isinstance(dataset.features.get(label_column), datasets.ClassLabel) else None
    try:
        split = dataset.train_test_split(test_size=validation_fraction, seed=seed, stratify_by_column=stratify)
    except ValueError:  # e.g. a class with a single example cannot be stratified
        split = dataset.train_test_split(test_size=validation_fraction, seed=seed)
    return datasets.DatasetDict(train=split["train"], validation=split["test"])


# --------------------------------------------------------------------------------------------
# Dataset wrapper with order-independent, resumable augmentation
# --------------------------------------------------------------------------------------------
@dataclass
class ImageClassificationDataset(torch.utils.data.Dataset):
    """Map-style dataset over a 🤗 dataset that returns `{"image" or "pixel_values", "labels"}`.

    * Images are decoded here (the 🤗 column is cast to `Image(decode=False)`), so a corrupt file raises a
      `CorruptImageError` naming its path and index.
    * `transform` (optional) maps a PIL image to a tensor; without it the PIL image is returned for a batched
      image processor in the collate function.
    * When `seed` is set, the global RNGs are seeded from `(seed, epoch, index)` before `transform` runs, so
      random augmentation of each sample is a pure function of the epoch and index (call `set_epoch`).
    """

    hf_dataset: Any
    image_column: str = "image"
    label_column: str = "label"
    transform: Callable | None = None
    seed: int | None = None
    split: str | None = None
    epoch: int = 0

    def __post_init__(self) -> None:
        import datasets

        feature = self.hf_dataset.features.get(self.image_column)
        if isinstance(feature, datasets.Image) and feature.decode:
            self.hf_dataset = self.hf_dataset.cast_column(self.image_column, datasets.Image(decode=False))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.hf_dataset)

    def __getitem__(self, index: int) -> dict:
        example = self.hf_dataset[int(index)]
        image = decode_image(example[self.image_column], int(index), self.split)
        label = int(example[self.label_column])
        if self.transform is None:
            return {"image": image, "labels": label}
        if self.seed is not None:
            seed_everything_from(sample_seed(self.seed, self.epoch, index))
        return {"pixel_values": self.transform(image), "labels": label}

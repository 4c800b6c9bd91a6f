"""Semantic-segmentation data: built-in scenes of real digit scans, 🤗 Datasets / local folders, paired transforms.

- `load_digit_scenes()`: the default, offline data. Each scene is light paper with 1-3 handwritten digits in dark ink
  from the scikit-learn digits scans (real 8x8 images of the UCI set, upscaled), every pixel labelled with its
  digit (1-10 for digits 0-9) or background (0). Deterministic; validation scenes use digit scans never seen in
  training.
- `load_segmentation_dataset()`: a Hub dataset with image/annotation columns, or local image + mask folders.
- `SegmentationTransform`: mmseg's ADE20K training pipeline on an (image, mask) pair (random rescale by 0.5-2.0,
  random crop with padding by 255, flip, photometric distortion) and the evaluation resize; then the
  normalisation of the model's `SegformerImageProcessor`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .common import IMAGE_EXTENSIONS, check_folder_has_images

DIGIT_SCENE_LABELS = ["background"] + [f"digit {d}" for d in range(10)]


# --------------------------------------------------------------------------------------------
# Built-in data
# --------------------------------------------------------------------------------------------
def _scene(rng: np.random.Generator, digits: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One RGB scene and its label map from a pool of (image 8x8 in [0, 16], target) digits: dark ink of random
    hue on light paper of random tint with a little noise, like the scans themselves. (An earlier version drew ink
    and paper of any colour: telling ink from paper then took most of the 5-minute budget and the default run never
    got to the digits' identities: mIoU stayed at the all-background baseline, measured.)"""
    images, targets = digits
    paper = rng.uniform(0.6, 0.95, 3)
    scene = np.clip(paper[None, None] + rng.normal(0, 0.03, (size, size, 3)), 0, 1)
    labels = np.zeros((size, size), dtype=np.uint8)
    for _ in range(rng.integers(1, 4)):
        index = rng.integers(len(targets))
        glyph_size = int(rng.integers(size * 3 // 8, size * 5 // 8 + 1))
        glyph = Image.fromarray((images[index] / 16.0 * 255).astype(np.uint8)).resize(
            (glyph_size, glyph_size), Image.BILINEAR
        )
        ink = np.asarray(glyph, dtype=np.float64) / 255.0
        top, left = rng.integers(0, size - glyph_size + 1, 2)
        colour = rng.uniform(0, 0.3, 3)
        window = scene[top : top + glyph_size, left : left + glyph_size]
        window[:] = window * (1 - ink[..., None]) + colour[None, None] * ink[..., None]
        labels[top : top + glyph_size, left : left + glyph_size][ink > 0.5] = targets[index] + 1
    return (scene * 255).round().astype(np.uint8), labels


def load_digit_scenes(num_train: int = 1000, num_validation: int = 100, size: int = 64, seed: int = 0):
    """`DatasetDict(train, validation)` with `image` (RGB) and `annotation` (L, 0 = background, d + 1 = digit d)."""
    import datasets
    from sklearn.datasets import load_digits

    digits = load_digits()
    split = int(0.8 * len(digits.target))  # validation scenes are made only of held-out scans
    pools = {
        "train": (digits.images[:split], digits.target[:split], num_train),
        "validation": (digits.images[split:], digits.target[split:], num_validation),
    }
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    out = {}
    for offset, (name, (images, targets, count)) in enumerate(pools.items()):
        rng = np.random.default_rng([seed, offset])
        pairs = [_scene(rng, (images, targets), size) for _ in range(count)]
        out[name] = datasets.Dataset.from_dict(
            {
                "image": [Image.fromarray(s) for s, _ in pairs],
                "annotation": [Image.fromarray(label) for _, label in pairs],
            },
            features=features,
        )
    return datasets.DatasetDict(out)


# --------------------------------------------------------------------------------------------
# User data
# --------------------------------------------------------------------------------------------
def _folder_dataset(image_dir: Path, mask_dir: Path):
    import datasets

    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
    missing = [p.name for p in images if p.stem not in masks]
    if not images or missing:
        raise ValueError(
            f"{image_dir}: {'no images' if not images else f'{len(missing)} images without a mask in {mask_dir}'}"
            f"{(': ' + ', '.join(missing[:5])) if missing else ''}. "
            "Masks need the image's file name (any image extension)."
        )
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    return datasets.Dataset.from_dict(
        {"image": [str(p) for p in images], "annotation": [str(masks[p.stem]) for p in images]}, features=features
    )


def load_segmentation_dataset(
    dataset_name: str | None = None,
    train_dir: str | None = None,
    validation_dir: str | None = None,
    image_column: str = "image",
    annotation_column: str = "annotation",
    dataset_config_name: str | None = None,
):
    """A `DatasetDict` with `train`/`validation` and columns `image`/`annotation`.

    `dataset_name`: a 🤗 Hub id (or local dataset script/folder) whose splits hold `image_column` and
    `annotation_column`; `train_dir`/`validation_dir`: folders with `images/` and `masks/` subfolders (a mask per
    image, same file name stem, one class index per pixel)."""
    import datasets

    if dataset_name:
        raw = datasets.load_dataset(dataset_name, dataset_config_name)
        for split, ds in raw.items():
            missing = [c for c in (image_column, annotation_column) if c not in ds.column_names]
            if missing:
                raise ValueError(
                    f"Dataset {dataset_name!r} split {split!r} has no column(s) {missing}; its columns are "
                    f"{ds.column_names}. Pass --image_column/--annotation_column."
                )
        raw = raw.rename_columns(
            {image_column: "image", annotation_column: "annotation"}
            if image_column != "image" or annotation_column != "annotation"
            else {}
        )
        if "validation" not in raw:
            if "test" in raw:
                raw["validation"] = raw.pop("test")
            elif "train" not in raw:
                raise ValueError(f"Dataset {dataset_name!r} has no 'train' split; splits: {list(raw)}.")
            elif len(raw["train"]) == 0:  # nothing to hold out; the script's check_splits_not_empty names the split
                raw["validation"] = raw["train"]
            else:  # hold out 10% of train
                parts = raw["train"].train_test_split(test_size=0.1, seed=0)
                raw = datasets.DatasetDict(train=parts["train"], validation=parts["test"])
        return raw
    if not train_dir:
        raise ValueError("Give --dataset_name or --train_dir (with images/ and masks/ subfolders).")
    splits = {"train": train_dir, "validation": validation_dir or train_dir}
    for name, d in splits.items():  # an empty images/ folder: an error naming the split and its flag
        flag = "validation_dir" if validation_dir and name == "validation" else "train_dir"
        check_folder_has_images(Path(d) / "images", flag, name)
    return datasets.DatasetDict(
        {name: _folder_dataset(Path(d) / "images", Path(d) / "masks") for name, d in splits.items()}
    )


def mask_to_array(
    mask: Image.Image, num_labels: int, reduce_labels: bool, ignore_index: int = 255, where: str = ""
) -> np.ndarray:
    """A class-index array from a mask image; `reduce_labels` maps 0 -> ignore and k -> k-1 (ADE20K). A clear error
    for colour masks and values outside the classes."""
    array = np.asarray(mask)
    if array.ndim == 3:
        if (array == array[..., :1]).all():
            array = array[..., 0]
        else:
            raise ValueError(
                f"{where}mask is a colour image (shape {array.shape}); a segmentation mask holds one class index per "
                "pixel. Convert palette/colour masks to index masks first."
            )
    array = array.astype(np.int64)
    if reduce_labels:
        array = np.where(array == 0, ignore_index, array - 1)
        array[array == ignore_index - 1] = ignore_index
    bad = (array >= num_labels) & (array != ignore_index)
    if bad.any():
        values = sorted(np.unique(array[bad]).tolist())
        reduce_hint = (
            " or drop --do_reduce_labels" if reduce_labels else " or use --do_reduce_labels (ADE20K: 0 = other)"
        )
        raise ValueError(
            f"{where}mask values {values[:8]} are not classes 0..{num_labels - 1} (or {ignore_index} = ignore). "
            f"Check --num_labels/id2label{reduce_hint}."
        )
    return array


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------
class SegmentationTransform:
    """Paired (image, mask) transforms, then normalisation with `image_mean`/`image_std`.

    train: resize so the image fits `scale` (long, short) times a ratio drawn from `ratio_range`, keeping the
    aspect ratio (mmseg `RandomResize(keep_ratio=True)`); random `crop_size` crop, padding with 0 / 255 (ignore)
    when smaller; horizontal flip with `flip_prob`; photometric distortion (brightness, contrast, saturation, hue,
    like mmseg's `PhotoMetricDistortion`, in torchvision's multiplicative form).
    eval: the same keep-ratio resize with ratio 1, and the ORIGINAL mask kept for scoring at its resolution.
    """

    def __init__(
        self,
        *,
        train: bool,
        crop_size: int,
        scale: tuple[int, int],
        image_mean,
        image_std,
        num_labels: int,
        reduce_labels: bool = False,
        ratio_range=(0.5, 2.0),
        flip_prob: float = 0.5,
        photometric: bool = True,
        ignore_index: int = 255,
    ):
        from torchvision.transforms import v2

        self.train, self.crop_size, self.scale = train, crop_size, tuple(scale)
        self.mean = torch.tensor(image_mean).view(3, 1, 1)
        self.std = torch.tensor(image_std).view(3, 1, 1)
        self.num_labels, self.reduce_labels, self.ignore_index = num_labels, reduce_labels, ignore_index
        self.ratio_range, self.flip_prob = ratio_range, flip_prob
        self.photometric = (
            v2.ColorJitter(brightness=0.25, contrast=0.5, saturation=0.5, hue=18 / 360) if photometric else None
        )

    def _resized_size(self, height: int, width: int, ratio: float) -> tuple[int, int]:
        long_edge, short_edge = (s * ratio for s in self.scale)
        factor = min(long_edge / max(height, width), short_edge / min(height, width))
        return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))

    def __call__(self, image: Image.Image, mask: Image.Image, where: str = "") -> dict:
        from torchvision.transforms.v2 import functional as TF

        image = image.convert("RGB")
        labels = torch.from_numpy(mask_to_array(mask, self.num_labels, self.reduce_labels, self.ignore_index, where))
        pixels = TF.pil_to_tensor(image)  # uint8 (3, H, W)
        ratio = float(np.random.uniform(*self.ratio_range)) if self.train else 1.0
        size = self._resized_size(*pixels.shape[1:], ratio)
        pixels = TF.resize(pixels, list(size), interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        out = {}
        if self.train:
            target = TF.resize(labels[None], list(size), interpolation=TF.InterpolationMode.NEAREST)[0]
            crop = self.crop_size
            pad_h, pad_w = max(0, crop - size[0]), max(0, crop - size[1])
            if pad_h or pad_w:
                pixels = TF.pad(pixels, [0, 0, pad_w, pad_h], fill=0)
                target = TF.pad(target[None], [0, 0, pad_w, pad_h], fill=self.ignore_index)[0]
            top = int(np.random.randint(0, pixels.shape[1] - crop + 1))
            left = int(np.random.randint(0, pixels.shape[2] - crop + 1))
            pixels, target = (
                pixels[:, top : top + crop, left : left + crop],
                target[top : top + crop, left : left + crop],
            )
            if np.random.rand() < self.flip_prob:
                pixels, target = pixels.flip(-1), target.flip(-1)
            if self.photometric is not None:
                pixels = self.photometric(pixels)
            out["labels"] = target.long()
        else:
            out["labels"] = labels.long()  # the original resolution: predictions are resized to it
        out["pixel_values"] = (pixels.float() / 255.0 - self.mean) / self.std
        return out


def collate_segmentation(batch: list[dict]) -> dict:
    """Stack pixel values and labels; evaluation labels of different sizes stay a list."""
    shapes = {tuple(item["pixel_values"].shape) for item in batch}
    if len(shapes) > 1:
        raise ValueError(
            f"Images of one batch have different sizes after resizing ({sorted(shapes)}); evaluate with "
            "--per_device_eval_batch_size 1 (as mmseg does) or resize all images to one size."
        )
    labels = [item["labels"] for item in batch]
    same = len({tuple(label.shape) for label in labels}) == 1
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in batch]),
        "labels": torch.stack(labels) if same else labels,
    }


class TransformedSegmentationDataset(torch.utils.data.Dataset):
    """A 🤗 dataset with `image`/`annotation` columns seen through a `SegmentationTransform`."""

    def __init__(self, dataset, transform: SegmentationTransform, split: str = "") -> None:
        self.dataset, self.transform, self.split = dataset, transform, split

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        row = self.dataset[index]
        return self.transform(row["image"], row["annotation"], where=f"{self.split} item {index}: ")


__all__ = [
    "DIGIT_SCENE_LABELS",
    "SegmentationTransform",
    "TransformedSegmentationDataset",
    "collate_segmentation",
    "load_digit_scenes",
    "load_segmentation_dataset",
    "mask_to_array",
]

"""Semantic-segmentation data: built-in scenes of real digit scans, 🤗 Datasets / local folders, paired transforms.

- `load_digit_scenes()`: the default, offline data. Each scene is light paper with 1-3 handwritten digits in dark ink
  from the scikit-learn digits scans (real 8x8 images of the UCI set, upscaled), every pixel labelled with its
  digit (1-10 for digits 0-9) or background (0). Deterministic; validation scenes use digit scans never seen in
  training.
- `load_segmentation_dataset()`: a Hub dataset with image/annotation columns, or local image + mask folders.
- `SegmentationTransform`: mmseg's ADE20K training pipeline on an (image, mask) pair (random rescale by 0.5-2.0,
  random crop with padding by 255, flip, photometric distortion) and the evaluation resize; then the
  normalisation of the model's `SegformerImageProcessor`.
- `TransformedSegmentationDataset`: a dataset seen through the transform. Its columns may hold what a 🤗 dataset
  holds (decoded or undecoded `datasets.Image()`, paths, `{"bytes", "path"}` dicts, arrays / nested lists);
  `load_segmentation_image` / `load_segmentation_mask` read each form, `mask_to_array` reads class indices exactly
  from every mask mode that can hold them (8/16/32-bit, palette, bilevel, whole-number float) and refuses the others.
  Every error is a `SegmentationDataError` (or `CorruptImageError` for an unreadable file) naming the split, the
  row and the files.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .common import (
    CORRUPT_IMAGE_FIX,
    IMAGE_EXTENSIONS,
    CorruptImageError,
    check_folder_has_images,
    decode_image,
)

logger = logging.getLogger(__name__)

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
# Errors and item names
# --------------------------------------------------------------------------------------------
class SegmentationDataError(ValueError):
    """An image, mask, dataset column or folder that cannot be used as it is; the message names the item (split,
    row, files) or the folder, what is wrong and what to do."""


def _prefix(where: str) -> str:
    """`where` ("'train' split row 3 (mask 'a.png')", or an older "train item 3: ") as a message prefix."""
    where = where.rstrip(": ")
    return f"{where}: " if where else ""


def _listing(names, limit: int = 5) -> str:
    names = list(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(str(name) for name in names[:limit]) + more


def _file_name(value) -> str | None:
    """The file behind a column value, when it has one."""
    if isinstance(value, dict):
        return value.get("path") or None
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, Image.Image):
        return getattr(value, "filename", None) or None
    return None


def describe_segmentation_item(split: str, index: int, image=None, mask=None) -> str:
    """Names a row for messages, with its files where the values have them: `'train' split row 3 (image 'a.jpg',
    mask 'a.png')`."""
    where = f"{split!r} split row {index}" if split else f"row {index}"
    files = [f"{what} {name!r}" for what, value in (("image", image), ("mask", mask)) if (name := _file_name(value))]
    return where + (f" ({', '.join(files)})" if files else "")


# --------------------------------------------------------------------------------------------
# User data
# --------------------------------------------------------------------------------------------
def _image_files(folder: Path) -> list[Path]:
    """Image files directly in `folder` (by extension, any case); hidden files (a leading '.', e.g. the '._x.png'
    files macOS writes on other disks) are skipped."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def _by_stem(files: list[Path], folder: Path, what: str, flag: str) -> dict[str, Path]:
    """`{stem: file}`; two files of one stem (`a.jpg` and `a.png`) make the image/mask pairing ambiguous: refused."""
    groups: dict[str, list[Path]] = {}
    for path in files:
        groups.setdefault(path.stem, []).append(path)
    clashes = [" and ".join(p.name for p in group) for group in groups.values() if len(group) > 1]
    if clashes:
        raise SegmentationDataError(
            f"{str(folder)!r} (--{flag}) holds {len(clashes)} {what} name(s) with several extensions: "
            f"{_listing(clashes)}. Images and masks are paired by file name without the extension, so each name must "
            f"appear once in {folder.name}/: remove or rename the extra files."
        )
    return {stem: group[0] for stem, group in groups.items()}


def _folder_dataset(image_dir: Path, mask_dir: Path, flag: str = "train_dir", split: str = "train"):
    """Pairs `image_dir/<name>.<ext>` with `mask_dir/<name>.<any image ext>`. Refused: a missing mask folder, an image
    without a mask, two images (or masks) of one name with different extensions. Masks without an image are
    left out with a warning naming them."""
    import datasets

    if not mask_dir.is_dir():
        raise SegmentationDataError(
            f"The {split!r} split: {str(mask_dir)!r} is not a folder. The folder of --{flag} must hold images/ and "
            "masks/, with one mask per image (the image's file name, any image extension; one class index per pixel)."
        )
    images = _by_stem(_image_files(image_dir), image_dir, "image", flag)
    masks = _by_stem(_image_files(mask_dir), mask_dir, "mask", flag)
    missing = [p.name for stem, p in sorted(images.items()) if stem not in masks]
    if not images:
        raise SegmentationDataError(
            f"The {split!r} split: {str(image_dir)!r} (--{flag}) has no image files directly in it (subfolders are "
            "not searched; hidden files are skipped). Put the images there, their masks in masks/."
        )
    if missing:
        raise SegmentationDataError(
            f"{image_dir}: {len(missing)} images without a mask in {mask_dir}: {_listing(missing)}. Masks need the "
            "image's file name (any image extension)."
        )
    orphans = sorted(p.name for stem, p in masks.items() if stem not in images)
    if orphans:
        logger.warning(
            "%s: %d mask(s) have no image of the same name in %s and are not used: %s. Add their images or "
            "remove them.",
            mask_dir,
            len(orphans),
            image_dir,
            _listing(orphans, 10),
        )
    paths = sorted(images.values())
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    return datasets.Dataset.from_dict(
        {"image": [str(p) for p in paths], "annotation": [str(masks[p.stem]) for p in paths]}, features=features
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
    image, same file name stem, one class index per pixel; see `_folder_dataset` for what is refused)."""
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
    flags = {name: "validation_dir" if validation_dir and name == "validation" else "train_dir" for name in splits}
    for name, d in splits.items():  # an empty images/ folder: an error naming the split and its flag
        check_folder_has_images(Path(d) / "images", flags[name], name)
    out = {"train": _folder_dataset(Path(train_dir) / "images", Path(train_dir) / "masks", "train_dir", "train")}
    if splits["validation"] == train_dir:  # one folder, read (and warned about) once
        out["validation"] = out["train"]
    else:
        folder = Path(splits["validation"])
        out["validation"] = _folder_dataset(folder / "images", folder / "masks", flags["validation"], "validation")
    return datasets.DatasetDict(out)


# --------------------------------------------------------------------------------------------
# Reading column values: images, masks, class indices
# --------------------------------------------------------------------------------------------
# PIL modes whose pixels are class indices as they are: bilevel, 8-bit, palette (the palette index), 16/32-bit
INDEX_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N")
FILE_VALUE_TYPES = (dict, str, os.PathLike, bytes, bytearray)


def _exif_transposed(image: Image.Image) -> Image.Image:
    """The EXIF orientation applied, as `datasets.Image()` decodes (the format is kept)."""
    from PIL import ImageOps

    if image.getexif().get(0x0112) is None:  # ExifTags.Base.Orientation
        return image
    transposed = ImageOps.exif_transpose(image)
    transposed.format = image.format
    return transposed


def _open(value) -> Image.Image:
    """A PIL image, not yet loaded, from a path, bytes or a `{"bytes", "path"}` dict; a remote path (hf://,
    https://) through 🤗 Datasets (loaded)."""
    if isinstance(value, (bytes, bytearray)):
        value = {"bytes": bytes(value), "path": None}
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is not None:
            return Image.open(io.BytesIO(data))
        if not path:
            raise ValueError("the value has neither bytes nor a path")
    else:
        path = os.fspath(value)
    from datasets.utils.file_utils import is_local_path

    if is_local_path(path):
        return Image.open(path)
    import datasets

    return datasets.Image().decode_example({"path": path, "bytes": None})


def _as_array(value, where: str, what: str) -> np.ndarray:
    """A numeric NumPy array from an array, a tensor or nested lists (`Array2D`/`Array3D`/`Sequence` columns)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:  # ragged nested lists
        raise SegmentationDataError(
            f"{_prefix(where)}the {what} is a {type(value).__name__} that is not a rectangular array ({error}). "
            f"Store the {what} as an image (datasets.Image()), a path, or an array of one shape."
        ) from error
    if not (array.dtype == bool or np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise SegmentationDataError(
            f"{_prefix(where)}the {what} is a {type(value).__name__} ({array.dtype}, shape {array.shape}); expected a "
            "PIL image, a file path, a {'bytes', 'path'} dict or a numeric array."
        )
    return array


def _channels_last(array: np.ndarray) -> np.ndarray:
    """`(C, H, W)` with C in 1/3/4 (torch's layout) -> `(H, W, C)`, when that reading is unambiguous; `(H, W, 1)` ->
    `(H, W)`."""
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return array


def _image_from_array(array: np.ndarray, where: str) -> Image.Image:
    array = _channels_last(array)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)) or 0 in array.shape:
        raise SegmentationDataError(
            f"{_prefix(where)}the image array has shape {array.shape}; expected (height, width), (height, width, 3) "
            "or (height, width, 4), or the same channels first."
        )
    if array.dtype == bool:
        raise SegmentationDataError(
            f"{_prefix(where)}the image is a boolean array: that is a mask, not a photo. Check that the image and "
            "annotation columns are not swapped (--image_column/--annotation_column in the script)."
        )
    if np.issubdtype(array.dtype, np.floating):
        finite = bool(np.isfinite(array).all())
        low, high = (float(array.min()), float(array.max())) if finite else (float("nan"), float("nan"))
        if not finite or low < 0 or high > 255:
            raise SegmentationDataError(
                f"{_prefix(where)}the image array holds float values in [{low}, {high}]; float images must be in "
                "[0, 1] or [0, 255] (and finite). Store uint8 pixels."
            )
        array = np.round(array * 255 if high <= 1 else array).astype(np.uint8)
    elif array.dtype != np.uint8:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise SegmentationDataError(
                f"{_prefix(where)}the image array holds values in [{low}, {high}]; expected 8-bit (0..255) or "
                "16-bit (0..65535) pixels."
            )
        # uint16, or integers beyond 255 (nested lists lose the dtype): 16-bit pixels, rescaled to 8 bits
        sixteen_bit = array.dtype == np.uint16 or high > 255
        array = (np.round(array / 257.0) if sixteen_bit else array).astype(np.uint8)
    return Image.fromarray(array)


def load_segmentation_image(value, where: str = "", mode: str | None = None) -> Image.Image:
    """An RGB PIL image from any value a 🤗 dataset column can hold: a PIL image (`datasets.Image()`), a path, bytes or
    a `{"bytes", "path"}` dict (`datasets.Image(decode=False)`; opened like `datasets.Image()`, EXIF orientation
    applied, then converted to `mode` when given), or an array / tensor / nested list of shape `(H, W)`,
    `(H, W, 3 | 4)` or channels first. All go through `pacavit.data.common.decode_image` (RGB; 16-bit photos
    rescaled to 8 bits). Arrays: uint8 as they are; uint16, or other integers above 255, are 16-bit pixels
    (divided by 257); other integers 0..255 as they are; floats all <= 1 are scaled by 255, floats up to 255 taken
    as they are. `where` names the item in errors."""
    if value is None:
        raise SegmentationDataError(
            f"{_prefix(where)}the 'image' column holds None (no image). Remove such rows from the dataset (e.g. with "
            "`dataset.filter(lambda row: row['image'] is not None)`) or give them an image."
        )
    if isinstance(value, Image.Image):
        return decode_image(value)
    if isinstance(value, FILE_VALUE_TYPES):
        try:
            image = _open(value)
            image.load()
            image = _exif_transposed(image)
            if mode and image.mode != mode:
                image = image.convert(mode)
        except Exception as error:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
            raise CorruptImageError(
                f"{_prefix(where)}cannot read the image: {type(error).__name__}: {error}. {CORRUPT_IMAGE_FIX}"
            ) from error
        return decode_image(image)
    return decode_image(_image_from_array(_as_array(value, where, "image"), where))


def load_segmentation_mask(value, where: str = "", mode: str | None = None) -> Image.Image | np.ndarray:
    """A mask from any value a column can hold, its pixel values untouched: a PIL image as it is; a path, bytes or
    `{"bytes", "path"}` dict opened (EXIF orientation applied like the image's, then converted to `mode` when given);
    an array / tensor / nested list as a NumPy array. A 16-bit PNG (or TIFF) with several channels (colour, alpha) is
    refused: Pillow reads only the high byte of its values. `mask_to_array` reads the class indices."""
    if value is None:
        raise SegmentationDataError(
            f"{_prefix(where)}the 'annotation' column holds None (no mask). Remove such rows from the dataset (e.g. "
            "with `dataset.filter(lambda row: row['annotation'] is not None)`) or give them a mask."
        )
    if isinstance(value, Image.Image):
        return value
    if not isinstance(value, FILE_VALUE_TYPES):
        return _as_array(value, where, "mask")
    try:
        mask = _open(value)
        # before load() clears it, the tile names the raw layout: "RGB;16B" is 16 bits per channel
        high_byte_only = mask.mode not in INDEX_MODES and any(";16" in str(tile[-1]) for tile in mask.tile or [])
        mask.load()
    except Exception as error:
        raise CorruptImageError(
            f"{_prefix(where)}cannot read the mask: {type(error).__name__}: {error}. {CORRUPT_IMAGE_FIX}"
        ) from error
    if high_byte_only:
        raise SegmentationDataError(
            f"{_prefix(where)}the mask is a 16-bit image with several channels (colour or alpha; read as mode "
            f"{mask.mode}): Pillow keeps only the high byte of each 16-bit value, so its class indices would be "
            "wrong. Save it as a one-channel 16-bit PNG (mode 'I;16', one class index per pixel)."
        )
    mask = _exif_transposed(mask)
    if mode and mask.mode != mode:
        mask = mask.convert(mode)
    return mask


def _colour_error(where: str, array: np.ndarray, mode: str | None) -> SegmentationDataError:
    colours = np.unique(array.reshape(-1, array.shape[-1]), axis=0)
    shown = ", ".join(str(tuple(int(c) for c in colour)) for colour in colours[:4])
    return SegmentationDataError(
        f"{_prefix(where)}the mask is a colour image ({f'mode {mode}, ' if mode else ''}shape {array.shape}; "
        f"{len(colours)} colours, e.g. {shown}); a segmentation mask holds one class index per pixel. Map each colour "
        "to its class index and save one-channel masks (mode 'L', 'I;16', or a palette 'P' image whose palette index "
        "is the class)."
    )


def _mask_pixels(mask, where: str = "") -> np.ndarray:
    """The mask's pixel values as a 2-D int64 array, exactly.

    PIL modes: '1' (0/1), 'L', 'P' (the palette index is the class), 'I;16*' and 'I' (16/32-bit) as they are; 'F'
    when every value is a whole number; 'LA', 'PA', 'RGBA' when fully opaque (then as 'L', 'P', 'RGB'); 'RGB'
    (and 'RGBX') when the three channels are equal (a gray image of indices). Any other mode, transparency, colour
    and fractional values are refused. Arrays: `(H, W)`, `(H, W, 1)`, `(1, H, W)`; more channels like 'RGB'."""
    mode = mask.mode if isinstance(mask, Image.Image) else None
    if mode is not None and mode not in INDEX_MODES + ("F", "LA", "PA", "RGBA", "RGB", "RGBX"):
        raise SegmentationDataError(
            f"{_prefix(where)}the mask has PIL mode {mode!r}, which does not hold class indices. Save one-channel "
            "masks: mode 'L' (8-bit), 'I;16' (16-bit), or a palette 'P' image whose palette index is the class."
        )
    array = np.asarray(mask) if mode is not None else _channels_last(_as_array(mask, where, "mask"))
    if mode in ("LA", "PA", "RGBA"):
        transparent = array[..., -1] != 255
        if transparent.any():
            raise SegmentationDataError(
                f"{_prefix(where)}the mask (mode {mode}) has {int(transparent.sum())} transparent or translucent "
                "pixel(s): transparency is not a class index. Save the mask without alpha (mode 'L', 'P' or "
                "'I;16'), with 255 where pixels are to be ignored."
            )
        array = array[..., :-1]
    elif mode == "RGBX":
        array = array[..., :3]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3:
        if not (array == array[..., :1]).all():
            raise _colour_error(where, array, mode)
        array = array[..., 0]
    if array.ndim != 2 or 0 in array.shape:
        raise SegmentationDataError(
            f"{_prefix(where)}the mask has shape {array.shape}; expected (height, width): one class index per pixel."
        )
    if np.issubdtype(array.dtype, np.floating):
        fractional = ~np.isfinite(array) | (array != np.round(array))
        if fractional.any():
            examples = _listing(np.unique(array[fractional])[:3].tolist(), 3)
            raise SegmentationDataError(
                f"{_prefix(where)}the mask holds {int(fractional.sum())} value(s) that are not whole numbers (e.g. "
                f"{examples}; {f'mode {mode}' if mode else array.dtype}): class indices are integers. Resize masks "
                "only with nearest-neighbour interpolation and store them as integers (mode 'L' or 'I;16')."
            )
    return array.astype(np.int64)


def check_ignore_index(num_labels: int, ignore_index: int, error: type[ValueError] | None = None) -> None:
    """The ignore index must not be a class: with more than 255 classes (16-bit masks), 255 is one. `error`: the
    exception class to raise (default `SegmentationDataError`; the metric raises its own)."""
    if 0 <= ignore_index < num_labels:
        raise (error or SegmentationDataError)(
            f"ignore_index {ignore_index} is one of the classes 0..{num_labels - 1}: pixels of class {ignore_index} "
            "would be left out of the labels (and scored as errors where predicted). Mark unlabelled pixels with a "
            "value outside the classes and pass it as ignore_index (the script's ignore index is 255: at most 255 "
            "classes)."
        )


def mask_to_array(mask, num_labels: int, reduce_labels: bool, ignore_index: int = 255, where: str = "") -> np.ndarray:
    """A class-index array (int64, `(H, W)`) from a mask: a PIL image or an array (see `_mask_pixels` for the modes
    and shapes read, exactly: 16-bit masks are NOT rescaled). `reduce_labels` maps 0 -> ignore and k -> k-1 (ADE20K,
    where 0 is 'other'; masks numbered from 1 without a 0 are fine too; masks already numbered from 0 must not be
    reduced: their class 0 would be ignored and every other class shifted, which no check can tell from 'other').
    A clear error for colour masks, values outside the classes (negative ones too) and, for a JPEG mask, a word on
    its lossy compression."""
    check_ignore_index(num_labels, ignore_index)
    original = _mask_pixels(mask, where)
    array = original
    if reduce_labels:
        array = np.where(original == 0, ignore_index, original - 1)
        array[original == ignore_index] = ignore_index
    bad = ((array < 0) | (array >= num_labels)) & (array != ignore_index)
    if bad.any():
        values = sorted(np.unique(original[bad]).tolist())
        shown = f"{values[:8]}{' ...' if len(values) > 8 else ''}"
        if reduce_labels:
            expected = (
                f"are not classes: with reduce_labels (--do_reduce_labels in the script) masks hold 0 (other, "
                f"ignored), 1..{num_labels} (classes 0..{num_labels - 1}) or {ignore_index} (ignored)"
            )
            fix = "Check the class list (--id2label in the script), or drop --do_reduce_labels if 0 is a class"
        else:
            expected = f"are not classes 0..{num_labels - 1} (or {ignore_index} = ignore)"
            fix = (
                "Check the class list (--id2label in the script), or use --do_reduce_labels if 0 means 'other' and "
                "the classes are numbered from 1 (ADE20K)"
            )
        if values[0] < 0:
            fix = f"Mark unlabelled pixels with {ignore_index} (the ignore index), not with negative values"
        jpeg = (
            " The mask is a JPEG: its lossy compression creates values between and beyond the classes at their "
            "borders; save masks as PNG."
            if getattr(mask, "format", None) == "JPEG"
            else ""
        )
        raise SegmentationDataError(f"{_prefix(where)}mask values {shown} {expected}. {fix}.{jpeg}")
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

    `image` and `mask` may be any value `load_segmentation_image` / `load_segmentation_mask` read. A mask whose size
    differs from its image's is refused (`where` names the item); the first JPEG mask is warned about (lossy).
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

        check_ignore_index(num_labels, ignore_index)
        self.train, self.crop_size, self.scale = train, crop_size, tuple(scale)
        self.mean = torch.tensor(image_mean).view(3, 1, 1)
        self.std = torch.tensor(image_std).view(3, 1, 1)
        self.num_labels, self.reduce_labels, self.ignore_index = num_labels, reduce_labels, ignore_index
        self.ratio_range, self.flip_prob = ratio_range, flip_prob
        self.photometric = (
            v2.ColorJitter(brightness=0.25, contrast=0.5, saturation=0.5, hue=18 / 360) if photometric else None
        )
        self.warned_jpeg = False

    def _resized_size(self, height: int, width: int, ratio: float) -> tuple[int, int]:
        long_edge, short_edge = (s * ratio for s in self.scale)
        factor = min(long_edge / max(height, width), short_edge / min(height, width))
        return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))

    def _check_pair(self, image: Image.Image, mask, labels: np.ndarray, where: str) -> None:
        if getattr(mask, "format", None) == "JPEG" and not self.warned_jpeg:
            self.warned_jpeg = True
            logger.warning(
                "%sthe mask is a JPEG. JPEG compression is lossy: pixels at class borders get values of other or "
                "no classes. Save masks as PNG. (Warned once; other masks may be JPEG too.)",
                _prefix(where),
            )
        if labels.shape != (image.height, image.width):
            height, width = labels.shape
            transposed = (width, height) == (image.height, image.width)
            raise SegmentationDataError(
                f"{_prefix(where)}the mask is {width}x{height} pixels (width x height) but its image is "
                f"{image.width}x{image.height}: a mask must label every pixel of its image. Check that this mask "
                "belongs to this image; resize masks only with nearest-neighbour interpolation."
                + (
                    " The sizes are swapped: the image may carry an EXIF orientation (applied when it is read) that "
                    "its mask lacks; rotate the mask the same way, or remove the orientation tag from the image."
                    if transposed
                    else ""
                )
            )

    def __call__(self, image, mask, where: str = "") -> dict:
        from torchvision.transforms.v2 import functional as TF

        image = load_segmentation_image(image, where)
        mask = load_segmentation_mask(mask, where)
        array = mask_to_array(mask, self.num_labels, self.reduce_labels, self.ignore_index, where)
        self._check_pair(image, mask, array, where)
        labels = torch.from_numpy(array)
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


SEGMENTATION_COLUMNS = ("image", "annotation")
_TEXT_OR_BYTES = ("string", "large_string", "binary", "large_binary")


class TransformedSegmentationDataset(torch.utils.data.Dataset):
    """A 🤗 dataset (or any sequence of dict rows) with `image`/`annotation` columns seen through a
    `SegmentationTransform`.

    A column may hold `datasets.Image()` values (read here undecoded and decoded by `load_segmentation_image` /
    `load_segmentation_mask`, so that an unreadable file or a 16-bit colour mask fails naming its row and file),
    paths, bytes, `{"bytes", "path"}` dicts, or arrays (`Array2D`/`Array3D`, nested `Sequence`s, NumPy arrays,
    tensors). A missing column, a column of single numbers or class labels (a classification dataset), and a None
    value are refused naming the column (and the row); every error names the split, the row and its files."""

    def __init__(self, dataset, transform: SegmentationTransform, split: str = "") -> None:
        self.transform, self.split, self.modes = transform, split, {}
        features = getattr(dataset, "features", None)
        if features is not None:
            import datasets

            missing = [column for column in SEGMENTATION_COLUMNS if column not in features]
            if missing:
                raise SegmentationDataError(
                    f"The {split!r} split has no column(s) {missing}; its columns are {list(features)}. Name the "
                    "image and mask columns (--image_column/--annotation_column in the script) or rename them to "
                    "'image' and 'annotation'."
                )
            for column in SEGMENTATION_COLUMNS:
                feature = features[column]
                if isinstance(feature, datasets.ClassLabel) or (
                    isinstance(feature, datasets.Value) and feature.dtype not in _TEXT_OR_BYTES
                ):
                    raise SegmentationDataError(
                        f"The {split!r} split's {column!r} column holds one {feature!r} per row, not an "
                        f"{'image' if column == 'image' else 'image-sized mask'}: is this a classification dataset? "
                        "Name the right columns (--image_column/--annotation_column in the script)."
                    )
                if isinstance(feature, datasets.Image) and feature.decode:
                    self.modes[column] = feature.mode
                    dataset = dataset.cast_column(column, datasets.Image(decode=False))  # metadata only: cheap
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        row = self.dataset[index]
        where = describe_segmentation_item(self.split, index)
        if not isinstance(row, dict) or any(column not in row for column in SEGMENTATION_COLUMNS):
            raise SegmentationDataError(
                f"{where}: expected a row with 'image' and 'annotation', got "
                f"{sorted(row) if isinstance(row, dict) else type(row).__name__}."
            )
        image, mask = row["image"], row["annotation"]
        where = describe_segmentation_item(self.split, index, image, mask)
        return self.transform(
            load_segmentation_image(image, where, self.modes.get("image")),
            load_segmentation_mask(mask, where, self.modes.get("annotation")),
            where=where,
        )


__all__ = [
    "DIGIT_SCENE_LABELS",
    "INDEX_MODES",
    "SegmentationDataError",
    "SegmentationTransform",
    "TransformedSegmentationDataset",
    "collate_segmentation",
    "describe_segmentation_item",
    "load_digit_scenes",
    "load_segmentation_dataset",
    "load_segmentation_image",
    "load_segmentation_mask",
    "mask_to_array",
]

"""Image processor of the PaCa-ViT Mask R-CNN: mmdet's test-time preprocessing and the pipelines' post-processing.

Preprocessing follows mmdet 3 (`Resize(scale=(1333, 800), keep_ratio=True)` + `DetDataPreprocessor`): the scale
factor is `min(1333 / long side, 800 / short side)`, the new size `int(x * s + 0.5)` (mmcv's rounding; at least 1
px a side, for extreme aspect ratios), bilinear resampling without antialiasing (like cv2's `INTER_LINEAR`) to
uint8, normalisation with the ImageNet mean/std (mmdet's 123.675/58.395 ... in 0-255 units), then zero padding at
the bottom/right to a multiple of 32. The batch carries `image_sizes` (each image inside the padding) and
`original_sizes`, so the model returns boxes and masks at the original size, as mmdet does with `rescale=True`.

Images are read into 8-bit RGB by `to_uint8_chw` (its docstring lists how each PIL mode, layout and dtype is read:
16-bit images are rescaled to 8 bits, what cannot be interpreted is refused with an
`ImageInputError`). Training annotations are checked by `check_annotation` (an `AnnotationError` names the
image and says what to fix); the model checks its `labels` with the same function.

`post_process_object_detection` and `post_process_instance_segmentation` give the formats that transformers'
`pipeline("object-detection")` and `pipeline("image-segmentation", subtask="instance")` expect.

Only torch and numpy are needed (no torchvision; PIL images are read through their own methods, without importing
PIL), and it imports nothing from the package but transformers, so the file works as Hub remote code on its own.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ChannelDimension

logger = logging.getLogger(__name__)

CHANNEL_COUNTS = (1, 3, 4)  # gray, RGB, RGBA: transformers' `convert_to_rgb` infers the layout with these counts
BOX_TOLERANCE = 1.0  # pixels a box may reach past the image border (rounding); farther is an error
MASKS_HELP = "masks (N, H, W) binary, one per box, at the image's size"


class ImageInputError(ValueError):
    """An image the Mask R-CNN processor cannot read as RGB; the message names the image (`images[i]`) and the fix."""


class AnnotationError(ValueError):
    """A training annotation (processor `annotations[i]` / model `labels[i]`) that cannot be right; the message
    names the image and the field, and says what to do."""


def mmdet_rescale_size(height: int, width: int, shortest_edge: int, longest_edge: int) -> tuple[int, int]:
    """Size (height, width) of mmcv's `rescale_size(keep_ratio=True)`: the largest scale that fits both limits,
    sizes rounded half up (`int(x * s + 0.5)`), and at least 1 px a side (mmcv would give 0 for a side of extreme
    aspect ratio, e.g. 4000x2 to at most 160 px: 160x0; here 160x1)."""
    if height < 1 or width < 1:
        raise ImageInputError(f"Cannot resize an image of {height}x{width} pixels: give an image of at least 1x1.")
    if shortest_edge <= 0 or longest_edge <= 0:
        raise ValueError(
            f"size shortest_edge={shortest_edge}, longest_edge={longest_edge}: both must be positive pixel counts."
        )
    scale = min(longest_edge / max(height, width), shortest_edge / min(height, width))
    return max(int(height * scale + 0.5), 1), max(int(width * scale + 0.5), 1)


def _is_pil(image) -> bool:
    return all(hasattr(image, name) for name in ("mode", "convert", "getbands", "size"))


def _pil_to_array(image, where: str) -> np.ndarray:
    """(H, W) or (H, W, C) array of a PIL image, in the dtype `_to_uint8` rescales (see `to_uint8_chw`)."""
    mode = image.mode
    try:
        if mode.startswith("I;16"):  # I;16, I;16L, I;16B (big-endian), I;16N
            return np.asarray(image).astype(np.uint16)
        if mode == "I":  # 32-bit integer mode, in which 16-bit PNG/TIFF files open
            array = np.asarray(image)
            low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
            if low < 0 or high > 65535:
                raise ImageInputError(
                    f"{where} is a PIL image of mode 'I' with values {low}..{high}: mode 'I' is read as 16-bit "
                    "(0..65535, as 16-bit PNG/TIFF files open in it), and these values do not fit. Rescale it to "
                    "8 bits yourself and pass a uint8 array or an 'L'/'RGB' image."
                )
            return array.astype(np.uint16)
        if mode == "F":
            return np.asarray(image, dtype=np.float32)
        return np.asarray(image if mode == "RGB" else image.convert("RGB"))
    except ImageInputError:
        raise
    except Exception as error:  # PIL raises many types (ValueError for unsupported conversions, OSError, ...)
        raise ImageInputError(
            f"Cannot read {where}, a PIL image of mode {mode!r} and size {image.size}: {type(error).__name__}: "
            f"{error}. Convert it to RGB yourself (image.convert('RGB')) or fix the file."
        ) from error


def _channels_first(shape: tuple[int, ...], input_data_format, where: str) -> bool:
    """Whether a 3-D array is (C, H, W). transformers' rule (`infer_channel_dimension_format` with the channel
    counts of `convert_to_rgb`, 1/3/4): the end that is a channel count; when both are, channels-first (its default),
    with a warning that names the image; `input_data_format` decides instead when given."""
    if input_data_format is not None:
        return ChannelDimension(input_data_format) == ChannelDimension.FIRST
    first, last = shape[0] in CHANNEL_COUNTS, shape[-1] in CHANNEL_COUNTS
    if first and last:
        logger.warning(
            "%s has shape %s: both its first and its last dimension could be the channels; it is read as "
            "channels-first (C, H, W), transformers' default. Pass input_data_format='channels_last' if it is "
            "(H, W, C) (or give a PIL image, whose layout is known).",
            where,
            shape,
        )
        return True
    if first or last:
        return first
    raise ImageInputError(
        f"{where} has shape {shape}: neither its first nor its last dimension is a channel count (1, 3 or 4). "
        "Give an image of shape (H, W), (H, W, C) or (C, H, W) with C = 1 (gray), 3 (RGB) or 4 (RGBA)."
    )


def _to_uint8(array: np.ndarray, where: str) -> np.ndarray:
    """8-bit pixels from the dtypes `to_uint8_chw` documents; the rest is an `ImageInputError`."""
    dtype = array.dtype
    if dtype == np.uint8:
        return array
    if dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if dtype.kind == "u" and dtype.itemsize == 2:  # 16-bit: 0..65535 -> 0..255, rounded (65535 / 257 = 255)
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if dtype.kind in "iu":
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ImageInputError(
                f"{where} has dtype {dtype} with values {low}..{high}: integer images other than uint16 are read as "
                "8-bit (0..255). Cast 16-bit data to uint16 (read as 0..65535 and rescaled to 8 bits), or rescale "
                "the values to 0..255 and pass uint8."
            )
        return array.astype(np.uint8)
    if dtype.kind == "f":  # as pacavit.data.common.to_rgb reads PIL mode F: 0..1, else 0..255 levels
        low, high = float(array.min()), float(array.max())
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ImageInputError(f"{where} holds NaN or infinite values; give finite pixel values.")
        if low >= -0.5 / 255 and high <= 1 + 0.5 / 255:
            scale = 255.0
        elif low >= -0.5 and high <= 255.5:
            scale = 1.0
        else:
            raise ImageInputError(
                f"{where} is a floating-point image with values {low:.4g}..{high:.4g}: only 0..1 or 0..255 can be "
                "read as intensities. Rescale it to one of them (or pass uint8 / uint16 pixels)."
            )
        return np.clip(np.rint(array.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    raise ImageInputError(
        f"{where} has dtype {dtype}; give uint8, uint16, bool or floating-point (0..1 or 0..255) pixels."
    )


def to_uint8_chw(image, input_data_format: str | ChannelDimension | None = None, index: int | None = None):
    """PIL image, NumPy array or tensor -> (3, H, W) uint8 tensor (RGB); `index` only names the image in errors.

    * Layout: a PIL image is (H, W, C) by definition (no guessing, also at 1-4 px high). A 2-D array is grayscale.
      A 3-D array or tensor is channels-first or -last by transformers' rule: the end that is a channel count
      (1, 3 or 4); when both ends are (e.g. (3, 3, 3), (3, 5, 4)), channels-first, transformers' default, with a
      warning naming the image, unless `input_data_format` ("channels_first" / "channels_last") says which.
    * Values by dtype: uint8 as is; bool -> 0/255; uint16 (and PIL modes `I;16`, `I;16B`, ...) 0..65535 -> 0..255
      (x / 257, rounded); PIL mode `I` (32-bit, as 16-bit PNGs open) is read as 16-bit, values outside 0..65535 are
      an error; other integer dtypes must hold 0..255 (transformers' convention for integer images), else an error;
      floats (and PIL mode `F`) in 0..1 are multiplied by 255, floats in 0..255 (max above 1) are taken as 8-bit
      levels (rounded), other ranges and NaN/Inf are an error; the same rules as `pacavit.data.common.to_rgb`, which
      reads the training images.
    * Channels: gray is repeated to RGB; the 4th channel of a 4-channel array is alpha and is dropped; every other
      PIL mode (1, L, LA, P, PA, RGBA, CMYK, YCbCr, LAB, HSV, ...) goes through `image.convert("RGB")` (palette
      colours; alpha dropped). Both as the training images are read (`to_rgb`) and as mmdet reads files (cv2).
    * An image of 0 px, another rank, channel count or dtype, or another type is an `ImageInputError`.
    """
    where = f"images[{index}]" if index is not None else "the image"
    if _is_pil(image):
        array, channels_known = _pil_to_array(image, where), True
    elif torch.is_tensor(image):
        tensor = image.detach().cpu()
        array, channels_known = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy(), False
    elif isinstance(image, np.ndarray):
        array, channels_known = image, False
    else:
        raise ImageInputError(
            f"{where} is a {type(image).__name__}; give a PIL image, a NumPy array or a torch tensor (for a file: "
            "PIL.Image.open(path))."
        )
    shape = tuple(array.shape)
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3:
        if channels_known or not _channels_first(shape, input_data_format, where):
            array = np.moveaxis(array, -1, 0)
    else:
        hint = " For a batch, pass a list of images." if array.ndim == 4 else ""
        raise ImageInputError(
            f"{where} has shape {shape}; an image is (H, W), (H, W, C) or (C, H, W) with C = 1, 3 or 4.{hint}"
        )
    if array.shape[0] not in CHANNEL_COUNTS:
        raise ImageInputError(
            f"{where} has {array.shape[0]} channels (shape {shape}); give 1 (gray), 3 (RGB) or 4 (RGBA) channels."
        )
    if array.shape[1] == 0 or array.shape[2] == 0:
        raise ImageInputError(
            f"{where} is empty ({array.shape[1]}x{array.shape[2]} pixels, height x width); give at least 1x1."
        )
    array = _to_uint8(array, where)
    if array.shape[0] == 4:  # RGBA: the alpha channel is dropped, as PIL's convert("RGB") and mmdet (cv2) do
        array = array[:3]
    elif array.shape[0] == 1:
        array = np.repeat(array, 3, axis=0)
    return torch.from_numpy(np.ascontiguousarray(array))


def resize_bilinear_uint8(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    resized = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=False)
    return resized[0].round().clamp(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------------------------
# Training annotations (the processor's `annotations`, the model's `labels`)
# --------------------------------------------------------------------------------------------
ANNOTATION_HELP = (
    "give 'boxes' (N, 4) x1, y1, x2, y2 in pixels, 'class_labels' (N,) 0-based class ids and 'masks' (N, H, W) "
    "binary masks at the image's size; N may be 0 (an image without objects)"
)


def _as_tensor(value, where: str, field: str) -> torch.Tensor:
    try:
        if torch.is_tensor(value):
            return value
        if isinstance(value, (list, tuple)) and value and all(torch.is_tensor(v) for v in value):
            return torch.stack(list(value))
        return torch.as_tensor(np.asarray(value))
    except Exception as error:  # ragged lists, objects, tensors of different shapes, ...
        raise AnnotationError(
            f"{where}: '{field}' cannot be read as one array ({type(error).__name__}: {error}); {ANNOTATION_HELP}."
        ) from error


def binary_masks(masks: torch.Tensor, where: str) -> torch.Tensor:
    """uint8 0/1 masks: bool as is; integers: nonzero is inside (so 0/255 masks work); floats must lie in [0, 1]
    and are inside from 0.5 (mmdet's mask threshold), else an `AnnotationError`."""
    if masks.dtype == torch.bool:
        return masks.to(torch.uint8)
    if masks.is_complex():
        raise AnnotationError(f"{where}: masks have dtype {masks.dtype}; give binary masks (bool or 0/1).")
    if masks.is_floating_point():
        if masks.numel():
            low, high = float(masks.min()), float(masks.max())
            if not (0 <= low and high <= 1):  # NaN fails too
                raise AnnotationError(
                    f"{where}: float masks hold values {low:.4g}..{high:.4g}; float masks are read as 0..1 (inside "
                    "from 0.5). Give binary masks (bool, or 0/1 integers)."
                )
        return (masks >= 0.5).to(torch.uint8)
    return (masks != 0).to(torch.uint8)


def _listing(values: torch.Tensor, limit: int = 5) -> str:
    rows = values[:limit].tolist()
    return f"{rows}" + (f" and {len(values) - limit} more" if len(values) > limit else "")


def check_annotation(
    annotation,
    where: str,
    size: tuple[int, int],
    size_name: str,
    num_labels: int | None = None,
    padded_size: tuple[int, int] | None = None,
    mask_fix: str = "",
) -> dict:
    """Check one image's training annotation and return it as tensors: `boxes` float32 (N, 4), `class_labels` int64
    (N,) and `masks` uint8 0/1 (N, h, w) (see `binary_masks`; key `labels` is read as `class_labels` too).

    `where` names the annotation in errors (`annotations[i]`, `labels[i]`), `size` (height, width) is the image the
    boxes and masks refer to, called `size_name`; masks may also have `padded_size` (the padded batch: they align at
    the top-left). Refused, with an `AnnotationError` that says what to do: not a dict, a missing key, shapes other
    than (N, 4) / (N,) / (N, H, W) (empty arrays of any shape are N = 0), counts that differ, masks of another size,
    non-finite boxes, boxes with x2 <= x1 or y2 <= y1 or reaching more than 1 px past the image, fractional or
    negative class ids (or ids >= `num_labels` when given), objects marked `iscrowd`. Cost: one pass over the masks
    (the binarisation); the rest is O(N).
    """
    height, width = size
    if not isinstance(annotation, Mapping):
        raise AnnotationError(f"{where} is a {type(annotation).__name__}, not a dict: {ANNOTATION_HELP}.")
    key = "class_labels" if "class_labels" in annotation else "labels"
    missing = [
        name for name, k in (("boxes", "boxes"), ("class_labels", key), ("masks", "masks")) if k not in annotation
    ]
    if missing:
        raise AnnotationError(
            f"{where} has no {missing} (its keys: {sorted(map(str, annotation))}): {ANNOTATION_HELP}."
        )

    boxes = _as_tensor(annotation["boxes"], where, "boxes")
    boxes = boxes.reshape(0, 4) if boxes.numel() == 0 else boxes
    if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.dtype == torch.bool or boxes.is_complex():
        raise AnnotationError(
            f"{where}: boxes have shape {tuple(boxes.shape)} and dtype {boxes.dtype}; give numbers of shape (N, 4), "
            "one row x1, y1, x2, y2 (pixels) per object."
        )
    boxes = boxes.to(torch.float32)

    classes = _as_tensor(annotation[key], where, key)
    classes = classes.reshape(0) if classes.numel() == 0 else classes
    if classes.ndim != 1 or classes.dtype == torch.bool or classes.is_complex():
        raise AnnotationError(
            f"{where}: {key} have shape {tuple(classes.shape)} and dtype {classes.dtype}; give integer class ids of "
            "shape (N,), one per box."
        )
    if classes.is_floating_point():
        if not torch.equal(classes, classes.round()):  # NaN too
            raise AnnotationError(
                f"{where}: {key} {_listing(classes)} are not whole numbers; give integer class ids (0-based)."
            )
    classes = classes.to(torch.int64)

    masks = _as_tensor(annotation["masks"], where, "masks")
    if masks.ndim >= 1 and masks.shape[0] == 0:
        masks = torch.zeros((0, height, width), dtype=torch.uint8, device=masks.device)
    if masks.ndim != 3:
        raise AnnotationError(
            f"{where}: masks have shape {tuple(masks.shape)}; give (N, H, W), one binary mask per box (for one "
            "object: mask[None])."
        )
    if tuple(masks.shape[1:]) not in {(height, width), padded_size}:
        padded = f" (or the padded batch, {padded_size[0]}x{padded_size[1]})" if padded_size else ""
        raise AnnotationError(
            f"{where}: masks are {masks.shape[1]}x{masks.shape[2]} but {size_name} is {height}x{width}. Give the "
            f"masks at the size of the image{padded}{mask_fix}."
        )
    if not len(boxes) == len(classes) == len(masks):
        raise AnnotationError(
            f"{where}: {len(boxes)} boxes, {len(classes)} {key} and {len(masks)} masks; give one class id and one "
            "mask per box."
        )
    if "iscrowd" in annotation:
        crowd = torch.where(_as_tensor(annotation["iscrowd"], where, "iscrowd").reshape(-1) != 0)[0]
        if len(crowd):
            raise AnnotationError(
                f"{where}: objects {_listing(crowd)} are marked iscrowd. Crowd regions are ignore regions, not "
                "objects: leave them out of the training targets (pacavit.data.detection.CocoInstanceDataset does)."
            )

    if len(boxes):
        x1, y1, x2, y2 = boxes.unbind(1)
        valid = torch.isfinite(boxes).all(1) & (x2 > x1) & (y2 > y1)
        valid &= (x1 >= -BOX_TOLERANCE) & (y1 >= -BOX_TOLERANCE)
        valid &= (x2 <= width + BOX_TOLERANCE) & (y2 <= height + BOX_TOLERANCE)
        bad = torch.where(~valid)[0]
        if len(bad):
            raise AnnotationError(
                f"{where}: boxes {_listing(boxes[bad])} (index {_listing(bad)}) have zero area or lie outside the "
                f"{height}x{width} image ({size_name}). Give x1 < x2, y1 < y2 in pixels of that image (not x, y, "
                "width, height, nor 0-1 coordinates); clip boxes to the image and drop empty ones "
                "(pacavit.data.detection.clip_boxes does both)."
            )
        negative = torch.where(classes < 0)[0]
        too_large = torch.where(classes >= num_labels)[0] if num_labels is not None else negative[:0]
        if len(negative) or len(too_large):
            bad = torch.cat([negative, too_large]).sort().values
            if num_labels is None:
                rule, fix = " (>= 0)", "Map your categories to 0..K-1 for a model of K classes"
            else:
                rule = f" below num_labels={num_labels}"
                fix = (
                    "Map your categories to 0..num_labels-1; for another number of classes build the model with "
                    "num_labels=K (from_pretrained(path, num_labels=K, id2label=..., label2id=..., "
                    "ignore_mismatched_sizes=True))"
                )
            raise AnnotationError(
                f"{where}: {key} must be 0-based ids{rule}, got {_listing(classes[bad])} (index {_listing(bad)}). "
                f"{fix}; torchvision-style labels (0 = background, objects from 1) need a -1."
            )
    return {"boxes": boxes, "class_labels": classes, "masks": binary_masks(masks, where)}


def _check_size(size) -> dict:
    if (
        not isinstance(size, Mapping)
        or set(size) != {"shortest_edge", "longest_edge"}
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size.values())
    ):
        raise ValueError(
            f"size={size!r}: give {{'shortest_edge': S, 'longest_edge': L}} in pixels, both positive integers "
            "(mmdet's scale=(1333, 800) is {'shortest_edge': 800, 'longest_edge': 1333})."
        )
    return dict(size)


def _check_fraction(name: str, value, meaning: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}={value!r}: give a number in [0, 1] ({meaning}).") from error
    if not 0 <= number <= 1:  # NaN fails too
        raise ValueError(f"{name}={value!r} is outside [0, 1] ({meaning}).")
    return number


def _data_format(value) -> ChannelDimension | None:
    if value is None:
        return None
    try:
        return ChannelDimension(value)
    except ValueError as error:
        raise ValueError(
            f"input_data_format={value!r}: give 'channels_first' (C, H, W), 'channels_last' (H, W, C) or None (read "
            "from the shape; PIL images need none)."
        ) from error


class PaCaViTMaskRCNNImageProcessor(BaseImageProcessor):
    r"""Image processor of `PaCaViTForInstanceSegmentation`.

    Args:
        do_resize (`bool`, defaults to `True`): resize keeping the aspect ratio to `size`.
        size (`dict`, defaults to `{"shortest_edge": 800, "longest_edge": 1333}`): mmdet's `scale=(1333, 800)`.
        do_normalize (`bool`, defaults to `True`), image_mean / image_std (`list[float]`): ImageNet statistics in
            [0, 1] units (mmdet's 123.675/58.395 ... divided by 255).
        size_divisor (`int`, defaults to 32): pad the batch to a multiple of it (mmdet `pad_size_divisor`).
    """

    model_input_names = ["pixel_values", "image_sizes", "original_sizes"]

    def __init__(
        self,
        do_resize: bool = True,
        size: dict | None = None,
        do_normalize: bool = True,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        size_divisor: int = 32,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.do_resize = do_resize
        self.size = _check_size(size) if size else {"shortest_edge": 800, "longest_edge": 1333}
        self.do_normalize = do_normalize
        self.image_mean = list(image_mean if image_mean is not None else IMAGENET_DEFAULT_MEAN)
        self.image_std = list(image_std if image_std is not None else IMAGENET_DEFAULT_STD)
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or not all(s > 0 for s in self.image_std):
            raise ValueError(
                f"image_mean={self.image_mean}, image_std={self.image_std}: give 3 values each (R, G, B, in 0-1 "
                "units), the std positive."
            )
        if size_divisor is not None and (not isinstance(size_divisor, int) or size_divisor < 0):
            raise ValueError(f"size_divisor={size_divisor!r}: give a non-negative integer (0 or None: no rounding).")
        self.size_divisor = size_divisor

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save `preprocessor_config.json` (and, for remote code, this file) WITHOUT `image_processor_type` and
        `auto_map`: the folder's `config.json` names this class under `auto_map["AutoImageProcessor"]` instead.

        Why: with an `auto_map` in `preprocessor_config.json`, transformers' pipelines (5.24) also look for a video
        processor derived from it and ask on the terminal whether to run the folder's code (a 15 s prompt), even
        when the installed package provides the class. Without it, `AutoImageProcessor` finds the class through the
        model config: the registered one when `pacavit` is imported, the folder's copy with `trust_remote_code`."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        path = Path(save_directory) / "preprocessor_config.json"
        values = json.loads(path.read_text())
        values.pop("image_processor_type", None)
        values.pop("auto_map", None)
        path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
        return result

    def __call__(self, images, annotations=None, **kwargs) -> BatchFeature:
        return self.preprocess(images, annotations=annotations, **kwargs)

    def resized_size(self, height: int, width: int, size: dict | None = None) -> tuple[int, int]:
        size = size or self.size
        return mmdet_rescale_size(height, width, size["shortest_edge"], size["longest_edge"])

    def preprocess(
        self,
        images,
        annotations=None,
        do_resize: bool | None = None,
        size: dict | None = None,
        return_tensors: str | None = "pt",
        input_data_format: str | ChannelDimension | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Resize, normalise and pad `images`: one image, a list, or a 4-D array/tensor (a batch). How each image
        is read (PIL modes, layouts, 16-bit and float values, alpha) is `to_uint8_chw`'s docstring; for arrays and
        tensors whose layout is ambiguous, `input_data_format` ("channels_first" / "channels_last") says which.

        `annotations` (optional, for training): one dict per image (a dict alone for one image) with `boxes` (N, 4)
        x1, y1, x2, y2 in pixels of the original image, `class_labels` (N,) 0-based ids and `masks` (N, H, W) at
        the original image's size; checked by `check_annotation` (an `AnnotationError` names the image and the
        fix), resized with the image (masks nearest-neighbour, as mmdet) and returned as `labels`, masks as uint8
        0/1. `data_format="channels_first"` and `do_convert_rgb=True` are accepted (what it does anyway); other
        arguments are an error."""
        ignored = {"data_format": (None, "channels_first", ChannelDimension.FIRST), "do_convert_rgb": (None, True)}
        unknown = sorted(k for k, v in kwargs.items() if k not in ignored or v not in ignored[k])
        if unknown:
            raise ValueError(
                f"preprocess() got unsupported arguments {unknown}; it takes images, annotations, do_resize, size, "
                "return_tensors and input_data_format (do_normalize, image_mean, image_std and size_divisor are set "
                "on the processor). It always returns RGB, channels-first."
            )
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors={return_tensors!r}: only 'pt' (PyTorch) is supported.")
        do_resize = self.do_resize if do_resize is None else do_resize
        size = _check_size(size) if size else self.size
        input_data_format = _data_format(input_data_format)
        if isinstance(images, (list, tuple)) or (
            (torch.is_tensor(images) or isinstance(images, np.ndarray)) and images.ndim == 4
        ):
            images = list(images)
        else:
            images = [images]
        if not images:
            raise ImageInputError("images is empty; give at least one image.")
        if annotations is not None:
            if isinstance(annotations, Mapping) and len(images) == 1:
                annotations = [annotations]
            if not isinstance(annotations, (list, tuple)):
                raise AnnotationError(
                    f"annotations is a {type(annotations).__name__} for {len(images)} images; give a list with one "
                    "dict per image, in the order of the images."
                )
            if len(annotations) != len(images):
                raise AnnotationError(
                    f"Got {len(annotations)} annotations for {len(images)} images; give one dict per image, in the "
                    "order of the images (an image without objects gets empty boxes, class_labels and masks)."
                )
        tensors, image_sizes, original_sizes, labels = [], [], [], []
        mean = torch.tensor(self.image_mean).view(3, 1, 1) * 255
        std = torch.tensor(self.image_std).view(3, 1, 1) * 255
        for index, image in enumerate(images):
            image = to_uint8_chw(image, input_data_format, index=index)
            height, width = image.shape[-2:]
            if annotations is not None:  # before the resize: a wrong annotation fails fast
                target = check_annotation(
                    annotations[index],
                    f"annotations[{index}]",
                    (height, width),
                    f"images[{index}]",
                    mask_fix=" the boxes refer to (the processor resizes both with the image)",
                )
            new_size = self.resized_size(height, width, size) if do_resize else (height, width)
            image = resize_bilinear_uint8(image, new_size).float()
            if self.do_normalize:
                image = (image - mean) / std
            tensors.append(image)
            image_sizes.append(new_size)
            original_sizes.append((height, width))
            if annotations is not None:
                labels.append(self._resize_annotation(target, (height, width), new_size))
        divisor = self.size_divisor or 1
        max_h = -(-max(s[0] for s in image_sizes) // divisor) * divisor
        max_w = -(-max(s[1] for s in image_sizes) // divisor) * divisor
        pixel_values = torch.zeros(len(tensors), 3, max_h, max_w)
        for i, image in enumerate(tensors):
            pixel_values[i, :, : image.shape[1], : image.shape[2]] = image
        data = {
            "pixel_values": pixel_values,
            "image_sizes": torch.tensor(image_sizes, dtype=torch.int64),
            "original_sizes": torch.tensor(original_sizes, dtype=torch.int64),
        }
        if annotations is not None:
            data["labels"] = labels
        return BatchFeature(data=data)

    @staticmethod
    def _resize_annotation(target: dict, old: tuple[int, int], new: tuple[int, int]) -> dict:
        """A `check_annotation` result moved from the image's size `old` to `new`."""
        scale_y, scale_x = new[0] / old[0], new[1] / old[1]
        masks = target["masks"].cpu()
        if len(masks) and tuple(masks.shape[-2:]) != tuple(new):
            masks = F.interpolate(masks[:, None].float(), size=new, mode="nearest")[:, 0].to(torch.uint8)
        elif not len(masks):
            masks = torch.zeros((0,) + tuple(new), dtype=torch.uint8)
        return {
            "boxes": target["boxes"].cpu() * torch.tensor([scale_x, scale_y, scale_x, scale_y]),
            "class_labels": target["class_labels"].cpu(),
            "masks": masks,
        }

    # ----------------------------------------------------------------------------------------
    # Post-processing
    # ----------------------------------------------------------------------------------------
    @staticmethod
    def _detections(outputs) -> tuple[list, list[tuple[int, int]]]:
        """The model's per-image detections and the frame (height, width) each refers to."""
        get = outputs.get if isinstance(outputs, Mapping) else (lambda name: getattr(outputs, name, None))
        detections, sizes = get("detections"), get("image_sizes")
        if detections is None or sizes is None:
            raise ValueError(
                f"outputs ({type(outputs).__name__}) has no detections: post-process what the model returns in eval "
                "mode (model.eval(); outputs = model(**inputs)), as a ModelOutput or dict (not return_dict=False)."
            )
        frames = [tuple(int(v) for v in s) for s in (sizes.tolist() if torch.is_tensor(sizes) else sizes)]
        return detections, frames

    @staticmethod
    def _target_sizes(frames: list[tuple[int, int]], target_sizes) -> list[tuple[int, int]]:
        if target_sizes is None:
            return frames
        if torch.is_tensor(target_sizes) or isinstance(target_sizes, np.ndarray):
            sizes = target_sizes.tolist()
        else:
            sizes = list(target_sizes)
        if len(sizes) != len(frames):
            raise ValueError(
                f"target_sizes has {len(sizes)} entries for {len(frames)} images; give one (height, width) per "
                "image, in the order of the batch."
            )
        result = []
        for index, entry in enumerate(sizes):
            try:
                values = [float(v) for v in entry]
            except (TypeError, ValueError):
                values = []
            if len(values) != 2 or not all(v.is_integer() and v >= 1 for v in values):
                raise ValueError(
                    f"target_sizes[{index}] is {entry!r}: give (height, width) in whole pixels, each at least 1 "
                    "(for a PIL image: image.size[::-1])."
                )
            result.append((int(values[0]), int(values[1])))
        return result

    @staticmethod
    def _rescaled(detection: dict, frame: tuple[int, int], target: tuple[int, int], with_masks: bool) -> dict:
        """Detections of the model (in `frame`) moved to `target`; a no-op when the model already worked at the
        target size (the processor passes `original_sizes`, so the pipelines always hit that case)."""
        if frame == target:
            return detection
        sy, sx = target[0] / frame[0], target[1] / frame[1]
        out = dict(detection, boxes=detection["boxes"] * detection["boxes"].new_tensor([sx, sy, sx, sy]))
        if with_masks and len(detection["masks"]):
            out["masks"] = F.interpolate(
                detection["masks"][:, None], size=target, mode="bilinear", align_corners=False
            )[:, 0]
        return out

    def post_process_object_detection(self, outputs, threshold: float = 0.5, target_sizes=None) -> list[dict]:
        """Per image: `scores`, `labels` (0-based ids of `id2label`) and `boxes` (x1, y1, x2, y2 in pixels of
        `target_sizes`, default the size the model returned them at), for the detections scoring above
        `threshold` (in [0, 1]). `target_sizes`: one (height, width) per image, whole pixels >= 1."""
        threshold = _check_fraction("threshold", threshold, "scores are probabilities; 0 keeps every detection")
        detections, frames = self._detections(outputs)
        results = []
        for detection, frame, target in zip(detections, frames, self._target_sizes(frames, target_sizes)):
            detection = self._rescaled(detection, frame, target, with_masks=False)
            keep = detection["scores"] > threshold
            results.append({k: detection[k][keep] for k in ("scores", "labels", "boxes")})
        return results

    def post_process_instance_segmentation(
        self,
        outputs,
        threshold: float = 0.5,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float = 0.8,
        target_sizes=None,
        return_binary_maps: bool = False,
        **kwargs,
    ) -> list[dict]:
        """Per image: `segmentation` and `segments_info` (`id`, `label_id`, `score`, `box`) for the detections
        scoring above `threshold`, with masks binarised at `mask_threshold` (mmdet: 0.5). The three thresholds
        must lie in [0, 1]; `target_sizes` as in `post_process_object_detection`; other arguments are an error
        (`label_ids_to_fuse=None` is accepted: there is nothing to fuse).

        With `return_binary_maps=True`, `segmentation` is the (N, H, W) stack of binary masks (instances may
        overlap, as mmdet returns them). Otherwise it is one (H, W) map of segment ids (-1 where no instance), as the
        image-segmentation pipeline expects: higher-scoring instances are painted over lower ones, and an instance
        keeping less than `overlap_mask_area_threshold` of its mask area visible is left out.
        """
        unknown = sorted(k for k, v in kwargs.items() if not (k == "label_ids_to_fuse" and v is None))
        if unknown:
            raise ValueError(
                f"post_process_instance_segmentation() got unsupported arguments {unknown}; it takes threshold, "
                "mask_threshold, overlap_mask_area_threshold, target_sizes and return_binary_maps."
            )
        threshold = _check_fraction("threshold", threshold, "scores are probabilities; 0 keeps every detection")
        mask_threshold = _check_fraction("mask_threshold", mask_threshold, "mask probabilities; mmdet uses 0.5")
        overlap_mask_area_threshold = _check_fraction(
            "overlap_mask_area_threshold",
            overlap_mask_area_threshold,
            "the fraction of an instance's mask area that must stay visible",
        )
        detections, frames = self._detections(outputs)
        results = []
        for detection, frame, target in zip(detections, frames, self._target_sizes(frames, target_sizes)):
            detection = self._rescaled(detection, frame, target, with_masks=True)
            keep = torch.where(detection["scores"] > threshold)[0]
            masks = detection["masks"][keep] >= mask_threshold
            scores, labels, boxes = (detection["scores"][keep], detection["labels"][keep], detection["boxes"][keep])
            info = [
                {"id": i, "label_id": int(labels[i]), "score": round(float(scores[i]), 6), "box": boxes[i].tolist()}
                for i in range(len(keep))
            ]
            if return_binary_maps:
                results.append({"segmentation": masks, "segments_info": info})
                continue
            segmentation = torch.full(target, -1, dtype=torch.int64, device=masks.device)
            for i in reversed(range(len(keep))):  # scores are sorted descending: the best instance is painted last
                segmentation[masks[i]] = i
            visible = []
            for i, segment in enumerate(info):
                area = int(masks[i].sum())
                shown = int((segmentation == i).sum())
                if area > 0 and shown / area >= overlap_mask_area_threshold:
                    visible.append(segment)
                else:
                    segmentation[segmentation == i] = -1
            results.append({"segmentation": segmentation, "segments_info": visible})
        return results


__all__ = [
    "AnnotationError",
    "ImageInputError",
    "PaCaViTMaskRCNNImageProcessor",
    "binary_masks",
    "check_annotation",
    "mmdet_rescale_size",
    "resize_bilinear_uint8",
    "to_uint8_chw",
]

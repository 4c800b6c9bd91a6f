"""Instance-segmentation data (COCO format): built-in digit scenes, COCO folders, 🤗 Datasets, mmdet-style
augmentation.

- `build_digit_scenes_coco(root)`: the default, offline data, written as a COCO-format folder
  (`root/{train,validation}/*.png` + `root/annotations/instances_{train,validation}.json`). Each scene is a
  textured background with 1-4 handwritten digits from the scikit-learn digits scans (real 8x8 images of the UCI
  set, upscaled); every digit is one instance with its box, its ink mask (RLE) and its class (`digit 0` ... `digit 9`,
  category ids 1-10). Deterministic; validation scenes use digit scans never seen in training.
- `load_coco_folder(images_dir, annotation_file)` / `coco_from_hf_dataset(dataset)`: user data, as a pycocotools
  `COCO` ground truth plus the images. Both go through one validator before anything trains, `pacavit.data.coco_format`
  (`check_coco_dict` + `complete_coco_dict`, re-exported here; its docstring lists what is refused with a
  `CocoFormatError` and what is warned about and dropped); the loaders add the checks against the image files
  (missing, unreadable, or of another size than annotated). Polygons, uncompressed and compressed RLE masks and
  `iscrowd` are read by pycocotools; a box without a mask gets its box as mask (`box_polygon`).
- `CocoInstanceDataset`: one item per image: the image and its training targets. Crowd annotations are left out
  of the targets (they are ignore regions: the COCO evaluation keeps them in the ground truth, where they are
  neither matched as misses nor count detections on them as false positives). Boxes are clipped to the image;
  a box with no area left after clipping is dropped, with a warning naming the annotation (`clip_boxes`).
- `DetectionTransform`: the PaCa COCO training pipeline (the original `mstrain_480_800` configs, from DETR):
  random flip, then either a multi-scale resize (shorter side 480-800 in steps of 32, longer <= 1333) or the
  resize (shorter 400/500/600) -> random crop (384-600) -> multi-scale resize alternative, with probability 0.5
  each; evaluation resizes to the processor's size. The image processor then normalises and pads.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..extras import require
from ..image_processing_pacavit_maskrcnn import mmdet_rescale_size, resize_bilinear_uint8, to_uint8_chw
from .coco_format import (
    CocoFormatError,
    _is_int,
    _listing,
    _Problems,
    box_polygon,
    check_coco_dict,
    complete_coco_dict,
    read_coco_json,
    validate_coco_dict,
)
from .common import CorruptImageError, decode_image, describe_image_source

logger = logging.getLogger(__name__)

DIGIT_CLASSES = [f"digit {d}" for d in range(10)]
MULTI_SCALE_SHORT_SIDES = tuple(range(480, 801, 32))  # 480, 512, ..., 800
CROP_PRE_RESIZE_SHORT_SIDES = (400, 500, 600)
CROP_SIZE_RANGE = (384, 600)


def coco_from_dict(data: dict):
    """A pycocotools `COCO` index built from an in-memory COCO dict (no file needed, no prints). Nothing is checked:
    pass user data through `validate_coco_dict` first."""
    return _index(copy.deepcopy(data))


def _index(data: dict):
    """A pycocotools `COCO` index of a dict this module built (no copy, no prints)."""
    coco = require("pycocotools.coco", purpose="COCO data").COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
        coco.createIndex()
    return coco


# --------------------------------------------------------------------------------------------
# Built-in data
# --------------------------------------------------------------------------------------------
def _digit_scene(rng: np.random.Generator, images: np.ndarray, targets: np.ndarray, size: int):
    """One RGB scene and its instances [(class, binary mask)] from a pool of 8x8 digit scans in [0, 16]."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(0.15, 0.6, 3)
    wave = 0.1 * np.sin(2 * np.pi * (rng.uniform(0.5, 2) * xx + rng.uniform(0.5, 2) * yy + rng.uniform()))
    scene = np.clip(base[None, None] + wave[..., None] + rng.normal(0, 0.03, (size, size, 3)), 0, 1)
    occupied = np.zeros((size, size), dtype=bool)
    instances = []
    for _ in range(int(rng.integers(1, 5))):
        glyph = int(rng.integers(size // 4, size // 2 + 1))
        for _attempt in range(10):  # place digits without overlap, so every mask is fully visible
            top, left = (int(v) for v in rng.integers(0, size - glyph + 1, 2))
            if not occupied[top : top + glyph, left : left + glyph].any():
                break
        else:
            continue
        occupied[top : top + glyph, left : left + glyph] = True
        index = int(rng.integers(len(targets)))
        scan = Image.fromarray((images[index] / 16.0 * 255).astype(np.uint8)).resize((glyph, glyph), Image.BILINEAR)
        ink = np.asarray(scan, dtype=np.float64) / 255.0
        colour = rng.uniform(0, 1, 3)
        window = scene[top : top + glyph, left : left + glyph]
        window[:] = window * (1 - ink[..., None]) + colour[None, None] * ink[..., None]
        mask = np.zeros((size, size), dtype=np.uint8)
        mask[top : top + glyph, left : left + glyph] = ink > 0.5
        if mask.sum() >= 4:
            instances.append((int(targets[index]), mask))
    return (scene * 255).round().astype(np.uint8), instances


def build_digit_scenes_coco(
    root: str | Path,
    num_train: int = 300,
    num_validation: int = 60,
    size: int = 96,
    seed: int = 0,
    digits: tuple[int, ...] = tuple(range(10)),
) -> Path:
    """Write the built-in digit-scene data as a COCO-format folder under `root` (reused if already complete).

    `digits`: the digit classes the scenes are made of (category id `d + 1`, name `digit <d>`)."""
    from sklearn.datasets import load_digits

    mask_utils = require("pycocotools.mask", purpose="COCO masks")
    root = Path(root)
    marker = root / "annotations" / "DONE.json"
    digits = [int(d) for d in digits]
    settings = {"num_train": num_train, "num_validation": num_validation, "size": size, "seed": seed, "digits": digits}
    if marker.exists() and json.loads(marker.read_text()) == settings:
        return root
    scans = load_digits()
    split = int(0.8 * len(scans.target))  # validation scenes are made only of held-out scans
    chosen = np.isin(scans.target, digits)
    pools = {
        "train": (scans.images[:split][chosen[:split]], scans.target[:split][chosen[:split]], num_train),
        "validation": (scans.images[split:][chosen[split:]], scans.target[split:][chosen[split:]], num_validation),
    }
    categories = [{"id": d + 1, "name": DIGIT_CLASSES[d], "supercategory": "digit"} for d in digits]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for offset, (split_name, (images, targets, count)) in enumerate(pools.items()):
        rng = np.random.default_rng([seed, offset])
        (root / split_name).mkdir(parents=True, exist_ok=True)
        coco = {"images": [], "annotations": [], "categories": categories}
        for image_id in range(1, count + 1):
            scene, instances = _digit_scene(rng, images, targets, size)
            file_name = f"{image_id:05d}.png"
            Image.fromarray(scene).save(root / split_name / file_name)
            coco["images"].append({"id": image_id, "file_name": file_name, "height": size, "width": size})
            for digit, mask in instances:
                rle = mask_utils.encode(np.asfortranarray(mask))
                x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
                rle["counts"] = rle["counts"].decode("ascii")
                coco["annotations"].append(
                    {
                        "id": len(coco["annotations"]) + 1,
                        "image_id": image_id,
                        "category_id": digit + 1,
                        "bbox": [x, y, w, h],
                        "area": float(mask_utils.area(rle)),
                        "segmentation": rle,
                        "iscrowd": 0,
                    }
                )
        (root / "annotations" / f"instances_{split_name}.json").write_text(json.dumps(coco))
    marker.write_text(json.dumps(settings))
    return root


# --------------------------------------------------------------------------------------------
# User data: COCO folders and 🤗 datasets, validated by `pacavit.data.coco_format`
# --------------------------------------------------------------------------------------------
UNREADABLE_FIX = (
    "Fix or replace these files, or remove their entries (and annotations); skip_unreadable=True "
    "(--skip_corrupt_images in the training scripts) leaves them out."
)


def load_coco_folder(images_dir: str | Path, annotation_file: str | Path, skip_unreadable: bool = False):
    """(`COCO` ground truth, list of image paths in `coco.getImgIds()` order) of a COCO-format folder.

    The annotations are checked before anything trains (`check_coco_dict`: every refusal and warning is listed
    there; `complete_coco_dict`). Each image's size is read from its file header (no decode): an image whose
    `height`/`width` in the file disagree with the image is refused (its masks would be made at the wrong size),
    missing ones are filled in. Missing image files raise `FileNotFoundError`, files PIL cannot open
    `CorruptImageError`, all listed at once; with `skip_unreadable`, the latter are left out (with their
    annotations) with a warning naming them. Files whose header reads but whose pixels do not (truncated) are
    found when decoded (`CocoInstanceDataset`, or the scripts' full scan)."""
    images_dir, annotation_file = Path(images_dir), Path(annotation_file)
    source = f"COCO annotation file {annotation_file}"
    data = check_coco_dict(read_coco_json(annotation_file), source)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"The images folder {images_dir} of {annotation_file} is not a folder.")
    images = sorted(data["images"], key=lambda image: image["id"])
    missing, unreadable, wrong = _Problems(source), _Problems(source), _Problems(source)
    paths = []
    for image in images:
        path = images_dir / image["file_name"]
        paths.append(path)
        where = f"{path} (image id {image['id']})"
        try:
            with Image.open(path) as handle:
                width, height = handle.size  # the header only: no decode
        except FileNotFoundError:
            missing.add(
                f"image files not found in {images_dir}",
                where,
                "Point the images folder at the split's images, or remove their entries from the annotation file.",
            )
            continue
        except Exception as error:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
            unreadable.add(
                "image files that cannot be opened", f"{where}: {type(error).__name__}: {error}", UNREADABLE_FIX
            )
            paths[-1] = None
            continue
        expected = (image.get("height", height), image.get("width", width))
        if expected != (height, width):
            swapped = (
                " (swapped: an EXIF orientation? pixels are read as stored)"
                if expected[::-1] == (height, width)
                else ""
            )
            wrong.add(
                "images whose height/width in the annotation file differ from the image file",
                f"{where}: annotations {expected[0]}x{expected[1]}, file {height}x{width} (height x width){swapped}",
                "Masks are made at the annotated size: correct 'height'/'width' (or re-export the annotations), "
                "or replace the file with the image that was annotated.",
            )
        image["height"], image["width"] = height, width
    missing.raise_if_any(FileNotFoundError)
    if not skip_unreadable:
        unreadable.raise_if_any(CorruptImageError)
    elif unreadable.kinds:
        left_out = {image["id"] for image, path in zip(images, paths) if path is None}
        _, items = unreadable.kinds["image files that cannot be opened"]
        logger.warning(
            "%s: %d image file(s) cannot be opened; they are left out with their annotations (%s)",
            source,
            len(items),
            _listing(items, "; "),
        )
        data["images"] = [image for image in data["images"] if image["id"] not in left_out]
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] not in left_out]
        paths = [path for path in paths if path is not None]
    wrong.raise_if_any()
    return _index(complete_coco_dict(data, source)), paths


def _hf_class_names(dataset, objects_column: str):
    """The class names of the `category` ClassLabel of a 🤗 dataset's objects feature, or None."""
    feature = getattr(dataset, "features", None)
    feature = feature.get(objects_column) if hasattr(feature, "get") else None
    for _ in range(3):  # Sequence({...}) -> dict of lists; List({...}) -> .feature dict; then the ClassLabel's list
        if isinstance(feature, dict):
            feature = feature.get("category")
        elif getattr(feature, "names", None) is not None:
            return list(feature.names)
        else:
            feature = getattr(feature, "feature", None)
    return list(feature.names) if getattr(feature, "names", None) is not None else None


def _to_list(value):
    return value.tolist() if isinstance(value, np.ndarray) else value


def _hf_objects(objects, where: str, objects_column: str) -> list[dict]:
    """The objects of one row as a list of dicts, from a dict of lists (`Sequence({...})` features) or a list of
    dicts (`List({...})`, datasets >= 3)."""
    fix = (
        f"The {objects_column!r} column holds per image 'bbox' ([x, y, width, height]) and 'category' (0-based "
        "class ids) lists of one length, optionally 'segmentation', 'area', 'iscrowd' (the Hub's detection layout); "
        "rename its keys (dataset.map) or pass objects_column= to coco_from_hf_dataset."
    )
    if isinstance(objects, dict):
        lists = {k: _to_list(v) for k, v in objects.items() if v is not None}
        bad = [k for k, v in lists.items() if not isinstance(v, (list, tuple))]
        if bad:
            raise CocoFormatError(
                f"{where}: {objects_column}[{bad[0]!r}] is a {type(lists[bad[0]]).__name__}, not a list. {fix}"
            )
        lengths = {k: len(v) for k, v in lists.items()}
        if len(set(lengths.values())) > 1:
            raise CocoFormatError(f"{where}: the {objects_column!r} lists have different lengths ({lengths}). {fix}")
        count = next(iter(lengths.values()), 0)
        objects = [{k: v[j] for k, v in lists.items()} for j in range(count)]
    elif not isinstance(objects, (list, tuple)):
        raise CocoFormatError(f"{where}: {objects_column!r} is a {type(objects).__name__}. {fix}")
    for j, item in enumerate(objects):
        if not isinstance(item, dict):
            raise CocoFormatError(f"{where}, object {j}: a {type(item).__name__}, not a dict. {fix}")
        missing = [k for k in ("bbox", "category") if item.get(k) is None]
        if missing:
            raise CocoFormatError(
                f"{where}, object {j}: no {' or '.join(map(repr, missing))} (keys: {sorted(item)}). {fix}"
            )
    return list(objects)


def _hf_image_size(value, where: str) -> tuple[int, int]:
    """(height, width) of a 🤗 image value (PIL image, path, or `{"bytes", "path"}`) from its header only."""
    if isinstance(value, Image.Image):
        return value.height, value.width
    try:
        if isinstance(value, dict) and value.get("bytes") is not None:
            handle = Image.open(io.BytesIO(value["bytes"]))
        elif isinstance(value, dict) and value.get("path"):
            handle = Image.open(value["path"])
        elif isinstance(value, (str, os.PathLike)):
            handle = Image.open(value)
        else:
            raise TypeError(f"unsupported image value of type {type(value).__name__}")
        with handle:
            return handle.height, handle.width
    except Exception as error:  # PIL raises many types
        raise CorruptImageError(
            f"Cannot open {describe_image_source(value)} ({where}): {type(error).__name__}: {error}. Fix or remove "
            "the image (dataset.filter); skip_unreadable=True (--skip_corrupt_images in the training scripts) leaves "
            "it out."
        ) from error


def coco_from_hf_dataset(
    dataset,
    image_column: str = "image",
    objects_column: str = "objects",
    class_names=None,
    split: str | None = None,
    skip_unreadable: bool = False,
):
    """COCO ground truth + images from a 🤗 dataset in the Hub's detection layout: an image column and an
    `objects` column with `bbox` (x, y, w, h), `category` (0-based class ids) and, optionally, `segmentation`
    (polygons or RLE), `iscrowd` and `area`; objects as a dict of lists (`Sequence({...})` features) or a list of
    dicts (`List({...})`). Category ids are the class ids + 1, image ids the row index + 1, annotation ids are
    numbered 1, 2, ... (messages name the row and object). A box without a mask gets its box as mask.

    The images are not decoded here, only their headers read (`CocoInstanceDataset` decodes them); they are
    returned as the rows give them (PIL images, or `{"bytes", "path"}` for `Image` columns, which are read with
    `decode=False`). The annotations go through the checks of `load_coco_folder` (`check_coco_dict`,
    `complete_coco_dict`); objects without `bbox`/`category`, lists of different lengths and class ids outside the
    class names are refused naming the row (`CocoFormatError`); rows whose image is None or cannot be opened raise
    `CorruptImageError`, or are left out with a warning naming them (`skip_unreadable`; image ids then have gaps).
    `split` names the split in messages."""
    source = "the 🤗 dataset" + (f" ({split!r} split)" if split else "")
    columns = getattr(dataset, "column_names", None)
    if columns is not None:
        missing = [c for c in (image_column, objects_column) if c not in columns]
        if missing:
            raise CocoFormatError(
                f"{source} has no column {' or '.join(map(repr, missing))} (columns: {columns}). Rename the columns "
                f"(dataset.rename_column) to {image_column!r} and {objects_column!r}, or pass image_column= / "
                "objects_column= to coco_from_hf_dataset."
            )
        import datasets

        feature = (getattr(dataset, "features", None) or {}).get(image_column)
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(image_column, datasets.Image(decode=False))  # headers only, decode later
        if hasattr(dataset, "select_columns"):
            dataset = dataset.select_columns([image_column, objects_column])
    names = list(class_names) if class_names is not None else _hf_class_names(dataset, objects_column)
    images, entries, annotations, where_by_id, skipped = [], [], [], {}, []
    for index, row in enumerate(dataset):
        where = f"row {index} of {source}"
        if not isinstance(row, dict) or objects_column not in row:
            found = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise CocoFormatError(
                f"{where} has no {objects_column!r} (found: {found}). Pass objects_column= to coco_from_hf_dataset "
                "or rename the column (dataset.rename_column)."
            )
        if row[objects_column] is None:
            raise CocoFormatError(
                f"{where}: {objects_column!r} is None. An image without objects has empty lists; fix or remove the "
                "row (dataset.filter)."
            )
        value = row.get(image_column)
        try:
            if value is None:
                raise CorruptImageError(
                    f"{where} has no image ({image_column!r} is None). Remove the row (dataset.filter) or give it its "
                    "image; skip_unreadable=True (--skip_corrupt_images in the training scripts) leaves it out."
                )
            height, width = _hf_image_size(value, where)
        except CorruptImageError as error:
            if not skip_unreadable:
                raise
            skipped.append(str(error))
            continue
        file_name = str(value.get("path") or "") if isinstance(value, dict) else getattr(value, "filename", "")
        images.append(value)
        entries.append({"id": index + 1, "height": height, "width": width, "file_name": file_name or f"row {index}"})
        for j, item in enumerate(_hf_objects(row.get(objects_column), where, objects_column)):
            category = item["category"]
            if not _is_int(category) or category < 0 or (names is not None and category >= len(names)):
                known = f"the {len(names)} class names" if names is not None else "class ids from 0"
                raise CocoFormatError(
                    f"{where}, object {j}: category {category!r} is outside {known}. Categories are 0-based class "
                    "ids (a ClassLabel feature); fix the data or pass class_names= to coco_from_hf_dataset."
                )
            annotation = {
                "id": len(annotations) + 1,
                "image_id": index + 1,
                "category_id": int(category) + 1,
                "bbox": _to_list(item["bbox"]),
            }
            for key in ("segmentation", "area", "iscrowd"):
                if item.get(key) is not None:
                    annotation[key] = _to_list(item[key])
            where_by_id[annotation["id"]] = f"row {index}, object {j}"
            annotations.append(annotation)
    if skipped:
        logger.warning(
            "%s: %d row(s) without a readable image are left out: %s", source, len(skipped), _listing(skipped, "; ")
        )
    if names is None:
        names = [f"class {i}" for i in range(max((a["category_id"] for a in annotations), default=0))]
    if not names:
        raise CocoFormatError(
            f"{source} has no class names and no objects: nothing to detect. Pass class_names= to "
            "coco_from_hf_dataset (its 'category' feature is not a ClassLabel), or use a split with objects."
        )
    data = {
        "images": entries,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": str(n)} for i, n in enumerate(names)],
    }
    data = validate_coco_dict(data, source, lambda _index, annotation: where_by_id[annotation["id"]])
    return _index(data), images


def category_mapping(coco) -> tuple[dict[int, int], dict[int, str]]:
    """(`label -> category id`, `id2label`): 0-based model labels for the dataset's categories sorted by id, so
    predictions map back to the dataset's own (possibly non-contiguous) ids."""
    ids = sorted(coco.getCatIds())
    return {label: cat for label, cat in enumerate(ids)}, {
        label: coco.cats[cat]["name"] for label, cat in enumerate(ids)
    }


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip x1, y1, x2, y2 boxes to the image; return (clipped boxes, mask of those that keep a positive area).

    COCO files in the wild hold boxes that stick out of the image, and zero-width ones; both are handled here so
    that the model's own check (which rejects them with an error) is never hit by dataset noise."""
    boxes = boxes.copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    return boxes, (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


class CocoInstanceDataset(torch.utils.data.Dataset):
    """The non-crowd annotations of a `COCO` ground truth as items `{"image": PIL RGB, "image_id": int, "boxes":
    (N, 4) x1 y1 x2 y2, "class_labels": (N,), "masks": (N, H, W)}`; `images` are paths, PIL images or 🤗
    `{"bytes", "path"}` values in sorted id order (decoded per item with `decode_image`, whose errors name the file
    or the index and `split`). Annotations of a category not in the ground truth's categories are refused here
    (`CocoFormatError`), for a `COCO` built without `load_coco_folder` / `coco_from_hf_dataset`."""

    def __init__(self, coco, images, transform=None, split: str | None = None) -> None:
        self.coco = coco
        self.image_ids = sorted(coco.getImgIds())
        if len(images) != len(self.image_ids):
            raise ValueError(f"{len(images)} images for {len(self.image_ids)} image ids in the annotations.")
        self.images = list(images)
        self.split = split
        unknown = [a for a in coco.anns.values() if a.get("category_id") not in coco.cats]
        if unknown:
            raise CocoFormatError(
                f"{len(unknown)} annotation(s) have a category_id that is not in the categories (ids "
                f"{_listing(a.get('id') for a in unknown)}; missing category ids "
                f"{_listing(sorted({a.get('category_id') for a in unknown}, key=str))}). Load the data with "
                "load_coco_folder / coco_from_hf_dataset, which check it, or fix the annotations."
            )
        self.label_to_category, self.id2label = category_mapping(coco)
        self.category_to_label = {c: label for label, c in self.label_to_category.items()}
        self.transform = transform

    def __len__(self) -> int:
        return len(self.image_ids)

    def _mask(self, annotation: dict, image_id: int, height: int, width: int) -> np.ndarray:
        try:
            mask = self.coco.annToMask(annotation)
        except Exception as error:  # pycocotools: "Invalid RLE mask representation", TypeError, ...
            raise CocoFormatError(
                f"The segmentation of annotation {annotation.get('id')} (image id {image_id}) cannot be decoded: "
                f"{type(error).__name__}: {error}. Fix or remove it in the annotations."
            ) from error
        if mask.shape != (height, width):
            raise CocoFormatError(
                f"The mask of annotation {annotation.get('id')} is {mask.shape[0]}x{mask.shape[1]}, its image (id "
                f"{image_id}) {height}x{width} (height x width). Re-export the mask at its image's size."
            )
        return mask

    def target(self, index: int) -> dict:
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        height, width = info["height"], info["width"]
        annotations = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes = np.array([a["bbox"] for a in annotations], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        boxes, keep = clip_boxes(boxes, height, width)
        for a, kept in zip(annotations, keep):
            if not kept:
                logger.warning(
                    "annotation %s of image %s has no area inside the image; it is dropped", a.get("id"), image_id
                )
        annotations = [a for a, kept in zip(annotations, keep) if kept]
        masks = (
            np.stack([self._mask(a, image_id, height, width) for a in annotations])
            if annotations
            else np.zeros((0, height, width), np.uint8)
        )
        return {
            "image_id": image_id,
            "boxes": torch.from_numpy(boxes[keep]),
            "class_labels": torch.tensor(
                [self.category_to_label[a["category_id"]] for a in annotations], dtype=torch.int64
            ),
            "masks": torch.from_numpy(masks),
        }

    def __getitem__(self, index: int) -> dict:
        item = self.target(index)
        value = self.images[index]
        value = str(value) if isinstance(value, os.PathLike) else value  # so that errors name the file
        image = decode_image(value, index, self.split)
        info = self.coco.imgs[item["image_id"]]
        if image.size != (info["width"], info["height"]):
            raise CocoFormatError(
                f"{describe_image_source(value, index, self.split)} (image id {item['image_id']}) is "
                f"{image.height}x{image.width}, its annotations say {info['height']}x{info['width']} (height x "
                "width): masks and boxes would not fit. Correct the annotations' height/width or the image."
            )
        item["image"] = image
        return self.transform(item) if self.transform is not None else item


# --------------------------------------------------------------------------------------------
# Augmentation (the PaCa COCO recipe) and batching
# --------------------------------------------------------------------------------------------
def _resize_item(image: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]):
    height, width = image.shape[-2:]
    sy, sx = size[0] / height, size[1] / width
    image = resize_bilinear_uint8(image, size)
    if len(masks):
        masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0].to(torch.uint8)
    else:
        masks = torch.zeros((0,) + tuple(size), dtype=torch.uint8)
    return image, masks, boxes * torch.tensor([sx, sy, sx, sy])


class DetectionTransform:
    """Training augmentation (flip + multi-scale or resize-crop-resize, as the original configs) or the plain
    evaluation item; returns `{"image": (3, H, W) uint8, "annotation": {...} (original frame for evaluation),
    "image_id"}` for `collate_detection`, which resizes (evaluation), normalises and pads with the processor."""

    def __init__(
        self,
        train: bool,
        short_sides=MULTI_SCALE_SHORT_SIDES,
        max_size: int = 1333,
        crop_pre_resize_short_sides=CROP_PRE_RESIZE_SHORT_SIDES,
        crop_size_range=CROP_SIZE_RANGE,
        crop_probability: float = 0.5,
        flip_probability: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.train = train
        self.short_sides = list(short_sides)
        self.max_size = max_size
        self.crop_pre_resize_short_sides = list(crop_pre_resize_short_sides)
        self.crop_size_range = crop_size_range
        self.crop_probability = crop_probability
        self.flip_probability = flip_probability
        self.generator = np.random.default_rng(seed)

    def __call__(self, item: dict) -> dict:
        image = to_uint8_chw(item["image"])
        masks, boxes, labels = item["masks"].to(torch.uint8), item["boxes"].float(), item["class_labels"]
        if self.train:
            rng = self.generator
            if rng.random() < self.flip_probability:
                width = image.shape[-1]
                image, masks = image.flip(-1), masks.flip(-1)
                boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
            if rng.random() < self.crop_probability:
                short = int(rng.choice(self.crop_pre_resize_short_sides))
                image, masks, boxes = _resize_item(
                    image, masks, boxes, mmdet_rescale_size(*image.shape[-2:], short, self.max_size)
                )
                image, masks, boxes, labels = self._random_crop(image, masks, boxes, labels, rng)
            short = int(rng.choice(self.short_sides))
            image, masks, boxes = _resize_item(
                image, masks, boxes, mmdet_rescale_size(*image.shape[-2:], short, self.max_size)
            )
        annotation = {"boxes": boxes, "class_labels": labels, "masks": masks}
        return {"image": image, "annotation": annotation, "image_id": item["image_id"]}

    def _random_crop(self, image, masks, boxes, labels, rng):
        """mmdet `RandomCrop(crop_type="absolute_range", allow_negative_crop=True)`: boxes clipped to the crop, those
        left without area removed (an image may end up with no objects, which trains as a negative sample)."""
        height, width = image.shape[-2:]
        low, high = self.crop_size_range
        crop_h = min(int(rng.integers(low, min(height, high) + 1)) if height >= low else height, height)
        crop_w = min(int(rng.integers(low, min(width, high) + 1)) if width >= low else width, width)
        top, left = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
        image = image[:, top : top + crop_h, left : left + crop_w]
        masks = masks[:, top : top + crop_h, left : left + crop_w]
        shifted = (boxes - torch.tensor([left, top, left, top], dtype=boxes.dtype)).numpy()
        clipped, keep = clip_boxes(shifted, crop_h, crop_w)
        keep_t = torch.from_numpy(keep)
        return image, masks[keep_t], torch.from_numpy(clipped[keep]), labels[keep_t]


def collate_detection(batch: list[dict], processor, train: bool) -> dict:
    """Normalise and pad a list of `DetectionTransform` items with the model's image processor. Training items
    are already at their augmented size (no resize); evaluation items are resized to the processor's size."""
    images = [item["image"] for item in batch]
    annotations = [item["annotation"] for item in batch]
    out = processor(images, annotations=annotations, do_resize=not train, input_data_format="channels_first")
    data = dict(out)
    data["image_ids"] = [item["image_id"] for item in batch]
    if not train:
        data.pop("labels")  # evaluation compares against the COCO ground truth instead
    return data


__all__ = [
    "DIGIT_CLASSES",
    "CocoFormatError",
    "CocoInstanceDataset",
    "DetectionTransform",
    "box_polygon",
    "build_digit_scenes_coco",
    "category_mapping",
    "check_coco_dict",
    "clip_boxes",
    "coco_from_dict",
    "coco_from_hf_dataset",
    "collate_detection",
    "complete_coco_dict",
    "load_coco_folder",
    "read_coco_json",
    "validate_coco_dict",
]

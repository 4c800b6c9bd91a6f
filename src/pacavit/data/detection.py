"""Instance-segmentation data (COCO format): built-in digit scenes, COCO folders, 🤗 Datasets, mmdet-style
augmentation.

- `build_digit_scenes_coco(root)`: the default, offline data, written as a COCO-format folder
  (`root/{train,validation}/*.png` + `root/annotations/instances_{train,validation}.json`). Each scene is a
  textured background with 1-4 handwritten digits from the scikit-learn digits scans (real 8x8 images of the UCI
  set, upscaled); every digit is one instance with its box, its ink mask (RLE) and its class (`digit 0` ... `digit 9`,
  category ids 1-10). Deterministic; validation scenes use digit scans never seen in training.
- `load_coco_folder(images_dir, annotation_file)` / `coco_from_hf_dataset(dataset)`: user data, as a pycocotools
  `COCO` ground truth plus the images. Polygons, uncompressed and compressed RLE masks and `iscrowd` are read by
  pycocotools; a box without a mask gets its box as mask.
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
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..extras import require
from ..image_processing_pacavit_maskrcnn import mmdet_rescale_size, resize_bilinear_uint8, to_uint8_chw
from .common import decode_image

logger = logging.getLogger(__name__)

DIGIT_CLASSES = [f"digit {d}" for d in range(10)]
MULTI_SCALE_SHORT_SIDES = tuple(range(480, 801, 32))  # 480, 512, ..., 800
CROP_PRE_RESIZE_SHORT_SIDES = (400, 500, 600)
CROP_SIZE_RANGE = (384, 600)


def coco_from_dict(data: dict):
    """A pycocotools `COCO` index built from an in-memory COCO dict (no file needed, no prints)."""
    coco = require("pycocotools.coco", purpose="COCO data").COCO()
    coco.dataset = copy.deepcopy(data)
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
# User data
# --------------------------------------------------------------------------------------------
def load_coco_folder(images_dir: str | Path, annotation_file: str | Path):
    """(`COCO` ground truth, list of image paths in `coco.getImgIds()` order) of a COCO-format folder."""
    images_dir, annotation_file = Path(images_dir), Path(annotation_file)
    if not annotation_file.exists():
        raise FileNotFoundError(f"COCO annotation file {annotation_file} not found (expected instances_<split>.json).")
    coco = coco_from_dict(json.loads(annotation_file.read_text()))
    paths = []
    for image_id in sorted(coco.getImgIds()):
        path = images_dir / coco.imgs[image_id]["file_name"]
        if not path.exists():
            raise FileNotFoundError(f"Image {path} (image id {image_id} of {annotation_file}) does not exist.")
        paths.append(path)
    return coco, paths


def coco_from_hf_dataset(dataset, image_column: str = "image", objects_column: str = "objects", class_names=None):
    """COCO ground truth + images from a 🤗 dataset in the Hub's detection layout: an image column and an
    `objects` column with `bbox` (x, y, w, h), `category` (0-based class ids) and, optionally, `segmentation`
    (polygons or RLE), `iscrowd`, `area` and `id`. Category ids are the class ids + 1."""
    names = class_names
    if names is None:
        feature = dataset.features[objects_column]
        category = feature["category"] if isinstance(feature, dict) else feature.feature["category"]
        names = getattr(getattr(category, "feature", category), "names", None)
    images, annotations = [], []
    for index, row in enumerate(dataset):
        image = row[image_column].convert("RGB")
        images.append(image)
        image_id = index + 1
        objects = row[objects_column]
        count = len(objects["bbox"])
        for j in range(count):
            x, y, w, h = (float(v) for v in objects["bbox"][j])
            segmentation = (objects.get("segmentation") or [None] * count)[j]
            if not segmentation:  # no mask given: the box is the mask
                segmentation = [[x, y, x + w, y, x + w, y + h, x, y + h]]
            annotations.append(
                {
                    "id": (objects.get("id") or [None] * count)[j] or len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(objects["category"][j]) + 1,
                    "bbox": [x, y, w, h],
                    "area": float((objects.get("area") or [w * h] * count)[j]),
                    "segmentation": segmentation,
                    "iscrowd": int((objects.get("iscrowd") or [0] * count)[j]),
                }
            )
    num_classes = len(names) if names else max((a["category_id"] for a in annotations), default=0)
    names = names or [f"class {i}" for i in range(num_classes)]
    data = {
        "images": [
            {"id": i + 1, "height": im.height, "width": im.width, "file_name": f"{i + 1}.png"}
            for i, im in enumerate(images)
        ],
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
    }
    return coco_from_dict(data), images


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
    (N, 4) x1 y1 x2 y2, "class_labels": (N,), "masks": (N, H, W)}`; `images` are paths or PIL images in sorted id
    order."""

    def __init__(self, coco, images, transform=None) -> None:
        self.coco = coco
        self.image_ids = sorted(coco.getImgIds())
        if len(images) != len(self.image_ids):
            raise ValueError(f"{len(images)} images for {len(self.image_ids)} image ids in the annotations.")
        self.images = list(images)
        self.label_to_category, self.id2label = category_mapping(coco)
        self.category_to_label = {c: label for label, c in self.label_to_category.items()}
        self.transform = transform

    def __len__(self) -> int:
        return len(self.image_ids)

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
            np.stack([self.coco.annToMask(a) for a in annotations])
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
        item["image"] = decode_image(self.images[index], index)
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
    out = processor(images, annotations=annotations, do_resize=not train)
    data = dict(out)
    data["image_ids"] = [item["image_id"] for item in batch]
    if not train:
        data.pop("labels")  # evaluation compares against the COCO ground truth instead
    return data


__all__ = [
    "DIGIT_CLASSES",
    "CocoInstanceDataset",
    "DetectionTransform",
    "build_digit_scenes_coco",
    "category_mapping",
    "clip_boxes",
    "coco_from_dict",
    "coco_from_hf_dataset",
    "collate_detection",
    "load_coco_folder",
]

"""COCO-format validation of users' instance-segmentation annotations (a COCO file, or the dict
`pacavit.data.detection.coco_from_hf_dataset` builds from a 🤗 dataset): bad data is refused before anything
trains, rather than found as a crash, or a silently low AP, hours later.

- `check_coco_dict` checks what needs no image: the structure (one object with `images`, `annotations` and
  `categories` lists; entries with their required keys), the ids (integers, none used twice: pycocotools would
  keep the last one silently), the categories (at least one; unique names, as model labels are looked up by name),
  the boxes (`[x, y, w, h]`, finite, w, h >= 0), `iscrowd`, `area`, the polygons and RLE masks, the images'
  `height`/`width` (positive integers), and that each annotation's category exists. Every refusal is listed in
  one `CocoFormatError` (each kind with its count, its first entries and its fix).
  Warned about and dropped instead, following detectron2's `load_coco_json`: polygon parts with fewer than 3
  points (they hold no area, and annotation tools leave such clicks in real data), annotations left with no
  polygon; and annotations of an image id not in `images`. A missing segmentation becomes the box
  (`box_polygon`); annotation id 0, which COCOeval reads as "unmatched", is renumbered.
- `complete_coco_dict` checks what needs the image sizes (the loaders read them from the files' headers): RLE
  masks of another size than their image are refused; a missing `area` is computed.
- `validate_coco_dict` runs both; `read_coco_json` reads a file with errors that name it.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from ..extras import require

logger = logging.getLogger(__name__)


class CocoFormatError(ValueError):
    """COCO annotations (a file or a 🤗 detection dataset) that cannot be used as they are; the message names the
    file or dataset, the entries (annotation / image ids, or row indices) and what to fix."""


MAX_LISTED = 5  # entries named per problem in an error or warning (then "... (N more)")
REQUIRED_KEYS = {
    "images": ("id", "file_name"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}
BBOX_FIX = (
    "A bbox is [x, y, width, height]: 4 finite numbers with width and height >= 0 (pixels, x/y of the top-left "
    "corner); fix or remove these annotations."
)


def _listing(items, separator: str = ", ") -> str:
    items = list(items)
    text = separator.join(str(item) for item in items[:MAX_LISTED])
    return text + (f", ... ({len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else "")


def _is_int(value) -> bool:  # bools are not ids or coordinates (type(True) is bool, not int)
    return type(value) is int or isinstance(value, np.integer)


def _is_number(value) -> bool:
    return type(value) in (int, float) or isinstance(value, (np.integer, np.floating))


def _image_side(value):
    """An image height/width as a positive int (integral floats accepted, as some exporters write 480.0); or None."""
    if _is_number(value) and math.isfinite(value) and float(value).is_integer() and value > 0:
        return int(value)
    return None


def box_polygon(bbox) -> list[list[float]]:
    """The box `[x, y, w, h]` as a one-part COCO polygon: the mask of an annotation that has no segmentation
    (folder and 🤗 data alike)."""
    x, y, w, h = (float(v) for v in bbox)
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


class _Problems:
    """Problems collected over a whole file, raised together: each kind with its count, its first entries and
    its fix."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.kinds: dict[str, tuple[str, list[str]]] = {}

    def add(self, what: str, item: str | None, fix: str) -> None:
        """One more `item` (None: a problem of the whole file, stated by `what` alone) of the kind `what`."""
        self.kinds.setdefault(what, (fix, []))[1].append(item)

    def raise_if_any(self, error=None) -> None:
        if not self.kinds:
            return
        lines = [
            f"{what} ({len(items)}): {_listing(items, '; ')}. {fix}" if items != [None] else f"{what}. {fix}"
            for what, (fix, items) in self.kinds.items()
        ]
        raise (error or CocoFormatError)(f"{self.source} cannot be used as it is:\n  " + "\n  ".join(lines))


def _default_annotation_name(index: int, annotation) -> str:
    if isinstance(annotation, dict) and _is_int(annotation.get("id")):
        return f"id {annotation['id']}"
    return f"annotations[{index}]"


def _check_polygons(segmentation: list):
    """(valid parts, number of parts dropped, error text or None) of a polygon segmentation."""
    kept = []
    for part in segmentation:
        part = part.tolist() if isinstance(part, np.ndarray) else part
        if not isinstance(part, (list, tuple)):
            return (
                None,
                0,
                (
                    "a polygon segmentation is a list of polygons [[x1, y1, x2, y2, ...], ...]"
                    + (" (this one is a flat list of numbers: wrap it in another list)" if _is_number(part) else "")
                ),
            )
        try:
            total = sum(part)  # fast: every coordinate a number (TypeError otherwise) and finite
        except TypeError:
            return None, 0, "polygon coordinates must be numbers: each polygon is a flat list [x1, y1, x2, y2, ...]"
        if not math.isfinite(total):
            return None, 0, "polygon coordinates must be finite numbers"
        if len(part) >= 6 and len(part) % 2 == 0:
            kept.append(part if type(part) is list else list(part))
    return kept, len(segmentation) - len(kept), None


def _check_rle(segmentation: dict) -> str | None:
    """The error text of a malformed RLE segmentation, or None (its size is checked against the image later)."""
    size, counts = segmentation.get("size"), segmentation.get("counts")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)):
        return "an RLE segmentation needs 'size': [height, width]"
    if isinstance(counts, (str, bytes)):
        return None
    if isinstance(counts, (list, tuple)):
        try:
            ok = sum(counts) == size[0] * size[1] and (not counts or min(counts) >= 0)
        except TypeError:
            ok = False
        return None if ok else "uncompressed RLE 'counts' must be non-negative run lengths adding up to height * width"
    return "an RLE segmentation needs 'counts' (a compressed string or a list of run lengths)"


def _entries(data: dict, key: str, problems: _Problems, name=None):
    """(index, entry) of the dict entries of `data[key]` that have their required keys; the others are problems."""
    required = REQUIRED_KEYS[key]
    fix = f"Every entry of {key!r} needs {', '.join(map(repr, required))}."
    for index, entry in enumerate(data[key]):
        if type(entry) is dict and all(k in entry for k in required):
            yield index, entry
            continue
        where = name(index, entry) if key == "annotations" else f"{key}[{index}]"
        if not isinstance(entry, dict):
            problems.add(f"entries of {key!r} that are not objects", f"{where} ({type(entry).__name__})", fix)
            continue
        missing = [k for k in required if k not in entry]
        if missing:
            problems.add(f"entries of {key!r} without required keys", f"{where} (no {', '.join(missing)})", fix)
            continue
        yield index, entry


def _check_ids(key: str, kept: list[dict], problems: _Problems) -> set:
    """The ids of the entries `kept` of `key`; ids that are not integers or used twice are problems."""
    ids, duplicates = set(), set()
    for entry in kept:
        value = entry["id"]
        if not _is_int(value):
            problems.add(
                f"entries of {key!r} with an 'id' that is not an integer",
                f"{value!r}",
                "COCO ids are integers; renumber them.",
            )
        elif value in ids:
            duplicates.add(value)
        else:
            ids.add(value)
    for value in sorted(duplicates):
        problems.add(
            f"ids used by more than one entry of {key!r}",
            value,
            "pycocotools would keep only the last entry of an id: give each entry its own id.",
        )
    return ids


def _check_top_level(data, source: str) -> None:
    """Refuse at once what is not a COCO instances object (nothing else can be checked then)."""
    if not isinstance(data, dict):
        raise CocoFormatError(
            f"{source} holds a JSON {type(data).__name__}, not a COCO object. A COCO annotation file is one object "
            "with 'images', 'annotations' and 'categories' lists; pass the instances_<split>.json file."
        )
    bad_keys = [key for key in REQUIRED_KEYS if not isinstance(data.get(key), list)]
    if bad_keys:
        found = ", ".join(f"{k!r} ({type(data[k]).__name__})" if k in data else f"no {k!r}" for k in bad_keys)
        raise CocoFormatError(
            f"{source} is not a COCO instances file: {found}; 'images', 'annotations' and 'categories' must be "
            f"lists (keys found: {sorted(data)}). Pass the instances_<split>.json file (a detection file needs all "
            "three)."
        )


def _check_images(data: dict, problems: _Problems) -> tuple[list[dict], set]:
    """(cleaned copies of the images, their ids): a `file_name` and, where given, a positive `height`/`width`."""
    images = []
    for index, entry in _entries(data, "images", problems):
        entry = dict(entry)
        if not (isinstance(entry["file_name"], str) and entry["file_name"]):
            problems.add("images with an empty or non-text 'file_name'", f"images[{index}]", "Give the file's name.")
        for side in ("height", "width"):
            if side in entry:
                value = _image_side(entry[side])
                if value is None:
                    problems.add(
                        "images with a bad 'height'/'width'",
                        f"id {entry['id']} ({side} {entry[side]!r})",
                        "They are the image's size in pixels (positive integers); fix or remove them.",
                    )
                else:
                    entry[side] = value
        images.append(entry)
    return images, _check_ids("images", images, problems)


def _check_categories(data: dict, problems: _Problems) -> tuple[list[dict], set]:
    """(copies of the categories, their ids): at least one, each with its own non-empty name."""
    categories = [dict(entry) for _, entry in _entries(data, "categories", problems)]
    category_ids = _check_ids("categories", categories, problems)
    names: dict[str, list] = {}
    for entry in categories:
        if not (isinstance(entry["name"], str) and entry["name"]):
            problems.add("categories with an empty or non-text 'name'", f"id {entry['id']!r}", "Name them.")
        names.setdefault(str(entry["name"]), []).append(entry["id"])
    for category_name, ids in names.items():
        if len(ids) > 1:
            problems.add(
                "category names used by more than one category",
                f"{category_name!r} (ids {_listing(ids)})",
                "Model labels are looked up by name (label2id); rename the categories or merge them.",
            )
    if not data["categories"]:
        problems.add("'categories' is empty", None, "Add the categories to detect ({'id': ..., 'name': ...}).")
    return categories, category_ids


def _check_annotation(index: int, entry: dict, name, problems: _Problems, part_drops: list, instance_drops: list):
    """A cleaned copy of one annotation, or None when it is left out: a malformed bbox (a problem), or no polygon
    part left (named in `instance_drops`; an annotation that loses some parts is named in `part_drops`)."""
    entry = dict(entry)
    for key in ("image_id", "category_id"):
        if not _is_int(entry[key]):
            problems.add(
                f"annotations with a {key!r} that is not an integer",
                f"{name(index, entry)} ({entry[key]!r})",
                f"{key!r} must be the integer id of an entry of {'images' if key == 'image_id' else 'categories'}.",
            )
    bbox = entry["bbox"]
    if isinstance(bbox, (tuple, np.ndarray)):
        bbox = entry["bbox"] = np.asarray(bbox).tolist() if isinstance(bbox, np.ndarray) else list(bbox)
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        problems.add("annotations with a malformed bbox", f"{name(index, entry)} ({bbox!r})", BBOX_FIX)
        return None
    if not (math.isfinite(bbox[0] + bbox[1] + bbox[2] + bbox[3]) and bbox[2] >= 0 and bbox[3] >= 0):
        problems.add("annotations with a malformed bbox", f"{name(index, entry)} ({bbox!r})", BBOX_FIX)
        return None
    crowd = entry.get("iscrowd", 0)
    if (_is_int(crowd) or isinstance(crowd, bool)) and crowd in (0, 1):
        entry["iscrowd"] = int(crowd)
    else:
        problems.add(
            "annotations with an 'iscrowd' other than 0 or 1", f"{name(index, entry)} ({crowd!r})", "Use 0 or 1."
        )
    if "area" in entry and not (_is_number(entry["area"]) and math.isfinite(entry["area"]) and entry["area"] >= 0):
        problems.add(
            "annotations with a bad 'area'",
            f"{name(index, entry)} ({entry['area']!r})",
            "The area is the mask's pixel count (a number >= 0); fix it or remove the key (it is then computed).",
        )
    segmentation = entry.get("segmentation")
    if segmentation is None or (isinstance(segmentation, (list, dict)) and not segmentation):
        entry["segmentation"] = box_polygon(bbox)  # a box without a mask: the box is the mask
    elif isinstance(segmentation, list):
        kept, dropped, error = _check_polygons(segmentation)
        if error:
            problems.add("annotations with a malformed segmentation", f"{name(index, entry)} ({error})", "Fix them.")
        elif not kept:
            instance_drops.append(name(index, entry))
            return None
        else:
            if dropped:
                part_drops.append(name(index, entry))
            entry["segmentation"] = kept
    elif isinstance(segmentation, dict):
        error = _check_rle(segmentation)
        if error:
            problems.add("annotations with a malformed segmentation", f"{name(index, entry)} ({error})", "Fix them.")
    else:
        problems.add(
            "annotations with a malformed segmentation",
            f"{name(index, entry)} (a {type(segmentation).__name__})",
            "A segmentation is a list of polygons, an RLE object {'size': [h, w], 'counts': ...} or absent.",
        )
    return entry


def _check_annotations(data: dict, problems: _Problems, name, image_ids: set, category_ids: set):
    """(cleaned annotations, their indices in `data`, their ids, names of those that lost polygon parts, names of
    those dropped for having no polygon left); unknown categories are problems."""
    annotations, indices, part_drops, instance_drops = [], [], [], []
    for index, entry in _entries(data, "annotations", problems, name):
        entry = _check_annotation(index, entry, name, problems, part_drops, instance_drops)
        if entry is not None:
            annotations.append(entry)
            indices.append(index)
    annotation_ids = _check_ids("annotations", annotations, problems)
    unknown = [  # annotations of unknown images are left out later: their categories do not matter
        (i, a)
        for i, a in zip(indices, annotations)
        if _is_int(a["category_id"])
        and _is_int(a["image_id"])  # others are problems already (and unhashable)
        and a["category_id"] not in category_ids
        and a["image_id"] in image_ids
    ]
    missing = sorted({a["category_id"] for _, a in unknown})
    for i, a in unknown:
        problems.add(
            "annotations with a category_id that is not in 'categories'",
            f"{name(i, a)} (category {a['category_id']})",
            f"Missing category ids: {_listing(missing)}; the categories are {_listing(sorted(category_ids))}. Add "
            "the missing categories, or fix or remove these annotations.",
        )
    return annotations, indices, annotation_ids, part_drops, instance_drops


def _warn_dropped_polygons(source: str, part_drops: list, instance_drops: list) -> None:
    # Degenerate polygons are warned about and dropped, not refused: annotation tools (CVAT, LabelMe, COCO
    # exports) leave such clicks in real data sets; they hold no area, so nothing is lost, and refusing would make
    # a whole data set unusable over one stray point. This is detectron2's `load_coco_json` convention.
    if part_drops:
        logger.warning(
            "%s: %d annotation(s) have polygon parts with fewer than 3 points or an odd number of coordinates; "
            "those parts are left out (%s). Fix their polygons to keep them whole.",
            source,
            len(part_drops),
            _listing(part_drops),
        )
    if instance_drops:
        logger.warning(
            "%s: %d annotation(s) have no polygon with at least 3 points; they are dropped (%s). Fix their "
            "segmentation, or remove it to use the box as the mask.",
            source,
            len(instance_drops),
            _listing(instance_drops),
        )


def check_coco_dict(data, source: str, name_annotation=None) -> dict:
    """The structural checks of COCO annotations (a parsed file or the dict `coco_from_hf_dataset` builds);
    returns a cleaned copy. No image is read: `complete_coco_dict` does the checks that need the image sizes.

    Refused with one `CocoFormatError` listing every problem (count, first entries, fix): a top level that is not
    an object with `images`, `annotations` and `categories` lists; entries missing their required keys; ids that
    are not integers or are duplicated (pycocotools would keep the last one silently); malformed `bbox`,
    `iscrowd`, `area`, `height`/`width`, polygons or RLE; no categories, or two with one name (`label2id` would
    lose one); annotations of a category not in `categories`.
    Handled, with a warning naming the annotations (count and first ids): annotations of an image id not in
    `images` are left out; polygon parts with fewer than 3 points (< 6 coordinates) or an odd number of coordinates
    are dropped, and an annotation left without a valid part is dropped (detectron2's `load_coco_json`).
    Handled silently: a missing/empty `segmentation` becomes the box (`box_polygon`); a missing `iscrowd` is 0;
    annotation id 0 is renumbered (pycocotools' COCOeval reads id 0 as "unmatched", so that object could never be
    matched and AP would be silently low).

    `name_annotation(index, annotation)` names an annotation in messages (default: `id <id>`)."""
    name = name_annotation or _default_annotation_name
    _check_top_level(data, source)
    problems = _Problems(source)
    images, image_ids = _check_images(data, problems)
    categories, category_ids = _check_categories(data, problems)
    annotations, indices, annotation_ids, part_drops, instance_drops = _check_annotations(
        data, problems, name, image_ids, category_ids
    )
    problems.raise_if_any()

    _warn_dropped_polygons(source, part_drops, instance_drops)
    if 0 in annotation_ids:  # COCOeval stores matched gt ids, 0 meaning "no match": id 0 would never be matched
        zero = next(a for a in annotations if a["id"] == 0)
        zero["id"] = max(annotation_ids) + 1
        logger.info("%s: annotation id 0 is renumbered %d (COCOeval reads id 0 as 'unmatched')", source, zero["id"])
    orphans = [(i, a) for i, a in zip(indices, annotations) if a["image_id"] not in image_ids]
    if orphans:
        logger.warning(
            "%s: %d annotation(s) refer to image ids that are not in 'images'; they are left out (%s; image ids "
            "%s). Add the images, or remove these annotations.",
            source,
            len(orphans),
            _listing(name(i, a) for i, a in orphans),
            _listing(sorted({a["image_id"] for _, a in orphans})),
        )
        annotations = [a for a in annotations if a["image_id"] in image_ids]
    return {**data, "images": images, "annotations": annotations, "categories": categories}


def complete_coco_dict(data: dict, source: str, name_annotation=None) -> dict:
    """The checks of `check_coco_dict`'s output that need the image sizes (every image must have its `height` and
    `width` by now): RLE masks of another size than their image are refused; a missing `area` is computed (the
    box's for box masks, else the mask's pixel count, with pycocotools). Modifies and returns `data`."""
    mask_utils = require("pycocotools.mask", purpose="COCO masks")
    problems = _Problems(source)
    sizes = {}
    for image in data["images"]:
        if "height" not in image or "width" not in image:
            problems.add(
                "images without 'height'/'width'",
                f"id {image['id']}",
                "Give every image its size in pixels ('height', 'width').",
            )
        else:
            sizes[image["id"]] = (image["height"], image["width"])
    problems.raise_if_any()
    name = name_annotation or (lambda index, annotation: f"id {annotation['id']}")
    for index, annotation in enumerate(data["annotations"]):
        segmentation, size = annotation["segmentation"], sizes[annotation["image_id"]]
        if isinstance(segmentation, dict) and tuple(segmentation["size"]) != size:
            problems.add(
                "annotations with an RLE mask of another size than their image",
                f"{name(index, annotation)} (mask {tuple(segmentation['size'])}, image {size} (height, width))",
                "RLE masks are made at their image's size; re-export them for the images they belong to.",
            )
        elif "area" not in annotation:
            if isinstance(segmentation, dict):
                rle = segmentation
                if isinstance(rle["counts"], (list, tuple)):
                    rle = mask_utils.frPyObjects(rle, *size)
                annotation["area"] = float(mask_utils.area(rle))
            elif segmentation == box_polygon(annotation["bbox"]):
                annotation["area"] = float(annotation["bbox"][2] * annotation["bbox"][3])
            else:
                annotation["area"] = float(
                    mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(segmentation, *size)))
                )
    problems.raise_if_any()
    return data


def validate_coco_dict(data, source: str = "the COCO annotations", name_annotation=None) -> dict:
    """`check_coco_dict` then `complete_coco_dict`: a validated, cleaned copy of in-memory COCO annotations whose
    images all have their `height` and `width` (the images themselves are not read)."""
    return complete_coco_dict(check_coco_dict(data, source, name_annotation), source, name_annotation)


def read_coco_json(annotation_file: str | Path):
    """The parsed annotation file; errors name the file (missing, a folder, not JSON, not UTF-8 text)."""
    annotation_file = Path(annotation_file)
    if not annotation_file.exists():
        raise FileNotFoundError(f"COCO annotation file {annotation_file} not found (expected instances_<split>.json).")
    if not annotation_file.is_file():
        raise CocoFormatError(
            f"COCO annotation file {annotation_file} is a folder; pass the instances_<split>.json in it."
        )
    try:
        return json.loads(annotation_file.read_bytes())
    except json.JSONDecodeError as error:
        raise CocoFormatError(
            f"COCO annotation file {annotation_file} is not valid JSON: {error.msg} at line {error.lineno}, column "
            f"{error.colno}. Fix the file (a truncated download or copy is the usual cause: fetch it again)."
        ) from error
    except UnicodeDecodeError as error:
        raise CocoFormatError(
            f"COCO annotation file {annotation_file} is not a JSON text file ({error}); pass the "
            "instances_<split>.json file (unzip it first if it is an archive)."
        ) from error


__all__ = [
    "CocoFormatError",
    "box_polygon",
    "check_coco_dict",
    "complete_coco_dict",
    "read_coco_json",
    "validate_coco_dict",
]

"""COCO detection / instance-segmentation metrics with pycocotools (bbox and segm: AP, AP50, AP75, APs, APm, APl).

`CocoEvaluator` collects predictions per image (boxes x1, y1, x2, y2 at the original image size, scores, 0-based
labels and binary masks, as `PaCaViTMaskRCNNImageProcessor.post_process_instance_segmentation(...,
return_binary_maps=True)` gives them), turns them into COCO results (xywh boxes, RLE masks, the dataset's own
category ids), gathers them across processes, and runs `COCOeval` against the ground truth. Crowd annotations
(`iscrowd=1`) stay in the ground truth as ignore regions, as in the official evaluation: a crowd region missed is
not a miss, a detection on one is not a false positive.

Mask probabilities in [0, 1] are binarised at 0.5 (`MASK_THRESHOLD`) with a one-time warning; predictions that
cannot be scored correctly (labels without a category, counts that disagree, masks of another size, non-binary
values outside [0, 1]) are refused with a `PredictionFormatError` naming the image.
"""

from __future__ import annotations

import contextlib
import io
import logging

import numpy as np
import torch

from ..extras import require

logger = logging.getLogger(__name__)

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


class PredictionFormatError(ValueError):
    """Predictions the COCO evaluator cannot score correctly; the message names the image id and what to fix."""


MASK_THRESHOLD = 0.5  # as `post_process_instance_segmentation(mask_threshold=0.5)` and mmdet
_warned_soft_masks = False


def _as_tensor(value, image_id: int, key: str) -> torch.Tensor:
    try:
        return torch.as_tensor(value).detach().cpu()
    except Exception as error:
        raise PredictionFormatError(
            f"Prediction {key!r} of image {image_id} is not a tensor or array ({type(value).__name__}): {error}."
        ) from error


def _binary_masks(masks, count: int, image_id: int, image_size: tuple[int, int] | None) -> np.ndarray:
    """(N, H, W) uint8 0/1 masks, read as the image processor reads training masks: bool as is, integers nonzero
    inside (0/255 masks work), floats must lie in [0, 1]; float probabilities (values strictly between 0 and 1) are
    binarised at `MASK_THRESHOLD` with one warning per process. Floats outside [0, 1] (logits) and NaN are refused:
    cast to uint8 they would make wrong masks."""
    global _warned_soft_masks
    if isinstance(masks, (list, tuple)):  # one (H, W) mask per detection
        masks = torch.stack([_as_tensor(m, image_id, "masks") for m in masks]) if len(masks) else torch.zeros(0)
    masks = _as_tensor(masks, image_id, "masks")
    if count == 0 and masks.numel() == 0:  # no detection: any empty shape
        return np.zeros((0, *(image_size or (0, 0))), np.uint8)
    fix = (
        "Pass binary masks at the original image size, as post_process_instance_segmentation(..., "
        "return_binary_maps=True) gives them."
    )
    if masks.ndim != 3 or len(masks) != count:
        raise PredictionFormatError(
            f"Image {image_id}: masks of shape {tuple(masks.shape)} for {count} boxes; expected ({count}, height, "
            f"width). {fix}"
        )
    if image_size is not None and tuple(masks.shape[1:]) != tuple(image_size):
        raise PredictionFormatError(
            f"Image {image_id}: masks are {masks.shape[1]}x{masks.shape[2]}, the image {image_size[0]}x"
            f"{image_size[1]} (height x width). {fix}"
        )
    if masks.dtype == torch.bool:
        return masks.to(torch.uint8).numpy()
    if not masks.is_floating_point():
        if masks.is_complex():
            raise PredictionFormatError(f"Image {image_id}: masks have dtype {masks.dtype}. {fix}")
        return (masks != 0).to(torch.uint8).numpy()
    low, high = float(masks.min()), float(masks.max())
    if not (0 <= low and high <= 1):  # NaN fails too
        raise PredictionFormatError(
            f"Image {image_id}: float mask values span [{low:g}, {high:g}]; float masks are binary (0/1) or "
            f"probabilities in [0, 1] (for logits, apply a sigmoid first). {fix}"
        )
    if bool(((masks > 0) & (masks < 1)).any()) and not _warned_soft_masks:
        _warned_soft_masks = True
        logger.warning(
            "Mask probabilities (values between 0 and 1, first in image %s) are binarised at %s for the COCO "
            "evaluation; pass binary masks to choose the threshold yourself.",
            image_id,
            MASK_THRESHOLD,
        )
    return (masks >= MASK_THRESHOLD).to(torch.uint8).numpy()


def predictions_to_coco(
    image_id: int, prediction: dict, label_to_category: dict[int, int], image_size: tuple[int, int] | None = None
) -> list[dict]:
    """COCO result entries of one image's predictions (`boxes` x1 y1 x2 y2, `scores`, `labels`, optional `masks`).

    Masks are binary `(N, H, W)` (bool, or integers: nonzero is inside); float probabilities in [0, 1] are
    binarised at 0.5 (`MASK_THRESHOLD`, the processor's `mask_threshold`) with a one-time warning; floats outside
    [0, 1] (logits) are refused. `image_size` (height, width), when given, is the size the masks must have.
    Refused with `PredictionFormatError` naming the image: missing keys, boxes that are not (N, 4) with x1 <= x2
    and y1 <= y2, non-finite boxes or scores, boxes / scores / labels / masks of different counts, fractional
    labels, and labels that are not in `label_to_category`."""
    mask_utils = require("pycocotools.mask", purpose="COCO evaluation")
    if not hasattr(prediction, "get") or any(prediction.get(k) is None for k in ("boxes", "scores", "labels")):
        keys = sorted(prediction) if hasattr(prediction, "keys") else type(prediction).__name__
        raise PredictionFormatError(
            f"Prediction of image {image_id} needs 'boxes', 'scores' and 'labels' (got {keys})."
        )
    boxes = _as_tensor(prediction["boxes"], image_id, "boxes").to(torch.float64)
    boxes = boxes.reshape(0, 4) if boxes.numel() == 0 else boxes
    scores = _as_tensor(prediction["scores"], image_id, "scores").reshape(-1)
    labels = _as_tensor(prediction["labels"], image_id, "labels").reshape(-1)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise PredictionFormatError(
            f"Image {image_id}: boxes of shape {tuple(boxes.shape)}; expected (N, 4) x1, y1, x2, y2."
        )
    if not (len(boxes) == len(scores) == len(labels)):
        raise PredictionFormatError(
            f"Image {image_id}: {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels; each detection "
            "needs one of each."
        )
    if not (bool(torch.isfinite(boxes).all()) and bool(torch.isfinite(scores.double()).all())):
        raise PredictionFormatError(f"Image {image_id}: non-finite (NaN/Inf) boxes or scores; the model diverged?")
    if bool((boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any()):
        raise PredictionFormatError(
            f"Image {image_id}: boxes with x2 < x1 or y2 < y1; boxes are x1, y1, x2, y2 (convert x, y, w, h boxes)."
        )
    if labels.is_floating_point() and not bool((labels == labels.round()).all()):
        raise PredictionFormatError(f"Image {image_id}: labels must be integer class ids, got {labels.tolist()[:5]}.")
    labels = [int(label) for label in labels.tolist()]
    unknown = sorted(set(labels) - set(label_to_category))
    if unknown:
        raise PredictionFormatError(
            f"Image {image_id}: labels {unknown} are not in label_to_category (labels "
            f"{sorted(label_to_category)}): the model predicts classes the dataset has no category for. Use a model "
            "with the dataset's classes (id2label), or the dataset's label_to_category."
        )
    masks = prediction.get("masks")
    if masks is not None:
        masks = _binary_masks(masks, len(boxes), image_id, image_size)
    results = []
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        entry = {
            "image_id": int(image_id),
            "category_id": int(label_to_category[labels[i]]),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(scores[i]),
        }
        if masks is not None:
            rle = mask_utils.encode(np.asfortranarray(masks[i]))
            rle["counts"] = rle["counts"].decode("ascii")
            entry["segmentation"] = rle
        results.append(entry)
    return results


class CocoEvaluator:
    """Accumulate predictions with `update`, then `compute()` (after `gather(accelerator)` when distributed).

    Args:
        coco_gt: the pycocotools `COCO` ground truth (with its crowd annotations).
        label_to_category: 0-based model label -> the dataset's category id.
        iou_types: `("bbox", "segm")` or one of them.
    """

    def __init__(self, coco_gt, label_to_category: dict[int, int], iou_types=("bbox", "segm")) -> None:
        self.coco_gt = coco_gt
        self.label_to_category = dict(label_to_category)
        self.iou_types = tuple(iou_types)
        self.results: list[dict] = []
        self.image_ids: list[int] = []

    def update(self, image_ids, predictions) -> None:
        """Add one batch: `predictions[i]` (see `predictions_to_coco`) of the ground-truth image `image_ids[i]`;
        masks must have that image's size."""
        image_ids, predictions = list(image_ids), list(predictions)
        if len(image_ids) != len(predictions):
            raise PredictionFormatError(
                f"{len(image_ids)} image ids for {len(predictions)} predictions; pass one prediction per image."
            )
        for image_id, prediction in zip(image_ids, predictions):
            image_id = int(image_id)
            info = self.coco_gt.imgs.get(image_id)
            if info is None:
                raise PredictionFormatError(
                    f"Image id {image_id} is not in the ground truth ({len(self.coco_gt.imgs)} images); pass the "
                    "ids of the dataset the evaluator was built with."
                )
            size = (info["height"], info["width"]) if "height" in info and "width" in info else None
            self.results.extend(predictions_to_coco(image_id, prediction, self.label_to_category, size))
            self.image_ids.append(image_id)

    def gather(self, accelerator) -> None:
        """All-gather the results of every process (each process evaluated its own shard); duplicated images
        (the distributed sampler pads the last batch) are kept once."""
        if accelerator is None or accelerator.num_processes == 1:
            return
        from accelerate.utils import gather_object

        per_process = gather_object([(self.image_ids, self.results)])
        seen, image_ids, results = set(), [], []
        for ids, entries in per_process:
            new = set(ids) - seen
            image_ids.extend(i for i in ids if i in new)
            results.extend(e for e in entries if e["image_id"] in new)
            seen |= new
        self.image_ids, self.results = image_ids, results

    def compute(self) -> dict[str, float | None]:
        """`{"bbox_AP": ..., "bbox_AP50": ..., "segm_APl": ...}` in [0, 1] (None where the ground truth has no
        object of that size), evaluated on the images seen by `update`."""
        COCOeval = require("pycocotools.cocoeval", purpose="COCO evaluation").COCOeval
        metrics = {}
        image_ids = sorted(set(self.image_ids))
        for iou_type in self.iou_types:
            # one field per IoU type, as the official evaluation: for segm, pycocotools then takes the area (for
            # APs/m/l) from the mask instead of the box
            drop = "segmentation" if iou_type == "bbox" else "bbox"
            results = [
                {k: v for k, v in r.items() if k != drop}
                for r in self.results
                if iou_type == "bbox" or "segmentation" in r
            ]
            if not results or not image_ids:
                metrics.update({f"{iou_type}_{name}": 0.0 for name in STAT_NAMES})
                continue
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and tables
                coco_dt = self.coco_gt.loadRes(results)
                evaluator = COCOeval(self.coco_gt, coco_dt, iou_type)
                evaluator.params.imgIds = image_ids
                evaluator.evaluate()
                evaluator.accumulate()
                evaluator.summarize()
            for name, value in zip(STAT_NAMES, evaluator.stats[:6]):
                metrics[f"{iou_type}_{name}"] = None if value < 0 else float(value)
        return metrics


__all__ = ["MASK_THRESHOLD", "STAT_NAMES", "CocoEvaluator", "PredictionFormatError", "predictions_to_coco"]

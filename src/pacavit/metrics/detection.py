"""COCO detection / instance-segmentation metrics with pycocotools (bbox and segm: AP, AP50, AP75, APs, APm, APl).

`CocoEvaluator` collects predictions per image (boxes x1, y1, x2, y2 at the original image size, scores, 0-based
labels and binary masks, as `PaCaViTMaskRCNNImageProcessor.post_process_instance_segmentation(...,
return_binary_maps=True)` gives them), turns them into COCO results (xywh boxes, RLE masks, the dataset's own
category ids), gathers them across processes, and runs `COCOeval` against the ground truth. Crowd annotations
(`iscrowd=1`) stay in the ground truth as ignore regions, as in the official evaluation: a crowd region missed is
not a miss, a detection on one is not a false positive.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch

from ..extras import require

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def predictions_to_coco(image_id: int, prediction: dict, label_to_category: dict[int, int]) -> list[dict]:
    """COCO result entries of one image's predictions (`boxes`, `scores`, `labels`, optional binary `masks`)."""
    mask_utils = require("pycocotools.mask", purpose="COCO evaluation")
    boxes = torch.as_tensor(prediction["boxes"], dtype=torch.float64).reshape(-1, 4)
    scores = torch.as_tensor(prediction["scores"]).tolist()
    labels = torch.as_tensor(prediction["labels"]).tolist()
    masks = prediction.get("masks")
    results = []
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        entry = {
            "image_id": int(image_id),
            "category_id": int(label_to_category[int(labels[i])]),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(scores[i]),
        }
        if masks is not None:
            mask = np.asfortranarray(torch.as_tensor(masks[i]).cpu().numpy().astype(np.uint8))
            rle = mask_utils.encode(mask)
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
        for image_id, prediction in zip(image_ids, predictions):
            self.image_ids.append(int(image_id))
            self.results.extend(predictions_to_coco(image_id, prediction, self.label_to_category))

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


__all__ = ["STAT_NAMES", "CocoEvaluator", "predictions_to_coco"]

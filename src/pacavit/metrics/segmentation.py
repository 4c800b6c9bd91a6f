"""Semantic-segmentation metrics as mmsegmentation's `IoUMetric` computes them: a confusion matrix from
`torch.bincount`, labels equal to `ignore_index` (255) left out, IoU = intersection / union per class, mIoU the mean
over the classes whose IoU is defined (a class absent from both labels and predictions is NaN and excluded; a class
predicted but absent from the labels has IoU 0 and counts), aAcc = correct pixels / labelled pixels.

Across processes the confusion matrix is built per image (`per_image_confusion`), so images of different sizes
(evaluation at the original label resolution) gather with `accelerator.gather_for_metrics`, which also drops the
duplicates a distributed sampler pads the last batch with; then the matrices are summed.

The same numbers through 🤗 evaluate, offline: `evaluate.load(pacavit.metrics.segmentation.EVALUATE_MODULE)`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

# A local evaluate module (a folder holding <name>/<name>.py) that wraps MeanIoU below.
EVALUATE_MODULE = str(Path(__file__).with_name("pacavit_mean_iou"))


def confusion_matrix(
    predictions: torch.Tensor, labels: torch.Tensor, num_labels: int, ignore_index: int = 255
) -> torch.Tensor:
    """`(num_labels, num_labels)` int64 counts, rows = label, columns = prediction, over the labelled pixels."""
    predictions, labels = torch.as_tensor(predictions), torch.as_tensor(labels)
    if predictions.shape != labels.shape:
        raise ValueError(
            f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} differ in shape: resize the "
            "predictions to the label size (post_process_semantic_segmentation(outputs, target_sizes=...))."
        )
    keep = labels != ignore_index
    labels, predictions = labels[keep].long(), predictions[keep].long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_labels):
        raise ValueError(
            f"labels must be in [0, {num_labels - 1}] or {ignore_index}; got values up to {labels.max().item()}."
        )
    return torch.bincount(labels * num_labels + predictions, minlength=num_labels**2).view(num_labels, num_labels)


def per_image_confusion(predictions, labels, num_labels: int, ignore_index: int = 255) -> torch.Tensor:
    """`(B, K, K)` confusion matrices of a batch (a list of maps of any sizes, or `(B, H, W)` tensors)."""
    return torch.stack(
        [confusion_matrix(pred, label, num_labels, ignore_index) for pred, label in zip(predictions, labels)]
    )


def metrics_from_confusion(confusion: torch.Tensor, id2label: dict | None = None) -> dict:
    """mIoU, mAcc, aAcc and per-class IoU/accuracy (NaN where undefined) from a summed confusion matrix."""
    cm = confusion.double().cpu()
    intersection = cm.diag()
    label_area, prediction_area = cm.sum(1), cm.sum(0)
    union = label_area + prediction_area - intersection
    iou = intersection / union  # 0/0 -> NaN: the class appears in neither labels nor predictions
    accuracy = intersection / label_area
    total = label_area.sum()
    names = [id2label.get(i, str(i)) if id2label else str(i) for i in range(cm.shape[0])]
    return {
        "mean_iou": float(np.nanmean(iou.numpy())) if not torch.isnan(iou).all() else float("nan"),
        "mean_accuracy": float(np.nanmean(accuracy.numpy())) if not torch.isnan(accuracy).all() else float("nan"),
        "overall_accuracy": float(intersection.sum() / total) if total > 0 else float("nan"),
        "per_category_iou": dict(zip(names, iou.tolist())),
        "per_category_accuracy": dict(zip(names, accuracy.tolist())),
    }


class MeanIoU:
    """Accumulates confusion matrices; `compute()` gives `metrics_from_confusion`. Call `update(predictions, labels)`
    per batch in one process, or `add_confusion(accelerator.gather_for_metrics(per_image_confusion(...)))` in
    distributed evaluation."""

    def __init__(self, num_labels: int, ignore_index: int = 255, id2label: dict | None = None) -> None:
        self.num_labels, self.ignore_index, self.id2label = num_labels, ignore_index, id2label
        self.confusion = torch.zeros(num_labels, num_labels, dtype=torch.long)

    def update(self, predictions, labels) -> None:
        for prediction, label in zip(predictions, labels):
            self.confusion += confusion_matrix(prediction, label, self.num_labels, self.ignore_index).cpu()

    def add_confusion(self, confusion: torch.Tensor) -> None:
        """Add `(K, K)` or `(B, K, K)` counts (e.g. gathered from every process)."""
        confusion = confusion.cpu().long()
        self.confusion += confusion.sum(0) if confusion.ndim == 3 else confusion

    def compute(self) -> dict:
        return metrics_from_confusion(self.confusion, self.id2label)


def all_background_mean_iou(label_maps, num_labels: int, ignore_index: int = 255) -> float:
    """mIoU of predicting class 0 (background) everywhere on `label_maps`: the trivial baseline a segmentation
    model on mostly-background data must beat."""
    metric = MeanIoU(num_labels, ignore_index)
    for labels in label_maps:
        metric.update([torch.zeros_like(labels)], [labels])
    return metric.compute()["mean_iou"]


__all__ = [
    "EVALUATE_MODULE",
    "MeanIoU",
    "all_background_mean_iou",
    "confusion_matrix",
    "metrics_from_confusion",
    "per_image_confusion",
]

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

from ..data.segmentation import check_ignore_index

# A local evaluate module (a folder holding <name>/<name>.py) that wraps MeanIoU below.
EVALUATE_MODULE = str(Path(__file__).with_name("pacavit_mean_iou"))


class SegmentationMetricError(ValueError):
    """Predictions, labels or settings the mIoU cannot be computed from; the message says what is wrong and the fix."""


def _check_settings(num_labels, ignore_index) -> None:
    if isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)) or num_labels < 1:
        raise SegmentationMetricError(
            f"num_labels must be a positive integer (the number of classes), got {num_labels!r}."
        )
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise SegmentationMetricError(f"ignore_index must be an integer label value, got {ignore_index!r}.")
    check_ignore_index(num_labels, ignore_index, SegmentationMetricError)


def class_index_tensor(values, what: str = "predictions") -> torch.Tensor:
    """`values` (a tensor, array or nested lists) as a tensor of integer class indices (bool counts as 0/1);
    floating-point values (logits, probabilities, bilinearly resized masks) are refused; `what` ("predictions" or
    "labels") names them in the error."""
    try:
        tensor = torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError) as error:
        raise SegmentationMetricError(
            f"{what} must be a 2-D map of class indices per pixel (a tensor, NumPy array or nested lists), got a "
            f"{type(values).__name__} that is not one ({error})."
        ) from error
    if tensor.is_floating_point() or tensor.is_complex():
        fix = (
            "pass the class of each pixel, e.g. `logits.argmax(dim=1)` after resizing the logits to the label size "
            "(or `post_process_semantic_segmentation(outputs, target_sizes=...)`), not logits or probabilities"
            if what == "predictions"
            else "pass the label map as integers (`labels.long()`); a mask resized with bilinear interpolation has "
            "values between classes: resize masks with nearest-neighbour interpolation"
        )
        raise SegmentationMetricError(
            f"{what} have dtype {tensor.dtype}; the metric takes integer class indices: {fix}."
        )
    return tensor


def _shown(values: torch.Tensor) -> str:
    unique = sorted(values.unique().tolist())
    return f"{unique[:8]}{' ...' if len(unique) > 8 else ''}"


def confusion_matrix(
    predictions: torch.Tensor, labels: torch.Tensor, num_labels: int, ignore_index: int = 255
) -> torch.Tensor:
    """`(num_labels, num_labels)` int64 counts, rows = label, columns = prediction, over the labelled pixels.

    Refused (`SegmentationMetricError`, a `ValueError`): floating-point predictions or labels (logits passed by
    mistake), maps of different shapes, labels outside `0..num_labels-1` other than `ignore_index` (negative ones
    too), predictions outside `0..num_labels-1` at labelled pixels (e.g. those of a model with another number of
    classes; what a prediction at an ignored pixel is does not matter), an `ignore_index` among the classes."""
    _check_settings(num_labels, ignore_index)
    predictions, labels = class_index_tensor(predictions, "predictions"), class_index_tensor(labels, "labels")
    if predictions.shape != labels.shape:
        raise SegmentationMetricError(
            f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} differ in shape: resize the "
            "predictions to the label size (post_process_semantic_segmentation(outputs, target_sizes=...))."
        )
    keep = labels != ignore_index
    labels, predictions = labels[keep].long(), predictions[keep].to(labels.device).long()
    bad_labels, bad_predictions = (
        (labels < 0) | (labels >= num_labels),
        (predictions < 0) | (predictions >= num_labels),
    )
    any_bad = torch.stack([bad_labels.any(), bad_predictions.any()]).tolist()  # one device sync for both
    if any_bad[0]:
        raise SegmentationMetricError(
            f"labels {_shown(labels[bad_labels])} are not classes 0..{num_labels - 1} (or {ignore_index} = ignore). "
            f"If they mark unlabelled pixels, pass that value as ignore_index or set them to {ignore_index}; "
            "otherwise num_labels is smaller than the data's number of classes."
        )
    if any_bad[1]:
        raise SegmentationMetricError(
            f"predictions {_shown(predictions[bad_predictions])} at labelled pixels are not classes "
            f"0..{num_labels - 1}: predictions from a model with another number of classes (compare its "
            f"config.num_labels with num_labels={num_labels}), or maps filled with another value. The argmax of the "
            "logits over the class dimension gives valid classes."
        )
    return torch.bincount(labels * num_labels + predictions, minlength=num_labels**2).view(num_labels, num_labels)


def _pairs(predictions, labels) -> list:
    """(prediction, label) pairs of a batch: a list of maps or a `(B, H, W)` tensor each, of one length."""
    predictions, labels = list(predictions), list(labels)
    if len(predictions) != len(labels):
        raise SegmentationMetricError(
            f"{len(predictions)} prediction maps for {len(labels)} label maps: pass one prediction per label map "
            "(lists of 2-D maps or (batch, height, width) tensors)."
        )
    return list(zip(predictions, labels))


def per_image_confusion(predictions, labels, num_labels: int, ignore_index: int = 255) -> torch.Tensor:
    """`(B, K, K)` confusion matrices of a batch (a list of maps of any sizes, or `(B, H, W)` tensors)."""
    pairs = _pairs(predictions, labels)
    if not pairs:
        return torch.zeros(0, num_labels, num_labels, dtype=torch.long)
    return torch.stack([confusion_matrix(pred, label, num_labels, ignore_index) for pred, label in pairs])


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
    distributed evaluation. Inputs are checked as `confusion_matrix` says."""

    def __init__(self, num_labels: int, ignore_index: int = 255, id2label: dict | None = None) -> None:
        _check_settings(num_labels, ignore_index)
        self.num_labels, self.ignore_index, self.id2label = num_labels, ignore_index, id2label
        self.confusion = torch.zeros(num_labels, num_labels, dtype=torch.long)

    def update(self, predictions, labels) -> None:
        for prediction, label in _pairs(predictions, labels):
            self.confusion += confusion_matrix(prediction, label, self.num_labels, self.ignore_index).cpu()

    def add_confusion(self, confusion: torch.Tensor) -> None:
        """Add `(K, K)` or `(B, K, K)` counts (e.g. gathered from every process)."""
        confusion = torch.as_tensor(confusion).cpu()
        k = self.num_labels
        if confusion.ndim not in (2, 3) or tuple(confusion.shape[-2:]) != (k, k) or confusion.is_floating_point():
            raise SegmentationMetricError(
                f"add_confusion takes integer counts of shape ({k}, {k}) or (batch, {k}, {k}) for num_labels={k}, "
                f"got {confusion.dtype} {tuple(confusion.shape)}: build them with per_image_confusion(..., "
                f"num_labels={k})."
            )
        confusion = confusion.long()
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
    "SegmentationMetricError",
    "class_index_tensor",
    "all_background_mean_iou",
    "confusion_matrix",
    "metrics_from_confusion",
    "per_image_confusion",
]

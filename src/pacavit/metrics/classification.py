"""Classification metrics that work offline (no `evaluate.load`, which needs the Hugging Face Hub).

* `topk_correct(logits, labels, ks)`: number of samples whose label is among the k highest scores.
* `topk_accuracy(logits, labels, ks)`: the same as percentages, keyed `top1`, `top5`, ... (timm's convention).
* `TopKAccuracy`: an accumulator with `add_batch` / `compute`, in the style of an `evaluate` metric, for
  evaluation loops (feed it the output of `accelerator.gather_for_metrics`).
* `confusion_matrix` and `per_class_accuracy` for reports.

Ties are broken like `torch.topk` (so for k=1 exactly like `argmax`), and a k larger than the number of
classes counts as "all classes" (timm's `accuracy` does the same), so top-5 on a 3-class problem is 100%.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


def _as_tensor(values) -> torch.Tensor:
    return values if isinstance(values, torch.Tensor) else torch.as_tensor(values)


def topk_predictions(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the `min(k, num_classes)` highest scores of each row, best first: `(batch, k')`."""
    logits = _as_tensor(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (batch, num_classes), got {tuple(logits.shape)}")
    return logits.topk(min(int(k), logits.shape[1]), dim=1, largest=True, sorted=True).indices


def topk_correct_from_predictions(
    predictions: torch.Tensor, labels: torch.Tensor, ks: Iterable[int] = (1, 5)
) -> dict[int, int]:
    """Counts of correct samples from ranked predictions `(batch, K)` (best first) for each k in `ks`."""
    predictions, labels = _as_tensor(predictions), _as_tensor(labels)
    if predictions.ndim == 1:
        predictions = predictions[:, None]
    if predictions.shape[0] != labels.shape[0]:
        raise ValueError(f"{predictions.shape[0]} predictions but {labels.shape[0]} labels")
    hits = predictions.eq(labels.reshape(-1, 1).to(predictions.device))
    return {int(k): int(hits[:, : int(k)].any(dim=1).sum().item()) for k in ks}


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Iterable[int] = (1, 5)) -> dict[int, int]:
    """Number of samples whose label is among the k highest logits, for each k in `ks`."""
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks):
        raise ValueError(f"k must be >= 1, got {ks}")
    return topk_correct_from_predictions(topk_predictions(logits, max(ks)), labels, ks)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Iterable[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in percent, e.g. `{"top1": 75.0, "top5": 100.0}`."""
    labels = _as_tensor(labels)
    if labels.numel() == 0:
        raise ValueError("top-k accuracy of an empty batch is undefined")
    correct = topk_correct(logits, labels, ks)
    return {f"top{k}": 100.0 * c / labels.numel() for k, c in correct.items()}


class TopKAccuracy:
    """Accumulates top-k hits over batches; `compute()` returns percentages plus `num_samples`.

    >>> metric = TopKAccuracy(ks=(1, 5))
    >>> metric.add_batch(logits=torch.eye(3), references=torch.tensor([0, 1, 0]))
    >>> metric.compute()["top1"]
    66.66666666666667

    `add_batch` takes either `logits` or ranked `predictions` (`(batch, K)` indices, best first, e.g. the
    output of `topk_predictions`, which is cheaper to gather across processes than full logits).
    """

    def __init__(self, ks: Sequence[int] = (1, 5)) -> None:
        self.ks = tuple(int(k) for k in ks)
        self.reset()

    def reset(self) -> None:
        self.correct = {k: 0 for k in self.ks}
        self.num_samples = 0

    def add_batch(self, *, references, logits=None, predictions=None) -> None:
        if (logits is None) == (predictions is None):
            raise ValueError("Pass exactly one of `logits` or `predictions`.")
        references = _as_tensor(references)
        if logits is not None:
            counts = topk_correct(logits, references, self.ks)
        else:
            counts = topk_correct_from_predictions(predictions, references, self.ks)
        for k, c in counts.items():
            self.correct[k] += c
        self.num_samples += int(references.numel())

    def compute(self) -> dict[str, float]:
        if self.num_samples == 0:
            raise ValueError("No samples were added.")
        result = {f"top{k}": 100.0 * self.correct[k] / self.num_samples for k in self.ks}
        result["num_samples"] = self.num_samples
        return result


def confusion_matrix(predictions, labels, num_classes: int) -> torch.Tensor:
    """`(num_classes, num_classes)` counts; row = true label, column = predicted label."""
    predictions, labels = _as_tensor(predictions).reshape(-1).long(), _as_tensor(labels).reshape(-1).long()
    if predictions.shape != labels.shape:
        raise ValueError(f"{predictions.numel()} predictions but {labels.numel()} labels")
    index = labels * num_classes + predictions
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(matrix: torch.Tensor) -> list[float | None]:
    """Recall of each class in percent from a confusion matrix (`None` for classes without samples)."""
    totals = matrix.sum(dim=1)
    return [None if int(t) == 0 else 100.0 * float(matrix[i, i]) / float(t) for i, t in enumerate(totals)]


__all__ = [
    "TopKAccuracy",
    "confusion_matrix",
    "per_class_accuracy",
    "topk_accuracy",
    "topk_correct",
    "topk_correct_from_predictions",
    "topk_predictions",
]

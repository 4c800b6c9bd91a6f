"""Offline evaluation metrics per task (`classification`, ...); `from pacavit.metrics import TopKAccuracy` works."""

from .classification import (
    TopKAccuracy,
    confusion_matrix,
    per_class_accuracy,
    topk_accuracy,
    topk_correct,
    topk_correct_from_predictions,
    topk_predictions,
)

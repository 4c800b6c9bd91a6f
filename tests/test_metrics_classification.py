"""Offline top-k accuracy and confusion-matrix metrics, checked against cases computed by hand."""

import pytest
import torch

from pacavit.metrics import (
    TopKAccuracy,
    confusion_matrix,
    per_class_accuracy,
    topk_accuracy,
    topk_correct,
    topk_correct_from_predictions,
    topk_predictions,
)

# 4 samples, 6 classes. Ranking of each row (best first):
#   row 0: 2, 0, 1, 3, 4, 5   label 2 -> rank 1
#   row 1: 5, 4, 3, 2, 1, 0   label 3 -> rank 3
#   row 2: 0, 1, 2, 3, 4, 5   label 5 -> rank 6
#   row 3: 1, 3, 0, 2, 4, 5   label 4 -> rank 5
LOGITS = torch.tensor(
    [
        [0.5, 0.4, 0.9, 0.3, 0.2, 0.1],
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],
        [2.0, 9.0, 1.0, 3.0, 0.5, -1.0],
    ]
)
LABELS = torch.tensor([2, 3, 5, 4])


def test_topk_correct_hand_computed():
    # top-1: only row 0; top-3: rows 0, 1; top-5: rows 0, 1, 3; top-6: all
    assert topk_correct(LOGITS, LABELS, ks=(1, 3, 5, 6)) == {1: 1, 3: 2, 5: 3, 6: 4}
    assert topk_accuracy(LOGITS, LABELS, ks=(1, 5)) == {"top1": 25.0, "top5": 75.0}


def test_topk_larger_than_num_classes_counts_all_classes():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
    labels = torch.tensor([2, 1])
    assert topk_accuracy(logits, labels, ks=(1, 5)) == {"top1": 0.0, "top5": 100.0}
    assert topk_predictions(logits, 5).shape == (2, 3)


def test_top1_equals_argmax_with_ties():
    logits = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]])
    assert topk_predictions(logits, 1)[:, 0].tolist() == logits.argmax(dim=1).tolist()


def test_accumulator_matches_whole_batch_and_accepts_predictions():
    whole = topk_accuracy(LOGITS, LABELS, ks=(1, 3))
    metric = TopKAccuracy(ks=(1, 3))
    metric.add_batch(logits=LOGITS[:3], references=LABELS[:3])
    metric.add_batch(predictions=topk_predictions(LOGITS[3:], 3), references=LABELS[3:])
    result = metric.compute()
    assert result["num_samples"] == 4
    assert result["top1"] == whole["top1"] == 25.0
    assert result["top3"] == whole["top3"] == 50.0
    metric.reset()
    with pytest.raises(ValueError):
        metric.compute()
    with pytest.raises(ValueError):
        metric.add_batch(references=LABELS)  # neither logits nor predictions


def test_counts_from_ranked_predictions():
    predictions = torch.tensor([[3, 1], [0, 2], [2, 0]])
    labels = torch.tensor([1, 0, 1])
    assert topk_correct_from_predictions(predictions, labels, ks=(1, 2)) == {1: 1, 2: 2}
    with pytest.raises(ValueError):
        topk_correct_from_predictions(predictions, labels[:2])


def test_invalid_inputs():
    with pytest.raises(ValueError):
        topk_accuracy(torch.empty(0, 3), torch.empty(0, dtype=torch.long))
    with pytest.raises(ValueError):
        topk_correct(LOGITS, LABELS, ks=(0,))
    with pytest.raises(ValueError):
        topk_predictions(torch.zeros(3), 1)


def test_confusion_matrix_and_per_class_accuracy():
    predictions = torch.tensor([0, 1, 1, 2, 2, 2])
    labels = torch.tensor([0, 1, 2, 2, 2, 0])
    matrix = confusion_matrix(predictions, labels, num_classes=4)
    expected = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [0, 1, 2, 0], [0, 0, 0, 0]])
    assert torch.equal(matrix, expected)
    assert per_class_accuracy(matrix) == [50.0, 100.0, pytest.approx(200 / 3), None]

"""mIoU / aAcc as mmseg computes them, against a case worked out by hand; the 🤗 evaluate module agrees."""

import math

import evaluate
import pytest
import torch

from pacavit.metrics.segmentation import EVALUATE_MODULE, MeanIoU, confusion_matrix, per_image_confusion

LABELS = torch.tensor([[0, 0, 1], [1, 2, 255]])
PREDICTIONS = torch.tensor([[0, 1, 1], [1, 1, 3]])  # the 3 falls on the ignored pixel


def test_hand_computed_case_with_ignore_index_and_absent_class():
    metric = MeanIoU(num_labels=4, id2label={0: "a", 1: "b", 2: "c", 3: "d"})
    metric.update([PREDICTIONS], [LABELS])
    result = metric.compute()
    # class a: 1 hit, label area 2, prediction area 1 -> IoU 1/2; b: 2 hits, areas 2 and 4 -> 2/4;
    # c: labelled once, never predicted -> 0 (counts); d: only on the ignored pixel -> NaN (excluded)
    assert result["per_category_iou"]["a"] == 0.5 and result["per_category_iou"]["b"] == 0.5
    assert result["per_category_iou"]["c"] == 0.0 and math.isnan(result["per_category_iou"]["d"])
    assert result["mean_iou"] == pytest.approx(1 / 3)
    assert result["mean_accuracy"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert result["overall_accuracy"] == pytest.approx(3 / 5)


def test_per_image_matrices_sum_like_one_pass_over_any_split():
    torch.manual_seed(0)
    labels = [torch.randint(0, 5, (h, w)) for h, w in [(7, 9), (4, 4), (11, 3)]]
    predictions = [torch.randint(0, 5, label.shape) for label in labels]
    labels[1][:2] = 255
    whole = MeanIoU(5)
    whole.update(predictions, labels)
    split = MeanIoU(5)  # as two processes would: per-image matrices, gathered, then summed
    split.add_confusion(per_image_confusion(predictions[:2], labels[:2], 5))
    split.add_confusion(per_image_confusion(predictions[2:], labels[2:], 5))
    assert torch.equal(whole.confusion, split.confusion)
    assert whole.confusion.sum() == sum(int((label != 255).sum()) for label in labels)


def test_shape_and_value_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(torch.zeros(2, 3), torch.zeros(3, 2), 4)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\]"):
        confusion_matrix(torch.zeros(2, 2), torch.full((2, 2), 7), 4)


def test_evaluate_module_gives_the_same_numbers():
    metric = evaluate.load(EVALUATE_MODULE)
    result = metric.compute(predictions=[PREDICTIONS.numpy()], references=[LABELS.numpy()], num_labels=4)
    assert result["mean_iou"] == pytest.approx(1 / 3) and result["overall_accuracy"] == pytest.approx(0.6)
    assert result["per_category_iou"][:3] == [0.5, 0.5, 0.0] and math.isnan(result["per_category_iou"][3])

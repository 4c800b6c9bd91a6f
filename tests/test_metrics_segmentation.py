"""mIoU / aAcc as mmseg computes them, against a case worked out by hand; the 🤗 evaluate module agrees."""

import math

import evaluate
import numpy as np
import pytest
import torch

from pacavit.metrics.segmentation import (
    EVALUATE_MODULE,
    MeanIoU,
    SegmentationMetricError,
    confusion_matrix,
    per_image_confusion,
)

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
        confusion_matrix(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), 4)
    with pytest.raises(ValueError, match=r"labels \[7\] are not classes 0..3 \(or 255 = ignore\)"):
        confusion_matrix(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 7), 4)


def test_evaluate_module_gives_the_same_numbers():
    metric = evaluate.load(EVALUATE_MODULE)
    result = metric.compute(predictions=[PREDICTIONS.numpy()], references=[LABELS.numpy()], num_labels=4)
    assert result["mean_iou"] == pytest.approx(1 / 3) and result["overall_accuracy"] == pytest.approx(0.6)
    assert result["per_category_iou"][:3] == [0.5, 0.5, 0.0] and math.isnan(result["per_category_iou"][3])


# ---------------------------------------------------------------------------------------------- refused inputs
def test_predictions_outside_the_classes_are_refused_naming_values_and_fix():
    labels = torch.tensor([[0, 1], [2, 255]])
    for bad, shown in ((4, r"\[4\]"), (255, r"\[255\]"), (-1, r"\[-1\]")):
        predictions = torch.tensor([[0, bad], [2, 0]])
        with pytest.raises(
            SegmentationMetricError, match=rf"predictions {shown} at labelled pixels are not classes 0..3"
        ):
            confusion_matrix(predictions, labels, 4)
    with pytest.raises(SegmentationMetricError, match=r"another number of classes.*config.num_labels.*argmax"):
        MeanIoU(4).update([torch.tensor([[0, 4], [2, 0]])], [labels])
    # a prediction on an ignored pixel is not counted, whatever it is
    assert confusion_matrix(torch.tensor([[0, 1], [2, 255]]), labels, 4).sum() == 3


def test_float_predictions_negative_labels_and_bad_settings_are_refused():
    labels = torch.tensor([[0, 1]])
    with pytest.raises(SegmentationMetricError, match=r"predictions have dtype torch.float32.*argmax\(dim=1\)"):
        confusion_matrix(torch.tensor([[0.2, 0.9]]), labels, 4)
    with pytest.raises(SegmentationMetricError, match=r"labels have dtype torch.float64.*nearest-neighbour"):
        confusion_matrix(labels, np.array([[0.0, 1.5]]), 4)
    with pytest.raises(
        SegmentationMetricError, match=r"labels \[-1\] are not classes.*pass that value as ignore_index"
    ):
        confusion_matrix(labels, torch.tensor([[0, -1]]), 4)
    assert confusion_matrix(labels, torch.tensor([[0, -1]]), 4, ignore_index=-1).sum() == 1
    assert confusion_matrix(torch.tensor([[False, True]]), labels, 2).trace() == 2  # bool maps are 0/1
    with pytest.raises(SegmentationMetricError, match="ignore_index 255 is one of the classes 0..299"):
        MeanIoU(300)
    with pytest.raises(SegmentationMetricError, match="num_labels must be a positive integer"):
        MeanIoU(0)
    with pytest.raises(SegmentationMetricError, match="2 prediction maps for 1 label maps"):
        MeanIoU(4).update([labels, labels], [labels])
    with pytest.raises(SegmentationMetricError, match=r"shape \(4, 4\) or \(batch, 4, 4\).*got torch.int64 \(3, 3\)"):
        MeanIoU(4).add_confusion(torch.zeros(3, 3, dtype=torch.long))


def test_evaluate_module_refuses_the_same_inputs_with_the_same_errors():
    metric = evaluate.load(EVALUATE_MODULE)
    references = [LABELS.numpy()]
    with pytest.raises(SegmentationMetricError, match=r"predictions \[4\] at labelled pixels are not classes 0..3"):
        metric.compute(predictions=[np.full((2, 3), 4)], references=references, num_labels=4)
    with pytest.raises(SegmentationMetricError, match="predictions have dtype torch.float64.*not logits"):
        metric.compute(predictions=[np.full((2, 3), 0.5)], references=references, num_labels=4)
    with pytest.raises(SegmentationMetricError, match=r"predictions\[0\] has shape \(4, 2, 3\).*argmax the logits"):
        metric.compute(predictions=[np.zeros((4, 2, 3), np.int64)], references=references, num_labels=4)
    with pytest.raises(SegmentationMetricError, match=r"labels \[-5\] are not classes"):
        metric.compute(predictions=[np.zeros((1, 2), np.int64)], references=[np.array([[0, -5]])], num_labels=4)
    with pytest.raises(SegmentationMetricError, match="Pass num_labels"):
        metric.compute(predictions=[PREDICTIONS.numpy()], references=references)

"""🤗 evaluate module: mean IoU as mmsegmentation computes it (pacavit.metrics.segmentation), offline.

    import evaluate
    from pacavit.metrics.segmentation import EVALUATE_MODULE
    metric = evaluate.load(EVALUATE_MODULE)
    metric.compute(predictions=[pred_map, ...], references=[label_map, ...], num_labels=150, ignore_index=255)

Returns the keys of `pacavit.metrics.segmentation.metrics_from_confusion` (mean_iou, mean_accuracy,
overall_accuracy = aAcc, per_category_iou, per_category_accuracy as lists). Inputs are checked as
`pacavit.metrics.segmentation.confusion_matrix` checks them (class indices in range, integer dtypes); maps are checked
to be 2-D integer maps before evaluate stores them, so logits or floats passed by mistake get the same error as there.
"""

import datasets
import evaluate
import numpy as np
import torch

from pacavit.metrics.segmentation import MeanIoU, SegmentationMetricError, class_index_tensor

_DESCRIPTION = "Mean IoU with mmsegmentation's conventions (ignore index, NaN classes excluded from the mean)."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of 2-D int arrays): predicted class per pixel.
    references (list of 2-D int arrays): label per pixel, `ignore_index` for unlabelled pixels.
    num_labels (int, required): number of classes.
    ignore_index (int, defaults to 255): label value left out.
Returns: mean_iou, mean_accuracy, overall_accuracy, per_category_iou, per_category_accuracy.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PacavitMeanIoU(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                }
            ),
        )

    @staticmethod
    def _checked(maps, what: str):
        if maps is None:
            return None
        checked = []
        for index, values in enumerate(maps):
            tensor = class_index_tensor(values, what)
            if tensor.ndim != 2:
                raise SegmentationMetricError(
                    f"{what}[{index}] has shape {tuple(tensor.shape)}; each of the {what} is a 2-D map (height, width)"
                    " of class indices"
                    + {
                        3: ": argmax the logits over the class dimension.",
                        1: ": pass a list of maps, one per image.",
                    }.get(tensor.ndim, ".")
                )
            checked.append(tensor.cpu().numpy())
        return checked

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of prediction and reference maps (each checked to be a 2-D map of integer class indices).
        (evaluate appends the inputs description to this docstring.)"""
        super().add_batch(
            predictions=self._checked(predictions, "predictions"),
            references=self._checked(references, "references"),
            **kwargs,
        )

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one prediction map and its reference map (checked like `add_batch`'s)."""
        super().add(
            prediction=None if prediction is None else self._checked([prediction], "predictions")[0],
            reference=None if reference is None else self._checked([reference], "references")[0],
            **kwargs,
        )

    def _compute(self, predictions, references, num_labels: int | None = None, ignore_index: int = 255):
        if num_labels is None:
            raise SegmentationMetricError("Pass num_labels (the number of classes) to compute().")
        metric = MeanIoU(num_labels, ignore_index)
        metric.update(
            [torch.as_tensor(np.asarray(p)) for p in predictions], [torch.as_tensor(np.asarray(r)) for r in references]
        )
        result = metric.compute()
        result["per_category_iou"] = list(result["per_category_iou"].values())
        result["per_category_accuracy"] = list(result["per_category_accuracy"].values())
        return result

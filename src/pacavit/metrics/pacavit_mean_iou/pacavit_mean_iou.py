"""🤗 evaluate module: mean IoU as mmsegmentation computes it (pacavit.metrics.segmentation), offline.

    import evaluate
    from pacavit.metrics.segmentation import EVALUATE_MODULE
    metric = evaluate.load(EVALUATE_MODULE)
    metric.compute(predictions=[pred_map, ...], references=[label_map, ...], num_labels=150, ignore_index=255)

Returns the keys of `pacavit.metrics.segmentation.metrics_from_confusion` (mean_iou, mean_accuracy,
overall_accuracy = aAcc, per_category_iou, per_category_accuracy as lists).
"""

import datasets
import evaluate
import numpy as np
import torch

from pacavit.metrics.segmentation import MeanIoU

_DESCRIPTION = "Mean IoU with mmsegmentation's conventions (ignore index, NaN classes excluded from the mean)."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of 2-D int arrays): predicted class per pixel.
    references (list of 2-D int arrays): label per pixel, `ignore_index` for unlabelled pixels.
    num_labels (int): number of classes.
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

    def _compute(self, predictions, references, num_labels: int, ignore_index: int = 255):
        metric = MeanIoU(num_labels, ignore_index)
        metric.update(
            [torch.as_tensor(np.asarray(p)) for p in predictions], [torch.as_tensor(np.asarray(r)) for r in references]
        )
        result = metric.compute()
        result["per_category_iou"] = list(result["per_category_iou"].values())
        result["per_category_accuracy"] = list(result["per_category_accuracy"].values())
        return result

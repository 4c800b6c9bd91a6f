"""COCO data (built-in digit scenes, polygons/RLE, crowd, box clipping) and the pycocotools evaluator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pacavit.data.detection import (
    CocoInstanceDataset,
    DetectionTransform,
    build_digit_scenes_coco,
    clip_boxes,
    coco_from_dict,
    load_coco_folder,
)
from pacavit.metrics.detection import CocoEvaluator


def _ground_truth():
    """Two 40x50 images; category ids 3 and 7 (non-contiguous); one polygon, one RLE, one crowd region."""
    from pycocotools import mask as mask_utils

    square = np.zeros((40, 50), dtype=np.uint8)
    square[20:35, 30:45] = 1
    rle = mask_utils.encode(np.asfortranarray(square))
    rle["counts"] = rle["counts"].decode("ascii")
    annotations = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 3,
            "bbox": [5, 5, 20, 10],
            "area": 200.0,
            "iscrowd": 0,
            "segmentation": [[5, 5, 25, 5, 25, 15, 5, 15]],
        },
        {
            "id": 2,
            "image_id": 1,
            "category_id": 7,
            "bbox": [30, 20, 15, 15],
            "area": 225.0,
            "iscrowd": 0,
            "segmentation": rle,
        },
        {
            "id": 3,
            "image_id": 2,
            "category_id": 3,
            "bbox": [10, 10, 20, 20],
            "area": 400.0,
            "iscrowd": 0,
            "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]],
        },
        {
            "id": 4,
            "image_id": 2,
            "category_id": 7,
            "bbox": [32, 0, 18, 40],
            "area": 720.0,
            "iscrowd": 1,
            "segmentation": [[32, 0, 50, 0, 50, 40, 32, 40]],
        },
    ]
    images = [{"id": i, "height": 40, "width": 50, "file_name": f"{i}.png"} for i in (1, 2)]
    categories = [{"id": 3, "name": "three"}, {"id": 7, "name": "seven"}]
    return coco_from_dict({"images": images, "annotations": annotations, "categories": categories})


def _perfect_predictions(dataset):
    """Predictions equal to the non-crowd ground truth (what CocoInstanceDataset gives as targets)."""
    out = {}
    for index in range(len(dataset)):
        target = dataset.target(index)
        n = len(target["boxes"])
        out[target["image_id"]] = {
            "boxes": target["boxes"],
            "scores": torch.ones(n),
            "labels": target["class_labels"],
            "masks": target["masks"],
        }
    return out


def test_coco_ap_is_one_for_perfect_predictions_and_drops_without_one():
    coco = _ground_truth()
    dataset = CocoInstanceDataset(coco, [np.zeros((40, 50, 3), np.uint8)] * 2)
    assert dataset.label_to_category == {0: 3, 1: 7} and dataset.id2label == {0: "three", 1: "seven"}
    target = dataset.target(0)  # polygon and RLE masks decode to the right pixels
    assert target["masks"].shape == (2, 40, 50) and int(target["masks"][1].sum()) == 225
    predictions = _perfect_predictions(dataset)
    assert len(predictions[2]["boxes"]) == 1  # the crowd region is not a training target

    evaluator = CocoEvaluator(coco, dataset.label_to_category)
    evaluator.update(list(predictions), list(predictions.values()))
    metrics = evaluator.compute()
    assert metrics["bbox_AP"] == pytest.approx(1.0) and metrics["segm_AP"] == pytest.approx(1.0)
    assert metrics["bbox_AP50"] == pytest.approx(1.0) and metrics["bbox_APl"] is None  # no large objects

    # a detection on the crowd region is neither a match nor a false positive
    with_crowd = {k: dict(v) for k, v in predictions.items()}
    crowd_mask = torch.zeros(1, 40, 50, dtype=torch.uint8)
    crowd_mask[0, :, 32:] = 1
    p = with_crowd[2]
    with_crowd[2] = {
        "boxes": torch.cat([p["boxes"], torch.tensor([[32.0, 0, 50, 40]])]),
        "scores": torch.tensor([1.0, 0.9]),
        "labels": torch.tensor([0, 1]),
        "masks": torch.cat([p["masks"], crowd_mask]),
    }
    evaluator = CocoEvaluator(coco, dataset.label_to_category)
    evaluator.update(list(with_crowd), list(with_crowd.values()))
    assert evaluator.compute()["bbox_AP"] == pytest.approx(1.0)

    # one ground-truth object left undetected: AP drops (category "seven" has no detection at all)
    missing = {k: dict(v) for k, v in predictions.items()}
    missing[1] = {k: v[:1] for k, v in predictions[1].items()}
    evaluator = CocoEvaluator(coco, dataset.label_to_category)
    evaluator.update(list(missing), list(missing.values()))
    metrics = evaluator.compute()
    assert metrics["bbox_AP"] < 0.9 and metrics["segm_AP"] < 0.9


def test_out_of_image_and_zero_area_boxes_are_clipped_or_dropped(caplog):
    boxes = np.array([[-5, 2, 10, 12], [45, 30, 60, 50], [60, 10, 70, 20], [10, 10, 10, 30]], dtype=np.float32)
    clipped, keep = clip_boxes(boxes, 40, 50)
    assert keep.tolist() == [True, True, False, False]
    assert clipped[0].tolist() == [0, 2, 10, 12] and clipped[1].tolist() == [45, 30, 50, 40]
    data = {
        "images": [{"id": 1, "height": 40, "width": 50, "file_name": "1.png"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [40, 30, 20, 20],
                "area": 100.0,
                "iscrowd": 0,
                "segmentation": [[40, 30, 50, 30, 50, 40, 40, 40]],
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 1,
                "bbox": [55, 10, 5, 5],
                "area": 25.0,
                "iscrowd": 0,
                "segmentation": [[55, 10, 60, 10, 60, 15, 55, 15]],
            },
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    dataset = CocoInstanceDataset(coco_from_dict(data), [np.zeros((40, 50, 3), np.uint8)])
    target = dataset.target(0)
    assert target["boxes"].tolist() == [[40.0, 30.0, 50.0, 40.0]] and len(target["masks"]) == 1
    assert "annotation 2 of image 1 has no area inside the image" in caplog.text


def test_built_in_digit_scenes_and_training_augmentation(tmp_path):
    root = build_digit_scenes_coco(tmp_path / "digits", num_train=4, num_validation=2, size=64)
    coco, paths = load_coco_folder(root / "train", root / "annotations" / "instances_train.json")
    again, _ = load_coco_folder(root / "train", root / "annotations" / "instances_train.json")
    assert len(paths) == 4 and len(coco.getCatIds()) == 10 and coco.dataset == again.dataset
    transform = DetectionTransform(
        train=True,
        short_sides=[96, 128],
        max_size=200,
        crop_pre_resize_short_sides=[80],
        crop_size_range=(48, 64),
        crop_probability=0.5,
        seed=0,
    )
    dataset = CocoInstanceDataset(coco, paths, transform)
    for index in range(len(dataset)):
        item = dataset[index]
        image, annotation = item["image"], item["annotation"]
        assert min(image.shape[-2:]) in (96, 128) and image.dtype == torch.uint8
        boxes = annotation["boxes"]
        assert len(boxes) == len(annotation["masks"]) == len(annotation["class_labels"])
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 2] <= image.shape[-1] + 1e-4).all()
        assert annotation["masks"].shape[-2:] == image.shape[-2:]

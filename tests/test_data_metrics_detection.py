"""COCO data (built-in digit scenes, polygons/RLE, crowd, box clipping) and the pycocotools evaluator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pacavit.data.common import CorruptImageError
from pacavit.data.detection import (
    CocoFormatError,
    CocoInstanceDataset,
    DetectionTransform,
    build_digit_scenes_coco,
    clip_boxes,
    coco_from_dict,
    coco_from_hf_dataset,
    load_coco_folder,
)
from pacavit.metrics.detection import CocoEvaluator, PredictionFormatError


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


# --------------------------------------------------------------------------------------------
# Validation of user COCO data (folders and 🤗 datasets) and of predictions: errors name the file, the entries
# and the fix; degenerate polygons and annotations of unknown images are left out with a warning
# --------------------------------------------------------------------------------------------
def _coco_data(**changes):
    """A valid two-image COCO dict (40x50 images, categories 3 and 7); `changes` replace its top-level lists."""
    data = {
        "images": [{"id": i, "file_name": f"{i}.png", "height": 40, "width": 50} for i in (1, 2)],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [5, 5, 20, 10], "area": 200.0, "iscrowd": 0,
             "segmentation": [[5, 5, 25, 5, 25, 15, 5, 15]]},
            {"id": 2, "image_id": 2, "category_id": 7, "bbox": [10, 10, 20, 20], "area": 400.0, "iscrowd": 0,
             "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]},
        ],
        "categories": [{"id": 3, "name": "three"}, {"id": 7, "name": "seven"}],
    }  # fmt: skip
    data.update(changes)
    return data


def _write_folder(tmp_path, data, sizes=None):
    """Write `data` as tmp_path/ann.json and its images (black PNGs, (height, width) from `sizes` or 40x50)."""
    import json

    from PIL import Image

    (tmp_path / "images").mkdir(exist_ok=True)
    for image in data.get("images", []) if isinstance(data, dict) else []:
        if isinstance(image, dict) and isinstance(image.get("file_name"), str):
            height, width = (sizes or {}).get(image.get("id"), (40, 50))
            Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(tmp_path / "images" / image["file_name"])
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return tmp_path / "images", tmp_path / "ann.json"


def _load_error(tmp_path, data, error=None, sizes=None):
    with pytest.raises(error or CocoFormatError) as info:
        load_coco_folder(*_write_folder(tmp_path, data, sizes))
    return str(info.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"images": [', "is not valid JSON: Expecting value at line 1, column 13"),
        ("[1, 2]", "holds a JSON list, not a COCO object"),
        ('{"images": [], "categories": []}', "no 'annotations'"),
        ('{"images": {}, "annotations": [], "categories": []}', "'images' (dict)"),
    ],
)
def test_annotation_file_that_is_not_coco_json_names_the_file(tmp_path, text, expected):
    (tmp_path / "images").mkdir()
    (tmp_path / "ann.json").write_text(text)
    with pytest.raises(CocoFormatError) as info:
        load_coco_folder(tmp_path / "images", tmp_path / "ann.json")
    assert str(tmp_path / "ann.json") in str(info.value) and expected in str(info.value)
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00\xd8garbage")
    with pytest.raises(CocoFormatError, match="not a JSON text file"):
        load_coco_folder(tmp_path / "images", tmp_path / "bin.json")


def test_entries_without_required_keys_and_duplicate_ids_are_listed(tmp_path):
    data = _coco_data()
    data["images"].append({"id": 3})  # no file_name
    data["annotations"] += [
        {"id": 5, "image_id": 1, "category_id": 3},  # no bbox
        {"image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2]},  # no id: named by its index
        dict(data["annotations"][0]),  # duplicate id 1
        dict(data["annotations"][0], id="9"),
        dict(data["annotations"][0], id=20, image_id=[1], category_id={"id": 3}),  # unhashable: no TypeError
    ]
    data["categories"] += [{"id": 3, "name": "again"}, {"id": 8}]
    message = _load_error(tmp_path, data)
    assert "cannot be used as it is" in message and str(tmp_path / "ann.json") in message
    assert "entries of 'images' without required keys (1): images[2] (no file_name)" in message
    assert "entries of 'annotations' without required keys (2): id 5 (no bbox); annotations[3] (no id)" in message
    assert "entries of 'categories' without required keys (1): categories[3] (no name)" in message
    assert "ids used by more than one entry of 'annotations' (1): 1. pycocotools would keep only the last" in message
    assert "ids used by more than one entry of 'categories' (1): 3." in message
    assert "entries of 'annotations' with an 'id' that is not an integer (1): '9'" in message
    assert "annotations with a 'image_id' that is not an integer (1): id 20 ([1])" in message
    assert "annotations with a 'category_id' that is not an integer (1): id 20 ({'id': 3})" in message


@pytest.mark.parametrize("bbox", [[1, 2, 3], [1, 2, -3, 4], [1, 2, 3, float("nan")], "1 2 3 4", [1, 2, "3", 4], None])
def test_malformed_bbox_is_refused_naming_the_annotation(tmp_path, bbox):
    data = _coco_data()
    data["annotations"][1]["bbox"] = bbox
    message = _load_error(tmp_path, data)
    assert f"annotations with a malformed bbox (1): id 2 ({bbox!r})" in message
    assert "4 finite numbers with width and height >= 0" in message


def test_unknown_category_is_refused_at_load_and_in_the_dataset(tmp_path):
    data = _coco_data()
    data["annotations"][1]["category_id"] = 12
    data["annotations"].append(dict(data["annotations"][0], id=3, category_id=0))
    data["annotations"].append(dict(data["annotations"][0], id=4, category_id=0, image_id=99))  # left out anyway
    message = _load_error(tmp_path, data)
    assert "annotations with a category_id that is not in 'categories' (2): id 2 (category 12); id 3 (category 0)" in (
        message
    )
    assert "Missing category ids: 0, 12; the categories are 3, 7. Add the missing categories" in message
    with pytest.raises(
        CocoFormatError, match=r"\(ids 2, 3, 4; missing category ids 0, 12\)"
    ):  # a COCO built without checks
        CocoInstanceDataset(coco_from_dict(data), [None, None])


def test_degenerate_polygons_are_dropped_with_a_warning_naming_them(tmp_path, caplog):
    data = _coco_data()
    data["annotations"][0]["segmentation"] = [[5, 5, 25, 5], [5, 5, 25, 5, 25, 15, 5, 15], [1, 2, 3, 4, 5]]
    data["annotations"][1]["segmentation"] = [[10, 10, 30, 10]]  # no part with 3 points: the instance goes
    coco, _ = load_coco_folder(*_write_folder(tmp_path, data))
    assert list(coco.anns) == [1] and coco.anns[1]["segmentation"] == [[5, 5, 25, 5, 25, 15, 5, 15]]
    assert "1 annotation(s) have polygon parts with fewer than 3 points" in caplog.text and "(id 1)" in caplog.text
    assert "1 annotation(s) have no polygon with at least 3 points; they are dropped (id 2)" in caplog.text
    data["annotations"][1]["segmentation"] = [1, 2, 3, 4, 5, 6]  # flat: a format error, refused
    message = _load_error(tmp_path, data)
    assert (
        "malformed segmentation (1): id 2 (a polygon segmentation is a list of polygons" in message
        and "wrap it in another list" in message
    )


def test_box_only_annotations_get_their_box_as_mask_in_folders_and_hf_datasets(tmp_path):
    import datasets
    from PIL import Image

    data = _coco_data()
    del data["annotations"][0]["segmentation"], data["annotations"][0]["area"]
    data["annotations"][1]["segmentation"] = []
    coco, paths = load_coco_folder(*_write_folder(tmp_path, data))
    folder = CocoInstanceDataset(coco, paths)
    assert int(folder.target(0)["masks"].sum()) == 200 and coco.anns[1]["area"] == 200.0
    assert int(folder.target(1)["masks"].sum()) == 400
    image = Image.fromarray(np.zeros((40, 50, 3), np.uint8))
    rows = {"image": [image], "objects": [{"bbox": [[5.0, 5.0, 20.0, 10.0]], "category": [0]}]}
    hf_coco, images = coco_from_hf_dataset(datasets.Dataset.from_dict(rows), class_names=["three"])
    hf_mask = CocoInstanceDataset(hf_coco, images).target(0)["masks"]
    assert hf_mask.shape == (1, 40, 50) and bool((hf_mask[0] == folder.target(0)["masks"][0]).all())


def test_annotations_of_unknown_images_are_left_out_with_a_warning(tmp_path, caplog):
    data = _coco_data()
    data["annotations"].append(dict(data["annotations"][0], id=9, image_id=44))
    coco, _ = load_coco_folder(*_write_folder(tmp_path, data))
    assert sorted(coco.anns) == [1, 2]
    assert "1 annotation(s) refer to image ids that are not in 'images'; they are left out (id 9; image ids 44)" in (
        caplog.text
    )


def test_image_size_disagreeing_with_the_file_is_refused_and_missing_sizes_are_read(tmp_path):
    data = _coco_data()
    message = _load_error(tmp_path, data, sizes={2: (50, 40)})
    assert "images whose height/width in the annotation file differ from the image file (1): " in message
    assert f"{tmp_path / 'images' / '2.png'} (image id 2): annotations 40x50, file 50x40 (height x width)" in message
    assert "swapped: an EXIF orientation?" in message and "correct 'height'/'width'" in message
    for image in data["images"]:
        del image["height"], image["width"]
    coco, _ = load_coco_folder(*_write_folder(tmp_path, data, sizes={2: (30, 60)}))
    assert (coco.imgs[2]["height"], coco.imgs[2]["width"]) == (30, 60)


def test_missing_or_unreadable_image_files_are_listed(tmp_path):
    images_dir, annotation_file = _write_folder(tmp_path, _coco_data())
    (images_dir / "2.png").write_bytes(b"not an image")
    with pytest.raises(CorruptImageError) as info:
        load_coco_folder(images_dir, annotation_file)
    assert f"{images_dir / '2.png'} (image id 2): UnidentifiedImageError" in str(info.value)
    assert "Fix or replace these files" in str(info.value) and "skip_unreadable=True" in str(info.value)
    coco, paths = load_coco_folder(images_dir, annotation_file, skip_unreadable=True)
    assert paths == [images_dir / "1.png"] and sorted(coco.imgs) == [1] and sorted(coco.anns) == [1]
    (images_dir / "2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"image files not found in .* \(1\): .*2\.png \(image id 2\)"):
        load_coco_folder(images_dir, annotation_file)


def test_rle_masks_of_another_size_or_bad_counts_are_refused(tmp_path):
    data = _coco_data()
    data["annotations"][0]["segmentation"] = {"size": [40, 60], "counts": [2400]}
    data["annotations"][1]["segmentation"] = {"size": [40, 50], "counts": [10, 5]}
    message = _load_error(tmp_path, data)
    assert "id 2 (uncompressed RLE 'counts' must be non-negative run lengths adding up to height * width)" in message
    data["annotations"][1]["segmentation"] = {"size": [40, 50], "counts": [2000]}
    message = _load_error(tmp_path, data)
    assert "RLE mask of another size than their image (1): id 1 (mask (40, 60), image (40, 50)" in message


def test_annotation_id_zero_is_renumbered_so_that_it_can_be_matched(tmp_path):
    data = _coco_data()
    data["annotations"][0]["id"] = 0  # COCOeval reads gt id 0 as "unmatched": AP would be silently 0
    coco, paths = load_coco_folder(*_write_folder(tmp_path, data))
    assert sorted(coco.anns) == [2, 3]
    dataset = CocoInstanceDataset(coco, paths)
    predictions = _perfect_predictions(dataset)
    evaluator = CocoEvaluator(coco, dataset.label_to_category)
    evaluator.update(list(predictions), list(predictions.values()))
    assert evaluator.compute()["bbox_AP"] == pytest.approx(1.0)


def test_fields_with_bad_values_are_refused(tmp_path):
    data = _coco_data()
    data["annotations"][0].update(iscrowd=2, area=-1)
    data["annotations"][1]["segmentation"] = "polygon"
    data["images"][1]["height"] = 0
    data["categories"][1]["name"] = "three"
    message = _load_error(tmp_path, data)
    assert "annotations with an 'iscrowd' other than 0 or 1 (1): id 1 (2)" in message
    assert "annotations with a bad 'area' (1): id 1 (-1)" in message
    assert "annotations with a malformed segmentation (1): id 2 (a str)" in message
    assert "images with a bad 'height'/'width' (1): id 2 (height 0)" in message
    assert "category names used by more than one category (1): 'three' (ids 3, 7)" in message
    message = _load_error(tmp_path, _coco_data(categories=[], annotations=[]))
    assert "'categories' is empty. Add the categories to detect" in message


def _png_bytes(height: int = 40, width: int = 50) -> dict:
    """A 🤗 `Image(decode=False)` value of a black PNG."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(buffer, "PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _hf_dataset(layout: str, objects, image=None):
    """A one-row 🤗 dataset (classes a, b) with `objects` as a dict of lists or a list of dicts."""
    import datasets
    from PIL import Image

    image = Image.fromarray(np.zeros((40, 50, 3), np.uint8)) if image is None else image
    labels = datasets.ClassLabel(names=["a", "b"])
    if layout == "dict_of_lists":
        objects_feature = datasets.Sequence({"bbox": datasets.Sequence(datasets.Value("float32")), "category": labels})
    else:
        objects_feature = datasets.List({"bbox": datasets.List(datasets.Value("float32")), "category": labels})
    features = datasets.Features({"image": datasets.Image(), "objects": objects_feature})
    return datasets.Dataset.from_dict({"image": [image], "objects": [objects]}, features=features)


def test_hf_objects_as_dict_of_lists_or_list_of_dicts_give_the_same_coco():
    by_keys = _hf_dataset("dict_of_lists", {"bbox": [[1, 2, 10, 10], [5, 5, 4, 4]], "category": [1, 0]})
    by_rows = _hf_dataset(
        "list_of_dicts", [{"bbox": [1, 2, 10, 10], "category": 1}, {"bbox": [5, 5, 4, 4], "category": 0}]
    )
    (first, images), (second, _) = coco_from_hf_dataset(by_keys, split="train"), coco_from_hf_dataset(by_rows)
    assert first.dataset == second.dataset and [c["name"] for c in first.dataset["categories"]] == ["a", "b"]
    assert [a["category_id"] for a in first.dataset["annotations"]] == [2, 1]
    assert isinstance(images[0], dict) and images[0]["bytes"]  # not decoded at load
    item = CocoInstanceDataset(first, images)[0]
    assert item["image"].size == (50, 40) and item["class_labels"].tolist() == [1, 0]


@pytest.mark.parametrize(
    "objects, expected",
    [
        ([{"bbox": [1, 2, 3, 4]}], "row 0 of the 🤗 dataset ('train' split), object 0: no 'category'"),
        ({"bbox": [[1, 2, 3, 4]], "category": [0, 1]}, "lists have different lengths ({'bbox': 1, 'category': 2})"),
        ([{"bbox": [1, 2, 3, 4], "category": 5}], "object 0: category 5 is outside the 2 class names"),
        ([{"bbox": [1, 2, -3, 4], "category": 0}], "malformed bbox (1): row 0, object 0 ([1.0, 2.0, -3.0, 4.0])"),
        ([{"bbox": [1, 2, 3], "category": 0}], "malformed bbox (1): row 0, object 0 ([1.0, 2.0, 3.0])"),
    ],
)
def test_hf_rows_that_cannot_be_used_are_refused_naming_the_row(objects, expected):
    if "category 5" in expected:  # datasets itself refuses to build a ClassLabel column with this row
        dataset = [{"image": _png_bytes(), "objects": objects}]
    else:
        dataset = _hf_dataset("list_of_dicts" if isinstance(objects, list) else "dict_of_lists", objects)
    with pytest.raises(CocoFormatError) as info:
        coco_from_hf_dataset(dataset, split="train", class_names=["a", "b"])
    assert expected in str(info.value)


def test_hf_images_as_pil_paths_or_bytes_and_rows_without_image(tmp_path):
    from PIL import Image

    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((30, 20, 3), np.uint8)).save(path)
    objects = {"bbox": [[1.0, 1.0, 5.0, 5.0]], "category": [0]}
    for value in (Image.open(path), str(path), {"bytes": path.read_bytes(), "path": None}):
        coco, images = coco_from_hf_dataset([{"image": value, "objects": objects}], class_names=["a"])
        assert (coco.imgs[1]["height"], coco.imgs[1]["width"]) == (30, 20)
        assert CocoInstanceDataset(coco, images)[0]["image"].size == (20, 30)
    rows = [{"image": str(path), "objects": objects}, {"image": None, "objects": objects}]
    rows.append({"image": {"bytes": b"not an image", "path": "c.png"}, "objects": objects})
    with pytest.raises(CorruptImageError, match=r"row 1 of the 🤗 dataset has no image \('image' is None\)"):
        coco_from_hf_dataset(rows)
    with pytest.raises(CorruptImageError, match=r"Cannot open file 'c.png' \(row 1 of the 🤗 dataset\)"):
        coco_from_hf_dataset(rows[::2])
    coco, images = coco_from_hf_dataset(rows, skip_unreadable=True)  # the scripts' --skip_corrupt_images
    assert sorted(coco.imgs) == [1] and len(images) == 1 and len(coco.anns) == 1
    with pytest.raises(CocoFormatError, match=r"row 0 of the 🤗 dataset has no 'objects' \(found: \['image'\]\)"):
        coco_from_hf_dataset([{"image": str(path)}])


def test_dataset_item_errors_name_the_file_and_split(tmp_path):
    images_dir, annotation_file = _write_folder(tmp_path, _coco_data())
    coco, paths = load_coco_folder(images_dir, annotation_file)
    (images_dir / "2.png").write_bytes((images_dir / "2.png").read_bytes()[:60])  # truncated after the check
    with pytest.raises(CorruptImageError) as info:
        CocoInstanceDataset(coco, paths, split="validation")[1]
    assert f"file '{images_dir / '2.png'}', index 1 of the 'validation' split" in str(info.value)


def test_predictions_that_cannot_be_scored_are_refused_or_binarised(caplog):
    import pacavit.metrics.detection as metrics

    coco = _ground_truth()
    dataset = CocoInstanceDataset(coco, [None, None])
    good = _perfect_predictions(dataset)[1]
    evaluator = CocoEvaluator(coco, dataset.label_to_category)
    for change, expected in (
        ({"labels": torch.tensor([0, 5])}, "labels [5] are not in label_to_category (labels [0, 1])"),
        ({"scores": torch.ones(3)}, "2 boxes, 3 scores and 2 labels"),
        ({"masks": good["masks"][:1]}, "masks of shape (1, 40, 50) for 2 boxes"),
        ({"masks": torch.zeros(2, 20, 25)}, "masks are 20x25, the image 40x50 (height x width)"),
        ({"masks": good["masks"] * 4.0 - 2}, "float mask values span [-2, 2]; float masks are binary (0/1) or"),
        ({"boxes": good["boxes"][:, [2, 3, 0, 1]]}, "boxes with x2 < x1 or y2 < y1"),
    ):
        with pytest.raises(PredictionFormatError) as info:
            evaluator.update([1], [dict(good, **change)])
        assert f"Image 1: {expected}" in str(info.value)
    with pytest.raises(PredictionFormatError, match="2 image ids for 1 predictions"):
        evaluator.update([1, 2], [good])
    with pytest.raises(PredictionFormatError, match="Image id 9 is not in the ground truth"):
        evaluator.update([9], [good])

    # probabilities are binarised at 0.5 (not truncated to 0 as a uint8 cast would), with one warning
    metrics._warned_soft_masks = False
    soft = good["masks"].float() * 0.7
    entries = metrics.predictions_to_coco(1, dict(good, masks=soft), dataset.label_to_category, (40, 50))
    again = metrics.predictions_to_coco(1, dict(good, masks=soft), dataset.label_to_category, (40, 50))
    from pycocotools import mask as mask_utils

    assert [mask_utils.area(e["segmentation"]) for e in entries] == [200, 225] and entries == again
    as_list = metrics.predictions_to_coco(1, dict(good, masks=list(good["masks"])), dataset.label_to_category)
    as_255 = metrics.predictions_to_coco(1, dict(good, masks=good["masks"] * 255), dataset.label_to_category)
    assert as_list == entries and as_255 == entries  # a list of (H, W) masks, 0/255 masks: as the processor reads
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0), "masks": torch.zeros(0)}
    assert metrics.predictions_to_coco(1, empty, dataset.label_to_category, (40, 50)) == []
    assert caplog.text.count("binarised at 0.5") == 1

"""pacavit.data.segmentation: built-in digit scenes, paired image/mask transforms, errors for bad masks/columns."""

import numpy as np
import pytest
from PIL import Image

from pacavit.data.segmentation import (
    SegmentationTransform,
    load_digit_scenes,
    load_segmentation_dataset,
    mask_to_array,
)


def test_digit_scenes_are_deterministic_and_labelled():
    a, b = load_digit_scenes(8, 4, size=48, seed=1), load_digit_scenes(8, 4, size=48, seed=1)
    assert a["train"][3]["image"].tobytes() == b["train"][3]["image"].tobytes()
    masks = [np.asarray(a["validation"][i]["annotation"]) for i in range(4)]
    assert all(m.shape == (48, 48) and m.max() <= 10 for m in masks)
    assert all(len(np.unique(m)) >= 2 for m in masks)  # background plus at least one digit
    assert a["train"][0]["image"].mode == "RGB"


def test_train_transform_rescales_crops_and_pads_with_ignore():
    image = Image.fromarray(np.full((40, 30, 3), 128, np.uint8))
    mask = Image.fromarray(np.ones((40, 30), np.uint8))
    transform = SegmentationTransform(
        train=True,
        crop_size=64,
        scale=(64, 32),
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
        num_labels=3,
        ratio_range=(0.5, 0.5),
        flip_prob=0.0,
    )
    out = transform(image, mask)
    assert out["pixel_values"].shape == (3, 64, 64) and out["labels"].shape == (64, 64)
    # the image shrinks to 21x16, the rest of the crop is padding labelled 255 (ignored)
    assert set(out["labels"].unique().tolist()) == {1, 255}
    assert int((out["labels"] == 1).sum()) == 21 * 16
    evaluation = SegmentationTransform(
        train=False, crop_size=64, scale=(64, 32), image_mean=[0.5] * 3, image_std=[0.5] * 3, num_labels=3
    )(image, mask)
    assert evaluation["labels"].shape == (40, 30)  # scored at the original label resolution


def test_mask_errors_and_reduce_labels():
    assert mask_to_array(Image.fromarray(np.array([[0, 1], [2, 255]], np.uint8)), 2, True).tolist() == [
        [255, 0],
        [1, 255],
    ]
    with pytest.raises(ValueError, match=r"mask values \[5\] are not classes 0..2"):
        mask_to_array(Image.fromarray(np.array([[0, 5]], np.uint8)), 3, False)
    with pytest.raises(ValueError, match="colour image"):
        mask_to_array(Image.fromarray(np.random.randint(0, 255, (4, 4, 3), np.uint8)), 3, False)


def test_local_folders_and_missing_columns(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "masks").mkdir()
        for i in range(2):
            Image.new("RGB", (8, 8)).save(tmp_path / split / "images" / f"{i}.jpg")
            Image.new("L", (8, 8)).save(tmp_path / split / "masks" / f"{i}.png")
    data = load_segmentation_dataset(train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val"))
    assert len(data["train"]) == 2 and data["validation"][0]["annotation"].mode == "L"
    (tmp_path / "train" / "masks" / "1.png").unlink()
    with pytest.raises(ValueError, match="without a mask.*1.jpg"):
        load_segmentation_dataset(train_dir=str(tmp_path / "train"))

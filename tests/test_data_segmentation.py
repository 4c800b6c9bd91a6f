"""pacavit.data.segmentation: built-in digit scenes, paired image/mask transforms, errors for bad masks/columns;
the --id2label file (pacavit.training.segmentation)."""

import io
import json
import logging
import struct
import zlib

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from pacavit.data.common import CorruptImageError
from pacavit.data.segmentation import (
    SegmentationDataError,
    SegmentationTransform,
    TransformedSegmentationDataset,
    load_digit_scenes,
    load_segmentation_dataset,
    load_segmentation_mask,
    mask_to_array,
)
from pacavit.training.segmentation import Id2LabelError, load_id2label, parse_args


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


def eval_transform(num_labels=4, reduce_labels=False, ignore_index=255):
    return SegmentationTransform(
        train=False,
        crop_size=8,
        scale=(8, 8),
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
        num_labels=num_labels,
        reduce_labels=reduce_labels,
        ignore_index=ignore_index,
    )


def encoded(image: Image.Image, fmt: str = "PNG", path: str | None = None) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return {"bytes": buffer.getvalue(), "path": path or f"mask.{fmt.lower()}"}


def png16(array: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour): 2 = RGB, 4 = gray + alpha."""
    height, width = array.shape[:2]
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------- mask vs image size
def test_mask_of_another_size_is_refused_naming_row_files_and_sizes(tmp_path):
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    Image.new("RGB", (8, 6)).save(tmp_path / "images" / "a.jpg")
    Image.new("L", (8, 5)).save(tmp_path / "masks" / "a.png")
    Image.new("RGB", (8, 6)).save(tmp_path / "images" / "b.jpg")
    Image.new("L", (6, 8)).save(tmp_path / "masks" / "b.png")  # width and height swapped
    raw = load_segmentation_dataset(train_dir=str(tmp_path))
    dataset = TransformedSegmentationDataset(raw["train"], eval_transform(), "train")
    with pytest.raises(SegmentationDataError) as error:
        dataset[0]
    message = str(error.value)
    assert "'train' split row 0" in message and "a.jpg" in message and "a.png" in message
    assert "the mask is 8x5 pixels (width x height) but its image is 8x6" in message and "belongs to" in message
    with pytest.raises(SegmentationDataError, match=r"row 1 .*b\.png.*6x8 .* 8x6.*sizes are swapped.*EXIF"):
        dataset[1]
    with pytest.raises(SegmentationDataError, match="5x4 pixels .* 4x4"):  # called directly, with arrays
        eval_transform()(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.uint8))


# ---------------------------------------------------------------------------------------------- all-ignored masks
def test_all_ignored_mask_after_reduce_labels_gives_only_ignore():
    mask = Image.fromarray(np.zeros((4, 4), np.uint8))  # all "other"
    out = eval_transform(reduce_labels=True)(Image.new("RGB", (4, 4)), mask)
    assert set(out["labels"].unique().tolist()) == {255}  # the model's loss is 0 for it (test_modeling_...)


# ---------------------------------------------------------------------------------------------- mask modes
def test_16_bit_and_32_bit_masks_are_read_exactly_not_rescaled():
    values = np.array([[0, 300], [1000, 255]], np.uint16)
    for value in (
        encoded(Image.fromarray(values)),  # 16-bit PNG, mode I;16
        encoded(Image.fromarray(values.astype(np.int32)), "TIFF"),  # mode I
        encoded(Image.fromarray(values.astype(np.float32)), "TIFF"),  # mode F, whole numbers
        values,  # a uint16 array
    ):
        mask = load_segmentation_mask(value)
        assert mask_to_array(mask, 1001, False, ignore_index=65535).tolist() == [[0, 300], [1000, 255]]
    transform = eval_transform(num_labels=1001, ignore_index=65535)  # 255 is a class here
    out = transform(Image.new("RGB", (2, 2)), encoded(Image.fromarray(values)))
    assert out["labels"].tolist() == [[0, 300], [1000, 255]]
    with pytest.raises(SegmentationDataError, match="ignore_index 255 is one of the classes 0..1000"):
        eval_transform(num_labels=1001)
    with pytest.raises(SegmentationDataError, match=r"\[300, 1000\] are not classes 0..3"):
        mask_to_array(load_segmentation_mask(encoded(Image.fromarray(values))), 4, False)


def test_palette_bilevel_and_opaque_alpha_masks_give_their_indices():
    indices = np.array([[0, 1], [2, 3]], np.uint8)
    palette = Image.fromarray(indices).convert("P")
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9])  # colours unlike the indices
    assert mask_to_array(load_segmentation_mask(encoded(palette)), 4, False).tolist() == indices.tolist()
    bilevel = Image.fromarray(np.array([[0, 1], [1, 0]], bool))
    assert mask_to_array(load_segmentation_mask(encoded(bilevel)), 2, False).tolist() == [[0, 1], [1, 0]]
    for mode in ("LA", "RGBA", "RGB"):
        opaque = Image.fromarray(indices).convert(mode)
        assert mask_to_array(load_segmentation_mask(encoded(opaque)), 4, False).tolist() == indices.tolist()


def test_masks_that_cannot_hold_indices_are_refused_with_the_fix():
    where = "'train' split row 7 (mask 'x.png')"
    translucent = Image.fromarray(
        np.dstack([np.zeros((2, 2), np.uint8), np.array([[255, 0], [255, 255]])]).astype(np.uint8), "LA"
    )
    with pytest.raises(SegmentationDataError, match=r"row 7 .*mode LA\) has 1 transparent.*without alpha"):
        mask_to_array(translucent, 4, False, where=where)
    fractional = Image.fromarray(np.array([[0.5, 1.0]], np.float32))
    with pytest.raises(SegmentationDataError, match=r"not whole numbers \(e.g. 0.5; mode F\).*nearest-neighbour"):
        mask_to_array(fractional, 4, False)
    colour = Image.fromarray(np.array([[[128, 0, 0], [0, 128, 0]]], np.uint8))
    with pytest.raises(SegmentationDataError, match=r"colour image \(mode RGB.*2 colours, e.g. \(0, 128, 0\).*'P'"):
        mask_to_array(colour, 4, False)
    with pytest.raises(SegmentationDataError, match="mode 'CMYK', which does not hold class indices"):
        mask_to_array(Image.new("CMYK", (2, 2)), 4, False)
    with pytest.raises(SegmentationDataError, match=r"\[-1\] are not classes 0..3.*not with negative values"):
        mask_to_array(np.array([[0, -1]]), 4, False)
    values = np.array([[0, 300]], np.uint16)
    for colour_type, channels in ((2, [values] * 3), (4, [values, np.full_like(values, 65535)])):
        value = {"bytes": png16(np.stack(channels, -1), colour_type), "path": "deep.png"}
        with pytest.raises(SegmentationDataError, match=r"row 7 .*16-bit image with several channels.*high byte"):
            load_segmentation_mask(value, where)


def test_jpeg_masks_are_warned_about_once_and_named_in_value_errors(caplog):
    transform = eval_transform(num_labels=200)
    value = encoded(Image.fromarray(np.array([[0, 1], [2, 3]], np.uint8)), "JPEG", path="scan.jpg")
    with caplog.at_level(logging.WARNING, logger="pacavit.data.segmentation"):
        transform(Image.new("RGB", (2, 2)), value, where="'train' split row 0 (mask 'scan.jpg')")
        transform(Image.new("RGB", (2, 2)), value, where="'train' split row 1 (mask 'scan.jpg')")
    warnings = [r.getMessage() for r in caplog.records if "JPEG" in r.getMessage()]
    assert len(warnings) == 1 and "row 0" in warnings[0] and "lossy" in warnings[0] and "PNG" in warnings[0]
    with pytest.raises(SegmentationDataError, match=r"are not classes 0..1.*The mask is a JPEG.*save masks as PNG"):
        mask_to_array(load_segmentation_mask(value), 2, False)


# ---------------------------------------------------------------------------------------------- 🤗 column forms
def test_every_column_form_gives_the_same_sample():
    image = np.random.default_rng(0).integers(0, 256, (6, 8, 3)).astype(np.uint8)
    mask = np.random.default_rng(1).integers(0, 4, (6, 8)).astype(np.uint8)
    image_features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    array_features = datasets.Features(
        {"image": datasets.Array3D((6, 8, 3), "uint8"), "annotation": datasets.Array2D((6, 8), "uint8")}
    )
    forms = {
        "datasets.Image": datasets.Dataset.from_dict(
            {"image": [Image.fromarray(image)], "annotation": [Image.fromarray(mask)]}, features=image_features
        ),
        "bytes/path dicts": datasets.Dataset.from_dict(
            {"image": [encoded(Image.fromarray(image))], "annotation": [encoded(Image.fromarray(mask))]}
        ),
        "Array2D/Array3D": datasets.Dataset.from_dict(
            {"image": [image], "annotation": [mask]}, features=array_features
        ),
        "nested Sequence": datasets.Dataset.from_dict({"image": [image.tolist()], "annotation": [mask.tolist()]}),
        "NumPy / channels-first tensor": [{"image": torch.from_numpy(image).permute(2, 0, 1), "annotation": mask}],
        "float image in [0, 1]": [{"image": image / 255.0, "annotation": mask[None]}],
    }
    reference = eval_transform()(Image.fromarray(image), Image.fromarray(mask))
    for name, dataset in forms.items():
        out = TransformedSegmentationDataset(dataset, eval_transform(), "train")[0]
        assert torch.equal(out["labels"], reference["labels"]), name
        torch.testing.assert_close(out["pixel_values"], reference["pixel_values"], msg=name)


def test_path_columns_and_16_bit_image_arrays(tmp_path):
    Image.new("RGB", (4, 4), (10, 20, 30)).save(tmp_path / "a.png")
    Image.fromarray(np.ones((4, 4), np.uint8)).save(tmp_path / "m.png")
    rows = datasets.Dataset.from_dict({"image": [str(tmp_path / "a.png")], "annotation": [str(tmp_path / "m.png")]})
    out = TransformedSegmentationDataset(rows, eval_transform(), "validation")[0]
    assert out["labels"].tolist() == [[1] * 4] * 4
    deep = np.full((4, 4, 3), 257 * 200, np.uint16)  # a 16-bit photo as an array: rescaled to 8 bits
    out = eval_transform()(deep, np.ones((4, 4), np.uint8))
    assert torch.allclose(out["pixel_values"], torch.tensor((200 / 255 - 0.5) / 0.5))  # not clipped at 255


def test_bad_column_values_are_refused_naming_the_column_and_row(tmp_path):
    image = np.zeros((2, 2, 3), np.uint8)
    cases = {
        "annotation": (None, r"'validation' split row 0: the 'annotation' column holds None"),
        "image": (None, r"'validation' split row 0: the 'image' column holds None"),
    }
    for column, (value, pattern) in cases.items():
        row = {"image": image, "annotation": np.zeros((2, 2), np.uint8), column: value}
        with pytest.raises(SegmentationDataError, match=pattern):
            TransformedSegmentationDataset([row], eval_transform(), "validation")[0]
    with pytest.raises(SegmentationDataError, match="row 0: the mask is a list that is not a rectangular array"):
        TransformedSegmentationDataset(
            [{"image": image, "annotation": [[1, 2], [3]]}], eval_transform(), "validation"
        )[0]
    broken = datasets.Dataset.from_dict(
        {"image": [{"bytes": b"not an image", "path": "broken.png"}], "annotation": [encoded(Image.new("L", (2, 2)))]}
    )
    with pytest.raises(CorruptImageError, match=r"'train' split row 0 \(image 'broken.png'.*cannot read the image"):
        TransformedSegmentationDataset(broken, eval_transform(), "train")[0]
    labels = datasets.Dataset.from_dict(
        {"image": [encoded(Image.new("RGB", (2, 2)))], "annotation": [1]},
        features=datasets.Features({"image": datasets.Image(), "annotation": datasets.ClassLabel(names=["a", "b"])}),
    )
    with pytest.raises(
        SegmentationDataError, match="'annotation' column holds one ClassLabel.*classification dataset"
    ):
        TransformedSegmentationDataset(labels, eval_transform(), "train")
    with pytest.raises(SegmentationDataError, match=r"has no column\(s\) \['annotation'\].*--annotation_column"):
        TransformedSegmentationDataset(labels.remove_columns("annotation"), eval_transform(), "train")


# ---------------------------------------------------------------------------------------------- folders
def make_folder(root, images, masks):
    for folder, names, mode in (("images", images, "RGB"), ("masks", masks, "L")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            Image.new(mode, (4, 4)).save(root / folder / name)


def test_folder_masks_without_images_are_warned_about_by_name(tmp_path, caplog):
    make_folder(tmp_path, ["a.jpg"], ["a.png", "stray.png", "._a.png"])
    with caplog.at_level(logging.WARNING, logger="pacavit.data.segmentation"):
        data = load_segmentation_dataset(train_dir=str(tmp_path))
    assert len(data["train"]) == 1
    (message,) = [r.getMessage() for r in caplog.records if "no image" in r.getMessage()]
    assert "1 mask(s)" in message and "stray.png" in message and "._a.png" not in message  # hidden files skipped


def test_folder_ambiguous_names_and_missing_mask_folder_are_refused(tmp_path):
    make_folder(tmp_path / "two", ["a.jpg", "a.png"], ["a.png"])
    with pytest.raises(
        SegmentationDataError, match=r"--train_dir.*1 image name\(s\) with several extensions: a.jpg and a.png"
    ):
        load_segmentation_dataset(train_dir=str(tmp_path / "two"))
    make_folder(tmp_path / "masks_twice", ["a.jpg"], ["a.png", "a.bmp"])
    with pytest.raises(SegmentationDataError, match=r"mask name\(s\) with several extensions: a.bmp and a.png"):
        load_segmentation_dataset(train_dir=str(tmp_path / "masks_twice"))
    make_folder(tmp_path / "train", ["a.jpg"], ["a.png"])
    make_folder(tmp_path / "val", ["b.jpg"], [])
    (tmp_path / "val" / "masks").rmdir()
    with pytest.raises(
        SegmentationDataError, match=r"'validation' split: '.*val/masks' is not a folder.*--validation_dir"
    ):
        load_segmentation_dataset(train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val"))


# ---------------------------------------------------------------------------------------------- --id2label
@pytest.mark.parametrize(
    "text, pattern",
    [
        ("{'0': 'a'}", r"is not valid JSON \(Expecting property name.*line 1, column 2\)"),
        ('["a", "b"]', r"holds a JSON list.*\{\"0\": first name"),
        ('"a"', "holds a JSON string"),
        ('{"0": "a", "one": "b"}', r"the key 'one' is not a class index"),
        ('{"a": 0, "b": 1}', r"maps names to indices \(label2id\).*swap keys and values"),
        ('{"0": "a", "0": "b"}', r"\['0'\] appear more than once"),
        ('{"0": "a", "00": "b"}', r"class 0 is given twice \(keys '0' and '00'\)"),
        ('{"0": "a", "2": "b"}', r"must be 0..1 for 2 classes.*1 missing, 2 beyond"),
        ('{"1": "a", "2": "b"}', r"numbered from 1.*--do_reduce_labels"),
        ('{"0": "a"}', "lists 1 class"),
        ('{"0": "a", "1": 5}', "class 1 has the name 5"),
        ('{"0": "cat", "1": "cat"}', r"\['cat'\] are given to several classes"),
        ('{"id2label": {"0": "a"}}', "looks like a model config"),
        (json.dumps({str(i): f"c{i}" for i in range(256)}), "256 classes; at most 255"),
    ],
)
def test_id2label_file_errors_name_the_file_and_the_fix(tmp_path, text, pattern):
    path = tmp_path / "classes.json"
    path.write_text(text)
    with pytest.raises(Id2LabelError, match=pattern) as error:
        load_id2label(path)
    assert f"--id2label '{path}'" in str(error.value)


def test_id2label_file_is_read_sorted_and_checked_by_parse_args(tmp_path):
    path = tmp_path / "classes.json"
    path.write_text('{"1": "cat", "0": "background"}')
    assert list(load_id2label(path).items()) == [(0, "background"), (1, "cat")]
    data = ["--train_dir", str(tmp_path)]
    with pytest.raises(Id2LabelError, match="cannot read the file .*No such file"):
        parse_args([*data, "--id2label", str(tmp_path / "missing.json")])
    assert parse_args([*data, "--id2label", str(path)]).id2label == str(path)
    with pytest.raises(Id2LabelError, match=r"--dataset_name/--train_dir need --id2label: a JSON file"):
        parse_args(data)  # before any data is loaded or downloaded
    with pytest.raises(
        Id2LabelError, match=r"without --dataset_name or --train_dir: the built-in data has its own 11"
    ):
        parse_args(["--id2label", str(path)])  # it would be ignored


# ---------------------------------------------------------------------------------------------- --do_reduce_labels
def test_reduce_labels_on_masks_without_a_zero_and_values_beyond_the_classes():
    # masks numbered from 1 without "other" (no 0): reducing is right, every pixel keeps a class
    assert mask_to_array(np.array([[1, 2], [3, 255]]), 3, True).tolist() == [[0, 1], [2, 255]]
    with pytest.raises(SegmentationDataError, match=r"values \[4\] are not classes: with reduce_labels.*1..3"):
        mask_to_array(np.array([[1, 4]]), 3, True)

"""pacavit.data.common: reading users' image files for every task -- truncated and corrupt files named with what to
do, 16-bit and float images rescaled to 8 bits instead of clipped, the scan that finds unreadable images before
a run starts."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pacavit.data.common import CorruptImageError, decode_image, find_corrupt_images, to_rgb


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------- bit depths
def test_16_bit_images_are_rescaled_to_8_bits_not_clipped_to_white(tmp_path):
    ramp = (np.arange(64 * 8).reshape(8, 64) * 128).astype(np.uint16)  # 0 .. 65408
    path = tmp_path / "depth16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode == "I;16"
    rgb = np.asarray(decode_image(str(path)))
    assert rgb.shape == (8, 64, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], np.round(ramp / 257.0).astype(np.uint8))
    assert (rgb[..., 0] == rgb[..., 2]).all() and (rgb == 255).mean() < 0.01  # clipping made 98 % of it 255
    # mode I (Pillow's 32-bit integer mode, in which some 16-bit files open) is read as 16-bit data
    np.testing.assert_array_equal(np.asarray(to_rgb(Image.fromarray(ramp.astype(np.int32))))[..., 0], rgb[..., 0])
    with pytest.raises(CorruptImageError, match=r"mode 'I'\) image with values in \[0, 70000\].*16-bit range"):
        to_rgb(Image.fromarray(np.array([[0, 70000]], dtype=np.int32)), "x.tif")


def test_float_images_are_read_in_0_1_or_0_255_and_refused_otherwise():
    half = Image.fromarray(np.full((2, 2), 0.5, dtype=np.float32))
    assert np.asarray(to_rgb(half)).max() == 128
    levels = Image.fromarray(np.full((2, 2), 200.0, dtype=np.float32))
    assert np.asarray(to_rgb(levels)).max() == 200
    with pytest.raises(CorruptImageError, match=r"Cannot read scan\.tif: a floating-point.*\[-1, 3\]"):
        to_rgb(Image.fromarray(np.array([[-1.0, 3.0]], dtype=np.float32)), "scan.tif")


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "1"])
def test_8_bit_modes_convert_as_pillow_does(mode):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)).convert(mode)
    assert np.array_equal(np.asarray(to_rgb(image)), np.asarray(image.convert("RGB")))


# ---------------------------------------------------------------- unreadable files
@pytest.mark.parametrize("kind", ["truncated PNG", "truncated JPEG", "not an image", "empty"])
def test_unreadable_files_are_named_with_what_to_do(kind, tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    if kind == "truncated JPEG":
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG")
        data = buffer.getvalue()[:400]
    else:
        data = {"truncated PNG": _png_bytes(pixels)[:300], "not an image": b"<html>", "empty": b""}[kind]
    path = tmp_path / "broken.img"
    path.write_bytes(data)
    fix = r"Fix or remove the image; or pass --skip_corrupt_images .* \(--verify_images checks all"
    with pytest.raises(
        CorruptImageError, match=rf"Cannot read file '.*broken\.img', index 3 of the 'train' split: .*{fix}"
    ):
        decode_image(str(path), 3, "train")
    with pytest.raises(CorruptImageError, match=r"Cannot read index 5: .*"):
        decode_image({"bytes": data, "path": None}, 5)


def test_find_corrupt_images_lists_each_unreadable_image_of_a_dataset(tmp_path):
    import datasets

    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(good.read_bytes()[:40])
    dataset = datasets.Dataset.from_dict({"image": [str(good), str(bad), str(good)]}).cast_column(
        "image", datasets.Image()
    )
    found = find_corrupt_images(dataset, "image", "validation")
    assert [index for index, _ in found] == [1] and "bad.png" in found[0][1]

"""Image processor of the PaCa-ViT Mask R-CNN: mmdet's test-time preprocessing and the pipelines' post-processing.

Preprocessing follows mmdet 3 (`Resize(scale=(1333, 800), keep_ratio=True)` + `DetDataPreprocessor`): the scale
factor is `min(1333 / long side, 800 / short side)`, the new size `int(x * s + 0.5)` (mmcv's rounding), bilinear
resampling without antialiasing (like cv2's `INTER_LINEAR`) to uint8, normalisation with the ImageNet mean/std
(mmdet's 123.675/58.395 ... in 0-255 units), then zero padding at the bottom/right to a multiple of 32. The batch
carries `image_sizes` (each image inside the padding) and `original_sizes`, so the model returns boxes and masks at
the original size, as mmdet does with `rescale=True`.

`post_process_object_detection` and `post_process_instance_segmentation` give the formats that transformers'
`pipeline("object-detection")` and `pipeline("image-segmentation", subtask="instance")` expect.

Only torch, numpy and PIL are needed (no torchvision), and it imports nothing from the package but transformers, so
the file works as Hub remote code on its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


def mmdet_rescale_size(height: int, width: int, shortest_edge: int, longest_edge: int) -> tuple[int, int]:
    """Size (height, width) of mmcv's `rescale_size(keep_ratio=True)`: the largest scale that fits both limits,
    sizes rounded half up (`int(x * s + 0.5)`)."""
    scale = min(longest_edge / max(height, width), shortest_edge / min(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


def to_uint8_chw(image) -> torch.Tensor:
    """PIL image, HWC/CHW numpy array or tensor -> (3, H, W) uint8 tensor (RGB)."""
    if hasattr(image, "convert"):  # PIL
        image = np.asarray(image.convert("RGB"))
    tensor = torch.from_numpy(np.array(image)) if not torch.is_tensor(image) else image
    if tensor.ndim == 2:
        tensor = tensor[None].expand(3, -1, -1)
    if tensor.ndim != 3:
        raise ValueError(f"Expected an image of shape (H, W, 3) or (3, H, W), got {tuple(tensor.shape)}.")
    if tensor.shape[0] not in (1, 3) and tensor.shape[-1] in (1, 3, 4):
        tensor = tensor[..., :3].permute(2, 0, 1)
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    if tensor.is_floating_point():  # floats in [0, 1]
        tensor = (tensor * 255).round().clamp(0, 255)
    return tensor.to(torch.uint8)


def resize_bilinear_uint8(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    resized = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=False)
    return resized[0].round().clamp(0, 255).to(torch.uint8)


class PaCaViTMaskRCNNImageProcessor(BaseImageProcessor):
    r"""Image processor of `PaCaViTForInstanceSegmentation`.

    Args:
        do_resize (`bool`, defaults to `True`): resize keeping the aspect ratio to `size`.
        size (`dict`, defaults to `{"shortest_edge": 800, "longest_edge": 1333}`): mmdet's `scale=(1333, 800)`.
        do_normalize (`bool`, defaults to `True`), image_mean / image_std (`list[float]`): ImageNet statistics in
            [0, 1] units (mmdet's 123.675/58.395 ... divided by 255).
        size_divisor (`int`, defaults to 32): pad the batch to a multiple of it (mmdet `pad_size_divisor`).
    """

    model_input_names = ["pixel_values", "image_sizes", "original_sizes"]

    def __init__(
        self,
        do_resize: bool = True,
        size: dict | None = None,
        do_normalize: bool = True,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        size_divisor: int = 32,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.do_resize = do_resize
        self.size = dict(size) if size else {"shortest_edge": 800, "longest_edge": 1333}
        self.do_normalize = do_normalize
        self.image_mean = list(image_mean if image_mean is not None else IMAGENET_DEFAULT_MEAN)
        self.image_std = list(image_std if image_std is not None else IMAGENET_DEFAULT_STD)
        self.size_divisor = size_divisor

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save `preprocessor_config.json` (and, for remote code, this file) WITHOUT `image_processor_type` and
        `auto_map`: the folder's `config.json` names this class under `auto_map["AutoImageProcessor"]` instead.

        Why: with an `auto_map` in `preprocessor_config.json`, transformers' pipelines (5.24) also look for a video
        processor derived from it and ask on the terminal whether to run the folder's code (a 15 s prompt), even
        when the installed package provides the class. Without it, `AutoImageProcessor` finds the class through the
        model config: the registered one when `pacavit` is imported, the folder's copy with `trust_remote_code`."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        path = Path(save_directory) / "preprocessor_config.json"
        values = json.loads(path.read_text())
        values.pop("image_processor_type", None)
        values.pop("auto_map", None)
        path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
        return result

    def __call__(self, images, annotations=None, **kwargs) -> BatchFeature:
        return self.preprocess(images, annotations=annotations, **kwargs)

    def resized_size(self, height: int, width: int, size: dict | None = None) -> tuple[int, int]:
        size = size or self.size
        return mmdet_rescale_size(height, width, size["shortest_edge"], size["longest_edge"])

    def preprocess(
        self,
        images,
        annotations=None,
        do_resize: bool | None = None,
        size: dict | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Resize, normalise and pad `images` (one or a list). `annotations` (optional, one dict per image, for
        training): `boxes` (N, 4) x1, y1, x2, y2 in original pixels, `class_labels` (N,), `masks` (N, H, W); they are
        resized with the image (masks nearest-neighbour, as mmdet) and returned as `labels`."""
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors={return_tensors!r}: only 'pt' (PyTorch) is supported.")
        do_resize = self.do_resize if do_resize is None else do_resize
        size = size or self.size
        if not isinstance(images, (list, tuple)):
            images = [images]
            annotations = [annotations] if annotations is not None else None
        if annotations is not None and len(annotations) != len(images):
            raise ValueError(f"Got {len(annotations)} annotations for {len(images)} images; give one dict per image.")
        tensors, image_sizes, original_sizes, labels = [], [], [], []
        mean = torch.tensor(self.image_mean).view(3, 1, 1) * 255
        std = torch.tensor(self.image_std).view(3, 1, 1) * 255
        for index, image in enumerate(images):
            image = to_uint8_chw(image)
            height, width = image.shape[-2:]
            new_size = self.resized_size(height, width, size) if do_resize else (height, width)
            image = resize_bilinear_uint8(image, new_size).float()
            if self.do_normalize:
                image = (image - mean) / std
            tensors.append(image)
            image_sizes.append(new_size)
            original_sizes.append((height, width))
            if annotations is not None:
                labels.append(self._resize_annotation(annotations[index], (height, width), new_size))
        divisor = self.size_divisor or 1
        max_h = -(-max(s[0] for s in image_sizes) // divisor) * divisor
        max_w = -(-max(s[1] for s in image_sizes) // divisor) * divisor
        pixel_values = torch.zeros(len(tensors), 3, max_h, max_w)
        for i, image in enumerate(tensors):
            pixel_values[i, :, : image.shape[1], : image.shape[2]] = image
        data = {
            "pixel_values": pixel_values,
            "image_sizes": torch.tensor(image_sizes, dtype=torch.int64),
            "original_sizes": torch.tensor(original_sizes, dtype=torch.int64),
        }
        if annotations is not None:
            data["labels"] = labels
        return BatchFeature(data=data)

    @staticmethod
    def _resize_annotation(annotation: dict, old: tuple[int, int], new: tuple[int, int]) -> dict:
        scale_y, scale_x = new[0] / old[0], new[1] / old[1]
        boxes = torch.as_tensor(annotation["boxes"], dtype=torch.float32).reshape(-1, 4)
        boxes = boxes * torch.tensor([scale_x, scale_y, scale_x, scale_y])
        masks = torch.as_tensor(np.asarray(annotation["masks"])).to(torch.uint8)
        if masks.ndim == 2:
            masks = masks[None]
        if len(masks) and tuple(masks.shape[-2:]) != tuple(new):
            masks = F.interpolate(masks[:, None].float(), size=new, mode="nearest")[:, 0].to(torch.uint8)
        elif not len(masks):
            masks = torch.zeros((0,) + tuple(new), dtype=torch.uint8)
        classes = annotation.get("class_labels", annotation.get("labels"))
        return {
            "boxes": boxes,
            "class_labels": torch.as_tensor(classes, dtype=torch.int64).reshape(-1),
            "masks": masks,
        }

    # ----------------------------------------------------------------------------------------
    # Post-processing
    # ----------------------------------------------------------------------------------------
    @staticmethod
    def _target_sizes(outputs, target_sizes) -> list[tuple[int, int]]:
        frames = [tuple(int(v) for v in s) for s in outputs["image_sizes"].tolist()]
        if target_sizes is None:
            return frames
        sizes = target_sizes.tolist() if torch.is_tensor(target_sizes) else list(target_sizes)
        if len(sizes) != len(frames):
            raise ValueError(f"target_sizes has {len(sizes)} entries for {len(frames)} images.")
        return [tuple(int(v) for v in s) for s in sizes]

    @staticmethod
    def _rescaled(detection: dict, frame: tuple[int, int], target: tuple[int, int], with_masks: bool) -> dict:
        """Detections of the model (in `frame`) moved to `target`; a no-op when the model already worked at the
        target size (the processor passes `original_sizes`, so the pipelines always hit that case)."""
        if frame == target:
            return detection
        sy, sx = target[0] / frame[0], target[1] / frame[1]
        out = dict(detection, boxes=detection["boxes"] * detection["boxes"].new_tensor([sx, sy, sx, sy]))
        if with_masks and len(detection["masks"]):
            out["masks"] = F.interpolate(
                detection["masks"][:, None], size=target, mode="bilinear", align_corners=False
            )[:, 0]
        return out

    def post_process_object_detection(self, outputs, threshold: float = 0.5, target_sizes=None) -> list[dict]:
        """Per image: `scores`, `labels` (0-based ids of `id2label`) and `boxes` (x1, y1, x2, y2 in pixels of
        `target_sizes`, default the size the model returned them at), for the detections scoring above
        `threshold`."""
        results = []
        for detection, frame, target in zip(
            outputs["detections"], outputs["image_sizes"].tolist(), self._target_sizes(outputs, target_sizes)
        ):
            detection = self._rescaled(detection, tuple(frame), target, with_masks=False)
            keep = detection["scores"] > threshold
            results.append({k: detection[k][keep] for k in ("scores", "labels", "boxes")})
        return results

    def post_process_instance_segmentation(
        self,
        outputs,
        threshold: float = 0.5,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float = 0.8,
        target_sizes=None,
        return_binary_maps: bool = False,
        **kwargs,
    ) -> list[dict]:
        """Per image: `segmentation` and `segments_info` (`id`, `label_id`, `score`, `box`) for the detections
        scoring above `threshold`, with masks binarised at `mask_threshold` (mmdet: 0.5).

        With `return_binary_maps=True`, `segmentation` is the (N, H, W) stack of binary masks (instances may
        overlap, as mmdet returns them). Otherwise it is one (H, W) map of segment ids (-1 where no instance), as the
        image-segmentation pipeline expects: higher-scoring instances are painted over lower ones, and an instance
        keeping less than `overlap_mask_area_threshold` of its mask area visible is left out.
        """
        results = []
        for detection, frame, target in zip(
            outputs["detections"], outputs["image_sizes"].tolist(), self._target_sizes(outputs, target_sizes)
        ):
            detection = self._rescaled(detection, tuple(frame), target, with_masks=True)
            keep = torch.where(detection["scores"] > threshold)[0]
            masks = detection["masks"][keep] >= mask_threshold
            scores, labels, boxes = (detection["scores"][keep], detection["labels"][keep], detection["boxes"][keep])
            info = [
                {"id": i, "label_id": int(labels[i]), "score": round(float(scores[i]), 6), "box": boxes[i].tolist()}
                for i in range(len(keep))
            ]
            if return_binary_maps:
                results.append({"segmentation": masks, "segments_info": info})
                continue
            segmentation = torch.full(target, -1, dtype=torch.int64)
            for i in reversed(range(len(keep))):  # scores are sorted descending: the best instance is painted last
                segmentation[masks[i]] = i
            visible = []
            for i, segment in enumerate(info):
                area = int(masks[i].sum())
                shown = int((segmentation == i).sum())
                if area > 0 and shown / area >= overlap_mask_area_threshold:
                    visible.append(segment)
                else:
                    segmentation[segmentation == i] = -1
            results.append({"segmentation": segmentation, "segments_info": visible})
        return results


__all__ = ["PaCaViTMaskRCNNImageProcessor", "mmdet_rescale_size", "resize_bilinear_uint8", "to_uint8_chw"]

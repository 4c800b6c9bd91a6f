"""The image processor of each task: the one definition that the converter saves, the training scripts train,
evaluate and save with, and `python -m pacavit.hub export` adds to a folder that has none.

- `classification_image_processor(...)`: timm's evaluation transform as transformers' `ConvNextImageProcessor`
  (resize the shortest edge to `image_size / crop_pct`, center-crop `image_size`, rescale, normalise), so a saved
  folder reproduces the training script's evaluation exactly. The original ImageNet evaluation is the default:
  224 px, crop_pct 0.9, bicubic, ImageNet mean/std.
- `segmentation_image_processor(...)`: transformers' `SegformerImageProcessor` with the mmseg ADE20K test
  pipeline's values (resize to the training crop, 512 in the paper; ImageNet mean/std).
- `instance_segmentation_image_processor(...)`: our `PaCaViTMaskRCNNImageProcessor` (mmdet's test-time resize to
  shorter side 800 / longer side <= 1333, normalisation, padding to a multiple of 32).
- `default_image_processor(config)`: the one of the task a config belongs to, with the paper's settings.

Every processor converts grayscale, palette, RGBA and CMYK images to RGB (`do_convert_rgb=True`). transformers'
ConvNeXt and SegFormer processors are its torchvision backends, so they are imported where they are built: the
package itself does not need torchvision.
"""

from __future__ import annotations

from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

from .configuration_pacavit import PaCaViTConfig
from .configuration_pacavit_maskrcnn import PaCaViTMaskRCNNConfig
from .configuration_pacavit_segmentation import PaCaViTSegmentationConfig
from .image_processing_pacavit_maskrcnn import PaCaViTMaskRCNNImageProcessor

INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
# The original ImageNet evaluation (the released timm configs: crop_pct 0.9, bicubic) and ADE20K crop.
IMAGENET_CROP_PCT = 0.9
ADE20K_CROP_SIZE = 512


def classification_image_processor(
    image_size: int = 224,
    crop_pct: float = IMAGENET_CROP_PCT,
    interpolation: str = "bicubic",
    image_mean=IMAGENET_DEFAULT_MEAN,
    image_std=IMAGENET_DEFAULT_STD,
):
    """timm's evaluation transform as a `ConvNextImageProcessor` (saved as preprocessor_config.json)."""
    from transformers import ConvNextImageProcessor

    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    return ConvNextImageProcessor(
        do_resize=True,
        size={"shortest_edge": image_size},
        crop_pct=crop_pct,
        resample=getattr(PILImageResampling, interpolation.upper()),
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(image_mean),
        image_std=list(image_std),
        do_convert_rgb=True,
    )


def segmentation_image_processor(crop_size: int = ADE20K_CROP_SIZE, do_reduce_labels: bool = False):
    """The mmseg test pipeline as a `SegformerImageProcessor`: resize to the training crop, ImageNet mean/std; so
    users of a saved folder need nothing from this package to preprocess."""
    from transformers import SegformerImageProcessor

    return SegformerImageProcessor(
        do_resize=True,
        size={"height": crop_size, "width": crop_size},
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
        do_reduce_labels=do_reduce_labels,
        do_convert_rgb=True,
    )


def instance_segmentation_image_processor(
    shortest_edge: int = 800, longest_edge: int = 1333
) -> PaCaViTMaskRCNNImageProcessor:
    """mmdet's test-time preprocessing (`Resize(scale=(longest_edge, shortest_edge), keep_ratio=True)`)."""
    return PaCaViTMaskRCNNImageProcessor(size={"shortest_edge": shortest_edge, "longest_edge": longest_edge})


def default_image_processor(config: PaCaViTConfig):
    """The image processor a model of `config`'s task was evaluated with in the paper: Mask R-CNN (COCO),
    semantic segmentation (ADE20K, crop 512) or, for every other PaCa-ViT (classifier, base model, backbone),
    the ImageNet evaluation at `config.image_size`."""
    if isinstance(config, PaCaViTMaskRCNNConfig):
        return instance_segmentation_image_processor()
    if isinstance(config, PaCaViTSegmentationConfig):
        return segmentation_image_processor()
    if isinstance(config, PaCaViTConfig):
        return classification_image_processor(config.image_size or 224)
    raise TypeError(f"Expected a PaCa-ViT config, got {type(config).__name__}.")


__all__ = [
    "INTERPOLATIONS",
    "classification_image_processor",
    "default_image_processor",
    "instance_segmentation_image_processor",
    "segmentation_image_processor",
]

"""PaCa-ViT Mask R-CNN on torchvision's detection engine, matching mmdetection 3 at inference.

The network is `torchvision.models.detection.MaskRCNN` (its RPN, RoI heads, box coder, samplers and losses) with a
PaCa-ViT backbone (strides 4-32) -> `FeaturePyramidNetwork` 256 + max-pool P6. Four small injected parts make its
inference match the original mmdet models (see `../shared/notes/anchors.md` section 2 for the full comparison):

* `PaCaViTMaskRCNNAnchorGenerator`: anchors are not rounded and use the fixed strides 4-64 (torchvision rounds the
  base anchors and derives the strides from the padded image size, which differs from 64 at P6 for most sizes);
* `PaCaViTMaskRCNNRoIPooler`: RoIAlign with `aligned=True` and adaptive sampling (`sampling_ratio=0`), and mmdet's
  level mapping `floor(log2(sqrt(wh) / 56))` (torchvision's pooler hard-codes `aligned=False`);
* `PaCaViTMaskRCNNRoIHeads.postprocess_detections`: no `remove_small_boxes(1e-2)` after the score threshold;
* `paste_masks`: mmdet's mask pasting (`grid_sample` at pixel centres, one box at a time inside its box + 1 px).

Training keeps torchvision's internals (smooth-L1 box losses, its assigners' low-quality matching, soft mask targets
RoIAligned with `aligned=False`, its samplers' random streams), which differ from mmdet's. The image resizing to
shorter side 800 / longer <= 1333 with mmcv's rounding and the normalisation are done by the image processor, so the
model takes normalised, padded `pixel_values` plus the size of each image inside the padding (`image_sizes`).

torchvision is imported inside a `try` block (a soft dependency: `pip install 'pacavit[detection]'`), so that
transformers' remote-code import check does not require it before the model is built.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from .configuration_pacavit_maskrcnn import PaCaViTMaskRCNNConfig
from .image_processing_pacavit_maskrcnn import AnnotationError, check_annotation
from .modeling_pacavit import PaCaViTBackbone, PaCaViTModel, PaCaViTPreTrainedModel, check_pixel_values

try:
    from transformers import initialization as init
except ImportError:  # pragma: no cover - transformers 4.x
    init = nn.init

try:
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.image_list import ImageList
    from torchvision.models.detection.mask_rcnn import MaskRCNN, MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.models.detection.roi_heads import RoIHeads
    from torchvision.ops import FeaturePyramidNetwork, roi_align
    from torchvision.ops import boxes as box_ops
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    _TORCHVISION_AVAILABLE = True
except ImportError:  # pragma: no cover - exercised by the soft-dependency test
    _TORCHVISION_AVAILABLE = False

TORCHVISION_MISSING = (
    "PaCaViTForInstanceSegmentation runs on torchvision's detection engine, which is not installed: "
    "pip install 'pacavit[detection]' (torchvision and pycocotools)."
)


# The transformers Auto classes (and so the pipelines) this model is registered with.
AUTO_CLASSES = ("AutoModelForObjectDetection", "AutoModelForInstanceSegmentation", "AutoModelForImageSegmentation")


def require_torchvision() -> None:
    if not _TORCHVISION_AVAILABLE:
        raise ImportError(TORCHVISION_MISSING)


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------
@dataclass
class PaCaViTInstanceSegmentationOutput(ModelOutput):
    """Output of `PaCaViTForInstanceSegmentation`.

    Args:
        loss (`torch.Tensor`, *optional*): sum of `loss_dict`, in training mode.
        loss_dict (`dict[str, torch.Tensor]`, *optional*): torchvision's losses `loss_objectness`,
            `loss_rpn_box_reg`, `loss_classifier`, `loss_box_reg` and `loss_mask`, in training mode.
        detections (`list[dict[str, torch.Tensor]]`, *optional*): per image, in eval mode: `boxes` (N, 4) x1, y1, x2,
            y2 in pixels of `image_sizes` (the original image when `original_sizes` was given), `scores` (N,),
            `labels` (N,) 0-based class ids (keys of `config.id2label`), `masks` (N, H, W) pasted mask
            probabilities (binarise with `>= config.mask_threshold`). Sorted by score, at most
            `config.box_detections_per_image`.
        image_sizes (`torch.Tensor`, *optional*): (B, 2) height and width of the frame `detections` refer to.
    """

    loss: torch.Tensor | None = None
    loss_dict: dict | None = None
    detections: list | None = None
    image_sizes: torch.Tensor | None = None


# --------------------------------------------------------------------------------------------
# mmdet-matching parts
# --------------------------------------------------------------------------------------------
def paste_masks(mask_probs: torch.Tensor, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Paste (N, M, M) mask probabilities into (N, height, width) images at `boxes` the way mmdet does.

    Each output pixel samples the mask bilinearly (`grid_sample`, `align_corners=False`) at its centre (+0.5),
    mapped into the box; only the box grown by one pixel (floor/ceil) is written, the rest stays 0. That is mmdet's
    `_do_paste_mask` with `skip_empty=True` (its CPU path). torchvision instead pads the mask by one pixel, rounds
    the box to integers and resizes the mask, which moves mask borders by up to a pixel.
    """
    pasted = mask_probs.new_zeros((mask_probs.shape[0], height, width))
    for i, (mask, box) in enumerate(zip(mask_probs, boxes)):
        x0, y0, x1, y1 = box.tolist()
        left, top = max(math.floor(x0) - 1, 0), max(math.floor(y0) - 1, 0)
        right, bottom = min(math.ceil(x1) + 1, width), min(math.ceil(y1) + 1, height)
        if right <= left or bottom <= top:
            continue
        xs = (torch.arange(left, right, device=mask.device, dtype=mask.dtype) + 0.5 - x0) / (x1 - x0) * 2 - 1
        ys = (torch.arange(top, bottom, device=mask.device, dtype=mask.dtype) + 0.5 - y0) / (y1 - y0) * 2 - 1
        # a zero-width box gives inf/nan coordinates; mmdet maps them to the mask centre line
        xs, ys = (
            torch.nan_to_num(xs, nan=0.0, posinf=0.0, neginf=0.0),
            torch.nan_to_num(ys, nan=0.0, posinf=0.0, neginf=0.0),
        )
        grid = torch.stack(torch.broadcast_tensors(xs[None, :], ys[:, None]), dim=-1)
        pasted[i, top:bottom, left:right] = F.grid_sample(mask[None, None], grid[None], align_corners=False)[0, 0]
    return pasted


if _TORCHVISION_AVAILABLE:

    class PaCaViTMaskRCNNAnchorGenerator(AnchorGenerator):
        """torchvision's anchors with mmdet's two differences: no rounding of the base anchors, fixed strides."""

        def __init__(self, sizes, aspect_ratios, strides) -> None:
            super().__init__(tuple((s,) for s in sizes), tuple(tuple(aspect_ratios) for _ in sizes))
            self.strides = list(strides)

        def generate_anchors(self, scales, aspect_ratios, dtype=torch.float32, device=None):
            scales = torch.as_tensor(scales, dtype=dtype, device=device)
            aspect_ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
            h_ratios = torch.sqrt(aspect_ratios)
            w_ratios = 1 / h_ratios
            ws = (w_ratios[:, None] * scales[None, :]).view(-1)
            hs = (h_ratios[:, None] * scales[None, :]).view(-1)
            return torch.stack([-ws, -hs, ws, hs], dim=1) / 2  # mmdet keeps the fractional corners

        def set_cell_anchors(self, dtype, device):
            # recomputed on every call (a few dozen numbers): from_pretrained builds the model on the meta device,
            # where the base anchors torchvision caches at construction would have no data
            self.cell_anchors = [
                self.generate_anchors(size, ratios, dtype, device)
                for size, ratios in zip(self.sizes, self.aspect_ratios)
            ]

        def forward(self, image_list, feature_maps):
            grid_sizes = [feature_map.shape[-2:] for feature_map in feature_maps]
            dtype, device = feature_maps[0].dtype, feature_maps[0].device
            strides = [[torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides]
            self.set_cell_anchors(dtype, device)
            anchors = torch.cat(self.grid_anchors(grid_sizes, strides))
            return [anchors for _ in image_list.image_sizes]

    class PaCaViTMaskRCNNRoIPooler(nn.Module):
        """mmdet's `SingleRoIExtractor`: each RoI is pooled from one FPN level picked by its size, with RoIAlign
        `aligned=True` (half-pixel offset) and the configured sampling ratio (0 = adaptive)."""

        def __init__(
            self, featmap_names, strides, output_size: int, sampling_ratio: int, aligned: bool, finest_scale: int
        ):
            super().__init__()
            self.featmap_names = list(featmap_names)
            self.strides = list(strides)
            self.output_size = (output_size, output_size)
            self.sampling_ratio = sampling_ratio
            self.aligned = aligned
            self.finest_scale = finest_scale

        def map_levels(self, boxes: torch.Tensor) -> torch.Tensor:
            scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
            levels = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
            return levels.clamp(min=0, max=len(self.featmap_names) - 1).long()

        def forward(self, features: dict, boxes: list, image_shapes=None) -> torch.Tensor:
            rois = torch.cat([torch.cat([b.new_full((len(b), 1), i), b], dim=1) for i, b in enumerate(boxes)])
            maps = [features[name] for name in self.featmap_names]
            levels = self.map_levels(rois[:, 1:])
            pooled = maps[0].new_zeros((rois.shape[0], maps[0].shape[1]) + self.output_size)
            for level, (feature_map, stride) in enumerate(zip(maps, self.strides)):
                index = torch.where(levels == level)[0]
                if index.numel():
                    pooled[index] = roi_align(
                        feature_map, rois[index], self.output_size, 1.0 / stride, self.sampling_ratio, self.aligned
                    ).to(pooled.dtype)
            return pooled

    class PaCaViTMaskRCNNRoIHeads(RoIHeads):
        """torchvision's RoI heads; test-time box post-processing as mmdet's `multiclass_nms` (no small-box
        removal)."""

        def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
            boxes_per_image = [len(p) for p in proposals]
            all_boxes = self.box_coder.decode(box_regression, proposals).split(boxes_per_image)
            all_scores = F.softmax(class_logits, -1).split(boxes_per_image)
            results = ([], [], [])
            for boxes, scores, image_shape in zip(all_boxes, all_scores, image_shapes):
                boxes = box_ops.clip_boxes_to_image(boxes, image_shape)[:, 1:].reshape(-1, 4)  # drop background
                labels = torch.arange(1, scores.shape[1], device=scores.device).expand(scores.shape[0], -1).reshape(-1)
                scores = scores[:, 1:].reshape(-1)
                keep = torch.where(scores > self.score_thresh)[0]
                boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
                keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
                for out, value in zip(results, (boxes[keep], scores[keep], labels[keep])):
                    out.append(value)
            return results

    class PaCaViTMaskRCNNFeaturePyramid(nn.Module):
        """PaCa-ViT stage maps (strides 4-32, after each stage LayerNorm) -> FPN outputs "0".."3" + max-pool "pool"."""

        def __init__(self, config: PaCaViTMaskRCNNConfig) -> None:
            super().__init__()
            self.body = PaCaViTBackbone(config)
            self.fpn = FeaturePyramidNetwork(
                list(self.body.channels), config.fpn_hidden_size, extra_blocks=LastLevelMaxPool()
            )
            self.out_channels = config.fpn_hidden_size

        def forward(self, pixel_values: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
            maps = self.body(pixel_values, return_dict=True).feature_maps
            return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


def build_detector(config: PaCaViTMaskRCNNConfig) -> MaskRCNN:
    """torchvision's MaskRCNN with the PaCa-ViT backbone and the mmdet-matching parts, from the config."""
    require_torchvision()
    backbone = PaCaViTMaskRCNNFeaturePyramid(config)
    num_classes = config.num_labels + 1  # torchvision counts the background, at index 0
    channels, levels = config.fpn_hidden_size, [str(i) for i in range(len(config.out_features))]

    def pooler(size: int) -> PaCaViTMaskRCNNRoIPooler:
        return PaCaViTMaskRCNNRoIPooler(
            levels,
            config.anchor_strides[: len(levels)],
            size,
            config.roi_sampling_ratio,
            config.roi_aligned,
            config.roi_finest_scale,
        )

    detector = MaskRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=PaCaViTMaskRCNNAnchorGenerator(
            config.anchor_sizes, config.anchor_aspect_ratios, config.anchor_strides
        ),
        rpn_pre_nms_top_n_train=config.rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=config.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=config.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=config.rpn_post_nms_top_n_test,
        rpn_nms_thresh=config.rpn_nms_threshold,
        rpn_fg_iou_thresh=config.rpn_fg_iou_threshold,
        rpn_bg_iou_thresh=config.rpn_bg_iou_threshold,
        rpn_batch_size_per_image=config.rpn_batch_size_per_image,
        rpn_positive_fraction=config.rpn_positive_fraction,
        box_predictor=FastRCNNPredictor(config.box_head_hidden_size, num_classes),
        mask_predictor=MaskRCNNPredictor(config.mask_head_hidden_size, config.mask_head_hidden_size, num_classes),
    )
    roi_size = config.roi_output_size
    # RoIHeads is rebuilt as the subclass with the same torchvision arguments (MaskRCNN has no roi_heads argument)
    detector.roi_heads = PaCaViTMaskRCNNRoIHeads(
        box_roi_pool=pooler(roi_size),
        box_head=TwoMLPHead(channels * roi_size * roi_size, config.box_head_hidden_size),
        box_predictor=detector.roi_heads.box_predictor,
        fg_iou_thresh=config.box_fg_iou_threshold,
        bg_iou_thresh=config.box_bg_iou_threshold,
        batch_size_per_image=config.box_batch_size_per_image,
        positive_fraction=config.box_positive_fraction,
        bbox_reg_weights=tuple(config.bbox_reg_weights),
        score_thresh=config.box_score_threshold,
        nms_thresh=config.box_nms_threshold,
        detections_per_img=config.box_detections_per_image,
        mask_roi_pool=pooler(config.mask_roi_output_size),
        mask_head=MaskRCNNHeads(channels, [config.mask_head_hidden_size] * config.mask_head_num_convs, 1),
        mask_predictor=detector.roi_heads.mask_predictor,
    )
    return detector


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
class PaCaViTForInstanceSegmentation(PaCaViTPreTrainedModel):
    """Mask R-CNN with a PaCa-ViT backbone (COCO detection + instance segmentation).

    Inputs: `pixel_values` (B, 3, H, W) normalised and zero-padded by `PaCaViTMaskRCNNImageProcessor`;
    `image_sizes` (B, 2) height/width of each image inside the padding (default: the whole tensor);
    `original_sizes` (B, 2), optional: rescale boxes and paste masks at these sizes (mmdet's `rescale=True`);
    `labels` (training only; in eval mode they are an error, as no loss is computed there): one dict per image with
    `boxes` (N, 4) x1, y1, x2, y2 in pixels of `image_sizes`, `class_labels` (N,) 0-based ids below `num_labels`
    and `masks` (N, h, w) binary masks at the size of `image_sizes` (or of the padded batch); N may be 0 (a negative
    image). They are checked with the image processor's `check_annotation` (an `AnnotationError` names `labels[i]`
    and the fix) and moved to the model's device. `image_sizes` / `original_sizes` must give one (height, width) of
    whole pixels >= 1 per image.

    In training mode it returns `loss` and `loss_dict`; in eval mode `detections` (see
    `PaCaViTInstanceSegmentationOutput`). The torchvision model is `self.detector`: `detector.backbone.body` is the
    `PaCaViTBackbone`, `detector.backbone.fpn`, `detector.rpn` and `detector.roi_heads` the rest.
    """

    config_class = PaCaViTMaskRCNNConfig
    config: PaCaViTMaskRCNNConfig
    base_model_prefix = "detector"
    _no_split_modules = ["PaCaViTLayer", "PaCaViTClusteringTeacher"]

    def __init__(self, config: PaCaViTMaskRCNNConfig) -> None:
        require_torchvision()
        super().__init__(config)
        self.detector = build_detector(config)
        self._tag_head_init()
        self.post_init()

    # the heads keep mmdet's initialisation (mmdet FPN/Shared2FC: Xavier; RPN: N(0, 0.01); fc_cls N(0, 0.01);
    # fc_reg N(0, 0.001); mask convs: Kaiming fan-out); the backbone keeps PaCa-ViT's
    def _tag_head_init(self) -> None:
        det = self.detector
        for module in det.backbone.fpn.modules():
            if isinstance(module, nn.Conv2d):
                module._maskrcnn_init = "xavier"
        for module in det.rpn.head.modules():
            if isinstance(module, nn.Conv2d):
                module._maskrcnn_init = 0.01
        det.roi_heads.box_head.fc6._maskrcnn_init = det.roi_heads.box_head.fc7._maskrcnn_init = "xavier"
        det.roi_heads.box_predictor.cls_score._maskrcnn_init = 0.01
        det.roi_heads.box_predictor.bbox_pred._maskrcnn_init = 0.001
        for module in list(det.roi_heads.mask_head.modules()) + list(det.roi_heads.mask_predictor.modules()):
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                module._maskrcnn_init = "kaiming"

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        scheme = getattr(module, "_maskrcnn_init", None)
        if scheme is None:
            super()._init_weights(module)
            return
        if scheme == "xavier":
            init.xavier_uniform_(module.weight)
        elif scheme == "kaiming":
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        else:
            init.normal_(module.weight, mean=0.0, std=float(scheme))
        if module.bias is not None:
            init.zeros_(module.bias)

    def save_pretrained(self, save_directory, *args, **kwargs):
        if self._auto_class is not None:  # Hub remote code: every Auto class this model serves, not just one
            self.config.auto_map = {
                "AutoConfig": "configuration_pacavit_maskrcnn.PaCaViTMaskRCNNConfig",
                # the image processor is found through here (see PaCaViTMaskRCNNImageProcessor.save_pretrained)
                "AutoImageProcessor": "image_processing_pacavit_maskrcnn.PaCaViTMaskRCNNImageProcessor",
                **{name: "modeling_pacavit_maskrcnn.PaCaViTForInstanceSegmentation" for name in AUTO_CLASSES},
            }
        return super().save_pretrained(save_directory, *args, **kwargs)

    @property
    def backbone(self) -> PaCaViTBackbone:
        return self.detector.backbone.body

    def load_backbone_weights(self, pretrained: str | PaCaViTPreTrainedModel) -> None:
        """Initialise the backbone from a PaCa-ViT checkpoint (classification or backbone folder / Hub id, or a
        model), as the original detection configs start from the ImageNet weights. Missing or unexpected backbone
        keys are an error; an ImageNet head is ignored."""
        if isinstance(pretrained, (str, bytes)) or hasattr(pretrained, "__fspath__"):
            pretrained = PaCaViTModel.from_pretrained(pretrained)
        source = pretrained.state_dict()
        prefix = "pacavit." if any(k.startswith("pacavit.") for k in source) else ""
        weights = {
            k[len(prefix) :]: v for k, v in source.items() if k.startswith(prefix) and not k.startswith("classifier.")
        }
        self.backbone.pacavit.load_state_dict(weights, strict=True)

    def _targets(self, labels, sizes: list[tuple[int, int]], padded: tuple[int, int], device) -> list[dict]:
        """torchvision's targets from `labels`, checked by `check_annotation` in the frame of `image_sizes` (masks
        of the padded batch's size are accepted too) and moved to the model's device."""
        if isinstance(labels, Mapping) or not isinstance(labels, (list, tuple)):
            what = "one dict" if isinstance(labels, Mapping) else f"a {type(labels).__name__}"
            raise AnnotationError(
                f"labels is {what} for {len(sizes)} image(s); give a list with one dict per image (boxes, "
                "class_labels, masks), e.g. the `labels` of PaCaViTMaskRCNNImageProcessor(images, annotations=...)."
            )
        if len(labels) != len(sizes):
            raise AnnotationError(
                f"labels has {len(labels)} entries for {len(sizes)} images; give one dict per image."
            )
        targets = []
        for i, (target, size) in enumerate(zip(labels, sizes)):
            target = check_annotation(
                target,
                f"labels[{i}]",
                size,
                f"image_sizes[{i}]",
                num_labels=self.config.num_labels,
                padded_size=padded,
                mask_fix=(
                    " inside pixel_values, resized with it (PaCaViTMaskRCNNImageProcessor(images, annotations=...) "
                    "returns such labels)"
                ),
            )
            targets.append(  # torchvision: 0 = background
                {
                    "boxes": target["boxes"].to(device),
                    "labels": (target["class_labels"] + 1).to(device),
                    "masks": target["masks"].to(device),
                }
            )
        return targets

    @staticmethod
    def _sizes(value, name: str, batch: int, limit: tuple[int, int] | None = None) -> list[tuple[int, int]]:
        """(height, width) per image from a (B, 2) tensor or a list of pairs: whole pixels >= 1 (and within `limit`,
        the padded batch, for image_sizes)."""
        rows = value.tolist() if torch.is_tensor(value) else value
        try:
            sizes = []
            for row in rows:
                height, width = (float(v) for v in row)
                if not (height.is_integer() and width.is_integer()):
                    raise ValueError(row)
                sizes.append((int(height), int(width)))
        except (TypeError, ValueError):
            sizes = None
        fits = sizes is not None and len(sizes) == batch and all(h >= 1 and w >= 1 for h, w in sizes)
        if fits and limit is not None:
            fits = all(h <= limit[0] and w <= limit[1] for h, w in sizes)
        if not fits:
            within = f" within {limit[0]}x{limit[1]}" if limit is not None else ""
            raise ValueError(
                f"{name} {rows} must give one (height, width){within} per image ({batch}), in whole pixels >= 1 "
                "(the image processor returns it with pixel_values)."
            )
        return sizes

    def forward(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | list | None = None,
        labels: list[dict] | None = None,
        original_sizes: torch.Tensor | list | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PaCaViTInstanceSegmentationOutput | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        check_pixel_values(pixel_values, self.config, self.training)  # type, rank, channels, dtype, size
        batch, _, height, width = pixel_values.shape
        sizes = self._sizes(
            [(height, width)] * batch if image_sizes is None else image_sizes, "image_sizes", batch, (height, width)
        )
        frames = sizes if original_sizes is None else self._sizes(original_sizes, "original_sizes", batch)
        if self.training and labels is None:
            raise ValueError(
                "In training mode the model needs `labels` (one dict of boxes, class_labels, masks per image)."
            )
        if not self.training and labels is not None:
            raise ValueError(
                "labels were given in eval mode, where the model returns detections and no loss (torchvision's "
                "Mask R-CNN computes losses only in training mode). Call model.train() to train on them, or drop "
                "labels for inference."
            )
        targets = self._targets(labels, sizes, (height, width), pixel_values.device) if self.training else None

        images = ImageList(pixel_values, sizes)
        features = self.detector.backbone(pixel_values)
        proposals, rpn_losses = self.detector.rpn(images, features, targets)
        detections, roi_losses = self.detector.roi_heads(features, proposals, sizes, targets)
        if self.training:
            loss_dict = {**rpn_losses, **roi_losses}
            output = PaCaViTInstanceSegmentationOutput(loss=sum(loss_dict.values()), loss_dict=loss_dict)
            return output if return_dict else output.to_tuple()

        results = []
        for detection, (h, w), (frame_h, frame_w) in zip(detections, sizes, frames):
            boxes = detection["boxes"]
            if (frame_h, frame_w) != (h, w):  # mmdet: boxes / scale_factor, masks pasted at the original size
                boxes = boxes / boxes.new_tensor([w / frame_w, h / frame_h, w / frame_w, h / frame_h])
            results.append(
                {
                    "boxes": boxes,
                    "scores": detection["scores"],
                    "labels": detection["labels"] - 1,
                    "masks": paste_masks(detection["masks"][:, 0], boxes, frame_h, frame_w),
                }
            )
        output = PaCaViTInstanceSegmentationOutput(
            detections=results, image_sizes=torch.tensor(frames, dtype=torch.int64, device=pixel_values.device)
        )
        return output if return_dict else output.to_tuple()


__all__ = ["PaCaViTForInstanceSegmentation", "PaCaViTInstanceSegmentationOutput", "build_detector", "paste_masks"]

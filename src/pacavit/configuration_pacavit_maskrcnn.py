"""Configuration of the PaCa-ViT Mask R-CNN (COCO detection and instance segmentation).

A `PaCaViTConfig` (the backbone, all its fields at the top level, like the segmentation config) plus the detector
settings. The defaults are the original detection configs (`detection/configs/_base_/models/mask-rcnn_r50_fpn.py`
with the PaCa backbone of `detection/configs/paca_vit/mask_rcnn_1x/*`): FPN 256 with a max-pool P6, anchors of
scale 8 at strides 4-64, RPN 2000/1000 proposals in training and 1000/1000 at test, RoIAlign 7/14 with
`aligned=True` and adaptive sampling, a 1024-wide two-FC box head, a 4-conv 256-channel mask head and the test
settings score 0.05, NMS 0.5, 100 detections, mask threshold 0.5. `num_labels` counts the foreground classes only
(80 for COCO); class ids are 0-based like `id2label`.
"""

from __future__ import annotations

from .configuration_pacavit import PaCaViTConfig


class PaCaViTMaskRCNNConfig(PaCaViTConfig):
    r"""Configuration of `PaCaViTForInstanceSegmentation`: every `PaCaViTConfig` argument (the backbone), plus:

    Args:
        fpn_hidden_size (`int`, defaults to 256): channels of the FPN outputs (mmdet `neck.out_channels`).
        anchor_sizes (`list[int]`, defaults to `[32, 64, 128, 256, 512]`): anchor size per FPN level
            (mmdet `scales=[8]` times `strides`).
        anchor_aspect_ratios (`list[float]`, defaults to `[0.5, 1.0, 2.0]`): height/width ratios of the anchors.
        anchor_strides (`list[int]`, defaults to `[4, 8, 16, 32, 64]`): stride of each FPN level (P2-P6). mmdet uses
            these fixed strides; torchvision would derive them from the padded image size.
        rpn_pre_nms_top_n_train / rpn_post_nms_top_n_train (`int`, 2000 / 1000): proposals per level before NMS and
            per image after it, in training (mmdet `train_cfg.rpn_proposal`).
        rpn_pre_nms_top_n_test / rpn_post_nms_top_n_test (`int`, 1000 / 1000): the same at test time.
        rpn_nms_threshold (`float`, 0.7), rpn_fg_iou_threshold (`float`, 0.7), rpn_bg_iou_threshold (`float`, 0.3),
        rpn_batch_size_per_image (`int`, 256), rpn_positive_fraction (`float`, 0.5): RPN NMS, assigner and sampler.
        roi_output_size (`int`, 7), mask_roi_output_size (`int`, 14): RoIAlign output of the box and mask branches.
        roi_sampling_ratio (`int`, 0): RoIAlign samples per bin; 0 is adaptive (mmdet `sampling_ratio=0`).
        roi_aligned (`bool`, `True`): RoIAlign half-pixel alignment (mmcv's `aligned=True`).
        roi_finest_scale (`int`, 56): the RoI level mapping `floor(log2(sqrt(w*h) / finest_scale))`.
        box_head_hidden_size (`int`, 1024): width of the two shared FC layers (mmdet `Shared2FCBBoxHead`).
        box_fg_iou_threshold / box_bg_iou_threshold (`float`, 0.5 / 0.5), box_batch_size_per_image (`int`, 512),
        box_positive_fraction (`float`, 0.25): R-CNN assigner and sampler.
        bbox_reg_weights (`list[float]`, `[10, 10, 5, 5]`): 1 / mmdet's `target_stds` (0.1, 0.1, 0.2, 0.2).
        box_score_threshold (`float`, 0.05), box_nms_threshold (`float`, 0.5), box_detections_per_image (`int`, 100):
            the test-time post-processing (mmdet `test_cfg.rcnn`).
        mask_head_hidden_size (`int`, 256), mask_head_num_convs (`int`, 4): the FCN mask head.
        mask_threshold (`float`, 0.5): binarisation threshold of the pasted mask probabilities
            (mmdet `mask_thr_binary`).
    """

    model_type = "pacavit_maskrcnn"

    def __init__(
        self,
        fpn_hidden_size: int = 256,
        anchor_sizes=(32, 64, 128, 256, 512),
        anchor_aspect_ratios=(0.5, 1.0, 2.0),
        anchor_strides=(4, 8, 16, 32, 64),
        rpn_pre_nms_top_n_train: int = 2000,
        rpn_post_nms_top_n_train: int = 1000,
        rpn_pre_nms_top_n_test: int = 1000,
        rpn_post_nms_top_n_test: int = 1000,
        rpn_nms_threshold: float = 0.7,
        rpn_fg_iou_threshold: float = 0.7,
        rpn_bg_iou_threshold: float = 0.3,
        rpn_batch_size_per_image: int = 256,
        rpn_positive_fraction: float = 0.5,
        roi_output_size: int = 7,
        mask_roi_output_size: int = 14,
        roi_sampling_ratio: int = 0,
        roi_aligned: bool = True,
        roi_finest_scale: int = 56,
        box_head_hidden_size: int = 1024,
        box_fg_iou_threshold: float = 0.5,
        box_bg_iou_threshold: float = 0.5,
        box_batch_size_per_image: int = 512,
        box_positive_fraction: float = 0.25,
        bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
        box_score_threshold: float = 0.05,
        box_nms_threshold: float = 0.5,
        box_detections_per_image: int = 100,
        mask_head_hidden_size: int = 256,
        mask_head_num_convs: int = 4,
        mask_threshold: float = 0.5,
        **kwargs,
    ):
        self.fpn_hidden_size = fpn_hidden_size
        self.anchor_sizes = [int(s) for s in anchor_sizes]
        self.anchor_aspect_ratios = [float(r) for r in anchor_aspect_ratios]
        self.anchor_strides = [int(s) for s in anchor_strides]
        self.rpn_pre_nms_top_n_train = rpn_pre_nms_top_n_train
        self.rpn_post_nms_top_n_train = rpn_post_nms_top_n_train
        self.rpn_pre_nms_top_n_test = rpn_pre_nms_top_n_test
        self.rpn_post_nms_top_n_test = rpn_post_nms_top_n_test
        self.rpn_nms_threshold = rpn_nms_threshold
        self.rpn_fg_iou_threshold = rpn_fg_iou_threshold
        self.rpn_bg_iou_threshold = rpn_bg_iou_threshold
        self.rpn_batch_size_per_image = rpn_batch_size_per_image
        self.rpn_positive_fraction = rpn_positive_fraction
        self.roi_output_size = roi_output_size
        self.mask_roi_output_size = mask_roi_output_size
        self.roi_sampling_ratio = roi_sampling_ratio
        self.roi_aligned = roi_aligned
        self.roi_finest_scale = roi_finest_scale
        self.box_head_hidden_size = box_head_hidden_size
        self.box_fg_iou_threshold = box_fg_iou_threshold
        self.box_bg_iou_threshold = box_bg_iou_threshold
        self.box_batch_size_per_image = box_batch_size_per_image
        self.box_positive_fraction = box_positive_fraction
        self.bbox_reg_weights = [float(w) for w in bbox_reg_weights]
        self.box_score_threshold = box_score_threshold
        self.box_nms_threshold = box_nms_threshold
        self.box_detections_per_image = box_detections_per_image
        self.mask_head_hidden_size = mask_head_hidden_size
        self.mask_head_num_convs = mask_head_num_convs
        self.mask_threshold = mask_threshold
        # the detector reads all four stages; the detection configs train with drop-path 0.1
        kwargs.setdefault("drop_path_rate", 0.1)
        if kwargs.get("out_features") is None and kwargs.get("out_indices") is None:
            kwargs["out_features"] = ["stage1", "stage2", "stage3", "stage4"]
        if "id2label" not in kwargs:
            kwargs.setdefault("num_labels", 80)
        super().__init__(**kwargs)
        if not (len(self.anchor_sizes) == len(self.anchor_strides) == len(self.out_features) + 1):
            raise ValueError(
                f"anchor_sizes ({len(self.anchor_sizes)}) and anchor_strides ({len(self.anchor_strides)}) need one "
                f"entry per FPN level: the {len(self.out_features)} backbone stages plus the max-pool level."
            )
        if self.num_labels < 1:
            raise ValueError("num_labels (the number of foreground classes) must be at least 1.")


__all__ = ["PaCaViTMaskRCNNConfig"]

"""The instance-segmentation (Mask R-CNN) task's recipes, command-line flags and builders (used by
`examples/run_instance_segmentation.py`; importable so that they are unit-tested without running the script).

- `RECIPES` / `BASE_DEFAULTS`: "digit_scenes" (the default run: built-in COCO-format scenes of digit scans) and
  "paper_coco_1x" (the original `mask_rcnn_pacavit_*_mstrain_480_800_1x_coco` config); precedence explicit flag >
  --recipe > BASE_DEFAULTS.
- `parse_args`: the script's flags (task flags here, shared ones from `pacavit.training.args`).
- `build_model` (a Mask R-CNN checkpoint, or `--preset` with `--detector_overrides`, optionally on ImageNet
  backbone weights), `build_train_transform` (the paper's multi-scale / resize-crop-resize augmentation) and
  `build_image_processor` (the evaluation resize, also saved with the model).
"""

from __future__ import annotations

import json

from ..configuration_pacavit import PaCaViTConfig
from ..configuration_pacavit_maskrcnn import PaCaViTMaskRCNNConfig
from ..data.detection import CROP_PRE_RESIZE_SHORT_SIDES, CROP_SIZE_RANGE, MULTI_SCALE_SHORT_SIDES, DetectionTransform
from ..modeling_pacavit_maskrcnn import PaCaViTForInstanceSegmentation
from ..preprocessing import instance_segmentation_image_processor
from .args import (
    ARCHITECTURE_DEFAULTS,
    OPTIMIZATION_DEFAULTS,
    RecipeArgumentParser,
    add_architecture_arguments,
    add_image_check_arguments,
    add_optimization_arguments,
    add_running_arguments,
    architecture_overrides,
    validate_training_args,
)

# Defaults of every recipe-controlled flag. Precedence: explicit flag > --recipe > BASE_DEFAULTS.
BASE_DEFAULTS = dict(
    OPTIMIZATION_DEFAULTS,
    **ARCHITECTURE_DEFAULTS,
    detector_overrides=None,
    train_short_sides=list(MULTI_SCALE_SHORT_SIDES),
    max_size=1333,
    eval_short_side=800,
    crop_pre_resize_short_sides=list(CROP_PRE_RESIZE_SHORT_SIDES),
    crop_size_range=list(CROP_SIZE_RANGE),
    crop_prob=0.5,
    flip_prob=0.5,
)
RECIPES = {
    # the default, offline run: 96x96 scenes of 4 digit classes (shorter side 80-112 for training, 96 for
    # evaluation), a reduced-width PaCa-Tiny with a narrower detector and fewer proposals; no flip (a mirrored
    # digit is another glyph)
    "digit_scenes": dict(
        hidden_sizes=[32, 64, 96, 128],
        depths=[1, 1, 2, 1],
        num_attention_heads=[1, 2, 3, 4],
        num_clusters=[32, 32, 32, 0],
        detector_overrides=dict(
            drop_path_rate=0.0,
            fpn_hidden_size=64,
            box_head_hidden_size=256,
            mask_head_hidden_size=64,
            roi_sampling_ratio=2,  # adaptive sampling makes RoIAlign's CPU backward the slowest op
            rpn_pre_nms_top_n_train=300,
            rpn_post_nms_top_n_train=150,
            rpn_pre_nms_top_n_test=300,
            rpn_post_nms_top_n_test=100,
            box_batch_size_per_image=64,
            box_detections_per_image=20,
        ),
        train_short_sides=[80, 88, 96, 104, 112],
        max_size=187,
        eval_short_side=96,
        crop_pre_resize_short_sides=[80, 96],
        crop_size_range=[64, 88],
        flip_prob=0.0,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=20,
        num_train_epochs=4,
        lr_base=2e-3,
        lr_base_size=4,
        min_lr_base=2e-5,
        warmup_lr_base=2e-5,
        warmup_epochs=0.4,
        lr_scheduler_type="cosine",
        weight_decay=0.05,
    ),
    # detection/configs/paca_vit/mask_rcnn_1x/mask_rcnn_pacavit_*_mstrain_480_800_1x_coco.py + the 1x schedule:
    # AdamW 1e-4, wd 0.05 (norms excluded), LinearLR(start 0.001) for 500 iterations, MultiStepLR [8, 11] x0.1,
    # 12 epochs, batch 2 x 8 GPUs; DETR-style multi-scale / resize-crop augmentation with flip
    "paper_coco_1x": dict(
        per_device_train_batch_size=2,
        per_device_eval_batch_size=1,
        num_train_epochs=12,
        lr_base=1e-4,
        lr_base_size=16,
        min_lr_base=0.0,
        warmup_lr_base=1e-7,
        warmup_epochs=0.0,
        num_warmup_steps=500,  # iteration-based in the original (LinearLR end=500)
        lr_scheduler_type="multistep",
        decay_milestones=[8, 11],
        decay_rate=0.1,
        weight_decay=0.05,
    ),
}
DEFAULT_RECIPE = "digit_scenes"


def build_parser() -> RecipeArgumentParser:
    parser = RecipeArgumentParser(
        recipes=RECIPES,
        base_defaults=BASE_DEFAULTS,
        default_recipe=DEFAULT_RECIPE,
        description="Train/evaluate the PaCa-ViT Mask R-CNN (COCO detection + instance segmentation) with "
        "Accelerate (default: built-in COCO-format digit scenes).",
    )
    g = parser.add_argument_group("data")
    g.add_argument("--train_dir", default=None, help="COCO images folder (default: the built-in digit scenes).")
    g.add_argument("--train_annotations", default=None, help="instances_<split>.json of --train_dir.")
    g.add_argument("--validation_dir", default=None)
    g.add_argument("--validation_annotations", default=None)
    g.add_argument("--dataset_name", default=None, help="A 🤗 dataset with image + objects (bbox, category, ...).")
    g.add_argument("--dataset_config_name", default=None)
    g.add_argument("--built_in_data_dir", default="runs/digit-scenes-coco", help="Where the built-in data is written.")
    g.add_argument("--built_in_scenes", type=int, nargs=2, default=[300, 60], help="Built-in train/validation scenes.")
    g.add_argument(
        "--built_in_digits", type=int, nargs="+", default=[0, 1, 2, 3], help="Digit classes of the built-in scenes."
    )
    g.add_argument("--max_train_samples", type=int, default=None)
    g.add_argument("--max_eval_samples", type=int, default=None)
    g.add_argument("--train_short_sides", type=int, nargs="+", default=None, help="Multi-scale shorter sides.")
    g.add_argument("--max_size", type=int, default=None, help="Longer-side limit (mmdet 1333).")
    g.add_argument("--eval_short_side", type=int, default=None)
    g.add_argument("--crop_pre_resize_short_sides", type=int, nargs="+", default=None)
    g.add_argument("--crop_size_range", type=int, nargs=2, default=None)
    g.add_argument("--crop_prob", type=float, default=None, help="Probability of the resize-crop-resize branch.")
    g.add_argument("--flip_prob", type=float, default=None)
    add_image_check_arguments(g)  # --skip_corrupt_images / --verify_images (load_coco_folder: skip_unreadable)
    m = parser.add_argument_group("model")
    m.add_argument("--model_name_or_path", default=None, help="A PaCaViTForInstanceSegmentation folder / Hub id.")
    m.add_argument("--backbone_name_or_path", default=None, help="PaCa-ViT (ImageNet) weights for the backbone.")
    add_architecture_arguments(m)
    m.add_argument("--detector_overrides", type=json.loads, default=None, help="JSON of PaCaViTMaskRCNNConfig fields.")
    e = parser.add_argument_group("evaluation")
    e.add_argument("--eval_only", action="store_true")
    e.add_argument("--num_figure_scenes", type=int, default=4)
    add_optimization_arguments(parser)
    add_running_arguments(parser, output_dir="runs/instance-segmentation")
    return parser


def parse_args(argv: list[str] | None = None):
    return validate_training_args(build_parser().parse_args(argv))


def build_model(args, id2label: dict[int, str]) -> PaCaViTForInstanceSegmentation:
    """A Mask R-CNN checkpoint (`--model_name_or_path`), or `--preset` (with the architecture flags and
    `--detector_overrides`) from scratch, its backbone optionally from ImageNet weights (`--backbone_name_or_path`,
    as the original configs start)."""
    if args.model_name_or_path:
        return PaCaViTForInstanceSegmentation.from_pretrained(args.model_name_or_path)
    config = PaCaViTMaskRCNNConfig.from_backbone_config(
        PaCaViTConfig.from_preset(args.preset, **architecture_overrides(args)),
        **(args.detector_overrides or {}),
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    model = PaCaViTForInstanceSegmentation(config)
    if args.backbone_name_or_path:
        model.load_backbone_weights(args.backbone_name_or_path)
    return model


def build_train_transform(args, seed: int) -> DetectionTransform:
    """Flip + multi-scale or resize-crop-resize (the original configs); `seed` is per process."""
    return DetectionTransform(
        train=True,
        short_sides=args.train_short_sides,
        max_size=args.max_size,
        crop_pre_resize_short_sides=args.crop_pre_resize_short_sides,
        crop_size_range=tuple(args.crop_size_range),
        crop_probability=args.crop_prob,
        flip_probability=args.flip_prob,
        seed=seed,
    )


def build_image_processor(args):
    """The evaluation resize (shorter side --eval_short_side, longer <= --max_size), normalisation and padding;
    saved with the model (`pacavit.preprocessing`)."""
    return instance_segmentation_image_processor(args.eval_short_side, args.max_size)


__all__ = [
    "BASE_DEFAULTS",
    "DEFAULT_RECIPE",
    "RECIPES",
    "build_image_processor",
    "build_model",
    "build_parser",
    "build_train_transform",
    "parse_args",
]

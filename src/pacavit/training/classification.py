"""The image-classification task's recipes, command-line flags and builders (used by
`examples/run_classification.py`; importable so that they are unit-tested without running the script).

- `RECIPES` / `BASE_DEFAULTS`: "digits" (the default run: built-in scikit-learn digits) and "paper_in1k"
  (the original PaCa-ViT ImageNet-1k recipe); precedence explicit flag > --recipe > BASE_DEFAULTS.
- `parse_args`: the script's flags (task flags here, shared ones from `pacavit.training.args`).
- `build_model` (a checkpoint, or `--preset` from scratch), `build_image_processor` (eval preprocessing),
  `build_train_transform` (timm `create_transform`), `build_mixup` (timm Mixup/CutMix), `build_criterion` (timm
  losses).
"""

from __future__ import annotations

import argparse

from transformers import AutoConfig, AutoModelForImageClassification
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..configuration_pacavit import PaCaViTConfig, list_presets
from ..data.classification import DIGITS_NAME
from ..extras import require
from ..preprocessing import INTERPOLATIONS, classification_image_processor
from .args import (
    ARCHITECTURE_DEFAULTS,
    ARCHITECTURE_FLAGS,
    OPTIMIZATION_DEFAULTS,
    RecipeArgumentParser,
    add_image_check_arguments,
    add_optimization_arguments,
    add_running_arguments,
    architecture_overrides,
    floats,
    validate_training_args,
)

# Defaults of every recipe-controlled flag. Precedence: explicit flag > --recipe > BASE_DEFAULTS.
BASE_DEFAULTS: dict = dict(
    OPTIMIZATION_DEFAULTS,
    **ARCHITECTURE_DEFAULTS,
    drop_path_rate=None,  # None: the preset's (or the checkpoint's) drop-path rate
    image_size=224,
    crop_pct=0.875,
    interpolation="bicubic",
    image_mean=list(IMAGENET_DEFAULT_MEAN),
    image_std=list(IMAGENET_DEFAULT_STD),
    train_val_split=0.15,
    train_augmentation="timm",
    scale=[0.08, 1.0],
    ratio=[3.0 / 4.0, 4.0 / 3.0],
    hflip=0.5,
    color_jitter=0.4,
    auto_augment=None,
    reprob=0.0,
    remode="pixel",
    recount=1,
    mixup=0.0,
    cutmix=0.0,
    cutmix_minmax=None,
    mixup_prob=1.0,
    mixup_switch_prob=0.5,
    mixup_mode="batch",
    smoothing=0.1,
    model_ema=False,
    model_ema_decay=0.9998,
    model_ema_warmup=False,
    channels_last=False,
)

RECIPES: dict[str, dict] = {
    # The default run: the scikit-learn digits (8x8 images, upscaled to 32x32), a reduced-width PaCa-ViT-Tiny.
    # Chosen by measurement on a 2-core CPU (docs/classification.md): half the
    # widths of PaCa-Tiny (3.0 M parameters), 15 epochs, >= 98% held-out top-1 in about a minute.
    "digits": dict(
        preset="pacavit-tiny",
        hidden_sizes=[48, 96, 160, 192],
        num_attention_heads=[1, 2, 4, 8],
        image_size=32,
        crop_pct=1.0,
        train_val_split=0.2,
        per_device_train_batch_size=64,
        num_train_epochs=15,
        lr_base=2e-3,
        lr_base_size=64,
        min_lr_base=2e-5,
        warmup_lr_base=2e-6,
        warmup_epochs=1.0,
        # a mild random-resized crop of the 8x8 digit (up to ~1 px shift / 10% zoom); no flips, no colour
        train_augmentation="timm",
        scale=[0.8, 1.0],
        ratio=[0.9, 1.0 / 0.9],
        hflip=0.0,
        color_jitter=0.0,
        smoothing=0.1,
    ),
    # The original PaCa-ViT ImageNet-1k recipe (classification/configs/imagenet_vit_adamw.yml, train_timm.sh):
    # batch 128 x 8 GPUs, AMP, channels-last; clip-grad and EMA are off in the original.
    # Only what differs from BASE_DEFAULTS, which already hold the rest of the paper's settings: 224 px
    # bicubic, AdamW (eps 1e-8, betas 0.9/0.999, wd 0.05), lr per 512 images scaled linearly, cosine,
    # RRC 0.08-1, flip 0.5, colour jitter 0.4, label smoothing 0.1, mixup switch prob 0.5, the preset's
    # drop path.
    "paper_in1k": dict(
        crop_pct=0.9,
        per_device_train_batch_size=128,
        num_train_epochs=300,
        lr_base=5e-4,
        min_lr_base=5e-6,
        warmup_lr_base=5e-7,
        warmup_epochs=5.0,
        auto_augment="rand-m9-mstd0.5-inc1",
        reprob=0.25,
        mixup=0.8,
        cutmix=1.0,
        channels_last=True,
    ),
}


DEFAULT_RECIPE = "digits"
# The architecture flags of this task: the preset's overrides and its drop-path rate.
CLASSIFICATION_ARCHITECTURE_FLAGS = (*ARCHITECTURE_FLAGS, "drop_path_rate")


def build_parser() -> RecipeArgumentParser:
    parser = RecipeArgumentParser(
        recipes=RECIPES,
        base_defaults=BASE_DEFAULTS,
        default_recipe=DEFAULT_RECIPE,
        description="Train/evaluate a PaCa-ViT image classifier with Accelerate (default: built-in digits).",
    )
    g = parser.add_argument_group("data")
    g.add_argument(
        "--dataset_name",
        default=None,
        help=f"Hub dataset id (online or cached). Default: the built-in {DIGITS_NAME!r} dataset.",
    )
    g.add_argument("--dataset_config_name", default=None)
    g.add_argument("--train_dir", default=None, help="imagefolder directory (class sub-folders) for training.")
    g.add_argument("--validation_dir", default=None, help="imagefolder directory for evaluation.")
    g.add_argument("--train_split", default="train")
    g.add_argument(
        "--validation_split",
        default=None,
        help="Name of the evaluation split (default: 'validation', 'valid', 'val' or 'test').",
    )
    g.add_argument("--image_column_name", default=None, help="Default: 'image' or 'img'.")
    g.add_argument("--label_column_name", default=None, help="Default: 'label' or 'labels'.")
    g.add_argument(
        "--train_val_split",
        type=float,
        default=None,
        help="Held-out fraction when the dataset has no evaluation split (stratified by label).",
    )
    g.add_argument("--max_train_samples", type=int, default=None)
    g.add_argument("--max_eval_samples", type=int, default=None)
    add_image_check_arguments(g)
    g.add_argument("--cache_dir", default=None)

    g = parser.add_argument_group("model")
    g.add_argument("--model_name_or_path", default=None, help="Local folder or Hub id of a PaCa-ViT checkpoint.")
    g.add_argument("--preset", default=None, help=f"Architecture when training from scratch: {list_presets()}")
    g.add_argument("--hidden_sizes", type=int, nargs="+", default=None, help="Override the preset's stage widths.")
    g.add_argument("--depths", type=int, nargs="+", default=None)
    g.add_argument("--num_attention_heads", type=int, nargs="+", default=None)
    g.add_argument("--num_clusters", type=int, nargs="+", default=None)
    g.add_argument("--drop_path_rate", type=float, default=None, help="Default: the preset's/checkpoint's.")
    g.add_argument(
        "--ignore_mismatched_sizes",
        action="store_true",
        help="Re-initialise the classifier when the checkpoint has a different label set.",
    )
    g.add_argument("--attn_implementation", default=None, help="sdpa (default), eager, ...")
    g.add_argument("--trust_remote_code", action="store_true")
    g.add_argument("--image_size", type=int, default=None)
    g.add_argument("--crop_pct", type=float, default=None, help="Eval resize: shortest edge = image_size / crop_pct.")
    g.add_argument("--interpolation", choices=list(INTERPOLATIONS), default=None)
    g.add_argument("--image_mean", **floats(3))
    g.add_argument("--image_std", **floats(3))
    g.add_argument(
        "--model_ema",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Keep an EMA of the weights (timm ModelEmaV3); evaluated and exported instead of the weights.",
    )
    g.add_argument("--model_ema_decay", type=float, default=None)
    g.add_argument("--model_ema_warmup", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None)

    add_optimization_arguments(parser)

    g = parser.add_argument_group("augmentation (timm)")
    g.add_argument(
        "--train_augmentation",
        choices=["timm", "none"],
        default=None,
        help="'timm': timm.data.create_transform; 'none': the eval preprocessing (image processor).",
    )
    g.add_argument("--scale", **floats(2), help="RandomResizedCrop area range.")
    g.add_argument("--ratio", **floats(2), help="RandomResizedCrop aspect range.")
    g.add_argument("--hflip", type=float, default=None)
    g.add_argument("--color_jitter", type=float, default=None)
    g.add_argument("--auto_augment", "--aa", default=None, help="e.g. rand-m9-mstd0.5-inc1; 'none' disables.")
    g.add_argument("--reprob", type=float, default=None, help="Random erasing probability.")
    g.add_argument("--remode", default=None)
    g.add_argument("--recount", type=int, default=None)
    g.add_argument("--mixup", type=float, default=None, help="Mixup alpha (0 = off).")
    g.add_argument("--cutmix", type=float, default=None, help="CutMix alpha (0 = off).")
    g.add_argument("--cutmix_minmax", **floats(2))
    g.add_argument("--mixup_prob", type=float, default=None)
    g.add_argument("--mixup_switch_prob", type=float, default=None)
    g.add_argument("--mixup_mode", choices=["batch", "pair", "elem"], default=None)
    g.add_argument("--smoothing", type=float, default=None, help="Label smoothing.")

    g = add_running_arguments(parser, output_dir="runs/pacavit-digits")
    g.add_argument("--eval_only", action="store_true", help="Only evaluate --model_name_or_path (top-1/top-5).")
    g.add_argument(
        "--pipeline_eval_samples",
        type=int,
        default=1000,
        help="After training, re-check this many raw eval images with pipeline('image-classification').",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = validate_training_args(build_parser().parse_args(argv))
    if isinstance(args.auto_augment, str) and args.auto_augment.lower() in ("none", ""):
        args.auto_augment = None
    if args.eval_only and args.model_name_or_path is None:
        raise ValueError("--eval_only needs --model_name_or_path (a trained or converted checkpoint).")
    return args


def build_model(args, label_names: list[str]):
    """A checkpoint (--model_name_or_path) or a preset trained from scratch; returns the model, its description
    and the architecture overrides of the preset."""
    id2label = dict(enumerate(label_names))
    label2id = {name: i for i, name in id2label.items()}
    model_kwargs = {"attn_implementation": args.attn_implementation} if args.attn_implementation else {}
    if args.model_name_or_path is None:
        overrides = architecture_overrides(args, CLASSIFICATION_ARCHITECTURE_FLAGS)
        config = PaCaViTConfig.from_preset(
            args.preset,
            num_labels=len(label_names),
            id2label=id2label,
            label2id=label2id,
            image_size=args.image_size,
            **overrides,
        )
        return AutoModelForImageClassification.from_config(config, **model_kwargs), args.preset, overrides

    config_kwargs = dict(trust_remote_code=args.trust_remote_code, cache_dir=args.cache_dir)
    if not args.eval_only:
        config_kwargs.update(num_labels=len(label_names), id2label=id2label, label2id=label2id)
    if args.drop_path_rate is not None:
        config_kwargs["drop_path_rate"] = args.drop_path_rate
    config = AutoConfig.from_pretrained(args.model_name_or_path, **config_kwargs)
    model = AutoModelForImageClassification.from_pretrained(
        args.model_name_or_path,
        config=config,
        ignore_mismatched_sizes=args.ignore_mismatched_sizes,
        trust_remote_code=args.trust_remote_code,
        cache_dir=args.cache_dir,
        **model_kwargs,
    )
    if args.eval_only and model.config.num_labels != len(label_names):
        raise ValueError(
            f"The checkpoint has {model.config.num_labels} labels but the dataset has {len(label_names)}."
        )
    return model, getattr(model.config, "_name_or_path", None) or args.model_name_or_path, {}


def build_image_processor(args):
    """The eval preprocessing from the flags (`pacavit.preprocessing.classification_image_processor`)."""
    return classification_image_processor(
        args.image_size, args.crop_pct, args.interpolation, args.image_mean, args.image_std
    )


def build_train_transform(args):
    """timm's training transform (RandomResizedCrop, flip, RandAugment, colour jitter, random erasing), or
    None to train on the eval preprocessing."""
    if args.train_augmentation == "none":
        return None
    timm_data = require("timm.data", extra="train", purpose="training augmentation")
    return timm_data.create_transform(
        input_size=args.image_size,
        is_training=True,
        scale=tuple(args.scale),
        ratio=tuple(args.ratio),
        hflip=args.hflip,
        color_jitter=args.color_jitter if args.color_jitter > 0 else None,
        auto_augment=args.auto_augment,
        interpolation=args.interpolation,
        mean=tuple(args.image_mean),
        std=tuple(args.image_std),
        re_prob=args.reprob,
        re_mode=args.remode,
        re_count=args.recount,
    )


def build_mixup(args, num_labels: int):
    """timm Mixup/CutMix (with label smoothing folded into the soft targets), or None when both are off."""
    if not (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None):
        return None
    timm_data = require("timm.data", extra="train", purpose="mixup/cutmix")
    return timm_data.Mixup(
        mixup_alpha=args.mixup,
        cutmix_alpha=args.cutmix,
        cutmix_minmax=args.cutmix_minmax,
        prob=args.mixup_prob,
        switch_prob=args.mixup_switch_prob,
        mode=args.mixup_mode,
        label_smoothing=args.smoothing,
        num_classes=num_labels,
    )


def build_criterion(args, mixup):
    """Soft-target CE with mixup, label-smoothing CE with --smoothing, else plain CE."""
    import torch

    timm_loss = require("timm.loss", extra="train", purpose="classification losses")
    if mixup is not None:
        return timm_loss.SoftTargetCrossEntropy()
    if args.smoothing > 0:
        return timm_loss.LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    return torch.nn.CrossEntropyLoss()

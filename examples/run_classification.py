#!/usr/bin/env python
"""Train and evaluate a PaCa-ViT image classifier with 🤗 Accelerate on a 🤗 Datasets dataset.

With no arguments it runs offline in about a minute on a 2-core CPU: it trains a reduced-width PaCa-ViT-Tiny
on the UCI handwritten digits that ship with scikit-learn (1,797 real 8x8 images, 10 classes), evaluates it on
a held-out 20% split, and writes a Hub-ready folder (model.safetensors, config.json with id2label,
preprocessor_config.json, README.md model card with the measured accuracy)::

    python examples/run_classification.py       # or: accelerate launch examples/run_classification.py

The paper's ImageNet-1k recipe is one flag (every knob is also a flag of its own)::

    accelerate launch examples/run_classification.py --recipe paper_in1k --preset pacavit-small \\
        --dataset_name ILSVRC/imagenet-1k --output_dir runs/pacavit-small-in1k --mixed_precision bf16

Validate a converted checkpoint (top-1/top-5)::

    python examples/run_classification.py --eval_only --model_name_or_path ./pacavit-small-converted \\
        --validation_dir /data/imagenet/val

Run `python examples/run_classification.py --help` for all flags.
"""

from __future__ import annotations

import os
import time

_PROCESS_START = time.time()  # wall time is measured from here (imports and data preparation included)

# Before torch loads OpenMP: GNU OpenMP threads spin ~300k iterations at every barrier by default. On a CPU
# that other processes also use, that turns a 0.17 s training step of the default run into ~10 s (measured on
# the 2-core machine); a 10k spin count costs nothing when the machine is idle and degrades gracefully when it
# is not.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import datasets  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from accelerate import Accelerator, DataLoaderConfiguration  # noqa: E402
from accelerate.logging import get_logger  # noqa: E402
from accelerate.utils import set_seed  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import AutoConfig, AutoModelForImageClassification  # noqa: E402

import pacavit  # noqa: E402  (registers PaCa-ViT with the Auto classes)
from pacavit import PaCaViTConfig  # noqa: E402
from pacavit.data import (  # noqa: E402
    DIGITS_DESCRIPTION,
    DIGITS_NAME,
    ImageClassificationDataset,
    find_corrupt_images,
    load_digits_dataset,
    sample_seed,
    seed_everything_from,
    split_train_validation,
)
from pacavit.metrics import TopKAccuracy, topk_predictions  # noqa: E402

logger = get_logger(__name__)

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

# ============================================================================================
# Recipes: defaults for the flags below. Precedence: explicit flag > --recipe > BASE_DEFAULTS.
# ============================================================================================
BASE_DEFAULTS: dict = dict(
    preset="pacavit-tiny",
    hidden_sizes=None,
    depths=None,
    num_attention_heads=None,
    num_clusters=None,
    drop_path_rate=None,  # None: the preset's (or the checkpoint's) drop-path rate
    image_size=224,
    crop_pct=0.875,
    interpolation="bicubic",
    image_mean=list(IMAGENET_DEFAULT_MEAN),
    image_std=list(IMAGENET_DEFAULT_STD),
    train_val_split=0.15,
    per_device_train_batch_size=64,
    per_device_eval_batch_size=128,
    num_train_epochs=10,
    lr_base=1e-3,
    lr_base_size=512,
    lr_base_scale="linear",
    min_lr_base=1e-5,
    warmup_lr_base=1e-6,
    warmup_epochs=1.0,
    cooldown_epochs=0.0,
    lr_scheduler_type="cosine",
    weight_decay=0.05,
    opt_eps=1e-8,
    opt_betas=[0.9, 0.999],
    layer_decay=None,
    clip_grad=None,
    clip_mode="norm",
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
    # Chosen by measurement on a 2-core CPU (README, "Training and evaluating an image classifier"): half the widths of PaCa-Tiny
    # (3.0 M parameters), 15 epochs, >= 98% held-out top-1 in about a minute.
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
    # Only what differs from BASE_DEFAULTS, which already hold the rest of the paper's settings: 224 px bicubic,
    # AdamW (eps 1e-8, betas 0.9/0.999, wd 0.05), lr per 512 images scaled linearly, cosine, RRC 0.08-1,
    # flip 0.5, colour jitter 0.4, label smoothing 0.1, mixup switch prob 0.5, the preset's drop path.
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


# ============================================================================================
# Arguments
# ============================================================================================
def _floats(n):
    return dict(type=float, nargs=n, default=None)


_NO_HELP = "\x00"


class _HelpFormatter(argparse.HelpFormatter):
    """Shows real defaults, and for recipe-controlled flags the value each recipe gives them."""

    def _get_help_string(self, action):
        text = "" if action.help == _NO_HELP else (action.help or "")
        if action.dest in BASE_DEFAULTS:
            values = ", ".join(
                f"{name}: {RECIPES[name].get(action.dest, BASE_DEFAULTS[action.dest])}" for name in RECIPES
            )
            return f"{text} [recipe defaults: {values}]".strip()
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return text
        return f"{text} (default: {action.default})".strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train/evaluate a PaCa-ViT image classifier with Accelerate (default: built-in digits).",
        formatter_class=_HelpFormatter,
    )
    g = parser.add_argument_group("recipe")
    g.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="digits",
        help="Defaults for every recipe flag below (explicit flags win).",
    )

    g = parser.add_argument_group("data")
    g.add_argument(
        "--dataset_name",
        default=None,
        help=f"Hub dataset id (online or cached). Default: the built-in {DIGITS_NAME!r} dataset.",
    )
    g.add_argument("--dataset_config_name", default=None)
    g.add_argument(
        "--train_dir", default=None, help="imagefolder directory (class sub-folders) for training."
    )
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
    g.add_argument(
        "--skip_corrupt_images",
        action="store_true",
        help="Check every image first and skip unreadable ones (counted and logged) instead of failing.",
    )
    g.add_argument(
        "--verify_images",
        action="store_true",
        help="Check every image before training and fail early, naming each unreadable file.",
    )
    g.add_argument("--dataloader_num_workers", type=int, default=0)
    g.add_argument("--cache_dir", default=None)

    g = parser.add_argument_group("model")
    g.add_argument(
        "--model_name_or_path", default=None, help="Local folder or Hub id of a PaCa-ViT checkpoint."
    )
    g.add_argument(
        "--preset", default=None, help=f"Architecture when training from scratch: {pacavit.list_presets()}"
    )
    g.add_argument(
        "--hidden_sizes", type=int, nargs="+", default=None, help="Override the preset's stage widths."
    )
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
    g.add_argument(
        "--crop_pct", type=float, default=None, help="Eval resize: shortest edge = image_size / crop_pct."
    )
    g.add_argument("--interpolation", choices=["bicubic", "bilinear", "nearest"], default=None)
    g.add_argument("--image_mean", **_floats(3))
    g.add_argument("--image_std", **_floats(3))

    g = parser.add_argument_group("optimisation")
    g.add_argument("--per_device_train_batch_size", type=int, default=None)
    g.add_argument("--per_device_eval_batch_size", type=int, default=None)
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--num_train_epochs", type=float, default=None)
    g.add_argument(
        "--max_train_steps", type=int, default=None, help="Optimizer updates; overrides the epochs."
    )
    g.add_argument(
        "--learning_rate",
        "--lr",
        type=float,
        default=None,
        help="Absolute peak lr; disables batch-size scaling (min/warmup lr keep their ratio to it).",
    )
    g.add_argument(
        "--lr_base", type=float, default=None, help="Peak lr for a global batch of --lr_base_size."
    )
    g.add_argument("--lr_base_size", type=int, default=None)
    g.add_argument("--lr_base_scale", choices=["linear", "sqrt"], default=None)
    g.add_argument("--min_lr_base", type=float, default=None, help="Final lr, scaled like --lr_base.")
    g.add_argument(
        "--warmup_lr_base", type=float, default=None, help="Initial warmup lr, scaled like --lr_base."
    )
    g.add_argument("--warmup_epochs", type=float, default=None)
    g.add_argument("--num_warmup_steps", type=int, default=None, help="Overrides --warmup_epochs.")
    g.add_argument("--cooldown_epochs", type=float, default=None)
    g.add_argument(
        "--lr_scheduler_type",
        default=None,
        choices=["cosine", "tanh", "step", "multistep", "poly", "constant", "wsd"],
        help="timm scheduler, stepped per optimizer update.",
    )
    g.add_argument(
        "--weight_decay",
        type=float,
        default=None,
        help="AdamW decoupled weight decay; never applied to norms, biases, 1-D params, embeddings.",
    )
    g.add_argument("--opt_eps", type=float, default=None)
    g.add_argument("--opt_betas", **_floats(2))
    g.add_argument(
        "--layer_decay", type=float, default=None, help="Layer-wise lr decay (e.g. 0.75 for fine-tuning)."
    )
    g.add_argument(
        "--clip_grad", type=float, default=None, help="Gradient clipping threshold (off by default)."
    )
    g.add_argument("--clip_mode", choices=["norm", "value"], default=None)
    g.add_argument(
        "--model_ema",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Keep an EMA of the weights (timm ModelEmaV3); evaluated and exported instead of the weights.",
    )
    g.add_argument("--model_ema_decay", type=float, default=None)
    g.add_argument("--model_ema_warmup", action=argparse.BooleanOptionalAction, default=None)

    g = parser.add_argument_group("augmentation (timm)")
    g.add_argument(
        "--train_augmentation",
        choices=["timm", "none"],
        default=None,
        help="'timm': timm.data.create_transform; 'none': the eval preprocessing (image processor).",
    )
    g.add_argument("--scale", **_floats(2), help="RandomResizedCrop area range.")
    g.add_argument("--ratio", **_floats(2), help="RandomResizedCrop aspect range.")
    g.add_argument("--hflip", type=float, default=None)
    g.add_argument("--color_jitter", type=float, default=None)
    g.add_argument("--auto_augment", "--aa", default=None, help="e.g. rand-m9-mstd0.5-inc1; 'none' disables.")
    g.add_argument("--reprob", type=float, default=None, help="Random erasing probability.")
    g.add_argument("--remode", default=None)
    g.add_argument("--recount", type=int, default=None)
    g.add_argument("--mixup", type=float, default=None, help="Mixup alpha (0 = off).")
    g.add_argument("--cutmix", type=float, default=None, help="CutMix alpha (0 = off).")
    g.add_argument("--cutmix_minmax", **_floats(2))
    g.add_argument("--mixup_prob", type=float, default=None)
    g.add_argument("--mixup_switch_prob", type=float, default=None)
    g.add_argument("--mixup_mode", choices=["batch", "pair", "elem"], default=None)
    g.add_argument("--smoothing", type=float, default=None, help="Label smoothing.")

    g = parser.add_argument_group("running")
    g.add_argument("--output_dir", default="runs/pacavit-digits")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument(
        "--mixed_precision",
        choices=["no", "fp16", "bf16"],
        default=None,
        help="Default: what `accelerate launch`/config says (fp32 otherwise).",
    )
    g.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--activation_checkpointing", action="store_true", help="Trade compute for memory.")
    g.add_argument(
        "--num_threads",
        type=int,
        default=None,
        help="torch CPU threads per process (default on CPU: available cores / local processes).",
    )
    g.add_argument("--logging_steps", type=int, default=10)
    g.add_argument("--eval_every_epochs", type=int, default=1, help="0: evaluate only at the end.")
    g.add_argument(
        "--with_tracking", action="store_true", help="Log metrics with the trackers of --report_to."
    )
    g.add_argument("--report_to", default="tensorboard")
    g.add_argument("--checkpointing_steps", default=None, help="'N' (every N updates) or 'epoch'.")
    g.add_argument(
        "--checkpoints_total_limit", type=int, default=None, help="Keep only the newest N checkpoints."
    )
    g.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help="A checkpoint folder, or 'latest' for the newest one in --output_dir.",
    )
    g.add_argument(
        "--eval_only", action="store_true", help="Only evaluate --model_name_or_path (top-1/top-5)."
    )
    g.add_argument(
        "--pipeline_eval_samples",
        type=int,
        default=1000,
        help="After training, re-check this many raw eval images with pipeline('image-classification').",
    )
    g.add_argument("--push_to_hub", action="store_true")
    g.add_argument("--hub_model_id", default=None)
    g.add_argument("--hub_token", default=None)
    g.add_argument("--hub_private", action="store_true")
    for action in parser._actions:  # so that the formatter shows defaults of flags without a help text
        if not action.help:
            action.help = _NO_HELP
    return parser


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill every flag left at None from the recipe, then from BASE_DEFAULTS."""
    recipe = RECIPES[args.recipe]
    for key, value in BASE_DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, recipe.get(key, value))
    if isinstance(args.auto_augment, str) and args.auto_augment.lower() in ("none", ""):
        args.auto_augment = None
    if args.clip_grad is not None and args.clip_grad <= 0:
        args.clip_grad = None
    if args.num_warmup_steps is not None and args.num_warmup_steps < 0:
        raise ValueError("--num_warmup_steps must be >= 0")
    if args.gradient_accumulation_steps < 1:
        raise ValueError("--gradient_accumulation_steps must be >= 1")
    if args.eval_only and args.model_name_or_path is None:
        raise ValueError("--eval_only needs --model_name_or_path (a trained or converted checkpoint).")
    if args.checkpointing_steps is not None and args.checkpointing_steps != "epoch":
        if not str(args.checkpointing_steps).isdigit() or int(args.checkpointing_steps) < 1:
            raise ValueError(
                f"--checkpointing_steps takes a positive integer or 'epoch', not {args.checkpointing_steps!r}"
            )
        args.checkpointing_steps = int(args.checkpointing_steps)
    return args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return resolve_args(build_parser().parse_args(argv))


# ============================================================================================
# Optimisation recipe (importable, unit-tested)
# ============================================================================================
def global_batch_size(
    per_device_batch_size: int, num_processes: int, gradient_accumulation_steps: int
) -> int:
    """Images per optimizer update, over all processes and accumulation steps."""
    return per_device_batch_size * num_processes * gradient_accumulation_steps


def scale_learning_rates(
    lr_base: float,
    min_lr_base: float,
    warmup_lr_base: float,
    batch_size: int,
    lr_base_size: int = 512,
    lr_base_scale: str = "linear",
    learning_rate: float | None = None,
) -> dict:
    """Peak, minimum and warmup-start learning rates for a global `batch_size`.

    timm/PaCa rule: `lr = lr_base * batch_size / lr_base_size` (`sqrt` of that ratio for `"sqrt"`), and
    min/warmup lr scaled by the same factor. An absolute `learning_rate` replaces the peak lr; min/warmup keep
    their ratio to it.
    """
    if learning_rate is not None:
        factor = learning_rate / lr_base
    else:
        ratio = batch_size / lr_base_size
        if lr_base_scale == "linear":
            factor = ratio
        elif lr_base_scale == "sqrt":
            factor = math.sqrt(ratio)
        else:
            raise ValueError(f"Unknown lr_base_scale {lr_base_scale!r}")
    return dict(
        lr=lr_base * factor, min_lr=min_lr_base * factor, warmup_lr=warmup_lr_base * factor, factor=factor
    )


# Names (fnmatch patterns) never decayed in addition to 1-D parameters (norm weights, biases, layer scales).
NO_WEIGHT_DECAY = ("*position_embeddings*",)


def build_param_groups(
    model: torch.nn.Module,
    weight_decay: float,
    layer_decay: float | None = None,
    no_weight_decay_list=NO_WEIGHT_DECAY,
) -> list[dict]:
    """AdamW parameter groups: no decay on 1-D params (norms, biases) and `no_weight_decay_list`; with
    `layer_decay`, timm's `param_groups_layer_decay` (BEiT-style `lr_scale` per group)."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    if layer_decay is not None:
        if not hasattr(model, "group_matcher"):
            raise ValueError(f"--layer_decay needs a model with `group_matcher()`; {type(model).__name__} has none.")
        return param_groups_layer_decay(
            model,  # PaCaViTPreTrainedModel.group_matcher: stem, one group per block, head
            weight_decay=weight_decay,
            no_weight_decay_list=no_weight_decay_list,
            layer_decay=layer_decay,
        )
    return param_groups_weight_decay(
        model, weight_decay=weight_decay, no_weight_decay_list=no_weight_decay_list
    )


def build_optimizer(model: torch.nn.Module, args, lr: float) -> torch.optim.Optimizer:
    groups = build_param_groups(model, args.weight_decay, args.layer_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(args.opt_betas), eps=args.opt_eps)


def build_scheduler(optimizer, args, lrs: dict, updates_per_epoch: int, total_updates: int):
    """timm scheduler counted in optimizer updates (`step_update(n)` before update n+1)."""
    from timm.scheduler import create_scheduler_v2

    warmup = args.num_warmup_steps
    if warmup is None:
        warmup = int(round(args.warmup_epochs * updates_per_epoch))
    cooldown = int(round(args.cooldown_epochs * updates_per_epoch))
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=args.lr_scheduler_type,
        num_epochs=max(1, total_updates - cooldown),
        decay_epochs=max(1, total_updates // 3),
        decay_milestones=[total_updates // 2, total_updates * 3 // 4],
        cooldown_epochs=cooldown,
        min_lr=lrs["min_lr"],
        warmup_lr=lrs["warmup_lr"],
        warmup_epochs=warmup,
        step_on_epochs=False,
        updates_per_epoch=1,  # the schedule's unit is one optimizer update
    )
    return scheduler


def build_mixup(args, num_labels: int):
    """timm Mixup/CutMix (with label smoothing folded into the soft targets), or None when both are off."""
    if not (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None):
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=args.mixup,
        cutmix_alpha=args.cutmix,
        cutmix_minmax=args.cutmix_minmax,
        prob=args.mixup_prob,
        switch_prob=args.mixup_switch_prob,
        mode=args.mixup_mode,
        label_smoothing=args.smoothing,
        num_classes=num_labels,
    )


def build_criterion(args, mixup) -> torch.nn.Module:
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup is not None:
        return SoftTargetCrossEntropy()
    if args.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    return torch.nn.CrossEntropyLoss()


# ============================================================================================
# Preprocessing
# ============================================================================================
def build_image_processor(args):
    """The eval preprocessing, saved as preprocessor_config.json: resize the shortest edge to
    image_size / crop_pct, center-crop image_size, rescale to 0..1, normalise (timm's eval transform)."""
    from transformers import ConvNextImageProcessor
    from transformers.image_utils import PILImageResampling

    resample = {
        "bicubic": PILImageResampling.BICUBIC,
        "bilinear": PILImageResampling.BILINEAR,
        "nearest": PILImageResampling.NEAREST,
    }[args.interpolation]
    return ConvNextImageProcessor(
        do_resize=True,
        size={"shortest_edge": args.image_size},
        crop_pct=args.crop_pct,
        resample=resample,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(args.image_mean),
        image_std=list(args.image_std),
    )


def build_train_transform(args):
    """timm's training transform (RandomResizedCrop, flip, RandAugment, color jitter, random erasing), or
    None to train on the eval preprocessing."""
    if args.train_augmentation == "none":
        return None
    from timm.data import create_transform

    return create_transform(
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


def make_collate_fn(image_processor):
    def collate(examples: list[dict]) -> dict:
        labels = torch.tensor([e["labels"] for e in examples], dtype=torch.long)
        if "pixel_values" in examples[0]:
            pixel_values = torch.stack([e["pixel_values"] for e in examples])
        else:
            pixel_values = image_processor(images=[e["image"] for e in examples], return_tensors="pt")[
                "pixel_values"
            ]
        return {"pixel_values": pixel_values, "labels": labels}

    return collate


# ============================================================================================
# Data
# ============================================================================================
def _pick_column(names: list[str], requested: str | None, candidates: tuple[str, ...], what: str) -> str:
    if requested is not None:
        if requested not in names:
            raise ValueError(f"--{what}_column_name {requested!r} is not a column; columns: {names}")
        return requested
    for name in candidates:
        if name in names:
            return name
    raise ValueError(f"Cannot find the {what} column among {names}; pass --{what}_column_name.")


def load_raw_datasets(args):
    """A DatasetDict with 'train' and 'validation' splits, plus a short description of where it came from."""
    if args.train_dir or args.validation_dir:
        data_files = {}
        if args.train_dir:
            data_files["train"] = os.path.join(args.train_dir, "**")
        if args.validation_dir:
            data_files["validation"] = os.path.join(args.validation_dir, "**")
        raw = datasets.load_dataset("imagefolder", data_files=data_files, cache_dir=args.cache_dir)
        dirs = ", ".join(
            f"{k}: {v}" for k, v in (("train", args.train_dir), ("validation", args.validation_dir)) if v
        )
        source = dict(name="imagefolder", description=f"local image folders ({dirs})", builtin=False)
    elif args.dataset_name in (None, DIGITS_NAME, "digits"):
        full = load_digits_dataset()
        raw = split_train_validation(full, args.train_val_split, args.seed)
        description = (
            DIGITS_DESCRIPTION
            + f" Held-out split: {args.train_val_split:.0%}, stratified by label, seed {args.seed}."
        )
        return raw, dict(name=DIGITS_NAME, description=description, builtin=True)
    else:
        raw = datasets.load_dataset(args.dataset_name, args.dataset_config_name, cache_dir=args.cache_dir)
        source = dict(name=args.dataset_name, description=f"Hub dataset `{args.dataset_name}`", builtin=False)

    splits = dict(raw)
    out = {}
    if args.train_split in splits:
        out["train"] = splits[args.train_split]
    val_name = args.validation_split
    if val_name is None:
        val_name = next(
            (n for n in ("validation", "valid", "val", "test") if n in splits and n != args.train_split), None
        )
    if val_name is not None:
        if val_name not in splits:
            raise ValueError(f"Split {val_name!r} not found; splits: {list(splits)}")
        out["validation"] = splits[val_name]
    if "validation" not in out:
        if "train" not in out:
            raise ValueError(f"No train or validation split found; splits: {list(splits)}")
        label_col = _pick_column(
            list(out["train"].features), args.label_column_name, ("label", "labels"), "label"
        )
        out = dict(split_train_validation(out["train"], args.train_val_split, args.seed, label_col))
        source["description"] += f", {args.train_val_split:.0%} of the train split held out (stratified)"
    return datasets.DatasetDict(out), source


def drop_corrupt_images(dataset, image_column: str, split: str, skip: bool):
    """Check every image. Fail naming the unreadable ones, or (skip=True) drop them.

    Returns `(dataset, messages)`, one message (naming the file and index) per dropped image."""
    bad = find_corrupt_images(dataset, image_column, split)
    if not bad:
        return dataset, []
    if not skip:
        listing = "\n  ".join(message for _, message in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise ValueError(f"{len(bad)} unreadable image(s) in the {split!r} split:\n  {listing}{more}")
    bad_indices = {i for i, _ in bad}
    keep = [i for i in range(len(dataset)) if i not in bad_indices]
    return dataset.select(keep), [message for _, message in bad]


# ============================================================================================
# Checkpoints
# ============================================================================================
CHECKPOINT_PATTERN = re.compile(r"^(step|epoch)_(\d+)$")
TRAINING_STATE = "training_state.json"


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints in `output_dir` as `(completed_updates, path)`, oldest first."""
    found = []
    root = Path(output_dir)
    if not root.is_dir():
        return found
    for path in root.iterdir():
        if path.is_dir() and CHECKPOINT_PATTERN.match(path.name) and (path / TRAINING_STATE).is_file():
            state = json.loads((path / TRAINING_STATE).read_text())
            found.append((int(state["completed_steps"]), path))
    return sorted(found, key=lambda item: (item[0], item[1].stat().st_mtime))


def find_latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1][1] if checkpoints else None


def save_checkpoint(accelerator, output_dir: str, name: str, state: dict, total_limit: int | None) -> Path:
    """`accelerator.save_state` into a temporary folder renamed into place, so a killed run never leaves a
    half-written checkpoint that `latest` would pick up; then prune to `total_limit`."""
    final = Path(output_dir) / name
    tmp = Path(output_dir) / f".tmp_{name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / TRAINING_STATE).write_text(json.dumps(state, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if total_limit is not None and total_limit > 0:
            for _, old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        logger.info(f"Saved checkpoint {final}")
    accelerator.wait_for_everyone()
    return final


# ============================================================================================
# Evaluation, model card, Hub
# ============================================================================================
@torch.no_grad()
def evaluate(
    model, dataloader, accelerator, ks=(1, 5), channels_last: bool = False
) -> tuple[dict, torch.Tensor]:
    """Top-k accuracy and mean cross-entropy over the whole (sharded) eval set, gathered with
    `gather_for_metrics` (duplicated padding samples dropped). Also returns the top-1 predictions in dataset
    order."""
    was_training = model.training
    model.eval()
    metric = TopKAccuracy(ks)
    loss_sum, count = 0.0, 0
    top1 = []
    for batch in dataloader:
        pixel_values = batch["pixel_values"]
        if channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            logits = model(pixel_values=pixel_values).logits.float()
        losses = torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none")
        predictions = topk_predictions(logits, max(ks))
        predictions, references, losses = accelerator.gather_for_metrics(
            (predictions, batch["labels"], losses)
        )
        metric.add_batch(predictions=predictions, references=references)
        loss_sum += float(losses.sum())
        count += losses.numel()
        top1.append(predictions[:, 0].cpu())
    model.train(was_training)
    result = metric.compute()
    result["loss"] = loss_sum / max(count, 1)
    return result, torch.cat(top1) if top1 else torch.empty(0, dtype=torch.long)


def hardware_description(accelerator, num_threads: int) -> str:
    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        device = f"{accelerator.num_processes} process(es) on GPU ({', '.join(names)})"
    else:
        cpu = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        device = (
            f"CPU only: {cores} core(s) available ({cpu}), {accelerator.num_processes} process(es) x "
            f"{num_threads} torch thread(s)"
        )
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    return f"{device}; {versions}, Python {platform.python_version()}"


def write_model_card(path: Path, info: dict) -> None:
    """README.md with a `model-index` block (huggingface_hub ModelCardData) and a body written from `info`."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    card_data = ModelCardData(
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=["pacavit", "image-classification", "vision", "generated_from_run_classification"],
        datasets=[info["dataset_name"]]
        if not info.get("dataset_builtin") and info["dataset_name"] != "imagefolder"
        else None,
        metrics=["accuracy"],
        model_name=info["model_name"],
        eval_results=[
            EvalResult(
                task_type="image-classification",
                dataset_type=info["dataset_name"],
                dataset_name=info["dataset_name"],
                dataset_split="validation",
                metric_type="accuracy",
                metric_name=f"Top-{k} accuracy",
                metric_value=round(info[f"top{k}"] / 100.0, 4),
            )
            for k in (1, 5)
            if f"top{k}" in info
        ],
    )
    recipe_rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in info["recipe"].items())
    pipeline_line = ""
    if info.get("pipeline_top1") is not None:
        pipeline_line = (
            f'- `pipeline("image-classification")` on {info["pipeline_samples"]} raw validation images: '
            f"top-1 {info['pipeline_top1']:.2f}% (same top-1 prediction as the evaluation loop on "
            f"{info['pipeline_agreement']:.2f}% of them)\n"
        )
    names = info["label_names"]
    label_list = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
    body = f"""
# {info["model_name"]}

PaCa-ViT (Patch-to-Cluster Attention, CVPR 2023) image classifier trained with
`examples/run_classification.py` of the `pacavit` package.

## Results (held-out validation split, {info["num_eval_samples"]} images)

- top-1 accuracy: **{info["top1"]:.2f}%**
- top-5 accuracy: {info["top5"]:.2f}%
- evaluation loss: {info["eval_loss"]:.4f}
{pipeline_line}- weights: {info["weights"]}

## Data

{info["dataset_description"]}

Training images: {info["num_train_samples"]}; evaluation images: {info["num_eval_samples"]};
classes: {info["num_labels"]} ({label_list}).
Preprocessing (`preprocessor_config.json`, `ConvNextImageProcessor`): {info["preprocessing"]}.
Training augmentation: {info["augmentation"]}.

## Architecture

Preset `{info["preset"]}`{info["arch_note"]}: hidden sizes {info["hidden_sizes"]}, depths {info["depths"]},
attention heads {info["num_attention_heads"]}, clusters {info["num_clusters"]},
drop-path {info["drop_path_rate"]};
{info["num_parameters"] / 1e6:.2f} M parameters.

## Training recipe

`{info["command"]}`

| setting | value |
|---|---|
{recipe_rows}

## Hardware and time

{info["hardware"]}. Wall time {info["wall_time_s"]:.0f} s from process start to the saved folder
(training {info["train_time_s"]:.0f} s, {info["completed_steps"]} optimizer updates).

## Usage

```python
import pacavit  # registers PaCa-ViT with the transformers Auto classes
from transformers import pipeline

classifier = pipeline("image-classification", model="{info["repo_or_path"]}")
classifier(image)  # a PIL image
```
"""
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")
    card.save(str(path))


def hub_preflight(args) -> str:
    """Fail before training, with a clear message, when --push_to_hub cannot work; returns the repo id."""
    from huggingface_hub import HfApi, constants

    repo_id = args.hub_model_id or Path(args.output_dir).absolute().name
    if constants.HF_HUB_OFFLINE:
        raise SystemExit(
            "--push_to_hub needs the Hugging Face Hub, but offline mode is on (HF_HUB_OFFLINE=1). Unset it, "
            "or run "
            f"without --push_to_hub and upload later with `hf upload {repo_id} {args.output_dir}`."
        )
    try:
        return (
            HfApi(token=args.hub_token).create_repo(repo_id, exist_ok=True, private=args.hub_private).repo_id
        )
    except Exception as error:  # no network, no token, no permission, ...
        raise SystemExit(
            f"--push_to_hub: cannot create/access the Hub repository {repo_id!r} "
            f"({type(error).__name__}: {error}). "
            "Check the network connection and your token (`hf auth login` or --hub_token), or run without "
            f"--push_to_hub and upload later with `hf upload {repo_id} {args.output_dir}`."
        ) from error


def configure_threads(args, accelerator) -> int:
    """On CPU, use the cores available to this process divided among the local processes (accelerate launch
    exports OMP_NUM_THREADS=1, which wastes cores on a single-process CPU run); --num_threads overrides."""
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    elif accelerator.device.type == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        local = int(
            os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes if accelerator.num_processes else 1)
        )
        torch.set_num_threads(max(1, cores // max(1, local)))
    return torch.get_num_threads()


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


# ============================================================================================
# Main
# ============================================================================================
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    command = (
        "python examples/run_classification.py"
        + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    )

    accelerator_kwargs = dict(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        project_dir=args.output_dir,
    )
    if args.mixed_precision is not None:
        accelerator_kwargs["mixed_precision"] = args.mixed_precision
    if args.with_tracking:
        accelerator_kwargs["log_with"] = args.report_to
    accelerator = Accelerator(**accelerator_kwargs)

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S", level=logging.INFO
    )
    logger.info(accelerator.state, main_process_only=False)
    if accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    num_threads = configure_threads(args, accelerator)
    logger.info(f"Using {num_threads} torch thread(s) per process; {accelerator.num_processes} process(es).")
    set_seed(args.seed)

    repo_id = None
    if args.push_to_hub and accelerator.is_main_process:
        repo_id = hub_preflight(args)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
    accelerator.wait_for_everyone()

    # ---------------------------------------------------------------- data
    with accelerator.main_process_first():
        raw, source = load_raw_datasets(args)
    columns = list(raw["validation"].features)
    image_column = _pick_column(columns, args.image_column_name, ("image", "img"), "image")
    label_column = _pick_column(columns, args.label_column_name, ("label", "labels"), "label")
    label_feature = raw["validation"].features[label_column]
    if not isinstance(label_feature, datasets.ClassLabel):
        raise ValueError(
            f"The label column {label_column!r} must be a datasets.ClassLabel, got {label_feature}."
        )
    label_names = list(label_feature.names)
    id2label = {i: name for i, name in enumerate(label_names)}
    label2id = {name: i for i, name in id2label.items()}

    if args.max_train_samples is not None and "train" in raw:
        raw["train"] = (
            raw["train"].shuffle(seed=args.seed).select(range(min(args.max_train_samples, len(raw["train"]))))
        )
    if args.max_eval_samples is not None:
        raw["validation"] = raw["validation"].select(
            range(min(args.max_eval_samples, len(raw["validation"])))
        )
    skipped = {}
    if args.skip_corrupt_images or args.verify_images:
        for split in list(raw):
            if args.eval_only and split == "train":
                continue
            raw[split], messages = drop_corrupt_images(
                raw[split], image_column, split, args.skip_corrupt_images
            )
            skipped[split] = len(messages)
            for message in messages[:20]:
                logger.warning(f"Skipping: {message}")
            if messages:
                logger.warning(f"Skipped {len(messages)} unreadable image(s) in the {split!r} split.")

    # ---------------------------------------------------------------- model
    arch_overrides = {}
    if args.model_name_or_path is not None:
        config_kwargs = dict(trust_remote_code=args.trust_remote_code, cache_dir=args.cache_dir)
        if not args.eval_only:
            config_kwargs.update(num_labels=len(label_names), id2label=id2label, label2id=label2id)
        if args.drop_path_rate is not None:
            config_kwargs["drop_path_rate"] = args.drop_path_rate
        config = AutoConfig.from_pretrained(args.model_name_or_path, **config_kwargs)
        model_kwargs = dict(
            config=config,
            ignore_mismatched_sizes=args.ignore_mismatched_sizes,
            trust_remote_code=args.trust_remote_code,
            cache_dir=args.cache_dir,
        )
        if args.attn_implementation:
            model_kwargs["attn_implementation"] = args.attn_implementation
        model = AutoModelForImageClassification.from_pretrained(args.model_name_or_path, **model_kwargs)
        if args.eval_only and model.config.num_labels != len(label_names):
            raise ValueError(
                f"The checkpoint has {model.config.num_labels} labels but the dataset has {len(label_names)}."
            )
        preset_name = getattr(model.config, "_name_or_path", None) or args.model_name_or_path
    else:
        for key in ("hidden_sizes", "depths", "num_attention_heads", "num_clusters", "drop_path_rate"):
            if getattr(args, key) is not None:
                arch_overrides[key] = getattr(args, key)
        config = PaCaViTConfig.from_preset(
            args.preset,
            num_labels=len(label_names),
            id2label=id2label,
            label2id=label2id,
            image_size=args.image_size,
            **arch_overrides,
        )
        model_kwargs = {"attn_implementation": args.attn_implementation} if args.attn_implementation else {}
        model = AutoModelForImageClassification.from_config(config, **model_kwargs)
        preset_name = args.preset
    if args.activation_checkpointing:
        model.activation_checkpointing_enable()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    num_parameters = sum(p.numel() for p in model.parameters())
    logger.info(
        f"Model: {preset_name} {arch_overrides or ''}, {num_parameters / 1e6:.2f} M parameters, "
        f"{len(label_names)} labels."
    )

    # ---------------------------------------------------------------- preprocessing and loaders
    image_processor = None
    explicit = argv if argv is not None else sys.argv[1:]
    if args.eval_only and not any(f in explicit for f in ("--image_size", "--crop_pct", "--interpolation")):
        from transformers import AutoImageProcessor

        try:  # validate a checkpoint with its own preprocessing
            image_processor = AutoImageProcessor.from_pretrained(
                args.model_name_or_path, cache_dir=args.cache_dir
            )
            logger.info(
                f"Evaluating with the checkpoint's own image processor: {type(image_processor).__name__}."
            )
        except (OSError, ValueError) as error:
            logger.warning(
                f"No usable image processor in {args.model_name_or_path} ({error}); using the flags."
            )
    if image_processor is None:
        image_processor = build_image_processor(args)
    collate_fn = make_collate_fn(image_processor)
    eval_dataset = ImageClassificationDataset(
        raw["validation"], image_column, label_column, split="validation"
    )
    eval_dataloader = torch.utils.data.DataLoader(
        eval_dataset,
        batch_size=args.per_device_eval_batch_size,
        shuffle=False,
        collate_fn=collate_fn,
        num_workers=args.dataloader_num_workers,
    )

    if args.eval_only:
        model, eval_dataloader = accelerator.prepare(model, eval_dataloader)
        metrics, _ = evaluate(model, eval_dataloader, accelerator, channels_last=args.channels_last)
        results = {f"eval_{k}": v for k, v in metrics.items()}
        results.update(
            model=args.model_name_or_path,
            world_size=accelerator.num_processes,
            wall_time_s=time.time() - _PROCESS_START,
        )
        logger.info(
            f"Eval-only: top-1 {metrics['top1']:.3f}%  top-5 {metrics['top5']:.3f}%  "
            f"loss {metrics['loss']:.4f}  ({metrics['num_samples']} images)"
        )
        if accelerator.is_main_process:
            Path(args.output_dir, "eval_results.json").write_text(
                json.dumps(results, indent=2, default=_json_default)
            )
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return results

    if "train" not in raw:
        raise ValueError(
            "No training split; pass --train_dir or a dataset with a train split (or --eval_only)."
        )
    train_transform = build_train_transform(args)
    train_dataset = ImageClassificationDataset(
        raw["train"], image_column, label_column, transform=train_transform, seed=args.seed, split="train"
    )
    train_dataloader = torch.utils.data.DataLoader(
        train_dataset,
        batch_size=args.per_device_train_batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=collate_fn,
        num_workers=args.dataloader_num_workers,
    )

    # ---------------------------------------------------------------- optimisation
    batch_size = global_batch_size(
        args.per_device_train_batch_size, accelerator.num_processes, args.gradient_accumulation_steps
    )
    lrs = scale_learning_rates(
        args.lr_base,
        args.min_lr_base,
        args.warmup_lr_base,
        batch_size,
        args.lr_base_size,
        args.lr_base_scale,
        args.learning_rate,
    )
    optimizer = build_optimizer(model, args, lrs["lr"])
    mixup = build_mixup(args, len(label_names))
    criterion = build_criterion(args, mixup)
    model_ema = None
    if args.model_ema:
        from timm.utils import ModelEmaV3

        model_ema = ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup)

    model, optimizer, train_dataloader, eval_dataloader = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader
    )
    if model_ema is not None:
        model_ema.to(accelerator.device)
        accelerator.register_for_checkpointing(model_ema)

    batches_per_epoch = len(train_dataloader)
    if batches_per_epoch == 0:
        raise ValueError("The training set is smaller than one global batch; lower the batch size.")
    updates_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    if args.max_train_steps is None:
        args.max_train_steps = max(1, int(round(args.num_train_epochs * updates_per_epoch)))
    num_epochs = math.ceil(args.max_train_steps / updates_per_epoch)
    scheduler = build_scheduler(optimizer, args, lrs, updates_per_epoch, args.max_train_steps)

    hparams = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
    hparams.update(
        global_batch_size=batch_size, peak_lr=lrs["lr"], min_lr=lrs["min_lr"], warmup_lr=lrs["warmup_lr"]
    )
    if args.with_tracking:
        accelerator.init_trackers("run_classification", config=hparams)

    # ---------------------------------------------------------------- resume
    completed_steps, history, eval_history = 0, [], []
    resume_path = None
    if args.resume_from_checkpoint:
        if args.resume_from_checkpoint == "latest":
            resume_path = find_latest_checkpoint(args.output_dir)
            if resume_path is None:
                logger.warning(
                    f"--resume_from_checkpoint latest: no checkpoint in {args.output_dir}; starting afresh."
                )
        else:
            resume_path = Path(args.resume_from_checkpoint)
            if not (resume_path / TRAINING_STATE).is_file():
                raise FileNotFoundError(
                    f"{resume_path} is not a checkpoint of this script (no {TRAINING_STATE})."
                )
    if resume_path is not None:
        accelerator.load_state(str(resume_path))
        state = json.loads((resume_path / TRAINING_STATE).read_text())
        if state.get("global_batch_size") not in (None, batch_size):
            logger.warning(
                f"The checkpoint was trained with global batch {state['global_batch_size']}, "
                f"now {batch_size}."
            )
        completed_steps = int(state["completed_steps"])
        history, eval_history = state.get("history", []), state.get("eval_history", [])
        logger.info(f"Resumed from {resume_path} at update {completed_steps}.")
    starting_epoch = completed_steps // updates_per_epoch
    skip_batches = (completed_steps % updates_per_epoch) * args.gradient_accumulation_steps

    # ---------------------------------------------------------------- train
    logger.info("***** Running training *****")
    logger.info(
        f"  Train / eval images = {len(train_dataset)} / {len(eval_dataset)}; classes = {len(label_names)}"
    )
    logger.info(f"  Epochs = {num_epochs}; updates = {args.max_train_steps} ({updates_per_epoch} per epoch)")
    logger.info(
        f"  Global batch = {batch_size} (per device {args.per_device_train_batch_size} x "
        f"{accelerator.num_processes} process(es) x {args.gradient_accumulation_steps} accumulation)"
    )
    logger.info(
        f"  Peak lr = {lrs['lr']:.3g} (lr_base {args.lr_base:g} x {lrs['factor']:.4g}), min lr "
        f"{lrs['min_lr']:.3g}, warmup lr {lrs['warmup_lr']:.3g}, {args.lr_scheduler_type} schedule"
    )
    progress = tqdm(
        total=args.max_train_steps,
        initial=completed_steps,
        disable=not accelerator.is_local_main_process,
        desc="train",
        dynamic_ncols=True,
    )
    train_start = time.time()
    window_loss, window_images, window_start = 0.0, 0, time.time()
    update_losses = []

    def state_dict_for_checkpoint(epoch_done: int) -> dict:
        return dict(
            completed_steps=completed_steps,
            epoch=epoch_done,
            global_batch_size=batch_size,
            world_size=accelerator.num_processes,
            history=history,
            eval_history=eval_history,
        )

    def run_eval(epoch: int) -> tuple[dict, dict, torch.Tensor]:
        """Evaluate the model (and its EMA); returns the record, the metrics of the weights to export, and
        those weights' top-1 predictions."""
        metrics, predictions = evaluate(model, eval_dataloader, accelerator, channels_last=args.channels_last)
        record = {"epoch": epoch, "step": completed_steps, **{f"eval_{k}": v for k, v in metrics.items()}}
        if model_ema is not None:
            metrics, predictions = evaluate(
                model_ema.module, eval_dataloader, accelerator, channels_last=args.channels_last
            )
            record.update({f"eval_ema_{k}": v for k, v in metrics.items()})
        eval_history.append(record)
        logger.info(
            f"epoch {epoch}: " + "  ".join(f"{k} {v:.4g}" for k, v in record.items() if k.startswith("eval_"))
        )
        if args.with_tracking:
            accelerator.log({k: v for k, v in record.items() if k.startswith("eval_")}, step=completed_steps)
        return record, metrics, predictions

    for epoch in range(starting_epoch, num_epochs):
        if completed_steps >= args.max_train_steps:
            break
        model.train()
        train_dataset.set_epoch(epoch)
        if epoch == starting_epoch and skip_batches:
            active_dataloader = accelerator.skip_first_batches(train_dataloader, skip_batches)
        else:
            active_dataloader = train_dataloader
        active_dataloader.set_epoch(epoch)
        batch_index = skip_batches if epoch == starting_epoch else 0
        for batch in active_dataloader:
            # Randomness of this step (drop-path, mixup) is seeded from (seed, epoch, batch, rank): a resumed
            # run replays exactly what the uninterrupted run did, whatever the loader pre-fetched.
            seed_everything_from(
                sample_seed(args.seed, 1_000_003, epoch, batch_index, accelerator.process_index)
            )
            batch_index += 1
            scheduler.step_update(completed_steps)
            with accelerator.accumulate(model):
                pixel_values, labels = batch["pixel_values"], batch["labels"]
                if args.channels_last:
                    pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
                targets = labels
                if mixup is not None:
                    pixel_values, targets = mixup(pixel_values, labels)
                with accelerator.autocast():
                    logits = model(pixel_values=pixel_values).logits
                loss = criterion(logits.float(), targets)
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.clip_grad is not None:
                    if args.clip_mode == "norm":
                        accelerator.clip_grad_norm_(model.parameters(), args.clip_grad)
                    else:
                        accelerator.clip_grad_value_(model.parameters(), args.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            update_losses.append(loss.detach().float())
            if not accelerator.sync_gradients:
                continue
            # ------------------------------------------------ one optimizer update done
            completed_steps += 1
            if model_ema is not None:
                model_ema.update(accelerator.unwrap_model(model), step=completed_steps)
            step_loss = accelerator.reduce(torch.stack(update_losses).mean(), reduction="mean").item()
            update_losses = []
            lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_scale", 1.0)
            history.append({"step": completed_steps, "loss": step_loss, "lr": lr})
            window_loss += step_loss
            window_images += batch_size
            progress.update(1)
            progress.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
            if completed_steps % args.logging_steps == 0 or completed_steps == args.max_train_steps:
                elapsed = time.time() - window_start
                n = completed_steps % args.logging_steps or args.logging_steps
                record = {
                    "train_loss": window_loss / n,
                    "lr": lr,
                    "epoch": epoch,
                    "images_per_s": window_images / max(elapsed, 1e-9),
                }
                logger.info(
                    f"step {completed_steps}/{args.max_train_steps}: loss {record['train_loss']:.4f} "
                    f"lr {lr:.3e} {record['images_per_s']:.0f} img/s"
                )
                if args.with_tracking:
                    accelerator.log(record, step=completed_steps)
                window_loss, window_images, window_start = 0.0, 0, time.time()
            if isinstance(args.checkpointing_steps, int) and completed_steps % args.checkpointing_steps == 0:
                save_checkpoint(
                    accelerator,
                    args.output_dir,
                    f"step_{completed_steps}",
                    state_dict_for_checkpoint(epoch),
                    args.checkpoints_total_limit,
                )
            if completed_steps >= args.max_train_steps:
                break
        epoch_finished = completed_steps % updates_per_epoch == 0 or completed_steps >= args.max_train_steps
        last_epoch = completed_steps >= args.max_train_steps
        if (
            epoch_finished
            and not last_epoch
            and args.eval_every_epochs
            and (epoch + 1) % args.eval_every_epochs == 0
        ):
            run_eval(epoch)
        if args.checkpointing_steps == "epoch" and epoch_finished:
            save_checkpoint(
                accelerator,
                args.output_dir,
                f"epoch_{epoch}",
                state_dict_for_checkpoint(epoch + 1),
                args.checkpoints_total_limit,
            )
    progress.close()
    train_time = time.time() - train_start

    # ---------------------------------------------------------------- final evaluation and export
    final, metrics, top1_predictions = run_eval(num_epochs - 1)
    export_model, weights_note = accelerator.unwrap_model(model), "final weights of the run"
    if model_ema is not None:
        export_model, weights_note = model_ema.module, f"EMA of the weights (decay {args.model_ema_decay})"

    results = {
        "eval_top1": metrics["top1"],
        "eval_top5": metrics["top5"],
        "eval_loss": metrics["loss"],
        "eval_samples": metrics["num_samples"],
        "train_samples": len(train_dataset),
        "completed_steps": completed_steps,
        "epochs": num_epochs,
        "global_batch_size": batch_size,
        "peak_lr": lrs["lr"],
        "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "num_threads": num_threads,
        "mixed_precision": accelerator.mixed_precision,
        "train_time_s": train_time,
        "skipped_corrupt_images": skipped,
        "resumed_from": str(resume_path) if resume_path else None,
        "final_record": final,
    }
    process_ranks = accelerator.gather(torch.tensor([accelerator.process_index], device=accelerator.device))
    results["process_ranks"] = sorted(int(r) for r in process_ranks.cpu())

    if accelerator.is_main_process:
        out = Path(args.output_dir)
        export_model.save_pretrained(out, safe_serialization=True)
        image_processor.save_pretrained(out)

        pipeline_top1 = pipeline_agreement = None
        n_pipe = min(args.pipeline_eval_samples, len(raw["validation"]))
        if n_pipe > 0:
            from transformers import pipeline as hf_pipeline

            pipe = hf_pipeline("image-classification", model=str(out), device=accelerator.device)
            subset = raw["validation"].select(range(n_pipe))
            images = [img.convert("RGB") for img in subset[image_column]]
            outputs = pipe(images, top_k=1, batch_size=args.per_device_eval_batch_size)
            predicted = [label2id[o[0]["label"]] for o in outputs]
            truth = list(subset[label_column])
            pipeline_top1 = 100.0 * sum(p == t for p, t in zip(predicted, truth, strict=True)) / n_pipe
            pipeline_agreement = (
                100.0
                * sum(p == int(q) for p, q in zip(predicted, top1_predictions[:n_pipe].tolist(), strict=True))
                / n_pipe
            )
            logger.info(
                f"pipeline('image-classification') on {n_pipe} raw validation images: top-1 "
                f"{pipeline_top1:.2f}%, agrees with the eval loop on {pipeline_agreement:.2f}%"
            )
        results.update(
            pipeline_top1=pipeline_top1, pipeline_agreement=pipeline_agreement, pipeline_samples=n_pipe
        )
        results["wall_time_s"] = time.time() - _PROCESS_START

        cfg = export_model.config
        aug = (
            "none (the eval preprocessing)"
            if train_transform is None
            else "; ".join(str(t) for t in getattr(train_transform, "transforms", [train_transform]))
        )
        if mixup is not None:
            aug += f"; mixup {args.mixup} / cutmix {args.cutmix} (switch prob {args.mixup_switch_prob})"
        recipe_keys = [
            "recipe",
            "image_size",
            "crop_pct",
            "interpolation",
            "num_train_epochs",
            "max_train_steps",
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "lr_base",
            "lr_base_size",
            "lr_base_scale",
            "min_lr_base",
            "warmup_lr_base",
            "warmup_epochs",
            "lr_scheduler_type",
            "weight_decay",
            "opt_eps",
            "opt_betas",
            "layer_decay",
            "clip_grad",
            "smoothing",
            "mixup",
            "cutmix",
            "auto_augment",
            "color_jitter",
            "reprob",
            "model_ema",
            "seed",
        ]
        recipe = {k: getattr(args, k) for k in recipe_keys}
        recipe.update(
            global_batch_size=batch_size,
            peak_lr=round(lrs["lr"], 8),
            optimizer="AdamW",
            mixed_precision=accelerator.mixed_precision,
            processes=accelerator.num_processes,
        )
        info = dict(
            model_name=out.absolute().name,
            repo_or_path=repo_id or str(out),
            top1=metrics["top1"],
            top5=metrics["top5"],
            eval_loss=metrics["loss"],
            num_eval_samples=metrics["num_samples"],
            num_train_samples=len(train_dataset),
            pipeline_top1=pipeline_top1,
            pipeline_agreement=pipeline_agreement,
            pipeline_samples=n_pipe,
            weights=weights_note,
            dataset_name=source["name"],
            dataset_builtin=source["builtin"],
            dataset_description=source["description"],
            num_labels=len(label_names),
            label_names=label_names,
            preprocessing=(
                f"resize shortest edge to int({args.image_size} / crop_pct {args.crop_pct}) "
                f"({args.interpolation}), center crop {args.image_size}, rescale 1/255, normalise mean "
                f"{list(args.image_mean)} std {list(args.image_std)}"
            ),
            augmentation=aug,
            preset=preset_name,
            arch_note=f" with overrides {arch_overrides}" if arch_overrides else "",
            hidden_sizes=cfg.hidden_sizes,
            depths=cfg.depths,
            num_attention_heads=cfg.num_attention_heads,
            num_clusters=cfg.num_clusters,
            drop_path_rate=cfg.drop_path_rate,
            num_parameters=num_parameters,
            command=command,
            recipe=recipe,
            hardware=hardware_description(accelerator, num_threads),
            wall_time_s=results["wall_time_s"],
            train_time_s=train_time,
            completed_steps=completed_steps,
        )
        write_model_card(out / "README.md", info)
        (out / "all_results.json").write_text(json.dumps(results, indent=2, default=_json_default))
        (out / "train_log.json").write_text(
            json.dumps(
                dict(
                    world_size=accelerator.num_processes,
                    global_batch_size=batch_size,
                    history=history,
                    eval_history=eval_history,
                ),
                indent=1,
                default=_json_default,
            )
        )
        logger.info(
            f"Held-out top-1 {metrics['top1']:.2f}%, top-5 {metrics['top5']:.2f}% on "
            f"{metrics['num_samples']} images; wall time {results['wall_time_s']:.1f} s; saved to {out}"
        )
        if args.push_to_hub:
            from huggingface_hub import HfApi

            HfApi(token=args.hub_token).upload_folder(
                repo_id=repo_id,
                folder_path=str(out),
                commit_message="run_classification.py",
                ignore_patterns=["step_*", "epoch_*", ".tmp_*", "runs/*", "*/random_states_*"],
            )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


def _teardown(exit_code: int) -> None:
    """Flush everything, then leave without running interpreter/gloo teardown, which can abort a finished
    multi-process CPU run ("terminate called without an active exception")."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


if __name__ == "__main__":
    main()
    _teardown(0)

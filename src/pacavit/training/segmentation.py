"""The semantic-segmentation task's recipes, command-line flags and builders (used by
`examples/run_semantic_segmentation.py`; importable so that they are unit-tested without running the script).

- `RECIPES` / `BASE_DEFAULTS`: "digit_scenes" (the default run: built-in scenes of digit scans) and
  "paper_ade20k" (the original PaCa-head / UperNet ADE20K config); precedence explicit flag > --recipe >
  BASE_DEFAULTS.
- `parse_args`: the script's flags (task flags here, shared ones from `pacavit.training.args`); the `--id2label` file
  is read and checked there (`load_id2label`), before any data is loaded.
- `build_model` (a preset from scratch, ImageNet weights with new heads, or a segmentation checkpoint),
  `build_transform` (mmseg's paired training pipeline / the evaluation resize), `build_image_processor` (what the
  saved folder preprocesses with), `head_lr_multipliers` (the original's lr x10 for the heads).
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..configuration_pacavit import PaCaViTConfig
from ..configuration_pacavit_segmentation import DECODE_HEAD_TYPES, PaCaViTSegmentationConfig
from ..data.segmentation import DIGIT_SCENE_LABELS, SegmentationTransform
from ..modeling_pacavit_segmentation import PaCaViTForSemanticSegmentation
from ..preprocessing import segmentation_image_processor
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
    decode_head="paca",
    decode_head_hidden_size=None,
    crop_size=512,
    scale=[2048, 512],
    ratio_range=[0.5, 2.0],
    flip_prob=0.5,
    photometric=True,
    head_lr_mult=10.0,
    eval_mode="whole",
)
RECIPES = {
    # the default, offline run: 64x64 digit scenes, a third-width, shallower PaCa-Tiny
    "digit_scenes": dict(
        hidden_sizes=[32, 64, 96, 128],
        depths=[1, 1, 2, 1],
        num_attention_heads=[1, 2, 3, 4],
        num_clusters=[32, 32, 32, 0],
        decode_head_hidden_size=48,
        crop_size=64,
        scale=[256, 64],
        # no rescale/flip/photometric augmentation: in a 5-minute budget the net is still learning the digits'
        # identities (a mirrored digit is another glyph anyway); with them mIoU stayed at the all-background
        # baseline for the first ~700 updates (measured)
        ratio_range=[1.0, 1.0],
        flip_prob=0.0,
        photometric=False,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=50,
        num_train_epochs=16,  # 1,000 scenes: 992 updates
        lr_base=4e-3,
        lr_base_size=16,
        min_lr_base=0.0,
        warmup_lr_base=4e-6,
        warmup_epochs=0.4,
        lr_scheduler_type="poly",
        weight_decay=0.01,
        # the paper's x10 for the head matters here too: at x1 the decode logits stay at the background prior
        # long after the cluster logits segment (measured)
        head_lr_mult=10.0,
    ),
    # segmentation/configs/paca_vit/paca_head/pacahead_pacavit_*_512x512_160k_ade20k.py (+ _base_ schedule and
    # ADE20K pipeline): AdamW 6e-5 / wd 0.01 / no decay on norms; custom_keys lr x10 for "head" and
    # "clustering.4"; LinearLR 1,500 iters then PolyLR(power 1, eta_min 0) to 160k; batch 2 x 8 GPUs.
    "paper_ade20k": dict(
        per_device_train_batch_size=2,
        per_device_eval_batch_size=1,
        lr_base=6e-5,
        lr_base_size=16,
        min_lr_base=0.0,
        warmup_lr_base=6e-11,  # LinearLR start_factor 1e-6
        num_warmup_steps=1500,  # iteration-based, as the original schedule
        lr_scheduler_type="poly",
        weight_decay=0.01,
        head_lr_mult=10.0,
    ),
}
DEFAULT_RECIPE = "digit_scenes"
IGNORE_INDEX = 255  # mmseg's: padding and, with --do_reduce_labels, ADE20K's "other"


def build_parser() -> RecipeArgumentParser:
    parser = RecipeArgumentParser(
        recipes=RECIPES,
        base_defaults=BASE_DEFAULTS,
        default_recipe=DEFAULT_RECIPE,
        description="Train/evaluate PaCa-ViT semantic segmentation (PaCa head or UperNet) with Accelerate "
        "(default: built-in digit scenes).",
    )
    g = parser.add_argument_group("data")
    g.add_argument("--dataset_name", default=None, help="Hub id with image/annotation columns (default: built-in).")
    g.add_argument("--dataset_config_name", default=None)
    g.add_argument("--train_dir", default=None, help="Folder with images/ and masks/ (one class index per pixel).")
    g.add_argument("--validation_dir", default=None)
    g.add_argument("--image_column", default="image")
    g.add_argument("--annotation_column", default="annotation")
    g.add_argument(
        "--id2label",
        default=None,
        help='JSON file {"0": name, ..., "K-1": name}: 2 to 255 classes (255 is the ignore index). Built-in data: '
        "background + 10 digits.",
    )
    g.add_argument(
        "--do_reduce_labels",
        action="store_true",
        help="ADE20K-style masks: 0 = other -> ignored, 1..K -> classes 0..K-1 (not for masks numbered from 0).",
    )
    g.add_argument("--max_train_samples", type=int, default=None)
    g.add_argument("--max_eval_samples", type=int, default=None)
    add_image_check_arguments(g)  # --verify_images / --skip_corrupt_images (images and masks)
    g.add_argument("--crop_size", type=int, default=None)
    g.add_argument("--scale", type=int, nargs=2, default=None, help="(long, short) edge of the keep-ratio resize.")
    g.add_argument("--ratio_range", type=float, nargs=2, default=None)
    g.add_argument("--flip_prob", type=float, default=None)
    g.add_argument("--photometric", type=lambda s: s.lower() in ("1", "true", "yes"), default=None)
    m = parser.add_argument_group("model")
    m.add_argument("--model_name_or_path", default=None, help="A PaCa-ViT (ImageNet) or segmentation checkpoint.")
    add_architecture_arguments(m, clusters_help="Dense-task clusters (original: 200 200 200 0).")
    m.add_argument("--decode_head", choices=list(DECODE_HEAD_TYPES), default=None)
    m.add_argument("--decode_head_hidden_size", type=int, default=None)
    m.add_argument(
        "--head_lr_mult", type=float, default=None, help="lr factor for the heads and the last clustering layers."
    )
    e = parser.add_argument_group("evaluation")
    e.add_argument("--eval_mode", choices=["whole", "slide"], default=None)
    e.add_argument("--slide_stride", type=int, default=None, help="Default: 2/3 of --crop_size (mmseg 341 for 512).")
    e.add_argument("--eval_only", action="store_true")
    e.add_argument("--num_figure_scenes", type=int, default=4)
    add_optimization_arguments(parser)
    add_running_arguments(parser, output_dir="runs/semantic-segmentation")
    return parser


def parse_args(argv: list[str] | None = None):
    args = validate_training_args(build_parser().parse_args(argv))
    user_data = args.dataset_name or args.train_dir
    if user_data and not args.id2label:  # before any download
        raise Id2LabelError(
            '--dataset_name/--train_dir need --id2label: a JSON file {"0": "background", "1": "cat", ...} naming '
            "the class of each mask value."
        )
    if args.id2label and not user_data:
        raise Id2LabelError(
            f"--id2label {args.id2label!r} is given without --dataset_name or --train_dir: the built-in data has its "
            f"own {len(DIGIT_SCENE_LABELS)} classes. Drop --id2label, or pass your data with it."
        )
    if args.id2label:  # a broken class list fails here, before any data is loaded
        load_id2label(args.id2label)
    return args


class Id2LabelError(ValueError):
    """An `--id2label` file that is not a usable class list; the message names the file, the problem and the fix."""


def _without_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise Id2LabelError(f"the key(s) {repeated} appear more than once (JSON keeps only the last)")
    return dict(pairs)


def load_id2label(path) -> dict[int, str]:
    """The `--id2label` file as `{index: name}`, sorted by index.

    It holds a JSON object `{"0": "background", "1": "cat", ...}`: the keys are the class indices of the masks (after
    `--do_reduce_labels`). Refused with an `Id2LabelError` naming the file: unreadable or not JSON, another JSON
    value (a list of names too: the script reads an object), repeated keys, keys that are not integers (a
    `{name: index}` label2id file is named as such), names that are not strings or repeat, indices that are not
    exactly 0..K-1, fewer than 2 or more than 255 classes (class 255 would be the ignore index, `IGNORE_INDEX`)."""
    where = f"--id2label {str(path)!r}"
    example = 'an object {"0": "background", "1": "cat", ...}'
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise Id2LabelError(
            f"{where}: cannot read the file ({type(error).__name__}: {reason}). Give a JSON file with {example}."
        ) from error
    try:
        data = json.loads(text, object_pairs_hook=_without_duplicate_keys)
    except json.JSONDecodeError as error:
        raise Id2LabelError(
            f"{where} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}). It must hold "
            f"{example}."
        ) from error
    except Id2LabelError as error:
        raise Id2LabelError(f"{where}: {error}. Give each class index once.") from error
    if not isinstance(data, dict):
        kind = {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(data), "null")
        hint = (
            ' For a list of names, write {"0": first name, "1": second name, ...}.' if isinstance(data, list) else ""
        )
        raise Id2LabelError(f"{where} holds a JSON {kind}; it must hold {example}.{hint}")
    if isinstance(data.get("id2label"), dict):
        raise Id2LabelError(
            f"{where} looks like a model config (it has an 'id2label' entry); give a file holding only that object."
        )
    id2label, keys = {}, {}
    for key, name in data.items():
        try:
            index = int(key)
        except ValueError:
            index = None
        if index is None:
            looks_inverted = all(isinstance(v, int) and not isinstance(v, bool) for v in data.values())
            raise Id2LabelError(
                f"{where}: the key {key!r} is not a class index (an integer)."
                + (
                    " The file maps names to indices (label2id); --id2label takes indices to names: swap keys and "
                    "values."
                    if looks_inverted
                    else f" It must hold {example}."
                )
            )
        if not isinstance(name, str) or not name.strip():
            raise Id2LabelError(f"{where}: class {index} has the name {name!r}; class names are non-empty strings.")
        if index in id2label:
            raise Id2LabelError(f"{where}: class {index} is given twice (keys {keys[index]!r} and {key!r}).")
        id2label[index], keys[index] = name, key
    count = len(id2label)
    if count < 2:
        raise Id2LabelError(
            f"{where} lists {count} class(es); semantic segmentation needs at least 2 (e.g. background and your "
            "class)."
        )
    missing = sorted(set(range(count)) - set(id2label))
    if missing:
        extra = sorted(set(id2label) - set(range(count)))
        one_based = sorted(id2label) == list(range(1, count + 1))
        raise Id2LabelError(
            f"{where}: the class indices must be 0..{count - 1} for {count} classes (one per index, the values of the "
            f"masks); {_listing_ints(missing)} missing, {_listing_ints(extra)} beyond."
            + (
                " They are numbered from 1: if 0 in your masks means 'other' or unlabelled, number the classes from 0 "
                "and pass --do_reduce_labels; otherwise add class 0."
                if one_based
                else " Add the missing classes or renumber them."
            )
        )
    if count > IGNORE_INDEX:
        raise Id2LabelError(
            f"{where} lists {count} classes; at most {IGNORE_INDEX} are supported: mask value {IGNORE_INDEX} marks "
            "ignored pixels (padding, and 'other' with --do_reduce_labels), so class 255 could not be told apart."
        )
    names = [id2label[i] for i in range(count)]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise Id2LabelError(
            f"{where}: the name(s) {repeated[:5]} are given to several classes; each class needs its own name (the "
            "model's label2id maps names back to classes)."
        )
    return {i: id2label[i] for i in range(count)}


def _listing_ints(values: list[int]) -> str:
    if not values:
        return "none"
    return ", ".join(map(str, values[:8])) + (f" ... ({len(values)} in all)" if len(values) > 8 else "")


def build_model(args, id2label: dict[int, str]) -> PaCaViTForSemanticSegmentation:
    """A segmentation checkpoint (`--model_name_or_path` of a segmentation folder, with `--eval_only`), ImageNet
    weights with new heads (`from_pretrained_backbone`: cluster layers whose shape changes are re-initialised and
    named), or `--preset` from scratch; the architecture flags override the preset's."""
    labels = dict(num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()})
    overrides = architecture_overrides(args)
    head = dict(decode_head_type=args.decode_head, decode_head_hidden_size=args.decode_head_hidden_size)
    if args.model_name_or_path:
        config = PaCaViTSegmentationConfig.from_pretrained(args.model_name_or_path)
        if config.model_type == PaCaViTSegmentationConfig.model_type and args.eval_only:
            if config.num_labels != len(id2label):  # scoring it would compare unrelated class indices
                raise ValueError(
                    f"--model_name_or_path {args.model_name_or_path!r} predicts {config.num_labels} classes, the "
                    f"data has {len(id2label)} (--id2label, or the built-in data). Evaluate it on data labelled "
                    "with its classes: pass the --id2label it was trained with (its config.json's id2label)."
                )
            return PaCaViTForSemanticSegmentation.from_pretrained(args.model_name_or_path)
        return PaCaViTForSemanticSegmentation.from_pretrained_backbone(
            args.model_name_or_path, **labels, **overrides, **head
        )
    backbone = PaCaViTConfig.from_preset(args.preset, **overrides)
    return PaCaViTForSemanticSegmentation(PaCaViTSegmentationConfig.from_backbone_config(backbone, **labels, **head))


def build_transform(args, num_labels: int, train: bool) -> SegmentationTransform:
    """mmseg's paired training pipeline (`train=True`) or the evaluation resize, with ImageNet normalisation."""
    return SegmentationTransform(
        train=train,
        crop_size=args.crop_size,
        scale=args.scale,
        image_mean=IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_DEFAULT_STD,
        num_labels=num_labels,
        reduce_labels=args.do_reduce_labels,
        ratio_range=args.ratio_range,
        flip_prob=args.flip_prob,
        photometric=args.photometric,
        ignore_index=IGNORE_INDEX,
    )


def build_image_processor(args):
    """What the saved folder preprocesses with: resize to the training crop (`pacavit.preprocessing`)."""
    return segmentation_image_processor(crop_size=args.crop_size, do_reduce_labels=args.do_reduce_labels)


def head_lr_multipliers(config: PaCaViTSegmentationConfig, head_lr_mult: float) -> dict[str, float]:
    """The original's `custom_keys` "head" and "clustering.4" (the decode/auxiliary heads and the backbone's
    cluster-logit layers, `clustering.4` of the conv clustering; the teacher's are not matched) at `head_lr_mult`
    times the lr; as `build_optimizer`'s `lr_multipliers`. mmcv matches `custom_keys` as substrings, so "head"
    covers UperNet's auxiliary head too."""
    if head_lr_mult == 1.0:
        return {}
    multipliers = {"decode_head.*": head_lr_mult}
    if config.use_auxiliary_head and config.decode_head_type == "upernet":
        multipliers["auxiliary_head.*"] = head_lr_mult
    if config.clustering_type == "conv" and any(config.num_clusters) and not config.use_clustering_teacher:
        multipliers["*attention.clustering.to_clusters.*"] = head_lr_mult
    return multipliers


__all__ = [
    "BASE_DEFAULTS",
    "DEFAULT_RECIPE",
    "IGNORE_INDEX",
    "RECIPES",
    "build_image_processor",
    "build_model",
    "build_parser",
    "build_transform",
    "Id2LabelError",
    "head_lr_multipliers",
    "load_id2label",
    "parse_args",
]

#!/usr/bin/env python
"""Train and evaluate PaCa-ViT semantic segmentation (the paper's PaCa head or UperNet) with 🤗 Accelerate.

With no arguments it runs offline on a 2-core CPU in a few minutes: a reduced-width PaCa-ViT with the PaCa head on
built-in scenes of real handwritten digit scans (scikit-learn), scored on held-out scenes (mIoU, aAcc, per-class
IoU at the original label resolution), saved as a Hub-ready folder (remote code, SegformerImageProcessor, model
card) that `pipeline("image-segmentation", model=folder)` loads, plus a figure of a few held-out predictions::

    python examples/run_semantic_segmentation.py

The paper's ADE20K recipe (AdamW 6e-5, poly to 160k iterations after a 1,500-iteration warm-up, crop 512,
batch 16 in total, lr x10 for the head and the last clustering layers)::

    accelerate launch --num_processes 8 examples/run_semantic_segmentation.py --recipe paper_ade20k \\
        --model_name_or_path ivmcl/pacavit-tiny --num_clusters 200 200 200 0 \\
        --dataset_name scene_parse_150 --do_reduce_labels --output_dir runs/pacahead-tiny-ade20k

Evaluate a converted checkpoint: `--eval_only --model_name_or_path <folder> --eval_mode slide`.
"""

from __future__ import annotations

import pacavit_openmp_guard  # noqa: F401  first: before torch loads OpenMP

import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from accelerate.logging import get_logger  # noqa: E402
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # noqa: E402

from pacavit import PaCaViTForSemanticSegmentation, PaCaViTSegmentationConfig  # noqa: E402
from pacavit import training as T  # noqa: E402
from pacavit.convert_segmentation import save_segmentation_image_processor  # noqa: E402
from pacavit.data.common import check_splits_not_empty, limit_samples  # noqa: E402
from pacavit.data.segmentation import (  # noqa: E402
    DIGIT_SCENE_LABELS,
    SegmentationTransform,
    TransformedSegmentationDataset,
    collate_segmentation,
    load_digit_scenes,
    load_segmentation_dataset,
)
from pacavit.metrics.segmentation import MeanIoU, per_image_confusion  # noqa: E402
from pacavit.model_card import CardMetric, hardware_section, recipe_section, write_model_card  # noqa: E402

logger = get_logger(__name__)

BASE_DEFAULTS = dict(
    T.OPTIMIZATION_DEFAULTS,
    **T.ARCHITECTURE_DEFAULTS,
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
        lr_scheduler_type="poly",
        weight_decay=0.01,
        head_lr_mult=10.0,
    ),
}


def parse_args(argv=None):
    parser = T.RecipeArgumentParser(recipes=RECIPES, base_defaults=BASE_DEFAULTS, default_recipe="digit_scenes",
                                    description=__doc__)
    g = parser.add_argument_group("data")
    g.add_argument("--dataset_name", default=None, help="Hub id with image/annotation columns (default: built-in).")
    g.add_argument("--dataset_config_name", default=None)
    g.add_argument("--train_dir", default=None, help="Folder with images/ and masks/ (one class index per pixel).")
    g.add_argument("--validation_dir", default=None)
    g.add_argument("--image_column", default="image")
    g.add_argument("--annotation_column", default="annotation")
    g.add_argument("--id2label", default=None, help="JSON file {index: name} (built-in data: background + 10 digits).")
    g.add_argument("--do_reduce_labels", action="store_true", help="ADE20K-style masks: 0 = other -> ignored.")
    g.add_argument("--max_train_samples", type=int, default=None)
    g.add_argument("--max_eval_samples", type=int, default=None)
    g.add_argument("--crop_size", type=int, default=None)
    g.add_argument("--scale", type=int, nargs=2, default=None, help="(long, short) edge of the keep-ratio resize.")
    g.add_argument("--ratio_range", type=float, nargs=2, default=None)
    g.add_argument("--flip_prob", type=float, default=None)
    g.add_argument("--photometric", type=lambda s: s.lower() in ("1", "true", "yes"), default=None)
    m = parser.add_argument_group("model")
    m.add_argument("--model_name_or_path", default=None, help="A PaCa-ViT (ImageNet) or segmentation checkpoint.")
    T.add_architecture_arguments(m, clusters_help="Dense-task clusters (original: 200 200 200 0).")
    m.add_argument("--decode_head", choices=["paca", "upernet"], default=None)
    m.add_argument("--decode_head_hidden_size", type=int, default=None)
    m.add_argument("--head_lr_mult", type=float, default=None, help="lr factor for the heads and the last clustering layers.")
    e = parser.add_argument_group("evaluation")
    e.add_argument("--eval_mode", choices=["whole", "slide"], default=None)
    e.add_argument("--slide_stride", type=int, default=None, help="Default: 2/3 of --crop_size (mmseg 341 for 512).")
    e.add_argument("--eval_only", action="store_true")
    e.add_argument("--num_figure_scenes", type=int, default=4)
    T.add_optimization_arguments(parser)
    T.add_running_arguments(parser, output_dir="runs/semantic-segmentation")
    return T.validate_training_args(parser.parse_args(argv))


# --------------------------------------------------------------------------------------------
# Model and data
# --------------------------------------------------------------------------------------------
def build_model(args, id2label):
    labels = dict(num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()})
    overrides = {k: v for k, v in dict(hidden_sizes=args.hidden_sizes, depths=args.depths, num_attention_heads=args.num_attention_heads,
                                       num_clusters=args.num_clusters).items() if v is not None}
    head = dict(decode_head_type=args.decode_head, decode_head_hidden_size=args.decode_head_hidden_size)
    if args.model_name_or_path:
        config = PaCaViTSegmentationConfig.from_pretrained(args.model_name_or_path)
        if config.model_type == "pacavit_segmentation" and args.eval_only:
            return PaCaViTForSemanticSegmentation.from_pretrained(args.model_name_or_path)
        # ImageNet weights: new heads; cluster-count changes re-initialise (and name) the cluster layers
        return PaCaViTForSemanticSegmentation.from_pretrained_backbone(args.model_name_or_path, **labels, **overrides, **head)
    from pacavit import PaCaViTConfig

    backbone = PaCaViTConfig.from_preset(args.preset, **overrides).to_dict()
    for key in ("model_type", "transformers_version", "id2label", "label2id", "num_labels"):
        backbone.pop(key, None)
    return PaCaViTForSemanticSegmentation(PaCaViTSegmentationConfig(**backbone, **labels, **head))


def load_data(args):
    if args.dataset_name or args.train_dir:
        raw = load_segmentation_dataset(args.dataset_name, args.train_dir, args.validation_dir, args.image_column,
                                        args.annotation_column, args.dataset_config_name)
        if not args.id2label:
            raise ValueError("Give --id2label (a JSON file {index: name}) for your classes.")
        id2label = {int(k): v for k, v in json.loads(Path(args.id2label).read_text()).items()}
        name = args.dataset_name or Path(args.train_dir).name
    else:
        raw, id2label, name = load_digit_scenes(), dict(enumerate(DIGIT_SCENE_LABELS)), "pacavit digit scenes"
    for split, limit in (("train", args.max_train_samples), ("validation", args.max_eval_samples)):
        if limit is not None:
            raw[split] = raw[split].select(range(limit_samples(len(raw[split]), limit, split)))
    # an empty split stops here, naming it and its source (not in 🤗 Datasets or a DataLoader later)
    check_splits_not_empty(raw, args)
    return raw, id2label, name


def transforms(args, num_labels, train):
    return SegmentationTransform(train=train, crop_size=args.crop_size, scale=args.scale, image_mean=IMAGENET_DEFAULT_MEAN,
                                 image_std=IMAGENET_DEFAULT_STD, num_labels=num_labels, reduce_labels=args.do_reduce_labels,
                                 ratio_range=args.ratio_range, flip_prob=args.flip_prob, photometric=args.photometric)


# --------------------------------------------------------------------------------------------
# Evaluation at the original label resolution
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def slide_logits(model, pixel_values, crop: int, stride: int, num_labels: int) -> torch.Tensor:
    """mmseg's slide inference: overlapping crop x crop windows, logits upsampled per window and averaged."""
    batch, _, height, width = pixel_values.shape
    rows = max(math.ceil((height - crop) / stride), 0) + 1
    cols = max(math.ceil((width - crop) / stride), 0) + 1
    summed = pixel_values.new_zeros(batch, num_labels, height, width)
    count = pixel_values.new_zeros(1, 1, height, width)
    for r in range(rows):
        for c in range(cols):
            y1, x1 = min(r * stride, max(height - crop, 0)), min(c * stride, max(width - crop, 0))
            y2, x2 = min(y1 + crop, height), min(x1 + crop, width)
            logits = model(pixel_values[:, :, y1:y2, x1:x2]).logits
            summed[:, :, y1:y2, x1:x2] += F.interpolate(logits, size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)
            count[:, :, y1:y2, x1:x2] += 1
    return summed / count


@torch.no_grad()
def evaluate(model, dataloader, accelerator, args, id2label) -> dict:
    model.eval()
    metric = MeanIoU(len(id2label), 255, id2label)
    for batch in dataloader:
        if args.eval_mode == "slide":
            logits = slide_logits(model, batch["pixel_values"], args.crop_size, args.slide_stride or args.crop_size * 2 // 3, len(id2label))
        else:
            logits = model(batch["pixel_values"]).logits
        labels = batch["labels"]
        labels = list(labels) if isinstance(labels, list) else list(labels.unbind(0))
        predictions = [F.interpolate(l[None], size=t.shape[-2:], mode="bilinear", align_corners=False)[0].argmax(0)
                       for l, t in zip(logits, labels)]
        confusion = per_image_confusion(predictions, labels, len(id2label)).to(accelerator.device)
        metric.add_confusion(accelerator.gather_for_metrics(confusion))  # drops the sampler's padding duplicates
    model.train()
    return metric.compute()


def write_figure(model, dataset, transform, path: Path, count: int) -> None:
    """Image / ground truth / prediction / the PaCa head's cluster map (argmax over clusters) for held-out scenes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model.eval()
    count = min(count, len(dataset))
    fig, axes = plt.subplots(count, 4, figsize=(8, 2 * count), squeeze=False)
    cmap = plt.get_cmap("tab20", model.config.num_labels)
    for row in range(count):
        item = dataset[row]
        sample = transform(item["image"], item["annotation"])
        with torch.no_grad():
            out = model(sample["pixel_values"][None], output_cluster_assignments=True)
        size = sample["labels"].shape
        prediction = F.interpolate(out.logits, size=size, mode="bilinear", align_corners=False)[0].argmax(0)
        panels = [("image", item["image"]), ("ground truth", sample["labels"]), ("prediction", prediction)]
        if out.head_cluster_assignments is not None:
            panels.append(("head clusters", F.interpolate(out.head_cluster_assignments, size=size, mode="nearest")[0].argmax(0)))
        for col, ax in enumerate(axes[row]):
            ax.axis("off")
            if col < len(panels):
                title, value = panels[col]
                ax.imshow(value, cmap=None if col == 0 else cmap, vmin=0, vmax=model.config.num_labels - 1, interpolation="nearest")
                if row == 0:
                    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    args = parse_args(argv)
    # Accelerator, logging, threads, seed, resume point, output-folder guard, Hub preflight
    setup = T.setup_run(args, guard_output_dir=not args.eval_only)
    accelerator, num_threads, resume_path = setup.accelerator, setup.num_threads, setup.resume_path

    raw, id2label, dataset_label = load_data(args)
    model = build_model(args, id2label)
    if accelerator.num_processes > 1:  # the original trains with SyncBN in every head
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if args.activation_checkpointing:
        model.activation_checkpointing_enable()
    train_set = TransformedSegmentationDataset(raw["train"], transforms(args, len(id2label), True), "train")
    eval_transform = transforms(args, len(id2label), False)
    eval_set = TransformedSegmentationDataset(raw["validation"], eval_transform, "validation")
    loader = dict(collate_fn=collate_segmentation, num_workers=args.dataloader_num_workers)
    train_dl = torch.utils.data.DataLoader(train_set, batch_size=args.per_device_train_batch_size, shuffle=True, drop_last=True, **loader)
    eval_dl = torch.utils.data.DataLoader(eval_set, batch_size=args.per_device_eval_batch_size, **loader)

    batch = T.global_batch_size(args.per_device_train_batch_size, accelerator.num_processes, args.gradient_accumulation_steps)
    lrs = T.learning_rates_from_args(args, batch)
    multipliers = {}
    if args.head_lr_mult != 1.0:  # the original's custom_keys "head" and "clustering.4" (the cluster-logit layers)
        multipliers = {"decode_head.*": args.head_lr_mult, "*attention.clustering.to_clusters.*": args.head_lr_mult}
        if model.config.clustering_type != "conv" or all(m == 0 for m in model.config.num_clusters):
            multipliers.pop("*attention.clustering.to_clusters.*")
    optimizer = T.build_optimizer(model, args, lrs["lr"], lr_multipliers=multipliers)
    model, optimizer, train_dl, eval_dl = accelerator.prepare(model, optimizer, train_dl, eval_dl)
    if args.recipe == "paper_ade20k" and args.num_warmup_steps is None:
        args.num_warmup_steps = 1500  # iteration-based, as the original schedule
    run = T.TrainingRun(accelerator, args, len(train_dl), global_batch_size=batch, resume_path=resume_path)
    scheduler = T.build_scheduler(optimizer, args, lrs, run.updates_per_epoch, run.max_steps)
    T.init_tracking(accelerator, args, "run_semantic_segmentation", global_batch_size=batch)
    train_time = 0.0
    if not args.eval_only:
        run.start()
        for epoch in run.epochs():
            model.train()
            for data in run.batches(train_dl, epoch, train_set):
                scheduler.step_update(run.completed_steps)
                with accelerator.accumulate(model):
                    loss = model(**data).loss
                    T.backward_and_step(accelerator, model, loss, optimizer, args.clip_grad, args.clip_mode)
                if not accelerator.sync_gradients:
                    continue
                value = accelerator.reduce(loss.detach(), "mean").item()
                run.update_done(value, T.current_lr(optimizer), epoch, data["pixel_values"].shape[0])
                if run.done:
                    break
            if run.epoch_finished and not run.done and args.eval_every_epochs and (epoch + 1) % args.eval_every_epochs == 0:
                record = evaluate(model, eval_dl, accelerator, args, id2label)
                run.log_eval({f"eval_{k}": v for k, v in record.items() if not k.startswith("per_")} | dict(epoch=epoch + 1, step=run.completed_steps))
            run.epoch_done(epoch)
        train_time = run.finish()
    completed, history, eval_history = run.completed_steps, run.history, run.eval_history

    results = evaluate(model, eval_dl, accelerator, args, id2label)
    unwrapped = accelerator.unwrap_model(model)
    all_results = dict(
        eval_mean_iou=results["mean_iou"], eval_overall_accuracy=results["overall_accuracy"],
        eval_mean_accuracy=results["mean_accuracy"], eval_per_category_iou=results["per_category_iou"],
        eval_mode=args.eval_mode, train_time_s=train_time, completed_steps=completed, wall_time_s=T.wall_time(),
        all_background_mean_iou=all_background_baseline(raw["validation"], eval_transform, id2label),
    )
    if accelerator.is_main_process:
        out = Path(args.output_dir)
        # with auto_map + the model files: loads as Hub remote code (SyncBatchNorm keeps BatchNorm's keys, so a
        # distributed run's folder loads as plain BatchNorm)
        unwrapped.save_pretrained(out)
        save_segmentation_image_processor(out, crop_size=args.crop_size, do_reduce_labels=args.do_reduce_labels)
        hardware = T.hardware_description(accelerator, num_threads)
        write_model_card(
            out / "README.md",
            model_name=out.name, task="image-segmentation", dataset_name=dataset_label,
            dataset_on_hub=bool(args.dataset_name), tags=["semantic-segmentation", f"{unwrapped.config.decode_head_type}-head"],
            intro=(f"PaCa-ViT with the {unwrapped.config.decode_head_type} decode head for semantic segmentation, trained "
                   f"with `examples/run_semantic_segmentation.py` (recipe `{args.recipe}`). Held-out mIoU "
                   f"{100 * results['mean_iou']:.2f}, aAcc {100 * results['overall_accuracy']:.2f} ({args.eval_mode} "
                   f"inference, at the original label resolution; predicting background everywhere gives mIoU "
                   f"{100 * all_results['all_background_mean_iou']:.2f}).\n\n```python\nfrom transformers import pipeline\n"
                   f"segmenter = pipeline('image-segmentation', model='{out.name}', trust_remote_code=True)\n```"),
            sections={
                "Per-class IoU": "\n".join(f"- {k}: {100 * v:.2f}" for k, v in results["per_category_iou"].items()),
                **recipe_section(" ".join(["python", "examples/run_semantic_segmentation.py", *(argv if argv is not None else sys.argv[1:])]),
                                 {k: getattr(args, k) for k in BASE_DEFAULTS}),
                **hardware_section(hardware, T.wall_time(), train_time, completed),
            },
            metrics=[CardMetric("mean_iou", results["mean_iou"], "mIoU"), CardMetric("accuracy", results["overall_accuracy"], "aAcc")],
        )
        T.write_run_files(out, all_results, history, eval_history, accelerator.num_processes, batch)
        if args.num_figure_scenes:
            write_figure(unwrapped, raw["validation"], eval_transform, out / "segmentation_examples.png", args.num_figure_scenes)
        logger.info(f"held-out mIoU {100 * results['mean_iou']:.2f} (all-background {100 * all_results['all_background_mean_iou']:.2f}), "
                    f"aAcc {100 * results['overall_accuracy']:.2f}; saved to {out}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return all_results


def all_background_baseline(dataset, transform, id2label) -> float:
    """mIoU of predicting class 0 everywhere (the trivial baseline the default run is compared with)."""
    metric = MeanIoU(len(id2label))
    for index in range(len(dataset)):
        labels = transform(dataset[index]["image"], dataset[index]["annotation"])["labels"]
        metric.update([torch.zeros_like(labels)], [labels])
    return metric.compute()["mean_iou"]


if __name__ == "__main__":
    main()
    T.teardown(0)

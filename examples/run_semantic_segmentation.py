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
        --dataset_name scene_parse_150 --do_reduce_labels --id2label ade20k_id2label.json \\
        --output_dir runs/pacahead-tiny-ade20k

Evaluate a converted checkpoint: `--eval_only --model_name_or_path <folder> --eval_mode slide`.

The flags, recipes and model/transform builders are in `pacavit.training.segmentation`; the machinery every task
script shares (checkpoints, resume, schedules, parameter groups, logging) is `pacavit.training`. This file is the
task's flow, top to bottom.
"""

from __future__ import annotations

import pacavit_openmp_guard  # noqa: F401  first: before torch loads OpenMP

# isort: split
# ruff: noqa: E402  (the imports below must follow the guard)
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.logging import get_logger

from pacavit import training as T
from pacavit.data.common import check_splits_not_empty, drop_corrupt_images, limit_samples
from pacavit.data.segmentation import (
    DIGIT_SCENE_LABELS,
    TransformedSegmentationDataset,
    collate_segmentation,
    load_digit_scenes,
    load_segmentation_dataset,
    load_segmentation_image,
)
from pacavit.hub.cards import CardMetric, hardware_section, recipe_section, write_model_card
from pacavit.metrics.segmentation import MeanIoU, all_background_mean_iou, per_image_confusion
from pacavit.modeling_pacavit_segmentation import slide_inference
from pacavit.training.segmentation import (
    BASE_DEFAULTS,
    IGNORE_INDEX,
    build_image_processor,
    build_model,
    build_transform,
    head_lr_multipliers,
    load_id2label,
    parse_args,
)

logger = get_logger(__name__)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def load_data(args):
    if args.dataset_name or args.train_dir:
        raw = load_segmentation_dataset(
            args.dataset_name,
            args.train_dir,
            args.validation_dir,
            args.image_column,
            args.annotation_column,
            args.dataset_config_name,
        )
        id2label = load_id2label(args.id2label)  # required with user data, checked by parse_args
        name = args.dataset_name or Path(args.train_dir).name
    else:
        raw, id2label, name = load_digit_scenes(), dict(enumerate(DIGIT_SCENE_LABELS)), "pacavit digit scenes"
    for split, limit in (("train", args.max_train_samples), ("validation", args.max_eval_samples)):
        if limit is not None:
            raw[split] = raw[split].select(range(limit_samples(len(raw[split]), limit, split)))
    if args.verify_images or args.skip_corrupt_images:  # unreadable images and masks, named before training
        for split in ("train", "validation"):
            for column in ("image", "annotation"):
                raw[split], dropped = drop_corrupt_images(raw[split], column, split, args.skip_corrupt_images)
                if dropped:
                    logger.warning(f"left out {len(dropped)} {split} item(s) with an unreadable {column}")
    # an empty split stops here, naming it and its source (not in 🤗 Datasets or a DataLoader later)
    check_splits_not_empty(raw, args)
    return raw, id2label, name


# --------------------------------------------------------------------------------------------
# Evaluation at the original label resolution
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model, dataloader, accelerator, args, id2label) -> dict:
    model.eval()
    metric = MeanIoU(len(id2label), IGNORE_INDEX, id2label)
    for batch in dataloader:
        if args.eval_mode == "slide":
            logits = slide_inference(model, batch["pixel_values"], args.crop_size, args.slide_stride)
        else:
            logits = model(batch["pixel_values"]).logits
        labels = batch["labels"]
        labels = list(labels) if isinstance(labels, list) else list(labels.unbind(0))
        predictions = [
            F.interpolate(logit[None], size=label.shape[-2:], mode="bilinear", align_corners=False)[0].argmax(0)
            for logit, label in zip(logits, labels)
        ]
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
        sample = transform(item["image"], item["annotation"], where=f"validation row {row}")
        with torch.no_grad():
            out = model(sample["pixel_values"][None], output_cluster_assignments=True)
        size = sample["labels"].shape
        prediction = F.interpolate(out.logits, size=size, mode="bilinear", align_corners=False)[0].argmax(0)
        image = load_segmentation_image(item["image"], f"validation row {row}")  # any column form
        panels = [("image", image), ("ground truth", sample["labels"]), ("prediction", prediction)]
        if out.head_cluster_assignments is not None:
            panels.append(
                ("head clusters", F.interpolate(out.head_cluster_assignments, size=size, mode="nearest")[0].argmax(0))
            )
        for col, ax in enumerate(axes[row]):
            ax.axis("off")
            if col < len(panels):
                title, value = panels[col]
                ax.imshow(
                    value,
                    cmap=None if col == 0 else cmap,
                    vmin=0,
                    vmax=model.config.num_labels - 1,
                    interpolation="nearest",
                )
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
    model = build_model(args, id2label)  # a preset, ImageNet weights with new heads, or a segmentation checkpoint
    if accelerator.num_processes > 1:  # the original trains with SyncBN in every head
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if args.activation_checkpointing:
        model.activation_checkpointing_enable()
    train_set = TransformedSegmentationDataset(raw["train"], build_transform(args, len(id2label), True), "train")
    eval_transform = build_transform(args, len(id2label), False)
    eval_set = TransformedSegmentationDataset(raw["validation"], eval_transform, "validation")
    loader = dict(collate_fn=collate_segmentation, num_workers=args.dataloader_num_workers)
    train_dl = torch.utils.data.DataLoader(
        train_set, batch_size=args.per_device_train_batch_size, shuffle=True, drop_last=True, **loader
    )
    eval_dl = torch.utils.data.DataLoader(eval_set, batch_size=args.per_device_eval_batch_size, **loader)

    batch = T.global_batch_size(
        args.per_device_train_batch_size, accelerator.num_processes, args.gradient_accumulation_steps
    )
    lrs = T.learning_rates_from_args(args, batch)
    multipliers = head_lr_multipliers(model.config, args.head_lr_mult)  # the original's lr x10 for the heads
    optimizer = T.build_optimizer(model, args, lrs["lr"], lr_multipliers=multipliers)
    model, optimizer, train_dl, eval_dl = accelerator.prepare(model, optimizer, train_dl, eval_dl)
    run = T.TrainingRun(accelerator, args, len(train_dl), global_batch_size=batch, resume_path=resume_path)
    scheduler = T.build_scheduler(optimizer, args, lrs, run.updates_per_epoch, run.max_steps)
    T.init_tracking(accelerator, args, "run_semantic_segmentation", global_batch_size=batch)
    train_time = 0.0
    if not args.eval_only:
        with run:  # progress bar + SIGTERM hook, removed however the loop ends
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
                if (
                    run.epoch_finished
                    and not run.done
                    and args.eval_every_epochs
                    and (epoch + 1) % args.eval_every_epochs == 0
                ):
                    record = evaluate(model, eval_dl, accelerator, args, id2label)
                    run.log_eval(
                        {f"eval_{k}": v for k, v in record.items() if not k.startswith("per_")}
                        | dict(epoch=epoch + 1, step=run.completed_steps)
                    )
                run.epoch_done(epoch)
        train_time = run.train_time
    completed, history, eval_history = run.completed_steps, run.history, run.eval_history

    results = evaluate(model, eval_dl, accelerator, args, id2label)
    unwrapped = accelerator.unwrap_model(model)
    all_results = dict(
        eval_mean_iou=results["mean_iou"],
        eval_overall_accuracy=results["overall_accuracy"],
        eval_mean_accuracy=results["mean_accuracy"],
        eval_per_category_iou=results["per_category_iou"],
        eval_mode=args.eval_mode,
        train_time_s=train_time,
        completed_steps=completed,
        wall_time_s=T.wall_time(),
        all_background_mean_iou=all_background_mean_iou((item["labels"] for item in eval_set), len(id2label)),
    )
    if accelerator.is_main_process:
        out = Path(args.output_dir)
        with T.export_atomically(out) as folder:  # a crash or SIGTERM while exporting leaves no half-written folder
            # with auto_map + the model files: loads as Hub remote code (SyncBatchNorm keeps BatchNorm's keys, so a
            # distributed run's folder loads as plain BatchNorm)
            unwrapped.save_pretrained(folder)
            build_image_processor(args).save_pretrained(folder)
            hardware = T.hardware_description(accelerator, num_threads)
            write_model_card(
                folder / "README.md",
                model_name=out.name,
                task="image-segmentation",
                dataset_name=dataset_label,
                dataset_on_hub=bool(args.dataset_name),
                tags=["semantic-segmentation", f"{unwrapped.config.decode_head_type}-head"],
                intro=(
                    f"PaCa-ViT with the {unwrapped.config.decode_head_type} decode head for semantic segmentation, "
                    f"trained with `examples/run_semantic_segmentation.py` (recipe `{args.recipe}`). Held-out mIoU "
                    f"{100 * results['mean_iou']:.2f}, aAcc {100 * results['overall_accuracy']:.2f} ({args.eval_mode} "
                    f"inference, at the original label resolution; predicting background everywhere gives mIoU "
                    f"{100 * all_results['all_background_mean_iou']:.2f}).\n\n"
                    "```python\nfrom transformers import pipeline\n"
                    f"segmenter = pipeline('image-segmentation', model='{out.name}', trust_remote_code=True)\n```"
                ),
                sections={
                    "Per-class IoU": "\n".join(
                        f"- {k}: {100 * v:.2f}" for k, v in results["per_category_iou"].items()
                    ),
                    **recipe_section(
                        " ".join(
                            [
                                "python",
                                "examples/run_semantic_segmentation.py",
                                *(argv if argv is not None else sys.argv[1:]),
                            ]
                        ),
                        {k: getattr(args, k) for k in BASE_DEFAULTS},
                    ),
                    **hardware_section(hardware, T.wall_time(), train_time, completed),
                },
                metrics=[
                    CardMetric("mean_iou", results["mean_iou"], "mIoU"),
                    CardMetric("accuracy", results["overall_accuracy"], "aAcc"),
                ],
            )
            if args.num_figure_scenes:
                figure = folder / "segmentation_examples.png"
                write_figure(unwrapped, raw["validation"], eval_transform, figure, args.num_figure_scenes)
            T.write_run_files(folder, all_results, history, eval_history, accelerator.num_processes, batch)
        logger.info(
            f"held-out mIoU {100 * results['mean_iou']:.2f} "
            f"(all-background {100 * all_results['all_background_mean_iou']:.2f}), "
            f"aAcc {100 * results['overall_accuracy']:.2f}; saved to {out}"
        )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return all_results


if __name__ == "__main__":
    main()
    T.teardown(0)

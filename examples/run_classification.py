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

Run `python examples/run_classification.py --help` for all flags. The flags and recipes are in
`pacavit.training.classification`; the machinery every task script shares (checkpoints, resume, schedules,
parameter groups, logging) is `pacavit.training`. This file is the task's flow, top to bottom.
"""

from __future__ import annotations

import pacavit_openmp_guard  # noqa: F401  (first: limits OpenMP spin-waiting before torch loads it)

# isort: split
# ruff: noqa: E402  (the imports below must follow the guard)
import os
import sys
from pathlib import Path

import datasets
import torch
from accelerate.logging import get_logger
from transformers import AutoImageProcessor

import pacavit  # noqa: F401  (registers PaCa-ViT with the Auto classes)
from pacavit.data import (
    DIGITS_DESCRIPTION,
    DIGITS_NAME,
    ImageClassificationDataset,
    check_folder_has_images,
    check_splits_not_empty,
    drop_corrupt_images,
    limit_samples,
    load_digits_dataset,
    pick_column,
    select_splits,
    split_train_validation,
    to_rgb,
)
from pacavit.hub.cards import CardMetric, architecture_section, hardware_section, recipe_section, write_model_card
from pacavit.hub.push import push
from pacavit.metrics import TopKAccuracy, topk_predictions
from pacavit.training import (
    TrainingRun,
    backward_and_step,
    build_optimizer,
    build_scheduler,
    current_lr,
    export_atomically,
    global_batch_size,
    hardware_description,
    init_tracking,
    learning_rates_from_args,
    process_ranks,
    setup_run,
    teardown,
    wall_time,
    write_json,
    write_run_files,
)
from pacavit.training.classification import (
    build_criterion,
    build_image_processor,
    build_mixup,
    build_model,
    build_train_transform,
    parse_args,
)

logger = get_logger(__name__)

IMAGE_COLUMNS, LABEL_COLUMNS = ("image", "img"), ("label", "labels")
# The settings listed in the model card's recipe table.
CARD_RECIPE_KEYS = (
    "recipe image_size crop_pct interpolation num_train_epochs max_train_steps per_device_train_batch_size "
    "gradient_accumulation_steps lr_base lr_base_size lr_base_scale min_lr_base warmup_lr_base "
    "warmup_epochs lr_scheduler_type weight_decay opt_eps opt_betas layer_decay clip_grad smoothing mixup "
    "cutmix auto_augment color_jitter reprob model_ema seed"
).split()


# ============================================================================================
# Data
# ============================================================================================
def load_raw_datasets(args):
    """A DatasetDict with 'train' and 'validation' splits, plus a short description of where it came from."""
    if args.dataset_name in (None, DIGITS_NAME, "digits") and not (args.train_dir or args.validation_dir):
        raw = split_train_validation(load_digits_dataset(), args.train_val_split, args.seed)
        description = (
            DIGITS_DESCRIPTION + f" Held-out split: {args.train_val_split:.0%}, stratified by label, seed {args.seed}."
        )
        return raw, dict(name=DIGITS_NAME, description=description, builtin=True)
    if args.train_dir or args.validation_dir:
        folders = {"train": args.train_dir, "validation": args.validation_dir}
        for split, folder in folders.items():  # before 🤗 Datasets' "corresponds to no data!"
            if folder:
                check_folder_has_images(folder, f"{split}_dir")
        data_files = {split: os.path.join(folder, "**") for split, folder in folders.items() if folder}
        raw = datasets.load_dataset("imagefolder", data_files=data_files, cache_dir=args.cache_dir)
        dirs = ", ".join(f"{split}: {folder}" for split, folder in folders.items() if folder)
        source = dict(name="imagefolder", description=f"local image folders ({dirs})", builtin=False)
    else:
        raw = datasets.load_dataset(args.dataset_name, args.dataset_config_name, cache_dir=args.cache_dir)
        source = dict(name=args.dataset_name, description=f"Hub dataset `{args.dataset_name}`", builtin=False)

    def hold_out(train, fraction, seed):  # stratified by label
        label_column = pick_column(list(train.features), args.label_column_name, LABEL_COLUMNS, "label")
        return split_train_validation(train, fraction, seed, label_column)

    splits, note = select_splits(
        dict(raw), args.train_split, args.validation_split, args.train_val_split, args.seed, hold_out
    )
    if note:
        source["description"] += f", {note} (stratified)"
    return datasets.DatasetDict(splits), source


def prepare_splits(raw, args):
    """The image and label columns and the label names; the --max_*_samples limits; unreadable images named or
    dropped (--verify_images / --skip_corrupt_images, counted per split). An empty split stops here, naming it and
    its source, not in a DataLoader or a metric later."""
    columns = list(raw["validation"].features)
    image_column = pick_column(columns, args.image_column_name, IMAGE_COLUMNS, "image")
    label_column = pick_column(columns, args.label_column_name, LABEL_COLUMNS, "label")
    label_feature = raw["validation"].features[label_column]
    if not isinstance(label_feature, datasets.ClassLabel):
        raise ValueError(f"The label column {label_column!r} must be a datasets.ClassLabel, got {label_feature}.")
    if args.max_train_samples is not None and "train" in raw:
        n = limit_samples(len(raw["train"]), args.max_train_samples, "train")
        raw["train"] = raw["train"].shuffle(seed=args.seed).select(range(n))
    if args.max_eval_samples is not None:
        n = limit_samples(len(raw["validation"]), args.max_eval_samples, "validation")
        raw["validation"] = raw["validation"].select(range(n))
    skipped = {}
    if args.skip_corrupt_images or args.verify_images:
        for split in [s for s in raw if not (args.eval_only and s == "train")]:
            raw[split], messages = drop_corrupt_images(raw[split], image_column, split, args.skip_corrupt_images)
            skipped[split] = len(messages)
            for message in messages[:20]:
                logger.warning(f"Skipping: {message}")
            if messages:
                logger.warning(f"Skipped {len(messages)} unreadable image(s) in the {split!r} split.")
    check_splits_not_empty(raw, args)
    return raw, image_column, label_column, list(label_feature.names), skipped


def eval_image_processor(args):
    """The flags' image processor; with --eval_only and no preprocessing flag, the checkpoint's own one."""
    if args.eval_only and not {"image_size", "crop_pct", "interpolation"} & set(args.explicit_flags):
        try:  # validate a checkpoint with its own preprocessing
            image_processor = AutoImageProcessor.from_pretrained(args.model_name_or_path, cache_dir=args.cache_dir)
            logger.info(f"Evaluating with the checkpoint's own image processor: {type(image_processor).__name__}.")
            return image_processor
        except (OSError, ValueError) as error:
            logger.warning(f"No usable image processor in {args.model_name_or_path} ({error}); using the flags.")
    return build_image_processor(args)


def make_collate_fn(image_processor):
    """Stacks transformed samples, or runs the (eval) image processor on PIL images."""

    def collate(examples: list[dict]) -> dict:
        labels = torch.tensor([e["labels"] for e in examples], dtype=torch.long)
        if "pixel_values" in examples[0]:
            pixel_values = torch.stack([e["pixel_values"] for e in examples])
        else:
            images = [e["image"] for e in examples]
            pixel_values = image_processor(images=images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values, "labels": labels}

    return collate


# ============================================================================================
# Evaluation
# ============================================================================================
@torch.no_grad()
def evaluate(model, dataloader, accelerator, ks=(1, 5), channels_last: bool = False):
    """Top-k accuracy and mean cross-entropy over the whole (sharded) eval set, gathered with
    `gather_for_metrics` (duplicated padding samples dropped). Also returns the top-1 predictions in dataset
    order."""
    was_training = model.training
    model.eval()
    metric = TopKAccuracy(ks)
    loss_sum, count, top1 = 0.0, 0, []
    for batch in dataloader:
        pixel_values = batch["pixel_values"]
        if channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            logits = model(pixel_values=pixel_values).logits.float()
        losses = torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none")
        predictions = topk_predictions(logits, max(ks))
        predictions, references, losses = accelerator.gather_for_metrics((predictions, batch["labels"], losses))
        metric.add_batch(predictions=predictions, references=references)
        loss_sum += float(losses.sum())
        count += losses.numel()
        top1.append(predictions[:, 0].cpu())
    model.train(was_training)
    result = metric.compute()
    result["loss"] = loss_sum / max(count, 1)
    return result, torch.cat(top1) if top1 else torch.empty(0, dtype=torch.long)


def evaluate_checkpoint(model, eval_dataloader, accelerator, args) -> dict:
    """--eval_only: top-1/top-5 and loss of the model as loaded, written to eval_results.json."""
    model, eval_dataloader = accelerator.prepare(model, eval_dataloader)
    metrics, _ = evaluate(model, eval_dataloader, accelerator, channels_last=args.channels_last)
    results = {f"eval_{k}": v for k, v in metrics.items()}
    results.update(model=args.model_name_or_path, world_size=accelerator.num_processes, wall_time_s=wall_time())
    logger.info(
        f"Eval-only: top-1 {metrics['top1']:.3f}%  top-5 {metrics['top5']:.3f}%  "
        f"loss {metrics['loss']:.4f}  ({metrics['num_samples']} images)"
    )
    if accelerator.is_main_process:
        write_json(Path(args.output_dir, "eval_results.json"), results)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


def pipeline_check(folder: Path, validation, image_column, label_column, label2id, top1_predictions, args, device):
    """Re-classify raw validation images with pipeline('image-classification') loaded from the saved folder:
    returns (top-1 %, % agreeing with the evaluation loop, number of images), or Nones when disabled."""
    n = min(args.pipeline_eval_samples, len(validation))
    if n <= 0:
        return None, None, 0
    from transformers import pipeline

    pipe = pipeline("image-classification", model=str(folder), device=device)
    subset = validation.select(range(n))
    outputs = pipe([to_rgb(img) for img in subset[image_column]], top_k=1, batch_size=args.per_device_eval_batch_size)
    predicted = [label2id[o[0]["label"]] for o in outputs]
    top1 = 100.0 * sum(p == t for p, t in zip(predicted, subset[label_column], strict=True)) / n
    agreement = 100.0 * sum(p == int(q) for p, q in zip(predicted, top1_predictions[:n].tolist(), strict=True)) / n
    logger.info(
        f"pipeline('image-classification') on {n} raw validation images: top-1 {top1:.2f}%, agrees with the "
        f"eval loop on {agreement:.2f}%"
    )
    return top1, agreement, n


def describe_augmentation(train_transform, mixup, args) -> str:
    """The model card's line on training augmentation."""
    if train_transform is None:
        text = "none (the eval preprocessing)"
    else:
        text = "; ".join(str(t) for t in getattr(train_transform, "transforms", [train_transform]))
    if mixup is not None:
        text += f"; mixup {args.mixup} / cutmix {args.cutmix} (switch prob {args.mixup_switch_prob})"
    return text


# ============================================================================================
# Main
# ============================================================================================
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    command = (
        "python examples/run_classification.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    )

    # Accelerator, logging, threads, seed, resume point, output-folder guard, Hub preflight
    setup = setup_run(args, guard_output_dir=not args.eval_only)
    accelerator, num_threads, resume_path = setup.accelerator, setup.num_threads, setup.resume_path

    # ---------------------------------------------------------------- data
    with accelerator.main_process_first():
        raw, source = load_raw_datasets(args)
    raw, image_column, label_column, label_names, skipped = prepare_splits(raw, args)
    label2id = {name: i for i, name in enumerate(label_names)}

    # ---------------------------------------------------------------- model
    model, preset_name, arch_overrides = build_model(args, label_names)
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
    image_processor = eval_image_processor(args)
    collate_fn = make_collate_fn(image_processor)
    eval_dataset = ImageClassificationDataset(raw["validation"], image_column, label_column, split="validation")
    eval_dataloader = torch.utils.data.DataLoader(
        eval_dataset,
        batch_size=args.per_device_eval_batch_size,
        shuffle=False,
        collate_fn=collate_fn,
        num_workers=args.dataloader_num_workers,
    )

    if args.eval_only:
        return evaluate_checkpoint(model, eval_dataloader, accelerator, args)

    if "train" not in raw:
        raise ValueError("No training split; pass --train_dir or a dataset with a train split (or --eval_only).")
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
    lrs = learning_rates_from_args(args, batch_size)
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
        accelerator.register_for_checkpointing(model_ema)  # saved and restored with the checkpoints

    # length in updates, and the resumed position (loads the checkpoint: after prepare/register)
    run = TrainingRun(accelerator, args, len(train_dataloader), batch_size, resume_path)
    args.max_train_steps = run.max_steps
    if run.state.get("global_batch_size") not in (None, batch_size):
        previous = run.state["global_batch_size"]
        logger.warning(f"The checkpoint was trained with global batch {previous}, now {batch_size}.")
    if resume_path is not None:
        logger.info(f"Resumed from {resume_path} at update {run.completed_steps}.")
    scheduler = build_scheduler(optimizer, args, lrs, run.updates_per_epoch, run.max_steps)
    init_tracking(
        accelerator,
        args,
        "run_classification",
        global_batch_size=batch_size,
        peak_lr=lrs["lr"],
        min_lr=lrs["min_lr"],
        warmup_lr=lrs["warmup_lr"],
    )

    # ---------------------------------------------------------------- train
    logger.info("***** Running training *****")
    logger.info(f"  Train / eval images = {len(train_dataset)} / {len(eval_dataset)}; classes = {len(label_names)}")
    logger.info(f"  Epochs = {run.num_epochs}; updates = {run.max_steps} ({run.updates_per_epoch} per epoch)")
    logger.info(
        f"  Global batch = {batch_size} (per device {args.per_device_train_batch_size} x "
        f"{accelerator.num_processes} process(es) x {args.gradient_accumulation_steps} accumulation)"
    )
    logger.info(
        f"  Peak lr = {lrs['lr']:.3g} (lr_base {args.lr_base:g} x {lrs['factor']:.4g}), min lr "
        f"{lrs['min_lr']:.3g}, warmup lr {lrs['warmup_lr']:.3g}, {args.lr_scheduler_type} schedule"
    )

    def run_eval(epoch: int):
        """Evaluate the model (and its EMA); returns the record, the metrics of the weights to export, and
        those weights' top-1 predictions."""
        metrics, predictions = evaluate(model, eval_dataloader, accelerator, channels_last=args.channels_last)
        record = {"epoch": epoch, "step": run.completed_steps, **{f"eval_{k}": v for k, v in metrics.items()}}
        if model_ema is not None:
            metrics, predictions = evaluate(
                model_ema.module, eval_dataloader, accelerator, channels_last=args.channels_last
            )
            record.update({f"eval_ema_{k}": v for k, v in metrics.items()})
        run.log_eval(record)
        return record, metrics, predictions

    # progress bar; SIGTERM: a resumable checkpoint after the current update, then exit (hook removed on any exit)
    with run:
        update_losses = []
        for epoch in run.epochs():
            model.train()
            # per-step randomness (drop-path, mixup) is seeded from (seed, epoch, batch, rank) by run.batches
            for batch in run.batches(train_dataloader, epoch, train_dataset):
                scheduler.step_update(run.completed_steps)
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
                    backward_and_step(accelerator, model, loss, optimizer, args.clip_grad, args.clip_mode)
                update_losses.append(loss.detach().float())
                if not accelerator.sync_gradients:
                    continue
                # ------------------------------------------------ one optimizer update done
                step_loss = accelerator.reduce(torch.stack(update_losses).mean(), reduction="mean").item()
                update_losses = []
                if model_ema is not None:  # before update_done, which may checkpoint
                    model_ema.update(accelerator.unwrap_model(model), step=run.completed_steps + 1)
                run.update_done(step_loss, current_lr(optimizer), epoch, batch_size)  # may checkpoint/stop/raise
                if run.done:
                    break
            if run.epoch_finished and not run.done and args.eval_every_epochs:
                if (epoch + 1) % args.eval_every_epochs == 0:
                    run_eval(epoch)
            run.epoch_done(epoch)
    train_time = run.train_time

    # ---------------------------------------------------------------- final evaluation and export
    final, metrics, top1_predictions = run_eval(run.num_epochs - 1)
    export_model, weights_note = accelerator.unwrap_model(model), "final weights of the run"
    if model_ema is not None:
        export_model, weights_note = model_ema.module, f"EMA of the weights (decay {args.model_ema_decay})"

    results = {
        "eval_top1": metrics["top1"],
        "eval_top5": metrics["top5"],
        "eval_loss": metrics["loss"],
        "eval_samples": metrics["num_samples"],
        "train_samples": len(train_dataset),
        "completed_steps": run.completed_steps,
        "epochs": run.num_epochs,
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
        "process_ranks": process_ranks(accelerator),
    }
    if accelerator.is_main_process:
        out = Path(args.output_dir)
        with export_atomically(out) as folder:  # a crash or SIGTERM while exporting leaves no half-written folder
            export_model.save_pretrained(folder, safe_serialization=True)
            image_processor.save_pretrained(folder)
            pipeline_top1, pipeline_agreement, n_pipe = pipeline_check(
                folder,
                raw["validation"],
                image_column,
                label_column,
                label2id,
                top1_predictions,
                args,
                accelerator.device,
            )
            results.update(pipeline_top1=pipeline_top1, pipeline_agreement=pipeline_agreement, pipeline_samples=n_pipe)
            results["wall_time_s"] = wall_time()

            # ------------------------------------------------ model card
            augmentation = describe_augmentation(train_transform, mixup, args)
            recipe = {key: getattr(args, key) for key in CARD_RECIPE_KEYS}
            recipe.update(
                global_batch_size=batch_size,
                peak_lr=round(lrs["lr"], 8),
                optimizer="AdamW",
                mixed_precision=accelerator.mixed_precision,
                processes=accelerator.num_processes,
            )
            pipeline_line = ""
            if pipeline_top1 is not None:
                pipeline_line = (
                    f'- `pipeline("image-classification")` on {n_pipe} raw validation images: top-1 '
                    f"{pipeline_top1:.2f}% (same top-1 prediction as the evaluation loop on "
                    f"{pipeline_agreement:.2f}% of them)\n"
                )
            label_list = ", ".join(label_names[:20]) + (" ..." if len(label_names) > 20 else "")
            n_eval = metrics["num_samples"]
            write_model_card(
                folder / "README.md",
                model_name=out.absolute().name,
                task="image-classification",
                tags=["generated_from_run_classification"],
                dataset_name=source["name"],
                dataset_on_hub=not source["builtin"] and source["name"] != "imagefolder",
                metrics=[
                    CardMetric("accuracy", round(metrics[f"top{k}"] / 100.0, 4), f"Top-{k} accuracy") for k in (1, 5)
                ],
                intro=(
                    "PaCa-ViT (Patch-to-Cluster Attention, CVPR 2023) image classifier trained with\n"
                    "`examples/run_classification.py` of the `pacavit` package."
                ),
                sections={
                    f"Results (held-out validation split, {n_eval} images)": (
                        f"- top-1 accuracy: **{metrics['top1']:.2f}%**\n"
                        f"- top-5 accuracy: {metrics['top5']:.2f}%\n"
                        f"- evaluation loss: {metrics['loss']:.4f}\n{pipeline_line}- weights: {weights_note}"
                    ),
                    "Data": (
                        f"{source['description']}\n\nTraining images: {len(train_dataset)}; evaluation images: "
                        f"{n_eval};\nclasses: {len(label_names)} ({label_list}).\nPreprocessing "
                        f"(`preprocessor_config.json`, `ConvNextImageProcessor`): resize shortest edge to "
                        f"int({args.image_size} / crop_pct {args.crop_pct}) ({args.interpolation}), center crop "
                        f"{args.image_size}, rescale 1/255, normalise mean {list(args.image_mean)} std "
                        f"{list(args.image_std)}.\nTraining augmentation: {augmentation}."
                    ),
                    **architecture_section(preset_name, export_model.config, num_parameters, arch_overrides),
                    **recipe_section(command, recipe),
                    **hardware_section(
                        hardware_description(accelerator, num_threads),
                        results["wall_time_s"],
                        train_time,
                        run.completed_steps,
                    ),
                    "Usage": (
                        "```python\nimport pacavit  # registers PaCa-ViT with the transformers Auto classes\n"
                        "from transformers import pipeline\n\n"
                        f'classifier = pipeline("image-classification", model="{setup.repo_id or str(out)}")\n'
                        "classifier(image)  # a PIL image\n```"
                    ),
                },
            )
            write_run_files(folder, results, run.history, run.eval_history, accelerator.num_processes, batch_size)
        logger.info(
            f"Held-out top-1 {metrics['top1']:.2f}%, top-5 {metrics['top5']:.2f}% on {n_eval} images; "
            f"wall time {results['wall_time_s']:.1f} s; saved to {out}"
        )
        if args.push_to_hub:
            push(out, setup.repo_id, token=args.hub_token, commit_message="run_classification.py")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


if __name__ == "__main__":
    main()
    teardown(0)

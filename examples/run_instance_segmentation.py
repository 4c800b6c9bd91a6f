#!/usr/bin/env python
"""Train and evaluate the PaCa-ViT Mask R-CNN (COCO detection + instance segmentation) with 🤗 Accelerate.

With no arguments it runs offline on a 2-core CPU in a few minutes: a reduced-width PaCa-ViT Mask R-CNN trained on
built-in COCO-format scenes of real handwritten digit scans (scikit-learn; digits 0-3), scored with pycocotools on
held-out scenes (box and mask AP, AP50, AP75, APs/m/l), saved as a Hub-ready folder (remote code, image processor,
model card) that both `pipeline("object-detection", model=folder)` and
`pipeline("image-segmentation", model=folder, subtask="instance")` load, plus a figure of held-out detections::

    python examples/run_instance_segmentation.py

The paper's COCO recipe (`mask_rcnn_pacavit_*_mstrain_480_800_1x_coco`: multi-scale shorter side 480-800 / longer
<= 1333 or the DETR-style resize-crop-resize alternative, flip; AdamW 1e-4, weight decay 0.05 without decay on
norms; 12 epochs with the lr x0.1 at epochs 8 and 11; 500-iteration linear warm-up; batch 16 in total)::

    accelerate launch --num_processes 8 examples/run_instance_segmentation.py --recipe paper_coco_1x \\
        --backbone_name_or_path ivmcl/pacavit-tiny --train_dir coco/train2017 \\
        --train_annotations coco/annotations/instances_train2017.json --validation_dir coco/val2017 \\
        --validation_annotations coco/annotations/instances_val2017.json --output_dir runs/mask-rcnn-pacavit-tiny

Evaluate a converted mmdet checkpoint: `--eval_only --model_name_or_path <folder> --validation_dir ...`.

The flags, recipes and model/transform builders are in `pacavit.training.detection`; the machinery every task
script shares (checkpoints, resume, schedules, parameter groups, logging) is `pacavit.training`. This file is the
task's flow, top to bottom.
"""

from __future__ import annotations

import pacavit_openmp_guard  # noqa: F401  first: before torch loads OpenMP

# isort: split
# ruff: noqa: E402  (the imports below must follow the guard)
import sys
from functools import partial
from pathlib import Path

import torch
from accelerate.logging import get_logger

from pacavit import training as T
from pacavit.data.common import check_splits_not_empty, check_unreadable, decode_image, find_unreadable, limit_samples
from pacavit.data.detection import (
    CocoInstanceDataset,
    DetectionTransform,
    build_digit_scenes_coco,
    coco_from_hf_dataset,
    collate_detection,
    load_coco_folder,
)
from pacavit.hub.cards import CardMetric, hardware_section, recipe_section, write_model_card
from pacavit.metrics.detection import STAT_NAMES, CocoEvaluator
from pacavit.safe_io import OutputFolderError
from pacavit.training.detection import (
    BASE_DEFAULTS,
    build_image_processor,
    build_model,
    build_train_transform,
    parse_args,
)

logger = get_logger(__name__)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def load_data(args):
    """(train dataset, validation dataset, dataset label) with their COCO ground truths."""
    skip = args.skip_corrupt_images  # images that cannot even be opened are left out at load, too
    if args.dataset_name:
        import datasets

        raw = datasets.load_dataset(args.dataset_name, args.dataset_config_name)
        splits = {}
        for split, names in (("train", ("train",)), ("validation", ("validation", "val", "test"))):
            name = next((n for n in names if n in raw), None)
            if name is None:
                raise ValueError(f"{args.dataset_name} has no {split} split (splits: {list(raw)}).")
            splits[split] = coco_from_hf_dataset(raw[name], split=name, skip_unreadable=skip)
        label = args.dataset_name
    elif args.train_dir or args.validation_dir:
        if not (args.validation_dir and args.validation_annotations) or (
            not args.eval_only and not (args.train_dir and args.train_annotations)
        ):
            raise ValueError("Give --train_dir/--train_annotations and --validation_dir/--validation_annotations.")
        splits = {"validation": load_coco_folder(args.validation_dir, args.validation_annotations, skip)}
        splits["train"] = (
            load_coco_folder(args.train_dir, args.train_annotations, skip) if args.train_dir else splits["validation"]
        )
        label = Path(args.validation_dir).parent.name or "coco"
    else:
        try:
            root = build_digit_scenes_coco(args.built_in_data_dir, *args.built_in_scenes, digits=args.built_in_digits)
        except OSError as error:
            raise OutputFolderError(
                f"--built_in_data_dir {args.built_in_data_dir!r} cannot be written ({type(error).__name__}: "
                f"{error.strerror or error}). Pass a folder you can write to."
            ) from error
        splits = {
            s: load_coco_folder(root / s, root / "annotations" / f"instances_{s}.json")
            for s in ("train", "validation")
        }
        label = "pacavit digit scenes (COCO format)"
    train_set = CocoInstanceDataset(*splits["train"], split="train")
    eval_set = CocoInstanceDataset(*splits["validation"], split="validation")
    for split, dataset, limit in (
        ("train", train_set, args.max_train_samples),
        ("validation", eval_set, args.max_eval_samples),
    ):
        if limit is not None:  # the evaluator then scores only these images
            n = limit_samples(len(dataset), limit, split)
            dataset.image_ids, dataset.images = dataset.image_ids[:n], dataset.images[:n]
    splits = {"train": train_set, "validation": eval_set}
    if args.verify_images or args.skip_corrupt_images:  # unreadable images, named before training
        for split, dataset in splits.items():
            bad = find_unreadable(dataset.images, split)
            check_unreadable(bad, split, skip=args.skip_corrupt_images)
            if bad:  # the evaluator then scores only the images left
                logger.warning(f"left out {len(bad)} unreadable {split} image(s)")
                keep = sorted(set(range(len(dataset))) - {index for index, _ in bad})
                dataset.image_ids, dataset.images = (
                    [dataset.image_ids[i] for i in keep],
                    [dataset.images[i] for i in keep],
                )
    # an empty split stops here, naming it and its source (not in a DataLoader or the COCO evaluator later)
    check_splits_not_empty(splits, args)
    return train_set, eval_set, label


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
def predictions(outputs, processor) -> list[dict]:
    """Post-processed detections at the original image size, with binary masks, for the COCO evaluator."""
    results = processor.post_process_instance_segmentation(outputs, threshold=0.0, return_binary_maps=True)
    return [
        {
            "boxes": torch.tensor([s["box"] for s in r["segments_info"]]).reshape(-1, 4),
            "scores": torch.tensor([s["score"] for s in r["segments_info"]]),
            "labels": torch.tensor([s["label_id"] for s in r["segments_info"]], dtype=torch.int64),
            "masks": r["segmentation"],
        }
        for r in results
    ]


@torch.no_grad()
def evaluate(model, dataloader, accelerator, processor, eval_set) -> dict:
    """COCO bbox + segm metrics; every process evaluates its shard, the results are gathered before COCOeval."""
    model.eval()
    evaluator = CocoEvaluator(eval_set.coco, eval_set.label_to_category)
    for batch in dataloader:
        outputs = model(
            pixel_values=batch["pixel_values"],
            image_sizes=batch["image_sizes"],
            original_sizes=batch["original_sizes"],
        )
        outputs = {
            "detections": [{k: v.cpu() for k, v in d.items()} for d in outputs.detections],
            "image_sizes": outputs.image_sizes.cpu(),
        }
        evaluator.update(batch["image_ids"], predictions(outputs, processor))
    evaluator.gather(accelerator)
    model.train()
    return evaluator.compute() if accelerator.is_main_process else {}


def write_figure(model, processor, eval_set, path: Path, count: int, threshold: float = 0.3) -> None:
    """Held-out scenes with the detected boxes, labels, scores and masks (score > `threshold`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    model.eval()
    count = min(count, len(eval_set))
    fig, axes = plt.subplots(1, count, figsize=(2.6 * count, 2.8), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, index in zip(axes[0], range(count)):
        image = decode_image(eval_set.images[index], index, "validation")
        inputs = processor(image)
        with torch.no_grad():
            outputs = model(**inputs)
        result = processor.post_process_instance_segmentation(outputs, threshold=threshold, return_binary_maps=True)[0]
        canvas = np.asarray(image, dtype=np.float64) / 255
        for k, segment in enumerate(result["segments_info"]):
            colour = np.array(colours(segment["label_id"] % 10)[:3])
            mask = result["segmentation"][k].numpy()
            canvas[mask] = 0.45 * canvas[mask] + 0.55 * colour
        ax.imshow(canvas, interpolation="nearest")
        for segment in result["segments_info"]:
            x1, y1, x2, y2 = segment["box"]
            colour = colours(segment["label_id"] % 10)
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=colour, linewidth=1.2))
            name = model.config.id2label[segment["label_id"]].replace("digit ", "")
            ax.text(
                x1,
                y1 - 1,
                f"{name} {segment['score']:.2f}",
                color="white",
                fontsize=6,
                bbox=dict(facecolor=colour, alpha=0.8, pad=0.5, linewidth=0),
            )
        ax.set_title(f"held-out scene {index + 1}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    args = parse_args(argv)
    # Accelerator, logging, threads, seed, resume point, output-folder guard, Hub preflight
    setup = T.setup_run(args, guard_output_dir=not args.eval_only)
    accelerator, num_threads, resume_path = setup.accelerator, setup.num_threads, setup.resume_path

    with accelerator.main_process_first():  # the built-in data is written once
        train_set, eval_set, dataset_label = load_data(args)
    model = build_model(args, train_set.id2label)
    if args.activation_checkpointing:
        model.activation_checkpointing_enable()
    processor = build_image_processor(args)
    train_set.transform = build_train_transform(args, seed=args.seed + accelerator.process_index)
    eval_set.transform = DetectionTransform(train=False)
    loader = dict(num_workers=args.dataloader_num_workers)
    train_dl = torch.utils.data.DataLoader(
        train_set,
        batch_size=args.per_device_train_batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=partial(collate_detection, processor=processor, train=True),
        **loader,
    )
    eval_dl = torch.utils.data.DataLoader(
        eval_set,
        batch_size=args.per_device_eval_batch_size,
        collate_fn=partial(collate_detection, processor=processor, train=False),
        **loader,
    )

    batch = T.global_batch_size(
        args.per_device_train_batch_size, accelerator.num_processes, args.gradient_accumulation_steps
    )
    lrs = T.learning_rates_from_args(args, batch)
    optimizer = T.build_optimizer(model, args, lrs["lr"])
    model, optimizer, train_dl, eval_dl = accelerator.prepare(model, optimizer, train_dl, eval_dl)
    # length in updates, resume, batches, progress, checkpoints, SIGTERM/NaN stops: the shared TrainingRun
    run = T.TrainingRun(accelerator, args, len(train_dl), batch, resume_path)
    scheduler = T.build_scheduler(optimizer, args, lrs, run.updates_per_epoch, run.max_steps)
    T.init_tracking(accelerator, args, "run_instance_segmentation", global_batch_size=batch)

    train_time = 0.0
    if not args.eval_only:
        with run:  # progress bar + SIGTERM hook, removed however the loop ends
            for epoch in run.epochs():
                model.train()
                for data in run.batches(train_dl, epoch, train_set):
                    scheduler.step_update(run.completed_steps)
                    with accelerator.accumulate(model):
                        loss = model(
                            pixel_values=data["pixel_values"], image_sizes=data["image_sizes"], labels=data["labels"]
                        ).loss
                        T.backward_and_step(accelerator, model, loss, optimizer, args.clip_grad, args.clip_mode)
                    if not accelerator.sync_gradients:
                        continue
                    value = accelerator.reduce(loss.detach(), "mean").item()
                    run.update_done(value, T.current_lr(optimizer), epoch, data["pixel_values"].shape[0])
                    if run.done:
                        break
                evaluate_now = args.eval_every_epochs and (epoch + 1) % args.eval_every_epochs == 0
                if run.epoch_finished and evaluate_now and not run.done:
                    record = evaluate(model, eval_dl, accelerator, processor, eval_set)
                    run.log_eval(
                        {f"eval_{k}": v for k, v in record.items() if v is not None}  # None: no object of that size
                        | {"step": run.completed_steps, "epoch": epoch + 1}
                    )
                run.epoch_done(epoch)
        train_time = run.train_time
    completed, history, eval_history = run.completed_steps, run.history, run.eval_history

    results = evaluate(model, eval_dl, accelerator, processor, eval_set)
    all_results = dict(
        {f"eval_{k}": v for k, v in results.items()},
        train_time_s=train_time,
        completed_steps=completed,
        wall_time_s=T.wall_time(),
    )
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        out = Path(args.output_dir)
        with T.export_atomically(out) as folder:  # a crash or SIGTERM while exporting leaves no half-written folder
            unwrapped.save_pretrained(folder)  # with auto_map + the model files: loads as Hub remote code
            processor.save_pretrained(folder)
            box, mask = 100 * (results["bbox_AP"] or 0), 100 * (results["segm_AP"] or 0)
            write_model_card(
                folder / "README.md",
                model_name=out.name,
                task="object-detection",
                dataset_name=dataset_label,
                dataset_on_hub=bool(args.dataset_name),
                tags=["instance-segmentation", "mask-rcnn", "object-detection"],
                intro=(
                    f"PaCa-ViT Mask R-CNN (torchvision detection engine), trained with "
                    f"`examples/run_instance_segmentation.py` (recipe `{args.recipe}`). "
                    f"Held-out COCO box AP {box:.1f}, mask AP {mask:.1f} (pycocotools).\n\n"
                    "```python\nfrom transformers import pipeline\n"
                    f"detector = pipeline('object-detection', model='{out.name}', trust_remote_code=True)\n"
                    f"segmenter = pipeline('image-segmentation', model='{out.name}', subtask='instance', "
                    "trust_remote_code=True)\n```"
                ),
                sections={
                    "COCO metrics": "\n".join(
                        f"- {key}: {'n/a' if results[key] is None else f'{100 * results[key]:.1f}'}"
                        for key in (f"{t}_{n}" for t in ("bbox", "segm") for n in STAT_NAMES)
                    ),
                    **recipe_section(
                        " ".join(
                            [
                                "python",
                                "examples/run_instance_segmentation.py",
                                *(argv if argv is not None else sys.argv[1:]),
                            ]
                        ),
                        {k: getattr(args, k) for k in BASE_DEFAULTS},
                    ),
                    **hardware_section(
                        T.hardware_description(accelerator, num_threads), T.wall_time(), train_time, completed
                    ),
                },
                metrics=[
                    CardMetric("mean_average_precision", results["bbox_AP"] or 0.0, "box AP"),
                    CardMetric("mean_average_precision", results["segm_AP"] or 0.0, "mask AP"),
                ],
            )
            if args.num_figure_scenes:
                write_figure(unwrapped, processor, eval_set, folder / "detection_examples.png", args.num_figure_scenes)
            T.write_run_files(folder, all_results, history, eval_history, accelerator.num_processes, batch)
        logger.info(f"held-out box AP {box:.1f}, mask AP {mask:.1f}; saved to {out}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return all_results


if __name__ == "__main__":
    main()
    T.teardown(0)

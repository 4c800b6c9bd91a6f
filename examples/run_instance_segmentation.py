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
"""

from __future__ import annotations

import pacavit_openmp_guard  # noqa: F401  first: before torch loads OpenMP

import json  # noqa: E402
import sys  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from accelerate.logging import get_logger  # noqa: E402

from pacavit import PaCaViTConfig, PaCaViTForInstanceSegmentation, PaCaViTMaskRCNNConfig  # noqa: E402
from pacavit import PaCaViTMaskRCNNImageProcessor  # noqa: E402
from pacavit import training as T  # noqa: E402
from pacavit.data.common import check_splits_not_empty, limit_samples  # noqa: E402
from pacavit.data.detection import (  # noqa: E402
    CROP_PRE_RESIZE_SHORT_SIDES,
    CROP_SIZE_RANGE,
    MULTI_SCALE_SHORT_SIDES,
    CocoInstanceDataset,
    DetectionTransform,
    build_digit_scenes_coco,
    coco_from_hf_dataset,
    collate_detection,
    load_coco_folder,
)
from pacavit.metrics.detection import STAT_NAMES, CocoEvaluator  # noqa: E402
from pacavit.model_card import CardMetric, hardware_section, recipe_section, write_model_card  # noqa: E402

logger = get_logger(__name__)

BASE_DEFAULTS = dict(
    T.OPTIMIZATION_DEFAULTS,
    **T.ARCHITECTURE_DEFAULTS,
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
        lr_scheduler_type="multistep",
        decay_milestones=[8, 11],
        decay_rate=0.1,
        weight_decay=0.05,
    ),
}
WARMUP_ITERATIONS = {"paper_coco_1x": 500}  # iteration-based in the original (LinearLR end=500)


def parse_args(argv=None):
    parser = T.RecipeArgumentParser(
        recipes=RECIPES, base_defaults=BASE_DEFAULTS, default_recipe="digit_scenes", description=__doc__
    )
    g = parser.add_argument_group("data")
    g.add_argument(
        "--train_dir", default=None, help="COCO images folder (default: the built-in digit scenes)."
    )
    g.add_argument("--train_annotations", default=None, help="instances_<split>.json of --train_dir.")
    g.add_argument("--validation_dir", default=None)
    g.add_argument("--validation_annotations", default=None)
    g.add_argument(
        "--dataset_name", default=None, help="A 🤗 dataset with image + objects (bbox, category, ...)."
    )
    g.add_argument("--dataset_config_name", default=None)
    g.add_argument(
        "--built_in_data_dir", default="runs/digit-scenes-coco", help="Where the built-in data is written."
    )
    g.add_argument(
        "--built_in_scenes", type=int, nargs=2, default=[300, 60], help="Built-in train/validation scenes."
    )
    g.add_argument(
        "--built_in_digits",
        type=int,
        nargs="+",
        default=[0, 1, 2, 3],
        help="Digit classes of the built-in scenes.",
    )
    g.add_argument("--max_train_samples", type=int, default=None)
    g.add_argument("--max_eval_samples", type=int, default=None)
    g.add_argument(
        "--train_short_sides", type=int, nargs="+", default=None, help="Multi-scale shorter sides."
    )
    g.add_argument("--max_size", type=int, default=None, help="Longer-side limit (mmdet 1333).")
    g.add_argument("--eval_short_side", type=int, default=None)
    g.add_argument("--crop_pre_resize_short_sides", type=int, nargs="+", default=None)
    g.add_argument("--crop_size_range", type=int, nargs=2, default=None)
    g.add_argument(
        "--crop_prob", type=float, default=None, help="Probability of the resize-crop-resize branch."
    )
    g.add_argument("--flip_prob", type=float, default=None)
    m = parser.add_argument_group("model")
    m.add_argument(
        "--model_name_or_path", default=None, help="A PaCaViTForInstanceSegmentation folder / Hub id."
    )
    m.add_argument(
        "--backbone_name_or_path", default=None, help="PaCa-ViT (ImageNet) weights for the backbone."
    )
    T.add_architecture_arguments(m)
    m.add_argument(
        "--detector_overrides", type=json.loads, default=None, help="JSON of PaCaViTMaskRCNNConfig fields."
    )
    e = parser.add_argument_group("evaluation")
    e.add_argument("--eval_only", action="store_true")
    e.add_argument("--num_figure_scenes", type=int, default=4)
    T.add_optimization_arguments(parser)
    T.add_running_arguments(parser, output_dir="runs/instance-segmentation")
    return T.validate_training_args(parser.parse_args(argv))


# --------------------------------------------------------------------------------------------
# Data and model
# --------------------------------------------------------------------------------------------
def load_data(args):
    """(train dataset, validation dataset, dataset label) with their COCO ground truths."""
    if args.dataset_name:
        import datasets

        raw = datasets.load_dataset(args.dataset_name, args.dataset_config_name)
        splits = {}
        for split, names in (("train", ("train",)), ("validation", ("validation", "val", "test"))):
            name = next((n for n in names if n in raw), None)
            if name is None:
                raise ValueError(f"{args.dataset_name} has no {split} split (splits: {list(raw)}).")
            splits[split] = coco_from_hf_dataset(raw[name])
        label = args.dataset_name
    elif args.train_dir or args.validation_dir:
        if not (args.validation_dir and args.validation_annotations) or (
            not args.eval_only and not (args.train_dir and args.train_annotations)
        ):
            raise ValueError(
                "Give --train_dir/--train_annotations and --validation_dir/--validation_annotations."
            )
        splits = {"validation": load_coco_folder(args.validation_dir, args.validation_annotations)}
        splits["train"] = (
            load_coco_folder(args.train_dir, args.train_annotations)
            if args.train_dir
            else splits["validation"]
        )
        label = Path(args.validation_dir).parent.name or "coco"
    else:
        root = build_digit_scenes_coco(
            args.built_in_data_dir, *args.built_in_scenes, digits=args.built_in_digits
        )
        splits = {
            s: load_coco_folder(root / s, root / "annotations" / f"instances_{s}.json")
            for s in ("train", "validation")
        }
        label = "pacavit digit scenes (COCO format)"
    train_set = CocoInstanceDataset(*splits["train"])
    eval_set = CocoInstanceDataset(*splits["validation"])
    for split, dataset, limit in (
        ("train", train_set, args.max_train_samples),
        ("validation", eval_set, args.max_eval_samples),
    ):
        if limit is not None:  # the evaluator then scores only these images
            n = limit_samples(len(dataset), limit, split)
            dataset.image_ids, dataset.images = dataset.image_ids[:n], dataset.images[:n]
    # an empty split stops here, naming it and its source (not in a DataLoader or the COCO evaluator later)
    splits = {"train": train_set, "validation": eval_set}
    check_splits_not_empty(splits, args)
    return train_set, eval_set, label


def build_model(args, id2label) -> PaCaViTForInstanceSegmentation:
    if args.model_name_or_path:
        return PaCaViTForInstanceSegmentation.from_pretrained(args.model_name_or_path)
    overrides = {
        k: v
        for k, v in dict(
            hidden_sizes=args.hidden_sizes,
            depths=args.depths,
            num_attention_heads=args.num_attention_heads,
            num_clusters=args.num_clusters,
        ).items()
        if v is not None
    }
    config = PaCaViTMaskRCNNConfig.from_backbone_config(
        PaCaViTConfig.from_preset(args.preset, **overrides),
        **(args.detector_overrides or {}),
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    model = PaCaViTForInstanceSegmentation(config)
    if args.backbone_name_or_path:  # the original configs start from the ImageNet weights
        model.load_backbone_weights(args.backbone_name_or_path)
    return model


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

    from pacavit.data.common import decode_image

    model.eval()
    count = min(count, len(eval_set))
    fig, axes = plt.subplots(1, count, figsize=(2.6 * count, 2.8), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, index in zip(axes[0], range(count)):
        image = decode_image(eval_set.images[index])
        inputs = processor(image)
        with torch.no_grad():
            outputs = model(**inputs)
        result = processor.post_process_instance_segmentation(
            outputs, threshold=threshold, return_binary_maps=True
        )[0]
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
    processor = PaCaViTMaskRCNNImageProcessor(
        size={"shortest_edge": args.eval_short_side, "longest_edge": args.max_size}
    )
    train_set.transform = DetectionTransform(
        train=True,
        short_sides=args.train_short_sides,
        max_size=args.max_size,
        crop_pre_resize_short_sides=args.crop_pre_resize_short_sides,
        crop_size_range=tuple(args.crop_size_range),
        crop_probability=args.crop_prob,
        flip_probability=args.flip_prob,
        seed=args.seed + accelerator.process_index,
    )
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
    if args.recipe in WARMUP_ITERATIONS and args.num_warmup_steps is None:
        args.num_warmup_steps = WARMUP_ITERATIONS[args.recipe]
    scheduler = T.build_scheduler(optimizer, args, lrs, run.updates_per_epoch, run.max_steps)
    T.init_tracking(accelerator, args, "run_instance_segmentation", global_batch_size=batch)

    train_time = 0.0
    if not args.eval_only:
        run.start()
        for epoch in run.epochs():
            model.train()
            for data in run.batches(train_dl, epoch, train_set):
                scheduler.step_update(run.completed_steps)
                with accelerator.accumulate(model):
                    loss = model(
                        pixel_values=data["pixel_values"],
                        image_sizes=data["image_sizes"],
                        labels=data["labels"],
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
                    {
                        f"eval_{k}": v for k, v in record.items() if v is not None
                    }  # None: no object of that size
                    | {"step": run.completed_steps, "epoch": epoch + 1}
                )
            run.epoch_done(epoch)
        train_time = run.finish()
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
        unwrapped.save_pretrained(out)  # with auto_map + the model files: loads as Hub remote code
        processor.save_pretrained(out)
        box, mask = 100 * (results["bbox_AP"] or 0), 100 * (results["segm_AP"] or 0)
        write_model_card(
            out / "README.md",
            model_name=out.name,
            task="object-detection",
            dataset_name=dataset_label,
            dataset_on_hub=bool(args.dataset_name),
            tags=["instance-segmentation", "mask-rcnn", "object-detection"],
            intro=(
                f"PaCa-ViT Mask R-CNN (torchvision detection engine), trained with "
                f"`examples/run_instance_segmentation.py` (recipe `{args.recipe}`). Held-out COCO box AP {box:.1f}, "
                f"mask AP {mask:.1f} (pycocotools).\n\n```python\nfrom transformers import pipeline\n"
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
        T.write_run_files(out, all_results, history, eval_history, accelerator.num_processes, batch)
        if args.num_figure_scenes:
            write_figure(
                unwrapped, processor, eval_set, out / "detection_examples.png", args.num_figure_scenes
            )
        logger.info(f"held-out box AP {box:.1f}, mask AP {mask:.1f}; saved to {out}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return all_results


if __name__ == "__main__":
    main()
    T.teardown(0)

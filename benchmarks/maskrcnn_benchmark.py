#!/usr/bin/env python
"""Mask R-CNN inference: PaCa-Tiny (PaCaViTForInstanceSegmentation) against torchvision's maskrcnn_resnet50_fpn.

Both detectors run in the same process with the same detector settings (RPN 1000 proposals per level / 1000 per
image at test, NMS 0.7; RoI score threshold, NMS 0.5, 100 detections; 80 classes + background) on one normalised
800x1216 image (the COCO size class of the paper's 252 vs ~260 GFLOPs), end to end: backbone, FPN, RPN, RoI heads,
mask head and the pasting of the masks into the image. Random weights, so the score threshold is 0 for both: every
run then returns exactly 100 detections and the mask branch does the same work as on real images (with 0.05 random
weights return almost nothing and skip it). Repeats are interleaved (repeat r of each model before repeat r+1 of
any), so drift on a shared machine hits both alike; the median is reported, with the load average.

    python benchmarks/maskrcnn_benchmark.py                      # CPU fp32, 2 threads (the RESULTS.md setting)
    python benchmarks/maskrcnn_benchmark.py --device cuda --dtype fp16 --repeats 20
    python benchmarks/maskrcnn_benchmark.py --profile            # where the PaCa detector's time goes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build_models(num_classes: int = 80):
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    from pacavit import PaCaViTForInstanceSegmentation, PaCaViTMaskRCNNConfig

    settings = dict(box_score_threshold=0.0, box_nms_threshold=0.5, box_detections_per_image=100)
    paca = PaCaViTForInstanceSegmentation(PaCaViTMaskRCNNConfig(num_labels=num_classes, **settings)).eval()
    reference = maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=num_classes + 1,
        min_size=800,
        max_size=1333,
        rpn_pre_nms_top_n_test=1000,
        rpn_post_nms_top_n_test=1000,
        rpn_nms_thresh=0.7,
        box_score_thresh=0.0,
        box_nms_thresh=0.5,
        box_detections_per_img=100,
    ).eval()
    return {"pacavit-tiny maskrcnn": paca, "torchvision maskrcnn_resnet50_fpn": reference}


def runner(name, model, image):
    """A closure running one full inference; both take the already-normalised image (torchvision's transform
    then only batches it: min_size 800 / max_size 1333 leave an 800x1216 image at scale 1)."""
    if name.startswith("pacavit"):
        pixel_values = image[None]
        sizes = torch.tensor([list(image.shape[-2:])])
        return lambda: model(pixel_values=pixel_values, image_sizes=sizes, original_sizes=sizes).detections
    model.transform.image_mean, model.transform.image_std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    return lambda: model([image])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1216)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of the PaCa detector")
    parser.add_argument("--output", default=None, help="write the results JSON here")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    image = torch.randn(3, args.height, args.width, device=device, dtype=dtype)
    models = {name: model.to(device=device, dtype=dtype) for name, model in build_models().items()}
    runs = {name: runner(name, model, image) for name, model in models.items()}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {name: [] for name in runs}
    with torch.inference_mode():
        for name, run in runs.items():
            for _ in range(args.warmup):
                detections = run()
            count = len(detections[0]["boxes"])
            print(f"{name}: {count} detections, masks {tuple(detections[0]['masks'].shape)}")
        load_before = os.getloadavg()
        for _ in range(args.repeats):
            for name, run in runs.items():
                sync()
                start = time.perf_counter()
                run()
                sync()
                times[name].append(time.perf_counter() - start)
        load_after = os.getloadavg()
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            name = next(iter(runs))
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                runs[name]()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))

    medians = {name: statistics.median(values) for name, values in times.items()}
    paca, reference = medians["pacavit-tiny maskrcnn"], medians["torchvision maskrcnn_resnet50_fpn"]
    for name, value in medians.items():
        print(
            f"{name:36s} {value * 1000:9.1f} ms/image  {1 / value:6.3f} images/s  "
            f"(all: {[round(t, 3) for t in times[name]]})"
        )
    print(
        f"speed ratio (PaCa images/s / ResNet-50 images/s): {reference / paca:.3f}  "
        f"load average {load_before} -> {load_after}"
    )
    result = dict(
        date=time.strftime("%Y-%m-%d %H:%M"),
        machine=platform.processor() or platform.machine(),
        threads=args.threads,
        device=args.device,
        dtype=args.dtype,
        image=[args.height, args.width],
        repeats=args.repeats,
        seconds=times,
        median_s=medians,
        ratio=reference / paca,
        load_average=[load_before, load_after],
        torch=torch.__version__,
        params={n: sum(p.numel() for p in m.parameters()) for n, m in models.items()},
    )
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

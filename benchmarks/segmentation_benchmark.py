"""Semantic-segmentation inference throughput: PaCa-Tiny + PaCa head and UperNet-PaCa-Tiny against transformers'
SegFormer-B2 and UperNet-ConvNeXt-T (random-init configs, nothing downloaded), measured in one run.

    python benchmarks/segmentation_benchmark.py --threads 2 --batch-sizes 1 8 --repeats 3   # CPU, the issue's setting
    python benchmarks/segmentation_benchmark.py --device cuda --batch-sizes 8 32 --repeats 10

ADE20K settings: 150 classes, 512x512, the original head widths (PaCa head 256 channels, UperNet 512 + the
ConvNeXt-T/PaCa widths), the downstream cluster counts [200, 200, 200, 0]. Every model returns what its pipeline
post-processes: SegFormer and the PaCa head stride-4 logits, both UperNets logits at the input size (transformers'
UperNet upsamples inside; ours is timed with the same upsampling). Auxiliary heads are off (training only).
Repeats are interleaved across models (repeat r of every model before r+1 of any) so machine drift hits all alike;
the figure is the median. Results: JSON to --out, table to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F


def build(name: str):
    from transformers import (
        ConvNextConfig,
        SegformerConfig,
        SegformerForSemanticSegmentation,
        UperNetConfig,
        UperNetForSemanticSegmentation,
    )

    from pacavit import PaCaViTConfig, PaCaViTForSemanticSegmentation, PaCaViTSegmentationConfig

    if name.startswith("pacavit"):
        head = "paca" if name.endswith("paca-head") else "upernet"
        backbone = PaCaViTConfig.from_preset("pacavit-tiny", num_clusters=[200, 200, 200, 0])
        config = PaCaViTSegmentationConfig.from_backbone_config(
            backbone, num_labels=150, decode_head_type=head, use_auxiliary_head=False
        )
        model = PaCaViTForSemanticSegmentation(config)
        upsample = head == "upernet"
        return model, upsample
    if name == "segformer-b2":
        config = SegformerConfig(
            depths=[3, 4, 6, 3], hidden_sizes=[64, 128, 320, 512], decoder_hidden_size=768, num_labels=150
        )
        return SegformerForSemanticSegmentation(config), False
    if name == "upernet-convnext-tiny":
        backbone = ConvNextConfig(
            depths=[3, 3, 9, 3],
            hidden_sizes=[96, 192, 384, 768],
            out_features=["stage1", "stage2", "stage3", "stage4"],
        )
        config = UperNetConfig(backbone_config=backbone, hidden_size=512, num_labels=150, use_auxiliary_head=False)
        return UperNetForSemanticSegmentation(config), False
    raise ValueError(f"unknown model {name!r}")


MODELS = ["pacavit-tiny-paca-head", "segformer-b2", "pacavit-tiny-upernet", "upernet-convnext-tiny"]
PAIRS = [("pacavit-tiny-paca-head", "segformer-b2", 1.5), ("pacavit-tiny-upernet", "upernet-convnext-tiny", 1.2)]


def forward(model, upsample, x):
    logits = model(pixel_values=x).logits
    if upsample:
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return logits


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup-max-batch", type=int, default=1, help="warm up only batch sizes up to this one")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    models = {}
    for name in args.models:
        torch.manual_seed(0)
        model, upsample = build(name)
        models[name] = (model.eval().to(device), upsample)
    results = []
    for batch in args.batch_sizes:
        x = torch.randn(batch, 3, args.image_size, args.image_size, device=device)
        times = {name: [] for name in models}
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
        with torch.inference_mode(), autocast:
            for model, upsample in models.values():  # warm-up (large batches reuse the small one's)
                if batch <= args.warmup_max_batch:
                    forward(model, upsample, x)
            for _ in range(args.repeats):
                for name, (model, upsample) in models.items():
                    sync()
                    start = time.perf_counter()
                    forward(model, upsample, x)
                    sync()
                    times[name].append(time.perf_counter() - start)
        for name, values in times.items():
            median = statistics.median(values)
            results.append(
                dict(
                    model=name,
                    batch=batch,
                    median_s=median,
                    min_s=min(values),
                    max_s=max(values),
                    images_per_s=batch / median,
                )
            )
            print(f"measured {name} batch {batch}: {batch / median:.3f} img/s", flush=True)
        if args.out:  # after every batch size, so an interrupted run keeps what it measured
            with open(args.out, "w") as f:
                json.dump(dict(results=results, args=vars(args), partial=True), f, indent=1)
    by = {(r["model"], r["batch"]): r for r in results}
    print(f"{'model':26s} {'batch':>5s} {'img/s':>8s} {'s/batch':>8s}")
    for r in results:
        print(f"{r['model']:26s} {r['batch']:5d} {r['images_per_s']:8.3f} {r['median_s']:8.3f}")
    ratios = []
    for ours, theirs, target in PAIRS:
        for batch in args.batch_sizes:
            if (ours, batch) in by and (theirs, batch) in by:
                ratio = by[(ours, batch)]["images_per_s"] / by[(theirs, batch)]["images_per_s"]
                ratios.append(
                    dict(ours=ours, theirs=theirs, batch=batch, ratio=ratio, target=target, met=ratio >= target)
                )
                print(
                    f"{ours} / {theirs} at batch {batch}: {ratio:.2f}x "
                    f"(target {target}x: {'met' if ratio >= target else 'MISSED'})"
                )
    record = dict(
        results=results,
        ratios=ratios,
        args=vars(args),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=platform.processor() or platform.machine(),
        torch=torch.__version__,
        load_average=os.getloadavg() if hasattr(os, "getloadavg") else None,
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)
    return record


if __name__ == "__main__":
    main()

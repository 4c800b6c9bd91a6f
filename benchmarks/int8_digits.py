"""Dynamic int8 (Linear layers) against fp32 on the digits classifier: CPU speed at batch 1 and 8, and held-out top-1.

    python examples/run_classification.py --output_dir /tmp/digits-run      # the default digits model (~1 min)
    python benchmarks/int8_digits.py /tmp/digits-run --threads 2

The held-out split is rebuilt as the training script builds it (`split_train_validation` of the scikit-learn digits
with the recipe's fraction and seed), preprocessed by the folder's image processor. Quantized variants:
`torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)` and, when torchao is installed, its
`quantize_(model, Int8DynamicActivationInt8WeightConfig())`. Timing: the variants' repeats are interleaved (repeat r of
every variant before repeat r+1 of any), median over repeats, so load drift on a shared machine hits all alike.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone

import torch
from torch import nn
from transformers import AutoImageProcessor

import pacavit  # noqa: F401
from pacavit import PaCaViTForImageClassification
from pacavit.data import load_digits_dataset, split_train_validation, to_rgb


def held_out(model_dir: str, fraction: float, seed: int):
    processor = AutoImageProcessor.from_pretrained(model_dir)
    validation = split_train_validation(load_digits_dataset(), fraction, seed)["validation"]
    images = [to_rgb(image) for image in validation["image"]]
    pixel_values = processor(images, return_tensors="pt").pixel_values
    return pixel_values, torch.tensor(validation["label"])


def variants(model: nn.Module) -> dict[str, nn.Module]:
    out = {"fp32": model}
    out["int8 torch.ao quantize_dynamic"] = torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8
    )
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        pass
    else:
        ao_model = copy.deepcopy(model)
        quantize_(ao_model, Int8DynamicActivationInt8WeightConfig())
        out["int8 torchao quantize_"] = ao_model
    return out


@torch.no_grad()
def predictions(model: nn.Module, pixel_values: torch.Tensor, batch: int = 64) -> torch.Tensor:
    return torch.cat([model(chunk).logits.argmax(-1) for chunk in pixel_values.split(batch)])


@torch.no_grad()
def timings(models: dict, pixel_values: torch.Tensor, batch: int, repeats: int, steps: int) -> dict[str, float]:
    inputs = pixel_values[:batch]
    for model in models.values():  # warm-up
        for _ in range(3):
            model(inputs)
    samples = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            for _ in range(steps):
                model(inputs)
            samples[name].append((time.perf_counter() - start) / steps * 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--train_val_split", type=float, default=0.2, help="the digits recipe's held-out fraction")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = PaCaViTForImageClassification.from_pretrained(args.model_dir).eval()
    pixel_values, labels = held_out(args.model_dir, args.train_val_split, args.seed)
    models = variants(model)
    results = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "loadavg_start": os.getloadavg()}
    results.update(torch=torch.__version__, cpu=platform.processor() or platform.machine(), threads=args.threads)
    results["held_out_images"], results["input_size"] = len(labels), list(pixel_values.shape[-2:])
    reference = predictions(model, pixel_values)
    for name, variant in models.items():
        predicted = predictions(variant, pixel_values)
        results[name] = {
            "top1": round((predicted == labels).float().mean().item() * 100, 2),
            "agreement_with_fp32": round((predicted == reference).float().mean().item() * 100, 2),
        }
    for batch in (1, 8):
        for name, ms in timings(models, pixel_values, batch, args.repeats, args.steps).items():
            results[name][f"ms_batch{batch}"] = round(ms, 2)
    results["loadavg_end"] = os.getloadavg()

    print(
        f"{'variant':34s} {'top-1 %':>8s} {'agree %':>8s} {'ms b1':>8s} {'ms b8':>8s} {'x fp32 b1':>9s} {'x b8':>6s}"
    )
    fp32 = results["fp32"]
    for name in models:
        row = results[name]
        print(
            f"{name:34s} {row['top1']:8.2f} {row['agreement_with_fp32']:8.2f} {row['ms_batch1']:8.2f} "
            f"{row['ms_batch8']:8.2f} {fp32['ms_batch1'] / row['ms_batch1']:9.2f} "
            f"{fp32['ms_batch8'] / row['ms_batch8']:6.2f}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()

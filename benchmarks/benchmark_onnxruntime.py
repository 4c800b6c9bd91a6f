"""fp32 ONNX Runtime inference on CPU: PaCa-Tiny against timm's ConvNeXt-T, exported the same way, in one run.

    python benchmarks/benchmark_onnxruntime.py                         # batch 1 and 8, 224x224, 2 threads
    python benchmarks/benchmark_onnxruntime.py --repeats 15 --json benchmarks/results/local_onnxruntime.json

Both models are exported as `python -m pacavit.graph_export` exports a classifier: `torch.export.export` with a
dynamic batch, height and width (`pacavit.graph_export.dynamic_image_shapes`), traced at 2x3xSxS, then torch's
dynamo-based ONNX exporter (`pacavit.graph_export.export_onnx`, `optimize=False`), so one file per model serves
both batch sizes. PaCa-Tiny goes through `export_program` (its `GraphOutputs` wrapper gives plain `logits`);
timm's ConvNeXt-T already returns a tensor, so it is `torch.export.export(model, ...)` with the same dynamic
shapes, except that height and width start at 64 px, not 33 (below 64 ConvNeXt's last stage is a 1x1 grid, which
torch.export specialises and refuses for a range starting at 33), and `export_onnx(..., output_names=["logits"])`
(`export_program` accepts PaCa-ViT classes only: it names their outputs). Weights are random (`pretrained=False`;
nothing is downloaded): speed does not depend on them.

Each ONNX file runs in an `onnxruntime.InferenceSession` (CPUExecutionProvider, all graph optimisations, intra-op
threads = --threads, one inter-op thread, no spinning). Every (model, batch) case is checked against PyTorch eager
once, warmed up, then the repeats are interleaved (repeat r of every case before repeat r+1 of any), so load drift
on a shared machine hits every case alike; each repeat times --steps runs and the table gives the median ms per
batch and img/s. PyTorch eager (torch.inference_mode, same threads) is timed in the same loop for reference.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

import pacavit
from pacavit.graph_export import dynamic_image_shapes, export_onnx, export_program

# ConvNeXt downsamples 32x with flooring convolutions: below 64 px its last stage is 1x1, which torch.export
# specialises (a constraint violation for the range 33-4096 that PaCa-ViT exports with)
TIMM_MIN_SIZE = 64


def build(name: str) -> torch.nn.Module:
    if name.startswith("pacavit"):
        return pacavit.PaCaViTForImageClassification(pacavit.PaCaViTConfig.from_preset(name)).eval()
    import timm

    return timm.create_model(name, pretrained=False).eval()


def export(name: str, model: torch.nn.Module, path: Path, image_size: int) -> float:
    """Export `model` to `path` (dynamic batch/height/width); returns the export time in seconds."""
    start = time.perf_counter()
    example = torch.randn(2, 3, image_size, image_size)  # batch 2: a batch of 1 would be specialised
    if name.startswith("pacavit"):
        export_onnx(model, path, export_program(model, example))
    else:
        with torch.no_grad():
            # timm's forward argument is `x` (the ONNX input is still named pixel_values: export_onnx names it).
            # ConvNeXt's last stage is a 1x1 grid below 64 px, which torch.export specialises: min_size=64.
            shapes = {"x": dynamic_image_shapes(min_size=TIMM_MIN_SIZE)}
            program = torch.export.export(model, (example,), dynamic_shapes=shapes)
        export_onnx(model, path, program, output_names=["logits"])
    return time.perf_counter() - start


def eager_run(model: torch.nn.Module, pixel_values: torch.Tensor) -> None:
    with torch.inference_mode():
        model(pixel_values)


def session(path: Path, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no busy-waiting of ORT's worker threads after a run: it would steal the cores from the interleaved cases
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def environment(args) -> dict:
    import onnxruntime
    import timm
    import transformers

    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "timm": timm.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "loadavg_start": os.getloadavg(),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["pacavit-tiny", "convnext_tiny"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per case before the repeats")
    parser.add_argument("--repeats", type=int, default=9, help="timed repeats per case (median reported)")
    parser.add_argument("--steps", type=int, default=1, help="runs per timed repeat")
    parser.add_argument("--no-eager", action="store_true", help="time onnxruntime only")
    parser.add_argument("--onnx-dir", default=None, help="keep the ONNX files here (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="write environment + results as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = environment(args)
    print(json.dumps(env))

    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = Path(args.onnx_dir or tmp)
        onnx_dir.mkdir(parents=True, exist_ok=True)
        cases, export_seconds = [], {}
        for name in args.models:
            model = build(name)
            path = onnx_dir / f"{name}.onnx"
            export_seconds[name] = export(name, model, path, args.image_size)
            print(f"exported {name} in {export_seconds[name]:.0f} s ({path.stat().st_size / 2**20:.1f} MiB)")
            sess = session(path, args.threads)
            for batch in args.batch_sizes:
                x = np.random.default_rng(0).standard_normal((batch, 3, args.image_size, args.image_size))
                x = x.astype(np.float32)
                with torch.inference_mode():
                    expected = model(torch.from_numpy(x))
                expected = (expected.logits if hasattr(expected, "logits") else expected).numpy()
                error = float(np.abs(sess.run(None, {"pixel_values": x})[0] - expected).max())
                runners = {"onnxruntime": lambda s=sess, x=x: s.run(None, {"pixel_values": x})}
                if not args.no_eager:
                    runners["eager"] = functools.partial(eager_run, model, torch.from_numpy(x))
                for runtime, run in runners.items():
                    cases.append({"model": name, "batch": batch, "runtime": runtime, "run": run, "times": []})
                    cases[-1]["max_abs_error_vs_eager"] = error
        for case in cases:
            for _ in range(args.warmup):
                case["run"]()
        for _ in range(args.repeats):
            for case in cases:
                start = time.perf_counter()
                for _ in range(args.steps):
                    case["run"]()
                case["times"].append((time.perf_counter() - start) / args.steps)
    env["loadavg_end"] = os.getloadavg()

    results = []
    for case in cases:
        ms = statistics.median(case["times"]) * 1000
        results.append(
            {
                "model": case["model"],
                "batch": case["batch"],
                "runtime": case["runtime"],
                "median_ms": round(ms, 2),
                "min_ms": round(min(case["times"]) * 1000, 2),
                "max_ms": round(max(case["times"]) * 1000, 2),
                "img_per_s": round(case["batch"] * 1000 / ms, 2),
                "ort_max_abs_error_vs_eager": case["max_abs_error_vs_eager"],
            }
        )
    print(f"\nfp32, CPU, {args.threads} threads, {args.image_size}x{args.image_size}, median of {args.repeats}")
    print(f"load average: start {env['loadavg_start']}, end {env['loadavg_end']}")
    header = f"| {'model':<14} | batch | {'runtime':<11} | ms / batch | img/s | speed vs {args.models[-1]} |"
    print(header)
    print("|" + "|".join("-" * len(col) for col in header.strip("|").split("|")) + "|")
    by_key = {(r["model"], r["batch"], r["runtime"]): r for r in results}
    for r in results:
        ref = by_key.get((args.models[-1], r["batch"], r["runtime"]))
        ratio = f"{ref['median_ms'] / r['median_ms']:.2f}x" if ref else "-"
        print(
            f"| {r['model']:<14} | {r['batch']:>5} | {r['runtime']:<11} | {r['median_ms']:>10.1f} "
            f"| {r['img_per_s']:>5.1f} | {ratio} |"
        )
    print(
        "ORT max abs error vs eager (logits): "
        + ", ".join(
            f"{r['model']} b{r['batch']}: {r['ort_max_abs_error_vs_eager']:.1e}"
            for r in results
            if r["runtime"] == "onnxruntime"
        )
    )
    print("export seconds: " + ", ".join(f"{k}: {v:.0f}" for k, v in export_seconds.items()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps({"environment": env, "export_seconds": export_seconds, "results": results}, indent=1)
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Throughput of PaCa-ViT presets and timm peers, measured in one run so machine noise cancels in the ratios.

Examples::

    # CPU, the issue's setting: fp32, 2 threads, batch 8, 224x224, median of 7 (inference and train step)
    python benchmarks/benchmark.py --device cpu --threads 2 --batch-size 8 --repeats 7 --mode both

    # resolution scaling at batch 1 (ms per image and cost ratio against the first size)
    python benchmarks/benchmark.py --models pacavit-tiny convnext_tiny --scaling 224,448,672,896 --threads 2

    # GPU, bf16, channels_last, compiled
    python benchmarks/benchmark.py --device cuda --dtype bf16 --batch-size 256 --channels-last --compile

    # compare a modified copy of the package (a folder holding __init__.py/configuration_/modeling_pacavit.py)
    python benchmarks/benchmark.py --models pacavit-tiny pacavit-tiny@/tmp/variant/pacavit convnext_tiny

Models: PaCa presets (``pacavit.list_presets()``), optionally ``preset:eager`` (attention backend for that entry)
and/or ``preset@/path/to/package`` (another copy of the package, e.g. a modified one), and any timm model name (built
with ``pretrained=False``; nothing is downloaded). Defaults: pacavit-tiny, convnext_tiny, swin_tiny_patch4_window7_224,
pvt_v2_b2.

Method: every model is built and warmed up first, then the repeats are *interleaved* (repeat r of every model
before repeat r+1 of any), so load drift on a shared machine hits all models alike; each repeat times
``--steps`` iterations; the reported figure is the median over repeats (min/max also kept in the JSON).
Train step = forward + cross-entropy + backward + AdamW step (+ zero_grad). On CUDA every timed region is
bracketed by ``torch.cuda.synchronize()``. bf16/fp16 use autocast (weights stay fp32, like mixed-precision
training); ``--cast-weights`` converts the model instead for inference.

The printed table has img/s, ms per batch, and the ratio to ``--reference`` (convnext_tiny by default), plus
achieved GMAC/s (strict multiply-accumulates from benchmarks/flops.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
DEFAULT_MODELS = ["pacavit-tiny", "convnext_tiny", "swin_tiny_patch4_window7_224", "pvt_v2_b2"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ------------------------------------------------------------------------------------------------
# model construction
# ------------------------------------------------------------------------------------------------
_PACKAGES: dict[str, object] = {}


def load_pacavit_package(path: str | None):
    """The installed `pacavit`, or a copy of the package loaded from `path` under a unique module name."""
    if not path:
        import pacavit

        return pacavit
    path = str(Path(path).resolve())
    if path in _PACKAGES:
        return _PACKAGES[path]
    name = f"pacavit_variant_{len(_PACKAGES)}"
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(path, "__init__.py"), submodule_search_locations=[path]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    _PACKAGES[path] = module
    return module


def is_paca(spec: str) -> bool:
    return spec.split("@")[0].startswith("pacavit")


def build_model(spec: str, image_size: int, attn_implementation: str | None, num_labels: int = 1000):
    name, _, path = spec.partition("@")
    name, _, attn_override = name.partition(":")  # "pacavit-tiny:eager" picks the attention backend
    attn_implementation = attn_override or attn_implementation
    if is_paca(spec):
        package = load_pacavit_package(path or None)
        kwargs = {"num_labels": num_labels}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        config = package.PaCaViTConfig.from_preset(name, **kwargs)
        return package.PaCaViTForImageClassification(config)
    import timm

    kwargs = {}
    if image_size != 224 and any(key in name for key in ("swin", "vit_", "deit", "beit")):
        kwargs["img_size"] = image_size
    return timm.create_model(name, pretrained=False, num_classes=num_labels, **kwargs)


def logits_of(output):
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    return output[0]


def strict_gmacs(spec: str, image_size: int) -> float | None:
    """Strict MACs per image from benchmarks/flops.py (meta device, instant); None if it fails."""
    try:
        spec_ = importlib.util.spec_from_file_location("pacavit_flops_tool", HERE / "flops.py")
        tool = importlib.util.module_from_spec(spec_)
        spec_.loader.exec_module(tool)
        name, _, path = spec.partition("@")
        name = name.partition(":")[0]
        if is_paca(spec):
            package = load_pacavit_package(path or None)
            with torch.device("meta"):
                config = package.PaCaViTConfig.from_preset(name, num_labels=1000, attn_implementation="eager")
                model = package.PaCaViTForImageClassification(config).eval()
            return tool.count(name, image_size, model=model)["strict_macs"] / 1e9
        return tool.count(name, image_size)["strict_macs"] / 1e9
    except Exception:  # noqa: BLE001 - informative only, never fails a benchmark
        return None


# ------------------------------------------------------------------------------------------------
# measurement
# ------------------------------------------------------------------------------------------------
class Runner:
    """One model in one mode: owns its inputs (and optimizer), runs `steps` iterations per call."""

    def __init__(self, spec, mode, args, device, batch_size, image_size):
        self.spec, self.mode, self.device = spec, mode, device
        self.batch_size, self.image_size = batch_size, image_size
        dtype = DTYPES[args.dtype]
        torch.manual_seed(0)
        model = build_model(spec, image_size, args.attn_implementation)
        if args.activation_checkpointing and mode == "train" and hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable()
        model = model.to(device)
        memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.autocast = nullcontext()
        if dtype != torch.float32:
            if mode == "infer" and args.cast_weights:
                model = model.to(dtype)
            else:
                self.autocast = torch.autocast(device_type=device.type, dtype=dtype)
        input_dtype = dtype if (mode == "infer" and args.cast_weights) else torch.float32
        self.pixel_values = torch.randn(batch_size, 3, image_size, image_size, device=device, dtype=input_dtype)
        self.pixel_values = self.pixel_values.contiguous(memory_format=memory_format)
        self.labels = torch.randint(0, 1000, (batch_size,), device=device)
        self.model = model.train(mode == "train")
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if mode == "train" else None
        self.forward = torch.compile(model) if args.compile else model
        self.compile_s = None
        self.peak_step_bytes = None
        self.times: list[float] = []

    def step(self):
        if self.mode == "infer":
            with torch.inference_mode(), self.autocast:
                self.forward(self.pixel_values)
        else:
            with self.autocast:
                loss = F.cross_entropy(logits_of(self.forward(self.pixel_values)).float(), self.labels)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, steps: int) -> float:
        self.sync()
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.sync()
        return time.perf_counter() - start

    def warmup(self, warmup: int):
        start = time.perf_counter()
        self.run(1)  # first call: compilation / allocator / oneDNN primitive creation
        first = time.perf_counter() - start
        if warmup > 1:
            self.run(warmup - 1)
        self.compile_s = first
        self.peak_step_bytes = self.measure_peak_step_bytes() if self.device.type == "cuda" else None

    def measure_peak_step_bytes(self) -> int:
        """Peak CUDA memory of one step of this model alone: its weights and optimizer state plus what the step
        allocates on top of what was allocated before it (other runners' models stay resident, so the device-wide
        peak would not be this model's)."""
        self.sync()
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.run(1)
        transient = torch.cuda.max_memory_allocated(self.device) - before
        state = list(self.model.parameters())
        if self.optimizer is not None:
            state += [t for group in self.optimizer.state.values() for t in group.values() if torch.is_tensor(t)]
        return transient + sum(t.numel() * t.element_size() for t in state)

    def summary(self, steps: int, stat: str = "median") -> dict:
        per_step = [t / steps for t in self.times]
        median = statistics.median(per_step) if stat == "median" else min(per_step)
        return {
            "model": self.spec,
            "mode": self.mode,
            "batch_size": self.batch_size,
            "image_size": self.image_size,
            "median_s_per_step": median,
            "min_s_per_step": min(per_step),
            "max_s_per_step": max(per_step),
            "img_per_s": self.batch_size / median,
            "ms_per_img": 1000 * median / self.batch_size,
            "first_step_s": self.compile_s,
            "repeats": len(per_step),
            "peak_step_memory_gb": None if self.peak_step_bytes is None else self.peak_step_bytes / 2**30,
        }


def is_oom(error: Exception) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def measure_cases(cases, args, device, log=print) -> list[dict]:
    """Time every (spec, mode, batch, image_size) case with interleaved repeats; one result per case."""
    runners = []
    for spec, mode, batch_size, image_size in cases:
        runner = Runner(spec, mode, args, device, batch_size, image_size)
        runner.warmup(args.warmup)
        runners.append(runner)
        log(f"  built+warmed {spec} [{mode}] batch {batch_size} {image_size}px (first step {runner.compile_s:.2f}s)")
    if getattr(args, "interleave", True):
        for _ in range(args.repeats):  # interleaved repeats: drift on a shared machine hits every case alike
            for runner in runners:
                runner.times.append(runner.run(args.steps))
    else:  # each case back to back (warm allocator state, as in a steady-state serving loop)
        for runner in runners:
            runner.run(1)
            for _ in range(args.repeats):
                runner.times.append(runner.run(args.steps))
    results = [runner.summary(args.steps, args.stat) for runner in runners]
    for row in results:
        row["stat"] = args.stat
    del runners
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results


def measure(specs, mode, args, device, batch_size, image_size, log=print) -> list[dict]:
    return measure_cases([(spec, mode, batch_size, image_size) for spec in specs], args, device, log)


def profile(spec, mode, args, device, batch_size, image_size, row_limit=25) -> str:
    runner = Runner(spec, mode, args, device, batch_size, image_size)
    runner.warmup(max(args.warmup, 2))
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, record_shapes=False) as prof:
        runner.run(max(args.steps, 3))
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort_by, row_limit=row_limit)


# ------------------------------------------------------------------------------------------------
# reporting
# ------------------------------------------------------------------------------------------------
def environment(args, device) -> dict:
    env = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
    }
    try:
        import timm
        import transformers

        env.update(timm=timm.__version__, transformers=transformers.__version__)
    except ImportError:  # pragma: no cover
        pass
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    try:
        env["loadavg"] = os.getloadavg()
    except OSError:  # pragma: no cover
        pass
    return env


def print_table(results, reference, gmacs, out=print):
    by_mode: dict[str, list[dict]] = {}
    for row in results:
        by_mode.setdefault(row["mode"], []).append(row)
    for mode, rows in by_mode.items():
        ref = next((r for r in rows if r["model"] == reference), None)
        out(f"\n[{mode}] batch {rows[0]['batch_size']}, {rows[0]['image_size']}x{rows[0]['image_size']}")
        out(f"{'model':44s} {'img/s':>9s} {'ms/batch':>10s} {'x ' + reference[:14]:>17s} {'GMACs':>7s} {'GMAC/s':>8s}")
        for row in rows:
            ratio = row["img_per_s"] / ref["img_per_s"] if ref else float("nan")
            row[f"ratio_vs_{reference}"] = ratio if ref else None
            g = gmacs.get(row["model"])
            rate = g * row["img_per_s"] * (3 if mode == "train" else 1) if g else None
            row["gmacs_per_img"] = g
            out(
                f"{row['model']:44s} {row['img_per_s']:9.2f} {1000 * row['median_s_per_step']:10.1f} {ratio:17.3f} "
                f"{(g or float('nan')):7.3f} {(rate or float('nan')):8.1f}"
            )
    out("(GMAC/s counts forward MACs; for train x3 for forward+backward)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--reference", default="convnext_tiny", help="model the ratios are taken against")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument(
        "--cast-weights", action="store_true", help="inference: convert weights to --dtype instead of autocast"
    )
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model (compile time is reported)")
    parser.add_argument(
        "--attn-implementation", default=None, help="PaCa attention backend: sdpa (default), eager, xformers"
    )
    parser.add_argument(
        "--activation-checkpointing", action="store_true", help="PaCa train step with activation checkpointing"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, auto")
    parser.add_argument("--mode", choices=["infer", "train", "both"], default="both")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up iterations per model")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats (median reported)")
    parser.add_argument(
        "--no-interleave",
        dest="interleave",
        action="store_false",
        help="time each case's repeats back to back instead of round-robin over cases",
    )
    parser.add_argument("--stat", choices=["median", "min"], default="median", help="statistic over repeats")
    parser.add_argument("--steps", type=int, default=None, help="iterations per repeat (default 1 on CPU, 10 on CUDA)")
    parser.add_argument(
        "--scaling", default=None, help="comma-separated sizes: resolution-scaling mode at --scaling-batch"
    )
    parser.add_argument("--scaling-batch", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="also print a torch.profiler table per model and mode")
    parser.add_argument("--profile-rows", type=int, default=25)
    parser.add_argument("--json", default=None, help="write environment + results as JSON")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if args.steps is None:
        args.steps = 10 if device.type == "cuda" else 1
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    env = environment(args, device)
    print(json.dumps(env))
    modes = ["infer", "train"] if args.mode == "both" else [args.mode]
    output = {"environment": env, "args": vars(args), "results": [], "scaling": [], "profiles": {}}

    if args.scaling:
        sizes = [int(s) for s in args.scaling.split(",")]
        rows = []
        for mode in modes:  # all sizes and models of a mode are interleaved in one measurement
            cases = [(spec, mode, args.scaling_batch, size) for size in sizes for spec in args.models]
            for row in measure_cases(cases, args, device):
                row["gmacs_per_img"] = strict_gmacs(row["model"], row["image_size"])
                rows.append(row)
        print(f"\nResolution scaling, batch {args.scaling_batch} (ms per image; cost and MAC ratios vs {sizes[0]})")
        print(
            f"{'model':36s} {'mode':6s} " + " ".join(f"{s:>9d}" for s in sizes) + "   cost ratio   MAC ratio   pixels"
        )
        for mode in modes:
            for spec in args.models:
                mine = {r["image_size"]: r for r in rows if r["model"] == spec and r["mode"] == mode}
                first = mine[sizes[0]]
                cost = mine[sizes[-1]]["median_s_per_step"] / first["median_s_per_step"]
                macs = (mine[sizes[-1]]["gmacs_per_img"] or float("nan")) / (first["gmacs_per_img"] or float("nan"))
                for size in sizes:
                    mine[size]["cost_ratio"] = mine[size]["median_s_per_step"] / first["median_s_per_step"]
                print(
                    f"{spec:36s} {mode:6s} "
                    + " ".join(f"{mine[s]['ms_per_img']:9.1f}" for s in sizes)
                    + f"   {cost:9.2f}x  {macs:9.2f}x  {(sizes[-1] / sizes[0]) ** 2:6.1f}x"
                )
        output["scaling"] = rows
    else:
        gmacs = {spec: strict_gmacs(spec, args.image_size) for spec in args.models}
        for mode in modes:
            batch = args.batch_size
            while True:
                try:
                    results = measure(args.models, mode, args, device, batch, args.image_size)
                    break
                except Exception as error:  # OOM on a GPU: halve the batch and retry
                    if device.type == "cuda" and is_oom(error) and batch > 1:
                        torch.cuda.empty_cache()
                        batch //= 2
                        print(f"  OOM at batch {batch * 2} [{mode}], retrying with {batch}")
                        continue
                    raise
            output["results"].extend(results)
        print_table(output["results"], args.reference, gmacs)

    if args.profile:
        for spec in args.models:
            for mode in modes:
                table = profile(spec, mode, args, device, args.batch_size, args.image_size, args.profile_rows)
                output["profiles"][f"{spec} [{mode}]"] = table
                print(f"\n=== profile {spec} [{mode}] batch {args.batch_size} ===\n{table}")

    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump(output, handle, indent=1, default=str)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

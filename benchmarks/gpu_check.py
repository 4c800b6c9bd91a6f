"""One-shot GPU check for PaCa-ViT (run through benchmarks/gpu_check.sh; well under 10 minutes on an H100).

1. environment: card, torch/CUDA versions, whether xformers is importable;
2. agreement of the attention backends on the same weights: sdpa vs eager vs xformers (if installed),
   bf16 autocast (and fp32), logits and cluster assignments, relative error max|a-b| / max|a| (pass: <= 1e-2 in bf16);
3. bf16 throughput of pacavit-tiny vs convnext_tiny, inference (batch 256) and train step (batch 128; forward +
   backward + AdamW), halving the batch on OOM, for: sdpa, eager, xformers, channels_last, torch.compile; and
   pacavit-small vs convnext_small (sdpa, eager mode and compiled). Every row has the model's own peak memory of
   one step (`peak_step_memory_gb`: weights + optimizer state + what the step allocates);
4. the dense tasks, so a change for classification is seen not to slow them: segmentation at 512x512 (PaCa head
   vs SegFormer-B2, UperNet-PaCa vs UperNet-ConvNeXt-T; benchmarks/segmentation_benchmark.py) and Mask R-CNN at
   800x1216 (vs torchvision's ResNet-50 one; benchmarks/maskrcnn_benchmark.py), bf16 / fp16;
5. the best configuration of PaCa-Tiny and its ratio to convnext_tiny in the same setting.

Everything goes to --out (JSON, rewritten after every step, so a timeout still leaves results) and a table is
printed. Nothing is downloaded (timm peers are built with pretrained=False). Items that would start after
--budget-s seconds are skipped and marked so. ``--device cpu --quick`` runs the same code paths on a CPU with
tiny batches and images (tests/test_benchmarks.py does), to catch errors before spending GPU time.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the sibling benchmark scripts are not a package
import benchmark as bench  # noqa: E402
import maskrcnn_benchmark  # noqa: E402
import segmentation_benchmark  # noqa: E402


class Args:
    """The subset of benchmark.py's options that `bench.Runner` reads."""

    def __init__(self, **kwargs):
        self.dtype = "bf16"
        self.cast_weights = False
        self.channels_last = False
        self.compile = False
        self.attn_implementation = None
        self.activation_checkpointing = False
        self.warmup = 3
        self.repeats = 5
        self.steps = 5
        self.stat = "median"
        self.__dict__.update(kwargs)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 error ||a - b|| / ||a|| (the pass criterion)."""
    a, b = a.float(), b.float()
    return ((a - b).norm() / a.norm().clamp_min(1e-12)).item()


def rel_max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|a| (stricter; reported too)."""
    a, b = a.float(), b.float()
    return ((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item()


def agreement(device, quick: bool, results: dict):
    from pacavit import PaCaViTConfig, PaCaViTForImageClassification

    backends = ["sdpa", "eager"]
    try:
        import xformers.ops  # noqa: F401

        results["environment"]["xformers"] = getattr(sys.modules.get("xformers"), "__version__", "yes")
        if device.type == "cuda":
            backends.append("xformers")
    except Exception as error:  # noqa: BLE001 - any import failure means 'not available'
        results["environment"]["xformers"] = f"not available ({type(error).__name__}: {error})"[:200]
    out = {}
    torch.manual_seed(0)
    reference = (
        PaCaViTForImageClassification(PaCaViTConfig.from_preset("pacavit-tiny", num_labels=1000)).to(device).eval()
    )
    state = reference.state_dict()
    batch, size = (2, 96) if quick else (16, 224)
    pixel_values = torch.randn(batch, 3, size, size, device=device)
    fp32_logits = bf16_logits = None
    for dtype_name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        outputs = {}
        for backend in backends:
            config = PaCaViTConfig.from_preset("pacavit-tiny", num_labels=1000, attn_implementation=backend)
            model = PaCaViTForImageClassification(config).to(device).eval()
            model.load_state_dict(state)
            context = (
                torch.autocast(device.type, dtype=dtype)
                if dtype != torch.float32
                else torch.autocast(device.type, enabled=False)
            )
            with torch.no_grad(), context:
                o = model(pixel_values, output_cluster_assignments=True)
            outputs[backend] = (o.logits.float(), [z.float() for z in o.cluster_assignments if z is not None])
        base_logits, base_z = outputs["sdpa"]
        if dtype_name == "fp32":
            fp32_logits = base_logits
        else:
            bf16_logits = base_logits
        for backend in backends[1:]:
            logits, z = outputs[backend]
            out[f"{dtype_name} sdpa vs {backend}"] = {
                "logits_rel_l2": rel_err(base_logits, logits),
                "logits_rel_max": rel_max_err(base_logits, logits),
                "assignments_rel_l2": max(rel_err(p, q) for p, q in zip(base_z, z)),
                "pass_1e_2": rel_err(base_logits, logits) <= 1e-2,
            }
    # noise floor of bf16 itself: bf16 autocast vs fp32, same backend
    out["bf16 vs fp32 (sdpa)"] = {
        "logits_rel_l2": rel_err(fp32_logits, bf16_logits),
        "logits_rel_max": rel_max_err(fp32_logits, bf16_logits),
    }
    if "xformers" not in backends:
        out["xformers"] = "skipped: " + str(results["environment"]["xformers"])
    results["agreement"] = out


def run_case(label, specs, mode, batch, device, args: Args, results, budget_end, image_size=224):
    if time.time() > budget_end:
        results["throughput"].append({"label": label, "mode": mode, "skipped": "time budget"})
        return None
    start = time.time()
    while True:
        oom = False
        try:
            rows = bench.measure(specs, mode, args, device, batch, image_size, log=lambda *a: None)
            break
        except Exception as error:  # noqa: BLE001 - recorded in the results, the check goes on
            if bench.is_oom(error) and batch > 1:
                oom = True
            else:
                results["throughput"].append(
                    {"label": label, "mode": mode, "error": f"{type(error).__name__}: {error}"[:500]}
                )
                traceback.print_exc()
                return None
        if oom:  # outside the except block, so the failed attempt's tensors can be freed
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            print(f"  OOM at batch {batch}, retrying with {batch // 2}", flush=True)
            batch //= 2
    for row in rows:
        row.update(label=label, wall_s=time.time() - start)
        results["throughput"].append(row)
    return rows


def dense_tasks(device, quick: bool, results: dict, budget_end: float) -> None:
    """Segmentation (512x512, bf16) and Mask R-CNN (800x1216, fp16) inference against their peers on CUDA."""
    dtype = "bf16" if device.type == "cuda" else "fp32"
    jobs = {
        "segmentation": lambda: segmentation_benchmark.main(
            [
                "--device",
                str(device),
                "--dtype",
                dtype,
                "--image-size",
                "128" if quick else "512",
                "--batch-sizes",
                *(["1"] if quick else ["8", "32"]),
                "--repeats",
                "1" if quick else "5",
                "--warmup-max-batch",
                "64",
            ]
        ),
        # fp16, as maskrcnn_benchmark.py documents for CUDA: torchvision's roi_align/nms kernels take half, and
        # bf16 support varies by version
        "maskrcnn": lambda: maskrcnn_benchmark.main(
            [
                "--device",
                str(device),
                "--dtype",
                "fp16" if device.type == "cuda" else "fp32",
                "--repeats",
                "1" if quick else "10",
                "--warmup",
                "1" if quick else "3",
            ]
            + (["--height", "128", "--width", "192"] if quick else [])
        ),
    }
    results["dense"] = {}
    for name, job in jobs.items():
        if time.time() > budget_end:
            results["dense"][name] = {"skipped": "time budget"}
            continue
        try:
            results["dense"][name] = job()
        except Exception as error:  # noqa: BLE001 - recorded in the results, the check goes on
            results["dense"][name] = {"error": f"{type(error).__name__}: {error}"[:500]}
            traceback.print_exc()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny batches and repeats (CPU smoke test)")
    parser.add_argument("--infer-batch", type=int, default=256)
    parser.add_argument("--train-batch", type=int, default=128)
    parser.add_argument(
        "--extra-models", nargs="*", default=[], help="more PaCa specs for the first case (e.g. preset@/path/pkg)"
    )
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip items that would start after this")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_results.json"))
    args = parser.parse_args(argv)

    t0 = time.time()
    budget_end = t0 + args.budget_s
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("CUDA is not available; rerun with --device cpu --quick for a smoke test")
            return 2
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    env = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "gpu_memory_gb": (torch.cuda.get_device_properties(device).total_memory / 2**30)
        if device.type == "cuda"
        else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": " ".join(sys.argv),
    }
    results = {"environment": env, "agreement": None, "throughput": []}
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    def save():
        results["elapsed_s"] = time.time() - t0
        out_path.write_text(json.dumps(results, indent=1, default=str))

    print(json.dumps(env))
    try:
        agreement(device, args.quick, results)
    except Exception as error:  # noqa: BLE001 - recorded in the results, the check goes on
        results["agreement"] = {"error": f"{type(error).__name__}: {error}"[:500]}
        traceback.print_exc()
    save()
    print("agreement:", json.dumps(results["agreement"], indent=1))

    infer_batch, train_batch = (2, 2) if args.quick else (args.infer_batch, args.train_batch)
    common = {"warmup": 1, "repeats": 1, "steps": 1} if args.quick else {"warmup": 3, "repeats": 5, "steps": 5}
    if args.quick and device.type == "cpu":  # a CPU without AVX-512 BF16 emulates bf16 slowly; the paths are the same
        common["dtype"] = "fp32"
    paca, peer = "pacavit-tiny", "convnext_tiny"
    image_size = 64 if args.quick else 224
    have_xformers = device.type == "cuda" and "not available" not in str(env.get("xformers", "not available"))
    # the eager-mode targets and the dense tasks first, the compiled cases (compile time!) last, so a
    # tight --budget-s drops the least important items
    eager_cases = [
        ("bf16 eager-mode, sdpa", [paca, *args.extra_models, peer], {}),
        ("bf16 eager-mode, sdpa [small]", ["pacavit-small", "convnext_small"], {}),
        ("bf16 channels_last", [paca, peer], {"channels_last": True}),
        ("bf16 paca attention=eager", [paca], {"attn_implementation": "eager"}),
    ]
    if have_xformers:
        eager_cases.append(("bf16 paca attention=xformers", [paca], {"attn_implementation": "xformers"}))
    compiled_cases = (
        []
        if args.no_compile
        else [
            ("bf16 torch.compile", [paca, peer], {"compile": True}),
            ("bf16 torch.compile [small]", ["pacavit-small", "convnext_small"], {"compile": True}),
            ("bf16 torch.compile + channels_last", [paca, peer], {"compile": True, "channels_last": True}),
        ]
    )

    def run_cases(cases):
        for label, specs, options in cases:
            for mode, batch in (("infer", infer_batch), ("train", train_batch)):
                print(f"[{time.time() - t0:6.1f}s] {label} [{mode}] batch {batch}", flush=True)
                run_case(label, specs, mode, batch, device, Args(**common, **options), results, budget_end, image_size)
                save()

    run_cases(eager_cases)
    print(f"[{time.time() - t0:6.1f}s] dense tasks", flush=True)
    dense_tasks(device, args.quick, results, budget_end)
    save()
    run_cases(compiled_cases)

    # table + best configuration
    rows = [r for r in results["throughput"] if "img_per_s" in r]
    print(
        f"\n{'configuration':38s} {'mode':6s} {'model':30s} {'batch':>5s} {'img/s':>9s} {'x convnext':>10s} "
        f"{'first step s':>12s} {'peak GB':>8s}"
    )
    best = {}
    for r in rows:
        own_peer = "convnext_small" if r["model"].startswith("pacavit-small") else peer
        peer_row = next(
            (p for p in rows if p["label"] == r["label"] and p["mode"] == r["mode"] and p["model"] == own_peer), None
        )
        ratio = r["img_per_s"] / peer_row["img_per_s"] if peer_row else float("nan")
        r["ratio_vs_convnext_same_config"] = ratio if peer_row else None
        print(
            f"{r['label']:38s} {r['mode']:6s} {r['model'][-30:]:30s} {r['batch_size']:5d} {r['img_per_s']:9.1f} "
            f"{ratio:10.3f} "
            f"{(r.get('first_step_s') or 0):12.1f} {(r.get('peak_step_memory_gb') or float('nan')):8.2f}"
        )
        if r["model"].startswith(paca) and (r["mode"] not in best or r["img_per_s"] > best[r["mode"]]["img_per_s"]):
            best[r["mode"]] = r
    for r in results["throughput"]:
        if "img_per_s" not in r:
            print(f"{r['label']:38s} {r['mode']:6s} {r.get('skipped') or r.get('error')}")
    results["best"] = {}
    for mode, r in best.items():
        peer_best = max((p["img_per_s"] for p in rows if p["model"] == peer and p["mode"] == mode), default=None)
        results["best"][mode] = {
            "configuration": r["label"],
            "model": r["model"],
            "img_per_s": r["img_per_s"],
            "ratio_vs_convnext_same_config": r.get("ratio_vs_convnext_same_config"),
            "ratio_vs_best_convnext": (r["img_per_s"] / peer_best) if peer_best else None,
        }
        print(f"best PaCa-Tiny [{mode}]: {json.dumps(results['best'][mode])}")
    for name, record in (results.get("dense") or {}).items():
        for ratio in record.get("ratios", []):
            print(f"{name}: {ratio['ours']} / {ratio['theirs']} batch {ratio['batch']}: {ratio['ratio']:.2f}x")
        if "ratio" in record:
            print(f"{name}: PaCa-Tiny Mask R-CNN / ResNet-50 Mask R-CNN: {record['ratio']:.2f}x")
        if "error" in record or "skipped" in record:
            print(f"{name}: {record.get('error') or record.get('skipped')}")
    save()
    print(f"wrote {out_path} ({time.time() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

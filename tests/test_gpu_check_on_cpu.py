"""The prepared GPU check runs end to end on a CPU (`--device cpu --quick`), so GPU time is never spent on a
trivial error: every case measures, the dense-task benchmarks run, and the table's ratios are size-matched."""

import json
import os
import subprocess
import sys

from helpers import REPO_ROOT


def test_gpu_check_runs_every_case_on_cpu_quick(tmp_path):
    out = tmp_path / "gpu_results.json"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT / "src"), OMP_NUM_THREADS="2")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "gpu_check.py"),
            "--device",
            "cpu",
            "--quick",
            "--no-compile",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["agreement"]["fp32 sdpa vs eager"]["pass_1e_2"]
    rows = results["throughput"]
    assert not [r for r in rows if "error" in r or "skipped" in r]
    measured = {(r["label"], r["mode"], r["model"]) for r in rows}
    for mode in ("infer", "train"):
        assert ("bf16 eager-mode, sdpa", mode, "pacavit-tiny") in measured
        assert ("bf16 eager-mode, sdpa [small]", mode, "convnext_small") in measured
    small = next(r for r in rows if r["model"] == "pacavit-small" and r["mode"] == "train")
    peer = next(r for r in rows if r["model"] == "convnext_small" and r["mode"] == "train")
    assert abs(small["ratio_vs_convnext_same_config"] - small["img_per_s"] / peer["img_per_s"]) < 1e-9
    dense = results["dense"]
    assert {r["ours"] for r in dense["segmentation"]["ratios"]} == {"pacavit-tiny-paca-head", "pacavit-tiny-upernet"}
    assert dense["maskrcnn"]["ratio"] > 0
    assert set(results["best"]) == {"infer", "train"}

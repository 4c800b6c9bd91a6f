"""examples/run_semantic_segmentation.py end to end: a short run of the default, as a subprocess (the data helpers
it runs are tested in test_data_segmentation.py)."""

import json
import os
import subprocess
import sys

from PIL import Image

from helpers import REPO_ROOT

SCRIPT = REPO_ROOT / "examples" / "run_semantic_segmentation.py"


def test_default_script_end_to_end_short(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf"))
    command = [
        sys.executable,
        str(SCRIPT),
        "--output_dir",
        str(out),
        "--max_train_steps",
        "3",
        "--max_train_samples",
        "32",
        "--max_eval_samples",
        "6",
        "--hidden_sizes",
        "16",
        "32",
        "48",
        "64",
        "--num_attention_heads",
        "1",
        "2",
        "2",
        "4",
        "--decode_head_hidden_size",
        "16",
        "--per_device_train_batch_size",
        "4",
        "--num_figure_scenes",
        "2",
        "--checkpointing_steps",
        "2",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    assert results["completed_steps"] == 3 and 0 <= results["eval_mean_iou"] <= 1
    assert len(results["eval_per_category_iou"]) == 11 and results["all_background_mean_iou"] > 0
    assert (out / "segmentation_examples.png").stat().st_size > 1000 and (out / "step_2").is_dir()
    assert "model-index" in (out / "README.md").read_text()
    from transformers import pipeline

    segmenter = pipeline("image-segmentation", model=str(out))
    masks = segmenter(Image.new("RGB", (50, 40), (90, 120, 60)))
    assert masks and all(
        m["mask"].size == (50, 40) and m["label"] in {"background", *(f"digit {d}" for d in range(10))} for m in masks
    )

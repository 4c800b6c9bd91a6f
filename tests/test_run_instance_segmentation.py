"""The default instance-segmentation script end to end (tiny sizes and steps), and its Hub-ready folder."""

from __future__ import annotations

import json

import numpy as np

from helpers import load_script


def test_default_script_end_to_end(tmp_path):
    from accelerate.state import AcceleratorState, GradientState
    from PIL import Image
    from transformers import pipeline

    script = load_script("run_instance_segmentation.py")
    out = tmp_path / "run"
    try:
        results = script.main(
            [
                "--built_in_data_dir",
                str(tmp_path / "data"),
                "--built_in_scenes",
                "8",
                "4",
                "--output_dir",
                str(out),
                "--max_train_steps",
                "5",
                "--per_device_train_batch_size",
                "2",
                "--eval_every_epochs",
                "1",
                "--num_figure_scenes",
                "2",
                "--num_threads",
                "1",
            ]
        )
    finally:  # in-process runs leave accelerate's singletons behind
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    assert results["completed_steps"] == 5  # 4 updates per epoch: one evaluation after epoch 1
    for key in ("eval_bbox_AP", "eval_bbox_AP50", "eval_segm_AP", "eval_segm_AP75"):
        assert key in results and (results[key] is None or 0.0 <= results[key] <= 1.0)
    for name in (
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "README.md",
        "detection_examples.png",
        "modeling_pacavit_maskrcnn.py",
        "image_processing_pacavit_maskrcnn.py",
        "all_results.json",
    ):
        assert (out / name).exists(), name
    assert json.loads((out / "config.json").read_text())["id2label"]["3"] == "digit 3"
    image = Image.open(sorted((tmp_path / "data" / "validation").glob("*.png"))[0])
    detector = pipeline("object-detection", model=str(out), trust_remote_code=False)
    assert all(d["label"].startswith("digit ") for d in detector(image, threshold=0.0))
    segmenter = pipeline("image-segmentation", model=str(out), subtask="instance", trust_remote_code=False)
    segments = segmenter(image, threshold=0.0)
    assert all(np.asarray(s["mask"]).shape == (image.height, image.width) for s in segments)

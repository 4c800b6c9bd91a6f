"""Tests of examples/run_classification.py (end to end, as subprocesses) and of the library code it runs
(`pacavit.training.classification`, `pacavit.training`, `pacavit.data`, `pacavit.hub`): default run, resume,
DDP, recipe, data errors.

The subprocess tests train tiny models for a few steps; they are marked `slow` but run in the default suite.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pacavit.data import drop_corrupt_images
from pacavit.hub import hub_preflight
from pacavit.training import (
    TRAINING_STATE,
    build_optimizer,
    build_scheduler,
    find_latest_checkpoint,
    global_batch_size,
    list_checkpoints,
    scale_learning_rates,
)
from pacavit.training.classification import (
    build_criterion,
    build_image_processor,
    build_mixup,
    build_train_transform,
    parse_args,
)

from helpers import REPO_ROOT, TINY_BACKBONE_FLAGS, tiny_config

SCRIPT = REPO_ROOT / "examples" / "run_classification.py"

# A tiny PaCa-ViT at 16x16: every run below trains in a few seconds on 2 CPU cores.
TINY = [
    *TINY_BACKBONE_FLAGS, "--image_size", "16", "--per_device_eval_batch_size", "64", "--max_eval_samples", "64",
    "--pipeline_eval_samples", "0", "--eval_every_epochs", "0", "--logging_steps", "5",
]  # fmt: skip


def subprocess_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "LOCAL_", "RANK", "WORLD_SIZE"))}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def start_script(args: list[str]) -> subprocess.Popen:
    """The script in the background (stderr kept for messages), for tests that signal it mid-run."""
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_script(
    args: list[str], launcher: list[str] | None = None, timeout: int = 300, check: bool = True, **env
) -> subprocess.CompletedProcess:
    command = (launcher or [sys.executable]) + [str(SCRIPT)] + args
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=subprocess_env(**env), capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result


def load_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_state_dicts_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"


# ============================================================================================
# Data: the built-in digits dataset, corrupt images
# ============================================================================================
def test_digits_to_pil_scales_0_16_to_0_255_rgb():
    from pacavit.data import digits_to_pil

    pixels = np.array([[0, 8, 16, 1]] * 2)
    image = digits_to_pil(pixels)
    assert image.mode == "RGB" and image.size == (4, 2)
    array = np.asarray(image)
    assert array[0, :, 0].tolist() == [0, 128, 255, 16]  # round(v * 255 / 16)
    assert (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()
    with pytest.raises(ValueError):
        digits_to_pil(np.array([[17]]))


def test_digits_dataset_features_and_stratified_split():
    import datasets

    from pacavit.data import load_digits_dataset, split_train_validation

    ds = load_digits_dataset()
    assert len(ds) == 1797
    assert isinstance(ds.features["label"], datasets.ClassLabel)
    assert ds.features["label"].names == [str(i) for i in range(10)]
    assert isinstance(ds.features["image"], datasets.Image)
    assert "255 / 16" in ds.info.description
    first = ds[0]["image"]
    assert first.size == (8, 8) and first.mode == "RGB"
    split = split_train_validation(ds, 0.2, seed=42)
    assert len(split["train"]) == 1437 and len(split["validation"]) == 360
    counts = np.bincount(split["validation"]["label"], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~36 per class


@pytest.fixture()
def imagefolder_with_corrupt_image(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("validation", 4)):
        for label in ("cat", "dog"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    good = (tmp_path / "train" / "dog" / "0.png").read_bytes()
    bad = tmp_path / "train" / "dog" / "broken.png"
    bad.write_bytes(good[: len(good) // 2])  # truncated PNG: the header is fine, the pixel data is not
    return tmp_path, bad


def test_corrupt_image_is_named_or_skipped(imagefolder_with_corrupt_image):
    import datasets

    from pacavit.data import CorruptImageError, ImageClassificationDataset, find_corrupt_images

    root, _ = imagefolder_with_corrupt_image
    train = datasets.load_dataset("imagefolder", data_files={"train": str(root / "train" / "**")})["train"]
    found = find_corrupt_images(train, "image", "train")
    assert len(found) == 1
    index, message = found[0]
    assert "broken.png" in message and f"index {index}" in message

    with pytest.raises(ValueError, match="broken.png"):
        drop_corrupt_images(train, "image", "train", skip=False)
    kept, dropped = drop_corrupt_images(train, "image", "train", skip=True)
    assert len(dropped) == 1 and "broken.png" in dropped[0] and len(kept) == len(train) - 1

    # without a check up front, the loader names the file when it reaches it
    dataset = ImageClassificationDataset(train, "image", "label", split="train")
    with pytest.raises(CorruptImageError, match=f"broken.png.*index {index}"):
        dataset[index]


@pytest.mark.slow
def test_script_fails_naming_corrupt_file_or_skips_it(imagefolder_with_corrupt_image, tmp_path):
    root, _ = imagefolder_with_corrupt_image
    common = [
        "--train_dir",
        str(root / "train"),
        "--validation_dir",
        str(root / "validation"),
        *TINY,
        "--per_device_train_batch_size",
        "4",
        "--max_train_steps",
        "2",
    ]
    failed = run_script([*common, "--verify_images", "--output_dir", str(tmp_path / "fail")], check=False)
    assert failed.returncode != 0
    assert "CorruptImageError: 1 unreadable image(s)" in failed.stderr and "broken.png" in failed.stderr
    run_script([*common, "--skip_corrupt_images", "--output_dir", str(tmp_path / "skip")])
    results = json.loads((tmp_path / "skip" / "all_results.json").read_text())
    assert results["skipped_corrupt_images"] == {"train": 1, "validation": 0}
    assert results["train_samples"] == 16
    saved = json.loads((tmp_path / "skip" / "config.json").read_text())
    assert saved["id2label"] == {"0": "cat", "1": "dog"}


# ============================================================================================
# Recipe knobs reach the optimizer and the schedule
# ============================================================================================
def test_paper_recipe_flags_and_overrides():
    args = parse_args(["--recipe", "paper_in1k"])
    assert (args.opt_eps, list(args.opt_betas), args.weight_decay) == (1e-8, [0.9, 0.999], 0.05)
    assert (args.lr_base, args.lr_base_size, args.min_lr_base, args.warmup_lr_base) == (5e-4, 512, 5e-6, 5e-7)
    assert (args.lr_scheduler_type, args.warmup_epochs, args.num_train_epochs) == ("cosine", 5.0, 300)
    assert (args.interpolation, args.crop_pct, args.image_size) == ("bicubic", 0.9, 224)
    assert args.auto_augment == "rand-m9-mstd0.5-inc1" and args.color_jitter == 0.4
    assert (args.reprob, args.remode) == (0.25, "pixel")
    assert (args.mixup, args.cutmix, args.mixup_switch_prob, args.smoothing) == (0.8, 1.0, 0.5, 0.1)
    assert args.drop_path_rate is None  # -> the preset's own rate
    # an explicit flag beats the recipe; the default recipe is the digits one
    assert parse_args(["--recipe", "paper_in1k", "--mixup", "0", "--aa", "none"]).mixup == 0.0
    assert parse_args(["--recipe", "paper_in1k", "--aa", "none"]).auto_augment is None
    assert parse_args([]).image_size == 32


def test_learning_rate_scaling_arithmetic():
    # the paper: 128 images x 8 GPUs -> lr 5e-4 * 1024 / 512 = 1e-3, min/warmup scaled alike
    batch = global_batch_size(128, 8, 1)
    assert batch == 1024
    lrs = scale_learning_rates(5e-4, 5e-6, 5e-7, batch, 512, "linear")
    assert lrs["lr"] == pytest.approx(1e-3) and lrs["min_lr"] == pytest.approx(1e-5)
    assert lrs["warmup_lr"] == pytest.approx(1e-6)
    # gradient accumulation counts: 64 x 2 processes x 4 steps = 512 -> the base lr
    assert global_batch_size(64, 2, 4) == 512
    assert scale_learning_rates(5e-4, 5e-6, 5e-7, 512)["lr"] == pytest.approx(5e-4)
    assert scale_learning_rates(5e-4, 5e-6, 5e-7, 2048, 512, "sqrt")["lr"] == pytest.approx(1e-3)
    absolute = scale_learning_rates(5e-4, 5e-6, 5e-7, 1024, learning_rate=2e-3)
    assert absolute["lr"] == 2e-3 and absolute["min_lr"] == pytest.approx(2e-5)


def tiny_model(num_labels=10):
    from pacavit import PaCaViTForImageClassification

    config = tiny_config(
        num_attention_heads=[1, 1, 2, 2],
        depths=[1, 2, 1, 1],
        num_clusters=[8, 8, 8, 0],
        num_labels=num_labels,
        layer_scale_init_value=1e-5,
    )
    return PaCaViTForImageClassification(config)


def test_optimizer_no_decay_on_norms_biases_and_paper_adamw_settings():
    model = tiny_model()
    args = parse_args(["--recipe", "paper_in1k"])
    optimizer = build_optimizer(model, args, lr=1e-3)
    assert isinstance(optimizer, torch.optim.AdamW)
    decay_of = {}
    for group in optimizer.param_groups:
        assert group["eps"] == 1e-8 and tuple(group["betas"]) == (0.9, 0.999)
        for p in group["params"]:
            decay_of[id(p)] = group["weight_decay"]
    names = dict(model.named_parameters())
    assert len(decay_of) == len(names)
    for name, p in names.items():
        no_decay = p.ndim <= 1 or "norm" in name or name.endswith(".bias") or "layer_scale" in name
        assert decay_of[id(p)] == (0.0 if no_decay else 0.05), name
    assert decay_of[id(names["pacavit.stages.0.layers.0.norm1.weight"])] == 0.0
    assert decay_of[id(names["pacavit.stages.0.layers.0.attention.query.weight"])] == 0.05


def test_layer_wise_lr_decay_groups_and_scheduler_applies_scales():
    model = tiny_model()
    args = parse_args(["--layer_decay", "0.5", "--weight_decay", "0.05"])
    optimizer = build_optimizer(model, args, lr=1e-3)
    scale_of = {id(p): g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    num_blocks = 5  # depths 1 + 2 + 1 + 1
    num_groups = 1 + num_blocks + 1  # stem, blocks, head
    assert scale_of[id(names["classifier.weight"])] == 1.0
    assert scale_of[id(names["pacavit.embeddings.projection.0.weight"])] == pytest.approx(0.5 ** (num_groups - 1))
    first = scale_of[id(names["pacavit.stages.0.layers.0.attention.query.weight"])]
    second = scale_of[id(names["pacavit.stages.1.layers.0.attention.query.weight"])]
    last = scale_of[id(names["pacavit.stages.3.layers.0.attention.query.weight"])]
    assert first == pytest.approx(0.5 ** (num_groups - 2)) and second == pytest.approx(2 * first)
    assert last == pytest.approx(0.5)
    # a stage's downsampling goes with its first block
    assert scale_of[id(names["pacavit.stages.1.downsample.projection.weight"])] == second
    lrs = dict(lr=1e-3, min_lr=1e-5, warmup_lr=1e-6)
    scheduler = build_scheduler(optimizer, args, lrs, updates_per_epoch=10, total_updates=100)
    scheduler.step_update(50)
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(
            group["lr_scale"] * optimizer.param_groups[0]["lr"] / optimizer.param_groups[0]["lr_scale"]
        )


def test_cosine_schedule_with_warmup_in_updates():
    model = tiny_model()
    args = parse_args(["--recipe", "paper_in1k"])
    lrs = scale_learning_rates(args.lr_base, args.min_lr_base, args.warmup_lr_base, 1024)
    optimizer = build_optimizer(model, args, lrs["lr"])
    updates_per_epoch, total = 10, 300 * 10
    scheduler = build_scheduler(optimizer, args, lrs, updates_per_epoch, total)

    def lr_at(update):
        scheduler.step_update(update)
        return optimizer.param_groups[0]["lr"]

    assert lr_at(0) == pytest.approx(1e-6)  # the scaled warmup lr
    assert lr_at(25) == pytest.approx(1e-6 + 25 * (1e-3 - 1e-6) / 50)  # linear warmup over 5 epochs
    assert lr_at(50) == pytest.approx(
        1e-3 * 0.5 * (1 + np.cos(np.pi * 50 / total)) + 1e-5 * 0.5 * (1 - np.cos(np.pi * 50 / total)), rel=1e-6
    )
    assert lr_at(total // 2) == pytest.approx((1e-3 + 1e-5) / 2, rel=1e-6)
    assert lr_at(total - 1) == pytest.approx(1e-5, rel=1e-2)
    values = [lr_at(u) for u in range(50, total, 97)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_paper_recipe_augmentation_mixup_and_losses():
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    paper = parse_args(["--recipe", "paper_in1k"])
    mixup = build_mixup(paper, 1000)
    assert isinstance(mixup, Mixup)
    assert (mixup.mixup_alpha, mixup.cutmix_alpha, mixup.switch_prob, mixup.label_smoothing) == (0.8, 1.0, 0.5, 0.1)
    assert isinstance(build_criterion(paper, mixup), SoftTargetCrossEntropy)
    transform = repr(build_train_transform(paper))
    assert "RandomResizedCropAndInterpolation" in transform and "bicubic" in transform
    assert "RandAugment" in transform and "RandomErasing" in transform and "pixel" in transform.lower()

    digits = parse_args([])
    assert build_mixup(digits, 10) is None
    assert isinstance(build_criterion(digits, None), LabelSmoothingCrossEntropy)
    digits_transform = repr(build_train_transform(digits))  # a mild crop of the digit, no flip, no colour
    assert "RandomResizedCropAndInterpolation(size=(32, 32), scale=(0.8, 1.0)" in digits_transform
    assert "Flip" not in digits_transform and "ColorJitter" not in digits_transform
    assert build_train_transform(parse_args(["--train_augmentation", "none"])) is None

    processor = build_image_processor(paper)
    from PIL import Image

    out = processor(images=[Image.new("RGB", (400, 300))], return_tensors="pt")["pixel_values"]
    assert tuple(out.shape) == (1, 3, 224, 224)
    assert processor.crop_pct == 0.9 and processor.size["shortest_edge"] == 224 and processor.resample == 3


@pytest.mark.slow
def test_paper_recipe_runs_with_accumulation_layer_decay_checkpointing_and_tensorboard(tmp_path):
    """The full paper recipe path (RandAugment, random erasing, mixup/cutmix + soft-target CE, channels_last)
    plus accumulation, layer decay, EMA, activation checkpointing and TensorBoard, for 2 updates."""
    out = tmp_path / "paper"
    run_script(
        [
            "--recipe",
            "paper_in1k",
            *TINY,
            "--max_train_samples",
            "64",
            "--per_device_train_batch_size",
            "8",
            "--gradient_accumulation_steps",
            "2",
            "--max_train_steps",
            "2",
            "--layer_decay",
            "0.75",
            "--model_ema",
            "--activation_checkpointing",
            "--with_tracking",
            "--report_to",
            "tensorboard",
            "--output_dir",
            str(out),
        ]
    )
    results = json.loads((out / "all_results.json").read_text())
    assert results["completed_steps"] == 2 and results["global_batch_size"] == 16
    assert results["peak_lr"] == pytest.approx(5e-4 * 16 / 512)
    assert list(out.rglob("events.out.tfevents*")), "no TensorBoard event file"
    card = (out / "README.md").read_text()
    assert "rand-m9-mstd0.5-inc1" in card and "EMA of the weights" in card


def test_find_latest_checkpoint_uses_step_count_not_names(tmp_path):
    assert find_latest_checkpoint(tmp_path) is None
    for name, steps in (("step_2", 2), ("step_10", 10), ("epoch_0", 5)):
        (tmp_path / name).mkdir()
        (tmp_path / name / TRAINING_STATE).write_text(json.dumps({"completed_steps": steps}))
    (tmp_path / ".tmp_step_12").mkdir()  # an interrupted save is never picked
    (tmp_path / "step_11").mkdir()  # no training state: not a complete checkpoint
    assert find_latest_checkpoint(tmp_path).name == "step_10"
    assert [p.name for _, p in list_checkpoints(tmp_path)] == ["step_2", "epoch_0", "step_10"]


def test_push_to_hub_fails_clearly_when_offline(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SystemExit, match="offline mode is on.*HF_HUB_OFFLINE"):
        hub_preflight(str(tmp_path), repo_id="me/model", token=None, private=False)


# ============================================================================================
# End to end (subprocesses)
# ============================================================================================
@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The no-argument default (digits, default model and recipe) shortened to 4 updates."""
    out = tmp_path_factory.mktemp("default") / "run"
    run_script(["--output_dir", str(out), "--max_train_steps", "4"])
    return out


@pytest.mark.slow
def test_default_run_writes_hub_ready_folder(default_run):
    out = default_run
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "README.md", "all_results.json"):
        assert (out / name).is_file(), name
    results = json.loads((out / "all_results.json").read_text())
    assert results["completed_steps"] == 4 and results["world_size"] == 1
    assert results["eval_samples"] == 360 and results["train_samples"] == 1437
    # the saved preprocessing reproduces the evaluation loop exactly on raw PIL images
    assert results["pipeline_samples"] == 360 and results["pipeline_agreement"] == 100.0
    assert results["pipeline_top1"] == pytest.approx(results["eval_top1"])
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "ConvNextImageProcessor"
    assert processor["size"] == {"shortest_edge": 32} and processor["crop_pct"] == 1.0
    card = (out / "README.md").read_text()
    assert "model-index" in card and "sklearn-digits" in card and f"{results['eval_top1']:.2f}%" in card
    assert "CPU" in card or "GPU" in card


@pytest.mark.slow
def test_default_run_folder_loads_with_auto_class_and_pipeline(default_run):
    from transformers import AutoModelForImageClassification, pipeline

    import pacavit  # noqa: F401
    from pacavit.data import load_digits_dataset

    model = AutoModelForImageClassification.from_pretrained(default_run)
    assert type(model).__name__ == "PaCaViTForImageClassification"
    assert model.config.id2label == {i: str(i) for i in range(10)}
    assert model.config.label2id == {str(i): i for i in range(10)}
    classifier = pipeline("image-classification", model=str(default_run))
    image = load_digits_dataset()[0]["image"]
    predictions = classifier(image, top_k=3)
    assert len(predictions) == 3 and all(p["label"] in model.config.label2id for p in predictions)
    assert sum(p["score"] for p in predictions) <= 1.0 + 1e-6


@pytest.mark.slow
def test_eval_only_reproduces_the_saved_accuracy(default_run, tmp_path):
    run_script(["--eval_only", "--model_name_or_path", str(default_run), "--output_dir", str(tmp_path)])
    evaluated = json.loads((tmp_path / "eval_results.json").read_text())
    trained = json.loads((default_run / "all_results.json").read_text())
    assert evaluated["eval_top1"] == pytest.approx(trained["eval_top1"])
    assert evaluated["eval_top5"] == pytest.approx(trained["eval_top5"])
    assert evaluated["eval_num_samples"] == 360


RESUME_ARGS = [
    *TINY,
    "--max_train_samples",
    "256",
    "--per_device_train_batch_size",
    "16",  # 16 updates per epoch
    "--max_train_steps",
    "60",
    "--checkpointing_steps",
    "10",
    "--checkpoints_total_limit",
    "2",
    # randomness in the step (drop-path, mixup/cutmix), plus EMA and clipping; the un-augmented input path,
    # where nothing but the script's per-step seeding makes the resumed run replay the same random numbers
    "--train_augmentation",
    "none",
    "--drop_path_rate",
    "0.2",
    "--mixup",
    "0.5",
    "--cutmix",
    "0.5",
    "--model_ema",
    "--model_ema_decay",
    "0.9",
    "--clip_grad",
    "1.0",
    "--num_threads",
    "1",
]


@pytest.mark.slow
def test_sigkill_after_checkpoint_then_resume_latest_is_bitwise_equal(tmp_path):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    run_script([*RESUME_ARGS, "--output_dir", str(reference)])

    for _attempt in range(2):  # a second try only if the machine was so slow that the run finished before the kill
        shutil.rmtree(interrupted, ignore_errors=True)
        process = start_script([*RESUME_ARGS, "--output_dir", str(interrupted)])
        deadline = time.time() + 240
        # checkpoints appear atomically (renamed into place); older ones are pruned, so wait for any of them
        while not list(interrupted.glob("step_*/training_state.json")) and process.poll() is None:
            assert time.time() < deadline, "no checkpoint within the time limit"
            time.sleep(0.005)
        still_running = process.poll() is None
        if still_running:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
        stderr = process.stderr.read()
        process.stderr.close()
        if still_running:
            break
        assert process.returncode == 0, f"the run failed before its first checkpoint:\n{stderr[-4000:]}"
    assert still_running and process.returncode == -signal.SIGKILL, stderr[-4000:]
    assert not (interrupted / "model.safetensors").exists()
    killed_at = sorted(int(p.name.split("_")[1]) for p in interrupted.glob("step_*"))
    assert killed_at and killed_at[-1] < 60, killed_at

    run_script([*RESUME_ARGS, "--output_dir", str(interrupted), "--resume_from_checkpoint", "latest"])
    resumed = json.loads((interrupted / "all_results.json").read_text())
    assert resumed["resumed_from"] is not None and Path(resumed["resumed_from"]).name.startswith("step_")
    assert resumed["completed_steps"] == 60

    # exported (EMA) weights, raw weights of the last checkpoint, and every logged loss are identical
    assert_state_dicts_bitwise_equal(
        load_safetensors(reference / "model.safetensors"), load_safetensors(interrupted / "model.safetensors")
    )
    assert_state_dicts_bitwise_equal(
        load_safetensors(reference / "step_60" / "model.safetensors"),
        load_safetensors(interrupted / "step_60" / "model.safetensors"),
    )
    losses = [json.loads((d / "train_log.json").read_text())["history"] for d in (reference, interrupted)]
    assert [h["loss"] for h in losses[0]] == [h["loss"] for h in losses[1]]
    assert len(losses[0]) == 60
    # --checkpoints_total_limit 2 keeps the newest two
    assert sorted(p.name for p in reference.iterdir() if p.name.startswith("step_")) == ["step_50", "step_60"]


@pytest.mark.slow
def test_sigterm_saves_a_resumable_checkpoint_and_exits_143(tmp_path):
    """SIGTERM (a scheduler's notice before a kill) ends the run after the current update, with a complete
    checkpoint at that update (the output-folder guard and resume are tested in test_training_checkpoint.py
    and by the SIGKILL test)."""
    out = tmp_path / "run"
    args = [*TINY, "--max_train_samples", "128", "--per_device_train_batch_size", "16", "--num_threads", "1"]
    process = start_script(
        [*args, "--max_train_steps", "100000", "--checkpointing_steps", "3", "--output_dir", str(out)]
    )
    deadline = time.time() + 240
    while not list(out.glob("step_*/training_state.json")):  # the loop (and its handler) is running
        assert process.poll() is None and time.time() < deadline, process.stderr.read()[-3000:]
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 143, stderr[-3000:]
    assert "Stopped on request; resumable checkpoint" in stderr
    latest = find_latest_checkpoint(out)
    state = json.loads((latest / TRAINING_STATE).read_text())
    assert latest.name == f"step_{state['completed_steps']}" and len(state["history"]) == state["completed_steps"]
    assert not (out / "model.safetensors").exists() and not list(out.glob(".tmp_*"))


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_same_global_batch(tmp_path):
    common = [
        *TINY,
        "--max_train_samples",
        "256",
        "--max_train_steps",
        "6",
        "--drop_path_rate",
        "0",
        "--train_augmentation",
        "timm",
        "--scale",
        "0.5",
        "1",
    ]
    launch = [
        "accelerate",
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    run_script(
        [*common, "--per_device_train_batch_size", "8", "--output_dir", str(tmp_path / "ddp")],
        launcher=launch,
        ACCELERATE_USE_CPU="true",
    )
    run_script([*common, "--per_device_train_batch_size", "16", "--output_dir", str(tmp_path / "single")])

    ddp = json.loads((tmp_path / "ddp" / "all_results.json").read_text())
    single = json.loads((tmp_path / "single" / "all_results.json").read_text())
    assert ddp["world_size"] == 2 and ddp["process_ranks"] == [0, 1]
    assert ddp["distributed_type"] == "DistributedType.MULTI_CPU"
    assert single["world_size"] == 1 and ddp["global_batch_size"] == single["global_batch_size"] == 16
    ddp_losses = [h["loss"] for h in json.loads((tmp_path / "ddp" / "train_log.json").read_text())["history"]]
    single_losses = [h["loss"] for h in json.loads((tmp_path / "single" / "train_log.json").read_text())["history"]]
    assert len(ddp_losses) == len(single_losses) == 6
    np.testing.assert_allclose(ddp_losses, single_losses, rtol=0, atol=1e-5)
    assert ddp_losses[0] != ddp_losses[-1]  # it trained

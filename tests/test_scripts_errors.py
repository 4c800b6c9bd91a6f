"""What every task script does with an output folder that holds another
run (also with `--resume_from_checkpoint latest` and no checkpoint), a loss that becomes non-finite, datasets
without the expected splits or columns or with an empty split, and SIGTERM + resume in the dense-task scripts.
The library pieces and the classification script's interruption cases (SIGTERM, SIGKILL during a checkpoint
write, `--resume_from_checkpoint latest`) are tested in test_training_checkpoint.py, test_training_loop.py,
test_training_run.py and test_run_classification.py.

The scripts run in-process (their `main(argv)`), which skips the interpreter start of a subprocess."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pacavit.data import pick_column, select_splits

from helpers import SCRIPTS, TINY, TINY_BACKBONE_FLAGS, load_script

TINY_CLASSIFIER = [
    *TINY_BACKBONE_FLAGS, "--image_size", "16",
    "--max_eval_samples", "32", "--pipeline_eval_samples", "0", "--eval_every_epochs", "0", "--num_threads", "1",
]  # fmt: skip


# ----------------------------------------------------------------
@pytest.mark.parametrize("resume", [False, True], ids=["fresh", "resume-latest"])
@pytest.mark.parametrize("task", sorted(SCRIPTS))
def test_an_output_dir_holding_another_run_is_refused(task, resume, tmp_path, fresh_accelerate_state):
    """Also with --resume_from_checkpoint latest: the run there has no checkpoint, so there is nothing to continue."""
    from pacavit.training import NoCheckpointError

    out = tmp_path / "run"
    out.mkdir()
    (out / "all_results.json").write_text(json.dumps({"eval_accuracy": 0.9}))
    (out / "model.safetensors").write_bytes(b"another run's weights")
    script = load_script(SCRIPTS[task])
    argv = ["--output_dir", str(out), "--max_train_steps", "1"]
    if resume:
        error, message = (
            NoCheckpointError,
            r"holds a run \(all_results.json, model.safetensors\) but no complete checkpoint",
        )
        argv += ["--resume_from_checkpoint", "latest"]
    else:
        error, message = (
            FileExistsError,
            r"already holds a run \(all_results.json, model.safetensors"
            r".*--overwrite_output_dir.*--resume_from_checkpoint latest",
        )
    with pytest.raises(error, match=message):
        script.main(argv)
    assert json.loads((out / "all_results.json").read_text()) == {"eval_accuracy": 0.9}  # untouched
    assert (out / "model.safetensors").read_bytes() == b"another run's weights"


@pytest.mark.parametrize("task", sorted(SCRIPTS))
def test_an_output_dir_that_cannot_be_written_is_refused_before_training(task, tmp_path, fresh_accelerate_state):
    from pacavit.safe_io import OutputFolderError

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    script = load_script(SCRIPTS[task])
    for output_dir in (blocker, blocker / "run"):
        with pytest.raises(
            OutputFolderError, match=r"--output_dir '.*a-file.*' cannot be written \((FileExists|NotADir)"
        ):
            script.main(["--output_dir", str(output_dir), "--max_train_steps", "1"])
    assert blocker.read_text() == "not a folder"
    if task == "instance-segmentation":  # the built-in data is written too
        argv = ["--output_dir", str(tmp_path / "run"), "--built_in_data_dir", str(blocker / "data")]
        with pytest.raises(OutputFolderError, match=r"--built_in_data_dir '.*a-file/data' cannot be written"):
            script.main([*argv, "--max_train_steps", "1"])


# ----------------------------------------------------------------  (training side)
@pytest.mark.slow
def test_classification_stops_naming_the_update_when_the_loss_becomes_non_finite(tmp_path, fresh_accelerate_state):
    from pacavit.training import NonFiniteLossError

    script = load_script(SCRIPTS["classification"])
    out = tmp_path / "run"
    argv = [
        *TINY_CLASSIFIER, "--output_dir", str(out), "--max_train_samples", "64", "--per_device_train_batch_size", "16",
        "--max_train_steps", "12", "--learning_rate", "1e30", "--warmup_epochs", "0",
    ]  # fmt: skip
    with pytest.raises(
        NonFiniteLossError, match=r"Non-finite training loss \((nan|inf)\) at update \d+.*Lower the learning rate"
    ):
        script.main(argv)
    assert not (out / "model.safetensors").exists()  # nothing trained on NaN is exported


# ---------------------------------------------------------------- splits and columns
def test_a_dataset_without_the_expected_columns_names_the_columns_found():
    columns = ["picture", "category", "id"]
    with pytest.raises(
        ValueError,
        match=r"Cannot find the image column among \['picture', 'category', 'id'\]; pass --image_column_name",
    ):
        pick_column(columns, None, ("image", "img"), "image")
    with pytest.raises(
        ValueError, match=r"--label_column_name 'labels' is not a column; columns: \['picture', 'category', 'id'\]"
    ):
        pick_column(columns, "labels", ("label", "labels"), "label")
    assert pick_column(columns, "category", ("label",), "label") == "category"


def test_missing_splits_name_the_splits_found():
    with pytest.raises(ValueError, match=r"Split 'dev' not found; splits: \['train', 'test'\]"):
        select_splits({"train": [1], "test": [2]}, validation_split="dev")
    with pytest.raises(ValueError, match=r"No train or validation split found; splits: \['unlabeled'\]"):
        select_splits({"unlabeled": [1]})
    with pytest.raises(ValueError, match=r"No evaluation split among \['train'\]; pass --validation_split"):
        select_splits({"train": [1]})
    splits, note = select_splits({"train": [1], "val": [2]})
    assert splits == {"train": [1], "validation": [2]} and note is None


# ---------------------------------------------------------------- empty splits (0 rows)
def test_empty_splits_name_the_split_its_source_and_what_to_do(tmp_path):
    from argparse import Namespace

    from pacavit.data import EmptySplitError, check_folder_has_images, check_splits_not_empty, limit_samples
    from pacavit.data.segmentation import load_segmentation_dataset

    folders = Namespace(train_dir="data/train", validation_dir=None, max_train_samples=None)
    with pytest.raises(
        EmptySplitError,
        match=r"'train' split from the folder 'data/train' \(--train_dir\) has no samples \(0 rows\): "
        r"nothing to train on\. Put images in it",
    ):
        check_splits_not_empty({"train": [], "validation": [1]}, folders)
    with pytest.raises(
        EmptySplitError,
        match=r"'validation' split from the folder 'data/train' \(--train_dir; no --validation_dir\)"
        r".*nothing to evaluate on",
    ):
        check_splits_not_empty({"train": [1], "validation": []}, folders)
    hub = Namespace(dataset_name="user/set", validation_split="dev", skip_corrupt_images=True)
    with pytest.raises(
        EmptySplitError,
        match=r"the 🤗 dataset 'user/set' \(split 'dev', --validation_split\) has no samples \(0 rows\) "
        r"after --skip_corrupt_images.*Choose another split",
    ):
        check_splits_not_empty({"train": [1], "validation": []}, hub)
    check_splits_not_empty({"train": [], "validation": [1]}, hub, required=("validation",))  # --eval_only
    check_splits_not_empty({"train": [], "validation": [1]}, Namespace(eval_only=True))  # derived from the flag
    with pytest.raises(EmptySplitError, match=r"'validation' split from the built-in data"):
        check_splits_not_empty({"train": [], "validation": []}, Namespace(eval_only=True))
    with pytest.raises(
        EmptySplitError,
        match=r"--max_train_samples 0 leaves the 'train' split without samples\. Pass a positive number, or drop",
    ):
        check_splits_not_empty({"train": [], "validation": [1]}, Namespace(max_train_samples=0))
    with pytest.raises(EmptySplitError, match=r"--max_eval_samples -1 leaves the 'validation' split"):
        limit_samples(10, -1, "validation")
    assert limit_samples(10, None, "train") == 10 and limit_samples(10, 3, "train") == 3

    empty = tmp_path / "empty"
    (empty / "cat").mkdir(parents=True)
    (empty / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(
        EmptySplitError, match=r"'validation' split from the folder '.*empty' \(--validation_dir\) has no images"
    ):
        check_folder_has_images(empty, "validation_dir")
    with pytest.raises(FileNotFoundError, match=r"missing' \(from --train_dir\) is not a folder"):
        check_folder_has_images(tmp_path / "missing", "train_dir")
    for sub in ("images", "masks"):  # a segmentation folder with an empty images/
        (tmp_path / "seg" / sub).mkdir(parents=True)
    with pytest.raises(
        EmptySplitError, match=r"'train' split from the folder '.*seg/images' \(--train_dir\) has no images"
    ):
        load_segmentation_dataset(train_dir=str(tmp_path / "seg"))
    # a 0-row Hub train split and no validation split: nothing is held out, the script's check names the split
    from unittest import mock

    import datasets

    empty = datasets.DatasetDict(train=datasets.Dataset.from_dict({"image": [], "annotation": []}))
    with mock.patch("datasets.load_dataset", return_value=empty):
        raw = load_segmentation_dataset("user/set")
    with pytest.raises(EmptySplitError, match=r"'train' split from the 🤗 dataset 'user/set' has no samples"):
        check_splits_not_empty(raw, Namespace(dataset_name="user/set"))


def _empty_split_argv(task: str, tmp_path: Path) -> tuple[list[str], str]:
    """Arguments that give `task` an empty split, and the error expected."""
    if task == "classification":
        (tmp_path / "train" / "cat").mkdir(parents=True)
        return ["--train_dir", str(tmp_path / "train"), "--validation_dir", str(tmp_path / "train")], (
            r"'train' split from the folder .* \(--train_dir\) has no images"
        )
    if task == "semantic-segmentation":  # the built-in scenes, limited to nothing
        return ["--max_eval_samples", "0"], r"--max_eval_samples 0 leaves the 'validation' split without samples"
    images = tmp_path / "coco"  # a COCO annotation file listing no image
    images.mkdir()
    annotations = images / "instances.json"
    annotations.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    flags = ["--train_dir", str(images), "--train_annotations", str(annotations)]
    flags += ["--validation_dir", str(images), "--validation_annotations", str(annotations)]
    return (
        flags,
        r"'train' split from the folder .*coco' \(--train_dir\) has no samples \(0 rows\): nothing to train on",
    )


@pytest.mark.parametrize("task", sorted(SCRIPTS))
def test_scripts_stop_on_an_empty_split_naming_it(task, tmp_path, monkeypatch, fresh_accelerate_state):
    from pacavit.data import EmptySplitError

    script = load_script(SCRIPTS[task])
    if task == "semantic-segmentation":  # fewer built-in scenes
        scenes = script.load_digit_scenes
        monkeypatch.setattr(script, "load_digit_scenes", lambda: scenes(8, 2, size=32))
    flags, message = _empty_split_argv(task, tmp_path)
    with pytest.raises(EmptySplitError, match=message):
        script.main([*flags, "--output_dir", str(tmp_path / "run"), "--max_train_steps", "1", "--num_threads", "1"])


# ------------------------------------------------------------ tiny runs of every script
TINY_DENSE = [
    *TINY_BACKBONE_FLAGS, "--per_device_train_batch_size", "2",
    "--num_figure_scenes", "0", "--eval_every_epochs", "0", "--num_threads", "1",
]  # fmt: skip


def _tiny_run(task: str, tmp_path: Path, monkeypatch):
    """(the script module, flags of a run of a few seconds into tmp_path/run on tiny built-in data)."""
    script = load_script(SCRIPTS[task])
    flags = ["--output_dir", str(tmp_path / "run")]
    if task == "classification":
        return script, [*flags, *TINY_CLASSIFIER, "--max_train_samples", "32", "--per_device_train_batch_size", "16"]
    flags += TINY_DENSE
    if task == "semantic-segmentation":  # fewer built-in scenes, at the crop size: data in well under a second
        scenes = script.load_digit_scenes
        monkeypatch.setattr(script, "load_digit_scenes", lambda: scenes(8, 2, size=32))
        return script, [*flags, "--decode_head_hidden_size", "16", "--crop_size", "32", "--scale", "32", "32"]
    return script, [*flags, "--built_in_data_dir", str(tmp_path / "data"), "--built_in_scenes", "8", "2"]


# ------------------------------------------------------------ truncated images in the dense scripts
def test_instance_segmentation_names_a_truncated_image_and_can_leave_it_out(tmp_path, fresh_accelerate_state):
    """A truncated PNG whose header still reads (so the size check at load passes): --verify_images names it before
    training; --skip_corrupt_images leaves it out, and the evaluation scores only the images left."""
    from accelerate.state import AcceleratorState, GradientState

    from pacavit.data import CorruptImageError
    from pacavit.data.detection import build_digit_scenes_coco

    root = build_digit_scenes_coco(tmp_path / "coco", num_train=4, num_validation=3, size=64)
    broken = root / "validation" / "00002.png"
    broken.write_bytes(broken.read_bytes()[:200])
    flags = [
        *TINY_DENSE, "--output_dir", str(tmp_path / "run"), "--max_train_steps", "1",
        "--train_dir", str(root / "train"), "--train_annotations", str(root / "annotations/instances_train.json"),
        "--validation_dir", str(root / "validation"),
        "--validation_annotations", str(root / "annotations/instances_validation.json"),
    ]  # fmt: skip
    script = load_script(SCRIPTS["instance-segmentation"])
    with pytest.raises(CorruptImageError, match=r"1 unreadable image\(s\) in the 'validation' split:\n.*00002\.png"):
        script.main([*flags, "--verify_images"])
    assert not (tmp_path / "run" / "model.safetensors").exists()
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    results = script.main([*flags, "--skip_corrupt_images"])
    assert results["completed_steps"] == 1 and (tmp_path / "run" / "model.safetensors").is_file()


def test_semantic_segmentation_names_a_truncated_image_or_mask_and_can_leave_it_out(tmp_path, fresh_accelerate_state):
    from accelerate.state import AcceleratorState, GradientState
    from PIL import Image

    from pacavit.data import CorruptImageError

    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"data/images/{i}.png")
        Image.fromarray(rng.integers(0, 2, (32, 32), dtype=np.uint8)).save(tmp_path / f"data/masks/{i}.png")
    broken = tmp_path / "data/masks/2.png"
    broken.write_bytes(broken.read_bytes()[:100])
    (tmp_path / "classes.json").write_text('{"0": "background", "1": "thing"}')
    flags = [
        *TINY_DENSE, "--output_dir", str(tmp_path / "run"), "--max_train_steps", "1", "--train_dir",
        str(tmp_path / "data"), "--id2label", str(tmp_path / "classes.json"), "--decode_head_hidden_size", "16",
        "--crop_size", "32", "--scale", "32", "32",
    ]  # fmt: skip
    script = load_script(SCRIPTS["semantic-segmentation"])
    with pytest.raises(CorruptImageError, match=r"unreadable image\(s\) in the 'train' split:\n.*masks/2\.png"):
        script.main([*flags, "--verify_images"])
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    assert script.main([*flags, "--skip_corrupt_images"])["completed_steps"] == 1


def test_eval_only_refuses_a_model_with_another_number_of_classes(tmp_path, fresh_accelerate_state):
    from pacavit import PaCaViTForSemanticSegmentation, PaCaViTSegmentationConfig

    config = PaCaViTSegmentationConfig(
        **TINY, num_clusters=[8, 8, 8, 0], num_labels=3, decode_head_hidden_size=16, auxiliary_hidden_size=8
    )
    PaCaViTForSemanticSegmentation(config).save_pretrained(tmp_path / "model")
    script = load_script(SCRIPTS["semantic-segmentation"])
    argv = ["--eval_only", "--model_name_or_path", str(tmp_path / "model"), "--output_dir", str(tmp_path / "run")]
    with pytest.raises(ValueError, match=r"predicts 3 classes, the data has 11 .*pass the --id2label it was trained"):
        script.main(argv)


# ------------------------------------------------------------ an error in the loop or during the export
@pytest.mark.parametrize("task", sorted(SCRIPTS))
def test_an_error_in_the_loop_restores_the_signal_handlers(task, tmp_path, monkeypatch, fresh_accelerate_state):
    """In-process and notebook use: main() that raises must not leave its SIGTERM hook installed."""
    import pacavit.training.run

    script, flags = _tiny_run(task, tmp_path, monkeypatch)

    def fail(*_):
        raise RuntimeError("a data error in the loop")

    monkeypatch.setattr(pacavit.training.run, "check_finite_loss", fail)  # called after each update
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RuntimeError, match="a data error in the loop"):
        script.main([*flags, "--max_train_steps", "2"])
    assert signal.getsignal(signal.SIGTERM) is handler


@pytest.mark.parametrize("task", sorted(SCRIPTS))
def test_a_crash_during_the_export_leaves_no_half_written_folder(task, tmp_path, monkeypatch, fresh_accelerate_state):
    """The model is written before the card; a crash between them (here: the card fails) must not leave a folder
    with weights but no card/results, which the next run would refuse as 'holds a run'. The next run into the
    same folder, without --overwrite_output_dir, then trains and exports completely."""
    from accelerate.state import AcceleratorState, GradientState

    script, flags = _tiny_run(task, tmp_path, monkeypatch)
    out = tmp_path / "run"
    card = script.write_model_card

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(script, "write_model_card", full_disk)
    with pytest.raises(OSError, match="No space left"):
        script.main([*flags, "--max_train_steps", "1"])
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("runs")) == []  # nothing of the export

    monkeypatch.setattr(script, "write_model_card", card)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    script.main([*flags, "--max_train_steps", "1"])
    assert {"model.safetensors", "config.json", "README.md", "all_results.json"} <= {p.name for p in out.iterdir()}
    assert not (out / ".tmp_export").exists()


# ------------------------------------------------------------ SIGTERM mid-run, then --resume_from_checkpoint latest


def _sigterm_after_first_checkpoint(out: Path, done: threading.Event) -> None:
    """SIGTERM to this process (as a scheduler sends it) once the run has saved a checkpoint: its loop, and so
    its handler, is running."""
    while not done.is_set():
        if list(out.glob("step_*/training_state.json")):
            os.kill(os.getpid(), signal.SIGTERM)
            return
        time.sleep(0.01)


@pytest.mark.parametrize("task", ["semantic-segmentation", "instance-segmentation"])
def test_sigterm_exits_143_with_a_checkpoint_and_resume_latest_finishes(
    task, tmp_path, monkeypatch, fresh_accelerate_state
):
    """The dense-task scripts' own loops (in-process: main(argv), as the interpreter would run it; SystemExit(143)
    is the exit status): SIGTERM mid-run saves a complete step_N and exits 143, and a run with
    --resume_from_checkpoint latest continues from step_N to the end."""
    from accelerate.state import AcceleratorState, GradientState

    from pacavit.training import TRAINING_STATE, find_latest_checkpoint

    script, flags = _tiny_run(task, tmp_path, monkeypatch)
    out = tmp_path / "run"
    flags += ["--checkpointing_steps", "1"]
    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # a signal after the run must not end pytest
    done = threading.Event()
    watcher = threading.Thread(target=_sigterm_after_first_checkpoint, args=(out, done), daemon=True)
    try:
        watcher.start()
        with pytest.raises(SystemExit) as stopped:
            script.main([*flags, "--max_train_steps", "100"])  # a lost signal fails the test, it does not hang it
    finally:
        done.set()
        watcher.join()
        signal.signal(signal.SIGTERM, previous)
    assert stopped.value.code == 143
    latest = find_latest_checkpoint(out)
    state = json.loads((latest / TRAINING_STATE).read_text())
    steps = state["completed_steps"]
    assert latest.name == f"step_{steps}" and 1 <= steps < 100 and len(state["history"]) == steps
    assert (latest / "model.safetensors").is_file() and not list(out.glob(".tmp_*"))
    assert not (out / "model.safetensors").exists()  # stopped, not finished

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    results = script.main([*flags, "--max_train_steps", str(steps + 2), "--resume_from_checkpoint", "latest"])
    assert results["completed_steps"] == steps + 2
    history = json.loads((out / "train_log.json").read_text())["history"]
    assert len(history) == steps + 2 and history[:steps] == state["history"]  # continued, not restarted
    assert (out / "model.safetensors").is_file()

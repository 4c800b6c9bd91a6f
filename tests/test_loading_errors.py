"""Loading and writing: unknown names list the valid ones, checkpoints with foreign, missing or wrongly shaped keys
are named (the converter's own strictness tests are in test_convert_backbone.py), heads with another number of
labels, safe loading and atomic output folders."""

import errno
import io
import json
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageClassification

from pacavit import PaCaViTConfig, PaCaViTForImageClassification, list_presets
from pacavit.convert import ConversionError, convert_checkpoint, convert_state_dict, main
from pacavit.safe_io import OutputFolderError, UnsafeCheckpointError, atomic_directory, load_torch_checkpoint

from helpers import original_checkpoint, tiny_config


@pytest.fixture
def load_report():
    """What transformers logs while loading (its load report names the keys), as `.getvalue()`."""
    import io
    import logging

    stream, logger = io.StringIO(), logging.getLogger("transformers")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)


@pytest.fixture
def saved_classifier(tmp_path):
    model = PaCaViTForImageClassification(tiny_config(num_clusters=[8, 8, 8, 0])).eval()
    model.save_pretrained(tmp_path / "model")
    return model, tmp_path / "model"


def _original_config(tmp_path):
    return json.loads((tmp_path / "original.json").read_text())


# ---------------------------------------------------------------- names
@pytest.mark.parametrize("name", ["pacavit-huge", "ivmcl/pacavit-huge", "pacavit_tiny_p2cconv_999_0", ""])
def test_unknown_preset_or_hub_style_name_lists_the_valid_ones(name):
    with pytest.raises(
        ValueError,
        match=rf"Unknown PaCa-ViT preset {name!r}. Valid names: pacavit-tiny, "
        r".*original names: pacavit_tiny_p2cconv_100_0",
    ):
        PaCaViTConfig.from_preset(name)


def test_hub_style_names_of_known_presets_resolve():
    for name in list_presets():
        assert PaCaViTConfig.from_preset(f"ivmcl/{name}").hidden_sizes == PaCaViTConfig.from_preset(name).hidden_sizes


def test_unknown_task_lists_the_valid_ones(tmp_path, capsys):
    with pytest.raises(
        ConversionError,
        match=r"Unknown task 'depth-estimation'; choose one of image-classification, backbone, semantic-segmentation",
    ):
        convert_state_dict({}, tiny_config(), task="depth-estimation")
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["--checkpoint", "x.pth", "--preset", "pacavit-tiny", "--task", "detection", "--output-dir", str(tmp_path)]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'detection'" in err and "image-classification" in err and "backbone" in err


def test_unknown_preset_in_the_converter_cli_is_a_message_not_a_traceback(tmp_path, capsys):
    path, _ = original_checkpoint(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(path), "--preset", "pacavit-giant", "--output-dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "error: Unknown PaCa-ViT preset 'pacavit-giant'. Valid names: pacavit-tiny" in capsys.readouterr().err


# ---------------------------------------------------------------- keys of a saved folder
def test_from_pretrained_names_missing_and_foreign_keys(saved_classifier, load_report):
    """transformers' documented handling: missing weights are newly initialised and unexpected ones dropped, and
    its load report names every one of them (here also returned with output_loading_info=True)."""
    model, folder = saved_classifier
    weights = load_file(folder / "model.safetensors")
    missing = "pacavit.stages.0.layers.0.mlp.fc1.weight"
    weights.pop(missing)
    weights["foreign_head.weight"] = torch.zeros(3)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    loaded, info = PaCaViTForImageClassification.from_pretrained(folder, output_loading_info=True)
    assert info["missing_keys"] == {missing} and info["unexpected_keys"] == {"foreign_head.weight"}
    report = load_report.getvalue()
    assert missing in report and "foreign_head.weight" in report and "MISSING" in report and "UNEXPECTED" in report
    for name, tensor in model.state_dict().items():  # everything else is loaded
        if name != missing:
            assert torch.equal(loaded.state_dict()[name], tensor), name


def test_from_pretrained_wrong_shape_is_an_error_naming_the_key(saved_classifier, load_report):
    _, folder = saved_classifier
    weights = load_file(folder / "model.safetensors")
    weights["pacavit.stages.0.layers.0.mlp.fc1.weight"] = torch.zeros(7, 16)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        PaCaViTForImageClassification.from_pretrained(folder)
    report = load_report.getvalue()
    assert "pacavit.stages.0.layers.0.mlp.fc1.weight" in report and "torch.Size([7, 16])" in report


# ---------------------------------------------------------------- another number of labels
def test_another_number_of_labels_needs_ignore_mismatched_sizes(saved_classifier, load_report):
    model, folder = saved_classifier
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModelForImageClassification.from_pretrained(folder, num_labels=7)
    assert "classifier.weight" in load_report.getvalue()  # the report names the head
    labels = {i: f"class_{i}" for i in range(7)}
    loaded = AutoModelForImageClassification.from_pretrained(
        folder, num_labels=7, id2label=labels, label2id={v: k for k, v in labels.items()}, ignore_mismatched_sizes=True
    ).eval()
    assert loaded.classifier.weight.shape == (7, 64) and loaded.config.id2label[6] == "class_6"
    # the body is the saved one, the head is new
    for name, tensor in model.state_dict().items():
        if not name.startswith("classifier."):
            assert torch.equal(loaded.state_dict()[name], tensor), name
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.pacavit(pixel_values).pooler_output, model.pacavit(pixel_values).pooler_output
        )
    loaded.train()(pixel_values, labels=torch.tensor([6, 0])).loss.backward()  # and it trains on 7 classes


# ---------------------------------------------------------------- safe loading
class _RunsCode:
    """A pickle that runs a command when loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious_checkpoints(tmp_path: Path, marker: Path) -> list[Path]:
    """The same payload as a legacy (protocol 2) pickle, a protocol 4 pickle and torch.save's zip layout."""
    paths = []
    for protocol in (2, 4):
        paths.append(tmp_path / f"evil_protocol{protocol}.pth")
        with open(paths[-1], "wb") as handle:  # (plain pickle cannot hold tensors safely: no tensors here)
            pickle.dump({"payload": _RunsCode(marker), "state_dict": {"head.bias": [0.0]}}, handle, protocol=protocol)
    paths.append(tmp_path / "evil_zip.pth")
    torch.save({"payload": _RunsCode(marker), "state_dict": {"head.bias": torch.zeros(1)}}, paths[-1])
    return paths


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickle_that_runs_code_is_refused_with_the_reason(tmp_path, capsys):
    marker = tmp_path / "pwned"
    paths = _malicious_checkpoints(tmp_path, marker)
    reasons = {paths[0]: "GLOBAL posix.system", paths[1]: "Unsupported operand", paths[2]: "GLOBAL posix.system"}
    for path, reason in reasons.items():
        with pytest.raises(
            UnsafeCheckpointError, match=rf"Refusing to load .*{path.name}: it is not a plain tensor checkpoint"
        ) as error:
            load_torch_checkpoint(path)
        assert reason in str(error.value) and "torch.load(weights_only=True) does not run" in str(error.value)
    with pytest.raises(SystemExit):  # the converter CLI says so and exits
        main(["--checkpoint", str(paths[0]), "--preset", "pacavit-tiny", "--output-dir", str(tmp_path / "out")])
    assert "error: Refusing to load" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_pytorch_model_bin_that_runs_code_is_refused_by_from_pretrained(saved_classifier, tmp_path):
    _, folder = saved_classifier
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"payload": _RunsCode(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(Exception, match="(?i)weights.only|unsupported global|unpickl"):
        PaCaViTForImageClassification.from_pretrained(folder)
    assert not marker.exists()


def test_only_safetensors_are_written(saved_classifier, tmp_path):
    _, folder = saved_classifier
    path, _ = original_checkpoint(tmp_path)
    convert_checkpoint(path, tmp_path / "converted", original_config=_original_config(tmp_path), verbose=False)
    for written in (folder, tmp_path / "converted"):
        suffixes = {p.suffix for p in written.iterdir()}
        assert ".safetensors" in suffixes and not suffixes & {".bin", ".pth", ".pt", ".pkl", ".ckpt"}, suffixes


def test_remote_code_runs_only_with_trust_remote_code(tmp_path):
    """A folder whose config.json points at its own code (auto_map): loading it without trust_remote_code=True is
    refused before any of that code runs."""
    folder, marker = tmp_path / "remote", tmp_path / "code_ran"
    folder.mkdir()
    (folder / "configuration_remote.py").write_text(
        textwrap.dedent(
            f"""
            from pathlib import Path
            from transformers import PretrainedConfig
            Path({str(marker)!r}).touch()

            class RemoteConfig(PretrainedConfig):
                model_type = "remote-test"
            """
        )
    )
    (folder / "config.json").write_text(
        json.dumps({"model_type": "remote-test", "auto_map": {"AutoConfig": "configuration_remote.RemoteConfig"}})
    )
    script = textwrap.dedent(
        f"""
        import sys
        from transformers import AutoConfig
        try:
            AutoConfig.from_pretrained({str(folder)!r}, trust_remote_code=False)
        except ValueError as error:
            print("refused:", "trust_remote_code=True" in str(error))
        else:
            sys.exit("loaded without trust_remote_code")
        assert not __import__("os").path.exists({str(marker)!r}), "code ran"
        AutoConfig.from_pretrained({str(folder)!r}, trust_remote_code=True)
        print("trusted:", __import__("os").path.exists({str(marker)!r}))
        """
    )
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "refused: True" in result.stdout and "trusted: True" in result.stdout


# ---------------------------------------------------------------- atomic output folders
def test_a_failed_conversion_leaves_the_previous_folder_and_no_debris(tmp_path, monkeypatch):
    path, _ = original_checkpoint(tmp_path)
    out = tmp_path / "out"
    convert_checkpoint(path, out, original_config=_original_config(tmp_path), verbose=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def dies(*args, **kwargs):
        raise KeyboardInterrupt  # as if the process were interrupted between two files

    monkeypatch.setattr("transformers.ConvNextImageProcessor.save_pretrained", dies)
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(path, out, original_config=_original_config(tmp_path), verbose=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_the_converter_refuses_to_replace_a_folder_of_other_files(tmp_path):
    path, _ = original_checkpoint(tmp_path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("precious")
    with pytest.raises(OutputFolderError, match="not a model folder .*Choose a new or empty output folder"):
        convert_checkpoint(path, tmp_path / "notes", original_config=_original_config(tmp_path), verbose=False)
    assert (tmp_path / "notes" / "thesis.tex").read_text() == "precious"


def _convert_repeatedly(path, out, original_config, times):
    torch.set_num_threads(1)
    for _ in range(times):
        convert_checkpoint(path, out, original_config=original_config, verbose=False)


def test_concurrent_conversions_into_one_folder_never_leave_a_half_written_result(tmp_path):
    path, _ = original_checkpoint(tmp_path)
    out = tmp_path / "out"
    expected = {"config.json", "model.safetensors", "preprocessor_config.json"}
    context = multiprocessing.get_context("fork")
    writers = [
        context.Process(target=_convert_repeatedly, args=(path, out, _original_config(tmp_path), 4)) for _ in range(2)
    ]
    for writer in writers:
        writer.start()
    seen = set()
    while any(writer.is_alive() for writer in writers):
        try:
            folder = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue  # between a writer's two renames: absent, which is allowed
        try:
            names = frozenset(os.listdir(folder))
            # a folder swapped out (and deleted) while we listed it is no longer the result at `out`
            if os.fstat(folder).st_ino == os.stat(out).st_ino:
                seen.add(names)
        except FileNotFoundError:
            pass
        finally:
            os.close(folder)
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0
    assert seen and all(names == expected for names in seen), seen
    assert set(os.listdir(out)) == expected
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary folders left
    loaded = AutoModelForImageClassification.from_pretrained(out)
    assert loaded.config.num_labels == 7


def test_atomic_directory_replaces_a_previous_model_folder(tmp_path):
    out = tmp_path / "folder"
    for version in ("one", "two"):
        with atomic_directory(out) as tmp:
            (tmp / "config.json").write_text(version)
            assert not out.exists() or (out / "config.json").read_text() != version  # not visible before the end
    assert (out / "config.json").read_text() == "two" and os.listdir(tmp_path) == ["folder"]


# ---------------------------------------------------------------- the converter's inputs (issue 19)
# Every input of `python -m pacavit.convert` that cannot be right is one `error:` line naming the file or flag and
# what to do, exit status 2, no traceback; the library functions raise the same message.
def _cli_error(capsys, argv) -> str:
    """Run the converter CLI, check it exits with status 2 and one `error:` line; return that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]  # (progress bars aside)
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]) and "Traceback" not in err, err
    return errors[0]


def _torch_bytes(obj, **kwargs) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def _safetensors_bytes(tensors) -> bytes:
    from safetensors.torch import save

    return save(tensors)


# name -> (how to make it at `path`, what the message says)
UNREADABLE_CHECKPOINTS = {
    "random-bytes": (lambda p: p.write_bytes(bytes(range(7, 256)) * 8), "neither a torch.save file"),
    "random-after-pickle-opcode": (lambda p: p.write_bytes(b"\x80" + bytes(range(256)) * 4), "is a pickle"),
    "text": (lambda p: p.write_text("layer1.weight: 0.1\n"), "is a text file beginning 'layer1.weight"),
    "empty": (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
    "truncated-zip": (lambda p: p.write_bytes(_torch_bytes({"a": torch.zeros(64)})[:300]), "zip archive"),
    "truncated-legacy": (
        lambda p: p.write_bytes(_torch_bytes({"a": torch.zeros(64)}, _use_new_zipfile_serialization=False)[:-20]),
        "legacy torch.save format) but truncated",
    ),
    "git-lfs-pointer": (
        lambda p: p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1234\n"),
        "Git LFS pointer",
    ),
    "html-page": (lambda p: p.write_text("<!DOCTYPE html><html>Sign in</html>"), "HTML page"),
    "truncated-safetensors": (
        lambda p: p.write_bytes(_safetensors_bytes({"head.weight": torch.zeros(7, 64)})[:-100]),
        "not a complete safetensors file",
    ),
    "folder": (lambda p: p.mkdir(), "is a folder, not a file"),
    "missing": (lambda p: None, "does not exist: check the path"),
}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", list(UNREADABLE_CHECKPOINTS))
def test_a_checkpoint_that_cannot_be_read_is_named_not_a_traceback(kind, tmp_path, capsys):
    from pacavit.safe_io import CheckpointFileError

    make, says = UNREADABLE_CHECKPOINTS[kind]
    _, _ = original_checkpoint(tmp_path)
    path = tmp_path / f"IMNET_224_pacavit_tiny_p2cconv_100_0{'.safetensors' if 'safetensors' in kind else '.pth'}"
    make(path)
    out = tmp_path / "out"
    with pytest.raises(CheckpointFileError) as error:
        convert_checkpoint(path, out, original_config=_original_config(tmp_path), verbose=False)
    message = str(error.value)
    assert str(path) in message and says in message, message
    if kind not in ("folder", "missing"):
        assert "Download or copy the file again" in message
    # the CLI, with the architecture given or read from the file name: the file is named before the name is used
    for extra in (["--original-config", str(tmp_path / "original.json")], []):
        assert _cli_error(capsys, ["--checkpoint", str(path), "--output-dir", str(out), *extra]) == f"error: {message}"
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_folder_given_as_the_checkpoint_says_what_it_holds(tmp_path):
    from pacavit.safe_io import CheckpointFileError, load_weights_file

    (tmp_path / "release").mkdir()
    (tmp_path / "release" / "IMNET_224_pacavit_tiny_p2cconv_100_0.pth").write_bytes(b"x")
    with pytest.raises(CheckpointFileError, match=r"is a folder, not a file: pass one of the files in it \(IMNET_224"):
        load_weights_file(tmp_path / "release")
    PaCaViTForImageClassification(tiny_config()).save_pretrained(tmp_path / "converted")
    with pytest.raises(CheckpointFileError, match="already a converted or saved model folder: load it with from_pre"):
        load_weights_file(tmp_path / "converted")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_malicious_pickle_is_still_refused_as_unsafe_not_as_corrupt(tmp_path):
    """The corrupt-file check tells a well-formed pickle that needs code (refused as unsafe) from random bytes."""
    marker = tmp_path / "pwned"
    for path in _malicious_checkpoints(tmp_path, marker):
        with pytest.raises(UnsafeCheckpointError, match="not a plain tensor checkpoint"):
            load_torch_checkpoint(path)
    assert not marker.exists()


def test_a_safetensors_checkpoint_converts_like_its_pth(tmp_path):
    """The converter accepts the original weights as safetensors (recognised by content, whatever the name)."""
    path, state_dict = original_checkpoint(tmp_path)
    reference = convert_checkpoint(
        path, tmp_path / "from-pth", original_config=_original_config(tmp_path), verbose=False
    )
    for name in ("original.safetensors", "renamed.pth"):
        save_file({k: v.contiguous() for k, v in state_dict.items()}, tmp_path / name)
        model = convert_checkpoint(
            tmp_path / name, tmp_path / f"from-{name}", original_config=_original_config(tmp_path), verbose=False
        )
        for key, tensor in reference.state_dict().items():
            assert torch.equal(model.state_dict()[key], tensor), key


@pytest.mark.parametrize(
    "content, says",
    [
        ([1, 2], "Expected a dict checkpoint (a state dict of tensors, or {'state_dict': ...}), got list"),
        (torch.zeros(3), "got Tensor. Save the model's state dict: torch.save(model.state_dict(), path)"),
        ({"state_dict": {"head.weight": torch.zeros(7, 64), "epoch": 3}}, "1 entries of the state dict are not tens"),
        ({"state_dict": {}}, "The checkpoint's state dict is empty"),
    ],
)
def test_a_checkpoint_that_holds_no_state_dict_of_tensors_is_named(content, says, tmp_path, capsys):
    original_checkpoint(tmp_path)
    path = tmp_path / "weird.pth"
    torch.save(content, path)
    with pytest.raises(ConversionError) as error:
        convert_checkpoint(path, tmp_path / "out", original_config=_original_config(tmp_path), verbose=False)
    assert str(error.value).startswith(f"{path}: ") and says in str(error.value)
    argv = ["--checkpoint", str(path), "--original-config", str(tmp_path / "original.json")]
    assert _cli_error(capsys, [*argv, "--output-dir", str(tmp_path / "out")]) == f"error: {error.value}"


def _mkdtemp_denied(*args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied", kwargs.get("dir"))


def _disk_full_while_saving(self, save_directory, *args, **kwargs):
    (Path(save_directory) / "preprocessor_config.json").write_text("{")  # half-written, then the disk is full
    raise OSError(errno.ENOSPC, "No space left on device", str(Path(save_directory) / "preprocessor_config.json"))


@pytest.mark.parametrize(
    "case, says",
    [
        ("parent-is-a-file", "cannot be created: {tmp}/afile is a file, not a folder. Choose a path under a folder"),
        ("is-a-file", "is a file, not a folder. Choose a new or empty folder"),
        ("mkdtemp-permission-denied", "cannot be written: creating a folder in {tmp}/new/deeper failed (Permission"),
        ("disk-full-while-writing", "failed (No space left on device); the disk is full: free some space"),
    ],
)
def test_an_unwritable_output_dir_is_named_and_nothing_is_left_behind(case, says, tmp_path, monkeypatch, capsys):
    path, _ = original_checkpoint(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    out = {"parent-is-a-file": tmp_path / "afile" / "out", "is-a-file": tmp_path / "afile"}.get(
        case, tmp_path / "new" / "deeper" / "out"
    )
    if case == "mkdtemp-permission-denied":
        monkeypatch.setattr("pacavit.safe_io.tempfile.mkdtemp", _mkdtemp_denied)
    elif case == "disk-full-while-writing":
        monkeypatch.setattr("transformers.ConvNextImageProcessor.save_pretrained", _disk_full_while_saving)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(OutputFolderError) as error:
        convert_checkpoint(path, out, original_config=_original_config(tmp_path), verbose=False)
    message = str(error.value)
    assert f"output folder (--output-dir) {out}" in message and says.format(tmp=tmp_path) in message, message
    argv = ["--checkpoint", str(path), "--original-config", str(tmp_path / "original.json"), "--output-dir", str(out)]
    assert _cli_error(capsys, argv) == f"error: {message}"
    # no temporary sibling, no parent folder created for it, the file untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == before and (tmp_path / "afile").read_text() == "not a folder"


def test_an_output_dir_that_holds_the_inputs_is_refused(tmp_path, capsys):
    """Replacing the output folder would delete the checkpoint (or the --original-config) inside it."""
    path, _ = original_checkpoint(tmp_path)
    folder = tmp_path / "model"
    convert_checkpoint(path, folder, original_config=_original_config(tmp_path), verbose=False)  # a model folder
    inside = folder / "original.pth"
    inside.write_bytes(path.read_bytes())
    with pytest.raises(OutputFolderError, match=rf"{folder} holds the input {inside}: the conversion replaces"):
        convert_checkpoint(inside, folder, original_config=_original_config(tmp_path), verbose=False)
    (folder / "original.json").write_text((tmp_path / "original.json").read_text())
    err = _cli_error(
        capsys,
        ["--checkpoint", str(path), "--original-config", str(folder / "original.json"), "--output-dir", str(folder)],
    )
    assert f"holds the input {folder / 'original.json'}" in err and "Choose another output folder" in err
    assert inside.is_file() and (folder / "original.json").is_file()


@pytest.mark.parametrize(
    "content, says",
    [
        (None, "--original-config {path} does not exist: pass a JSON file of the original constructor"),
        ("folder", "--original-config {path} is a folder"),
        ("{not json", "--original-config {path} is not valid JSON (Expecting property name"),
        ("[1, 2]", "--original-config {path} holds a JSON list, not an object"),
        ('{"paca_cfg": {}}', "The original configuration (the PaCaViT constructor's keyword arguments) lacks the key"),
        (
            '{"arch_cfg": 3, "paca_cfg": {"type": "P2CConv2d", "clusters": [8, 8, 8, 0]}}',
            "has a value of the wrong type ('int' object is not subscriptable)",
        ),
    ],
)
def test_an_original_config_that_cannot_be_used_is_named(content, says, tmp_path, capsys):
    path, _ = original_checkpoint(tmp_path)
    config = tmp_path / "config.json"
    if content == "folder":
        config.mkdir()
    elif content is not None:
        config.write_text(content)
    argv = ["--checkpoint", str(path), "--original-config", str(config), "--output-dir", str(tmp_path / "out")]
    assert says.format(path=config) in _cli_error(capsys, argv)
    assert not (tmp_path / "out").exists()


def test_a_task_that_contradicts_the_file_name_is_refused(tmp_path, capsys):
    from pacavit.convert import CheckpointNameError, convert_by_name

    path, _ = original_checkpoint(tmp_path)
    named = tmp_path / "IMNET_224_pacavit_tiny_p2cconv_100_0.pth"
    named.write_bytes(path.read_bytes())
    with pytest.raises(CheckpointNameError, match="--task semantic-segmentation does not fit 'IMNET_224_pacavit_tin"):
        convert_by_name(named, tmp_path / "out", task="semantic-segmentation")
    err = _cli_error(capsys, ["--checkpoint", str(named), "--task", "instance-segmentation", "--output-dir", "x"])
    assert "whose task is image-classification: drop --task, or give --task backbone" in err


def test_atomic_directory_removes_the_temporary_folder_and_the_parents_it_created(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(RuntimeError), atomic_directory(out) as tmp:
        (tmp / "config.json").write_text("{}")
        assert tmp.parent == out.parent and tmp.is_dir()
        raise RuntimeError("the conversion failed")
    assert list(tmp_path.iterdir()) == []  # neither the temporary folder nor a/ and a/b/
    (tmp_path / "keep").mkdir()
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "keep" / "out"):
        raise RuntimeError
    assert [p.name for p in tmp_path.iterdir()] == ["keep"] and list((tmp_path / "keep").iterdir()) == []

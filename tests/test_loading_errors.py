"""Loading and writing: unknown names list the valid ones, checkpoints with foreign, missing or wrongly shaped keys
are named (the converter's own strictness tests are in test_convert_backbone.py), heads with another number of
labels, safe loading and atomic output folders."""

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

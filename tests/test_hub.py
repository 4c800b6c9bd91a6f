"""`python -m pacavit.hub` export / install / push, remote code, and every model card's usage snippet.

Models are tiny random-weight stand-ins (`conftest.TINY` widths): what is tested is the folder, the cache layout
and the loading code, which do not depend on the width. Every card's snippet only uses its Hub id, so it runs
against a stand-in of the card's task installed under that id in a temporary cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import pacavit
from pacavit import PaCaViTForImageClassification
from pacavit.hub import (
    HubFolderError,
    auto_map_for,
    check_remote_code,
    export_folder,
    files_to_upload,
    install_to_cache,
    main,
    push,
    remote_code_files,
)
from pacavit.hub.releases import RELEASES, card_name, hub_id

from helpers import REPO_ROOT, tiny_config, tiny_maskrcnn

CARDS = REPO_ROOT / "model_cards"

# what an exported classifier folder holds: weights, config, processor, card and its remote code
CLASSIFIER_FOLDER_FILES = {
    "README.md",
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "configuration_pacavit.py",
    "modeling_pacavit.py",
}


def _classifier_folder(path: Path) -> Path:
    PaCaViTForImageClassification(tiny_config()).save_pretrained(path)
    return path


def _segmentation_folder(path: Path, head: str) -> Path:
    from pacavit import PaCaViTForSemanticSegmentation, PaCaViTSegmentationConfig
    from pacavit.preprocessing import segmentation_image_processor

    config = PaCaViTSegmentationConfig(
        **tiny_config().to_diff_dict() | dict(num_labels=4, decode_head_type=head, decode_head_hidden_size=16)
    )
    PaCaViTForSemanticSegmentation(config).save_pretrained(path)
    segmentation_image_processor().save_pretrained(path)
    return path


def _maskrcnn_folder(path: Path) -> Path:
    tiny_maskrcnn().save_pretrained(path)
    return path


STAND_INS = {"imagenet": _classifier_folder, "ade20k": _segmentation_folder, "coco": _maskrcnn_folder}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    out = export_folder(_classifier_folder(root / "src"), root / "export", repo_id="ivmcl/pacavit-base")
    return out


def test_export_classifier(exported):
    files = set(files_to_upload(exported))
    assert files == CLASSIFIER_FOLDER_FILES
    auto_map = json.loads((exported / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_pacavit.PaCaViTConfig",
        "AutoModel": "modeling_pacavit.PaCaViTModel",
        "AutoModelForImageClassification": "modeling_pacavit.PaCaViTForImageClassification",
        "AutoBackbone": "modeling_pacavit.PaCaViTBackbone",
    }
    # the released card of ivmcl/pacavit-base was chosen by the repo id
    assert "# ivmcl/pacavit-base" in (exported / "README.md").read_text()


@pytest.mark.parametrize("head", ["paca", "upernet"])
def test_export_segmentation(head, tmp_path):
    out = export_folder(_segmentation_folder(tmp_path / "src", head), tmp_path / "export")
    auto_map = json.loads((out / "config.json").read_text())["auto_map"]
    assert (
        auto_map["AutoModelForSemanticSegmentation"] == "modeling_pacavit_segmentation.PaCaViTForSemanticSegmentation"
    )
    assert auto_map == auto_map_for(pacavit.PaCaViTSegmentationConfig)
    assert {"configuration_pacavit_segmentation.py", "modeling_pacavit.py"} <= set(files_to_upload(out))
    assert check_remote_code(out) == []


def test_export_maskrcnn(tmp_path):
    out = export_folder(_maskrcnn_folder(tmp_path / "src"), tmp_path / "export")
    auto_map = json.loads((out / "config.json").read_text())["auto_map"]
    assert auto_map == auto_map_for(pacavit.PaCaViTMaskRCNNConfig) | {
        "AutoImageProcessor": "image_processing_pacavit_maskrcnn.PaCaViTMaskRCNNImageProcessor"
    }
    assert {"AutoModelForObjectDetection", "AutoModelForInstanceSegmentation"} <= set(auto_map)
    assert "image_processing_pacavit_maskrcnn.py" in files_to_upload(out) and check_remote_code(out) == []


def test_export_training_output_keeps_its_card_and_leaves_artifacts_out(tmp_path):
    """A training output folder: the model, its processor and card, plus checkpoints, logs and results."""
    from pacavit.preprocessing import default_image_processor

    src = _classifier_folder(tmp_path / "run")
    default_image_processor(tiny_config()).save_pretrained(src)
    (src / "README.md").write_text("---\nlicense: apache-2.0\n---\n# my run\n")
    for artifact in ("step_100/model.safetensors", "runs/events.out.tfevents", "all_results.json"):
        (src / artifact).parent.mkdir(parents=True, exist_ok=True)
        (src / artifact).write_text("x")
    out = export_folder(src, tmp_path / "export")
    assert (out / "README.md").read_text().endswith("# my run\n")
    assert set(files_to_upload(out)) == CLASSIFIER_FOLDER_FILES
    assert json.loads((out / "preprocessor_config.json").read_text()) == json.loads(
        (src / "preprocessor_config.json").read_text()
    )


def test_remote_code_files_import_nothing_of_ours(tmp_path):
    """The files copied for remote code are flat siblings with single-dot imports, and the check can fail."""
    classes = [getattr(pacavit, name) for name in pacavit.__all__ if name.startswith("PaCaViT")]
    for path in remote_code_files(classes):
        (tmp_path / path.name).write_text(path.read_text())
    assert check_remote_code(tmp_path) == []
    (tmp_path / "modeling_bad.py").write_text("import pacavit.extras\nfrom ..x import y\nfrom .missing import z\n")
    problems = check_remote_code(tmp_path)
    assert len(problems) == 3 and all(p.startswith("modeling_bad.py") for p in problems)


def test_export_refuses_to_overwrite_and_leaves_no_partial_folder(exported, tmp_path):
    src = _classifier_folder(tmp_path / "src")
    with pytest.raises(HubFolderError, match="--overwrite"):
        export_folder(src, exported)
    assert "# ivmcl/pacavit-base" in (exported / "README.md").read_text()  # untouched
    (src / "config.json").write_text(json.dumps({"model_type": "pacavit", "architectures": ["NotOurs"]}))
    with pytest.raises(HubFolderError, match="NotOurs"):
        export_folder(src, tmp_path / "broken")
    assert [p.name for p in tmp_path.iterdir()] == ["src"]


def test_install_layout_is_huggingface_hubs_and_idempotent(exported, tmp_path):
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache

    snapshot = install_to_cache(exported, "ivmcl/pacavit-base", cache_dir=tmp_path)
    repo = tmp_path / "models--ivmcl--pacavit-base"
    assert (repo / "refs" / "main").read_text() == snapshot.name and len(snapshot.name) == 40
    assert sorted(p.name for p in snapshot.iterdir()) == files_to_upload(exported)
    assert all(
        (snapshot / f).is_symlink() and (snapshot / f).resolve().parent == repo / "blobs"
        for f in files_to_upload(exported)
    )
    assert try_to_load_from_cache("ivmcl/pacavit-base", "config.json", cache_dir=tmp_path) == str(
        snapshot / "config.json"
    )
    info = scan_cache_dir(tmp_path)
    [cached] = info.repos
    assert cached.repo_id == "ivmcl/pacavit-base" and not info.warnings
    assert [r.commit_hash for r in cached.revisions] == [snapshot.name]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert install_to_cache(exported, "ivmcl/pacavit-base", cache_dir=tmp_path) == snapshot  # idempotent
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_offline_from_pretrained_after_install_with_import_pacavit(exported, tmp_path, monkeypatch):
    from huggingface_hub import constants
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    main(["install", str(exported), "--repo-id", "ivmcl/pacavit-base", "--cache-dir", str(tmp_path)])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # where from_pretrained looks
    model = AutoModelForImageClassification.from_pretrained("ivmcl/pacavit-base")
    assert type(model) is PaCaViTForImageClassification  # the registered class, not remote code
    assert type(AutoModel.from_pretrained("ivmcl/pacavit-base")).__name__ == "PaCaViTModel"
    assert type(AutoImageProcessor.from_pretrained("ivmcl/pacavit-base")).__name__ == "ConvNextImageProcessor"
    result = pipeline("image-classification", model="ivmcl/pacavit-base")(Image.new("RGB", (40, 30)))
    assert len(result) == 5 and {"label", "score"} <= set(result[0])
    with pytest.raises(OSError):  # not installed: the offline error, at once
        AutoModel.from_pretrained("ivmcl/pacavit-nonexistent")


def _snippet(card: Path) -> str:
    return re.search(r"## Usage\n\n```python\n(.*?)```", card.read_text(), re.S).group(1)


# Runs in a fresh interpreter whose sys.path cannot reach our package: remote code only.
_CLEAN_PROCESS = textwrap.dedent(
    """
    import contextlib, importlib.util, io, json, sys
    from pathlib import Path
    sys.path[:] = [p for p in sys.path if not (Path(p or ".") / "pacavit" / "__init__.py").exists()]
    assert importlib.util.find_spec("pacavit") is None, "pacavit is importable"
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline

    repo = "ivmcl/pacavit-base"
    report = {}
    model = AutoModelForImageClassification.from_pretrained(repo, trust_remote_code=True).eval()
    report["classifier"] = type(model).__module__
    report["base"] = type(AutoModel.from_pretrained(repo, trust_remote_code=True)).__name__
    report["processor"] = type(AutoImageProcessor.from_pretrained(repo, trust_remote_code=True)).__name__
    x = torch.load(sys.argv[1], weights_only=True)
    with torch.no_grad():
        report["max_abs_diff"] = (model(x["pixel_values"]).logits - x["logits"]).abs().max().item()
    classify = pipeline("image-classification", model=repo, trust_remote_code=True)
    report["pipeline"] = classify(Image.new("RGB", (40, 30)))[0]
    report["snippets"] = {}
    for card in json.loads(sys.argv[2]):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(Path(card).read_text(), card, "exec"), {"__name__": "__snippet__"})
        report["snippets"][Path(card).name] = out.getvalue()
    report["pacavit_imported"] = any(name.split(".")[0] == "pacavit" for name in sys.modules)
    print("REPORT" + json.dumps(report))
    """
)


def test_remote_code_and_every_card_snippet_in_a_clean_process(exported, tmp_path):
    """With HF_HUB_OFFLINE=1, a process that cannot import pacavit loads ivmcl/pacavit-base with
    trust_remote_code (AutoModel, AutoModelForImageClassification, AutoImageProcessor, pipeline) and runs the
    model cards' usage snippets.

    The snippets depend on nothing but their Hub id: every card's snippet equals its task's template with the id
    filled in (checked for all cards), so each template runs once, under a real card's id, against a stand-in
    of that task installed in the temporary cache (loading 39 remote-code copies would only repeat it)."""
    cache = tmp_path / "hub"
    install_to_cache(exported, "ivmcl/pacavit-base", cache_dir=cache)
    model = PaCaViTForImageClassification.from_pretrained(exported).eval()
    pixel_values = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.save({"pixel_values": pixel_values, "logits": model(pixel_values).logits}, tmp_path / "io.pt")

    templates, snippets = {}, []
    for release in RELEASES:
        snippet = _snippet(CARDS / card_name(release))
        template = snippet.replace(hub_id(release), "{repo}")
        assert template.count("{repo}") == 1 and hub_id(release) not in template, card_name(release)
        kind = release["section"]
        assert templates.setdefault(kind, template) == template, f"{card_name(release)} differs from its task's"
        if len(templates) == len(snippets):
            continue  # this task's template is already scheduled
        if kind == "imagenet":
            stand_in = exported
        else:
            args = (release["head"],) if kind == "ade20k" else ()
            stand_in = export_folder(STAND_INS[kind](tmp_path / f"src-{kind}", *args), tmp_path / f"export-{kind}")
        install_to_cache(stand_in, hub_id(release), cache_dir=cache)
        path = tmp_path / f"snippet-{card_name(release)}.py"
        path.write_text(snippet)
        snippets.append(str(path))

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "home"))
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", _CLEAN_PROCESS, str(tmp_path / "io.pt"), json.dumps(snippets)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.split("REPORT", 1)[1])
    assert report["classifier"].startswith("transformers_modules.") and not report["pacavit_imported"]
    assert report["base"] == "PaCaViTModel" and report["processor"] == "ConvNextImageProcessor"
    assert report["max_abs_diff"] < 1e-5 and set(report["pipeline"]) == {"label", "score"}
    assert len(report["snippets"]) == len(snippets) and all(out.strip() for out in report["snippets"].values())
    assert len(templates) == 3


def test_push_dry_run_offline_and_mocked_upload(exported, monkeypatch, capsys):
    from unittest import mock

    from huggingface_hub import constants

    main(["push", str(exported), "--repo-id", "ivmcl/pacavit-base", "--dry-run"])  # offline is fine
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert listed == files_to_upload(exported)
    with pytest.raises(SystemExit) as exit_info:
        main(["push", str(exported), "--repo-id", "ivmcl/pacavit-base"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Offline mode is on (HF_HUB_OFFLINE=1)") and "--dry-run" in err

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    api = mock.MagicMock()
    api.create_repo.return_value.repo_id = "ivmcl/pacavit-base"
    with mock.patch("pacavit.hub.push.HfApi", return_value=api) as hf_api:
        main(["push", str(exported), "--repo-id", "ivmcl/pacavit-base", "--private", "--token", "t0k"])
    hf_api.assert_called_with(token="t0k")
    api.create_repo.assert_called_once_with("ivmcl/pacavit-base", exist_ok=True, private=True)
    upload = api.upload_folder.call_args.kwargs
    assert upload["repo_id"] == "ivmcl/pacavit-base" and upload["folder_path"] == str(exported)
    assert upload["allow_patterns"] == listed  # exactly what the dry run listed


# ---------------------------------------------------------------- the Hub tools' inputs (issue 19)
# Every input of `python -m pacavit.hub` that cannot be right is one `error:` line naming the file or flag and
# what to do, exit status 2, no traceback, and nothing written; the library functions raise the same message.
def _cli_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]) and "Traceback" not in err, err
    return errors[0]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _set_model_type(folder: Path, model_type: str) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"model_type": model_type}))


# name -> (how to break an exported folder, what the message says ({folder}: the folder))
BROKEN_FOLDERS = {
    "truncated-weights": (
        lambda f: _truncate(f / "model.safetensors"),
        "Cannot read the weights file {folder}/model.safetensors: it is not a complete safetensors file",
    ),
    "corrupt-config": (
        lambda f: _truncate(f / "config.json"),
        "{folder}/config.json is not valid JSON (",
    ),
    "config-not-an-object": (
        lambda f: (f / "config.json").write_text("[]"),
        "{folder}/config.json holds a JSON list, not an object",
    ),
    "missing-config": (lambda f: (f / "config.json").unlink(), "{folder} has no config.json, so it is not a model"),
    "unknown-model-type": (
        lambda f: _set_model_type(f, "bert"),
        "{folder}/config.json has model_type 'bert', which is not a PaCa-ViT model (pacavit, pacavit_segmentation",
    ),
    "missing-weights": (lambda f: (f / "model.safetensors").unlink(), "{folder} holds no model.safetensors"),
    "corrupt-processor-config": (
        lambda f: (f / "preprocessor_config.json").write_text("{"),
        "{folder}/preprocessor_config.json is not valid JSON",
    ),
    "not-a-folder": (lambda f: shutil.rmtree(f) or f.write_text("x"), "{folder} is a file, not a model folder"),
    "missing-folder": (lambda f: shutil.rmtree(f), "{folder} does not exist"),
}


@pytest.mark.parametrize("command", ["export", "install", "push"])
@pytest.mark.parametrize("breakage", list(BROKEN_FOLDERS))
def test_a_folder_that_is_not_a_usable_model_folder_is_named(breakage, command, exported, tmp_path, capsys):
    folder = tmp_path / "folder"
    shutil.copytree(exported, folder)
    make, says = BROKEN_FOLDERS[breakage]
    make(folder)
    says = says.format(folder=folder)
    run = {
        "export": lambda: export_folder(folder, tmp_path / "out"),
        "install": lambda: install_to_cache(folder, "ivmcl/pacavit-base", cache_dir=tmp_path / "cache"),
        "push": lambda: push(folder, "ivmcl/pacavit-base", dry_run=True),
    }[command]
    with pytest.raises(HubFolderError) as error:
        run()
    assert says in str(error.value), str(error.value)
    argv = {
        "export": ["export", str(folder), str(tmp_path / "out")],
        "install": ["install", str(folder), "--repo-id", "ivmcl/pacavit-base", "--cache-dir", str(tmp_path / "cache")],
        "push": ["push", str(folder), "--repo-id", "ivmcl/pacavit-base", "--dry-run"],
    }[command]
    assert _cli_error(capsys, argv) == f"error: {error.value}"
    assert sorted(p.name for p in tmp_path.iterdir()) == (["folder"] if breakage != "missing-folder" else [])


def test_remote_code_check_names_auto_map_files_and_classes_the_folder_lacks(exported, tmp_path, capsys):
    folder = tmp_path / "folder"
    shutil.copytree(exported, folder)
    (folder / "modeling_pacavit.py").unlink()
    assert check_remote_code(folder) == [
        "config.json: auto_map (AutoBackbone, AutoModel, AutoModelForImageClassification) names modeling_pacavit.py, "
        "which is not in the folder"
    ]
    for argv in (
        ["install", str(folder), "--repo-id", "ivmcl/pacavit-base", "--cache-dir", str(tmp_path / "cache")],
        ["push", str(folder), "--repo-id", "ivmcl/pacavit-base", "--dry-run"],
    ):
        err = _cli_error(capsys, argv)
        assert f"The model files in {folder} do not work as Hub remote code (config.json: auto_map" in err
        assert "export the model folder again: `python -m pacavit.hub export SRC DST --overwrite`" in err
    (folder / "modeling_pacavit.py").write_text(
        (exported / "modeling_pacavit.py").read_text().replace("class PaCaViTBackbone(", "class Renamed(")
    )
    assert check_remote_code(folder) == [
        "config.json: auto_map['AutoBackbone'] is modeling_pacavit.PaCaViTBackbone, but modeling_pacavit.py has no "
        "PaCaViTBackbone"
    ]
    (folder / "modeling_pacavit.py").write_text("def broken(:\n")
    assert check_remote_code(folder)[0].startswith("modeling_pacavit.py: not valid Python (SyntaxError")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "revision, says",
    [
        ("../../../../escaped", "holds '..', which a git ref name cannot hold"),
        ("refs/../../x", "holds '..'"),
        ("/etc/passwd", "has an empty path component (a leading, trailing or double '/')"),
        ("a//b", "has an empty path component"),
        ("main/", "has an empty path component"),
        ("x\0y", "holds '\\x00', which a git ref name cannot hold"),
        ("a b", "holds ' '"),
        ("a\\b", "holds '\\\\'"),
        (".hidden", "has a component that starts with '.' or ends with '.lock'"),
        ("v1.lock", "has a component that starts with '.' or ends with '.lock'"),
        ("@{-1}", "holds '@{'"),
        ("", "is empty"),
        ("0123456789abcdef0123456789abcdef01234567", "is a commit hash, not a branch or tag name"),
    ],
)
def test_install_refuses_a_revision_that_is_not_a_git_ref_name(revision, says, exported, tmp_path, capsys):
    cache = tmp_path / "a" / "b" / "cache"  # deep, so that '../..' would land inside tmp_path
    with pytest.raises(HubFolderError) as error:
        install_to_cache(exported, "ivmcl/pacavit-base", cache_dir=cache, revision=revision)
    assert f"revision {revision!r} (--revision) {says}" in str(error.value)
    assert "give a branch or tag name such as main, v1.0 or refs/pr/1" in str(error.value)
    argv = ["install", str(exported), "--repo-id", "ivmcl/pacavit-base", "--cache-dir", str(cache)]
    assert _cli_error(capsys, [*argv, "--revision", revision]) == f"error: {error.value}"
    assert list(tmp_path.iterdir()) == []  # nothing written, inside the cache or out of it


@pytest.mark.parametrize(
    "repo_id, says",
    [
        ("ivmcl/pacavit/base", "is not a valid Hub repository id: Repo id must be in the form"),
        ("../pacavit-base", "is not a valid Hub repository id"),
        ("ivmcl/..", "is not a valid Hub repository id"),
        ("ivmcl/pacavit--base", "is not a valid Hub repository id: Cannot have -- or .. in repo_id"),
        ("pacavit-base", "needs an owner: e.g. ivmcl/pacavit-base"),
    ],
)
def test_install_refuses_a_repo_id_that_huggingface_hub_would_not_accept(repo_id, says, exported, tmp_path, capsys):
    with pytest.raises(HubFolderError, match=re.escape(f"repo id {repo_id!r} (--repo-id) {says}")) as error:
        install_to_cache(exported, repo_id, cache_dir=tmp_path / "cache")
    argv = ["install", str(exported), "--repo-id", repo_id, "--cache-dir", str(tmp_path / "cache")]
    assert _cli_error(capsys, argv) == f"error: {error.value}"
    assert list(tmp_path.iterdir()) == []


def test_install_keeps_pull_request_refs_where_the_hub_cache_does_and_never_writes_outside(exported, tmp_path):
    from huggingface_hub import try_to_load_from_cache

    cache = tmp_path / "cache"
    snapshot = install_to_cache(exported, "ivmcl/pacavit-base", cache_dir=cache, revision="refs/pr/1")
    refs = cache / "models--ivmcl--pacavit-base" / "refs"
    assert (refs / "refs" / "pr" / "1").read_text() == snapshot.name  # huggingface_hub's place for refs/pr/N
    found = try_to_load_from_cache("ivmcl/pacavit-base", "config.json", cache_dir=cache, revision="refs/pr/1")
    assert found == str(snapshot / "config.json")
    with pytest.raises(HubFolderError, match=r"revision 'refs/pr/1/x' \(--revision\) clashes with the installed rev"):
        install_to_cache(exported, "ivmcl/pacavit-base", cache_dir=cache, revision="refs/pr/1/x")
    with pytest.raises(HubFolderError, match=r"revision 'refs/pr' \(--revision\) clashes with installed revisions"):
        install_to_cache(exported, "ivmcl/pacavit-base", cache_dir=cache, revision="refs/pr")
    # a symbolic link in the cache cannot lead the ref file out of it: the resolved path is checked
    outside = tmp_path / "outside"
    outside.mkdir()
    (cache / "models--ivmcl--linked" / "refs").parent.mkdir()
    (cache / "models--ivmcl--linked" / "refs").symlink_to(outside)
    with pytest.raises(HubFolderError, match=rf"revision 'main' would write {outside}/main, outside the cache folder"):
        install_to_cache(exported, "ivmcl/linked", cache_dir=cache)
    assert list(outside.iterdir()) == []


def test_install_refuses_a_cache_dir_that_cannot_be_used(exported, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    folder = tmp_path / "folder"
    shutil.copytree(exported, folder)
    for cache, says in (
        (tmp_path / "afile", "The cache folder (--cache-dir) {cache} is a file, not a folder"),
        (
            tmp_path / "afile" / "hub",
            "The cache folder (--cache-dir) {cache} cannot be created: {tmp}/afile is a file",
        ),
        (folder / "cache", "The cache folder (--cache-dir) {cache} is inside the folder to install, {folder}"),
    ):
        with pytest.raises(HubFolderError) as error:
            install_to_cache(folder, "ivmcl/pacavit-base", cache_dir=cache)
        assert says.format(cache=cache, tmp=tmp_path, folder=folder) in str(error.value)
        argv = ["install", str(folder), "--repo-id", "ivmcl/pacavit-base", "--cache-dir", str(cache)]
        assert _cli_error(capsys, argv) == f"error: {error.value}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "folder"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in exported.iterdir())


def _mkdtemp_denied(*args, **kwargs):
    raise PermissionError(13, "Permission denied", kwargs.get("dir"))


def test_export_refuses_a_destination_that_is_the_source_or_cannot_be_written(tmp_path, monkeypatch, capsys):
    from pacavit.safe_io import OutputFolderError

    src = _classifier_folder(tmp_path / "run")
    (src / "step_10").mkdir()
    (src / "step_10" / "model.safetensors").write_bytes(b"a checkpoint to keep")
    (tmp_path / "afile").write_text("x")
    for dst in (src, tmp_path):  # the source itself, or a folder that holds it: --overwrite would delete it
        err = _cli_error(capsys, ["export", str(src), str(dst), "--overwrite"])
        assert f"The export folder (DST) {dst} is the source folder {src} or holds it" in err
        assert "Choose another DST" in err
    for dst, says in (
        (tmp_path / "afile", "The export folder (DST) {dst} is a file, not a folder"),
        (tmp_path / "afile" / "out", "The export folder (DST) {dst} cannot be created: {tmp}/afile is a file"),
    ):
        with pytest.raises(OutputFolderError) as error:
            export_folder(src, dst, overwrite=True)
        assert says.format(dst=dst, tmp=tmp_path) in str(error.value)
        assert _cli_error(capsys, ["export", str(src), str(dst), "--overwrite"]) == f"error: {error.value}"
    monkeypatch.setattr("pacavit.safe_io.tempfile.mkdtemp", _mkdtemp_denied)  # (tests run as root: chmod won't do)
    dst = tmp_path / "new" / "export"
    err = _cli_error(capsys, ["export", str(src), str(dst)])
    assert f"The export folder (DST) {dst} cannot be written: creating a folder in {dst.parent} failed" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "run"]  # no temporary folder, no new/
    assert (src / "step_10" / "model.safetensors").read_bytes() == b"a checkpoint to keep"


def test_export_checks_the_card_and_the_repo_id(tmp_path, capsys):
    src = _classifier_folder(tmp_path / "src")
    (tmp_path / "empty.md").write_text("\n")
    (tmp_path / "binary.md").write_bytes(b"\xff\xfe\x00card")
    for argv, says in (
        (["--card", str(tmp_path / "nope.md")], f"The model card {tmp_path / 'nope.md'} (--card) does not exist"),
        (["--card", str(tmp_path)], f"The model card {tmp_path} (--card) is a folder"),
        (["--card", str(tmp_path / "empty.md")], "(--card) is empty: pass a README.md with the card"),
        (["--card", str(tmp_path / "binary.md")], "(--card) is not a UTF-8 text file"),
        (["--repo-id", "ivmcl/pacavit base"], "repo id 'ivmcl/pacavit base' (--repo-id) is not a valid Hub repo"),
    ):
        assert says in _cli_error(capsys, ["export", str(src), str(tmp_path / "out"), *argv])
    assert not (tmp_path / "out").exists()


def test_push_checks_its_arguments_and_names_network_failures(exported, monkeypatch, capsys):
    from unittest import mock

    from huggingface_hub import constants

    base = ["push", str(exported), "--repo-id", "ivmcl/pacavit-base"]
    for argv, says in (
        (["--revision", "../main"], "revision '../main' (--revision) holds '..'"),
        (["--commit-message", " "], "The commit message (--commit-message) is empty"),
        (["--repo-id", "ivmcl/a/b"], "repo id 'ivmcl/a/b' (--repo-id) is not a valid Hub repository id"),
    ):
        assert says in _cli_error(capsys, [*base, *argv, "--dry-run"])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    api = mock.MagicMock()
    api.create_repo.side_effect = ConnectionError("no route to host")
    with mock.patch("pacavit.hub.push.HfApi", return_value=api):
        with pytest.raises(
            HubFolderError, match="Cannot create/access the Hub repository 'ivmcl/pacavit-base' \\(Conn"
        ):
            push(exported, "ivmcl/pacavit-base")
        api.create_repo.side_effect = None
        api.create_repo.return_value.repo_id = "ivmcl/pacavit-base"
        api.upload_folder.side_effect = RuntimeError("403 Forbidden")
        err = _cli_error(capsys, base)
    assert err.startswith(f"error: Uploading {exported} to 'ivmcl/pacavit-base' failed (RuntimeError: 403 Forbidden)")

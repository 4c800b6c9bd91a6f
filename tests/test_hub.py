"""`python -m pacavit.hub` export / install / push, remote code, and every model card's usage snippet.

Models are tiny random-weight stand-ins (`conftest.TINY` widths): what is tested is the folder, the cache layout
and the loading code, which do not depend on the width. Every card's snippet only uses its Hub id, so it runs
against a stand-in of the card's task installed under that id in a temporary cache.
"""

from __future__ import annotations

import json
import os
import re
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
    with pytest.raises(SystemExit, match="HF_HUB_OFFLINE=1"):
        main(["push", str(exported), "--repo-id", "ivmcl/pacavit-base"])

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

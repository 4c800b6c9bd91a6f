"""Model cards: the writer (`pacavit.hub.cards`: model-index from the task's metrics, sections from the caller),
and the cards in model_cards/: one per released checkpoint of the original README, generated from
`pacavit.hub.releases`, parseable by huggingface_hub, with a model-index equal to the data file. (Their usage
snippets run in test_hub.py.)"""

from __future__ import annotations

import json

import pytest
import torch

from pacavit import PaCaViTConfig, PaCaViTForImageClassification
from pacavit.hub.cards import (
    CardMetric,
    hardware_section,
    model_index,
    recipe_section,
    releases_table,
    render_card,
    write_model_card,
)
from pacavit.hub.releases import RELEASES, base_model, card_name, hub_id

from helpers import REPO_ROOT, reference_dir

CARDS = REPO_ROOT / "model_cards"
IDS = [card_name(r) for r in RELEASES]


def test_one_card_per_readme_row_and_cards_are_generated():
    assert len(RELEASES) == 12 + 12 + 15  # the ImageNet, MS-COCO and ADE20K tables of the original README
    assert sorted(p.name for p in CARDS.glob("*.md")) == sorted(IDS)  # ids are unique, no stray card
    stale = [card_name(r) for r in RELEASES if (CARDS / card_name(r)).read_text() != render_card(r)]
    assert not stale, f"run `python model_cards/generate.py`: {stale}"


@pytest.mark.parametrize("release", RELEASES, ids=IDS)
def test_card_metadata_and_model_index(release):
    from huggingface_hub import ModelCard

    card = ModelCard.load(CARDS / card_name(release))
    data = card.data
    assert data.license == "mit" and data.library_name == "transformers"
    assert (
        data.pipeline_tag
        == {"imagenet": "image-classification", "coco": "object-detection", "ade20k": "image-segmentation"}[
            release["section"]
        ]
    )
    assert data.base_model == base_model(release)
    claimed = {(r.task_type, r.metric_type): r.metric_value for r in data.eval_results or []}
    assert claimed == model_index(release)
    if release["attributable"]:  # every reported number is in the model-index
        assert sorted(claimed.values()) == sorted(release["metrics"].values())
    assert f"`{release['linked_file']}`" in card.text and "@inproceedings{Grainger2023PaCaViT" in card.text
    if release["note"]:
        assert release["note"] in card.text


def test_the_seed_tables_errors_are_stated():
    base_teacher = next(r for r in RELEASES if r["row"] == "PaCa-Base (teacher)" and r["section"] == "imagenet")
    text = (CARDS / card_name(base_teacher)).read_text()
    assert "47.66M" in text and "46.7M" in text
    row_11 = next(r for r in RELEASES if r["row"] == "stage-wise [100,100,100,100]" and r["section"] == "imagenet")
    assert not row_11["released"] and row_11["linked_file"] == "IMNET_224_pacavit_small_p2cconv_100_49.pth"
    assert "No checkpoint of this model is linked" in (CARDS / card_name(row_11)).read_text()
    coco_teacher = next(r for r in RELEASES if r["row"] == "PaCa-Small (teacher)" and r["section"] == "coco")
    assert hub_id(coco_teacher) == "ivmcl/pacavit-tiny-teacher-mask-rcnn-coco" and not model_index(coco_teacher)


def test_parameter_counts_match_the_manifests_and_our_models():
    reference = reference_dir()
    if reference is None or not (reference / "manifests").is_dir():
        pytest.skip("checkpoint manifests not found (set PACAVIT_REFERENCE_DIR)")
    for release in RELEASES:
        stem = release["model_file"].removesuffix(".pth")
        path = reference / "manifests" / f"{stem}.json"
        path = path if path.is_file() else reference / "manifests" / "unlinked" / f"{stem}.json"
        assert json.loads(path.read_text())["num_parameters"] == release["parameters"], stem
        if release["section"] == "imagenet":
            with torch.device("meta"):
                model = PaCaViTForImageClassification(PaCaViTConfig.from_preset(release["preset"], num_labels=1000))
            assert sum(p.numel() for p in model.parameters()) == release["parameters"], stem


def test_docs_table_lists_every_card():
    docs = (REPO_ROOT / "docs" / "hub.md").read_text()
    table = releases_table()
    assert table in docs, "docs/hub.md's released-checkpoint table is stale: paste pacavit.hub.cards.releases_table()"
    for release in RELEASES:
        assert f"`{hub_id(release)}`" in table and f"model_cards/{card_name(release)}" in table


def test_model_card_metadata_and_sections_round_trip(tmp_path):
    from huggingface_hub import ModelCard

    path = tmp_path / "README.md"
    write_model_card(
        path,
        model_name="pacavit-test",
        task="semantic-segmentation",
        dataset_name="scene_parse_150",
        dataset_on_hub=True,
        metrics=[CardMetric("mean_iou", 0.4123, "mIoU"), CardMetric("accuracy", 0.8, "Pixel accuracy")],
        tags=["generated_from_test"],
        intro="A test model.",
        sections={
            "Results": "- mIoU: **41.23%**",
            **recipe_section("python train.py --lr 1", {"lr": 1.0, "epochs": 2}),
            **hardware_section("CPU only", 12.3, 10.0, 40),
        },
    )
    card = ModelCard.load(path)
    data = card.data
    assert data.pipeline_tag == "semantic-segmentation" and data.library_name == "transformers"
    assert data.tags == ["pacavit", "semantic-segmentation", "vision", "generated_from_test"]
    assert data.datasets == ["scene_parse_150"] and data.metrics == ["mean_iou", "accuracy"]
    results = {r.metric_name: (r.metric_type, r.metric_value, r.dataset_split) for r in data.eval_results}
    assert results == {"mIoU": ("mean_iou", 0.4123, "validation"), "Pixel accuracy": ("accuracy", 0.8, "validation")}
    text = card.text
    assert text.index("# pacavit-test") < text.index("## Results") < text.index("## Training recipe")
    assert "| `lr` | `1.0` |" in text and "`python train.py --lr 1`" in text
    assert "Wall time 12 s" in text and "40 optimizer updates" in text
    # no Hub dataset: no `datasets:` entry, but the model-index still names the dataset
    write_model_card(
        path,
        model_name="m",
        task="image-classification",
        dataset_name="imagefolder",
        metrics=[],
        intro="",
        sections={},
    )
    assert ModelCard.load(path).data.datasets is None

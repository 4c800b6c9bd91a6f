"""pacavit.model_card: the model-index block comes from the task's metrics; the sections from the caller."""

from __future__ import annotations

from pacavit.hub.cards import CardMetric, hardware_section, recipe_section, write_model_card


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
    assert results == {
        "mIoU": ("mean_iou", 0.4123, "validation"),
        "Pixel accuracy": ("accuracy", 0.8, "validation"),
    }
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

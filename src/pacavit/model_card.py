"""Model cards for trained PaCa-ViT folders: YAML metadata with a `model-index` block, and a Markdown body.

The metadata is `huggingface_hub.ModelCardData`; the `model-index` (what the Hub shows as evaluation results)
is filled from the task's metrics list, one `EvalResult` per metric. The body is the caller's sections, plus
shared sections (training recipe table, hardware and time) every task script writes the same way::

    from pacavit.model_card import CardMetric, write_model_card, recipe_section, hardware_section

    write_model_card(
        out / "README.md",
        model_name="pacavit-tiny-ade20k",
        task="semantic-segmentation",
        dataset_name="ade20k",
        metrics=[CardMetric("mean_iou", 0.412, "mIoU")],
        tags=["generated_from_run_semantic_segmentation"],
        intro="PaCa-ViT semantic segmentation model trained with ...",
        sections={"Results": "...", **recipe_section(command, recipe), **hardware_section(...)},
    )
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class CardMetric:
    """One evaluation result: `type` is the metric id (e.g. "accuracy", "mean_iou", "map"), `value` as a
    fraction or raw number (the Hub shows it as given), `name` the human-readable label."""

    type: str
    value: float
    name: str | None = None


def build_card_data(
    *,
    model_name: str,
    task: str,
    dataset_name: str,
    metrics: Sequence[CardMetric],
    dataset_type: str | None = None,
    dataset_split: str = "validation",
    dataset_on_hub: bool = False,
    tags: Sequence[str] = (),
    license: str = "apache-2.0",
    base_model: str | None = None,
):
    """`ModelCardData` for a task (`task` is the pipeline tag, e.g. "image-classification"), with one
    `model-index` entry per metric. `dataset_on_hub`: list the dataset id under `datasets:` (only for real
    Hub datasets, not local folders or built-in ones)."""
    from huggingface_hub import EvalResult, ModelCardData

    return ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag=task,
        tags=list(dict.fromkeys(["pacavit", task, "vision", *tags])),
        datasets=[dataset_name] if dataset_on_hub else None,
        metrics=list(dict.fromkeys(m.type for m in metrics)) or None,
        base_model=base_model,
        model_name=model_name,
        eval_results=[
            EvalResult(
                task_type=task,
                dataset_type=dataset_type or dataset_name,
                dataset_name=dataset_name,
                dataset_split=dataset_split,
                metric_type=m.type,
                metric_name=m.name or m.type,
                metric_value=m.value,
            )
            for m in metrics
        ]
        or None,
    )


def markdown_table(rows: Mapping, header: tuple[str, str] = ("setting", "value")) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| `{key}` | `{value}` |" for key, value in rows.items()]
    return "\n".join(lines)


def recipe_section(command: str, recipe: Mapping) -> dict[str, str]:
    """The "Training recipe" section: the command line and a table of the resolved settings."""
    return {"Training recipe": f"`{command}`\n\n{markdown_table(recipe)}"}


def architecture_section(preset: str, config, num_parameters: int, overrides: Mapping | None = None) -> dict:
    """The "Architecture" section: the PaCa-ViT preset, its overrides and the backbone's shape."""
    note = f" with overrides {dict(overrides)}" if overrides else ""
    return {
        "Architecture": (
            f"Preset `{preset}`{note}: hidden sizes {config.hidden_sizes}, depths {config.depths},\n"
            f"attention heads {config.num_attention_heads}, clusters {config.num_clusters},\n"
            f"drop-path {config.drop_path_rate};\n{num_parameters / 1e6:.2f} M parameters."
        )
    }


def hardware_section(hardware: str, wall_time_s: float, train_time_s: float, completed_steps: int) -> dict:
    """The "Hardware and time" section (see `pacavit.training.hardware_description`)."""
    return {
        "Hardware and time": (
            f"{hardware}. Wall time {wall_time_s:.0f} s from process start to the saved folder\n"
            f"(training {train_time_s:.0f} s, {completed_steps} optimizer updates)."
        )
    }


def render_model_card(card_data, title: str, intro: str, sections: Mapping[str, str]) -> str:
    """The README.md text: YAML front matter, `# title`, the intro, then one `## heading` per section."""
    body = "\n\n".join(f"## {heading}\n\n{text.strip()}" for heading, text in sections.items())
    return f"---\n{card_data.to_yaml()}\n---\n\n# {title}\n\n{intro.strip()}\n\n{body}\n"


def write_model_card(
    path: str | Path, *, intro: str, sections: Mapping[str, str], title: str | None = None, **card_data_kwargs
):
    """Write README.md at `path` (`card_data_kwargs` go to `build_card_data`); returns the `ModelCard`."""
    from huggingface_hub import ModelCard

    card_data = build_card_data(**card_data_kwargs)
    card = ModelCard(render_model_card(card_data, title or card_data_kwargs["model_name"], intro, sections))
    card.save(str(path))
    return card

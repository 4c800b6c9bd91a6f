"""Model cards (README.md with YAML metadata and a `model-index` block), in two parts:

- the writer for any PaCa-ViT folder (`write_model_card`, the training scripts' cards and the export's generic
  card): the metadata is huggingface_hub's `ModelCardData` with one `EvalResult` per metric of the task; the body
  is the caller's sections plus shared ones (`recipe_section`, `architecture_section`, `hardware_section`)::

      write_model_card(
          out / "README.md",
          model_name="pacavit-tiny-ade20k",
          task="image-segmentation",
          dataset_name="ade20k",
          metrics=[CardMetric("mean_iou", 0.412, "mIoU")],
          intro="PaCa-ViT semantic segmentation model trained with ...",
          sections={"Results": "...", **recipe_section(command, recipe), **hardware_section(...)},
      )

- the cards of the released checkpoints (`render_card`, `card_for_hub_id`), rendered from the one data source
  `pacavit.hub.releases` with the numbers the paper reports: `python model_cards/generate.py` writes them all to
  `model_cards/`, and `python -m pacavit.hub export SRC DIR --repo-id ivmcl/<name>` puts the matching one into an
  export.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .releases import COCO_METRICS, RELEASES, base_model, card_name, hub_id


# --------------------------------------------------------------------------------------------
# The writer
# --------------------------------------------------------------------------------------------
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
    card_data = build_card_data(**card_data_kwargs)
    card = ModelCard(render_model_card(card_data, title or card_data_kwargs["model_name"], intro, sections))
    card.save(str(path))
    return card


# --------------------------------------------------------------------------------------------
# The cards of the released checkpoints
# --------------------------------------------------------------------------------------------
ORIGINAL_REPO = "https://github.com/iVMCL/PaCaViT"
RELEASE_URL = ORIGINAL_REPO + "/releases/download/pacavit/"
PAPER = "https://arxiv.org/abs/2203.11987"
SOURCE = "PaCa-ViT (Grainger et al., CVPR 2023), original README"

CITATION = """@inproceedings{Grainger2023PaCaViT,
  title={PaCa-ViT: Learning Patch-to-Cluster Attention in Vision Transformers},
  author={Ryan Grainger and Thomas Paniagua and Xi Song and Naresh Cuntoor and Mun Wai Lee and Tianfu Wu},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition},
  year={2023}
}"""

# Hub dataset ids, task types and metric labels of each section's model-index
_DATASETS = {
    "imagenet": ("ILSVRC/imagenet-1k", "ImageNet-1k", "validation"),
    "coco": ("detection-datasets/coco", "MS-COCO 2017", "validation"),
    "ade20k": ("scene_parse_150", "ADE20K", "validation"),
}
_PIPELINE = {"imagenet": "image-classification", "coco": "object-detection", "ade20k": "image-segmentation"}
_METRICS = {  # metric key -> (task type, metric type, metric name)
    "top1": ("image-classification", "accuracy", "top-1 accuracy"),
    "box_ap": ("object-detection", "box_ap", "box AP"),
    "box_ap50": ("object-detection", "box_ap50", "box AP50"),
    "box_ap75": ("object-detection", "box_ap75", "box AP75"),
    "mask_ap": ("instance-segmentation", "mask_ap", "mask AP"),
    "mask_ap50": ("instance-segmentation", "mask_ap50", "mask AP50"),
    "mask_ap75": ("instance-segmentation", "mask_ap75", "mask AP75"),
    "miou": ("semantic-segmentation", "mean_iou", "mIoU (single-scale)"),
}
_TASK_DESCRIPTION = {
    "imagenet": "image classifier trained on ImageNet-1k at 224x224",
    "coco": "Mask R-CNN (1x schedule, multi-scale training 480-800) for object detection and instance "
    "segmentation on MS-COCO",
    "ade20k": "semantic segmentation model trained on ADE20K at 512x512 for 160k iterations",
}


def model_index(release: dict) -> dict[tuple[str, str], float]:
    """What the card's model-index claims: {(task type, metric type): value}; empty where not attributable."""
    if not release["attributable"]:
        return {}
    return {_METRICS[key][:2]: value for key, value in release["metrics"].items()}


def _release_card_data(release: dict):
    dataset_type, dataset_name, split = _DATASETS[release["section"]]
    datasets = [dataset_type] if release["section"] == "imagenet" else ["ILSVRC/imagenet-1k", dataset_type]
    results = [
        EvalResult(
            task_type=_METRICS[key][0],
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_split=split,
            metric_type=_METRICS[key][1],
            metric_name=_METRICS[key][2],
            metric_value=value,
            source_name=SOURCE,
            source_url=ORIGINAL_REPO,
        )
        for key, value in release["metrics"].items()
        if release["attributable"]
    ]
    tags = ["pacavit", "vision", "custom_code", _PIPELINE[release["section"]]]
    if release["section"] == "imagenet":
        tags.append("timm")
    return ModelCardData(
        model_name=hub_id(release).split("/")[1],
        license="mit",
        library_name="transformers",
        pipeline_tag=_PIPELINE[release["section"]],
        tags=tags,
        datasets=datasets,
        metrics=sorted({_METRICS[key][1] for key in release["metrics"]}),
        base_model=base_model(release),
        eval_results=results or None,
    )


def usage_snippet(release: dict) -> str:
    """Python code that loads the card's model by its Hub id and runs it on an image (tested against a
    random-weight stand-in installed under the same id)."""
    repo = hub_id(release)
    header = (
        "import torch\nfrom PIL import Image\nfrom transformers import AutoImageProcessor, {auto}\n\n"
        f'repo = "{repo}"\n'
        "processor = AutoImageProcessor.from_pretrained(repo, trust_remote_code=True)\n"
        "model = {auto}.from_pretrained(repo, trust_remote_code=True).eval()\n"
        'image = Image.new("RGB", (640, 480), "gray")  # your image: Image.open("photo.jpg").convert("RGB")\n'
        'inputs = processor(images=image, return_tensors="pt")\n'
        "with torch.no_grad():\n    outputs = model(**inputs)\n"
    )
    if release["section"] == "imagenet":
        return header.format(auto="AutoModelForImageClassification") + (
            "top5 = outputs.logits.softmax(-1)[0].topk(5)\n"
            "for score, index in zip(top5.values.tolist(), top5.indices.tolist()):\n"
            '    print(f"{model.config.id2label[index]}: {score:.3f}")\n'
        )
    if release["section"] == "ade20k":
        return header.format(auto="AutoModelForSemanticSegmentation") + (
            "segmentation = processor.post_process_semantic_segmentation("
            "outputs, target_sizes=[image.size[::-1]])[0]\n"
            "print(segmentation.shape, segmentation.unique())  # (480, 640) ADE20K class indices\n"
        )
    return header.format(auto="AutoModelForObjectDetection") + (
        "detections = processor.post_process_object_detection("
        "outputs, threshold=0.5, target_sizes=[image.size[::-1]])[0]\n"
        "for score, label, box in zip(detections['scores'], detections['labels'], detections['boxes']):\n"
        "    print(model.config.id2label[int(label)], round(float(score), 3), box.tolist())\n"
        "instances = processor.post_process_instance_segmentation("
        "outputs, threshold=0.5, target_sizes=[image.size[::-1]])[0]\n"
        "print(instances['segmentation'].shape, len(instances['segments_info']))\n"
    )


def _metrics_table(release: dict) -> str:
    metrics = release["metrics"]
    if release["section"] == "imagenet":
        rows = [("ImageNet-1k top-1 (224x224)", f"{metrics['top1']}%")]
    elif release["section"] == "ade20k":
        rows = [("ADE20K mIoU, single-scale", f"{metrics['miou']}%")]
    else:
        rows = [(_METRICS[key][2], metrics[key]) for key in COCO_METRICS]
    params = f"{release['parameters'] / 1e6:.2f}M ({release['parameters']:,})"
    readme = release["readme_params"].rstrip("M")
    if abs(float(readme) - round(release["parameters"] / 1e6, 1)) > 0.051:
        params += f"; the README says {readme}M, see the notes"
    unit = (
        "224x224" if release["section"] == "imagenet" else ("1280x800" if release["section"] == "coco" else "512x512")
    )
    rows = [("parameters", params), (f"FLOPs (README, {unit})", f"{release['flops']}G"), *rows]
    return "| | |\n|---|---|\n" + "\n".join(f"| {name} | {value} |" for name, value in rows)


def _head_text(release: dict) -> str:
    if release["section"] == "ade20k":
        return (
            "the PaCa segmentation head"
            if release["head"] == "paca"
            else "a UperNet head (with the auxiliary FCN head)"
        )
    return ""


def render_card(release: dict) -> str:
    """The README.md of one released checkpoint."""
    repo = hub_id(release)
    section = release["section"]
    head = _head_text(release)
    intro = (
        f"PaCa-ViT `{release['preset']}` {_TASK_DESCRIPTION[section]}"
        + (f", with {head}" if head else "")
        + f": the README row **{release['row']}** of the [original repository]({ORIGINAL_REPO}) "
        f"([paper]({PAPER})), converted to 🤗 Transformers with the `pacavit` package."
    )
    if not release["released"]:
        intro += (
            "\n\n**No checkpoint of this model is linked by the original README**, so this repository holds no "
            "converted weights from the authors; the card records the reported result."
        )
    conversion = (
        f"Original file: `{release['linked_file']}` ({RELEASE_URL}{release['linked_file']}).\n\n"
        "```bash\n# with the pacavit package installed (`pip install -e .` in its checkout)\n"
        f"python -m pacavit.convert --checkpoint {release['linked_file']} --output-dir converted\n"
        f"python -m pacavit.hub export converted {repo.split('/')[1]} --repo-id {repo}\n```\n\n"
        "The converter reads the architecture, task and head from the file name, checks them against the weights "
        "(cluster counts, head keys) and maps every key strictly: nothing is left unmapped or silently dropped."
    )
    if not release["released"]:
        conversion = (
            f"The README's link for this row points to `{release['linked_file']}`, another model's file. Were "
            f"`{release['model_file']}` published, it would convert with `python -m pacavit.convert --checkpoint "
            f"{release['model_file']} --output-dir converted`."
        )
    reported = (
        "The numbers are those reported by the authors (paper / original README); they were not re-measured here."
    )
    if not release["attributable"]:
        reported = (
            "The numbers are the README row's, reported by the authors; they may belong to another model than "
            "this file (see the notes), so the card's metadata does not claim them as this model's results."
        )
    provenance = (
        f"{reported} The weights are the authors' release, converted, not retrained. The conversion is checked "
        "by output parity with the original code on randomised-weight fixtures (max abs error < 1e-5 in float32) "
        "and by the key names, shapes and parameter count of this checkpoint, built with the original code."
    )
    limitations = (
        "- Trained on "
        + {"imagenet": "ImageNet-1k (1000 classes)", "coco": "MS-COCO (80 classes)", "ade20k": "ADE20K (150 classes)"}[
            section
        ]
        + "; accuracy on other data is unknown, and the usual dataset biases apply.\n"
        "- Loading with `trust_remote_code=True` runs the model files of this repository; alternatively install "
        "the `pacavit` package and `import pacavit` first.\n"
        "- FLOPs are the README's; speed depends on the attention backend (SDPA by default)."
    )
    sections = {"Results": _metrics_table(release), "Usage": f"```python\n{usage_snippet(release)}```"}
    if section == "imagenet":
        sections["Usage"] += (
            "\n\nWith timm (the `pacavit` package registers the models on import):\n\n```python\n"
            "import pacavit, timm\n"
            f'model = timm.create_model("{release["preset"].replace("-", "_")}", pretrained=True)\n```'
        )
    if release["note"]:
        sections["Notes on the original README"] = release["note"]
    sections.update(
        {
            "Original checkpoint and conversion": conversion,
            "Provenance": provenance,
            "Limitations": limitations,
            "Citation": f"```bibtex\n{CITATION}\n```",
        }
    )
    return render_model_card(_release_card_data(release), repo, intro, sections)


def card_for_hub_id(repo_id: str) -> str | None:
    """The released checkpoint's card for its Hub id (`ivmcl/<name>`), or None for any other id."""
    for release in RELEASES:
        if hub_id(release) == repo_id:
            return render_card(release)
    return None


def releases_table() -> str:
    """Markdown table: original README row -> released file -> Hub id -> card, as docs/hub.md shows it (the card
    links are relative to docs/)."""
    lines = ["| section | README row | released file | Hub id | card |", "|---|---|---|---|---|"]
    for release in RELEASES:
        file_cell = f"`{release['linked_file']}`" + ("" if release["released"] else " (another model's file)")
        if release["note"] and release["released"]:
            file_cell += " ⚠"
        lines.append(
            f"| {release['section']} | {release['row']} | {file_cell} | `{hub_id(release)}` | "
            f"[{card_name(release)}](../model_cards/{card_name(release)}) |"
        )
    return "\n".join(lines)


__all__ = [
    "CardMetric",
    "architecture_section",
    "build_card_data",
    "card_for_hub_id",
    "hardware_section",
    "markdown_table",
    "model_index",
    "releases_table",
    "recipe_section",
    "render_card",
    "render_model_card",
    "usage_snippet",
    "write_model_card",
]

"""What a released PaCa-ViT checkpoint file holds, read from its file name.

The original repository (iVMCL/PaCaViT) names every released file after its builder and task:

    IMNET_224_<builder>.pth                             ImageNet-1k classifier (timm, bare state dict)
    mask_rcnn_<builder>_mstrain_480_800_1x_coco.pth      Mask R-CNN on MS-COCO (mmdet checkpoint)
    upernet_<builder>_512x512_160k_ade20k.pth            UperNet on ADE20K (mmseg checkpoint)
    pacahead_<builder>_512x512_160k_ade20k.pth           PaCa segmentation head on ADE20K (mmseg checkpoint)

`parse_checkpoint_name` turns such a name into the preset, task and head that the converter needs, and
`check_checkpoint_matches_name` verifies that the weights really are what the name says (strict: the cluster
counts and the kind of decode head are read from the keys). The README of the original has a few rows whose
link names another file than the row describes; the notes for those files are in `README_NOTES`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..configuration_pacavit import PRESETS, resolve_preset_name
from .common import IMAGE_CLASSIFICATION, INSTANCE_SEGMENTATION, SEMANTIC_SEGMENTATION

# (compiled pattern, task, head, dataset); group 1 is the builder name
_PATTERNS = [
    (re.compile(r"^IMNET_224_(pacavit_\w+?)$"), IMAGE_CLASSIFICATION, None, "imagenet-1k"),
    (re.compile(r"^mask_rcnn_(pacavit_\w+?)_mstrain_480_800_1x_coco$"), INSTANCE_SEGMENTATION, "mask-rcnn", "coco"),
    (re.compile(r"^upernet_(pacavit_\w+?)_512x512_160k_ade20k$"), SEMANTIC_SEGMENTATION, "upernet", "ade20k"),
    (re.compile(r"^pacahead_(pacavit_\w+?)_512x512_160k_ade20k$"), SEMANTIC_SEGMENTATION, "paca", "ade20k"),
]
ACCEPTED_FORMS = (
    "IMNET_224_<builder>, mask_rcnn_<builder>_mstrain_480_800_1x_coco, upernet_<builder>_512x512_160k_ade20k, "
    "pacahead_<builder>_512x512_160k_ade20k (with any extension), <builder> e.g. pacavit_small_p2cconv_100_0"
)

# Files that the original README links from a row describing another model (see the checkpoint manifests'
# README in the reference folder). The conversion follows the FILE; these notes are printed with it.
_ADE20K_ABLATION_NOTE = (
    "The README's ADE20K ablation row for this backbone says 'PaCa' head (and its #params match the PaCa-head "
    "model) but links this upernet_* file; the decode head is read from the weights, both are accepted."
)
README_NOTES: dict[str, str] = {
    "IMNET_224_pacavit_small_p2cconv_100_49": (
        "The README links this file from two ablation rows, [100,81,64,49] and [100,100,100,100]; it holds the "
        "[100,81,64,49] model (pacavit_small_p2cconv_100_49). No checkpoint of the [100,100,100,100] model "
        "(pacavit_small_p2cconv_100) is linked."
    ),
    "IMNET_224_pacavit_convmixer_base_100": (
        "The README's #params for PaCa-Base (teacher) is 46.7M; the architecture has 47.66M (a typo in the README)."
    ),
    "mask_rcnn_pacavit_convmixer_tiny_100_0_mstrain_480_800_1x_coco": (
        "The README's MS-COCO row 'PaCa-Small (teacher)' links this file, which holds the TINY teacher backbone "
        "(32.26M parameters; the row's 40.9M is the small-teacher Mask R-CNN). Converted as what the file holds."
    ),
    "mask_rcnn_pacavit_convmixer_base_100_0_mstrain_480_800_1x_coco": (
        "The README's #params for this row is 61.4M; the architecture has 67.35M."
    ),
    "mask_rcnn_pacavit_small_p2cconv_2_0_mstrain_480_800_1x_coco": (
        "The README's #params for this row is 41.6M; the architecture has 41.75M."
    ),
    **{
        f"upernet_pacavit_small_p2cconv_{ablation}_512x512_160k_ade20k": _ADE20K_ABLATION_NOTE
        for ablation in ("2_0", "49_0", "49_100", "100_49", "100", "100_blockwise")
    },
}

# Teacher files of the dense tasks end in `_100_0`; their builder is `pacavit_convmixer_<size>_100`.
_TEACHER_ALIAS = re.compile(r"^(pacavit_convmixer_(?:tiny|small|base)_100)_0$")
# The ADE20K configs replace every non-zero cluster count by this (`downstream_cluster_num`).
ADE20K_CLUSTERS = 200


class CheckpointNameError(ValueError):
    """A file name (or the weights behind it) that does not fit a released PaCa-ViT checkpoint."""


@dataclass(frozen=True)
class CheckpointName:
    """What a released file holds, as its name tells it."""

    stem: str  # file name without directory and extension
    builder: str  # original builder name, e.g. "pacavit_small_p2cconv_100_0"
    preset: str  # pacavit preset, e.g. "pacavit-small"
    task: str  # image-classification | semantic-segmentation | instance-segmentation
    head: str | None  # None (classifier) | "upernet" | "paca" | "mask-rcnn"
    dataset: str  # imagenet-1k | coco | ade20k
    num_clusters: list[int] = field(default_factory=list)  # what the backbone's weights must have
    note: str | None = None  # README error concerning this file, if any

    @property
    def alternative_heads(self) -> tuple[str, ...]:
        """Heads the file may hold besides the named one (the ADE20K ablation links)."""
        if self.note == _ADE20K_ABLATION_NOTE:
            return ("paca",)
        return ()


def checkpoint_stem(name: str | Path) -> str:
    """`.../IMNET_224_pacavit_tiny_p2cconv_100_0.pth` -> `IMNET_224_pacavit_tiny_p2cconv_100_0`."""
    stem = Path(str(name)).name
    for suffix in (".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".tar"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem


def parse_checkpoint_name(name: str | Path) -> CheckpointName:
    """Preset, task and head of a released file from its name; a clear error for any other name."""
    stem = checkpoint_stem(name)
    for pattern, *meaning in _PATTERNS:
        match = pattern.match(stem)
        if match:
            builder, (task, head, dataset) = match.group(1), meaning
            break
    else:
        if stem.startswith("pacavit_"):  # a bare builder name: the ImageNet classifier
            builder, task, head, dataset = stem, IMAGE_CLASSIFICATION, None, "imagenet-1k"
        else:
            raise CheckpointNameError(
                f"Cannot tell the architecture and task from the file name {Path(str(name)).name!r}. Released "
                f"files are named {ACCEPTED_FORMS}. For a renamed file pass its original name with "
                "--checkpoint-name, or give --preset and --task."
            )
    builder = _TEACHER_ALIAS.sub(r"\1", builder)
    try:
        preset = resolve_preset_name(builder)
    except ValueError as error:
        raise CheckpointNameError(f"The file name {stem!r} names an unknown architecture: {error}") from None
    clusters = list(PRESETS[preset].get("num_clusters", [100, 100, 100, 0]))
    if dataset == "ade20k":
        clusters = [ADE20K_CLUSTERS if c > 0 else 0 for c in clusters]
    return CheckpointName(stem, builder, preset, task, head, dataset, clusters, README_NOTES.get(stem))


def decode_head_type(state_dict: dict) -> str | None:
    """`"upernet"` (mmseg UPerHead), `"paca"` (PaCa head) or None, from the `decode_head.` keys."""
    keys = [k for k in state_dict if k.startswith("decode_head.")]
    if any(k.startswith("decode_head.psp_modules.") for k in keys):
        return "upernet"
    if any(k.startswith("decode_head.clustering.") for k in keys):
        return "paca"
    return None


def check_checkpoint_matches_name(state_dict: dict, parsed: CheckpointName, num_clusters: list[int]) -> str | None:
    """Raise if the weights are not what the name says; return the head the weights hold.

    `num_clusters` are the counts read from the weights (`pacavit.convert.backbone.infer_num_clusters`).
    """
    if num_clusters != parsed.num_clusters:
        raise CheckpointNameError(
            f"The file name {parsed.stem!r} stands for {parsed.builder} with cluster counts {parsed.num_clusters} "
            f"on {parsed.dataset}, but the weights have {num_clusters}. The file was renamed or is another model: "
            "pass its original name with --checkpoint-name, or give --preset and --task."
        )
    has_head = "head.weight" in state_dict
    if parsed.task == IMAGE_CLASSIFICATION and not has_head:
        raise CheckpointNameError(
            f"{parsed.stem!r} names an ImageNet classifier but the weights have no 'head.weight'."
        )
    if parsed.head == "mask-rcnn" and not any(k.startswith("roi_head.") for k in state_dict):
        raise CheckpointNameError(f"{parsed.stem!r} names a Mask R-CNN but the weights have no 'roi_head.' keys.")
    if parsed.head in ("upernet", "paca"):
        found = decode_head_type(state_dict)
        if found is None:
            raise CheckpointNameError(f"{parsed.stem!r} names an ADE20K segmentor but no decode head was recognised.")
        if found != parsed.head and found not in parsed.alternative_heads:
            raise CheckpointNameError(
                f"The file name {parsed.stem!r} says a {parsed.head} head but the weights hold a {found} head; "
                "pass --checkpoint-name with the right name."
            )
        return found
    return parsed.head


__all__ = [
    "CheckpointName",
    "CheckpointNameError",
    "README_NOTES",
    "check_checkpoint_matches_name",
    "checkpoint_stem",
    "decode_head_type",
    "parse_checkpoint_name",
]

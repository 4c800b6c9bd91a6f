"""The backbone part of the converter: original PaCa-ViT checkpoints (timm `IMNET_224_*.pth`, or the `backbone.` of
an mmseg/mmdet checkpoint) -> `PaCaViTForImageClassification` / `PaCaViTBackbone` keys and folders.

- `config_from_original`: the original `PaCaViT(...)` constructor's keyword arguments -> `PaCaViTConfig`;
- `convert_backbone_state_dict`: the key rules. Fused projections are built here (`attn.k` and `attn.v` ->
  `attention.key_value`) and the 1x1 convolutions of the conv clustering become Linear weights. Strict: a key that
  no rule understands is an error naming it; the segmentation and Mask R-CNN converters map their `backbone.`
  keys through it;
- `build_backbone_config` (from `--preset`, with the cluster counts read off the weights, or from
  `--original-config`) and `convert_backbone_checkpoint` (read, map, strict load, atomic save).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import torch

from ..configuration_pacavit import PaCaViTConfig, resolve_preset_name
from ..modeling_pacavit import PaCaViTBackbone, PaCaViTForImageClassification
from ..preprocessing import default_image_processor
from .common import (
    BACKBONE,
    HEAD_PREFIXES,
    IMAGE_CLASSIFICATION,
    ConversionError,
    ConversionReport,
    check_supported,
    extract_state_dict,
    load_checkpoint_file,
    reading_original_config,
    save_converted_model,
    source_name,
    split_backbone_and_heads,
)

BACKBONE_TASKS = (IMAGE_CLASSIFICATION, BACKBONE)


# --------------------------------------------------------------------------------------------
# Original constructor -> PaCaViTConfig
# --------------------------------------------------------------------------------------------
_CLUSTERING_TYPES = {"P2CConv2d": "conv", "P2CMlp": "mlp", "P2CLinear": "linear"}
_ACTIVATIONS = {"GELU": "gelu", "ReLU": "relu", "SiLU": "silu", "Swish": "silu"}


def _require(condition: bool, message: str) -> None:
    check_supported(condition, message, what="original configuration")


def config_from_original(constructor: dict, **overrides) -> PaCaViTConfig:
    """Translate the keyword arguments of the original `PaCaViT(...)` constructor into a `PaCaViTConfig`.

    Accepts the fixture/manifest JSON form (with an `original_constructor` key) or the bare kwargs. A missing key
    or a value of the wrong type is a `ConversionError` naming it.
    """
    if not isinstance(constructor, dict):
        raise ConversionError(
            f"The original configuration must be a dict of the constructor's keyword arguments, got "
            f"{type(constructor).__name__}."
        )
    with reading_original_config("original configuration (the PaCaViT constructor's keyword arguments)"):
        if "original_constructor" in constructor:
            constructor = constructor["original_constructor"]
        kwargs = _config_kwargs_from_original(constructor)
    kwargs.update(overrides)
    return PaCaViTConfig(**kwargs)


def _config_kwargs_from_original(c: dict) -> dict:
    arch, paca = c["arch_cfg"], c["paca_cfg"]
    for name, cfg, patch in (("stem_cfg", c.get("stem_cfg"), 4), ("trans_cfg", c.get("trans_cfg"), 2)):
        if cfg is None:
            continue
        _require(
            cfg.get("type", "DownsampleV1") == "DownsampleV1", f"{name}.type={cfg.get('type')!r} (only DownsampleV1)"
        )
        _require(
            cfg.get("patch_size", patch) == patch and cfg.get("kernel_size", 3) == 3,
            f"{name} must be {patch}x with 3x3 kernels",
        )
    _require(paca.get("mlp_func", "Mlp") == "Mlp", f"paca_cfg.mlp_func={paca.get('mlp_func')!r}")
    _require(
        paca.get("type") in _CLUSTERING_TYPES, f"paca_cfg.type={paca.get('type')!r}; one of {list(_CLUSTERING_TYPES)}"
    )
    act = (c.get("act_cfg") or {"type": "GELU"})["type"]
    _require(act in _ACTIVATIONS, f"act_cfg.type={act!r}")
    eps = (c.get("norm_cfg") or {}).get("eps", 1e-6)
    for key in ("norm_cfg1", "norm_cfg2", "cluster_norm_cfg"):
        other = (paca.get(key) or {}).get("eps", eps)
        _require(abs(other - eps) < 1e-12, f"paca_cfg.{key}.eps={other} differs from norm_cfg.eps={eps}")

    clusters = list(c.get("downstream_cluster_num") or paca["clusters"])
    teacher = c.get("paca_teacher_cfg")
    teacher_kwargs = {}
    if teacher:
        _require(
            teacher.get("type", "PaCaTeacher_ConvMixer") == "PaCaTeacher_ConvMixer",
            f"teacher type {teacher.get('type')!r}",
        )
        _require(teacher.get("stem_cfg") is None, "a teacher with its own stem (stem_cfg) is not supported")
        _require(
            list(teacher.get("embed_dims", arch["embed_dims"])) == list(arch["embed_dims"]),
            "teacher widths must equal the stage widths",
        )
        _require(
            (teacher.get("norm_cfg") or {"type": "BN"})["type"] in ("BN", "SyncBN", "BN2d"),
            "teacher norm must be BatchNorm",
        )
        teacher_kwargs = dict(
            use_clustering_teacher=True,
            teacher_depths=list(teacher["depths"]),
            teacher_kernel_size=teacher.get("kernel_size", 7),
            teacher_drop_path_rate=teacher.get("drop_path_rate", 0.0),
            teacher_batch_norm_eps=(teacher.get("norm_cfg") or {}).get("eps", 1e-5),
        )

    image_size = c.get("img_size", 224)
    if isinstance(image_size, (list, tuple)):
        _require(
            len(set(image_size)) == 1 or not c.get("with_pos_embed", False),
            f"non-square img_size={list(image_size)} with with_pos_embed=True",
        )
        image_size = image_size[0]  # only the position embeddings use it
    post_norm, sub_ln = c.get("post_norm", False), c.get("sub_ln", False)
    out_indices = c.get("out_indices") or []
    kwargs = dict(
        num_channels=c.get("in_chans", 3),
        hidden_sizes=arch["embed_dims"],
        depths=arch["depths"],
        num_attention_heads=arch["num_heads"],
        mlp_ratios=arch["mlp_ratios"],
        num_clusters=clusters,
        clustering_type=_CLUSTERING_TYPES[paca["type"]],
        clustering_kernel_sizes=paca.get("clustering_kernel_size", [7] * len(clusters)),
        clustering_schedule=paca.get("onsite_clustering", [0] * len(clusters)),
        cluster_layer_norm=bool(paca.get("cluster_norm_cfg")),
        cluster_position_embeddings=bool(paca.get("cluster_pos_embed", False)),
        mlp_dwconv=paca.get("with_dwconv_in_mlp", True),
        mlp_dwconv_shortcut=paca.get("with_shortcut_in_mlp", True),
        layer_scale_init_value=c.get("layer_scale"),
        norm_placement="sub" if sub_ln else ("post" if post_norm else "pre"),
        drop_path_rate=c.get("drop_path_rate", 0.0),
        hidden_dropout_prob=c.get("drop", 0.0),
        attention_probs_dropout_prob=c.get("attn_drop", 0.0),
        layer_norm_eps=eps,
        hidden_act=_ACTIVATIONS[act],
        use_absolute_position_embeddings=c.get("with_pos_embed", False),
        image_size=image_size,
        num_labels=c.get("num_classes", 1000),
        # the original counts stages from 0; our stage_names start with "stem"
        out_indices=[i + 1 for i in out_indices] if out_indices else None,
        **teacher_kwargs,
    )
    return kwargs


# --------------------------------------------------------------------------------------------
# Key mapping
# --------------------------------------------------------------------------------------------
def _stage(match: re.Match, group: int = 1) -> int:
    return int(match.group(group)) - 1  # original stages/transitions/teacher parts count from 1


# (pattern on the original key without `backbone.`, function(match, config) -> new key relative to PaCaViTModel)
_BLOCK = r"stage(\d+)\.(\d+)\."


def _block(m: re.Match) -> str:
    return f"stages.{_stage(m)}.layers.{m.group(2)}."


def _clustering_key(m: re.Match, config: PaCaViTConfig) -> str:
    index, param = int(m.group(3)), m.group(4)
    names = {
        "conv": {0: "dwconv", 2: "pwconv", 4: "to_clusters"},
        "mlp": {0: "fc", 2: "to_clusters"},
        "linear": {0: "to_clusters"},
    }
    name = names[config.clustering_type].get(index)
    if name is None:
        raise ConversionError(
            f"clustering layer index {index} does not exist in {config.clustering_type!r} clustering"
        )
    return _block(m) + f"attention.clustering.{name}.{param}"


_RULES: list[tuple[re.Pattern, object]] = [
    (
        re.compile(r"^patch_embed\.proj\.([01])\.(weight|bias)$"),
        lambda m, c: f"embeddings.projection.{m.group(1)}.{m.group(2)}",
    ),
    (re.compile(r"^patch_embed\.norm\.(weight|bias)$"), lambda m, c: f"embeddings.layernorm.{m.group(1)}"),
    (
        re.compile(r"^transition(\d+)\.proj\.(weight|bias)$"),
        lambda m, c: f"stages.{int(m.group(1))}.downsample.projection.{m.group(2)}",
    ),
    (
        re.compile(r"^transition(\d+)\.norm\.(weight|bias)$"),
        lambda m, c: f"stages.{int(m.group(1))}.downsample.layernorm.{m.group(2)}",
    ),
    (re.compile(r"^norm(\d+)\.(weight|bias)$"), lambda m, c: f"stages.{_stage(m)}.layernorm.{m.group(2)}"),
    (re.compile(_BLOCK + r"pos_embed$"), lambda m, c: _block(m) + "position_embeddings"),
    (re.compile(_BLOCK + r"gamma([12])$"), lambda m, c: _block(m) + f"layer_scale_{m.group(3)}"),
    (re.compile(_BLOCK + r"norm1_before\.(weight|bias)$"), lambda m, c: _block(m) + f"norm1.{m.group(3)}"),
    (
        re.compile(_BLOCK + r"norm1_after\.(weight|bias)$"),
        lambda m, c: _block(m) + f"post_attention_norm.{m.group(3)}",
    ),
    (re.compile(_BLOCK + r"norm2_before\.(weight|bias)$"), lambda m, c: _block(m) + f"norm2.{m.group(3)}"),
    (re.compile(_BLOCK + r"norm2_after\.(weight|bias)$"), lambda m, c: _block(m) + f"post_mlp_norm.{m.group(3)}"),
    (re.compile(_BLOCK + r"attn\.q\.(weight|bias)$"), lambda m, c: _block(m) + f"attention.query.{m.group(3)}"),
    (re.compile(_BLOCK + r"attn\.proj\.(weight|bias)$"), lambda m, c: _block(m) + f"attention.dense.{m.group(3)}"),
    (
        re.compile(_BLOCK + r"attn\.cluster_norm\.(weight|bias)$"),
        lambda m, c: _block(m) + f"attention.cluster_norm.{m.group(3)}",
    ),
    (re.compile(_BLOCK + r"attn\.cluster_pos_enc$"), lambda m, c: _block(m) + "attention.cluster_position_embeddings"),
    (re.compile(_BLOCK + r"attn\.clustering\.clustering\.(\d+)\.(weight|bias)$"), _clustering_key),
    (
        re.compile(_BLOCK + r"mlp\.fc([12])\.(weight|bias)$"),
        lambda m, c: _block(m) + f"mlp.fc{m.group(3)}.{m.group(4)}",
    ),
    (re.compile(_BLOCK + r"mlp\.dwconv\.dwconv\.(weight|bias)$"), lambda m, c: _block(m) + f"mlp.dwconv.{m.group(3)}"),
]

_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_CONV = r"(weight|bias)"
_MIXER = {"0.fn.0": "depthwise", "0.fn.2": "depthwise_norm", "1": "pointwise", "3": "pointwise_norm"}
_TEACHER_RULES: list[tuple[re.Pattern, object]] = [
    (
        re.compile(r"^block(\d+)\.(\d+)\.(0\.fn\.0|0\.fn\.2|1|3)\." + _BN + "$"),
        lambda m: f"stages.{_stage(m)}.{m.group(2)}.{_MIXER[m.group(3)]}.{m.group(4)}",
    ),
    (
        re.compile(r"^fpn(\d+)\.(0\.fn\.0|0\.fn\.2|1|3)\." + _BN + "$"),
        lambda m: f"fpn_blocks.{_stage(m)}.{_MIXER[m.group(2)]}.{m.group(3)}",
    ),
    (re.compile(r"^transition(\d+)\.0\.blur_filter$"), lambda m: f"downsamples.{_stage(m)}.blur_filter"),
    (re.compile(r"^transition(\d+)\.0\.conv\." + _CONV + "$"), lambda m: f"downsamples.{_stage(m)}.conv.{m.group(2)}"),
    (re.compile(r"^transition(\d+)\.2\." + _BN + "$"), lambda m: f"downsamples.{_stage(m)}.norm.{m.group(2)}"),
    (re.compile(r"^lateral(\d+)\.0\." + _CONV + "$"), lambda m: f"laterals.{_stage(m)}.conv.{m.group(2)}"),
    (re.compile(r"^lateral(\d+)\.2\." + _BN + "$"), lambda m: f"laterals.{_stage(m)}.norm.{m.group(2)}"),
    (re.compile(r"^to_clusters(\d+)\." + _CONV + "$"), lambda m: f"to_clusters.{_stage(m)}.{m.group(2)}"),
]


def _map_backbone_key(key: str, config: PaCaViTConfig) -> str | None:
    """New key (relative to PaCaViTModel) of an original backbone key; None if no rule knows it."""
    if key.startswith("paca_teacher."):
        rest = key[len("paca_teacher.") :]
        for pattern, target in _TEACHER_RULES:
            m = pattern.match(rest)
            if m:
                return "clustering_teacher." + target(m)
        return None
    for pattern, target in _RULES:
        m = pattern.match(key)
        if m:
            return target(m, config)
    return None


def infer_num_clusters(state_dict: dict, config: PaCaViTConfig) -> list[int]:
    """Cluster counts per stage as the checkpoint's cluster-logit layers have them (for `downstream_cluster_num`)."""
    backbone, _ = split_backbone_and_heads(state_dict)
    clusters = list(config.num_clusters)
    last = {"conv": 4, "mlp": 2, "linear": 0}[config.clustering_type]
    for key, value in backbone.items():
        m = re.match(rf"^stage(\d+)\.\d+\.attn\.clustering\.clustering\.{last}\.weight$", key) or re.match(
            r"^paca_teacher\.to_clusters(\d+)\.weight$", key
        )
        if m:
            clusters[int(m.group(1)) - 1] = value.shape[0]
    return clusters


def convert_backbone_state_dict(
    state_dict: dict, config: PaCaViTConfig, task: str = IMAGE_CLASSIFICATION
) -> tuple[OrderedDict[str, torch.Tensor], ConversionReport]:
    """Map an original state dict to the keys of `PaCaViTForImageClassification` (`task="image-classification"`)
    or `PaCaViTBackbone` (`task="backbone"`: the ImageNet head and any mmseg/mmdet heads are dropped and listed),
    before the strict shape check."""
    if task not in BACKBONE_TASKS:
        raise ConversionError(f"The backbone converter converts {' or '.join(BACKBONE_TASKS)}, not {task!r}.")
    report = ConversionReport()
    backbone, heads = split_backbone_and_heads(state_dict)
    converted: OrderedDict[str, torch.Tensor] = OrderedDict()
    unknown = []
    pending_kv: dict[str, dict[str, torch.Tensor]] = {}

    for key, value in backbone.items():
        if key in ("head.weight", "head.bias"):
            if task == IMAGE_CLASSIFICATION:
                converted[f"classifier.{key.split('.')[-1]}"] = value
                report.mapped += 1
            else:
                report.drop(key, "ImageNet classification head, not part of a backbone")
            continue
        kv = re.match(_BLOCK + r"attn\.([kv])\.(weight|bias)$", key)
        if kv:  # fused into attention.key_value once both halves are seen
            pending_kv.setdefault(_block(kv) + f"attention.key_value.{kv.group(4)}", {})[kv.group(3)] = value
            continue
        new_key = _map_backbone_key(key, config)
        if new_key is None:
            unknown.append(key)
            continue
        if new_key.endswith(("clustering.pwconv.weight", "clustering.to_clusters.weight")) and value.ndim == 4:
            value = value.flatten(1)  # a 1x1 conv becomes a Linear
        converted[new_key] = value
        report.mapped += 1

    for new_key, parts in pending_kv.items():
        if set(parts) != {"k", "v"}:
            missing = "v" if "k" in parts else "k"
            raise ConversionError(
                f"Checkpoint has only one half of a key/value pair: attn.{missing} is missing for {new_key}."
            )
        converted[new_key] = torch.cat([parts["k"], parts["v"]], dim=0)
        report.mapped += 2

    for key in heads:
        if key.startswith(HEAD_PREFIXES) and task == BACKBONE:
            report.drop(key, f"{key.split('.')[0]} (a dense-prediction head; convert it with its own task)")
        elif key.startswith(HEAD_PREFIXES):
            report.drop(key, f"{key.split('.')[0]} (not part of an image classifier)")
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(
            f"{len(unknown)} checkpoint keys match no conversion rule for this architecture "
            f"(clustering_type={config.clustering_type!r}): {unknown[:12]}{' ...' if len(unknown) > 12 else ''}. "
            "Check the --preset/--original-config: the checkpoint may be of another variant."
        )

    prefix = "pacavit."
    final = OrderedDict((k if k.startswith("classifier.") else prefix + k, v) for k, v in converted.items())
    return final, report


# --------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------
def build_backbone_config(
    state_dict: dict, task: str, preset: str | None = None, original_config: dict | None = None
) -> PaCaViTConfig:
    """The architecture of `state_dict` (backbone keys, without mmseg/mmdet's `backbone.`): a preset or original
    builder name, with the cluster counts the weights have (dense-task checkpoints are trained with others), or
    the original constructor's arguments. For `image-classification` the labels come from the ImageNet head; for
    every other task the backbone returns all four stages."""
    if (preset is None) == (original_config is None):
        raise ConversionError("Give exactly one of --preset or --original-config.")
    if original_config is not None:
        config = config_from_original(original_config)
    else:
        config = PaCaViTConfig.from_preset(resolve_preset_name(preset))
        inferred = infer_num_clusters(state_dict, config)
        if inferred != config.num_clusters:  # downstream checkpoints are trained with other cluster counts
            print(f"num_clusters taken from the checkpoint: {inferred} (preset {preset!r} has {config.num_clusters})")
            config.num_clusters = inferred
    if task == IMAGE_CLASSIFICATION:
        head = state_dict.get("head.weight")
        if head is None:
            raise ConversionError(
                "The checkpoint has no ImageNet classification head ('head.weight'); "
                "it is a dense-prediction checkpoint: use --task backbone."
            )
        config.num_labels = head.shape[0]
        if head.shape[0] == 1000:
            config.id2label, config.label2id = imagenet_labels()
    else:
        config.num_labels = 0
        if not config.out_features or config.out_features == [config.stage_names[-1]]:
            config.out_features = config.stage_names[1:]
    return config


def imagenet_labels() -> tuple[dict[int, str], dict[str, int]]:
    """The ImageNet-1k class names, as timm ships them (no download); `LABEL_i` without timm."""
    try:  # timm ships the ImageNet-1k class names, so no download is needed
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        names = [info.index_to_description(i) for i in range(info.num_classes())]
    except Exception:  # pragma: no cover - timm missing or API changed
        names = [f"LABEL_{i}" for i in range(1000)]
    id2label = {i: name for i, name in enumerate(names)}
    label2id = {}
    for i, name in id2label.items():
        label2id.setdefault(name, i)
    return id2label, label2id


def convert_backbone_checkpoint(
    checkpoint: str | Path | dict,
    output_dir: str | Path,
    task: str = IMAGE_CLASSIFICATION,
    preset: str | None = None,
    original_config: dict | None = None,
    use_ema: bool = False,
    verbose: bool = True,
):
    """Convert `checkpoint` (a path, or an already loaded dict) into a `PaCaViTForImageClassification` folder
    (with the original ImageNet evaluation as its image processor) or a `PaCaViTBackbone` folder; returns the
    model."""
    state_dict = extract_state_dict(load_checkpoint_file(checkpoint), use_ema=use_ema, source=source_name(checkpoint))
    backbone_only, _ = split_backbone_and_heads(state_dict)
    config = build_backbone_config(backbone_only, task, preset, original_config)
    converted, report = convert_backbone_state_dict(state_dict, config, task)
    if task == IMAGE_CLASSIFICATION:
        model_class, processor = PaCaViTForImageClassification, default_image_processor(config)
    else:  # a backbone's inputs are prepared by the dense model that uses it
        model_class, processor = PaCaViTBackbone, None
    model = save_converted_model(model_class, config, converted, output_dir, processor)
    if verbose:
        print(report.summary())
        print(f"saved {model_class.__name__} to {output_dir}")
    return model


__all__ = [
    "BACKBONE_TASKS",
    "build_backbone_config",
    "config_from_original",
    "convert_backbone_checkpoint",
    "convert_backbone_state_dict",
    "imagenet_labels",
    "infer_num_clusters",
]

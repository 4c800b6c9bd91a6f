"""Convert original PaCa-ViT checkpoints (timm, mmseg and mmdet layouts) to pacavit folders.

    python -m pacavit.convert --checkpoint IMNET_224_pacavit_tiny_p2cconv_100_0.pth \
        --preset pacavit-tiny --task image-classification --output-dir pacavit-tiny

The conversion is strict: every source key is either mapped or dropped for a stated reason (the dropped keys
are listed), and a key that no rule understands, a missing target key or a shape mismatch is an error that
names the keys. Fused projections are built here (`attn.k` and `attn.v` -> `attention.key_value`) and the
1x1 convolutions of the conv clustering become Linear weights.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

try:
    from transformers.initialization import no_init_weights
except ImportError:  # pragma: no cover - transformers 4.x
    from transformers.modeling_utils import no_init_weights

from .configuration_pacavit import PaCaViTConfig, resolve_preset_name
from .safe_io import atomic_directory, load_torch_checkpoint

TASKS = ("image-classification", "backbone", "semantic-segmentation", "instance-segmentation")

# Prefixes of mmseg/mmdet heads: never part of the backbone, dropped for the backbone task.
HEAD_PREFIXES = ("decode_head.", "auxiliary_head.", "neck.", "rpn_head.", "roi_head.")


class ConversionError(ValueError):
    """A checkpoint does not fit the requested architecture; the message names the offending keys."""


@dataclass
class ConversionReport:
    mapped: int = 0
    dropped: dict[str, list[str]] = field(default_factory=dict)  # reason -> source keys

    def drop(self, key: str, reason: str) -> None:
        self.dropped.setdefault(reason, []).append(key)

    def summary(self) -> str:
        lines = [f"mapped {self.mapped} tensors"]
        for reason, keys in self.dropped.items():
            shown = ", ".join(keys[:4]) + (" ..." if len(keys) > 4 else "")
            lines.append(f"dropped {len(keys)} ({reason}): {shown}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Reading checkpoints
# --------------------------------------------------------------------------------------------
def extract_state_dict(checkpoint, use_ema: bool = False) -> "OrderedDict[str, torch.Tensor]":
    """Return the model state dict of a bare dict, `{"state_dict"}`, `{"model"}`, `{"state_dict_ema"}` or an
    mmengine checkpoint (`{"meta", "state_dict", ...}`). A leading DDP `module.` prefix is removed."""
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"Expected a dict checkpoint, got {type(checkpoint).__name__}.")
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        state_dict = checkpoint
    else:
        order = ("state_dict_ema", "model_ema", "state_dict", "model") if use_ema else ("state_dict", "model", "state_dict_ema")
        found = [k for k in order if isinstance(checkpoint.get(k), dict)]
        if not found:
            raise ConversionError(
                "Could not find the model weights in the checkpoint: expected a bare state dict or one of the keys "
                f"'state_dict', 'model', 'state_dict_ema'; found keys {sorted(checkpoint)[:10]}."
            )
        if use_ema and found[0] not in ("state_dict_ema", "model_ema"):
            raise ConversionError("--ema was given but the checkpoint has no 'state_dict_ema'/'model_ema' entry.")
        state_dict = checkpoint[found[0]]
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    return OrderedDict(state_dict)


def load_original_checkpoint(path: str | Path, use_ema: bool = False) -> "OrderedDict[str, torch.Tensor]":
    checkpoint = load_torch_checkpoint(path)  # weights_only=True; a pickle that needs code is refused
    return extract_state_dict(checkpoint, use_ema=use_ema)


# --------------------------------------------------------------------------------------------
# Original constructor -> PaCaViTConfig
# --------------------------------------------------------------------------------------------
_CLUSTERING_TYPES = {"P2CConv2d": "conv", "P2CMlp": "mlp", "P2CLinear": "linear"}
_ACTIVATIONS = {"GELU": "gelu", "ReLU": "relu", "SiLU": "silu", "Swish": "silu"}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConversionError(f"Unsupported original configuration: {message}")


def config_from_original(constructor: dict, **overrides) -> PaCaViTConfig:
    """Translate the keyword arguments of the original `PaCaViT(...)` constructor into a `PaCaViTConfig`.

    Accepts the fixture/manifest JSON form (with an `original_constructor` key) or the bare kwargs.
    """
    if "original_constructor" in constructor:
        constructor = constructor["original_constructor"]
    c = constructor
    arch, paca = c["arch_cfg"], c["paca_cfg"]
    for name, cfg, patch in (("stem_cfg", c.get("stem_cfg"), 4), ("trans_cfg", c.get("trans_cfg"), 2)):
        if cfg is None:
            continue
        _require(cfg.get("type", "DownsampleV1") == "DownsampleV1", f"{name}.type={cfg.get('type')!r} (only DownsampleV1)")
        _require(cfg.get("patch_size", patch) == patch and cfg.get("kernel_size", 3) == 3, f"{name} must be {patch}x with 3x3 kernels")
    _require(paca.get("mlp_func", "Mlp") == "Mlp", f"paca_cfg.mlp_func={paca.get('mlp_func')!r}")
    _require(paca.get("type") in _CLUSTERING_TYPES, f"paca_cfg.type={paca.get('type')!r}; one of {list(_CLUSTERING_TYPES)}")
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
        _require(teacher.get("type", "PaCaTeacher_ConvMixer") == "PaCaTeacher_ConvMixer", f"teacher type {teacher.get('type')!r}")
        _require(teacher.get("stem_cfg") is None, "a teacher with its own stem (stem_cfg) is not supported")
        _require(list(teacher.get("embed_dims", arch["embed_dims"])) == list(arch["embed_dims"]), "teacher widths must equal the stage widths")
        _require((teacher.get("norm_cfg") or {"type": "BN"})["type"] in ("BN", "SyncBN", "BN2d"), "teacher norm must be BatchNorm")
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
    kwargs.update(overrides)
    return PaCaViTConfig(**kwargs)


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
    names = {"conv": {0: "dwconv", 2: "pwconv", 4: "to_clusters"}, "mlp": {0: "fc", 2: "to_clusters"}, "linear": {0: "to_clusters"}}
    name = names[config.clustering_type].get(index)
    if name is None:
        raise ConversionError(f"clustering layer index {index} does not exist in {config.clustering_type!r} clustering")
    return _block(m) + f"attention.clustering.{name}.{param}"


_RULES: list[tuple[re.Pattern, object]] = [
    (re.compile(r"^patch_embed\.proj\.([01])\.(weight|bias)$"), lambda m, c: f"embeddings.projection.{m.group(1)}.{m.group(2)}"),
    (re.compile(r"^patch_embed\.norm\.(weight|bias)$"), lambda m, c: f"embeddings.layernorm.{m.group(1)}"),
    (re.compile(r"^transition(\d+)\.proj\.(weight|bias)$"), lambda m, c: f"stages.{int(m.group(1))}.downsample.projection.{m.group(2)}"),
    (re.compile(r"^transition(\d+)\.norm\.(weight|bias)$"), lambda m, c: f"stages.{int(m.group(1))}.downsample.layernorm.{m.group(2)}"),
    (re.compile(r"^norm(\d+)\.(weight|bias)$"), lambda m, c: f"stages.{_stage(m)}.layernorm.{m.group(2)}"),
    (re.compile(_BLOCK + r"pos_embed$"), lambda m, c: _block(m) + "position_embeddings"),
    (re.compile(_BLOCK + r"gamma([12])$"), lambda m, c: _block(m) + f"layer_scale_{m.group(3)}"),
    (re.compile(_BLOCK + r"norm1_before\.(weight|bias)$"), lambda m, c: _block(m) + f"norm1.{m.group(3)}"),
    (re.compile(_BLOCK + r"norm1_after\.(weight|bias)$"), lambda m, c: _block(m) + f"post_attention_norm.{m.group(3)}"),
    (re.compile(_BLOCK + r"norm2_before\.(weight|bias)$"), lambda m, c: _block(m) + f"norm2.{m.group(3)}"),
    (re.compile(_BLOCK + r"norm2_after\.(weight|bias)$"), lambda m, c: _block(m) + f"post_mlp_norm.{m.group(3)}"),
    (re.compile(_BLOCK + r"attn\.q\.(weight|bias)$"), lambda m, c: _block(m) + f"attention.query.{m.group(3)}"),
    (re.compile(_BLOCK + r"attn\.proj\.(weight|bias)$"), lambda m, c: _block(m) + f"attention.dense.{m.group(3)}"),
    (re.compile(_BLOCK + r"attn\.cluster_norm\.(weight|bias)$"), lambda m, c: _block(m) + f"attention.cluster_norm.{m.group(3)}"),
    (re.compile(_BLOCK + r"attn\.cluster_pos_enc$"), lambda m, c: _block(m) + "attention.cluster_position_embeddings"),
    (re.compile(_BLOCK + r"attn\.clustering\.clustering\.(\d+)\.(weight|bias)$"), _clustering_key),
    (re.compile(_BLOCK + r"mlp\.fc([12])\.(weight|bias)$"), lambda m, c: _block(m) + f"mlp.fc{m.group(3)}.{m.group(4)}"),
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


def _split_prefix(state_dict: dict) -> tuple[dict, dict]:
    """Separate backbone keys (stripping mmseg/mmdet's `backbone.`) from head keys."""
    has_backbone_prefix = any(k.startswith("backbone.") for k in state_dict)
    backbone, heads = OrderedDict(), OrderedDict()
    for key, value in state_dict.items():
        if has_backbone_prefix:
            if key.startswith("backbone."):
                backbone[key[len("backbone.") :]] = value
            else:
                heads[key] = value
        elif key.startswith(HEAD_PREFIXES):
            heads[key] = value
        else:
            backbone[key] = value
    return backbone, heads


def infer_num_clusters(state_dict: dict, config: PaCaViTConfig) -> list[int]:
    """Cluster counts per stage as the checkpoint's cluster-logit layers have them (for `downstream_cluster_num`)."""
    backbone, _ = _split_prefix(state_dict)
    clusters = list(config.num_clusters)
    last = {"conv": 4, "mlp": 2, "linear": 0}[config.clustering_type]
    for key, value in backbone.items():
        m = re.match(rf"^stage(\d+)\.\d+\.attn\.clustering\.clustering\.{last}\.weight$", key) or re.match(
            r"^paca_teacher\.to_clusters(\d+)\.weight$", key
        )
        if m:
            clusters[int(m.group(1)) - 1] = value.shape[0]
    return clusters


def convert_state_dict(
    state_dict: dict, config: PaCaViTConfig, task: str = "image-classification"
) -> tuple["OrderedDict[str, torch.Tensor]", ConversionReport]:
    """Map an original state dict to the keys of the pacavit model for `task` (before shape checks)."""
    if task not in TASKS:
        raise ConversionError(f"Unknown task {task!r}; choose one of {', '.join(TASKS)}.")
    if task == "semantic-segmentation":  # head key tables live in convert_segmentation
        from .convert_segmentation import convert_segmentation_state_dict

        return convert_segmentation_state_dict(state_dict, config)
    if task == "instance-segmentation":  # mmdet Mask R-CNN head rules live in convert_maskrcnn
        from .convert_maskrcnn import convert_maskrcnn_state_dict

        return convert_maskrcnn_state_dict(state_dict, config)
    report = ConversionReport()
    backbone, heads = _split_prefix(state_dict)
    converted: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    unknown = []
    pending_kv: dict[str, dict[str, torch.Tensor]] = {}

    for key, value in backbone.items():
        if key in ("head.weight", "head.bias"):
            if task == "image-classification":
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
            raise ConversionError(f"Checkpoint has only one half of a key/value pair: attn.{missing} is missing for {new_key}.")
        converted[new_key] = torch.cat([parts["k"], parts["v"]], dim=0)
        report.mapped += 2

    for key in heads:
        if key.startswith(HEAD_PREFIXES) and task == "backbone":
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


def check_against_model(converted: dict, model: torch.nn.Module) -> None:
    """Raise a ConversionError naming missing/unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in converted]
    unexpected = [k for k in converted if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in converted and converted[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint ({len(missing)}): {missing[:12]}")
    if unexpected:
        problems.append(f"not in the model ({len(unexpected)}): {unexpected[:12]}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {mismatched[:8]}")
    if problems:
        raise ConversionError(
            "The checkpoint does not fit the chosen architecture:\n  " + "\n  ".join(problems)
            + "\nPick the preset/original config the checkpoint was trained with."
        )


# --------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------
def build_config(
    state_dict: dict,
    task: str,
    preset: str | None = None,
    original_config: dict | None = None,
) -> PaCaViTConfig:
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
    if task == "image-classification":
        head = state_dict.get("head.weight")
        if head is None:
            raise ConversionError(
                "The checkpoint has no ImageNet classification head ('head.weight'); "
                "it is a dense-prediction checkpoint: use --task backbone."
            )
        config.num_labels = head.shape[0]
        if head.shape[0] == 1000:
            config.id2label, config.label2id = _imagenet_labels()
    else:
        config.num_labels = 0
        if not config.out_features or config.out_features == [config.stage_names[-1]]:
            config.out_features = config.stage_names[1:]
    return config


def _imagenet_labels() -> tuple[dict[int, str], dict[str, int]]:
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


def save_image_processor(output_dir: Path, config: PaCaViTConfig) -> None:
    """The original evaluation preprocessing: bicubic resize, crop_pct 0.9, ImageNet mean/std."""
    from .data.classification import build_eval_image_processor

    size = config.image_size if config.image_size else 224
    build_eval_image_processor(size, crop_pct=0.9, interpolation="bicubic").save_pretrained(output_dir)


def load_and_save_converted(model_class, config, converted: dict, output_dir, save_processor=None):
    """Strictly load converted weights into a fresh `model_class(config)` and save it (and, through
    `save_processor(folder)`, its image processor) atomically: concurrent or killed conversions never leave a
    half-written folder. Every task's converter ends here; returns the model in eval mode."""
    with no_init_weights():  # every weight is overwritten by the strict load below
        model = model_class(config).eval()
    check_against_model(converted, model)
    model.load_state_dict(converted, strict=True)
    with atomic_directory(Path(output_dir)) as tmp:
        model.save_pretrained(tmp)
        if save_processor is not None:
            save_processor(tmp)
    return model


def convert_checkpoint(
    checkpoint: str | Path,
    output_dir: str | Path,
    task: str = "image-classification",
    preset: str | None = None,
    original_config: dict | None = None,
    use_ema: bool = False,
    verbose: bool = True,
):
    """Convert `checkpoint`, save a folder loadable with the Auto class of `task`, return the model."""
    from .modeling_pacavit import PaCaViTBackbone, PaCaViTForImageClassification

    if task == "semantic-segmentation":  # mmseg segmentors (PaCa head / UperNet): see convert_segmentation
        from .convert_segmentation import convert_segmentation_checkpoint

        return convert_segmentation_checkpoint(checkpoint, output_dir, preset, original_config, use_ema, verbose)
    if task == "instance-segmentation":  # mmdet Mask R-CNN: see convert_maskrcnn
        from .convert_maskrcnn import convert_maskrcnn_checkpoint

        return convert_maskrcnn_checkpoint(checkpoint, output_dir, preset, original_config, use_ema, verbose)

    if isinstance(checkpoint, dict):  # already loaded (pacavit.checkpoint_names.convert_by_name)
        state_dict = extract_state_dict(checkpoint, use_ema=use_ema)
    else:
        state_dict = load_original_checkpoint(checkpoint, use_ema=use_ema)
    backbone_only, _ = _split_prefix(state_dict)
    config = build_config(backbone_only, task, preset, original_config)
    converted, report = convert_state_dict(state_dict, config, task)
    model_class = PaCaViTForImageClassification if task == "image-classification" else PaCaViTBackbone
    save_processor = (lambda folder: save_image_processor(folder, config)) if task == "image-classification" else None
    model = load_and_save_converted(model_class, config, converted, output_dir, save_processor)
    if verbose:
        print(report.summary())
        print(f"saved {model_class.__name__} to {output_dir}")
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="original .pth (timm, mmseg or mmdet layout)")
    # Without --preset/--original-config the architecture, task and head come from the released file's name
    # (pacavit.checkpoint_names), checked strictly against the weights.
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", help="preset or original builder name, e.g. pacavit-tiny / pacavit_tiny_p2cconv_100_0")
    source.add_argument("--original-config", help="JSON with the original constructor kwargs (fixture/manifest form)")
    source.add_argument(
        "--checkpoint-name",
        help="the released file name to read preset/task/head from, for a renamed file "
        "(e.g. upernet_pacavit_tiny_p2cconv_100_0_512x512_160k_ade20k.pth)",
    )
    parser.add_argument("--task", choices=TASKS, default=None, help="default: from the file name, or image-classification")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--ema", action="store_true", help="convert the EMA weights (state_dict_ema)")
    args = parser.parse_args(argv)
    original = json.loads(Path(args.original_config).read_text()) if args.original_config else None
    try:
        if args.preset is None and original is None:
            from .checkpoint_names import convert_by_name

            convert_by_name(args.checkpoint, args.output_dir, args.checkpoint_name, args.task, args.ema)
            return
        task = args.task or "image-classification"
        convert_checkpoint(args.checkpoint, args.output_dir, task, args.preset, original, args.ema)
    except ValueError as error:  # ConversionError and unknown presets: a message, not a traceback
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    main()

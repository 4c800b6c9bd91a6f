"""PaCa-ViT as timm models: `timm.create_model("pacavit_tiny")`, registered when `import pacavit` finds timm.

One code base: the timm model wraps the same `PaCaViTModel` as the transformers classes (under the attribute
`pacavit`, as in `PaCaViTForImageClassification`), with timm's conventions on top: `default_cfgs`,
`feature_info`, `forward_features` (NCHW map after the last stage norm) / `forward_head`,
`forward_intermediates`, `features_only=True` (timm's feature getter), `reset_classifier`, `group_matcher`.
So the same weights give the same logits in both libraries (tested).

Every preset is registered under its name with `_` for `-` (`pacavit_small_clusters_2_2_2_0`, ...).
`pretrained=True` loads `model.safetensors` from the model's Hub repo (`ivmcl/<preset>`, also from an offline
cache laid out by `python -m pacavit.hub install`). `checkpoint_filter_fn` accepts our safetensors
(`PaCaViTForImageClassification`, `PaCaViTModel` or `PaCaViTBackbone` keys) and the original timm checkpoints
(`IMNET_224_*.pth`, converted with `pacavit.convert`), e.g.

    timm.create_model("pacavit_tiny", pretrained=True,
                      pretrained_cfg_overlay=dict(file="IMNET_224_pacavit_tiny_p2cconv_100_0.pth"))

timm is optional for the rest of the package: this module is only imported when timm is installed.
"""

from __future__ import annotations

import difflib
import inspect
from contextlib import nullcontext

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn
from transformers import PretrainedConfig

from .configuration_pacavit import HUB_ORGANISATION, PRESETS, PaCaViTConfig
from .convert.backbone import convert_backbone_state_dict
from .convert.common import extract_state_dict
from .modeling_pacavit import PaCaViTModel


def _config_fields() -> set[str]:
    """The keywords `PaCaViTConfig` (and transformers' `PretrainedConfig`) take; the timm arguments `in_chans` and
    `num_classes` stand for `num_channels` and `num_labels`, and `dtype` is a factory argument."""
    names = set()
    for cls in (PaCaViTConfig, PretrainedConfig):
        names.update(
            name
            for name, parameter in inspect.signature(cls.__init__).parameters.items()
            if parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL)
        )
    return names - {"self", "num_channels", "num_labels", "dtype", "transformers_version"} | {"attn_implementation"}


def _check_config_kwargs(config_kwargs: dict) -> None:
    fields = _config_fields()
    for name in config_kwargs:
        if name not in fields:
            close = difflib.get_close_matches(name, sorted(fields | set(TIMM_ARGUMENTS)), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise TypeError(
                f"PaCaViT.__init__() got an unexpected keyword argument {name!r}: neither a timm argument "
                f"({', '.join(TIMM_ARGUMENTS)}) nor a PaCaViTConfig field.{hint}"
            )


TIMM_ARGUMENTS = ("num_classes", "in_chans", "global_pool", "drop_rate", "drop_path_rate", "device", "dtype")


class PaCaViT(nn.Module):
    """timm-style PaCa-ViT classifier around the shared `PaCaViTModel`.

    Args:
        preset: pacavit preset name (`PaCaViTConfig.from_preset`).
        num_classes, in_chans, global_pool ("avg" or ""), drop_rate (before the head), drop_path_rate: timm's
            standard arguments. Any other keyword is a `PaCaViTConfig` field (e.g. `num_clusters`).
    """

    def __init__(
        self,
        preset: str = "pacavit-tiny",
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float | None = None,
        config: PaCaViTConfig | dict | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **config_kwargs,
    ) -> None:
        super().__init__()
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '' (no pooling), got {global_pool!r}.")
        _check_config_kwargs(config_kwargs)  # timm raises TypeError for unknown arguments (typos included)
        if drop_path_rate is not None:
            config_kwargs["drop_path_rate"] = drop_path_rate
        config_kwargs.update(num_channels=in_chans, num_labels=num_classes)
        if config is None:
            config = PaCaViTConfig.from_preset(preset, **config_kwargs)
        else:  # any architecture, e.g. `pacavit.convert.config_from_original(...)`; the preset is then unused
            values = config.to_dict() if isinstance(config, PaCaViTConfig) else dict(config)
            config = PaCaViTConfig(**{**values, **config_kwargs})
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        # timm's factory arguments: every tensor is created on `device` in `dtype` (`device="meta"` allocates
        # nothing); transformers' `_from_config` builds under the dtype and records it as `config.dtype`
        with torch.device(device) if device is not None else nullcontext():
            self.pacavit = PaCaViTModel(config) if dtype is None else PaCaViTModel._from_config(config, dtype=dtype)
        self.num_features = self.head_hidden_size = config.hidden_sizes[-1]
        self.feature_info = [
            dict(num_chs=width, reduction=4 * 2**i, module=f"pacavit.stages.{i}")
            for i, width in enumerate(config.hidden_sizes)
        ]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = self._new_head(num_classes, device=device, dtype=dtype)

    def _new_head(self, num_classes: int, **factory) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        head = nn.Linear(self.num_features, num_classes, **factory)
        trunc_normal_(head.weight, std=0.02)  # the original's head init
        nn.init.zeros_(head.bias)
        return head

    @property
    def config(self) -> PaCaViTConfig:
        return self.pacavit.config

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """The transformers model's groups (stem, one per block or stage), re-rooted under `pacavit.`."""

        def reroot(rule):
            if isinstance(rule, str):
                return rule.replace("^", r"^pacavit\.", 1)
            return [(reroot(pattern), order) for pattern, order in rule]

        return {name: reroot(rule) for name, rule in self.pacavit.group_matcher(coarse=coarse).items()}

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"pacavit.{name}" for name in self.pacavit.no_weight_decay()}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            self.pacavit.activation_checkpointing_enable()
        else:
            self.pacavit.activation_checkpointing_disable()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head for `num_classes` (0: none), on the device and in the dtype of the model, in its mode."""
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '' (no pooling), got {global_pool!r}.")
            self.global_pool = global_pool
        self.num_classes = num_classes
        parameter = next(self.pacavit.parameters())  # as timm's `get_device_dtype` (not in every timm >= 1.0.20)
        self.head = self._new_head(num_classes, device=parameter.device, dtype=parameter.dtype)
        self.head.train(self.training)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) map of the last stage, after its LayerNorm."""
        tokens, height, width, *_ = self.pacavit.forward_features(x)
        return tokens.transpose(1, 2).unflatten(2, (height, width))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """timm's intermediate-feature API: the stage maps (strides 4/8/16/32, after each stage LayerNorm).

        `norm` has no effect: every stage output is already normalised. `stop_early` is accepted for the API;
        the stages after the last requested one are dropped with `prune_intermediate_layers` instead.
        """
        if output_fmt != "NCHW":
            raise ValueError(
                f"PaCa-ViT intermediates are NCHW feature maps; output_fmt={output_fmt!r} is not supported."
            )
        take_indices, _ = feature_take_indices(len(self.pacavit.stages), indices)
        tokens, height, width, hidden_states, *_ = self.pacavit.forward_features(x, output_hidden_states=True)
        intermediates = [hidden_states[i + 1] for i in take_indices]  # hidden_states[0] is the stem
        if intermediates_only:
            return intermediates
        return tokens.transpose(1, 2).unflatten(2, (height, width)), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ):
        """Drop the stages after the last index in `indices` (and the head); returns the absolute indices."""
        take_indices, max_index = feature_take_indices(len(self.pacavit.stages), indices)
        if max_index < len(self.pacavit.stages) - 1:
            self.pacavit.stages = self.pacavit.stages[: max_index + 1]
            teacher = self.pacavit.clustering_teacher
            if teacher is not None:
                # the teacher's cluster heads of the dropped stages would get no gradient (DDP fails without
                # find_unused_parameters); its pyramid stays whole: the top-down pathway feeds the kept stages
                for index in [key for key in teacher.to_clusters if int(key) > max_index]:
                    del teacher.to_clusters[index]
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            prune_head = True
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices


def checkpoint_filter_fn(state_dict: dict, model: PaCaViT) -> dict:
    """Weights of any of our formats, or an original timm checkpoint, as keys of `PaCaViT`."""
    state_dict = dict(extract_state_dict(state_dict))
    if "patch_embed.proj.0.weight" in state_dict:  # original timm checkpoint (IMNET_224_*.pth)
        converted, _ = convert_backbone_state_dict(state_dict, model.config, task="image-classification")
        state_dict = dict(converted)
    elif "embeddings.layernorm.weight" in state_dict:  # PaCaViTModel.save_pretrained: no prefix
        state_dict = {f"pacavit.{k}": v for k, v in state_dict.items()}
    out = {}
    for key, value in state_dict.items():
        if key.startswith("classifier."):  # PaCaViTForImageClassification -> timm's `head`
            key = "head." + key[len("classifier.") :]
        out[key] = value
    return out


def _cfg(preset: str, **kwargs) -> dict:
    return {
        "hf_hub_id": f"{HUB_ORGANISATION}/{preset}",
        "hf_hub_filename": "model.safetensors",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "pacavit.embeddings.projection.0",
        "classifier": "head",
        "fixed_input_size": False,
        "license": "mit",
        **kwargs,
    }


def timm_name(preset: str) -> str:
    """`pacavit-small-clusters-2-2-2-0` -> `pacavit_small_clusters_2_2_2_0`."""
    return preset.replace("-", "_")


default_cfgs = generate_default_cfgs({f"{timm_name(preset)}.in1k": _cfg(preset) for preset in PRESETS})


def _create(variant: str, preset: str, pretrained: bool = False, **kwargs) -> PaCaViT:
    return build_model_with_cfg(
        PaCaViT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=kwargs.pop("out_indices", (0, 1, 2, 3))),
        preset=preset,
        **kwargs,
    )


def _entrypoint(preset: str):
    name = timm_name(preset)

    def create(pretrained: bool = False, **kwargs) -> PaCaViT:
        return _create(name, preset, pretrained=pretrained, **kwargs)

    create.__name__ = create.__qualname__ = name
    create.__module__ = __name__
    create.__doc__ = f"PaCa-ViT `{preset}` (see `pacavit.PRESETS`); weights: `{HUB_ORGANISATION}/{preset}`."
    return create


# one timm entry point per preset, named after it (timm registers a function under its __name__)
for _preset in PRESETS:
    globals()[timm_name(_preset)] = register_model(_entrypoint(_preset))

__all__ = ["PaCaViT", "checkpoint_filter_fn", "default_cfgs", "timm_name"] + [timm_name(p) for p in PRESETS]

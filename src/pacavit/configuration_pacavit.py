# Copyright 2026 The pacavit authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""PaCa-ViT configuration and the named architecture presets.

Presets are plain data (``PRESETS``): every architecture of the original repository
(iVMCL/PaCaViT, ``models/paca_vit.py``) is one entry of overrides on top of the defaults, reachable
by a short Hub-style name (``pacavit-tiny``) or by the original builder name
(``pacavit_tiny_p2cconv_100_0``).
"""

from __future__ import annotations

import copy

from transformers import PretrainedConfig

try:  # transformers >= 5 moved the mixin out of `utils`
    from transformers.backbone_utils import BackboneConfigMixin
except ImportError:  # pragma: no cover - older transformers
    from transformers.utils.backbone_utils import BackboneConfigMixin


# The Hub organisation of the released checkpoints: `ivmcl/<preset>` (classifiers), `ivmcl/<preset>-<task>` (the rest).
HUB_ORGANISATION = "ivmcl"
CLUSTERING_TYPES = ("conv", "mlp", "linear")
NORM_PLACEMENTS = ("pre", "post", "sub")
# What a task config built on a backbone's architecture does not take over from it (`from_backbone_config`): the
# labels, the stage selection of `PaCaViTBackbone`, and what `save_pretrained` records about the saved folder.
NOT_ARCHITECTURE_FIELDS = (
    "model_type",
    "transformers_version",
    "architectures",
    "auto_map",
    "_name_or_path",
    "id2label",
    "label2id",
    "num_labels",
    "out_features",
    "out_indices",
    "stage_names",
)

# --------------------------------------------------------------------------------------------
# Presets (data). Each value holds only what differs from the defaults of PaCaViTConfig.
# --------------------------------------------------------------------------------------------
_TINY = dict(hidden_sizes=[96, 192, 320, 384], depths=[2, 2, 4, 2], drop_path_rate=0.1)
_SMALL = dict(hidden_sizes=[96, 192, 320, 384], depths=[3, 3, 10, 3], drop_path_rate=0.1)
_BASE = dict(hidden_sizes=[96, 192, 384, 512], depths=[3, 3, 18, 3], drop_path_rate=0.5)
_TEACHER = dict(use_clustering_teacher=True, num_clusters=[100, 100, 100, 100], teacher_drop_path_rate=0.0)

PRESETS: dict[str, dict] = {
    "pacavit-tiny": dict(_TINY),
    "pacavit-small": dict(_SMALL),
    "pacavit-base": dict(_BASE),
    "pacavit-small-mlp": dict(_SMALL, clustering_type="mlp"),
    # ablations on the number of clusters per stage (stage-wise conv clustering, small)
    "pacavit-small-clusters-2-2-2-0": dict(_SMALL, num_clusters=[2, 2, 2, 0]),
    "pacavit-small-clusters-49-49-49-0": dict(_SMALL, num_clusters=[49, 49, 49, 0]),
    "pacavit-small-clusters-49-64-81-100": dict(_SMALL, num_clusters=[49, 64, 81, 100]),
    "pacavit-small-clusters-100-81-64-49": dict(_SMALL, num_clusters=[100, 81, 64, 49]),
    "pacavit-small-clusters-100-100-100-100": dict(_SMALL, num_clusters=[100, 100, 100, 100]),
    # block-wise clustering: every block computes its own assignment
    "pacavit-small-blockwise": dict(_SMALL, num_clusters=[100, 100, 100, 100], clustering_schedule=[1, 1, 1, 1]),
    # external ConvMixer clustering teacher (drop-path 0.1 for every size in the original)
    "pacavit-tiny-teacher": dict(
        _TINY, **_TEACHER, depths=[2, 2, 2, 2], teacher_depths=[2, 2, 2, 2], drop_path_rate=0.1
    ),
    "pacavit-small-teacher": dict(
        _SMALL, **_TEACHER, depths=[3, 3, 7, 3], teacher_depths=[2, 2, 2, 2], drop_path_rate=0.1
    ),
    "pacavit-base-teacher": dict(
        _BASE, **_TEACHER, depths=[3, 3, 16, 3], teacher_depths=[2, 2, 4, 2], drop_path_rate=0.1
    ),
}

# The original repository's builder names -> preset names.
ORIGINAL_NAMES: dict[str, str] = {
    "pacavit_tiny_p2cconv_100_0": "pacavit-tiny",
    "pacavit_small_p2cconv_100_0": "pacavit-small",
    "pacavit_base_p2cconv_100_0": "pacavit-base",
    "pacavit_small_p2cmlp_100_0": "pacavit-small-mlp",
    "pacavit_small_p2cconv_2_0": "pacavit-small-clusters-2-2-2-0",
    "pacavit_small_p2cconv_49_0": "pacavit-small-clusters-49-49-49-0",
    "pacavit_small_p2cconv_49_100": "pacavit-small-clusters-49-64-81-100",
    "pacavit_small_p2cconv_100_49": "pacavit-small-clusters-100-81-64-49",
    "pacavit_small_p2cconv_100": "pacavit-small-clusters-100-100-100-100",
    "pacavit_small_p2cconv_100_blockwise": "pacavit-small-blockwise",
    "pacavit_convmixer_tiny_100": "pacavit-tiny-teacher",
    "pacavit_convmixer_small_100": "pacavit-small-teacher",
    "pacavit_convmixer_base_100": "pacavit-base-teacher",
}


def list_presets(include_original_names: bool = False) -> list[str]:
    """Names accepted by `PaCaViTConfig.from_preset` (optionally with the original builder names)."""
    names = list(PRESETS)
    if include_original_names:
        names += list(ORIGINAL_NAMES)
    return names


def resolve_preset_name(name: str) -> str:
    """Map a short or original name to its preset name, or raise a ValueError listing the valid ones."""
    key = name.split("/")[-1]  # accept a Hub id, e.g. "ivmcl/pacavit-base"
    for suffix in ("_downstream",):  # the original's dense-prediction classes share the architecture
        if key.endswith(suffix):
            key = key[: -len(suffix)]
    if key in PRESETS:
        return key
    if key in ORIGINAL_NAMES:
        return ORIGINAL_NAMES[key]
    raise ValueError(
        f"Unknown PaCa-ViT preset {name!r}. Valid names: {', '.join(list_presets())}; "
        f"original names: {', '.join(ORIGINAL_NAMES)}."
    )


class PaCaViTConfig(BackboneConfigMixin, PretrainedConfig):
    r"""Configuration of a PaCa-ViT (Patch-to-Cluster Attention Vision Transformer).

    PaCa-ViT is a 4-stage pyramid. In each stage with `num_clusters[i] > 0`, a clustering module turns the
    patch tokens into `M` soft cluster assignments (a softmax over the tokens), the tokens are pooled into
    `M` cluster tokens, and the attention of every patch (query) runs over the clusters (keys/values)
    instead of over all patches, which makes the cost linear in the number of patches. A stage with
    `num_clusters[i] == 0` uses ordinary multi-head self-attention.

    Args:
        num_channels (`int`, defaults to 3): input image channels.
        hidden_sizes (`list[int]`): width of each stage.
        depths (`list[int]`): number of blocks in each stage.
        num_attention_heads (`list[int]`): attention heads per stage.
        mlp_ratios (`list[float]`): MLP hidden width / stage width, per stage (also used by `mlp` clustering).
        num_clusters (`list[int]`): clusters per stage; 0 means plain self-attention in that stage.
        clustering_type (`str`): `"conv"` (P2CConv2d: 7x7 depth-wise conv, GELU, 1x1, GELU, 1x1 to M),
            `"mlp"` (P2CMlp: Linear, GELU, Linear to M) or `"linear"` (P2CLinear: one Linear to M, no bias).
        clustering_kernel_sizes (`list[int]`): depth-wise kernel of the conv clustering, per stage.
        clustering_schedule (`list[int]`): when a block computes its own assignment, per stage. Block 0 of a
            stage always does. `0`: stage-wise (later blocks reuse block 0's assignment); `1`: block-wise
            (every block); `k >= 2`: every k-th block (block j computes when `j % k == 0`).
        cluster_layer_norm (`bool`): LayerNorm on the pooled cluster tokens (every block of a clustered stage).
        cluster_position_embeddings (`bool`): learned embedding added to the cluster tokens.
        mlp_dwconv (`bool`): 3x3 depth-wise conv after the first MLP projection.
        mlp_dwconv_shortcut (`bool`): residual around that depth-wise conv (`x + dwconv(x)`).
        layer_scale_init_value (`float`, *optional*): initial value of the per-channel layer scale; `None` disables it.
        norm_placement (`str`): `"pre"` (pre-norm, the default), `"post"` (post-norm) or `"sub"` (both, Sub-LN).
        drop_path_rate (`float`): stochastic depth, linearly increased over all blocks.
        hidden_dropout_prob (`float`): dropout after the attention projection and in the MLP.
        attention_probs_dropout_prob (`float`): dropout on the attention probabilities.
        layer_norm_eps (`float`): epsilon of every LayerNorm.
        hidden_act (`str`): activation (`"gelu"` is exact erf GELU, as in the original).
        use_absolute_position_embeddings (`bool`): learned position embedding added before block 0 of each stage,
            sized for `image_size` and bilinearly resized for other inputs.
        image_size (`int`): training resolution; only used for the absolute position embeddings.
        use_clustering_teacher (`bool`): use the ConvMixer clustering teacher. Its cluster assignments replace
            the clustering modules of every clustered stage and its stage outputs are added to the PaCa stage
            outputs before the stage LayerNorm.
        teacher_depths (`list[int]`): ConvMixer blocks per teacher stage.
        teacher_kernel_size (`int`): depth-wise kernel of the teacher.
        teacher_drop_path_rate (`float`): stochastic depth inside the teacher.
        teacher_batch_norm_eps (`float`): epsilon of the teacher's BatchNorms.
        initializer_range (`float`): std of the truncated-normal init of Linear weights.
        out_features / out_indices: which stages `PaCaViTBackbone` returns (`"stem"`, `"stage1"` … `"stage4"`).
    """

    model_type = "pacavit"

    def __init__(
        self,
        num_channels: int = 3,
        hidden_sizes=(96, 192, 320, 384),
        depths=(2, 2, 4, 2),
        num_attention_heads=(2, 4, 8, 16),
        mlp_ratios=(4.0, 4.0, 4.0, 4.0),
        num_clusters=(100, 100, 100, 0),
        clustering_type: str = "conv",
        clustering_kernel_sizes=(7, 7, 7, 7),
        clustering_schedule=(0, 0, 0, 0),
        cluster_layer_norm: bool = True,
        cluster_position_embeddings: bool = False,
        mlp_dwconv: bool = True,
        mlp_dwconv_shortcut: bool = True,
        layer_scale_init_value: float | None = None,
        norm_placement: str = "pre",
        drop_path_rate: float = 0.0,
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        layer_norm_eps: float = 1e-6,
        hidden_act: str = "gelu",
        use_absolute_position_embeddings: bool = False,
        image_size: int = 224,
        use_clustering_teacher: bool = False,
        teacher_depths=(2, 2, 2, 2),
        teacher_kernel_size: int = 7,
        teacher_drop_path_rate: float = 0.0,
        teacher_batch_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        out_features=None,
        out_indices=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_channels = num_channels
        self.hidden_sizes = list(hidden_sizes)
        self.depths = list(depths)
        self.num_attention_heads = list(num_attention_heads)
        self.mlp_ratios = [float(r) for r in mlp_ratios]
        self.num_clusters = list(num_clusters)
        self.clustering_type = clustering_type
        self.clustering_kernel_sizes = list(clustering_kernel_sizes)
        self.clustering_schedule = list(clustering_schedule)
        self.cluster_layer_norm = cluster_layer_norm
        self.cluster_position_embeddings = cluster_position_embeddings
        self.mlp_dwconv = mlp_dwconv
        self.mlp_dwconv_shortcut = mlp_dwconv_shortcut
        self.layer_scale_init_value = layer_scale_init_value
        self.norm_placement = norm_placement
        self.drop_path_rate = drop_path_rate
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.layer_norm_eps = layer_norm_eps
        self.hidden_act = hidden_act
        self.use_absolute_position_embeddings = use_absolute_position_embeddings
        self.image_size = image_size
        self.use_clustering_teacher = use_clustering_teacher
        self.teacher_depths = list(teacher_depths)
        self.teacher_kernel_size = teacher_kernel_size
        self.teacher_drop_path_rate = teacher_drop_path_rate
        self.teacher_batch_norm_eps = teacher_batch_norm_eps
        self.initializer_range = initializer_range
        self._validate()
        self.stage_names = ["stem"] + [f"stage{i}" for i in range(1, len(self.depths) + 1)]
        self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    def _validate(self) -> None:
        n = len(self.depths)
        per_stage = dict(
            hidden_sizes=self.hidden_sizes,
            num_attention_heads=self.num_attention_heads,
            mlp_ratios=self.mlp_ratios,
            num_clusters=self.num_clusters,
            clustering_kernel_sizes=self.clustering_kernel_sizes,
            clustering_schedule=self.clustering_schedule,
        )
        if self.use_clustering_teacher:
            per_stage["teacher_depths"] = self.teacher_depths
        for name, values in per_stage.items():
            if len(values) != n:
                raise ValueError(f"`{name}` has {len(values)} entries but `depths` has {n}; give one value per stage.")
        for i, (width, heads) in enumerate(zip(self.hidden_sizes, self.num_attention_heads)):
            if width % heads != 0:
                raise ValueError(f"Stage {i + 1}: hidden size {width} is not divisible by {heads} attention heads.")
        if self.clustering_type not in CLUSTERING_TYPES:
            raise ValueError(
                f"Unknown clustering_type {self.clustering_type!r}; choose one of {', '.join(CLUSTERING_TYPES)}."
            )
        if self.norm_placement not in NORM_PLACEMENTS:
            raise ValueError(
                f"Unknown norm_placement {self.norm_placement!r}; choose one of {', '.join(NORM_PLACEMENTS)}."
            )
        if any(m < 0 for m in self.num_clusters) or any(k < 0 for k in self.clustering_schedule):
            raise ValueError("`num_clusters` and `clustering_schedule` must be >= 0.")

    def computes_clusters(self, stage: int, block: int) -> bool:
        """Whether block `block` of stage `stage` (0-based) owns a clustering module."""
        if self.num_clusters[stage] == 0 or self.use_clustering_teacher:
            return False
        every = self.clustering_schedule[stage]
        if block == 0 or every == 1:
            return True
        return every >= 2 and block % every == 0

    @classmethod
    def from_preset(cls, name: str, **overrides) -> PaCaViTConfig:
        """Build the config of a named architecture, e.g. `PaCaViTConfig.from_preset("pacavit-tiny", num_labels=10)`.

        Accepts the short names of `list_presets()` and the original builder names
        (`pacavit_small_p2cconv_100_blockwise`, ...). Keyword overrides replace preset values.
        """
        values = copy.deepcopy(PRESETS[resolve_preset_name(name)])
        values.update(overrides)
        return cls(**values)

    @classmethod
    def from_backbone_config(cls, backbone: PaCaViTConfig, **fields) -> PaCaViTConfig:
        """A config of this class (e.g. `PaCaViTSegmentationConfig`, `PaCaViTMaskRCNNConfig`) on the architecture of
        `backbone`; `fields` set the rest (the task's labels and head settings). The backbone's labels, stage
        selection and saved-folder metadata are not carried over (`NOT_ARCHITECTURE_FIELDS`)."""
        values = {key: value for key, value in backbone.to_dict().items() if key not in NOT_ARCHITECTURE_FIELDS}
        values.update(fields)
        return cls(**values)


__all__ = ["HUB_ORGANISATION", "ORIGINAL_NAMES", "PRESETS", "PaCaViTConfig", "list_presets", "resolve_preset_name"]

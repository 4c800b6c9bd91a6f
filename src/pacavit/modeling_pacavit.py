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
"""PyTorch PaCa-ViT: "Learning Patch-to-Cluster Attention in Vision Transformers" (Grainger et al., CVPR 2023).

Paper: https://arxiv.org/abs/2203.11987 - original code: https://github.com/iVMCL/PaCaViT (re-implemented, not copied).

Layout convention: inside a stage, activations are tokens `(batch, height * width, channels)`. Where a
convolution needs a feature map we take a *view* `(batch, channels, height, width)` whose memory is
channels-last (`tokens_to_map`), run the convolution, and come back with another view (`map_to_tokens`), so
that token <-> map changes cost no copies. The 1x1 convolutions of the original clustering module are
applied as `nn.Linear` on the tokens (the same function; the converter reshapes their weights).

Only relative imports between model files, so the folder works as Hub remote code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor
from torch.nn.modules import module as _torch_module
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BackboneOutput, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, logging

from .configuration_pacavit import PaCaViTConfig

try:  # transformers >= 5 moved the mixin out of `utils`
    from transformers.backbone_utils import BackboneMixin
except ImportError:  # pragma: no cover - older transformers
    from transformers.utils.backbone_utils import BackboneMixin

try:
    from transformers import initialization as init
except ImportError:  # pragma: no cover - transformers 4.x
    init = nn.init


logger = logging.get_logger(__name__)


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------
@dataclass
class PaCaViTModelOutput(ModelOutput):
    """Output of `PaCaViTModel`.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch, channels, height, width)`):
            last stage feature map, after the stage LayerNorm.
        pooler_output (`torch.FloatTensor` of shape `(batch, channels)`): mean of the last stage tokens.
        hidden_states (`tuple(torch.FloatTensor)`, returned with `output_hidden_states=True`):
            the stem output and every stage output (after its LayerNorm), each `(batch, channels, height, width)`,
            in the order of `config.stage_names`.
        attentions (`tuple(torch.FloatTensor)`, returned with `output_attentions=True`): one tensor per block,
            `(batch, heads, num_patches, num_clusters)` (or `(batch, heads, num_patches, num_patches)` in stages
            without clusters). Computed with eager attention for that call.
        cluster_assignments (`tuple(torch.FloatTensor | None)`, returned with `output_cluster_assignments=True`):
            one entry per block, `(batch, num_clusters, height, width)`, a softmax over the positions (sums to 1
            over `height * width` for each cluster); `None` for blocks of stages without clusters. Blocks that
            reuse an assignment return the same tensor as the block that computed it.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cluster_assignments: tuple[torch.FloatTensor | None, ...] | None = None


@dataclass
class PaCaViTImageClassifierOutput(ImageClassifierOutput):
    """`ImageClassifierOutput` plus the per-block `cluster_assignments` (see `PaCaViTModelOutput`)."""

    cluster_assignments: tuple[torch.FloatTensor | None, ...] | None = None


@dataclass
class PaCaViTBackboneOutput(BackboneOutput):
    """`BackboneOutput` plus the per-block `cluster_assignments` (see `PaCaViTModelOutput`)."""

    cluster_assignments: tuple[torch.FloatTensor | None, ...] | None = None


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def tokens_to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`(B, H*W, C)` tokens -> `(B, C, H, W)` view with channels-last memory (no copy)."""
    batch, _, channels = tokens.shape
    return tokens.view(batch, height, width, channels).permute(0, 3, 1, 2)


def map_to_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """`(B, C, H, W)` -> `(B, H*W, C)` tokens (a view when the map is channels-last in memory)."""
    return feature_map.permute(0, 2, 3, 1).flatten(1, 2)


def _plain_weight(tensor) -> bool:
    # a Parameter/Tensor, or the fake tensor torch.export/compile trace with; not a tensor subclass such as torchao's
    # quantized weights (which keep the nn.Linear module) or an FX proxy
    return tensor is None or type(tensor) in (nn.Parameter, torch.Tensor) or isinstance(tensor, FakeTensor)


def is_plain_module(module: nn.Module | None, base: type[nn.Module]) -> bool:
    """Whether a fast path may read `module`'s weights instead of calling it, without changing the result.

    True only for exactly `base` (`nn.Linear`, `nn.Conv2d`: not a PEFT/LoRA wrapper, a quantized or parametrized
    module, or any subclass), with no forward/backward hooks of its own or global ones (pruning, weight norm, feature
    extraction, profilers register those) and plain tensor weights. Anything else is called, so that adapters,
    quantized layers and hooks see every call. A few attribute reads: nothing measurable next to the matmuls.
    """
    return (
        type(module) is base
        and not (
            module._forward_hooks
            or module._forward_pre_hooks
            or module._backward_hooks
            or module._backward_pre_hooks
            or _torch_module._global_forward_hooks
            or _torch_module._global_forward_pre_hooks
            or _torch_module._global_backward_hooks
            or _torch_module._global_backward_pre_hooks
        )
        and _plain_weight(module.weight)
        and _plain_weight(module.bias)
    )


# Autograd-off CPU inference (eval mode) runs the stem and each stage a few images at a time, so that no transient
# buffer of a group exceeds CPU_INFERENCE_GROUP_BYTES, and computes the MLP of one image whose hidden activation would
# exceed CPU_INFERENCE_SLICE_BYTES in hidden-channel slices. Why: glibc serves fresh buffers of tens of MB with pages
# that are faulted in again on every call (mmap, or a trimmed heap), and they overflow the cache; at batch 8, 224x224
# on a 2-core CPU the groups made PaCa-Tiny ~15 % faster (pages faulted in per forward: ~46 000 -> ~5 900), and the
# slices keep high resolutions from costing more than linear. Images are independent in this network, so the outputs
# are the same. `None` turns either off. GPUs, autograd, training mode and torch.compile/export/tracing always run the
# batch whole.
CPU_INFERENCE_GROUP_BYTES: int | None = 8 * 2**20
CPU_INFERENCE_SLICE_BYTES: int | None = 32 * 2**20


def cpu_inference_chunking(tensor: torch.Tensor, training: bool = False) -> bool:
    """Whether a forward pass on `tensor` is CPU inference, where image groups and MLP slices apply."""
    return (
        not isinstance(tensor, torch.fx.Proxy)  # torch.fx symbolic tracing: the graph runs the batch whole
        and tensor.device.type == "cpu"
        and not training
        and not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()  # compiled code plans its own buffers
        and not getattr(torch.compiler, "is_exporting", lambda: False)()  # non-strict export (torch >= 2.5)
        and not torch.jit.is_tracing()
    )


def cpu_inference_group_size(tensor: torch.Tensor, bytes_per_image, training: bool = False) -> int | None:
    """How many images of `tensor`'s batch to run at a time so that a buffer of `bytes_per_image()` bytes per
    image stays within `CPU_INFERENCE_GROUP_BYTES` (at least one); None where the batch runs whole (grouping does
    not apply, or the whole batch fits). `bytes_per_image` is a callable so that shapes are read only where
    grouping applies: under torch.fx symbolic tracing they are proxies, and comparing them would stop the trace."""
    if CPU_INFERENCE_GROUP_BYTES is None or not cpu_inference_chunking(tensor, training):
        return None
    group = max(1, min(tensor.shape[0], CPU_INFERENCE_GROUP_BYTES // max(bytes_per_image(), 1)))
    return group if group < tensor.shape[0] else None


def check_pixel_values(pixel_values, config: PaCaViTConfig, training: bool = False) -> None:
    """Raise a TypeError/ValueError that says what is wrong and what to do for `pixel_values` the network
    cannot take. Every PaCa-ViT model class calls it first (the segmentation/detection models too).

    Only metadata is checked (type, rank, channels, dtype, size), never values: no device sync, and it traces under
    torch.compile/export (the size checks are skipped while compiling; they would only add shape guards). Not errors,
    by design: floating-point inputs of another precision than the weights are cast to it by the stem; NaN/Inf values
    propagate to the outputs of the images that hold them (other images of the batch are unaffected in eval mode).
    Integer inputs are an error rather than converted, because the model cannot know how they should be rescaled and
    normalised. Any size from 1x1 up works (the stride-2 convolutions round up); the one minimum is the ConvMixer
    clustering teacher in training mode, whose BatchNorm needs more than one value per channel at stride 32.
    """
    if isinstance(pixel_values, torch.fx.Proxy):  # torch.fx symbolic tracing: no shapes or dtypes to check
        return
    channels = config.num_channels
    expected = f"Expected pixel_values of shape (batch, {channels}, height, width)"
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(
            f"{expected}, got a {type(pixel_values).__name__}. Turn images into a tensor with the model's image "
            "processor: `AutoImageProcessor.from_pretrained(path)(images, return_tensors='pt').pixel_values`."
        )
    shape = tuple(pixel_values.shape)
    if pixel_values.ndim == 3 and shape[0] == channels:
        raise ValueError(f"{expected}, got {shape}: one image without the batch dimension. Pass pixel_values[None].")
    if pixel_values.ndim == 5:
        raise ValueError(
            f"{expected}, got {shape} (5 dimensions, e.g. a list of batches or video frames). Merge the leading "
            "dimensions into the batch: pixel_values.flatten(0, 1)."
        )
    if pixel_values.ndim != 4:
        raise ValueError(f"{expected}, got {shape} ({pixel_values.ndim} dimensions).")
    if shape[1] != channels:
        if shape[-1] == channels:
            hint = "It looks channels-last (batch, height, width, channels): use pixel_values.permute(0, 3, 1, 2)."
        elif shape[1] in (1, 2, 4) and channels == 3:
            hint = (
                "Convert grayscale/RGBA images to RGB (`image.convert('RGB')`, or an image processor with "
                "do_convert_rgb=True)."
            )
        else:
            hint = f"Check the image channels or build the model with num_channels={shape[1]}."
        raise ValueError(f"{expected}, got {shape}. {hint}")
    if not pixel_values.is_floating_point():
        raise TypeError(
            f"pixel_values has dtype {pixel_values.dtype}; the model takes floating-point pixel values, rescaled and "
            "normalised as in training. Use the model's image processor, or convert them yourself: "
            "`(pixel_values.float() / 255 - mean) / std` with the processor's image_mean/image_std."
        )
    if torch.compiler.is_compiling():
        return
    if 0 in shape:
        raise ValueError(f"pixel_values is empty (shape {shape}); give at least one image of at least 1x1 pixels.")
    if training and config.use_clustering_teacher:
        stride = 2 ** (config.num_stages + 1)  # stem /4, then /2 per stage; each stride-2 conv rounds up
        grid = (-(-shape[2] // stride), -(-shape[3] // stride))
        if shape[0] * grid[0] * grid[1] < 2:
            raise ValueError(
                f"In training mode the clustering teacher's BatchNorm needs more than one value per channel, but "
                f"{shape[0]} image(s) of {shape[2]}x{shape[3]} give a {grid[0]}x{grid[1]} map at stride {stride}. "
                f"Train with at least 2 images per batch (per device) or images larger than {stride} pixels on a "
                "side, or call model.eval() for inference."
            )


def check_classification_labels(labels, logits: torch.Tensor, config: PaCaViTConfig) -> None:
    """Raise a clear error for labels the classification loss cannot take (instead of torch's
    "Target 12 is out of bounds", or a CUDA device-side assert that ends the process).

    Integer labels are class indices in `[0, num_labels)`, or -100 to ignore a sample; float labels are
    multi-label targets of the logits' shape (`num_labels == 1` is regression). Checking the values costs one
    device sync; it is skipped while compiling.
    """
    num_labels, batch = config.num_labels, logits.shape[0]
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor of class indices, got {type(labels).__name__}.")
    if num_labels == 0:
        raise ValueError(
            "This model has no classification head (num_labels=0); build it with num_labels=N to train it."
        )
    problem_type = config.problem_type
    if problem_type is None and num_labels > 1:
        integer = labels.dtype in (torch.long, torch.int)
        problem_type = "single_label_classification" if integer else "multi_label_classification"
    if problem_type == "single_label_classification":
        if labels.is_floating_point() or labels.numel() != batch:
            raise ValueError(
                f"labels of shape {tuple(labels.shape)} and dtype {labels.dtype} do not fit {batch} images: give one "
                f"integer class index per image, shape ({batch},) (labels.long()); for multi-label targets use "
                f"float labels of shape ({batch}, {num_labels})."
            )
        if torch.compiler.is_compiling():
            return
        invalid = (labels >= num_labels) | ((labels < 0) & (labels != -100))
        if invalid.any():
            values = sorted(set(labels[invalid].tolist()))
            raise ValueError(
                f"labels must be class indices in [0, {num_labels - 1}] (or -100 to ignore a sample), got "
                f"{values[:10]}. The model has num_labels={num_labels}: build or load it with the number of classes "
                "of your data (e.g. from_pretrained(path, num_labels=N, ignore_mismatched_sizes=True))."
            )
    elif problem_type == "multi_label_classification" and tuple(labels.shape) != tuple(logits.shape):
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} and dtype {labels.dtype} are read as multi-label targets, which "
            f"need the logits' shape {tuple(logits.shape)}. For class indices pass an integer tensor (labels.long())."
        )


def drop_path_rates(max_rate: float, depths: list[int]) -> list[list[float]]:
    """Stochastic-depth rate of every block, increasing linearly from 0 to `max_rate`, split per stage."""
    total = sum(depths)
    rates = [max_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
    starts = [sum(depths[:i]) for i in range(len(depths))]
    return [rates[start : start + depth] for start, depth in zip(starts, depths)]


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """Stochastic depth per sample (the residual branch is dropped for whole samples)."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = x.new_empty(shape).bernoulli_(keep_prob)
    return x * mask / keep_prob


class PaCaViTDropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return drop_path(hidden_states, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


def eager_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """softmax(q k^T * scaling) v; q `(B, h, N, d)`, k/v `(B, h, M, d)` -> (`(B, N, h, d)`, weights `(B, h, N, M)`)."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = attn_weights.softmax(dim=-1)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


def xformers_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """xformers' memory-efficient attention on CUDA; on other devices it falls back to SDPA with a warning."""
    try:
        import xformers.ops as xops
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "attn_implementation='xformers' needs the xformers package: `pip install pacavit[xformers]`, "
            "or use attn_implementation='sdpa'."
        ) from error
    if not query.is_cuda:
        logger.warning_once("xformers attention needs CUDA tensors; falling back to SDPA on this device.")
        return ALL_ATTENTION_FUNCTIONS["sdpa"](
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling
        )
    # xformers takes (B, N, h, d)
    out = xops.memory_efficient_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), p=dropout, scale=scaling
    )
    return out, None


if "xformers" not in ALL_ATTENTION_FUNCTIONS:
    ALL_ATTENTION_FUNCTIONS.register("xformers", xformers_attention_forward)


# --------------------------------------------------------------------------------------------
# Stem and stage transitions
# --------------------------------------------------------------------------------------------
def fx_sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' `sdpa_attention_forward` without its shape branches, for torch.fx symbolic tracing."""
    out = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


class PaCaViTEmbeddings(nn.Module):
    """Stem: two stride-2 3x3 convs (to dim/2, then dim, nothing between them) and a LayerNorm over channels."""

    def __init__(self, config: PaCaViTConfig) -> None:
        super().__init__()
        dim = config.hidden_sizes[0]
        self.num_channels = config.num_channels
        self.projection = nn.Sequential(
            nn.Conv2d(config.num_channels, dim // 2, kernel_size=3, stride=2, padding=1),
            nn.Conv2d(dim // 2, dim, kernel_size=3, stride=2, padding=1),
        )
        self.layernorm = nn.LayerNorm(dim, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        # inputs were checked by `check_pixel_values`; another float precision is cast (a no-op when equal)
        pixel_values = pixel_values.to(getattr(self.projection[0], "weight", self.layernorm.weight).dtype)

        def first_output_bytes() -> int:  # the widest buffer: the first conv's output, dim / 2 channels at half size
            return (
                math.ceil(pixel_values.shape[-2] / 2)
                * math.ceil(pixel_values.shape[-1] / 2)
                * (self.layernorm.normalized_shape[0] // 2)
                * pixel_values.element_size()
            )

        group = cpu_inference_group_size(pixel_values, first_output_bytes, self.training)
        if group is not None:  # CPU inference, a few images at a time (images are independent)
            feature_maps = [self.projection(images) for images in pixel_values.split(group)]
            tokens = torch.cat([self.layernorm(map_to_tokens(feature_map)) for feature_map in feature_maps])
            return tokens, *feature_maps[0].shape[-2:]
        feature_map = self.projection(pixel_values)
        height, width = feature_map.shape[-2:]
        return self.layernorm(map_to_tokens(feature_map)), height, width


class PaCaViTDownsample(nn.Module):
    """Stage transition: one stride-2 3x3 conv and a LayerNorm over channels."""

    def __init__(self, in_channels: int, out_channels: int, eps: float) -> None:
        super().__init__()
        self.projection = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1)
        self.layernorm = nn.LayerNorm(out_channels, eps=eps)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, int, int]:
        feature_map = self.projection(tokens_to_map(tokens, height, width))
        height, width = feature_map.shape[-2:]
        return self.layernorm(map_to_tokens(feature_map)), height, width


# --------------------------------------------------------------------------------------------
# Patch-to-cluster attention
# --------------------------------------------------------------------------------------------
class PaCaViTClustering(nn.Module):
    """Predicts cluster logits `(B, M, N)` from the normalised tokens `(B, N, C)` of a block.

    conv   (P2CConv2d): depth-wise kxk conv -> act -> 1x1 -> act -> 1x1 to M (no bias)
    mlp    (P2CMlp):    Linear(C, C * mlp_ratio) -> act -> Linear(., M)
    linear (P2CLinear): Linear(C, M) (no bias)
    """

    def __init__(self, config: PaCaViTConfig, stage: int) -> None:
        super().__init__()
        dim = config.hidden_sizes[stage]
        num_clusters = config.num_clusters[stage]
        self.clustering_type = config.clustering_type
        self.act = ACT2FN[config.hidden_act]
        if self.clustering_type == "conv":
            kernel_size = config.clustering_kernel_sizes[stage]
            self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=(kernel_size - 1) // 2, groups=dim)
            self.pwconv = nn.Linear(dim, dim)  # a 1x1 conv applied to tokens
            self.to_clusters = nn.Linear(dim, num_clusters, bias=False)
        elif self.clustering_type == "mlp":
            hidden = int(dim * config.mlp_ratios[stage])
            self.fc = nn.Linear(dim, hidden)
            self.to_clusters = nn.Linear(hidden, num_clusters)
        else:  # linear
            self.to_clusters = nn.Linear(dim, num_clusters, bias=False)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Cluster logits laid out `(B, M, N)`: the softmax over the patches then runs over the contiguous last
        dim, and the pooling `z^T x` is a plain `(B, M, N) @ (B, N, C)` bmm."""
        if self.clustering_type == "conv":
            tokens = self.act(map_to_tokens(self.dwconv(tokens_to_map(tokens, height, width))))
            tokens = self.act(self.pwconv(tokens))
        elif self.clustering_type == "mlp":
            tokens = self.act(self.fc(tokens))
        if not is_plain_module(self.to_clusters, nn.Linear):  # an adapter/quantized layer/hook: call it
            return self.to_clusters(tokens).transpose(1, 2)
        logits = torch.matmul(self.to_clusters.weight, tokens.transpose(1, 2))  # (M, C) @ (B, C, N)
        if self.to_clusters.bias is not None:
            logits = logits + self.to_clusters.bias[:, None]
        return logits


class PaCaViTAttention(nn.Module):
    """Multi-head attention of every patch (query) over `M` cluster tokens (keys/values).

    The cluster tokens are `z^T x`, with `z` the `(B, N, M)` assignment (softmax over the N patches). In a
    stage without clusters the keys/values are the patches themselves (ordinary self-attention).
    """

    def __init__(self, config: PaCaViTConfig, stage: int, computes_clusters: bool) -> None:
        super().__init__()
        dim = config.hidden_sizes[stage]
        self.config = config
        self.num_heads = config.num_attention_heads[stage]
        self.head_dim = dim // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.dropout = config.attention_probs_dropout_prob
        self.num_clusters = config.num_clusters[stage]

        self.clustering = PaCaViTClustering(config, stage) if computes_clusters else None
        self.cluster_norm = None
        self.cluster_position_embeddings = None
        if self.num_clusters > 0:
            if config.cluster_layer_norm:
                self.cluster_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
            if config.cluster_position_embeddings:
                self.cluster_position_embeddings = nn.Parameter(torch.zeros(1, self.num_clusters, dim))

        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)  # keys and values fused in one matmul
        self.dense = nn.Linear(dim, dim)
        self.proj_dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        hidden_states: torch.Tensor,
        height: int,
        width: int,
        cluster_assignment: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        batch, num_patches, dim = hidden_states.shape
        if self.num_clusters > 0:
            if self.clustering is not None:
                # softmax over the patches on a (B, M, N) layout; the (B, N, M) assignment is a view of it
                logits = self.clustering(hidden_states, height, width)
                cluster_assignment = logits.softmax(dim=-1).transpose(1, 2)
            elif cluster_assignment is None:
                raise RuntimeError("This block reuses a cluster assignment but none was given to it.")
            context = torch.bmm(cluster_assignment.transpose(1, 2), hidden_states)  # (B, M, C)
            if self.cluster_position_embeddings is not None:
                context = context + self.cluster_position_embeddings
            if self.cluster_norm is not None:
                context = self.cluster_norm(context)
        else:
            context = hidden_states

        if (  # self-attention: q, k, v from one matmul (weights concatenated on the fly) when nothing wraps them
            self.num_clusters == 0
            and is_plain_module(self.query, nn.Linear)
            and is_plain_module(self.key_value, nn.Linear)
        ):
            qkv = F.linear(
                hidden_states,
                torch.cat([self.query.weight, self.key_value.weight]),
                torch.cat([self.query.bias, self.key_value.bias]),
            )
            qkv = qkv.view(batch, num_patches, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            query, key, value = qkv.unbind(0)
        else:
            query = self.query(hidden_states).view(batch, num_patches, self.num_heads, self.head_dim).transpose(1, 2)
            key_value = (
                self.key_value(context).view(batch, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            )
            key, value = key_value.unbind(0)

        attention_interface = eager_attention_forward
        if not output_attentions and self.config._attn_implementation not in (None, "eager"):
            # attention weights are only materialised by the eager path; any other backend is used otherwise
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
        if isinstance(query, torch.fx.Proxy) and attention_interface is ALL_ATTENTION_FUNCTIONS.get("sdpa"):
            # torch.fx: transformers' sdpa wrapper branches on a shape (`q_length > 1`); the kernel itself traces
            attention_interface = fx_sdpa_attention_forward
        attn_output, attn_weights = attention_interface(
            self, query, key, value, None, dropout=self.dropout if self.training else 0.0, scaling=self.scaling
        )
        attn_output = self.proj_dropout(self.dense(attn_output.reshape(batch, num_patches, dim)))
        return attn_output, (attn_weights if output_attentions else None), cluster_assignment


# --------------------------------------------------------------------------------------------
# Block
# --------------------------------------------------------------------------------------------
class PaCaViTMlp(nn.Module):
    """fc1 -> 3x3 depth-wise conv with shortcut (x + dwconv(x)) -> act -> dropout -> fc2 -> dropout.

    The shortcut is folded into the convolution (`x + dwconv(x)` is the depth-wise conv whose kernel has +1 on
    its centre tap), which saves a pass and a buffer over the widest tensor of the block. Without autograd the
    exact GELU runs in place, and in CPU inference a hidden activation that would exceed
    `CPU_INFERENCE_SLICE_BYTES` (a large image: the stage already runs several images in groups) is computed in
    hidden-channel slices (fc2 is a sum over them), so no large (N, 4C) buffer is allocated.
    """

    def __init__(self, config: PaCaViTConfig, stage: int) -> None:
        super().__init__()
        dim = config.hidden_sizes[stage]
        hidden = int(dim * config.mlp_ratios[stage])
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden) if config.mlp_dwconv else None
        self.dwconv_shortcut = config.mlp_dwconv_shortcut
        self.act = ACT2FN[config.hidden_act]
        self.exact_gelu = config.hidden_act == "gelu"
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def _dwconv_weight(self) -> torch.Tensor:
        weight = self.dwconv.weight
        if self.dwconv_shortcut:  # x + dwconv(x) == dwconv(x) with +1 on the centre tap
            centre = weight.new_ones(weight.shape[0], 1, 1, 1)
            weight = weight + F.pad(centre, (1, 1, 1, 1))
        return weight

    def _dwconv(self, tokens: torch.Tensor, height: int, width: int, weight, bias) -> torch.Tensor:
        feature_map = tokens_to_map(tokens, height, width)
        return map_to_tokens(F.conv2d(feature_map, weight, bias, padding=1, groups=weight.shape[0]))

    def _apply_dwconv(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """`x + dwconv(x)` (or `dwconv(x)` without the shortcut): one folded conv for a plain `nn.Conv2d`, else a
        call of the module (an adapter, a hook) and the shortcut added."""
        if is_plain_module(self.dwconv, nn.Conv2d):
            return self._dwconv(tokens, height, width, self._dwconv_weight(), self.dwconv.bias)
        feature_map = tokens_to_map(tokens, height, width)
        output = self.dwconv(feature_map)
        return map_to_tokens(output + feature_map if self.dwconv_shortcut else output)

    def _activation(self, hidden_states: torch.Tensor, in_place: bool = True) -> torch.Tensor:
        if in_place and self.exact_gelu and not torch.is_grad_enabled():
            return torch.ops.aten.gelu_(hidden_states)  # a fresh local buffer: in place is safe without autograd
        return self.act(hidden_states)

    def _forward_in_slices(self, tokens: torch.Tensor, height: int, width: int, slices: int) -> torch.Tensor:
        batch, num_tokens, _ = tokens.shape
        hidden = self.fc1.out_features
        weight, bias = self._dwconv_weight(), self.dwconv.bias
        bounds = [round(i * hidden / slices) for i in range(slices + 1)]
        out = None
        for start, end in zip(bounds[:-1], bounds[1:]):
            part = F.linear(tokens, self.fc1.weight[start:end], self.fc1.bias[start:end])
            part = self._dwconv(part, height, width, weight[start:end], None if bias is None else bias[start:end])
            part = self._activation(part).reshape(batch * num_tokens, end - start)
            fc2_weight = self.fc2.weight[:, start:end].t()
            out = torch.addmm(self.fc2.bias, part, fc2_weight) if out is None else out.addmm_(part, fc2_weight)
        return out.view(batch, num_tokens, -1)

    def forward(self, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if (
            CPU_INFERENCE_SLICE_BYTES is not None
            and self.dwconv is not None
            and self.exact_gelu
            and cpu_inference_chunking(hidden_states, self.training)
            and is_plain_module(self.fc1, nn.Linear)  # the slices read the weights: only for plain layers
            and is_plain_module(self.fc2, nn.Linear)
            and is_plain_module(self.dwconv, nn.Conv2d)
        ):
            hidden_bytes = hidden_states[..., :1].numel() * self.fc1.out_features * hidden_states.element_size()
            slices = min(-(-hidden_bytes // CPU_INFERENCE_SLICE_BYTES), self.fc1.out_features)
            if slices > 1:
                return self._forward_in_slices(hidden_states, height, width, slices)
        hidden_states = self.fc1(hidden_states)
        # GELU in place only on a buffer nothing else holds (a hook may keep the output of the module it watches)
        fresh = is_plain_module(self.fc1, nn.Linear)
        if self.dwconv is not None:
            hidden_states = self._apply_dwconv(hidden_states, height, width)
            fresh = self.dwconv_shortcut or is_plain_module(self.dwconv, nn.Conv2d)
        hidden_states = self.dropout(self._activation(hidden_states, in_place=fresh))
        return self.dropout(self.fc2(hidden_states))


class PaCaViTLayer(GradientCheckpointingLayer):
    """One PaCa block: x + attn(norm1(x)), then x + mlp(norm2(x)) (pre-norm; post/sub-norm optional)."""

    def __init__(self, config: PaCaViTConfig, stage: int, index: int, drop_path_rate: float) -> None:
        super().__init__()
        dim = config.hidden_sizes[stage]
        eps = config.layer_norm_eps

        def norm(enabled: bool) -> nn.Module:
            return nn.LayerNorm(dim, eps=eps) if enabled else nn.Identity()

        pre = config.norm_placement in ("pre", "sub")
        post = config.norm_placement in ("post", "sub")

        self.position_embeddings = None
        if config.use_absolute_position_embeddings and index == 0:
            grid = config.image_size // 4 // (2**stage)
            self.position_grid = (grid, grid)
            self.position_embeddings = nn.Parameter(torch.zeros(1, grid * grid, dim))
            self.position_dropout = nn.Dropout(config.hidden_dropout_prob)

        self.norm1 = norm(pre)
        self.attention = PaCaViTAttention(config, stage, computes_clusters=config.computes_clusters(stage, index))
        self.post_attention_norm = norm(post)
        self.norm2 = norm(pre)
        self.mlp = PaCaViTMlp(config, stage)
        self.post_mlp_norm = norm(post)
        self.drop_path = PaCaViTDropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

        self.layer_scale_1 = self.layer_scale_2 = None
        if config.layer_scale_init_value is not None:
            self.layer_scale_1 = nn.Parameter(torch.full((dim,), float(config.layer_scale_init_value)))
            self.layer_scale_2 = nn.Parameter(torch.full((dim,), float(config.layer_scale_init_value)))

    def _position_embeddings(self, height: int, width: int) -> torch.Tensor:
        if (height, width) == self.position_grid:
            return self.position_embeddings
        grid = tokens_to_map(self.position_embeddings, *self.position_grid)
        grid = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=True)
        return map_to_tokens(grid)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cluster_assignment: torch.Tensor | None,
        height: int,
        width: int,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if self.position_embeddings is not None:
            hidden_states = self.position_dropout(hidden_states + self._position_embeddings(height, width))

        attn_output, attn_weights, cluster_assignment = self.attention(
            self.norm1(hidden_states), height, width, cluster_assignment, output_attentions
        )
        attn_output = self.post_attention_norm(attn_output)
        if self.layer_scale_1 is not None:
            attn_output = self.layer_scale_1 * attn_output
        hidden_states = hidden_states + self.drop_path(attn_output)

        mlp_output = self.post_mlp_norm(self.mlp(self.norm2(hidden_states), height, width))
        if self.layer_scale_2 is not None:
            mlp_output = self.layer_scale_2 * mlp_output
        hidden_states = hidden_states + self.drop_path(mlp_output)
        return hidden_states, cluster_assignment, attn_weights


class PaCaViTStage(nn.Module):
    """[transition] -> blocks -> (+ teacher output) -> LayerNorm."""

    def __init__(self, config: PaCaViTConfig, stage: int, drop_path_rates: list[float]) -> None:
        super().__init__()
        self.downsample = None
        if stage > 0:
            self.downsample = PaCaViTDownsample(
                config.hidden_sizes[stage - 1], config.hidden_sizes[stage], config.layer_norm_eps
            )
        self.layers = nn.ModuleList(
            PaCaViTLayer(config, stage, index, rate) for index, rate in enumerate(drop_path_rates)
        )
        self.layernorm = nn.LayerNorm(config.hidden_sizes[stage], eps=config.layer_norm_eps)

    @property
    def mlp_hidden_size(self) -> int:
        """Channels of the MLP's hidden activation, the stage's widest buffer (every block has the same; 0 for a
        stage without blocks)."""
        return self.layers[0].mlp.fc1.out_features if len(self.layers) else 0

    def forward(
        self,
        hidden_states: torch.Tensor,
        height: int,
        width: int,
        teacher_assignment: torch.Tensor | None = None,
        teacher_output: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_cluster_assignments: bool = False,
    ):
        group = None
        if not (output_attentions or output_cluster_assignments):  # those are returned for the whole batch

            def mlp_hidden_bytes():
                if self.downsample is not None:  # the 3x3 stride-2 transition halves the grid, rounding up
                    height_out, width_out = math.ceil(height / 2), math.ceil(width / 2)
                else:
                    height_out, width_out = height, width
                return height_out * width_out * self.mlp_hidden_size * hidden_states.element_size()

            group = cpu_inference_group_size(hidden_states, mlp_hidden_bytes, self.training)
        if group is not None:  # CPU inference, a few images at a time (images are independent)
            num_groups = math.ceil(hidden_states.shape[0] / group)

            def split(tensor):  # no teacher: None for every group
                return [None] * num_groups if tensor is None else tensor.split(group)

            groups = zip(split(hidden_states), split(teacher_assignment), split(teacher_output))
            outputs = [self._forward_images(*inputs, height, width, False, False) for inputs in groups]
            hidden_states, height, width = torch.cat([output[0] for output in outputs]), *outputs[0][1:3]
            return hidden_states, height, width, [], []
        return self._forward_images(
            hidden_states,
            teacher_assignment,
            teacher_output,
            height,
            width,
            output_attentions,
            output_cluster_assignments,
        )

    def _forward_images(
        self,
        hidden_states,
        teacher_assignment,
        teacher_output,
        height,
        width,
        output_attentions,
        output_cluster_assignments,
    ):
        if self.downsample is not None:
            hidden_states, height, width = self.downsample(hidden_states, height, width)
        attentions, assignments = [], []
        cluster_assignment = teacher_assignment  # reset at every stage
        for layer in self.layers:
            hidden_states, cluster_assignment, attn_weights = layer(
                hidden_states, cluster_assignment, height, width, output_attentions
            )
            if output_attentions:
                attentions.append(attn_weights)
            if output_cluster_assignments:
                assignments.append(cluster_assignment)
        if teacher_output is not None:
            hidden_states = hidden_states + teacher_output
        return self.layernorm(hidden_states), height, width, attentions, assignments


# --------------------------------------------------------------------------------------------
# ConvMixer clustering teacher
# --------------------------------------------------------------------------------------------
class PaCaViTConvMixerBlock(nn.Module):
    """x + BN(act(dwconv_kxk(x))) -> 1x1 conv -> act -> BN (a ConvMixer layer)."""

    def __init__(self, dim: int, kernel_size: int, act: str, eps: float, drop_path_rate: float) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.depthwise_norm = nn.BatchNorm2d(dim, eps=eps)
        self.pointwise = nn.Conv2d(dim, dim, 1)
        self.pointwise_norm = nn.BatchNorm2d(dim, eps=eps)
        self.act = ACT2FN[act]
        self.drop_path = PaCaViTDropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.depthwise_norm(self.act(self.depthwise(x))))
        return self.pointwise_norm(self.act(self.pointwise(x)))


class PaCaViTBlurDownsample(nn.Module):
    """Anti-aliased stride-2 conv: a fixed 3x3 binomial blur per channel, then the conv; then act and BN."""

    def __init__(self, in_channels: int, out_channels: int, act: str, eps: float) -> None:
        super().__init__()
        # a fixed buffer, kept in the state dict as in the original checkpoints
        self.register_buffer("blur_filter", self.default_blur_filter(in_channels))
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.act = ACT2FN[act]
        self.norm = nn.BatchNorm2d(out_channels, eps=eps)

    @staticmethod
    def default_blur_filter(channels: int) -> torch.Tensor:
        kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0
        return kernel.expand(channels, 1, 3, 3).clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.blur_filter, padding=1, groups=x.shape[1])
        return self.norm(self.act(self.conv(x)))


class PaCaViTConvNormAct(nn.Module):
    """1x1 conv -> act -> BN (the teacher's lateral connections)."""

    def __init__(self, in_channels: int, out_channels: int, act: str, eps: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)
        self.act = ACT2FN[act]
        self.norm = nn.BatchNorm2d(out_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.conv(x)))


class PaCaViTClusteringTeacher(nn.Module):
    """ConvMixer pyramid with a top-down (FPN-style) pathway that predicts the cluster assignment of every stage.

    It reads the stem output. Returns, per stage, the assignment `(B, N, M)` (softmax over N; `None` for stages
    without clusters) and the bottom-up stage output as tokens `(B, N, C)` (added to the PaCa stage output).
    """

    def __init__(self, config: PaCaViTConfig) -> None:
        super().__init__()
        dims, depths, act = config.hidden_sizes, config.teacher_depths, config.hidden_act
        eps, kernel = config.teacher_batch_norm_eps, config.teacher_kernel_size
        rates = drop_path_rates(config.teacher_drop_path_rate, depths)
        self.stages = nn.ModuleList(
            nn.Sequential(*(PaCaViTConvMixerBlock(dims[i], kernel, act, eps, rate) for rate in rates[i]))
            for i in range(len(depths))
        )
        self.downsamples = nn.ModuleList(
            PaCaViTBlurDownsample(dims[i], dims[i + 1], act, eps) for i in range(len(depths) - 1)
        )
        # top-down pathway: laterals[i] maps stage i+1 to the width of stage i, fpn_blocks[i] refines the sum
        self.laterals = nn.ModuleList(
            PaCaViTConvNormAct(dims[i + 1], dims[i], act, eps) for i in range(len(depths) - 1)
        )
        self.fpn_blocks = nn.ModuleList(
            PaCaViTConvMixerBlock(dims[i], kernel, act, eps, rates[i][0]) for i in range(len(depths) - 1)
        )
        self.to_clusters = nn.ModuleDict(
            {str(i): nn.Conv2d(dims[i], m, 1) for i, m in enumerate(config.num_clusters) if m > 0}
        )

    def forward(self, feature_map: torch.Tensor):
        outputs = []
        for i, stage in enumerate(self.stages):
            feature_map = stage(feature_map)
            outputs.append(feature_map)
            if i < len(self.downsamples):
                feature_map = self.downsamples[i](feature_map)

        top_down = [None] * len(outputs)
        top_down[-1] = outputs[-1]
        for i in range(len(outputs) - 2, -1, -1):
            upsampled = F.interpolate(
                top_down[i + 1], size=outputs[i].shape[-2:], mode="bilinear", align_corners=False
            )
            top_down[i] = self.fpn_blocks[i](outputs[i] + self.laterals[i](upsampled))

        assignments = []
        for i, features in enumerate(top_down):
            if str(i) in self.to_clusters:
                logits = self.to_clusters[str(i)](features).flatten(2)  # (B, M, N)
                assignments.append(logits.softmax(dim=-1).transpose(1, 2))  # (B, N, M) view, softmax over N
            else:
                assignments.append(None)
        return assignments, [map_to_tokens(out) for out in outputs]


# --------------------------------------------------------------------------------------------
# Pre-trained model base
# --------------------------------------------------------------------------------------------
class PaCaViTPreTrainedModel(PreTrainedModel):
    config_class = PaCaViTConfig
    config: PaCaViTConfig
    base_model_prefix = "pacavit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["PaCaViTLayer", "PaCaViTClusteringTeacher"]

    def __init__(self, config: PaCaViTConfig, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        if config._attn_implementation == "xformers":
            try:
                import xformers.ops  # noqa: F401
            except ImportError as error:
                raise ImportError(
                    "attn_implementation='xformers' needs the xformers package: `pip install pacavit[xformers]`, "
                    "or use attn_implementation='sdpa'."
                ) from error

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm-style parameter groups (for `timm.optim.param_groups_layer_decay`): the stem and the clustering
        teacher first, then one group per block (per stage if `coarse`); a stage's downsampling goes with its
        first block and the stage LayerNorm with its last. Unmatched parameters (the classifier) come last."""
        prefix = "^" if self.base_model is self else rf"^{self.base_model_prefix}\."
        stem = [(prefix + r"(?:embeddings|clustering_teacher)", None)]
        if coarse:
            return dict(stem=stem, blocks=prefix + r"stages\.(\d+)")
        return dict(
            stem=stem,
            blocks=[
                (prefix + r"stages\.(\d+)\.downsample", (0,)),
                (prefix + r"stages\.(\d+)\.layers\.(\d+)", None),
                (prefix + r"stages\.(\d+)\.layernorm", (99999,)),
            ],
        )

    def no_weight_decay(self) -> set[str]:
        """Parameters besides 1-D ones (norms, biases, layer scales) that should not be weight-decayed."""
        return {name for name, _ in self.named_parameters() if "position_embeddings" in name}

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The original initialisation: trunc-normal(0.02) Linear, He-normal (fan-out) conv, unit norms."""
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            init.normal_(module.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm)):  # BatchNorm1d/2d/SyncBatchNorm
            if module.weight is not None:
                init.ones_(module.weight)
                init.zeros_(module.bias)
            if getattr(module, "running_mean", None) is not None:  # every buffer, so a meta-device init is complete
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, PaCaViTBlurDownsample):
            init.copy_(module.blur_filter, module.default_blur_filter(module.blur_filter.shape[0]))
        elif isinstance(module, PaCaViTAttention) and module.cluster_position_embeddings is not None:
            init.trunc_normal_(module.cluster_position_embeddings, std=0.02)
        elif isinstance(module, PaCaViTLayer):
            if module.position_embeddings is not None:
                init.trunc_normal_(module.position_embeddings, std=0.02)
            if module.layer_scale_1 is not None:
                init.constant_(module.layer_scale_1, float(self.config.layer_scale_init_value))
                init.constant_(module.layer_scale_2, float(self.config.layer_scale_init_value))


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------
class PaCaViTModel(PaCaViTPreTrainedModel):
    """Bare PaCa-ViT: stem, (optional clustering teacher) and 4 stages; returns the stage feature maps."""

    def __init__(self, config: PaCaViTConfig) -> None:
        super().__init__(config)
        self.embeddings = PaCaViTEmbeddings(config)
        self.clustering_teacher = PaCaViTClusteringTeacher(config) if config.use_clustering_teacher else None
        rates = drop_path_rates(config.drop_path_rate, config.depths)
        self.stages = nn.ModuleList(PaCaViTStage(config, i, rates[i]) for i in range(config.num_stages))
        self.post_init()

    def forward_features(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        output_cluster_assignments: bool = False,
    ) -> tuple[torch.Tensor, int, int, tuple, tuple, tuple]:
        """Runs the network; returns last-stage tokens, their grid size, and the requested per-stage/block outputs."""
        hidden_states, height, width = self.embeddings(pixel_values)
        all_hidden_states = ()
        if output_hidden_states:  # go on from the returned view, so that it receives gradients (Grad-CAM)
            all_hidden_states = (tokens_to_map(hidden_states, height, width),)
            hidden_states = map_to_tokens(all_hidden_states[-1])
        teacher_assignments = teacher_outputs = [None] * self.config.num_stages
        if self.clustering_teacher is not None:
            teacher_assignments, teacher_outputs = self.clustering_teacher(tokens_to_map(hidden_states, height, width))

        all_attentions, all_assignments = (), ()
        for i, stage in enumerate(self.stages):
            hidden_states, height, width, attentions, assignments = stage(
                hidden_states,
                height,
                width,
                teacher_assignments[i],
                teacher_outputs[i],
                output_attentions,
                output_cluster_assignments,
            )
            if output_hidden_states:
                all_hidden_states += (tokens_to_map(hidden_states, height, width),)
                hidden_states = map_to_tokens(all_hidden_states[-1])  # a view: same values, gradients reach it
            all_attentions += tuple(attentions)
            as_maps = {}  # one (B, M, H, W) view per distinct assignment: reusing blocks share it
            all_assignments += tuple(
                None if z is None else as_maps.setdefault(id(z), z.transpose(1, 2).unflatten(2, (height, width)))
                for z in assignments
            )
        return hidden_states, height, width, all_hidden_states, all_attentions, all_assignments

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_cluster_assignments: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PaCaViTModelOutput | tuple:
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        check_pixel_values(pixel_values, self.config, training=self.training)

        tokens, height, width, hidden_states, attentions, assignments = self.forward_features(
            pixel_values, bool(output_attentions), bool(output_hidden_states), bool(output_cluster_assignments)
        )
        last_hidden_state = hidden_states[-1] if hidden_states else tokens_to_map(tokens, height, width)
        output = PaCaViTModelOutput(
            last_hidden_state=last_hidden_state,
            pooler_output=map_to_tokens(last_hidden_state).mean(dim=1),  # the tokens, as a view of the returned map
            hidden_states=hidden_states or None,
            attentions=attentions or None,
            cluster_assignments=assignments or None,
        )
        return output if return_dict else output.to_tuple()


class PaCaViTForImageClassification(PaCaViTPreTrainedModel):
    """PaCa-ViT with a linear head on the mean of the last-stage tokens (after the last stage LayerNorm)."""

    def __init__(self, config: PaCaViTConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.pacavit = PaCaViTModel(config)
        self.classifier = (
            nn.Linear(config.hidden_sizes[-1], config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_cluster_assignments: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PaCaViTImageClassifierOutput | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.pacavit(
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            output_cluster_assignments=output_cluster_assignments,
            return_dict=True,
        )
        logits = self.classifier(outputs.pooler_output)
        loss = None
        if labels is not None:
            check_classification_labels(labels, logits, self.config)
            loss = self.loss_function(labels, logits, self.config)
        output = PaCaViTImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            cluster_assignments=outputs.cluster_assignments,
        )
        return output if return_dict else output.to_tuple()


class PaCaViTBackbone(BackboneMixin, PaCaViTPreTrainedModel):
    """Multi-scale feature maps (strides 4/8/16/32 after each stage LayerNorm) for dense-prediction heads,
    e.g. transformers' `UperNetForSemanticSegmentation`. `out_features`/`out_indices` pick the stages."""

    def __init__(self, config: PaCaViTConfig) -> None:
        super().__init__(config)
        self.pacavit = PaCaViTModel(config)
        self.num_features = [config.hidden_sizes[0]] + list(config.hidden_sizes)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_cluster_assignments: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PaCaViTBackboneOutput | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        outputs = self.pacavit(
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=True,
            output_cluster_assignments=output_cluster_assignments,
            return_dict=True,
        )
        feature_maps = tuple(
            hidden for name, hidden in zip(self.stage_names, outputs.hidden_states) if name in self.out_features
        )
        output = PaCaViTBackboneOutput(
            feature_maps=feature_maps,
            hidden_states=outputs.hidden_states if output_hidden_states else None,
            attentions=outputs.attentions,
            cluster_assignments=outputs.cluster_assignments,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "check_pixel_values",
    "check_classification_labels",
    "PaCaViTPreTrainedModel",
    "PaCaViTModel",
    "PaCaViTForImageClassification",
    "PaCaViTBackbone",
    "PaCaViTModelOutput",
    "PaCaViTImageClassifierOutput",
    "PaCaViTBackboneOutput",
]

"""PaCa-ViT semantic segmentation: the paper's PaCa head (mmseg `PaCaSegHead`) or UperNet, on the PaCa-ViT backbone.

Re-implemented from the original `segmentation/mmseg_custom` code of iVMCL/PaCaViT (not copied). The UperNet
decode head and its auxiliary FCN head are transformers' own `UperNetHead`/`UperNetFCNHead` (the same computation
as mmseg's `UPerHead`/`FCNHead`), so only the PaCa head is new code here. Logits come at stride 4, like SegFormer,
so transformers' post-processing and the image-segmentation pipeline work unchanged.

Only relative imports between model files, so the folder works as Hub remote code.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.models.upernet.modeling_upernet import UperNetConvModule, UperNetFCNHead, UperNetHead
from transformers.utils import logging

from .configuration_pacavit_segmentation import PaCaViTSegmentationConfig
from .modeling_pacavit import PaCaViTModel, PaCaViTPreTrainedModel, check_pixel_values

try:
    from transformers import initialization as init
except ImportError:  # pragma: no cover - transformers 4.x
    init = nn.init

logger = logging.get_logger(__name__)

# Parameters whose shape depends on the number of clusters: the only backbone layers that may be re-initialised
# when a segmentation model starts from ImageNet weights trained with other cluster counts.
CLUSTER_SHAPED_PARAMETER = re.compile(
    r"(attention\.clustering\.to_clusters\.(weight|bias)|attention\.cluster_position_embeddings"
    r"|clustering_teacher\.to_clusters\.\d+\.(weight|bias))$"
)


@dataclass
class PaCaViTSemanticSegmenterOutput(SemanticSegmenterOutput):
    """`SemanticSegmenterOutput` (loss, logits `(B, num_labels, H/4, W/4)`, hidden_states, attentions) plus:

    Args:
        decode_loss (`torch.FloatTensor`, with `labels`): cross-entropy of the logits upsampled to the labels.
        auxiliary_loss (`torch.FloatTensor`, with `labels`): the unweighted auxiliary loss (PaCa head: cross-entropy
            of the head's cluster logits; UperNet: of the FCN head). `loss = decode_loss + w * auxiliary_loss` with
            `w = config.auxiliary_loss_weight`.
        auxiliary_logits (`torch.FloatTensor`, with `labels`, UperNet only): FCN head logits at the stride of
            `config.auxiliary_stage`.
        cluster_assignments (with `output_cluster_assignments=True`): the backbone's, see `PaCaViTModelOutput`.
        head_cluster_logits (`torch.FloatTensor` `(B, num_labels, H/4, W/4)`, PaCa head, with
            `output_cluster_assignments=True` or `labels`): the head's cluster logits, one cluster per class.
        head_cluster_assignments (same shape, with `output_cluster_assignments=True`): their softmax over the
            positions (each cluster sums to 1 over `H/4 * W/4`), the weights that pool the head's cluster tokens.
    """

    decode_loss: torch.FloatTensor | None = None
    auxiliary_loss: torch.FloatTensor | None = None
    auxiliary_logits: torch.FloatTensor | None = None
    cluster_assignments: tuple[torch.FloatTensor | None, ...] | None = None
    head_cluster_logits: torch.FloatTensor | None = None
    head_cluster_assignments: torch.FloatTensor | None = None


class PaCaViTSegClassifier(nn.Conv2d):
    """mmseg's `cls_seg`: `Dropout2d` then a 1x1 conv. A Conv2d subclass so its keys stay `weight`/`bias`, which
    lets it replace the classifier of transformers' UperNet heads (those have no dropout)."""

    def __init__(self, in_channels: int, num_labels: int, dropout: float) -> None:
        super().__init__(in_channels, num_labels, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return super().forward(self.dropout(hidden_states))


class PaCaViTSegTokenProjection(nn.Module):
    """Linear -> BatchNorm over channels (the cluster index is the BN's length dim) -> ReLU, on `(B, M, C)` tokens:
    the k/v branches of the original head (`nn.SyncBatchNorm` there; `convert_sync_batchnorm` gives it back)."""

    def __init__(self, in_features: int, out_features: int, initial_scale: float = 1.0) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, out_features)
        self.batch_norm = nn.BatchNorm1d(out_features)
        self.batch_norm.initial_scale = initial_scale  # read by _init_weights
        self.activation = nn.ReLU()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.batch_norm(self.dense(tokens).transpose(1, 2)).transpose(1, 2)
        return self.activation(hidden)


class PaCaViTSegHead(nn.Module):
    """The paper's PaCa segmentation head (`PaCaSegHead`), one cluster per class.

    Every stage map -> 1x1 conv-BN-ReLU to `C` channels -> bilinear resize to stride 4 -> concatenation `x` (4C).
    Queries: conv-BN-ReLU of `x`. Cluster logits: conv-BN-ReLU then a 1x1 conv of `x` to `num_labels` channels;
    their softmax over the positions pools `x` into `num_labels` cluster tokens; keys and values are
    Linear-BN-ReLU of those tokens. Single-head attention of every position over the clusters (not scaled, as in
    the original), a conv-BN-ReLU projection, dropout and the 1x1 classifier.
    """

    def __init__(self, config: PaCaViTSegmentationConfig) -> None:
        super().__init__()
        channels = config.decode_head_hidden_size
        concat = channels * len(config.hidden_sizes)
        self.convs = nn.ModuleList(UperNetConvModule(width, channels, kernel_size=1) for width in config.hidden_sizes)
        self.query = UperNetConvModule(concat, channels, kernel_size=1)
        self.cluster_proj = UperNetConvModule(concat, channels, kernel_size=1)
        self.cluster_logits = nn.Conv2d(channels, config.num_labels, kernel_size=1)
        # The attention is not scaled by 1/sqrt(C) (as in the original). With unit BN scales q.k starts large, the
        # softmax over the clusters saturates and every position attends to the same cluster: the logits are
        # spatially constant and training stalls at the class prior (measured on the digit scenes). Starting the
        # keys' BN scale at 1/sqrt(C) is the scaled attention at initialisation; the function family is unchanged
        # and loaded checkpoints overwrite it.
        self.key = PaCaViTSegTokenProjection(concat, channels, initial_scale=channels**-0.5)
        self.value = PaCaViTSegTokenProjection(concat, channels)
        self.proj = UperNetConvModule(channels, channels, kernel_size=1)
        self.classifier = PaCaViTSegClassifier(channels, config.num_labels, config.decode_head_dropout)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the logits and the cluster logits, both `(B, num_labels, H/4, W/4)`."""
        size = features[0].shape[2:]
        # stages 2-4 are always resized to stage 1 (no `if shape != size`: that guard breaks dynamic-shape
        # torch.export, and a same-size bilinear resize with align_corners=False is the identity anyway)
        projected = [self.convs[0](features[0])]
        for conv, feature in zip(self.convs[1:], features[1:]):
            projected.append(F.interpolate(conv(feature), size=size, mode="bilinear", align_corners=False))
        x = torch.cat(projected, dim=1)  # (B, 4C, H, W)
        batch, _, height, width = x.shape

        query = self.query(x).flatten(2).transpose(1, 2)  # (B, N, C)
        cluster_logits = self.cluster_logits(self.cluster_proj(x))  # (B, M, H, W)
        assignment = cluster_logits.flatten(2).softmax(dim=-1)  # (B, M, N): softmax over the positions
        clusters = torch.bmm(assignment, x.flatten(2).transpose(1, 2))  # (B, M, 4C)
        key, value = self.key(clusters), self.value(clusters)  # (B, M, C)
        # one head, scale 1: the original computes softmax(q k^T) v without 1/sqrt(C)
        attended = F.scaled_dot_product_attention(query[:, None], key[:, None], value[:, None], scale=1.0)[:, 0]
        out = attended.transpose(1, 2).reshape(batch, -1, height, width)
        return self.classifier(self.proj(out)), cluster_logits


class PaCaViTUperNetHeads(nn.Module):
    """transformers' `UperNetHead` (+ `UperNetFCNHead` for training) with mmseg's dropout before each classifier."""

    def __init__(self, config: PaCaViTSegmentationConfig) -> None:
        super().__init__()
        # the UperNet heads read only these fields of their config
        head_config = SimpleNamespace(
            pool_scales=list(config.pool_scales),
            hidden_size=config.decode_head_hidden_size,
            num_labels=config.num_labels,
            auxiliary_in_channels=None,
            auxiliary_channels=config.auxiliary_hidden_size,
            auxiliary_num_convs=config.auxiliary_num_convs,
            auxiliary_concat_input=config.auxiliary_concat_input,
        )
        in_channels = list(config.hidden_sizes)
        self.decode_head = UperNetHead(head_config, in_channels=in_channels)
        self.decode_head.classifier = PaCaViTSegClassifier(
            config.decode_head_hidden_size, config.num_labels, config.decode_head_dropout
        )
        self.auxiliary_head = None
        if config.use_auxiliary_head:
            self.auxiliary_head = UperNetFCNHead(
                head_config, in_channels=in_channels, in_index=config.auxiliary_stage - 1
            )
            self.auxiliary_head.classifier = PaCaViTSegClassifier(
                config.auxiliary_hidden_size, config.num_labels, config.decode_head_dropout
            )


class PaCaViTForSemanticSegmentation(PaCaViTPreTrainedModel):
    """PaCa-ViT with a semantic-segmentation head chosen by `config.decode_head_type`: `"paca"` (the paper's head)
    or `"upernet"`. Returns logits at stride 4; with `labels` `(B, H, W)` the loss is the cross-entropy of the
    logits upsampled (bilinear) to the label size plus `config.auxiliary_loss_weight` times the auxiliary loss,
    both ignoring `config.semantic_loss_ignore_index`.

    Starting from ImageNet weights: `from_pretrained_backbone(checkpoint, num_labels=..., num_clusters=...)`.
    """

    config_class = PaCaViTSegmentationConfig
    config: PaCaViTSegmentationConfig

    def __init__(self, config: PaCaViTSegmentationConfig) -> None:
        super().__init__(config)
        if config.num_labels < 2:
            raise ValueError(f"Semantic segmentation needs num_labels >= 2 (got {config.num_labels}).")
        self.pacavit = PaCaViTModel(config)
        self.decode_head = self.auxiliary_head = None
        if config.decode_head_type == "paca":
            self.decode_head = PaCaViTSegHead(config)
        else:
            heads = PaCaViTUperNetHeads(config)
            self.decode_head, self.auxiliary_head = heads.decode_head, heads.auxiliary_head
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, nn.BatchNorm1d):
            init.constant_(module.weight, getattr(module, "initial_scale", 1.0))
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
        elif isinstance(module, PaCaViTSegClassifier):  # mmseg's BaseDecodeHead init of conv_seg
            init.normal_(module.weight, mean=0.0, std=0.01)
            init.zeros_(module.bias)

    def _checked_labels(self, labels: torch.Tensor, batch: int) -> torch.Tensor:
        """`(B, H, W)` integer class maps (a `(B, 1, H, W)` channel dim is dropped); a clear error otherwise."""
        ignore, num_labels = self.config.semantic_loss_ignore_index, self.config.num_labels
        if not isinstance(labels, torch.Tensor) or labels.is_floating_point():
            raise TypeError(
                "labels must be an integer tensor of class indices per pixel, shape (batch, height, width)."
            )
        if labels.ndim == 4 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 3 or labels.shape[0] != batch:
            raise ValueError(
                f"Expected labels of shape (batch={batch}, height, width), got {tuple(labels.shape)}: one class index "
                f"per pixel ({ignore} = ignore)."
            )
        if not torch.compiler.is_compiling():
            invalid = ((labels < 0) | (labels >= num_labels)) & (labels != ignore)
            if invalid.any():
                values = sorted(set(labels[invalid].unique().tolist()))
                raise ValueError(
                    f"labels must be class indices in [0, {num_labels - 1}] or {ignore} (ignored), got {values[:10]}. "
                    "For ADE20K-style masks where 0 means 'other', reduce the labels (do_reduce_labels=True); "
                    "otherwise build the model with the number of classes of your data."
                )
        return labels.long()

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the logits upsampled to the labels, averaged over the labelled pixels (mmseg's
        `avg_non_ignore=True`, PyTorch's `reduction="mean"`). A batch without a labelled pixel (all ignored, e.g. a
        crop of ADE20K's 'other' with `do_reduce_labels`) gives 0, not the NaN of a mean over nothing: finite, with
        zero gradients, and still part of the graph, so DDP and gradient accumulation see every parameter. Summed
        in float32 (a float16 sum over many pixels would overflow)."""
        ignore = self.config.semantic_loss_ignore_index
        upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        per_pixel = F.cross_entropy(upsampled, labels, ignore_index=ignore, reduction="none")  # 0 where ignored
        labelled = (labels != ignore).sum().clamp(min=1)  # a tensor: no device sync, compile-friendly
        return (per_pixel.sum(dtype=torch.float32) / labelled).to(per_pixel.dtype)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_cluster_assignments: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PaCaViTSemanticSegmenterOutput | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        check_pixel_values(pixel_values, self.config, training=self.training)
        if labels is not None:
            labels = self._checked_labels(labels, pixel_values.shape[0])
        outputs = self.pacavit(
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=True,
            output_cluster_assignments=output_cluster_assignments,
            return_dict=True,
        )
        features = list(outputs.hidden_states[1:])  # the four stage maps, strides 4/8/16/32

        cluster_logits = auxiliary_logits = None
        if self.config.decode_head_type == "paca":
            logits, cluster_logits = self.decode_head(features)
        else:
            logits = self.decode_head(features)

        loss = decode_loss = auxiliary_loss = None
        if labels is not None:
            decode_loss = self._loss(logits, labels)
            if cluster_logits is not None:
                auxiliary_loss = self._loss(cluster_logits, labels)
            elif self.auxiliary_head is not None:
                auxiliary_logits = self.auxiliary_head(features)
                auxiliary_loss = self._loss(auxiliary_logits, labels)
            loss = decode_loss
            if auxiliary_loss is not None:
                loss = decode_loss + self.config.auxiliary_loss_weight * auxiliary_loss

        want_clusters = bool(output_cluster_assignments)
        output = PaCaViTSemanticSegmenterOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states if output_hidden_states else None,
            attentions=outputs.attentions,
            decode_loss=decode_loss,
            auxiliary_loss=auxiliary_loss,
            auxiliary_logits=auxiliary_logits,
            cluster_assignments=outputs.cluster_assignments,
            head_cluster_logits=cluster_logits if (want_clusters or labels is not None) else None,
            head_cluster_assignments=(
                cluster_logits.flatten(2).softmax(-1).view_as(cluster_logits)
                if want_clusters and cluster_logits is not None
                else None
            ),
        )
        return output if return_dict else output.to_tuple()

    @classmethod
    def from_pretrained_backbone(cls, pretrained_model_name_or_path, **config_overrides):
        """A segmentation model whose backbone comes from a PaCa-ViT checkpoint (e.g. an ImageNet classifier), with
        new heads. Backbone layers whose shape the new config changes (the cluster-logit layers when `num_clusters`
        differs, like the original's `downstream_cluster_num`) are re-initialised, and the log names each; any other
        mismatch is an error. The names are also in `model.reinitialized_backbone_keys`.

            model = PaCaViTForSemanticSegmentation.from_pretrained_backbone(
                "ivmcl/pacavit-tiny", num_labels=150, num_clusters=[200, 200, 200, 0], decode_head_type="paca")
        """
        config = PaCaViTSegmentationConfig.from_pretrained(pretrained_model_name_or_path, **config_overrides)
        # PreTrainedModel.from_pretrained logs the mismatched keys itself at warning level; we report them below
        model, info = cls.from_pretrained(
            pretrained_model_name_or_path, config=config, ignore_mismatched_sizes=True, output_loading_info=True
        )
        mismatched = sorted(info["mismatched_keys"])
        wrong = [key for key, *_ in mismatched if not CLUSTER_SHAPED_PARAMETER.search(key)]
        if wrong:
            raise ValueError(
                f"The checkpoint {pretrained_model_name_or_path!r} does not fit this architecture beyond the cluster "
                f"counts: {wrong[:8]} differ in shape. Use the preset the checkpoint was trained with."
            )
        backbone_missing = [k for k in info["missing_keys"] if k.startswith("pacavit.")]
        if backbone_missing:
            raise ValueError(f"The checkpoint lacks backbone weights: {backbone_missing[:8]}.")
        model.reinitialized_backbone_keys = [key for key, *_ in mismatched]
        if mismatched:
            logger.warning(
                "Re-initialised %d clustering layer(s) whose shape changed with num_clusters=%s:\n  %s",
                len(mismatched),
                config.num_clusters,
                "\n  ".join(f"{key}: checkpoint {tuple(old)} -> model {tuple(new)}" for key, old, new in mismatched),
            )
        return model


@torch.no_grad()
def slide_inference(model, pixel_values: torch.Tensor, crop_size: int, stride: int | None = None) -> torch.Tensor:
    """mmseg's slide inference (`test_cfg=dict(mode="slide")`): `model` (anything returning `.logits`, e.g. a
    `PaCaViTForSemanticSegmentation`, also wrapped for DDP) runs on overlapping `crop_size` windows `stride` apart
    (default 2/3 of the crop, mmseg's 341 for 512); each window's logits are upsampled to the window and the
    overlaps averaged. Returns logits `(B, num_labels, H, W)` at the input's resolution."""
    stride = stride or crop_size * 2 // 3
    batch, _, height, width = pixel_values.shape
    rows = max(math.ceil((height - crop_size) / stride), 0) + 1
    cols = max(math.ceil((width - crop_size) / stride), 0) + 1
    summed = count = None
    for row in range(rows):
        for col in range(cols):
            top, left = (min(row * stride, max(height - crop_size, 0)), min(col * stride, max(width - crop_size, 0)))
            bottom, right = min(top + crop_size, height), min(left + crop_size, width)
            logits = model(pixel_values[:, :, top:bottom, left:right]).logits
            if summed is None:
                summed = logits.new_zeros(batch, logits.shape[1], height, width)
                count = logits.new_zeros(1, 1, height, width)
            window = (slice(None), slice(None), slice(top, bottom), slice(left, right))
            summed[window] += F.interpolate(
                logits, size=(bottom - top, right - left), mode="bilinear", align_corners=False
            )
            count[window] += 1
    return summed / count


__all__ = [
    "slide_inference",
    "PaCaViTForSemanticSegmentation",
    "PaCaViTSemanticSegmenterOutput",
    "PaCaViTSegHead",
    "CLUSTER_SHAPED_PARAMETER",
]

"""Configuration of PaCa-ViT semantic segmentation models (the paper's PaCa head, or UperNet).

A `PaCaViTConfig` (the backbone, all its fields at the top level) plus the decode-head fields, so one config class
and one model class (`PaCaViTForSemanticSegmentation`) cover both heads of the original mmseg configs: one Auto
registration, one `auto_map` entry for Hub remote code, and the pipeline finds either head the same way.
"""

from __future__ import annotations

from .configuration_pacavit import PaCaViTConfig

DECODE_HEAD_TYPES = ("paca", "upernet")
# Channels of each head in the original ADE20K configs (paca_head.py: 256, upernet_swin.py: 512).
DEFAULT_DECODE_HEAD_HIDDEN_SIZE = {"paca": 256, "upernet": 512}


class PaCaViTSegmentationConfig(PaCaViTConfig):
    r"""Configuration of `PaCaViTForSemanticSegmentation`: every `PaCaViTConfig` argument, plus:

    Args:
        decode_head_type (`str`, defaults to `"paca"`): `"paca"`, the paper's Patch-to-Cluster attention head
            (mmseg `PaCaSegHead` in `PaCaEncoderDecoder`), or `"upernet"` (mmseg `UPerHead`, built from
            transformers' `UperNetHead`) with an optional auxiliary FCN head.
        decode_head_hidden_size (`int`, *optional*): channels of the decode head; 256 for `"paca"` and 512 for
            `"upernet"` when not given (the original configs).
        decode_head_dropout (`float`, defaults to 0.1): channel dropout (`Dropout2d`) before the 1x1 classifier.
        pool_scales (`list[int]`, defaults to `[1, 2, 3, 6]`): UperNet's pyramid pooling scales.
        use_auxiliary_head (`bool`, defaults to `True`): UperNet only: the auxiliary FCN head used for training.
        auxiliary_stage (`int`, defaults to 3): the stage (1-based) the auxiliary FCN head reads (the original
            `in_index=2`).
        auxiliary_hidden_size (`int`, defaults to 256), auxiliary_num_convs (`int`, defaults to 1),
        auxiliary_concat_input (`bool`, defaults to `False`): the FCN head's channels, 3x3 convs and input concat.
        auxiliary_loss_weight (`float`, defaults to 0.4): weight of the auxiliary loss in `loss`: the cross-entropy
            of the PaCa head's cluster logits (one cluster per class) or of the UperNet FCN head's logits, both
            resized to the labels (0.4 in both original configs).
        semantic_loss_ignore_index (`int`, defaults to 255): label value ignored by both losses.
    """

    model_type = "pacavit_segmentation"

    def __init__(
        self,
        decode_head_type: str = "paca",
        decode_head_hidden_size: int | None = None,
        decode_head_dropout: float = 0.1,
        pool_scales=(1, 2, 3, 6),
        use_auxiliary_head: bool = True,
        auxiliary_stage: int = 3,
        auxiliary_hidden_size: int = 256,
        auxiliary_num_convs: int = 1,
        auxiliary_concat_input: bool = False,
        auxiliary_loss_weight: float = 0.4,
        semantic_loss_ignore_index: int = 255,
        **kwargs,
    ):
        if decode_head_type not in DECODE_HEAD_TYPES:
            raise ValueError(
                f"Unknown decode_head_type {decode_head_type!r}; choose one of {', '.join(DECODE_HEAD_TYPES)}."
            )
        self.decode_head_type = decode_head_type
        self.decode_head_hidden_size = int(
            decode_head_hidden_size or DEFAULT_DECODE_HEAD_HIDDEN_SIZE[decode_head_type]
        )
        self.decode_head_dropout = decode_head_dropout
        self.pool_scales = list(pool_scales)
        self.use_auxiliary_head = use_auxiliary_head
        self.auxiliary_stage = auxiliary_stage
        self.auxiliary_hidden_size = auxiliary_hidden_size
        self.auxiliary_num_convs = auxiliary_num_convs
        self.auxiliary_concat_input = auxiliary_concat_input
        self.auxiliary_loss_weight = auxiliary_loss_weight
        self.semantic_loss_ignore_index = semantic_loss_ignore_index
        super().__init__(**kwargs)
        if not 1 <= auxiliary_stage <= self.num_stages:
            raise ValueError(f"auxiliary_stage={auxiliary_stage} must name a stage between 1 and {self.num_stages}.")


__all__ = ["PaCaViTSegmentationConfig", "DECODE_HEAD_TYPES", "DEFAULT_DECODE_HEAD_HIDDEN_SIZE"]

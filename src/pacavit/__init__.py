"""PaCa-ViT for Hugging Face Transformers.

Importing this package registers the model with the Auto classes (AutoConfig, AutoModel,
AutoModelForImageClassification, AutoBackbone), so `AutoModel.from_pretrained(folder)` works.
"""

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForImageSegmentation,
    AutoModelForInstanceSegmentation,
    AutoModelForObjectDetection,
    AutoModelForSemanticSegmentation,
)

from .configuration_pacavit import ORIGINAL_NAMES, PRESETS, PaCaViTConfig, list_presets, resolve_preset_name
from .configuration_pacavit_maskrcnn import PaCaViTMaskRCNNConfig
from .configuration_pacavit_segmentation import PaCaViTSegmentationConfig
from .image_processing_pacavit_maskrcnn import PaCaViTMaskRCNNImageProcessor
from .modeling_pacavit import (
    PaCaViTBackbone,
    PaCaViTBackboneOutput,
    PaCaViTForImageClassification,
    PaCaViTImageClassifierOutput,
    PaCaViTModel,
    PaCaViTModelOutput,
    PaCaViTPreTrainedModel,
)
from .modeling_pacavit_maskrcnn import PaCaViTForInstanceSegmentation, PaCaViTInstanceSegmentationOutput
from .modeling_pacavit_segmentation import PaCaViTForSemanticSegmentation, PaCaViTSemanticSegmenterOutput

__version__ = "0.1.0"

AutoConfig.register(PaCaViTConfig.model_type, PaCaViTConfig, exist_ok=True)
AutoModel.register(PaCaViTConfig, PaCaViTModel, exist_ok=True)
AutoModelForImageClassification.register(PaCaViTConfig, PaCaViTForImageClassification, exist_ok=True)
AutoBackbone.register(PaCaViTConfig, PaCaViTBackbone, exist_ok=True)
# semantic segmentation (PaCa head or UperNet); saved folders carry their code (Hub remote code, auto_map)
AutoConfig.register(PaCaViTSegmentationConfig.model_type, PaCaViTSegmentationConfig, exist_ok=True)
AutoModelForSemanticSegmentation.register(PaCaViTSegmentationConfig, PaCaViTForSemanticSegmentation, exist_ok=True)
PaCaViTSegmentationConfig.register_for_auto_class()
PaCaViTForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
# Mask R-CNN (detection + instance segmentation; needs the `detection` extra: torchvision)
AutoConfig.register(PaCaViTMaskRCNNConfig.model_type, PaCaViTMaskRCNNConfig, exist_ok=True)
for _auto in (AutoModelForObjectDetection, AutoModelForInstanceSegmentation, AutoModelForImageSegmentation):
    _auto.register(PaCaViTMaskRCNNConfig, PaCaViTForInstanceSegmentation, exist_ok=True)
AutoImageProcessor.register(  # the same torch-only class for both backends
    PaCaViTMaskRCNNConfig,
    image_processor_classes={"pil": PaCaViTMaskRCNNImageProcessor, "torchvision": PaCaViTMaskRCNNImageProcessor},
    exist_ok=True,
)
PaCaViTMaskRCNNConfig.register_for_auto_class()
PaCaViTForInstanceSegmentation.register_for_auto_class("AutoModelForInstanceSegmentation")
PaCaViTMaskRCNNImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "PaCaViTConfig",
    "PaCaViTModel",
    "PaCaViTForImageClassification",
    "PaCaViTBackbone",
    "PaCaViTPreTrainedModel",
    "PaCaViTModelOutput",
    "PaCaViTImageClassifierOutput",
    "PaCaViTBackboneOutput",
    "PaCaViTSegmentationConfig",
    "PaCaViTForSemanticSegmentation",
    "PaCaViTSemanticSegmenterOutput",
    "PaCaViTMaskRCNNConfig",
    "PaCaViTForInstanceSegmentation",
    "PaCaViTInstanceSegmentationOutput",
    "PaCaViTMaskRCNNImageProcessor",
    "PRESETS",
    "ORIGINAL_NAMES",
    "list_presets",
    "resolve_preset_name",
]

# timm entry points (`timm.create_model("pacavit_tiny")`, see timm_pacavit); timm stays optional for the
# transformers models, so registration is skipped when it is not installed.
try:
    import timm  # noqa: F401
except ImportError:  # pragma: no cover - timm not installed
    pass
else:
    from . import timm_pacavit  # noqa: F401

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
"""transformers' own common model tests (ModelTesterMixin, ConfigTester, BackboneTesterMixin) run against every
PaCa-ViT model class, with a per-model tester in the pattern of transformers' tests/models/pvt_v2.

Opt-in: the mixins come from the `tests/` folder of the transformers source distribution of the installed version,
given by $TRANSFORMERS_TESTS_DIR (`tests/transformers_common/run.sh` downloads it and runs this file). Without it,
everything here is skipped, saying so. The project's default suite tests the same behaviour offline.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import tempfile
import types
import unittest
from pathlib import Path

import pytest

TESTS_DIR = os.environ.get("TRANSFORMERS_TESTS_DIR")
if not TESTS_DIR or not Path(TESTS_DIR, "test_modeling_common.py").exists():
    pytest.skip(
        "transformers' common tests need $TRANSFORMERS_TESTS_DIR = the tests/ folder of the transformers sdist of the "
        "installed version; run tests/transformers_common/run.sh",
        allow_module_level=True,
    )
pytest.importorskip("parameterized", reason="transformers' common tests need `pip install parameterized`")

import torch  # noqa: E402
from transformers import __version__ as transformers_version  # noqa: E402
from transformers.testing_utils import torch_device  # noqa: E402


def _import_transformers_tests():
    """Import the sdist's tests/ folder as package `transformers_tests` (its modules use relative imports). The
    sdist lacks three helper modules its common tests import (tests/exporters, tests/generation, tests/utils);
    `shims/` supplies stand-ins for them, found only where the given folder has none."""
    package = types.ModuleType("transformers_tests")
    package.__path__ = [str(Path(TESTS_DIR).resolve()), str(Path(__file__).parent / "shims")]
    sys.modules["transformers_tests"] = package
    modeling = importlib.import_module("transformers_tests.test_modeling_common")
    configuration = importlib.import_module("transformers_tests.test_configuration_common")
    backbone = importlib.import_module("transformers_tests.test_backbone_common")
    return modeling, configuration, backbone


_modeling, _configuration, _backbone = _import_transformers_tests()
ModelTesterMixin, floats_tensor, ids_tensor = (
    _modeling.ModelTesterMixin,
    _modeling.floats_tensor,
    _modeling.ids_tensor,
)
ConfigTester = _configuration.ConfigTester
BackboneTesterMixin = _backbone.BackboneTesterMixin

from pacavit import (  # noqa: E402
    PaCaViTBackbone,
    PaCaViTConfig,
    PaCaViTForImageClassification,
    PaCaViTModel,
)

try:  # engineer B's segmentation model, tested here once it exists
    from pacavit import PaCaViTForSemanticSegmentation, PaCaViTSegmentationConfig
except ImportError:  # pragma: no cover - not landed
    PaCaViTForSemanticSegmentation = PaCaViTSegmentationConfig = None


# The mixins tell base models, backbones and heads apart (which take labels, which are skipped in training tests)
# by class name, in transformers' own name mappings; ours are added to them while these tests run.
_NAME_MAPPINGS = {
    "MODEL_MAPPING_NAMES": "PaCaViTModel",
    "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES": "PaCaViTForImageClassification",
    "MODEL_FOR_BACKBONE_MAPPING_NAMES": "PaCaViTBackbone",
    "MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES": "PaCaViTForSemanticSegmentation",
}
COMMON_PROPERTIES = ["hidden_sizes", "depths", "num_attention_heads", "num_channels"]


@pytest.fixture(autouse=True, scope="module")
def _our_class_names_in_transformers_mappings():
    from transformers.models.auto import modeling_auto

    for mapping, name in _NAME_MAPPINGS.items():
        getattr(modeling_auto, mapping)["pacavit"] = name
    yield
    for mapping in _NAME_MAPPINGS:
        getattr(modeling_auto, mapping).pop("pacavit", None)


class PaCaViTModelTester:
    """Builds tiny PaCa-ViT configs and inputs for the common tests (4 stages, 8 clusters in stages 1-3, plain
    self-attention in stage 4; `teacher=True` uses the ConvMixer clustering teacher instead)."""

    def __init__(
        self,
        parent,
        batch_size=2,
        image_size=64,
        num_channels=3,
        hidden_sizes=(16, 32, 48, 64),
        depths=(1, 1, 2, 1),
        num_attention_heads=(1, 2, 2, 4),
        num_clusters=(8, 8, 8, 0),
        teacher=False,
        out_features=("stage1", "stage2", "stage3", "stage4"),
        is_training=True,
        use_labels=True,
        num_labels=3,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = image_size
        self.num_channels = num_channels
        self.hidden_sizes = list(hidden_sizes)
        self.depths = list(depths)
        self.num_attention_heads = list(num_attention_heads)
        self.num_clusters = [8, 8, 8, 8] if teacher else list(num_clusters)
        self.teacher = teacher
        self.out_features = list(out_features)
        self.out_indices = [1, 2, 3, 4]  # positions of out_features in stage_names (index 0 is the stem)
        self.is_training = is_training
        self.use_labels = use_labels
        self.num_labels = num_labels
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.expected_num_hidden_layers = len(self.depths) + 1  # stem + every stage

    def get_config(self):
        return PaCaViTConfig(
            num_channels=self.num_channels,
            hidden_sizes=self.hidden_sizes,
            depths=self.depths,
            num_attention_heads=self.num_attention_heads,
            num_clusters=self.num_clusters,
            use_clustering_teacher=self.teacher,
            teacher_depths=[1] * len(self.depths),
            hidden_dropout_prob=self.hidden_dropout_prob,
            attention_probs_dropout_prob=self.attention_probs_dropout_prob,
            num_labels=self.num_labels,
            out_features=self.out_features,
            image_size=self.image_size,
        )

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        labels = ids_tensor([self.batch_size], self.num_labels) if self.use_labels else None
        return self.get_config(), pixel_values, labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}

    def grid(self, stage: int) -> int:
        """Side of the stage's feature map (stage 0 = stem, stride 4) for the tester's square input."""
        stride = 4 * 2 ** max(stage - 1, 0)
        return -(-self.image_size // stride)

    def create_and_check_model(self, config, pixel_values, labels):
        model = PaCaViTModel(config).to(torch_device).eval()
        with torch.no_grad():
            result = model(pixel_values)
        side = self.grid(len(self.depths))
        self.parent.assertEqual(result.last_hidden_state.shape, (self.batch_size, self.hidden_sizes[-1], side, side))
        self.parent.assertEqual(result.pooler_output.shape, (self.batch_size, self.hidden_sizes[-1]))

    def create_and_check_for_image_classification(self, config, pixel_values, labels):
        model = PaCaViTForImageClassification(config).to(torch_device).eval()
        with torch.no_grad():
            result = model(pixel_values, labels=labels)
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.num_labels))
        self.parent.assertTrue(torch.isfinite(result.loss))

    def create_and_check_backbone(self, config, pixel_values, labels):
        model = PaCaViTBackbone(config).to(torch_device).eval()
        with torch.no_grad():
            result = model(pixel_values)
        self.parent.assertEqual(len(result.feature_maps), len(config.out_features))
        for feature_map, index, channels in zip(result.feature_maps, self.out_indices, model.channels):
            side = self.grid(index)
            self.parent.assertEqual(feature_map.shape, (self.batch_size, channels, side, side))


class PaCaViTCommonTests(ModelTesterMixin):
    """The overrides every PaCa-ViT model class needs (pixel inputs, feature-map hidden states, per-block
    patch-to-cluster attentions); the concrete test classes below pick the model classes and the tester."""

    model_tester_kwargs: dict = {}

    test_resize_embeddings = False  # no token embeddings
    has_attentions = True  # patch-to-cluster attention weights, (batch, heads, patches, clusters) per block

    def setUp(self):
        self.model_tester = PaCaViTModelTester(self, **self.model_tester_kwargs)
        self.config_tester = ConfigTester(
            self,
            config_class=PaCaViTConfig,
            has_text_modality=False,
            common_properties=COMMON_PROPERTIES,
            hidden_sizes=[16, 32, 48, 64],
            depths=[1, 1, 2, 1],
            num_attention_heads=[1, 2, 2, 4],
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_forward_signature(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            arg_names = list(inspect.signature(model_class(config).forward).parameters)
            self.assertEqual(arg_names[:1], ["pixel_values"])

    def test_hidden_states_output(self):
        # our hidden states are feature maps (batch, channels, height, width): the stem and every stage
        def check(inputs_dict, config, model_class):
            model = model_class(config).to(torch_device).eval()
            with torch.no_grad():
                outputs = model(**self._prepare_for_class(inputs_dict, model_class))
            hidden_states = outputs.hidden_states
            self.assertEqual(len(hidden_states), self.model_tester.expected_num_hidden_layers)
            widths = [self.model_tester.hidden_sizes[0]] + self.model_tester.hidden_sizes
            for stage, (hidden, width) in enumerate(zip(hidden_states, widths)):
                side = self.model_tester.grid(stage)
                self.assertEqual(list(hidden.shape), [self.model_tester.batch_size, width, side, side])

        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            inputs_dict["output_hidden_states"] = True
            check(inputs_dict, config, model_class)
            del inputs_dict["output_hidden_states"]
            config.output_hidden_states = True  # from the config as well
            check(inputs_dict, config, model_class)
            config.output_hidden_states = False

    def test_attention_outputs(self):
        # one attention tensor per block: (batch, heads, patches, clusters), or (batch, heads, patches, patches)
        # in stages without clusters
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        tester = self.model_tester
        expected = []
        for stage, depth in enumerate(tester.depths):
            patches = tester.grid(stage + 1) ** 2
            keys = tester.num_clusters[stage] or patches
            expected += [[tester.batch_size, tester.num_attention_heads[stage], patches, keys]] * depth
        for model_class in self.all_model_classes:
            for from_config in (False, True):
                config._attn_implementation = "eager"  # the config may only ask for weights with eager attention
                config.output_attentions = from_config
                inputs = self._prepare_for_class(inputs_dict, model_class)
                if not from_config:
                    inputs["output_attentions"] = True
                model = model_class(config).to(torch_device).eval()
                with torch.no_grad():
                    outputs = model(**inputs)
                self.assertEqual([list(a.shape) for a in outputs.attentions], expected)
                self.assertTrue(all(torch.allclose(a.sum(-1), torch.ones_like(a.sum(-1))) for a in outputs.attentions))
            config.output_attentions = False

    @unittest.skip(reason="PaCa-ViT takes pixel values and has no inputs_embeds")
    def test_inputs_embeds(self):
        pass

    @unittest.skip(reason="PaCa-ViT takes pixel values and has no inputs_embeds")
    def test_inputs_embeds_matches_input_ids(self):
        pass

    @unittest.skip(reason="PaCa-ViT has no token embeddings (get_input_embeddings / get_output_embeddings)")
    def test_model_get_set_embeddings(self):
        pass


class PaCaViTModelTest(PaCaViTCommonTests, unittest.TestCase):
    all_model_classes = (PaCaViTModel, PaCaViTForImageClassification, PaCaViTBackbone)

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    def test_for_image_classification(self):
        self.model_tester.create_and_check_for_image_classification(*self.model_tester.prepare_config_and_inputs())

    def test_backbone(self):
        self.model_tester.create_and_check_backbone(*self.model_tester.prepare_config_and_inputs())


class PaCaViTTeacherModelTest(PaCaViTModelTest):
    """The same tests on the ConvMixer clustering-teacher variant (BatchNorm, clusters in every stage)."""

    model_tester_kwargs = {"teacher": True}


class PaCaViTBackboneTest(BackboneTesterMixin, unittest.TestCase):
    all_model_classes = (PaCaViTBackbone,)
    config_class = PaCaViTConfig
    has_attentions = True

    def setUp(self):
        self.model_tester = PaCaViTModelTester(self)

    def test_config(self):
        # the mixin's own test assumes stage_names without a stem; ours are ["stem", "stage1", ..., "stage4"]
        # (like ConvNext/Swin/ResNet), so index 0 is the stem
        config = self.config_class()
        self.assertEqual(config.stage_names, ["stem", "stage1", "stage2", "stage3", "stage4"])
        self.assertEqual(config.out_features, ["stage4"])
        self.assertEqual(config.out_indices, [4])
        config = self.config_class(out_features=["stem", "stage1"], out_indices=[0, 1])
        self.assertEqual((config.out_features, config.out_indices), (["stem", "stage1"], [0, 1]))
        config = self.config_class(out_features=["stage1", "stage3"])
        self.assertEqual(config.out_indices, [1, 3])
        config = self.config_class(out_indices=[0, 2])
        self.assertEqual(config.out_features, ["stem", "stage2"])
        with self.assertRaises(ValueError):
            self.config_class(out_features=["stage1", "stage2"], out_indices=[0, 2])

    def test_config_save_pretrained(self):
        config = self.config_class(out_indices=[1, 2, 3, 4])
        with tempfile.TemporaryDirectory() as folder:
            config.save_pretrained(folder)
            self.assertEqual(self.config_class.from_pretrained(folder).to_dict(), config.to_dict())


if PaCaViTForSemanticSegmentation is not None:

    class PaCaViTSegmentationModelTester(PaCaViTModelTester):
        def __init__(self, parent, decode_head_type="paca", **kwargs):
            super().__init__(parent, **kwargs)
            self.decode_head_type = decode_head_type

        def get_config(self):
            backbone = super().get_config()
            return PaCaViTSegmentationConfig.from_backbone_config(
                backbone,
                num_labels=backbone.num_labels,
                decode_head_type=self.decode_head_type,
                decode_head_hidden_size=16,
                auxiliary_hidden_size=8,
            )

    class PaCaViTForSemanticSegmentationTest(PaCaViTCommonTests, unittest.TestCase):
        all_model_classes = (PaCaViTForSemanticSegmentation,)
        model_tester_kwargs = {"decode_head_type": "paca"}

        def setUp(self):
            self.model_tester = PaCaViTSegmentationModelTester(self, **self.model_tester_kwargs)
            self.config_tester = ConfigTester(
                self,
                config_class=PaCaViTSegmentationConfig,
                has_text_modality=False,
                common_properties=COMMON_PROPERTIES,
            )

        def test_for_semantic_segmentation(self):
            config, pixel_values, _ = self.model_tester.prepare_config_and_inputs()
            tester = self.model_tester
            labels = ids_tensor([tester.batch_size, tester.image_size, tester.image_size], tester.num_labels)
            model = PaCaViTForSemanticSegmentation(config).to(torch_device).eval()
            with torch.no_grad():
                result = model(pixel_values, labels=labels)
            side = tester.grid(1)  # logits at stride 4
            self.assertEqual(result.logits.shape, (tester.batch_size, tester.num_labels, side, side))
            self.assertTrue(torch.isfinite(result.loss))

    class PaCaViTForSemanticSegmentationUperNetTest(PaCaViTForSemanticSegmentationTest):
        model_tester_kwargs = {"decode_head_type": "upernet"}


def test_transformers_version_of_the_tests_matches_the_installed_one():
    """The mixins must come from the installed version's sdist (other versions test other behaviour)."""
    setup = Path(TESTS_DIR).resolve().parent / "setup.py"
    if not setup.exists():
        pytest.skip(f"{TESTS_DIR} is not inside an unpacked sdist (no setup.py beside it)")
    assert f'version="{transformers_version}"' in setup.read_text(), (
        f"{TESTS_DIR} is not the sdist of the installed transformers {transformers_version}"
    )

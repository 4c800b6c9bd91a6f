"""Stand-in for transformers' tests/exporters/test_export.py (not in the sdist), the base of ModelTesterMixin.

The real mixin drives transformers' exporters (dynamo, ONNX, ExecuTorch, ...) over every model class. This
stand-in keeps the part that applies to a vision model without optional exporters: `torch.export` of every model
class in eval mode, with static and with dynamic batch/height/width, giving the eager outputs.
"""

import copy

import torch


class ExportTesterMixin:
    test_torch_exportable = True

    def _export_inputs(self, model_class):
        _, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        return self._prepare_for_class(inputs_dict, model_class)["pixel_values"]

    def _check_export(self, dynamic: bool):
        if not self.test_torch_exportable:
            self.skipTest(reason="test_torch_exportable is False for this model")
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(copy.deepcopy(config)).eval()
            pixel_values = self._export_inputs(model_class)
            dynamic_shapes = None
            if dynamic:  # sizes whose stride-32 map has at least two positions per side
                dims = {
                    0: torch.export.Dim("batch", max=64),
                    2: torch.export.Dim("height", min=33, max=1024),
                    3: torch.export.Dim("width", min=33, max=1024),
                }
                dynamic_shapes = {"pixel_values": dims}
            with torch.no_grad():
                exported = torch.export.export(model, (pixel_values,), dynamic_shapes=dynamic_shapes).module()
                other = pixel_values if not dynamic else torch.randn(3, pixel_values.shape[1], 65, 97)
                expected = model(other).to_tuple()
                actual = exported(other).to_tuple()
            for left, right in zip(torch.utils._pytree.tree_leaves(expected), torch.utils._pytree.tree_leaves(actual)):
                torch.testing.assert_close(left, right, atol=1e-4, rtol=1e-4)

    def test_torch_export_static(self):
        self._check_export(dynamic=False)

    def test_torch_export_dynamic(self):
        self._check_export(dynamic=True)

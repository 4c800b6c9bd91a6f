import copy

import pytest
import torch
from transformers import AutoBackbone, AutoConfig, AutoModel, AutoModelForImageClassification

from pacavit import PaCaViTBackbone, PaCaViTConfig, PaCaViTForImageClassification, PaCaViTModel

from helpers import tiny_config

# Every architectural switch of the original, at tiny widths.
VARIANTS = {
    "conv-stagewise": dict(),
    "mlp": dict(clustering_type="mlp"),
    "linear": dict(clustering_type="linear"),
    "blockwise": dict(num_clusters=[8, 8, 8, 8], clustering_schedule=[1, 1, 1, 1]),
    "every-2": dict(depths=[3, 1, 3, 1], clustering_schedule=[2, 2, 2, 2]),
    "teacher": dict(use_clustering_teacher=True, num_clusters=[8, 8, 8, 8], teacher_depths=[1, 1, 1, 1]),
    "teacher-last-stage-plain": dict(
        use_clustering_teacher=True, num_clusters=[8, 8, 8, 0], teacher_depths=[1, 1, 1, 1]
    ),
    "position-embeddings": dict(
        use_absolute_position_embeddings=True, image_size=64, cluster_position_embeddings=True
    ),
    "layer-scale-post-norm": dict(layer_scale_init_value=1e-5, norm_placement="post"),
    "sub-norm-no-shortcut": dict(norm_placement="sub", mlp_dwconv_shortcut=False, cluster_layer_norm=False),
    "no-dwconv": dict(mlp_dwconv=False),
}


def build(cls=PaCaViTForImageClassification, variant="conv-stagewise", **overrides):
    config = tiny_config(**{"num_clusters": [8, 8, 8, 0], **VARIANTS[variant], **overrides})
    return cls(config).eval()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", [(64, 64), (97, 131)])
def test_forward_shapes_any_input_size(variant, size):
    model = build(PaCaViTModel, variant)
    pixel_values = torch.randn(2, 3, *size)
    out = model(pixel_values, output_hidden_states=True)
    strides = [4, 4, 8, 16, 32]
    widths = [16, 16, 32, 48, 64]
    assert len(out.hidden_states) == 5
    for hidden, stride, width in zip(out.hidden_states, strides, widths):
        # stride-2 convs with padding 1 round up
        expected = tuple(-(-s // stride) for s in size)
        assert hidden.shape == (2, width, *expected)
    assert torch.equal(out.last_hidden_state, out.hidden_states[-1])
    assert torch.allclose(out.pooler_output, out.last_hidden_state.mean(dim=(2, 3)), atol=1e-6)
    assert torch.isfinite(out.last_hidden_state).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_eager_matches_sdpa(variant):
    sdpa = build(variant=variant)
    eager = PaCaViTForImageClassification._from_config(copy.deepcopy(sdpa.config), attn_implementation="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    assert sdpa.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    pixel_values = torch.randn(2, 3, 72, 56)
    with torch.no_grad():
        torch.testing.assert_close(sdpa(pixel_values).logits, eager(pixel_values).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["conv-stagewise", "teacher", "blockwise"])
def test_every_parameter_receives_a_gradient(variant):
    model = build(variant=variant).train()
    out = model(torch.randn(2, 3, 64, 64), labels=torch.tensor([0, 3]))
    out.loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no gradient for {missing}"
    assert all(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("variant", ["conv-stagewise", "teacher"])
def test_activation_checkpointing_gives_identical_gradients(variant):
    torch.manual_seed(0)
    model = build(variant=variant).train()
    pixel_values, labels = torch.randn(2, 3, 64, 64), torch.tensor([1, 2])

    def gradients():
        torch.manual_seed(1)  # same stochastic-depth draws in both runs
        model.zero_grad()
        model(pixel_values, labels=labels).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    plain = gradients()
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing
    checkpointed = gradients()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=0, rtol=0, msg=name)


def test_stochastic_depth_and_dropout_only_act_in_training():
    model = build(drop_path_rate=0.5, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)
    pixel_values = torch.randn(2, 3, 64, 64)
    assert torch.equal(model(pixel_values).logits, model(pixel_values).logits)
    model.train()
    torch.manual_seed(1)
    first = model(pixel_values).logits
    torch.manual_seed(2)
    assert not torch.allclose(first, model(pixel_values).logits)


def test_classifier_loss_and_return_dict_false():
    model = build()
    pixel_values, labels = torch.randn(3, 3, 64, 64), torch.tensor([0, 1, 4])
    out = model(pixel_values, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits, labels)
    torch.testing.assert_close(out.loss, expected)
    as_tuple = model(pixel_values, labels=labels, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], out.loss)
    torch.testing.assert_close(as_tuple[1], out.logits)


def test_wrong_channel_count_is_explained():
    model = build()
    with pytest.raises(
        ValueError, match=r"Expected pixel_values of shape \(batch, 3, height, width\), got \(1, 1, 64, 64\)"
    ):
        model(torch.randn(1, 1, 64, 64))


def test_attentions_and_cluster_assignments_on_request_only():
    model = build(variant="teacher")  # sdpa by default: weights come from the eager path for that call
    pixel_values = torch.randn(2, 3, 64, 64)
    plain = model(pixel_values)
    assert plain.attentions is None and plain.cluster_assignments is None and plain.hidden_states is None
    out = model(pixel_values, output_attentions=True, output_cluster_assignments=True)
    assert len(out.attentions) == sum(model.config.depths) == len(out.cluster_assignments)
    first = out.attentions[0]
    assert first.shape == (2, 1, 16 * 16, 8)
    torch.testing.assert_close(first.sum(-1), torch.ones_like(first.sum(-1)))
    assignment = out.cluster_assignments[0]
    assert assignment.shape == (2, 8, 16, 16)
    torch.testing.assert_close(assignment.sum(dim=(2, 3)), torch.ones(2, 8))
    torch.testing.assert_close(out.logits, plain.logits, atol=1e-5, rtol=1e-5)


def test_save_and_reload_with_auto_classes(tmp_path):
    model = build()
    model.config.id2label = {i: f"class_{i}" for i in range(5)}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    assert type(AutoConfig.from_pretrained(tmp_path)) is PaCaViTConfig
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is PaCaViTForImageClassification
    assert reloaded.config.id2label[3] == "class_3"
    for name, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    pixel_values = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(reloaded(pixel_values).logits, model(pixel_values).logits, atol=1e-6, rtol=1e-6)
    # the base model and the backbone load the same weights from the classifier folder
    base = AutoModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(base(pixel_values).pooler_output, model.pacavit(pixel_values).pooler_output)
    backbone = PaCaViTBackbone.from_pretrained(tmp_path, out_features=["stage2", "stage4"]).eval()
    maps = backbone(pixel_values).feature_maps
    torch.testing.assert_close(maps[1], model.pacavit(pixel_values).last_hidden_state)


def test_backbone_feature_maps_and_channels():
    config = tiny_config(out_features=["stage1", "stage2", "stage3", "stage4"])
    backbone = AutoBackbone.from_config(config).eval()
    assert type(backbone) is PaCaViTBackbone
    assert backbone.channels == [16, 32, 48, 64]
    maps = backbone(torch.randn(2, 3, 128, 96)).feature_maps
    assert [tuple(m.shape) for m in maps] == [(2, 16, 32, 24), (2, 32, 16, 12), (2, 48, 8, 6), (2, 64, 4, 3)]


def test_transformers_upernet_uses_the_backbone():
    from transformers import UperNetConfig, UperNetForSemanticSegmentation

    backbone_config = tiny_config(out_features=["stage1", "stage2", "stage3", "stage4"])
    config = UperNetConfig(backbone_config=backbone_config, hidden_size=32, auxiliary_in_channels=48, num_labels=3)
    model = UperNetForSemanticSegmentation(config).eval()
    out = model(torch.randn(1, 3, 64, 96), labels=torch.randint(0, 3, (1, 64, 96)))
    assert out.logits.shape == (1, 3, 64, 96)
    assert torch.isfinite(out.loss)


def test_xformers_backend_is_explained_when_missing():
    try:
        import xformers  # noqa: F401

        pytest.skip("xformers is installed; covered by the GPU check")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="pip install pacavit\\[xformers\\]"):
        PaCaViTForImageClassification._from_config(tiny_config(), attn_implementation="xformers")


def test_torch_export_and_compile():
    model = build(variant="teacher")
    pixel_values = torch.randn(1, 3, 64, 64)
    expected = model(pixel_values).logits
    exported = torch.export.export(model, (pixel_values,))
    torch.testing.assert_close(exported.module()(pixel_values).logits, expected, atol=1e-5, rtol=1e-5)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(pixel_values).logits, expected, atol=1e-5, rtol=1e-5)


def test_reusing_blocks_return_the_assignment_of_the_block_that_computed_it():
    model = build(PaCaViTModel, "every-2")  # depths [3, 1, 3, 1], a new assignment at blocks 0 and 2
    maps = model(torch.randn(1, 3, 64, 64), output_cluster_assignments=True).cluster_assignments
    assert maps[1] is maps[0] and maps[2] is not maps[0]
    assert maps[5] is maps[4] and maps[6] is not maps[4]  # stage 3: blocks 0, 1 (reuse), 2 (new)
    assert maps[7] is None  # stage 4 has no clusters


@pytest.mark.parametrize("variant", ["conv-stagewise", "teacher", "every-2", "no-dwconv", "sub-norm-no-shortcut"])
def test_fast_paths_compute_the_plain_function(variant, monkeypatch):
    """The inference-only fast paths (in-place GELU; on CPU the stem and stages a few images at a time and the MLP
    hidden channels in slices) and channels-last inputs give the outputs of the plain autograd path."""
    from pacavit import modeling_pacavit

    model = build(variant=variant)
    pixel_values = torch.randn(3, 3, 61, 83)
    monkeypatch.setattr(modeling_pacavit, "CPU_INFERENCE_GROUP_BYTES", None)
    monkeypatch.setattr(modeling_pacavit, "CPU_INFERENCE_SLICE_BYTES", None)
    plain = model(pixel_values, output_hidden_states=True, output_cluster_assignments=True)  # autograd: no fast path
    first_stage = model.pacavit.stages[0]
    group_sizes = []  # batch sizes seen by the first block of the first stage
    first_stage.layers[0].register_forward_pre_hook(lambda module, args: group_sizes.append(args[0].shape[0]))
    with torch.no_grad():
        in_place = model(pixel_values).logits
        # one image per group, one hidden channel per slice
        monkeypatch.setattr(modeling_pacavit, "CPU_INFERENCE_GROUP_BYTES", 1)
        monkeypatch.setattr(modeling_pacavit, "CPU_INFERENCE_SLICE_BYTES", 1)
        group_sizes.clear()
        chunked = model(pixel_values, output_hidden_states=True)
        assert group_sizes == [1, 1, 1]
        channels_last = model(pixel_values.contiguous(memory_format=torch.channels_last)).logits
        # the first stage in groups of two images, then one
        first_stage_tokens = chunked.hidden_states[0].shape[-2:].numel()
        mlp_hidden_bytes_per_image = first_stage_tokens * first_stage.mlp_hidden_size * pixel_values.element_size()
        monkeypatch.setattr(modeling_pacavit, "CPU_INFERENCE_GROUP_BYTES", 2 * mlp_hidden_bytes_per_image)
        monkeypatch.setattr(modeling_pacavit, "CPU_INFERENCE_SLICE_BYTES", None)
        group_sizes.clear()
        grouped = model(pixel_values).logits
        with_maps = model(pixel_values, output_cluster_assignments=True)  # returned for the whole batch: no groups
        assert group_sizes == [2, 1, 3]
    for fast in (in_place, chunked.logits, channels_last, grouped, with_maps.logits):
        torch.testing.assert_close(fast, plain.logits, atol=2e-5, rtol=2e-5)
    for fast, reference in zip(chunked.hidden_states, plain.hidden_states):
        torch.testing.assert_close(fast, reference, atol=2e-5, rtol=2e-5)
    for fast, reference in zip(with_maps.cluster_assignments, plain.cluster_assignments):
        if reference is not None:
            torch.testing.assert_close(fast, reference, atol=2e-5, rtol=2e-5)


def test_cpu_inference_groups_only_where_they_apply(monkeypatch):
    """Autograd, training mode and torch.compile run the batch whole; CPU inference splits it to the budget."""
    from pacavit import modeling_pacavit
    from pacavit.modeling_pacavit import cpu_inference_group_size

    tokens = torch.zeros(8, 10, 4)
    monkeypatch.setattr(modeling_pacavit, "CPU_INFERENCE_GROUP_BYTES", 3000)
    with torch.no_grad():
        assert cpu_inference_group_size(tokens, lambda: 1000) == 3
        assert cpu_inference_group_size(tokens, lambda: 10_000) == 1  # one image over the budget: a group of one
        assert cpu_inference_group_size(tokens, lambda: 100) is None  # the whole batch fits
        assert cpu_inference_group_size(tokens, lambda: 1000, training=True) is None
        compiled = torch.compile(
            lambda t: t[: cpu_inference_group_size(t, lambda: 1000) or t.shape[0]], fullgraph=True, backend="eager"
        )
        assert compiled(tokens).shape[0] == 8  # compiled code plans its own buffers
    assert cpu_inference_group_size(tokens, lambda: 1000) is None  # autograd on
    monkeypatch.setattr(modeling_pacavit, "CPU_INFERENCE_GROUP_BYTES", None)
    with torch.no_grad():
        assert cpu_inference_group_size(tokens, lambda: 1000) is None


def test_torch_fx_symbolic_trace_equals_eager():
    """torch.fx (timm's FX feature extraction, torchvision's create_feature_extractor) traces the model: the CPU
    image groups and transformers' SDPA shape branches are skipped while tracing."""
    model = build(variant="conv-stagewise").eval()
    pixel_values = torch.randn(2, 3, 64, 48)
    model.config.return_dict = False  # a tuple out of the graph
    flags = ("labels", "output_attentions", "output_hidden_states", "output_cluster_assignments", "return_dict")
    traced = torch.fx.symbolic_trace(model, concrete_args=dict.fromkeys(flags))  # the defaults, fixed
    assert any(node.op == "call_module" and node.target.endswith("query") for node in traced.graph.nodes)
    with torch.no_grad():
        torch.testing.assert_close(traced(pixel_values)[0], model(pixel_values)[0])


def test_compiled_model_matches_eager_mode():
    model = build(variant="conv-stagewise")
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(pixel_values).logits
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(pixel_values).logits, expected, atol=1e-5, rtol=1e-5)


def test_group_matcher_gives_timm_layer_decay_one_group_per_block():
    from timm.optim import param_groups_layer_decay

    model = build(variant="teacher")  # depths [1, 1, 2, 1]: stem, 5 blocks, head
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.5)
    scales = sorted({group["lr_scale"] for group in groups})
    assert scales == pytest.approx([0.5**k for k in range(6, -1, -1)])  # 7 layers: stem, 5 blocks, classifier
    names = {id(p): name for name, p in model.named_parameters()}
    by_name = {names[id(p)]: group["lr_scale"] for group in groups for p in group["params"]}
    assert by_name["classifier.weight"] == pytest.approx(1.0)
    stem = by_name["pacavit.embeddings.projection.0.weight"]
    assert stem == by_name["pacavit.clustering_teacher.to_clusters.0.weight"] == pytest.approx(0.5**6)
    assert (
        by_name["pacavit.stages.1.downsample.projection.weight"] == by_name["pacavit.stages.1.layers.0.mlp.fc1.weight"]
    )
    assert "pacavit.stages.0.layers.0.position_embeddings" not in by_name  # this variant has none
    with_positions = build(variant="position-embeddings")
    absolute = {f"pacavit.stages.{i}.layers.0.position_embeddings" for i in range(4)}
    clusters = {
        f"pacavit.stages.{i}.layers.{j}.attention.cluster_position_embeddings"
        for i, j in [(0, 0), (1, 0), (2, 0), (2, 1)]
    }
    assert with_positions.no_weight_decay() == absolute | clusters

"""Cluster assignments and attentions returned by the models, and the figures drawn from them.

Covers: shapes and normalisation of the returned maps (stage-wise, every-k, block-wise, teacher; model,
classifier, backbone), agreement of the returned attention with a recomputation from the module weights,
nothing returned and no attention tensor materialised when not asked, and the library/script writing PNGs
whose pixels differ across clusters.
"""

from __future__ import annotations

import colorsys
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pacavit import PaCaViTBackbone, PaCaViTConfig, PaCaViTForImageClassification, PaCaViTModel, modeling_pacavit
from pacavit import visualization as vis

from helpers import REPO_ROOT, load_script

SCRIPT = REPO_ROOT / "examples" / "visualize_clusters.py"

# Tiny widths; depths chosen so that every-2 scheduling has a reusing block between two computing blocks.
TINY_VIS = dict(
    hidden_sizes=[32, 64, 96, 128],
    num_attention_heads=[1, 2, 4, 8],
    depths=[2, 1, 3, 1],
    num_clusters=[6, 5, 4, 0],
    num_labels=3,
)

VARIANTS = {
    "stagewise": dict(),
    "every2": dict(clustering_schedule=[2, 2, 2, 2]),
    "blockwise": dict(clustering_schedule=[1, 1, 1, 1]),
    "mlp-posemb": dict(clustering_type="mlp", cluster_position_embeddings=True, clustering_schedule=[1, 0, 2, 0]),
    "linear-nonorm": dict(clustering_type="linear", cluster_layer_norm=False),
    "teacher": dict(use_clustering_teacher=True, num_clusters=[6, 5, 4, 3], teacher_depths=[1, 1, 1, 1]),
}

MODEL_CLASSES = [PaCaViTModel, PaCaViTForImageClassification, PaCaViTBackbone]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads; on a busy 2-core machine they spin-wait for seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_config(variant: str = "stagewise", **overrides) -> PaCaViTConfig:
    values = dict(TINY_VIS, **VARIANTS[variant])
    values.update(overrides)
    preset = "pacavit-tiny-teacher" if values.get("use_clustering_teacher") else "pacavit-tiny"
    values.setdefault("depths", TINY_VIS["depths"])
    return PaCaViTConfig.from_preset(preset, **values)


def make_model(variant: str = "stagewise", cls=PaCaViTForImageClassification, **overrides):
    torch.manual_seed(0)
    model = cls(make_config(variant, **overrides)).eval()
    if variant == "teacher":  # non-trivial BatchNorm statistics, so the teacher is not a near-identity
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model


def grid_sizes(config: PaCaViTConfig, height: int, width: int) -> list[tuple[int, int]]:
    """Token grid of every stage: stem /4 (two stride-2 convs), then /2 per stage (conv k3 s2 p1)."""
    sizes = []
    h, w = height, width
    for _ in range(2):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    for stage in range(config.num_stages):
        if stage > 0:
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        sizes.append((h, w))
    return sizes


def stage_of_block(config: PaCaViTConfig) -> list[tuple[int, int]]:
    return [(s, j) for s, depth in enumerate(config.depths) for j in range(depth)]


# --------------------------------------------------------------------------------------------
# Shapes and normalisation
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", MODEL_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_assignment_and_attention_shapes_and_normalisation(variant, cls):
    model = make_model(variant, cls)
    config = model.config
    pixel_values = torch.randn(2, 3, 40, 56)  # non-square, not a multiple of 32
    with torch.no_grad():
        out = model(pixel_values, output_attentions=True, output_cluster_assignments=True)
    grids = grid_sizes(config, 40, 56)
    blocks = stage_of_block(config)
    assert len(out.cluster_assignments) == len(out.attentions) == sum(config.depths)

    for (stage, _block), z, attn in zip(blocks, out.cluster_assignments, out.attentions):
        h, w = grids[stage]
        m = config.num_clusters[stage]
        heads = config.num_attention_heads[stage]
        if m == 0:
            assert z is None
            assert attn.shape == (2, heads, h * w, h * w)
        else:
            assert z.shape == (2, m, h, w)
            assert (z >= 0).all()
            torch.testing.assert_close(z.sum(dim=(2, 3)), torch.ones(2, m), atol=1e-5, rtol=0)
            assert attn.shape == (2, heads, h * w, m)
        assert (attn >= 0).all()
        torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:-1]), atol=1e-5, rtol=0)

    # which blocks own their assignment, which reuse the tensor of an earlier block
    start = 0
    for stage, depth in enumerate(config.depths):
        zs = out.cluster_assignments[start : start + depth]
        start += depth
        if config.num_clusters[stage] == 0:
            continue
        # a reused assignment is the same memory as the one computed before it (no copy), a new one is not
        for j in range(1, depth):
            new = config.computes_clusters(stage, j)
            assert (zs[j].data_ptr() == zs[j - 1].data_ptr()) != new, (stage, j)
        if config.use_clustering_teacher:
            assert all(z.data_ptr() == zs[0].data_ptr() for z in zs)


def test_backbone_feature_maps_unchanged_by_the_flags():
    model = make_model("blockwise", PaCaViTBackbone, out_features=["stage2", "stage4"])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        plain = model(x)
        rich = model(x, output_attentions=True, output_cluster_assignments=True)
    for a, b in zip(plain.feature_maps, rich.feature_maps):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert rich.hidden_states is None  # not asked for
    assert len(rich.cluster_assignments) == sum(model.config.depths)


@pytest.mark.parametrize("variant", ["stagewise", "blockwise", "teacher"])
def test_extract_clusters_splits_per_stage(variant):
    model = make_model(variant)
    model.train()  # extract_clusters runs in eval mode and restores the mode
    clusters = vis.extract_clusters(model, torch.randn(1, 3, 48, 64))
    assert model.training
    config = model.config
    assert [s.name for s in clusters.stages] == config.stage_names[1:]
    assert [s.num_blocks for s in clusters.stages] == config.depths
    for stage, (h, w) in zip(clusters.stages, grid_sizes(config, 48, 64)):
        assert (stage.height, stage.width) == (h, w)
        assert stage.has_clusters == (config.num_clusters[stage.index] > 0)
        if stage.has_clusters:
            expected = [0] + [j for j in range(1, stage.num_blocks) if config.computes_clusters(stage.index, j)]
            assert stage.distinct_assignment_blocks() == expected
            assert vis.hard_cluster_map(stage).shape == (h, w)
    assert clusters.logits.shape == (1, 3)
    assert clusters.display_images.shape == (1, 48, 64, 3)


def test_extract_clusters_on_backbone_and_base_model():
    for cls in (PaCaViTModel, PaCaViTBackbone):
        clusters = vis.extract_clusters(make_model("stagewise", cls), torch.randn(1, 3, 32, 32))
        assert clusters.logits is None
        assert len(clusters.clustered_stages) == 3


# --------------------------------------------------------------------------------------------
# Agreement with a recomputation from the module weights
# --------------------------------------------------------------------------------------------
def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, dim = x.shape
    return x.view(batch, length, heads, dim // heads).transpose(1, 2)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_returned_attention_matches_recomputation(variant):
    """Recompute q, k, v and softmax(q k^T / sqrt(d)) by hand for every block; check the block output too."""
    model = make_model(variant)  # SDPA by default: the returned weights come from the eager path of this call
    assert model.config._attn_implementation == "sdpa"
    layers = [layer for stage in model.pacavit.stages for layer in stage.layers]
    inputs, attention_outputs = {}, {}

    def save_input(index):
        def hook(module, args, kwargs):
            inputs[index] = args[0] if args else kwargs["hidden_states"]

        return hook

    def save_output(index):
        def hook(module, args, output):
            attention_outputs[index] = output[0]

        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(save_input(i), with_kwargs=True))
        handles.append(layer.attention.register_forward_hook(save_output(i)))
    x = torch.randn(2, 3, 48, 40)
    try:
        with torch.no_grad():
            out = model(x, output_attentions=True, output_cluster_assignments=True)
            reference_logits = model(x).logits
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(out.logits, reference_logits, atol=1e-5, rtol=1e-5)  # eager == sdpa

    with torch.no_grad():
        for i, layer in enumerate(layers):
            attention = layer.attention
            tokens = layer.norm1(inputs[i])
            batch, num_patches, dim = tokens.shape
            heads = attention.num_heads
            z = out.cluster_assignments[i]
            if z is None:
                context = tokens
            else:
                z = z.flatten(2).transpose(1, 2)  # (B, N, M)
                if attention.clustering is not None:  # this block computed its assignment: check it too
                    h, w = out.cluster_assignments[i].shape[-2:]
                    torch.testing.assert_close(attention.clustering(tokens, h, w).softmax(dim=-1).transpose(1, 2), z)
                context = z.transpose(1, 2) @ tokens  # (B, M, C) cluster tokens
                if attention.cluster_position_embeddings is not None:
                    context = context + attention.cluster_position_embeddings
                if attention.cluster_norm is not None:
                    context = attention.cluster_norm(context)
            query = _heads(attention.query(tokens), heads)
            key_value = attention.key_value(context)
            key, value = _heads(key_value[..., :dim], heads), _heads(key_value[..., dim:], heads)
            weights = (query @ key.transpose(-1, -2) / (dim // heads) ** 0.5).softmax(-1)
            torch.testing.assert_close(out.attentions[i], weights, atol=1e-5, rtol=1e-4)
            # the recomputed weights really produce the block's attention output
            mixed = (weights @ value).transpose(1, 2).reshape(batch, num_patches, dim)
            torch.testing.assert_close(attention.dense(mixed), attention_outputs[i], atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# Nothing returned, nothing materialised when not asked
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", MODEL_CLASSES, ids=lambda c: c.__name__)
def test_nothing_returned_when_not_asked(cls):
    model = make_model("blockwise", cls)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        as_tuple = model(x, return_dict=False)
        only_z = model(x, output_cluster_assignments=True)
        only_attn = model(x, output_attentions=True)
    assert out.attentions is None and out.cluster_assignments is None
    assert only_z.attentions is None and only_z.cluster_assignments is not None
    assert only_attn.cluster_assignments is None and only_attn.attentions is not None
    assert len(as_tuple) == len(out.to_tuple())
    assert not any(isinstance(item, tuple) and len(item) == sum(model.config.depths) for item in as_tuple)


class _RecordAllocations(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the shape of every tensor an aten op returns, and the bytes of the storages ops allocate
    (outputs that alias an input, i.e. views and in-place results, allocate nothing)."""

    def __init__(self):
        super().__init__()
        self.shapes, self.allocated = [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = torch.utils._pytree.tree_leaves((args, kwargs or {}))
        input_storages = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
                if t.untyped_storage().data_ptr() not in input_storages:
                    self.allocated += t.untyped_storage().nbytes()
        return out


def test_no_attention_tensor_materialised_when_not_asked(monkeypatch):
    model = make_model("stagewise")
    config = model.config
    assert config._attn_implementation == "sdpa"
    calls = []
    original = modeling_pacavit.eager_attention_forward

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(modeling_pacavit, "eager_attention_forward", counting)
    x = torch.randn(2, 3, 64, 64)
    grids = grid_sizes(config, 64, 64)
    attention_shapes = {
        (
            2,
            config.num_attention_heads[s],
            grids[s][0] * grids[s][1],
            config.num_clusters[s] or grids[s][0] * grids[s][1],
        )
        for s, _ in stage_of_block(config)
    }

    from torch.nn.attention import SDPBackend, sdpa_kernel

    def run(**flags):
        with torch.no_grad(), sdpa_kernel([SDPBackend.FLASH_ATTENTION]), _RecordAllocations() as record:
            model(x, **flags)
        return record

    plain = run()
    assert calls == []  # the eager path (the only one that builds the weights) is never taken
    assert not attention_shapes & set(plain.shapes)  # no (B, heads, N, M) tensor is ever created

    with_z = run(output_cluster_assignments=True)
    assert calls == []
    # the returned assignment maps are views of tensors the forward computes anyway: not one byte more
    assert with_z.allocated == plain.allocated
    assert plain.allocated > 0

    asked = run(output_attentions=True)
    assert len(calls) == sum(config.depths)
    assert attention_shapes <= set(asked.shapes)
    assert asked.allocated > plain.allocated  # the check can see the weights when they are built


# --------------------------------------------------------------------------------------------
# Library helpers
# --------------------------------------------------------------------------------------------
def test_query_to_patch():
    assert vis.query_to_patch((0.5, 0.5), (64, 64), (8, 8)) == (4, 4)
    assert vis.query_to_patch((0.0, 1.0), (64, 64), (8, 8)) == (0, 7)
    assert vis.query_to_patch((0, 63), (64, 64), (8, 8)) == (0, 7)  # integers are pixels
    assert vis.query_to_patch((31, 32), (64, 64), (8, 8)) == (3, 4)
    assert vis.query_to_patch((10, 10), (40, 80), (5, 10)) == (1, 1)
    with pytest.raises(ValueError, match="outside"):
        vis.query_to_patch((64, 0), (64, 64), (8, 8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        vis.query_to_patch((1.5, 0.2), (64, 64), (8, 8))


def test_query_attention_map_is_the_back_projection():
    clusters = vis.extract_clusters(make_model("blockwise"), torch.randn(1, 3, 64, 48))
    for stage in clusters.stages:
        for block in range(stage.num_blocks):
            row, col = stage.height // 2, stage.width - 1
            heat = vis.query_attention_map(stage, (row, col), block=block)
            assert heat.shape == (stage.height, stage.width)
            torch.testing.assert_close(heat.sum(), torch.tensor(1.0), atol=1e-5, rtol=0)
            q = row * stage.width + col
            attn = stage.attention(block)[0, :, q]  # (heads, M)
            if stage.has_clusters:
                z = stage.assignment(block)[0]
                expected = sum(attn[:, m].mean() * z[m] for m in range(stage.num_clusters))
            else:
                expected = attn.mean(0).view(stage.height, stage.width)
            torch.testing.assert_close(heat, expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="outside"):
        vis.query_attention_map(clusters.stages[-1], (clusters.stages[-1].height, 0))


@pytest.mark.parametrize("rank_by", vis.RANK_BY)
def test_rank_clusters(rank_by):
    clusters = vis.extract_clusters(make_model("stagewise"), torch.randn(1, 3, 64, 64))
    for stage in clusters.clustered_stages:
        order, scores = vis.rank_clusters(stage, rank_by)
        assert sorted(order.tolist()) == list(range(stage.num_clusters))
        diffs = scores[1:] - scores[:-1]
        assert (diffs >= -1e-7).all() if rank_by == "entropy" else (diffs <= 1e-7).all()
    stage = clusters.stages[0]
    order, scores = vis.rank_clusters(stage, "area")
    counts = torch.bincount(vis.hard_cluster_map(stage).flatten(), minlength=stage.num_clusters)
    assert counts[order[0]] == counts.max()
    torch.testing.assert_close(scores.sum(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="Unknown ranking"):
        vis.rank_clusters(stage, "mass")


def test_distinct_colors():
    colors = vis.distinct_colors(100)
    assert colors.shape == (100, 3) and colors.min() >= 0 and colors.max() <= 1
    assert len({tuple(np.round(c, 3)) for c in colors}) == 100
    np.testing.assert_array_equal(vis.distinct_colors(7), colors[:7])


def test_sample_image_is_a_training_digit():
    from sklearn.datasets import load_digits

    image = vis.sample_image(5)
    assert image.mode == "RGB" and image.size == (8, 8)
    expected = np.rint(load_digits().images[5] * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(image)[..., 0], expected)
    try:
        from pacavit.data import digits_to_pil
    except ImportError:  # the training data helpers are optional here
        return
    np.testing.assert_array_equal(np.asarray(image), np.asarray(digits_to_pil(load_digits().images[5])))
    assert vis.sample_image(5, size=40).size == (40, 40)


def test_load_image_and_prepare_image_conversions(tmp_path):
    gray = Image.fromarray((np.arange(30 * 50) % 256).astype(np.uint8).reshape(30, 50), mode="L")
    rgba = Image.new("RGBA", (20, 10), (255, 0, 0, 0))
    for image in (gray, np.asarray(gray), np.random.rand(12, 9), rgba, np.zeros((3, 16, 16), np.float32)):
        assert vis.load_image(image).mode == "RGB"
    assert vis.load_image(rgba).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    path = tmp_path / "gray.png"
    gray.save(path)
    model = make_model("stagewise")
    pixel_values, display = vis.prepare_image(path, image_size=(40, 24), model=model)
    assert pixel_values.shape == (1, 3, 40, 24) and display.shape == (1, 40, 24, 3)
    # the display image is the input with the normalisation undone: gray stays gray
    np.testing.assert_allclose(display[0, ..., 0], display[0, ..., 2], atol=1e-6)
    np.testing.assert_allclose(
        display[0], np.asarray(gray.resize((24, 40), Image.BICUBIC).convert("RGB")) / 255, atol=1e-5
    )

    from transformers import ConvNextImageProcessor

    processor = ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0)
    pixel_values, display = vis.prepare_image(gray, processor)
    assert pixel_values.shape[:2] == (1, 3) and min(pixel_values.shape[-2:]) == 32
    assert display.min() >= 0 and display.max() <= 1
    with pytest.raises(FileNotFoundError):
        vis.load_image(tmp_path / "missing.png")


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
def _quadrant_extraction(alpha_gray: float = 0.5) -> vis.ClusterExtraction:
    """A hand-made extraction: one stage of 8x8 tokens, 4 clusters, cluster m = quadrant m; a gray image."""
    size, grid, m = 64, 8, 4
    z = torch.full((1, m, grid, grid), 1e-4)
    half = grid // 2
    quadrants = [
        (slice(0, half), slice(0, half)),
        (slice(0, half), slice(half, grid)),
        (slice(half, grid), slice(0, half)),
        (slice(half, grid), slice(half, grid)),
    ]
    for k, (rows, cols) in enumerate(quadrants):
        z[0, k, rows, cols] = 1.0
    z = z / z.sum(dim=(2, 3), keepdim=True)
    attn = torch.full((1, 2, grid * grid, m), 0.05)
    attn[..., 2] = 0.85  # every patch reads mostly from cluster 2
    stage = vis.StageClusters(0, "stage1", grid, grid, m, assignments=[z], attentions=[attn])
    display = np.full((1, size, size, 3), alpha_gray)
    return vis.ClusterExtraction(torch.zeros(1, 3, size, size), display, [stage])


def _panel_pixels(fig, axes_index: int) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    fig.canvas.draw()
    buffer = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float) / 255
    box = fig.axes[axes_index].get_window_extent()
    height = buffer.shape[0]
    return buffer, (box.x0, height - box.y1, box.x1, height - box.y0)  # left, top, right, bottom in rows/cols


def test_cluster_map_colours_differ_across_clusters():
    clusters = _quadrant_extraction()
    alpha = 0.6
    fig = vis.plot_cluster_map(clusters, alpha=alpha)
    buffer, (left, top, right, bottom) = _panel_pixels(fig, 1)  # axes 0 is the input, 1 is stage1
    palette = vis.distinct_colors(4)
    sampled = []
    for k, (fy, fx) in enumerate([(0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)]):
        y, x = int(top + fy * (bottom - top)), int(left + fx * (right - left))
        pixel = buffer[y, x]
        np.testing.assert_allclose(pixel, (1 - alpha) * 0.5 + alpha * palette[k], atol=2.5 / 255)
        sampled.append(pixel)
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(sampled[i] - sampled[j]).max() > 0.1


def test_query_attention_points_at_the_attended_cluster():
    clusters = _quadrant_extraction()
    heat = vis.query_attention_map(clusters.stages[0], (0, 0))
    row, col = divmod(int(heat.argmax()), heat.shape[1])
    assert row >= 4 and col < 4  # cluster 2 = bottom-left quadrant
    fig = vis.plot_query_attention(clusters, query=(0.1, 0.1))
    assert len(fig.axes) == 4  # input + stage, heat row and bar row
    fig = vis.plot_top_clusters(clusters, top_k=2)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[1].startswith("cluster 2")  # most attended first


def test_save_cluster_figures_writes_pngs_and_index(tmp_path):
    model = make_model("teacher")
    paths = vis.save_cluster_figures(model, vis.synthetic_image(48), tmp_path, image_size=48, top_k=3, query=(5, 40))
    assert set(paths) == {"cluster_map", "top_clusters", "query_attention", "index_md", "index_html"}
    index = (tmp_path / "index.html").read_text()
    markdown = (tmp_path / "index.md").read_text()
    for name in ("cluster_map", "top_clusters", "query_attention"):
        assert paths[name].stat().st_size > 1000
        assert f'src="{name}.png"' in index and f"({name}.png)" in markdown
        with Image.open(paths[name]) as image:
            assert np.asarray(image.convert("RGB")).std() > 1  # not a blank picture


def test_model_without_clusters_still_draws_query_attention(tmp_path):
    model = make_model("stagewise", num_clusters=[0, 0, 0, 0])
    paths = vis.save_cluster_figures(model, vis.synthetic_image(32), tmp_path, image_size=32)
    assert set(paths) == {"query_attention", "index_md", "index_html"}
    with pytest.raises(ValueError, match="no stage with clusters"):
        vis.plot_cluster_map(vis.extract_clusters(model, torch.randn(1, 3, 32, 32)))


# --------------------------------------------------------------------------------------------
# The script
# --------------------------------------------------------------------------------------------
def _saturated_hues(path: Path, min_saturation: float = 0.15) -> np.ndarray:
    from matplotlib.colors import rgb_to_hsv

    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB")).astype(float) / 255
    hsv = rgb_to_hsv(rgb.reshape(-1, 3))
    return hsv[(hsv[:, 1] > min_saturation) & (hsv[:, 2] > 0.1), 0]


def test_script_on_a_saved_model_folder(tmp_path):
    from transformers import ConvNextImageProcessor

    model = make_model("stagewise")
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    ConvNextImageProcessor(size={"shortest_edge": 48}, crop_pct=1.0).save_pretrained(folder)
    # a grayscale, non-square image: every coloured pixel of the cluster map comes from the overlay
    yy, xx = np.mgrid[0:50, 0:70]
    image_path = tmp_path / "digit.png"
    Image.fromarray(((np.sin(xx / 5.0) * np.cos(yy / 7.0) + 1) * 127).astype(np.uint8), mode="L").save(image_path)

    out_dir = tmp_path / "figures"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT / "src"))
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--model",
            str(folder),
            "--image",
            str(image_path),
            "--output_dir",
            str(out_dir),
            "--query_patch",
            "10,20",
            "--top_k",
            "3",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for name in ("cluster_map", "top_clusters", "query_attention"):
        png = out_dir / f"{name}.png"
        assert png.stat().st_size > 1000
        assert f"{name}.png" in (out_dir / "index.html").read_text()

    # what the script drew: the hard maps of the same model on the same input
    loaded = vis.load_model(str(folder))
    pixel_values, display = vis.prepare_image(image_path, vis.load_image_processor(str(folder)), model=loaded)
    assert pixel_values.shape[-2:] == (48, 48)  # ConvNext processor: resize + centre crop below 384 px
    clusters = vis.extract_clusters(loaded, pixel_values, display)
    hues = _saturated_hues(out_dir / "cluster_map.png")
    expected_hues = set()
    for stage in clusters.clustered_stages:
        used = vis.hard_cluster_map(stage).unique().tolist()
        assert len(used) >= 2, "degenerate test model: every position in one cluster"
        palette = vis.distinct_colors(stage.num_clusters)
        expected_hues |= {round(colorsys.rgb_to_hsv(*palette[m])[0], 3) for m in used}
    # every used cluster colour is in the picture, each over a visible area
    for hue in expected_hues:
        distance = np.minimum(np.abs(hues - hue), 1 - np.abs(hues - hue))
        assert (distance < 0.01).sum() >= 20, hue
    assert len(expected_hues) > 2


def test_script_main_with_preset_and_errors(tmp_path, capsys):
    script = load_script("visualize_clusters.py")
    out_dir = tmp_path / "demo"
    rc = script.main(
        [
            "--preset",
            "pacavit-tiny",
            "--output_dir",
            str(out_dir),
            "--image_size",
            "48",
            "--query_patch",
            "0.25,0.75",
            "--top_k",
            "2",
            "--digit_index",
            "5",
        ]
    )
    assert rc == 0
    assert all(
        (out_dir / f"{n}.png").stat().st_size > 1000 for n in ("cluster_map", "top_clusters", "query_attention")
    )
    assert "random weights" in (out_dir / "index.md").read_text()
    assert script.main(["--model", str(tmp_path / "nope"), "--output_dir", str(out_dir)]) == 1
    assert "not found" in capsys.readouterr().err
    assert (
        script.main(
            ["--preset", "pacavit-tiny", "--image_size", "32", "--query_patch", "100,1", "--output_dir", str(out_dir)]
        )
        == 1
    )
    assert "outside" in capsys.readouterr().err
    assert script.parse_query("0.5,0.25") == (0.5, 0.25) and script.parse_query("3,4") == (3, 4)
    assert script.parse_size("48x64") == (48, 64) and script.parse_size("32") == 32
    with pytest.raises(SystemExit):
        script.build_parser().parse_args(["--query_patch", "1"])

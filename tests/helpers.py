"""What many test files share: paths, tiny models, stand-ins for original checkpoints, parity checks, scripts.

Fixtures live in conftest.py; this module holds plain names, imported as `from helpers import ...` (pytest puts
tests/ on sys.path)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from pacavit import PaCaViTConfig, PaCaViTForImageClassification, PaCaViTForInstanceSegmentation, PaCaViTMaskRCNNConfig
from pacavit.convert import config_from_original, convert_state_dict
from pacavit.convert import main as convert_main

REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- reference data
def reference_dir() -> Path | None:
    """The parity fixtures: $PACAVIT_REFERENCE_DIR, else ../shared/reference beside the checkout."""
    candidates = [os.environ.get("PACAVIT_REFERENCE_DIR"), REPO_ROOT.parent / "shared" / "reference"]
    for candidate in candidates:
        if candidate and Path(candidate, "README.md").exists():
            return Path(candidate)
    return None


# key manifests of every released checkpoint (names, shapes, dtypes; no weights): test_convert_manifests.py explains
MANIFEST_DIR = (reference_dir() or REPO_ROOT.parent / "shared" / "reference") / "manifests"
MANIFESTS = (
    sorted(MANIFEST_DIR.glob("*.json")) + sorted(MANIFEST_DIR.glob("unlinked/*.json")) if MANIFEST_DIR.is_dir() else []
)
MANIFEST_IDS = [str(p.relative_to(MANIFEST_DIR).with_suffix("")) for p in MANIFESTS]


# ---------------------------------------------------------------------------------------------- tiny models
# Tiny widths keep every test fast while exercising all code paths.
TINY = dict(hidden_sizes=[16, 32, 48, 64], num_attention_heads=[1, 2, 2, 4], depths=[1, 1, 2, 1])


def tiny_config(preset: str = "pacavit-tiny", **overrides) -> PaCaViTConfig:
    values = dict(TINY, num_labels=5)
    values.update(overrides)
    return PaCaViTConfig.from_preset(preset, **values)


TINY_DETECTOR = dict(
    TINY,
    num_clusters=[8, 8, 8, 0],
    fpn_hidden_size=32,
    box_head_hidden_size=64,
    mask_head_hidden_size=16,
    rpn_pre_nms_top_n_test=200,
    rpn_post_nms_top_n_test=100,
    box_batch_size_per_image=64,
)


def tiny_maskrcnn(**overrides) -> PaCaViTForInstanceSegmentation:
    values = dict(TINY_DETECTOR, id2label={0: "cat", 1: "dog", 2: "bird"})
    values.update(overrides)
    return PaCaViTForInstanceSegmentation(PaCaViTMaskRCNNConfig(**values))


# ---------------------------------------------------------------------------------------------- original checkpoints
# A tiny architecture written as the original constructor's kwargs.
ORIGINAL_TINY = {
    "in_chans": 3,
    "num_classes": 7,
    "img_size": 64,
    "arch_cfg": {
        "embed_dims": [16, 32, 48, 64],
        "num_heads": [1, 2, 2, 4],
        "mlp_ratios": [4, 4, 4, 4],
        "depths": [1, 1, 2, 1],
    },
    "paca_cfg": {
        "type": "P2CConv2d",
        "clusters": [8, 8, 8, 0],
        "onsite_clustering": [0, 0, 0, 0],
        "clustering_kernel_size": [7, 7, 7, 7],
        "cluster_norm_cfg": {"type": "LN", "eps": 1e-6},
        "cluster_pos_embed": False,
        "norm_cfg1": {"type": "LN", "eps": 1e-6},
        "norm_cfg2": {"type": "LN", "eps": 1e-6},
        "mlp_func": "Mlp",
        "with_dwconv_in_mlp": True,
        "with_shortcut_in_mlp": True,
    },
    "paca_teacher_cfg": None,
    "norm_cfg": {"type": "LN", "eps": 1e-6},
    "act_cfg": {"type": "GELU"},
    "out_indices": [],
}


def original_checkpoint(tmp_path, wrap=lambda sd: sd):
    """A random checkpoint with the original key names and shapes (ORIGINAL_TINY architecture)."""
    config = config_from_original(ORIGINAL_TINY)
    ours = PaCaViTForImageClassification(config).state_dict()
    template = {}  # original key -> shape, written out from the original naming scheme
    for i, depth in enumerate(config.depths, start=1):
        dim = config.hidden_sizes[i - 1]
        template[f"norm{i}.weight"] = (dim,)
        template[f"norm{i}.bias"] = (dim,)
        if i > 1:
            template[f"transition{i - 1}.proj.weight"] = (dim, config.hidden_sizes[i - 2], 3, 3)
            template[f"transition{i - 1}.proj.bias"] = (dim,)
            template[f"transition{i - 1}.norm.weight"] = (dim,)
            template[f"transition{i - 1}.norm.bias"] = (dim,)
        for j in range(depth):
            p = f"stage{i}.{j}."
            for n in ("norm1_before", "norm2_before"):
                template[p + n + ".weight"] = (dim,)
                template[p + n + ".bias"] = (dim,)
            for n in ("q", "k", "v", "proj"):
                template[p + f"attn.{n}.weight"] = (dim, dim)
                template[p + f"attn.{n}.bias"] = (dim,)
            m = config.num_clusters[i - 1]
            if m:
                template[p + "attn.cluster_norm.weight"] = (dim,)
                template[p + "attn.cluster_norm.bias"] = (dim,)
                if j == 0:
                    template[p + "attn.clustering.clustering.0.weight"] = (dim, 1, 7, 7)
                    template[p + "attn.clustering.clustering.0.bias"] = (dim,)
                    template[p + "attn.clustering.clustering.2.weight"] = (dim, dim, 1, 1)
                    template[p + "attn.clustering.clustering.2.bias"] = (dim,)
                    template[p + "attn.clustering.clustering.4.weight"] = (m, dim, 1, 1)
            template[p + "mlp.fc1.weight"] = (4 * dim, dim)
            template[p + "mlp.fc1.bias"] = (4 * dim,)
            template[p + "mlp.dwconv.dwconv.weight"] = (4 * dim, 1, 3, 3)
            template[p + "mlp.dwconv.dwconv.bias"] = (4 * dim,)
            template[p + "mlp.fc2.weight"] = (dim, 4 * dim)
            template[p + "mlp.fc2.bias"] = (dim,)
    template.update(
        {
            "patch_embed.proj.0.weight": (8, 3, 3, 3),
            "patch_embed.proj.0.bias": (8,),
            "patch_embed.proj.1.weight": (16, 8, 3, 3),
            "patch_embed.proj.1.bias": (16,),
            "patch_embed.norm.weight": (16,),
            "patch_embed.norm.bias": (16,),
            "head.weight": (7, 64),
            "head.bias": (7,),
        }
    )
    state_dict = {k: torch.randn(shape) for k, shape in template.items()}
    converted, _ = convert_state_dict(state_dict, config)
    assert sorted(converted) == sorted(ours)  # the template covers the whole model
    path = tmp_path / "original.pth"
    torch.save(wrap(state_dict), path)
    (tmp_path / "original.json").write_text(json.dumps({"original_constructor": ORIGINAL_TINY}))
    return path, state_dict


# Entries that the original model registers as buffers, not parameters (the manifest's num_parameters skips them).
_BUFFER_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked", ".blur_filter")


def fake_checkpoint(manifest: dict, device: str = "cpu") -> dict:
    """Zero tensors with the manifest's names, shapes and dtypes, wrapped in its layout.

    All tensors of one dtype are views of a single zero storage, so the checkpoint costs the memory (and, saved,
    the disk space) of its largest tensor only. On the meta device the tensors have no data at all.
    """
    numel = {key: int(torch.Size(shape).numel()) for key, shape, _ in manifest["keys"]}
    sizes: dict[str, int] = {}
    for key, _, dtype in manifest["keys"]:
        sizes[dtype] = max(sizes.get(dtype, 1), numel[key])
    pools = {dtype: torch.zeros(size, dtype=getattr(torch, dtype), device=device) for dtype, size in sizes.items()}
    state_dict = {key: pools[dtype][: numel[key]].view(shape) for key, shape, dtype in manifest["keys"]}
    return state_dict if manifest["layout"] == "bare" else {"meta": {}, "state_dict": state_dict}


def expected_parameters(manifest: dict, task: str) -> int:
    """The manifest's parameter count minus the dense-prediction heads, which a backbone conversion drops."""
    dropped = 0
    if task == "backbone":
        dropped = sum(
            torch.Size(shape).numel()
            for key, shape, _ in manifest["keys"]
            if not key.startswith("backbone.") and not key.endswith(_BUFFER_SUFFIXES)
        )
    return manifest["num_parameters"] - dropped


# ---------------------------------------------------------------------------------------------- parity
def check_maskrcnn_fixture(reference: Path, name: str, output_dir: Path) -> dict:
    """Convert fixture `name` with the CLI and compare FPN, RPN, proposals and detections; return the max errors."""
    from torchvision.models.detection.image_list import ImageList

    spec = json.loads((reference / f"{name}.json").read_text())
    convert_main(
        [
            "--task",
            "instance-segmentation",
            "--checkpoint",
            str(reference / f"{name}.pth"),
            "--original-config",
            str(reference / f"{name}.json"),
            "--output-dir",
            str(output_dir),
        ]
    )
    model = PaCaViTForInstanceSegmentation.from_pretrained(output_dir).eval()
    expected = load_file(reference / f"{name}.safetensors")
    x, tol = expected[spec["input_name"]], spec["tolerance"]
    mask_logits = []
    hook = model.detector.roi_heads.mask_predictor.register_forward_hook(lambda m, i, o: mask_logits.append(o))
    errors = {}

    def compare(key, actual):
        torch.testing.assert_close(actual, expected[key], **tol, msg=lambda m: f"{name}:{key}: {m}")
        errors[key] = (actual - expected[key]).abs().max().item() if actual.numel() else 0.0

    with torch.no_grad():
        features = model.detector.backbone(x)
        for i, level in enumerate(features.values()):
            compare(f"neck.{i}", level)
        objectness, deltas = model.detector.rpn.head(list(features.values()))
        for i, (cls, reg) in enumerate(zip(objectness, deltas)):
            compare(f"rpn_cls.{i}", cls)
            compare(f"rpn_reg.{i}", reg)
        proposals = model.detector.rpn(ImageList(x, [tuple(x.shape[-2:])]), features)[0][0]
        detection = model(x).detections[0]
    hook.remove()
    # proposals as a set: every expected box has a converted one within tolerance (near-ties may reorder them)
    ref_proposals = expected["rpn_proposals"][:, :4]
    assert len(proposals) == len(ref_proposals)
    nearest = torch.cdist(ref_proposals, proposals, p=float("inf")).min(dim=1).values
    assert nearest.max() < tol["atol"] + tol["rtol"] * ref_proposals.abs().max(), nearest.max()
    errors["rpn_proposals"] = nearest.max().item()
    assert detection["labels"].tolist() == expected["det_labels"].tolist()
    compare("det_bboxes", detection["boxes"])
    compare("det_scores", detection["scores"])
    compare("det_masks", (detection["masks"] >= model.config.mask_threshold).float())
    logits = mask_logits[-1][torch.arange(len(detection["labels"])), detection["labels"] + 1]
    compare("det_mask_logits", logits)
    return errors


# ---------------------------------------------------------------------------------------------- task scripts
SCRIPTS = {
    "classification": "run_classification.py",
    "semantic-segmentation": "run_semantic_segmentation.py",
    "instance-segmentation": "run_instance_segmentation.py",
}
# script flags of a tiny PaCa-ViT (every run trains in seconds on 2 CPU cores)
TINY_BACKBONE_FLAGS = [
    "--hidden_sizes", "16", "32", "48", "64", "--num_attention_heads", "1", "1", "2", "2",
    "--depths", "1", "1", "1", "1", "--num_clusters", "8", "8", "8", "0",
]  # fmt: skip


def load_script(file_name: str, module_name: str | None = None):
    """Import examples/<file_name> as a module (its `main(argv)` runs in-process, without an interpreter start)."""
    path = REPO_ROOT / "examples" / file_name
    name = module_name or path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

"""See what PaCa-ViT's clusters look at.

In every stage with clusters, PaCa-ViT softly assigns the ``H x W`` patches to ``M`` clusters
(``z``: ``(M, H, W)``, a softmax over the positions) and every patch attends over the ``M`` cluster tokens
(``attn``: ``(heads, N, M)``). This module turns the model's ``output_cluster_assignments`` /
``output_attentions`` outputs into figures, for notebooks and for ``examples/visualize_clusters.py``:

>>> from pacavit.visualization import load_model, load_image_processor, prepare_image, extract_clusters
>>> from pacavit.visualization import plot_cluster_map, plot_top_clusters, plot_query_attention
>>> model = load_model("path/to/model_folder")
>>> processor = load_image_processor("path/to/model_folder")
>>> pixel_values, display = prepare_image("cat.png", processor, model=model)
>>> clusters = extract_clusters(model, pixel_values, display_images=display)
>>> plot_cluster_map(clusters)                 # hard argmax map per stage, one colour per cluster
>>> plot_top_clusters(clusters, top_k=6)        # the most attended clusters as heatmaps
>>> plot_query_attention(clusters, query=(0.5, 0.5))  # where one patch reads from, per stage

or everything at once: ``save_cluster_figures(model, "cat.png", "out_dir")`` (one PNG per figure, plus
``index.html`` and ``index.md``).

Figures are built with the object-oriented matplotlib API (``matplotlib.figure.Figure`` + the Agg canvas), so
nothing here touches pyplot's global state or backend; the returned figures display inline in notebooks.
"""

from __future__ import annotations

import colorsys
import html
import math
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .configuration_pacavit import PaCaViTConfig
from .extras import require
from .modeling_pacavit import PaCaViTForImageClassification

if TYPE_CHECKING:
    from PIL import Image

# transformers' constants: the package's one source for the ImageNet normalisation
IMAGENET_MEAN = tuple(IMAGENET_DEFAULT_MEAN)
IMAGENET_STD = tuple(IMAGENET_DEFAULT_STD)

RANK_BY = ("attention", "area", "entropy")

__all__ = [
    "StageClusters",
    "ClusterExtraction",
    "distinct_colors",
    "sample_image",
    "synthetic_image",
    "load_image",
    "load_model",
    "load_image_processor",
    "prepare_image",
    "extract_clusters",
    "hard_cluster_map",
    "query_attention_map",
    "rank_clusters",
    "query_to_patch",
    "plot_cluster_map",
    "plot_top_clusters",
    "plot_query_attention",
    "save_cluster_figures",
]


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
@dataclass
class StageClusters:
    """What one stage returned, for the whole batch.

    Attributes:
        index: 0-based stage index; `name` is `"stage{index + 1}"`, as in `config.stage_names`.
        height, width: the stage's token grid.
        num_clusters: `M` (0 for a stage with plain self-attention).
        assignments: one entry per block, `(B, M, H, W)` (softmax over `H*W`), or `None` in a stage
            without clusters.
        attentions: one entry per block, `(B, heads, H*W, M)` (or `(B, heads, H*W, H*W)` without clusters).
    """

    index: int
    name: str
    height: int
    width: int
    num_clusters: int
    assignments: list[torch.Tensor | None] = field(default_factory=list)
    attentions: list[torch.Tensor | None] = field(default_factory=list)

    @property
    def has_clusters(self) -> bool:
        return self.num_clusters > 0 and any(z is not None for z in self.assignments)

    @property
    def num_blocks(self) -> int:
        return max(len(self.assignments), len(self.attentions))

    def block_index(self, block: int) -> int:
        """Resolve a (possibly negative) block index, with a clear error when out of range."""
        n = self.num_blocks
        if not -n <= block < n:
            raise IndexError(f"{self.name} has {n} blocks; block {block} does not exist.")
        return block % n

    def assignment(self, block: int = -1) -> torch.Tensor | None:
        """`(B, M, H, W)` assignment used by `block` (None without clusters)."""
        if not self.assignments:
            return None
        return self.assignments[self.block_index(block)]

    def attention(self, block: int = -1) -> torch.Tensor | None:
        """`(B, heads, N, M)` attention of `block` (None if attentions were not extracted)."""
        if not self.attentions:
            return None
        return self.attentions[self.block_index(block)]

    def distinct_assignment_blocks(self) -> list[int]:
        """Blocks whose assignment is a new tensor (stage-wise clustering: `[0]`; block-wise: every block)."""
        seen, blocks = [], []
        for i, z in enumerate(self.assignments):
            if z is not None and not any(z is s for s in seen):
                seen.append(z)
                blocks.append(i)
        return blocks


@dataclass
class ClusterExtraction:
    """Everything the plotting functions need, from one forward pass.

    Attributes:
        pixel_values: the model input `(B, C, H, W)` (on the CPU).
        display_images: `(B, H, W, 3)` float images in [0, 1], aligned with `pixel_values`
            (what the model saw).
        stages: one `StageClusters` per stage.
        logits: classifier logits `(B, num_labels)` when the model has a classification head.
        id2label: the model's label names, if any.
    """

    pixel_values: torch.Tensor
    display_images: np.ndarray
    stages: list[StageClusters]
    logits: torch.Tensor | None = None
    id2label: dict[int, str] | None = None

    @property
    def clustered_stages(self) -> list[StageClusters]:
        return [s for s in self.stages if s.has_clusters]

    def prediction(self, batch_index: int = 0) -> tuple[str, float] | None:
        """(label, probability) of the top class, when the model has a classifier."""
        if self.logits is None:
            return None
        probs = self.logits[batch_index].float().softmax(-1)
        p, i = probs.max(-1)
        label = (self.id2label or {}).get(int(i), str(int(i)))
        return str(label), float(p)


# --------------------------------------------------------------------------------------------
# Colours, images, models
# --------------------------------------------------------------------------------------------
def distinct_colors(n: int) -> np.ndarray:
    """`n` visually distinct RGB colours in [0, 1], `(n, 3)`; colour `i` is the same for every `n > i`.

    Hues follow the golden-ratio sequence (all different), saturation/value cycle over a few levels.
    """
    colors = np.empty((max(n, 0), 3))
    saturations, values = (0.95, 0.65, 0.8), (0.95, 0.75, 0.6)
    for i in range(n):
        hue = (0.07 + i * 0.6180339887498949) % 1.0
        colors[i] = colorsys.hsv_to_rgb(hue, saturations[i % 3], values[(i // 3) % 3])
    return colors


def sample_image(index: int = 0, size: int | None = None) -> Image.Image:
    """A built-in test image: scikit-learn's handwritten digit `index` as an RGB PIL image, converted exactly
    as the default training run sees it (8x8, value v -> round(v * 255 / 16), white ink on black); upscaled
    (bicubic) to `size` x `size` when given. Falls back to `synthetic_image` without scikit-learn."""
    from PIL import Image

    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - scikit-learn is optional
        return synthetic_image(size or 64)
    pixels = np.rint(load_digits().images[index] * (255.0 / 16.0)).astype(np.uint8)
    image = Image.fromarray(pixels, mode="L").convert("RGB")
    return image if size is None else image.resize((size, size), Image.BICUBIC)


def synthetic_image(size: int = 128) -> Image.Image:
    """A deterministic synthetic RGB image (gradient background, a red disc, a blue square, a green bar)."""
    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    img = np.stack([0.25 + 0.3 * xx, 0.3 + 0.2 * yy, 0.45 - 0.2 * xx], axis=-1)
    disc = (xx - 0.32) ** 2 + (yy - 0.35) ** 2 < 0.18**2
    img[disc] = (0.9, 0.15, 0.1)
    square = (xx > 0.58) & (xx < 0.88) & (yy > 0.55) & (yy < 0.85)
    img[square] = (0.1, 0.2, 0.85)
    bar = (yy > 0.72) & (yy < 0.8) & (xx > 0.08) & (xx < 0.5)
    img[bar] = (0.15, 0.75, 0.2)
    return Image.fromarray((img * 255).round().astype(np.uint8), mode="RGB")


def load_image(image: Any) -> Image.Image:
    """A path, PIL image or array (`(H, W)`, `(H, W, 1|3|4)`, uint8 or float in [0, 1]) -> RGB PIL image.

    Grayscale, palette, RGBA (composited on white) and 16-bit images are all converted to 8-bit RGB.
    """
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"Image file not found: {path}")
        try:
            with Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        except Exception as error:  # PIL raises several types for unreadable files
            raise ValueError(f"Could not read the image {path}: {error}") from error
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = np.moveaxis(array, 0, -1)  # CHW -> HWC
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.dtype != np.uint8:
            array = array.astype(np.float64)
            if array.max(initial=0) <= 1.0:
                array = array * 255.0
            array = np.clip(array, 0, 255).astype(np.uint8)
        if array.ndim not in (2, 3):
            raise ValueError(f"Expected an image array of shape (H, W) or (H, W, C), got {image.shape}.")
        image = Image.fromarray(array)
    if not isinstance(image, Image.Image):
        raise TypeError(f"Unsupported image type {type(image).__name__}; give a path, a PIL image or an array.")
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        span = max(array.max() - array.min(), 1e-12)
        image = Image.fromarray(((array - array.min()) / span * 255).astype(np.uint8))
    return image.convert("RGB")


def load_model(name_or_path: str | None = None, preset: str | None = None, seed: int = 0, **config_overrides):
    """Load a PaCa-ViT classifier from a local folder or Hub id, or build one with random weights (preset).

    `config_overrides` go to `PaCaViTConfig.from_preset` (e.g. `num_labels=10`, `image_size=64`). The model is
    returned in eval mode. Set `HF_HUB_OFFLINE=1` to use only cached Hub files.
    """
    import transformers

    if (name_or_path is None) == (preset is None):
        raise ValueError("Give exactly one of `name_or_path` (folder or Hub id) and `preset`.")
    if preset is not None:
        config = PaCaViTConfig.from_preset(preset, **config_overrides)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = PaCaViTForImageClassification(config)
    else:
        name = str(name_or_path)
        if os.path.isdir(name) and not os.path.isfile(os.path.join(name, "config.json")):
            raise FileNotFoundError(f"{name} is a folder but has no config.json: not a saved model folder.")
        looks_like_path = (
            name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or os.sep in name.replace("/", "")
        )
        if not os.path.exists(name) and looks_like_path:
            raise FileNotFoundError(f"Model folder not found: {name}")
        model = transformers.AutoModelForImageClassification.from_pretrained(name_or_path, **config_overrides)
    return model.eval()


def load_image_processor(name_or_path: str | None):
    """The image processor saved with a model (folder with preprocessor_config.json, or Hub id), or None."""
    if name_or_path is None:
        return None
    from transformers import AutoImageProcessor

    if os.path.isdir(str(name_or_path)):
        if not os.path.isfile(os.path.join(name_or_path, "preprocessor_config.json")):
            return None
        return AutoImageProcessor.from_pretrained(name_or_path)
    try:
        return AutoImageProcessor.from_pretrained(name_or_path)
    except Exception:  # no processor on the Hub / offline without a cached copy: use the fallback
        return None


def _mean_std(image_processor, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The normalisation of `image_processor` (None if it does not normalise); ImageNet's otherwise."""
    if image_processor is None:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif not getattr(image_processor, "do_normalize", True):
        return None
    else:
        mean = getattr(image_processor, "image_mean", None) or IMAGENET_MEAN
        std = getattr(image_processor, "image_std", None) or IMAGENET_STD
    mean = tuple(float(m) for m in np.broadcast_to(np.asarray(mean, dtype=float), (3,)))[:channels]
    std = tuple(float(s) for s in np.broadcast_to(np.asarray(std, dtype=float), (3,)))[:channels]
    if channels > 3:
        mean, std = mean + (mean[-1],) * (channels - 3), std + (std[-1],) * (channels - 3)
    return mean, std


def _to_display(pixel_values: torch.Tensor, mean_std) -> np.ndarray:
    """`(B, C, H, W)` model input -> `(B, H, W, 3)` float images in [0, 1] (undoing the normalisation)."""
    x = pixel_values.detach().float().cpu()
    if mean_std is not None:
        mean = torch.tensor(mean_std[0]).view(1, -1, 1, 1)
        std = torch.tensor(mean_std[1]).view(1, -1, 1, 1)
        x = x * std + mean
    else:  # unknown scale: stretch to [0, 1]
        lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
        x = (x - lo) / (hi - lo).clamp_min(1e-12)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] > 3:
        x = x[:, :3]
    return x.clamp(0, 1).permute(0, 2, 3, 1).numpy()


def prepare_image(
    image: Any, image_processor=None, image_size: int | Sequence[int] | None = None, model=None
) -> tuple[torch.Tensor, np.ndarray]:
    """Image -> (`pixel_values` `(1, C, H, W)`, display image `(1, H, W, 3)` in [0, 1]).

    * With `image_processor` and no `image_size`: the processor's own pipeline (as in training).
    * Otherwise: bicubic resize to `image_size` (an int for a square, or `(height, width)`; default: the model
      config's `image_size`, else 224), scaling to [0, 1] and normalisation with the processor's mean/std
      (ImageNet's without a processor).
    The display image is the model input with the normalisation undone, so overlays line up exactly.
    """
    from PIL import Image

    channels = int(getattr(getattr(model, "config", None), "num_channels", 3)) if model is not None else 3
    pil = load_image(image)
    if channels == 1:
        pil = pil.convert("L")
    mean_std = _mean_std(image_processor, channels)
    if image_processor is not None and image_size is None:
        pixel_values = image_processor(images=pil, return_tensors="pt")["pixel_values"]
        if not isinstance(pixel_values, torch.Tensor):
            pixel_values = torch.as_tensor(np.asarray(pixel_values))
        if pixel_values.ndim == 3:
            pixel_values = pixel_values.unsqueeze(0)
        if getattr(image_processor, "do_normalize", True) and getattr(image_processor, "do_rescale", True):
            factor = float(getattr(image_processor, "rescale_factor", 1 / 255))
            if not math.isclose(factor, 1 / 255, rel_tol=1e-3):
                mean_std = None  # unusual scaling: just stretch the display image
    else:
        if image_size is None:
            image_size = int(getattr(getattr(model, "config", None), "image_size", 224) or 224)
        height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        resized = pil.resize((int(width), int(height)), Image.BICUBIC)
        array = np.asarray(resized, dtype=np.float32) / 255.0
        if array.ndim == 2:
            array = array[..., None]
        pixel_values = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()
        if mean_std is not None:
            mean = torch.tensor(mean_std[0]).view(1, -1, 1, 1)
            std = torch.tensor(mean_std[1]).view(1, -1, 1, 1)
            pixel_values = (pixel_values - mean) / std
        else:
            mean_std = ((0.0,) * channels, (1.0,) * channels)
    pixel_values = pixel_values.float()
    return pixel_values, _to_display(pixel_values, mean_std)


# --------------------------------------------------------------------------------------------
# Extraction and maps
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def extract_clusters(
    model, pixel_values: torch.Tensor, display_images: np.ndarray | None = None, output_attentions: bool = True
) -> ClusterExtraction:
    """Run `model` once and collect, per stage, every block's cluster assignment and attention.

    `model` is a `PaCaViTForImageClassification`, `PaCaViTModel` or `PaCaViTBackbone` (anything that accepts
    `output_attentions` / `output_cluster_assignments` / `output_hidden_states` and returns those fields).
    The forward runs in eval mode (restored afterwards) under `torch.no_grad()`; results are moved to the CPU
    in float32. `display_images` (from `prepare_image`) is kept for plotting; without it the input is shown
    stretched to [0, 1].
    """
    config = model.config
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    if pixel_values.ndim == 3:
        pixel_values = pixel_values.unsqueeze(0)
    was_training = model.training
    model.eval()
    try:
        outputs = model(
            pixel_values.to(device=device, dtype=dtype),
            output_attentions=output_attentions,
            output_hidden_states=True,
            output_cluster_assignments=True,
            return_dict=True,
        )
    finally:
        model.train(was_training)

    def cpu(t):
        return None if t is None else t.detach().float().cpu()

    hidden_states = outputs.hidden_states  # stem + one per stage
    assignments = outputs.cluster_assignments or (None,) * sum(config.depths)
    attentions = outputs.attentions if output_attentions else None
    if output_attentions and attentions is None:
        raise RuntimeError("The model returned no attentions although output_attentions=True was passed.")

    stages, start = [], 0
    for i, depth in enumerate(config.depths):
        height, width = hidden_states[i + 1].shape[-2:]
        # blocks that reuse an assignment get the same tensor object (the model returns views of one memory)
        converted: dict[tuple, torch.Tensor] = {}
        block_z = []
        for z in assignments[start : start + depth]:
            if z is None:
                block_z.append(None)
                continue
            key = (z.device, z.data_ptr(), tuple(z.shape), tuple(z.stride()))
            if key not in converted:
                converted[key] = cpu(z)
            block_z.append(converted[key])
        block_attn = [cpu(a) for a in attentions[start : start + depth]] if attentions is not None else []
        stages.append(
            StageClusters(
                index=i,
                name=f"stage{i + 1}",
                height=int(height),
                width=int(width),
                num_clusters=int(config.num_clusters[i]),
                assignments=block_z,
                attentions=block_attn,
            )
        )
        start += depth

    if display_images is None:
        display_images = _to_display(pixel_values, None)
    logits = getattr(outputs, "logits", None)
    id2label = getattr(config, "id2label", None)
    return ClusterExtraction(
        pixel_values=pixel_values.detach().cpu(),
        display_images=np.asarray(display_images),
        stages=stages,
        logits=cpu(logits),
        id2label={int(k): v for k, v in id2label.items()} if id2label else None,
    )


def hard_cluster_map(stage: StageClusters, batch_index: int = 0, block: int = -1) -> torch.Tensor:
    """`(H, W)` long tensor: the cluster with the largest assignment at each position (argmax over M)."""
    z = stage.assignment(block)
    if z is None:
        raise ValueError(f"{stage.name} has no clusters.")
    return z[batch_index].argmax(dim=0)


def query_to_patch(query: Sequence[float], image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> tuple[int, int]:
    """(row, col) of the query -> token (row, col) in a `grid_hw` grid.

    Integers are pixel coordinates of the input image (`image_hw`); floats in [0, 1] are normalised
    coordinates (0.5, 0.5 is the centre).
    """
    fractions = _normalise_query(query, image_hw)
    return tuple(min(int(f * n), n - 1) for f, n in zip(fractions, grid_hw))


def _normalise_query(query: Sequence[float], image_hw: tuple[int, int]) -> tuple[float, float]:
    """Pixel (int) coordinates of an image of size `image_hw` -> normalised; floats are checked and kept."""
    if len(query) != 2:
        raise ValueError(f"A query is (row, col); got {query!r}.")
    out = []
    for value, extent in zip(query, image_hw):
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            if not 0 <= value < extent:
                raise ValueError(f"Query pixel {tuple(query)} is outside the {image_hw[0]}x{image_hw[1]} image.")
            out.append((value + 0.5) / extent)
        else:
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"Normalised query coordinates must lie in [0, 1]; got {tuple(query)}.")
            out.append(float(value))
    return tuple(out)


def _format_query(query: Sequence[float]) -> str:
    return "(" + ", ".join(str(v) if isinstance(v, (int, np.integer)) else f"{float(v):.3g}" for v in query) + ")"


def query_attention_map(
    stage: StageClusters, query_rc: tuple[int, int], batch_index: int = 0, block: int = -1
) -> torch.Tensor:
    """Where the patch at token position `query_rc` reads from, back-projected onto the stage grid: `(H, W)`.

    With clusters: `sum_m attn[q, m] * z[m]`, averaged over heads (a distribution over the positions, since
    each `z[m]` sums to 1 and `attn[q]` sums to 1 over m). Without clusters: the head-averaged attention row.
    """
    attn = stage.attention(block)
    if attn is None:
        raise ValueError(f"No attentions for {stage.name}: extract them with output_attentions=True.")
    row, col = query_rc
    if not (0 <= row < stage.height and 0 <= col < stage.width):
        raise ValueError(
            f"Query patch {tuple(query_rc)} is outside the {stage.height}x{stage.width} grid of {stage.name}."
        )
    q = row * stage.width + col
    weights = attn[batch_index, :, q, :].mean(dim=0)  # (M,) or (N,)
    z = stage.assignment(block)
    if z is None:
        return weights.view(stage.height, stage.width)
    return torch.einsum("m,mhw->hw", weights, z[batch_index])


def rank_clusters(
    stage: StageClusters, by: str = "attention", batch_index: int = 0, block: int = -1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clusters of a stage, most important first: (indices `(M,)`, scores `(M,)`).

    by: `"attention"` share of all patch-to-cluster attention (mean over heads and queries) that goes to the
        cluster; `"area"` fraction of positions where it is the argmax (ties broken by soft share);
        `"entropy"` the most concentrated clusters first (score = normalised entropy of `z[m]`, ascending).
    """
    if by not in RANK_BY:
        raise ValueError(f"Unknown ranking {by!r}; choose one of {', '.join(RANK_BY)}.")
    z = stage.assignment(block)
    if z is None:
        raise ValueError(f"{stage.name} has no clusters.")
    z = z[batch_index].flatten(1)  # (M, N)
    num_clusters, num_positions = z.shape
    if by == "attention":
        attn = stage.attention(block)
        if attn is None:
            raise ValueError("Ranking by attention needs the attentions (extract with output_attentions=True).")
        values, order = attn[batch_index].mean(dim=(0, 1)).sort(descending=True)
        return order, values
    if by == "area":
        counts = torch.bincount(z.argmax(0), minlength=num_clusters).float() / num_positions
        share = (z / z.sum(0, keepdim=True).clamp_min(1e-12)).mean(1)
        order = torch.as_tensor(np.lexsort((-share.numpy(), -counts.numpy())))
        return order, counts[order]
    entropy = -(z * z.clamp_min(1e-12).log()).sum(1) / math.log(max(num_positions, 2))
    order = entropy.argsort()
    return order, entropy[order]


# --------------------------------------------------------------------------------------------
# Plotting
# --------------------------------------------------------------------------------------------
def _new_figure(ncols: int, row_heights: Sequence[float], panel: float = 2.6):
    """A constrained-layout figure of `len(row_heights)` rows; each row is `panel * row_height` inches tall
    (plus room for two title lines), each column `panel` inches wide."""
    require("matplotlib", purpose="cluster figures")  # an ImportError naming the `viz` extra
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height = sum(panel * h + 0.45 for h in row_heights) + 0.35
    fig = Figure(figsize=(panel * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(row_heights), ncols, squeeze=False, height_ratios=[panel * h + 0.45 for h in row_heights])
    return fig, axes


def _aspect(clusters: ClusterExtraction) -> float:
    """Height / width of the input, clamped so that panels stay readable."""
    height, width = clusters.display_images.shape[1:3]
    return min(max(height / width, 0.4), 2.0)


def _upsample(values: torch.Tensor, size: tuple[int, int], mode: str) -> np.ndarray:
    x = values.float()[None, None]
    if mode == "nearest":
        out = F.interpolate(x, size=size, mode="nearest")
    else:
        out = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return out[0, 0].numpy()


def _stretch(values: np.ndarray) -> np.ndarray:
    """Min-max stretch to [0, 1] for display (a constant map becomes 0)."""
    lo, hi = float(values.min()), float(values.max())
    return (values - lo) / (hi - lo) if hi - lo > 1e-12 else np.zeros_like(values)


def _image(clusters: ClusterExtraction, batch_index: int) -> np.ndarray:
    return clusters.display_images[batch_index]


def _suptitle(fig, clusters: ClusterExtraction, text: str, batch_index: int) -> None:
    prediction = clusters.prediction(batch_index)
    if prediction is not None:
        text += f"  -  predicted: {prediction[0]} (p={prediction[1]:.2f})"
    fig.suptitle(textwrap.fill(text, width=max(int(fig.get_figwidth() * 9), 30)), fontsize=11)


def _off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _input_panel(ax, clusters: ClusterExtraction, batch_index: int) -> None:
    image = _image(clusters, batch_index)
    ax.imshow(image, interpolation="nearest")
    ax.set_title(f"input {image.shape[0]}x{image.shape[1]}", fontsize=9)
    _off(ax)


def _block_label(stage: StageClusters, block: int) -> str:
    return f"block {stage.block_index(block) + 1}/{stage.num_blocks}"


def plot_cluster_map(
    clusters: ClusterExtraction, batch_index: int = 0, block: int = -1, alpha: float = 0.6, panel_size: float = 2.6
):
    """Hard cluster map per stage: each position takes the colour of its argmax cluster, blended over the
    image (`alpha` = weight of the colour). Cluster `m` has colour `distinct_colors(M)[m]` in every figure."""
    stages = clusters.clustered_stages
    if not stages:
        raise ValueError("The model has no stage with clusters (num_clusters is 0 everywhere).")
    fig, axes = _new_figure(len(stages) + 1, [_aspect(clusters)], panel_size)
    image = _image(clusters, batch_index)
    size = image.shape[:2]
    _input_panel(axes[0, 0], clusters, batch_index)
    for ax, stage in zip(axes[0, 1:], stages):
        labels = hard_cluster_map(stage, batch_index, block)
        palette = distinct_colors(stage.num_clusters)
        label_image = _upsample(labels, size, "nearest").astype(np.int64)
        overlay = (1 - alpha) * image + alpha * palette[label_image]
        ax.imshow(overlay, interpolation="nearest")
        used = int(labels.unique().numel())
        ax.set_title(
            f"{stage.name} ({_block_label(stage, block)})\n{stage.height}x{stage.width} patches, "
            f"{used} of {stage.num_clusters} clusters",
            fontsize=9,
        )
        _off(ax)
    _suptitle(fig, clusters, "Hard cluster assignment (argmax over clusters)", batch_index)
    return fig


def plot_top_clusters(
    clusters: ClusterExtraction,
    top_k: int = 6,
    rank_by: str = "attention",
    batch_index: int = 0,
    block: int = -1,
    alpha: float = 0.65,
    panel_size: float = 2.2,
):
    """The `top_k` clusters of every clustered stage (ranked by `rank_by`, see `rank_clusters`) as heatmaps of
    their soft assignment `z[m]` over the image; one row per stage, the frame in the cluster's map colour."""
    colormaps = require("matplotlib", purpose="cluster figures").colormaps

    stages = clusters.clustered_stages
    if not stages:
        raise ValueError("The model has no stage with clusters (num_clusters is 0 everywhere).")
    if top_k < 1:
        raise ValueError("top_k must be >= 1.")
    if rank_by == "attention" and any(s.attention(block) is None for s in stages):
        rank_by = "area"
    k = min(top_k, max(s.num_clusters for s in stages))
    fig, axes = _new_figure(k + 1, [_aspect(clusters)] * len(stages), panel_size)
    image = _image(clusters, batch_index)
    size = image.shape[:2]
    gray = image.mean(-1, keepdims=True).repeat(3, -1)
    cmap = colormaps["inferno"]
    score_names = {"attention": "attn", "area": "area", "entropy": "entropy"}
    for row, stage in enumerate(stages):
        order, scores = rank_clusters(stage, rank_by, batch_index, block)
        z = stage.assignment(block)[batch_index]
        palette = distinct_colors(stage.num_clusters)
        ax = axes[row, 0]
        ax.imshow(image, interpolation="nearest")
        ax.set_title(f"{stage.name} ({_block_label(stage, block)})\nrank by {rank_by}", fontsize=9)
        _off(ax)
        for col in range(k):
            ax = axes[row, col + 1]
            _off(ax)
            if col >= stage.num_clusters:
                ax.axis("off")
                continue
            m = int(order[col])
            ax.imshow((1 - alpha) * gray + alpha * cmap(_stretch(_upsample(z[m], size, "bilinear")))[..., :3])
            for spine in ax.spines.values():
                spine.set_edgecolor(palette[m])
                spine.set_linewidth(3)
            value = float(scores[col])
            shown = f"{value:.0%}" if rank_by in ("attention", "area") else f"{value:.2f}"
            peak = float(z[m].max()) * z[m].numel()  # 1 for a uniform assignment
            ax.set_title(f"cluster {m}\n{score_names[rank_by]} {shown}, peak {peak:.1f}x", fontsize=9)
    _suptitle(
        fig,
        clusters,
        f"Top-{k} clusters: soft assignment z[m], min-max scaled (bright = high; peak = max / uniform)",
        batch_index,
    )
    return fig


def plot_query_attention(
    clusters: ClusterExtraction,
    query: Sequence[float] = (0.5, 0.5),
    batch_index: int = 0,
    block: int = -1,
    alpha: float = 0.65,
    num_bars: int = 8,
    panel_size: float = 2.6,
):
    """For one query patch: per stage, its attention over the clusters back-projected onto the image
    (`sum_m attn[q, m] z[m]`, mean over heads; top row) and the attention weights of its `num_bars` most
    attended clusters (bottom row, bars in the clusters' map colours). Stages without clusters show the
    attention row itself.

    `query` is (row, col): integers are input pixels, floats in [0, 1] normalised coordinates.
    """
    colormaps = require("matplotlib", purpose="cluster figures").colormaps

    stages = [s for s in clusters.stages if s.attentions]
    if not stages:
        raise ValueError("No attentions were extracted: call extract_clusters(..., output_attentions=True).")
    image = _image(clusters, batch_index)
    size = image.shape[:2]
    gray = image.mean(-1, keepdims=True).repeat(3, -1)
    cmap = colormaps["inferno"]
    fig, axes = _new_figure(len(stages) + 1, [_aspect(clusters), 0.8], panel_size)
    _input_panel(axes[0, 0], clusters, batch_index)
    first = query_to_patch(query, size, size)  # the query in input pixels
    axes[0, 0].plot(first[1], first[0], marker="+", color="cyan", markersize=14, markeredgewidth=2.5)
    axes[1, 0].axis("off")
    axes[1, 0].text(
        0.0,
        0.5,
        "top: where the query patch\nreads from (attention over\nclusters x assignment,\nmin-max scaled)\n\n"
        "bottom: its attention\nweights per cluster",
        fontsize=8,
        va="center",
        transform=axes[1, 0].transAxes,
    )
    for col, stage in enumerate(stages, start=1):
        row, column = query_to_patch(query, size, (stage.height, stage.width))
        heat = query_attention_map(stage, (row, column), batch_index, block)
        ax = axes[0, col]
        ax.imshow((1 - alpha) * gray + alpha * cmap(_stretch(_upsample(heat, size, "bilinear")))[..., :3])
        # outline of the query patch in input pixels
        ph, pw = size[0] / stage.height, size[1] / stage.width
        from matplotlib.patches import Rectangle

        ax.add_patch(
            Rectangle((column * pw - 0.5, row * ph - 0.5), pw, ph, fill=False, edgecolor="cyan", linewidth=1.5)
        )
        kind = f"{stage.num_clusters} clusters" if stage.has_clusters else "self-attention"
        ax.set_title(
            f"{stage.name} ({_block_label(stage, block)})\npatch ({row},{column}) of "
            f"{stage.height}x{stage.width}, {kind}",
            fontsize=9,
        )
        _off(ax)

        bar_ax = axes[1, col]
        weights = stage.attention(block)[batch_index, :, row * stage.width + column, :].mean(0)
        count = min(num_bars, weights.numel())
        values, order = weights.sort(descending=True)
        values, order = values[:count].numpy(), order[:count].numpy()
        if stage.has_clusters:
            colors = distinct_colors(stage.num_clusters)[order]
            labels = [str(int(m)) for m in order]
            bar_ax.set_xlabel("cluster", fontsize=8)
        else:
            colors = ["0.5"] * count
            labels = [f"{int(i) // stage.width},{int(i) % stage.width}" for i in order]
            bar_ax.set_xlabel("key patch (row,col)", fontsize=8)
        bar_ax.bar(range(count), values, color=colors, edgecolor="black", linewidth=0.5)
        bar_ax.set_xticks(range(count))
        bar_ax.set_xticklabels(labels, fontsize=7, rotation=90 if count > 6 else 0)
        bar_ax.set_ylim(0, max(float(values.max()) * 1.15, 1e-6))
        bar_ax.tick_params(axis="y", labelsize=7)
        bar_ax.set_title("attention weight (mean over heads)", fontsize=8)
    _suptitle(fig, clusters, f"Attention of the query patch at {_format_query(query)} (row, col)", batch_index)
    return fig


# --------------------------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------------------------
def save_cluster_figures(
    model,
    image: Any,
    out_dir: str | os.PathLike,
    image_processor=None,
    image_size: int | Sequence[int] | None = None,
    query: Sequence[float] = (0.5, 0.5),
    top_k: int = 6,
    rank_by: str = "attention",
    block: int = -1,
    dpi: int = 110,
    title: str | None = None,
) -> dict[str, Path]:
    """Write `cluster_map.png`, `top_clusters.png`, `query_attention.png` and an index (`index.html`,
    `index.md`) to `out_dir`; return `{name: path}` (the index included).

    `image` is a path, PIL image or array (see `load_image`), or a ready `(1, C, H, W)` pixel tensor (shown
    stretched to [0, 1]). `image_processor`/`image_size` are used as in `prepare_image`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(image, torch.Tensor) and image.ndim == 4:
        pixel_values, display = image, None
    else:
        image = load_image(image)
        query = _normalise_query(query, (image.height, image.width))
        pixel_values, display = prepare_image(image, image_processor, image_size, model=model)
    clusters = extract_clusters(model, pixel_values, display)

    figures: list[tuple[str, str, Any]] = []
    if clusters.clustered_stages:
        figures.append(("cluster_map", "Hard cluster map per stage", plot_cluster_map(clusters, block=block)))
        figures.append(
            (
                "top_clusters",
                f"Top-{top_k} clusters by {rank_by}",
                plot_top_clusters(clusters, top_k=top_k, rank_by=rank_by, block=block),
            )
        )
    figures.append(
        (
            "query_attention",
            f"Attention of the query patch {_format_query(query)}",
            plot_query_attention(clusters, query=query, block=block),
        )
    )

    paths: dict[str, Path] = {}
    for name, _, fig in figures:
        path = out / f"{name}.png"
        fig.savefig(path, dpi=dpi)
        paths[name] = path

    heading = title or "PaCa-ViT clusters"
    prediction = clusters.prediction(0)
    summary = [
        f"input: {clusters.pixel_values.shape[-2]}x{clusters.pixel_values.shape[-1]}",
        "stages: "
        + ", ".join(
            f"{s.name} {s.height}x{s.width} ({s.num_clusters} clusters)"
            if s.num_clusters
            else f"{s.name} {s.height}x{s.width} (self-attention)"
            for s in clusters.stages
        ),
    ]
    if prediction is not None:
        summary.append(f"predicted: {prediction[0]} (p={prediction[1]:.2f})")
    md = [f"# {heading}", ""] + [f"- {line}" for line in summary] + [""]
    body = [f"<h1>{html.escape(heading)}</h1>", "<ul>"] + [f"<li>{html.escape(s)}</li>" for s in summary] + ["</ul>"]
    for name, caption, _ in figures:
        md += [f"## {caption}", "", f"![{caption}]({name}.png)", ""]
        body += [f"<h2>{html.escape(caption)}</h2>", f'<img src="{name}.png" alt="{html.escape(caption)}">']
    (out / "index.md").write_text("\n".join(md))
    (out / "index.html").write_text(
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>"
        + html.escape(heading)
        + "</title><style>body{font-family:sans-serif;margin:2em}img{max-width:100%}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    paths["index_md"] = out / "index.md"
    paths["index_html"] = out / "index.html"
    return paths

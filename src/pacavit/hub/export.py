"""A Hub-ready folder from any pacavit model folder (converted or a training output): `python -m pacavit.hub export`.

The folder loads as Hub remote code without this package: `config.json` gets the complete `auto_map` (every Auto
class registered for its config), the flat model files are copied beside the weights (found by following their
single-dot relative imports, as transformers does, and checked to import nothing of `pacavit`), and every folder
gets an image processor and a model card.

Everything it reads is checked first (`pacavit.hub.folder.check_model_folder`): a source that is not a PaCa-ViT
model folder, a corrupt `config.json` or processor config, truncated weights, a `--card` that is not a text file,
an invalid `--repo-id`, a DST that is the source (or holds it) are each a `HubFolderError` naming the file or
argument, before anything is written.
"""

from __future__ import annotations

import inspect
import json
import pickle
from pathlib import Path

import transformers
from safetensors import SafetensorError
from transformers import AutoConfig, AutoImageProcessor
from transformers.dynamic_module_utils import get_relative_import_files

import pacavit  # the public classes by name, registered with the Auto classes

from ..preprocessing import default_image_processor
from ..safe_io import atomic_directory, check_output_folder
from .cards import card_for_hub_id, write_model_card
from .folder import PREPROCESSOR_CONFIG, HubFolderError, check_model_folder, check_remote_code, check_repo_id

DST = "export folder (DST)"  # how the destination is named in messages
# What transformers raises for a config, weights or processor file it cannot use.
_LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError, SafetensorError, pickle.PickleError)

# The pipeline each model class serves (the card's `pipeline_tag`).
PIPELINE_TAGS = {
    "PaCaViTForImageClassification": "image-classification",
    "PaCaViTForSemanticSegmentation": "image-segmentation",
    "PaCaViTForInstanceSegmentation": "object-detection",
    "PaCaViTModel": "image-feature-extraction",
    "PaCaViTBackbone": "image-feature-extraction",
}


def _module_stem(cls) -> str:
    return cls.__module__.rsplit(".", 1)[-1]


def auto_map_for(config_class) -> dict[str, str]:
    """Every Auto class registered for `config_class` (on `import pacavit`), as `module.Class` of the flat
    remote-code files: `save_pretrained` writes only the saved class, which makes the others fail with
    trust_remote_code. Exact config types only, as the Auto mappings match them."""
    auto_map = {"AutoConfig": f"{_module_stem(config_class)}.{config_class.__name__}"}
    names = sorted(n for n in dir(transformers) if n.startswith("AutoModel") or n == "AutoBackbone")
    for name in names:
        mapping = getattr(getattr(transformers, name), "_model_mapping", None)
        model_class = mapping.get(config_class, None) if mapping is not None else None
        if model_class is not None and model_class.__module__.startswith("pacavit."):
            auto_map[name] = f"{_module_stem(model_class)}.{model_class.__name__}"
    return auto_map


def remote_code_files(classes) -> list[Path]:
    """The source files of `classes` and everything they reach by flat relative imports (found as transformers
    does when it loads remote code)."""
    files: dict[str, Path] = {}
    for cls in classes:
        source = Path(inspect.getfile(cls))
        for path in [source, *map(Path, get_relative_import_files(source))]:
            files[path.name] = path
    return [files[name] for name in sorted(files)]


def _model_class(config):
    """Our model class named by `config.architectures` (what `save_pretrained` wrote)."""
    names = config.architectures or []
    for name in names:
        cls = getattr(pacavit, name, None)
        if cls is not None:
            return cls
    raise HubFolderError(
        f"config.json names the architectures {names}, none of which is a pacavit model class. Export folders "
        "written by pacavit (save_pretrained, pacavit.convert, the training scripts)."
    )


def _write_generic_card(folder: Path, model, repo_id: str | None) -> None:
    name = (repo_id or folder.name).split("/")[-1]
    params = sum(p.numel() for p in model.parameters())
    write_model_card(
        folder / "README.md",
        model_name=name,
        task=PIPELINE_TAGS.get(type(model).__name__, "image-feature-extraction"),
        dataset_name="unknown",
        metrics=[],
        tags=["custom_code"],
        intro=(
            f"A PaCa-ViT model (`{type(model).__name__}`, {params / 1e6:.2f}M parameters) exported with "
            "`python -m pacavit.hub export`. Load it with `trust_remote_code=True`, or `import pacavit` first."
        ),
        sections={},
    )


def _processor_auto_map(saved_config: dict, folder: Path) -> str | None:
    """The `AutoImageProcessor` entry of the auto_map: our own processor class (Mask R-CNN), found through the
    model's own `auto_map` or named in the processor config; None for transformers' processors."""
    reference = (saved_config.get("auto_map") or {}).get("AutoImageProcessor")
    processor_file = folder / PREPROCESSOR_CONFIG
    processor_config = json.loads(processor_file.read_text()) if processor_file.is_file() else {}
    named = getattr(pacavit, processor_config.get("image_processor_type", ""), None)
    if named is not None:
        reference = f"{_module_stem(named)}.{named.__name__}"
    return reference


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def _read_card(card: str | Path) -> bytes:
    """The bytes of a `--card` file, which must be a non-empty UTF-8 text file."""
    card = Path(card)
    if not card.is_file():
        state = "is a folder" if card.is_dir() else "does not exist"
        raise HubFolderError(f"The model card {card} (--card) {state}: pass a README.md file.")
    data = card.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise HubFolderError(f"The model card {card} (--card) is not a UTF-8 text file: pass a README.md.") from error
    if not text.strip():
        raise HubFolderError(f"The model card {card} (--card) is empty: pass a README.md with the card.")
    return data


def _check_destination(src: Path, dst: Path, overwrite: bool) -> None:
    """DST must not be SRC nor hold it (the swap would delete the source), must be writable, and replaced only with
    `overwrite`."""
    if src.resolve() == dst.resolve() or src.resolve().is_relative_to(dst.resolve()):
        raise HubFolderError(
            f"The {DST} {dst} is the source folder {src} or holds it: the export replaces DST, which would delete "
            "the source (and any checkpoints in it). Choose another DST."
        )
    check_output_folder(dst, DST)
    if dst.exists() and not overwrite:
        raise HubFolderError(f"The {DST} {dst} exists; pass --overwrite to replace it.")


def _load_source(src: Path):
    """The config, the model (strictly loaded) and the image processor (None: none saved) of `src`."""
    try:
        config = AutoConfig.from_pretrained(src)
    except _LOAD_ERRORS as error:
        raise HubFolderError(
            f"{src / 'config.json'} is not a valid PaCa-ViT config ({_first_line(error)}); save the model folder "
            "again (save_pretrained, the converter or the training script)."
        ) from error
    model_class = _model_class(config)
    try:
        model, info = model_class.from_pretrained(src, output_loading_info=True)
    except _LOAD_ERRORS as error:
        raise HubFolderError(
            f"The weights in {src} cannot be loaded into {model_class.__name__} ({_first_line(error)}); save the "
            "model folder again."
        ) from error
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise HubFolderError(f"The weights in {src} do not fit {model_class.__name__}: {bad}")
    processor = None
    if (src / PREPROCESSOR_CONFIG).is_file():
        try:
            processor = AutoImageProcessor.from_pretrained(src)
        except _LOAD_ERRORS as error:
            raise HubFolderError(
                f"{src / PREPROCESSOR_CONFIG} is not a valid image processor config ({_first_line(error)}); delete "
                "it to export with the task's default processor, or save the processor again."
            ) from error
    return config, model_class, model, processor


def export_folder(
    src: str | Path, dst: str | Path, repo_id: str | None = None, card: str | Path | None = None, overwrite=False
) -> Path:
    """Write a Hub-ready folder `dst` from a pacavit model folder `src` (converted or a training output).

    `dst` gets: `config.json` with the complete `auto_map`, `model.safetensors` (re-saved from a strict load),
    the image processor config (the source's, else the task's default: `pacavit.preprocessing`), the flat model
    files for remote code, and `README.md`: `card` if given, else the released-checkpoint card when `repo_id` is
    one of them (`pacavit.hub.cards`), else the source's README, else a generic card. Written to a temporary
    sibling folder and swapped into place (`pacavit.safe_io.atomic_directory`), so `dst` is never half-written.

    Every input is checked before anything is written (see the module doc); the problems are `HubFolderError`s,
    or `pacavit.safe_io.OutputFolderError` for a `dst` that cannot be written.
    """
    src, dst = Path(src), Path(dst)
    if repo_id is not None:
        check_repo_id(repo_id)
    card_bytes = _read_card(card) if card is not None else None
    check_model_folder(src, "export", "SRC", require_safetensors=False, remote_code=False)
    _check_destination(src, dst, overwrite)
    config, model_class, model, processor = _load_source(src)
    if card_bytes is None and repo_id is not None and (release_card := card_for_hub_id(repo_id)) is not None:
        card_bytes = release_card.encode("utf-8")
    if card_bytes is None and (src / "README.md").is_file():
        card_bytes = (src / "README.md").read_bytes()
    with atomic_directory(dst, DST) as tmp:  # written beside dst, swapped into place when complete
        model.save_pretrained(tmp, safe_serialization=True)
        for stray in tmp.glob("*.py"):  # save_pretrained's own code copy; the full set is written below
            stray.unlink()
        (processor or default_image_processor(model.config)).save_pretrained(tmp)
        config_file = tmp / "config.json"
        saved = json.loads(config_file.read_text())
        auto_map = auto_map_for(type(config))
        # Our own image processor (Mask R-CNN) is found through config.json's auto_map, which its model's
        # save_pretrained writes; its preprocessor_config.json deliberately names no class (see
        # PaCaViTMaskRCNNImageProcessor.save_pretrained), so nothing is added there.
        processor_reference = _processor_auto_map(saved, tmp)
        if processor_reference:
            auto_map["AutoImageProcessor"] = processor_reference
        classes = [type(config), model_class] + [getattr(pacavit, ref.split(".")[1]) for ref in auto_map.values()]
        for path in remote_code_files(classes):
            (tmp / path.name).write_bytes(path.read_bytes())
        saved["auto_map"] = auto_map
        config_file.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
        problems = check_remote_code(tmp)
        if problems:
            raise HubFolderError("The model files do not work as Hub remote code:\n  " + "\n  ".join(problems))
        if card_bytes is not None:
            (tmp / "README.md").write_bytes(card_bytes)
        else:
            _write_generic_card(tmp, model, repo_id)
    return dst


__all__ = ["PIPELINE_TAGS", "auto_map_for", "check_remote_code", "export_folder", "remote_code_files"]

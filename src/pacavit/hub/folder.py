"""What a Hub-ready folder holds and what is left out of it: the one list of files that `push` uploads and
`install` places, the checks every subcommand runs on the folder and the arguments it reads (`check_model_folder`,
`check_remote_code`, `check_repo_id`, `check_revision`), and the error of the Hub tools.

Every input is checked before anything is written or uploaded, and each problem is a `HubFolderError` naming the
file or the flag: a folder that does not exist or is a file, a `config.json` that is missing, not JSON or of a
model type that is not PaCa-ViT's, a truncated `model.safetensors`, remote-code files that `auto_map` names but
the folder lacks, a repo id or revision that huggingface_hub or git would not accept.
"""

from __future__ import annotations

import ast
import json
import re
from fnmatch import fnmatch
from pathlib import Path

from huggingface_hub.utils import HFValidationError, validate_repo_id

from ..configuration_pacavit import PaCaViTConfig
from ..configuration_pacavit_maskrcnn import PaCaViTMaskRCNNConfig
from ..configuration_pacavit_segmentation import PaCaViTSegmentationConfig
from ..safe_io import CheckpointFileError, check_safetensors_file

PREPROCESSOR_CONFIG = "preprocessor_config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
# The model types of pacavit's configs: what config.json of a folder the tools handle names.
MODEL_TYPES = tuple(cls.model_type for cls in (PaCaViTConfig, PaCaViTSegmentationConfig, PaCaViTMaskRCNNConfig))
# What a training output folder holds that is not part of the model: checkpoints (complete or being written),
# TensorBoard logs, Accelerate RNG states.
TRAINING_ARTIFACTS = ("step_*", "epoch_*", ".tmp_*", "runs/*", "*/random_states_*")


class HubFolderError(ValueError):
    """A folder that cannot be exported, installed or pushed, or an argument of the Hub tools that cannot be right;
    the message names the file or flag and says what to do."""


def files_to_upload(folder: str | Path) -> list[str]:
    """Relative paths (posix, sorted) of what `push` uploads and `install` places: everything in the folder but
    hidden files, `__pycache__` and training artifacts (checkpoints, logs, RNG states)."""
    folder = Path(folder)
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or any(part.startswith(".") or part == "__pycache__" for part in rel.split("/")):
            continue
        if any(fnmatch(rel, pattern) or fnmatch(rel.split("/")[0], pattern) for pattern in TRAINING_ARTIFACTS):
            continue
        out.append(rel)
    return out


def model_files(folder: str | Path, action: str) -> list[str]:
    """`files_to_upload(folder)`, which must hold a `config.json` (a `HubFolderError` saying what to `action`
    otherwise)."""
    files = files_to_upload(folder)
    if "config.json" not in files:
        raise HubFolderError(f"{folder} has no config.json: {action} a folder written by `pacavit.hub export`.")
    return files


def default_repo_id(output_dir: str | Path) -> str:
    """The repository name used when none is given: the output folder's name."""
    return Path(output_dir).absolute().name


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------
def check_repo_id(repo_id: str, owner_required: bool = False) -> str:
    """`repo_id` when huggingface_hub accepts it (`validate_repo_id`: `name` or `owner/name`, letters, digits,
    `-_.`, no `--` or `..`, at most 96 characters) and, with `owner_required`, it has an owner; else
    `HubFolderError` naming --repo-id."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        detail = str(error).replace(" Use `repo_type` argument if needed.", "")
        raise HubFolderError(
            f"repo id {repo_id!r} (--repo-id) is not a valid Hub repository id: {detail} Use owner/name, e.g. "
            "ivmcl/pacavit-base."
        ) from error
    if owner_required and "/" not in repo_id:
        raise HubFolderError(f"repo id {repo_id!r} (--repo-id) needs an owner: e.g. ivmcl/pacavit-base.")
    return repo_id


_COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")
_REF_FORBIDDEN = set(" ~^:?*[\\")


def _revision_problem(revision) -> str | None:
    if not isinstance(revision, str) or not revision:
        return "is empty"
    if _COMMIT_HASH.match(revision):
        return "is a commit hash, not a branch or tag name"
    bad = sorted({ch for ch in revision if ord(ch) < 32 or ord(ch) == 127 or ch in _REF_FORBIDDEN})
    if bad:
        return f"holds {', '.join(map(repr, bad))}, which a git ref name cannot hold"
    if revision.startswith("/") or revision.endswith("/") or "//" in revision:
        return "has an empty path component (a leading, trailing or double '/')"
    for part, why in (("..", "holds '..'"), ("@{", "holds '@{'")):
        if part in revision:
            return f"{why}, which a git ref name cannot hold"
    if revision == "@" or revision.endswith("."):
        return "is '@' or ends with '.', which a git ref name cannot"
    if any(part.startswith(".") or part.endswith(".lock") for part in revision.split("/")):
        return "has a component that starts with '.' or ends with '.lock', which a git ref name cannot"
    return None


def check_revision(revision: str) -> str:
    """`revision` when it is a valid git ref name (git's `check-ref-format` rules: no `..`, no component starting
    with `.` or ending with `.lock`, no leading, trailing or double `/`, no space, control character, NUL or any of
    `~^:?*[\\`, no `@{`) and not a commit hash; else `HubFolderError` naming --revision. Slashes between valid
    components are allowed, as git allows them: the Hub's pull-request refs are `refs/pr/N` (stored by the Hub
    cache as `refs/refs/pr/N`), and branches may be named `feature/x`."""
    problem = _revision_problem(revision)
    if problem:
        raise HubFolderError(
            f"revision {revision!r} (--revision) {problem}: give a branch or tag name such as main, v1.0 or refs/pr/1."
        )
    return revision


# --------------------------------------------------------------------------------------------
# The folder
# --------------------------------------------------------------------------------------------
def read_json_file(path: Path, fix: str) -> dict:
    """The JSON object in `path`; `HubFolderError` naming the file (and `fix`, what to do) when it is not one."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HubFolderError(
            f"{path} is not valid JSON ({error}): the file is truncated or corrupt; {fix}."
        ) from error
    if not isinstance(value, dict):
        raise HubFolderError(f"{path} holds a JSON {type(value).__name__}, not an object; {fix}.")
    return value


def _weights_files(folder: Path, files: list[str], fix: str) -> list[str]:
    """The safetensors files of the folder's weights (one file, or the shards of an index)."""
    if WEIGHTS_INDEX in files:
        index = read_json_file(folder / WEIGHTS_INDEX, fix)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise HubFolderError(f"{folder / WEIGHTS_INDEX} has no weight_map; {fix}.")
        shards = sorted(set(map(str, weight_map.values())))
        missing = [shard for shard in shards if shard not in files]
        if missing:
            raise HubFolderError(f"{folder / WEIGHTS_INDEX} names shards that the folder lacks: {missing}; {fix}.")
        return shards
    return [WEIGHTS] if WEIGHTS in files else []


def check_model_folder(
    folder: str | Path,
    action: str,
    label: str = "FOLDER",
    *,
    require_safetensors: bool = True,
    remote_code: bool = True,
) -> list[str]:
    """Check that `folder` is a PaCa-ViT model folder that the tools can `action` ("export", "install", "push");
    return `files_to_upload(folder)`. `HubFolderError` naming the folder (`label`, the CLI's argument) or the file:

    - the folder does not exist or is a file; it has no `config.json`;
    - `config.json` or `preprocessor_config.json` is not a JSON object;
    - `config.json`'s `model_type` is not one of pacavit's (`MODEL_TYPES`);
    - `model.safetensors` (or a shard of `model.safetensors.index.json`) is truncated or corrupt (its header is
      read and checked to cover the file; no tensor is loaded). Without `require_safetensors` a folder with only
      `pytorch_model.bin` passes (the export re-saves it as safetensors); with it, a folder without safetensors
      weights fails;
    - with `remote_code`, the remote-code files do not work (`check_remote_code`).
    """
    folder = Path(folder)
    made_by = "a folder written by `python -m pacavit.hub export` (or save_pretrained of a pacavit model)"
    if action == "export":
        fix = "save the model folder again (save_pretrained, the converter or the training script)"
    else:
        fix = "export the model folder again (`python -m pacavit.hub export SRC DST --overwrite`)"
    if not folder.exists():
        raise HubFolderError(f"{label} {folder} does not exist: {action} {made_by}.")
    if not folder.is_dir():
        raise HubFolderError(f"{label} {folder} is a file, not a model folder: {action} {made_by}.")
    files = files_to_upload(folder)
    if "config.json" not in files:
        raise HubFolderError(f"{label} {folder} has no config.json, so it is not a model folder: {action} {made_by}.")
    config = read_json_file(folder / "config.json", fix)
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise HubFolderError(
            f"{folder / 'config.json'} has model_type {model_type!r}, which is not a PaCa-ViT model "
            f"({', '.join(MODEL_TYPES)}): {action} {made_by}."
        )
    if PREPROCESSOR_CONFIG in files:
        read_json_file(folder / PREPROCESSOR_CONFIG, fix)
    shards = _weights_files(folder, files, fix)
    if not shards and (require_safetensors or "pytorch_model.bin" not in files):
        if action == "export":
            how = "save the model with save_pretrained (or convert or train it again)"
        else:
            how = "export the model folder first (`python -m pacavit.hub export SRC DST` writes them as safetensors)"
        raise HubFolderError(f"{label} {folder} holds no {WEIGHTS}: the model's weights are missing; {how}.")
    for shard in shards:
        try:
            check_safetensors_file(folder / shard, "weights file")
        except CheckpointFileError as error:
            raise HubFolderError(f"{error} Or {fix}.") from error
    if remote_code:
        problems = check_remote_code(folder)
        if problems:
            raise HubFolderError(
                f"The model files in {folder} do not work as Hub remote code ({'; '.join(problems)}); "
                "export the model folder again: `python -m pacavit.hub export SRC DST --overwrite`."
            )
    return files


def _defined_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.ImportFrom):
            names.update(alias.asname or alias.name for alias in node.names)
    return names


def _auto_map_references(folder: Path) -> list[tuple[str, str, str]]:
    """(file, Auto class, `module.Class`) of every local `auto_map` entry of config.json and the processor config
    (entries of other repositories, `repo--module.Class`, are skipped)."""
    found = []
    for name in ("config.json", PREPROCESSOR_CONFIG):
        try:
            auto_map = json.loads((folder / name).read_text(encoding="utf-8")).get("auto_map") or {}
        except (OSError, ValueError, AttributeError):  # absent or unreadable: check_model_folder says so
            continue
        for auto_class, references in auto_map.items() if isinstance(auto_map, dict) else ():
            for reference in references if isinstance(references, list) else [references]:
                if isinstance(reference, str) and "--" not in reference:
                    found.append((name, auto_class, reference))
    return found


def check_remote_code(folder: str | Path) -> list[str]:
    """Problems that would break the folder as Hub remote code: an `auto_map` entry (config.json,
    preprocessor_config.json) naming a file the folder lacks or a class that file does not define, a file that is
    not valid Python, a relative import that is not a single-dot import of a sibling file in the folder, or an
    absolute import of our package (`pacavit`), which a user without it does not have. Returns the problems
    (empty: fine)."""
    folder = Path(folder)
    problems = []
    present = {p.stem for p in folder.glob("*.py")}
    trees = {}
    for path in sorted(folder.glob("*.py")):
        try:
            trees[path.stem] = tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, UnicodeDecodeError, ValueError) as error:
            problems.append(f"{path.name}: not valid Python ({type(error).__name__}: {error})")
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                module = node.module or ""
                if node.level != 1 or not module or "." in module:
                    problems.append(f"{path.name}:{node.lineno}: relative import must be `from .<sibling> import`")
                elif module not in present:
                    problems.append(f"{path.name}:{node.lineno}: imports .{module}, which is not in the folder")
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in names:
                    if name.split(".")[0] in ("pacavit", "pacavit_openmp_guard"):
                        problems.append(f"{path.name}:{node.lineno}: imports {name}, which remote-code users lack")
    missing: dict[tuple[str, str], list[str]] = {}  # (file, module) -> the Auto classes naming it
    for file, auto_class, reference in _auto_map_references(folder):
        module, _, class_name = reference.rpartition(".")
        if module not in present:
            missing.setdefault((file, module), []).append(auto_class)
        elif module in trees and class_name not in _defined_names(trees[module]):
            problems.append(f"{file}: auto_map[{auto_class!r}] is {reference}, but {module}.py has no {class_name}")
    for (file, module), auto_classes in missing.items():
        problems.append(f"{file}: auto_map ({', '.join(auto_classes)}) names {module}.py, which is not in the folder")
    return problems


__all__ = [
    "MODEL_TYPES",
    "PREPROCESSOR_CONFIG",
    "TRAINING_ARTIFACTS",
    "WEIGHTS",
    "HubFolderError",
    "check_model_folder",
    "check_remote_code",
    "check_repo_id",
    "check_revision",
    "default_repo_id",
    "files_to_upload",
    "model_files",
    "read_json_file",
]

"""The Hugging Face Hub side of pacavit: `python -m pacavit.hub export|install|push`.

- `export`: a Hub-ready folder (complete `auto_map`, remote-code model files, image processor, model card) from any
  pacavit model folder;
- `cache`: that folder installed in the offline Hugging Face cache, laid out as a download;
- `push`: the fail-early check of the training scripts (`hub_preflight`) and the upload (`push`);
- `folder`: what such a folder holds (`files_to_upload`) and the tools' error (`HubFolderError`);
- `releases`: the released checkpoints with the paper's numbers (one data table);
- `cards`: model cards, for any folder (`write_model_card`) and for the released checkpoints (`render_card`);
- `cli` (and `__main__`): the command line.
"""

from .cache import install_to_cache
from .cards import CardMetric, card_for_hub_id, render_card, write_model_card
from .cli import main
from .export import auto_map_for, check_remote_code, export_folder, remote_code_files
from .folder import TRAINING_ARTIFACTS, HubFolderError, default_repo_id, files_to_upload
from .push import hub_preflight, push
from .releases import RELEASES, hub_id

__all__ = [
    "RELEASES",
    "TRAINING_ARTIFACTS",
    "CardMetric",
    "HubFolderError",
    "auto_map_for",
    "card_for_hub_id",
    "check_remote_code",
    "default_repo_id",
    "export_folder",
    "files_to_upload",
    "hub_id",
    "hub_preflight",
    "install_to_cache",
    "main",
    "push",
    "remote_code_files",
    "render_card",
    "write_model_card",
]

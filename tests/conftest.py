"""Shared test set-up: offline Hugging Face stack, small models, and the reference fixtures."""

import os

# No network in tests: without these, one cached Hub load can spend minutes on retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("HF_UPDATE_DOWNLOAD_COUNTS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]

# stand-ins imported by transformers' common tests (tests/transformers_common), not tests of their own; their
# names (test_utils.py, ...) would clash with ours
collect_ignore_glob = ["transformers_common/shims/*"]

# Tiny widths keep every test fast while exercising all code paths.
TINY = dict(hidden_sizes=[16, 32, 48, 64], num_attention_heads=[1, 2, 2, 4], depths=[1, 1, 2, 1])


def reference_dir() -> Path | None:
    """The parity fixtures: $PACAVIT_REFERENCE_DIR, else ../shared/reference beside the checkout."""
    candidates = [os.environ.get("PACAVIT_REFERENCE_DIR"), REPO_ROOT.parent / "shared" / "reference"]
    for candidate in candidates:
        if candidate and Path(candidate, "README.md").exists():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def reference():
    path = reference_dir()
    if path is None:
        pytest.skip(
            "parity fixtures not found: set PACAVIT_REFERENCE_DIR to the folder with conv_stagewise.pth etc. "
            "(they sit in ../shared/reference in the project workspace)"
        )
    return path


def tiny_config(preset: str = "pacavit-tiny", **overrides):
    from pacavit import PaCaViTConfig

    values = dict(TINY, num_labels=5)
    values.update(overrides)
    return PaCaViTConfig.from_preset(preset, **values)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

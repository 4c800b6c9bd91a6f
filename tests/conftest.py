"""Shared test set-up: the offline Hugging Face stack and the fixtures (shared plain names are in helpers.py)."""

import os

# No network in tests: without these, one cached Hub load can spend minutes on retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("HF_UPDATE_DOWNLOAD_COUNTS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import reference_dir  # noqa: E402

# stand-ins imported by transformers' common tests (tests/transformers_common), not tests of their own; their
# names (test_utils.py, ...) would clash with ours
collect_ignore_glob = ["transformers_common/shims/*"]


@pytest.fixture(scope="session")
def reference():
    path = reference_dir()
    if path is None:
        pytest.skip(
            "parity fixtures not found: set PACAVIT_REFERENCE_DIR to the folder with conv_stagewise.pth etc. "
            "(they sit in ../shared/reference in the project workspace)"
        )
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def fresh_accelerate_state():
    """In-process training runs leave accelerate's singletons behind; reset them after the test."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()

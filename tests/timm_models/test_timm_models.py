"""timm's own model tests (`tests/test_models.py` of the installed timm release) on the `pacavit_*` models.

Opt-in: the test file comes from the timm source distribution of the installed version, given by $TIMM_TESTS_DIR
(`tests/timm_models/run.sh` downloads it and runs this file). Without it, everything here is skipped, saying so.

The file is executed here unchanged except for one addition: `timm_pacavit` joins `FEAT_INTER_FILTERS`, timm's
opt-in list of model modules with `forward_intermediates()` and the `features_only` getter (as a timm model module
listed there would). `conftest.py` keeps the `pacavit_*` cases only.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS_DIR = os.environ.get("TIMM_TESTS_DIR")
SOURCE = Path(TESTS_DIR, "test_models.py") if TESTS_DIR else None
if SOURCE is None or not SOURCE.exists():
    pytest.skip(
        "timm's model tests need $TIMM_TESTS_DIR = the tests/ folder of the timm sdist of the installed version; "
        "run tests/timm_models/run.sh",
        allow_module_level=True,
    )

import pacavit  # noqa: E402,F401  (registers the pacavit_* models before timm's test file lists the models)

_ANCHOR = "FEAT_INTER_FILTERS = ["
_text = SOURCE.read_text()
if _text.count(_ANCHOR) != 1:
    raise RuntimeError(f"{SOURCE}: expected one `{_ANCHOR}` line to add timm_pacavit to, found {_text.count(_ANCHOR)}")
# run the file in this module's namespace, so pytest collects its tests and fixtures from here
exec(compile(_text.replace(_ANCHOR, _ANCHOR + "'timm_pacavit', ", 1), str(SOURCE), "exec"), globals())

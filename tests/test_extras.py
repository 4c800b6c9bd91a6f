"""pacavit.extras.require: a missing optional package is an ImportError naming the extra that provides it."""

import pytest

from pacavit.extras import require


def test_require_returns_the_module_or_names_the_extra():
    assert require("json").dumps([1]) == "[1]"
    with pytest.raises(ImportError, match=r"needs `no_such_module_xyz` for plots.*pip install 'pacavit\[viz\]'"):
        require("no_such_module_xyz.sub", extra="viz", purpose="plots")
    with pytest.raises(ImportError, match=r"pacavit\[dev\]"):  # unknown packages: the everything extra
        require("no_such_module_xyz")

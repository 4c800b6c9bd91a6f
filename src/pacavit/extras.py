"""Optional dependencies: `require(module)` imports one, or raises an ImportError naming the pip extra (setup.cfg,
`[options.extras_require]`) that provides it."""

from __future__ import annotations

import importlib
from types import ModuleType

# Which pip extra of this package provides each optional dependency (see setup.cfg, [options.extras_require]).
EXTRA_OF = {
    "timm": "timm",
    "accelerate": "train",
    "datasets": "train",
    "sklearn": "train",
    "tqdm": "train",
    "tensorboard": "train",
    "matplotlib": "viz",
    "torchvision": "detection",
    "pycocotools": "detection",
    "xformers": "xformers",
}


def require(module: str, extra: str | None = None, purpose: str | None = None) -> ModuleType:
    """Import an optional dependency, or raise an ImportError that names the pip extra providing it.

    `require("timm")` returns the module; when it is missing the error reads e.g.
    "... needs `timm`, which is not installed: pip install 'pacavit[timm]'".
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        extra = extra or EXTRA_OF.get(module.split(".")[0], "dev")
        what = f" for {purpose}" if purpose else ""
        raise ImportError(
            f"pacavit needs `{module.split('.')[0]}`{what}, which is not installed: "
            f"pip install 'pacavit[{extra}]' (or pip install -e '.[{extra}]' in a checkout)."
        ) from error

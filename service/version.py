"""The service's version: the installed package's metadata (``pyproject.toml`` is the one source)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "mfdv-snn"


def package_version() -> str:
    """``mfdv-snn``'s installed version, or ``0+unknown`` when the code runs without its metadata
    (a source tree that was never ``pip install``-ed)."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"


__version__ = package_version()

"""The SGLang versions the plugin supports, and the startup check that enforces them.

The plugin relies on SGLang internals that change between releases (the unified radix cache,
its tree core and the plugin registries), so it accepts only the releases it was checked on.
"""
from __future__ import annotations

import re
from importlib import metadata

__all__ = [
    "MAX_SGLANG_EXCLUSIVE",
    "MIN_SGLANG",
    "SUPPORTED_SGLANG",
    "UnsupportedSGLangVersion",
    "check_sglang_version",
    "installed_sglang_version",
    "is_supported",
]

MIN_SGLANG = (0, 5, 23)
MAX_SGLANG_EXCLUSIVE = (0, 5, 24)
SUPPORTED_SGLANG = ">=0.5.23,<0.5.24"
"""The range as a pip requirement specifier (post-releases of 0.5.23 are included)."""

_RELEASE = re.compile(r"^\s*v?(\d+)\.(\d+)\.(\d+)")


class UnsupportedSGLangVersion(RuntimeError):
    """SGLang is missing or its version is outside `SUPPORTED_SGLANG`."""


def installed_sglang_version() -> str | None:
    """The installed ``sglang`` distribution's version, or None when it is not installed."""
    try:
        return metadata.version("sglang")
    except metadata.PackageNotFoundError:
        return None


def is_supported(version: str) -> bool:
    """Whether ``version`` (e.g. ``"0.5.23.post1"``) lies in the supported range."""
    match = _RELEASE.match(version)
    if match is None:
        return False
    release = tuple(int(part) for part in match.groups())
    return MIN_SGLANG <= release < MAX_SGLANG_EXCLUSIVE


def check_sglang_version(version: str | None = None) -> str:
    """Return the installed SGLang version; raise `UnsupportedSGLangVersion` if it is unusable.

    ``version`` overrides the installed one (for callers that already know it).
    """
    found = installed_sglang_version() if version is None else version
    if found is None:
        raise UnsupportedSGLangVersion(
            f"SGLang is not installed; the Context Forge SGLang backend needs sglang{SUPPORTED_SGLANG} "
            f"(on a GPU machine: pip install 'sglang{SUPPORTED_SGLANG}')"
        )
    if not is_supported(found):
        raise UnsupportedSGLangVersion(
            f"SGLang {found} is not supported by the Context Forge plugin; it needs sglang{SUPPORTED_SGLANG} "
            f"(pip install 'sglang{SUPPORTED_SGLANG}'). Other releases change the radix-cache internals "
            "the plugin builds on."
        )
    return found

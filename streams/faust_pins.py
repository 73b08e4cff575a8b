"""The versions of faust-streaming, aiokafka and mode-streaming the seam
(:mod:`streams.faust_seam`) was verified against, and their check.

Standard library only: the seam imports private names of the libraries at module level, so
another release that renamed one would fail the seam's import before its check could
refuse it (an ImportError, exit 1: restarted for ever). ``python -m streams worker``
checks here first (exit 64, one line), then imports the seam; the seam re-exports both.
"""

from __future__ import annotations

from importlib import metadata

# mode-streaming too: the seam wraps its Service.wait_first and overrides its
# ManagedUserDict.__setitem__/__delitem__ (faust-streaming itself asks only mode>=0.6)
PINNED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0", "mode-streaming": "0.7.1"}


class UnsupportedVersion(RuntimeError):
    """faust-streaming, aiokafka or mode-streaming is not the version the seam was
    verified against."""


def check_versions() -> None:
    """Raise :class:`UnsupportedVersion` (one line) unless the pinned versions are installed."""
    wrong = []
    for dist, wanted in PINNED.items():
        try:
            found = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found = "not installed"
        if found != wanted:
            wrong.append(f"{dist} {found} (needs {wanted})")
    if wrong:
        raise UnsupportedVersion(
            "the worker patches library internals verified only for "
            + ", ".join(f"{d}=={v}" for d, v in PINNED.items()) + "; found "
            + ", ".join(wrong) + " (see streams/faust_seam/)")

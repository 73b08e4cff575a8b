"""The seam's own footing: the pinned versions (:mod:`streams.faust_pins`, re-exported), the
contract of upstream sources, and the key → partition function every part uses."""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

from aiokafka.partitioner import murmur2

from streams.faust_pins import PINNED, UnsupportedVersion, check_versions

__all__ = ["CONTRACT", "CONTRACT_FILES", "PINNED", "UnsupportedVersion", "check_versions",
           "file_hash", "key_partition", "source_hash"]

# upstream function → the sha256 (32 hex digits) of its source as verified. Wrapped (W),
# overridden in a subclass (S) or relied on for its behaviour (R). Each part of the seam adds
# what it uses.
CONTRACT: dict[str, tuple[Any, str, str]] = {}
# upstream files relied on that hold no Python function to hash (faust's Cython source):
# name → (package, path inside it, the first 32 hex digits of the file's sha256)
CONTRACT_FILES: dict[str, tuple[str, str, str]] = {}


def source_hash(owner: Any, attribute: str) -> str:
    """The first 32 hex digits of the sha256 of ``owner.attribute``'s upstream source."""
    fn = inspect.getattr_static(owner, attribute)
    fn = getattr(fn, "fget", fn)  # a property: its getter
    fn = getattr(fn, "fun", fn)  # a mode Service.task: its function
    fn = getattr(fn, "__sfprov_original__", fn)
    return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:32]


def file_hash(package: str, path: str) -> str:
    """The first 32 hex digits of the sha256 of ``path`` in the installed ``package``."""
    root = Path(cast(str, importlib.import_module(package).__file__)).parent
    return hashlib.sha256((root / path).read_bytes()).hexdigest()[:32]


def _wrap(owner: Any, attribute: str, make: Callable[[Any], Any]) -> None:
    original = getattr(owner, attribute)
    if getattr(original, "__sfprov_original__", None) is not None:
        return  # installed already
    wrapper = make(original)
    wrapper.__sfprov_original__ = original
    setattr(owner, attribute, wrapper)


def key_partition(key: str | bytes, partitions: int) -> int:
    """Kafka's default partition of ``key`` (Java/aiokafka/librdkafka ``murmur2``).
    Remembered for the last 4,096 keys: an Order's key is placed ~10 times per event (each
    table read and write), and aiokafka's murmur2 is pure Python (~3 µs). A key given as
    bytes (the store's) and as text (the tables') is one entry: each Order's key is hashed
    once, where it was hashed once per form and per calling convention."""
    if isinstance(key, bytes):
        key = key.decode("utf-8", "surrogateescape")
    return _text_partition(key, partitions)


@lru_cache(maxsize=4096)
def _text_partition(key: str, partitions: int) -> int:
    return (murmur2(key.encode("utf-8", "surrogateescape")) & 0x7FFFFFFF) % partitions

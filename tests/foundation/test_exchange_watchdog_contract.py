"""The one place the project reaches into urllib3's internals (``common.exchange_watchdog``)
was verified against one release: this fails when another is installed, or when a method
its classes override or wrap changed upstream — read the change, check the watchdog still
sees every connection and ends before a connection goes back to its pool, then update the
pin and the hashes."""

from __future__ import annotations

import hashlib
import importlib
import inspect
from importlib import metadata

import urllib3.connection
import urllib3.connectionpool

from common.exchange_watchdog import CONTRACT, PINNED_URLLIB3


def test_the_installed_urllib3_is_the_one_verified():
    assert metadata.version("urllib3") == PINNED_URLLIB3


def _source_hash(dotted: str) -> str:
    module_name, cls_name, attr = dotted.rsplit(".", 2)
    obj = getattr(getattr(importlib.import_module(module_name), cls_name), attr)
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()


def test_the_upstream_methods_relied_on_are_the_ones_verified():
    assert {name: _source_hash(name) for name in CONTRACT} == CONTRACT


def test_the_tls_classes_inherit_what_is_overridden():
    """The TLS connection and pool use the plain ones' methods: an override of their own
    upstream would bypass the watchdog's hooks without changing a hashed method."""
    assert "_new_conn" not in urllib3.connection.HTTPSConnection.__dict__
    assert "request" not in urllib3.connection.HTTPSConnection.__dict__
    assert "_put_conn" not in urllib3.connectionpool.HTTPSConnectionPool.__dict__

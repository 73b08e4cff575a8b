"""A Confluent-compatible schema registry emulator, for tests and local use (no Docker).

Enough of the REST API for serializers and operators: register a schema under a subject
(same schema → same id, idempotent), fetch a schema by id, list subjects and versions,
get a version or the latest, look a schema up under a subject, per-subject and global
compatibility (``FULL`` by default: new readers read old records and old readers new
ones, checked with Avro resolution rules; ``NONE`` turns it off). Errors have Confluent's
shape: ``{"error_code": 40403, "message": "Schema not found"}``. See
:mod:`sandbox.registry.server` for the routes and :mod:`sandbox.registry.harness` for
running it from tests.

Production code never imports this package; it only talks to a URL.
"""

"""The registry emulator's default level is ``FULL``: a version that old readers cannot read
is refused, not only one that new readers cannot.

At ``BACKWARD`` (the old default) a version of the outcome schema without ``completed_at``
was accepted, and every reader holding today's schema (the running sink, analysts,
``sfprov``) then failed on its records with a non-retryable ``SchemaResolutionError``.
"""

from __future__ import annotations

import copy
import io
import json

import fastavro
import httpx
import pytest
from fastavro.read import SchemaResolutionError

from common.avro import SCHEMAS_DIR, VERSIONED_SCHEMAS, history_dir, schema_json
from sandbox.registry.harness import running_registry
from sandbox.registry.server import RegistryError, Store

SUBJECT = "provisioning.outcomes-value"
OUTCOME = json.loads(schema_json("provisioning_outcome"))


def _without(field: str) -> dict:
    schema = copy.deepcopy(OUTCOME)
    schema["fields"] = [f for f in schema["fields"] if f["name"] != field]
    return schema


def _before_unknown() -> dict:
    """The outcome schema as it was before the ``Unknown`` symbol (commit 0d6b5bb)."""
    schema = copy.deepcopy(OUTCOME)
    status = next(f for f in schema["fields"] if f["name"] == "status")["type"]
    status["symbols"].remove("Unknown")
    del status["default"]
    return schema


def test_a_version_old_readers_cannot_read_is_refused_at_the_default_level():
    store = Store()
    assert store.register(SUBJECT, json.dumps(OUTCOME)) == 1
    try:
        accepted = store.register(SUBJECT, json.dumps(_without("completed_at")))
    except RegistryError as exc:
        assert (exc.status, exc.error_code) == (409, 409)
        assert "completed_at" in exc.message
    else:
        pytest.fail(f"a version without completed_at was accepted, id {accepted}")
    assert store.subject_versions(SUBJECT) == [1]
    assert store.level() == "FULL"
    # what it keeps out: a record written with that version, read with today's schema
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(_without("completed_at")),
                               {"order_id": "801000000000001AAA", "status": "Failed"})
    with pytest.raises(SchemaResolutionError):
        fastavro.schemaless_reader(io.BytesIO(buf.getvalue()),
                                   fastavro.parse_schema(_without("completed_at")),
                                   fastavro.parse_schema(OUTCOME))
    # BACKWARD, set on purpose, still only checks that the new version reads the old
    backward = Store(compatibility="BACKWARD")
    backward.register(SUBJECT, json.dumps(OUTCOME))
    assert backward.register(SUBJECT, json.dumps(_without("completed_at"))) == 2


def test_the_served_default_is_full_and_refuses_with_409():
    with running_registry() as reg:
        url = f"{reg.url}/subjects/{SUBJECT}/versions"
        assert httpx.post(url, json={"schema": json.dumps(OUTCOME)}).json() == {"id": 1}
        refused = httpx.post(url, json={"schema": json.dumps(_without("completed_at"))})
        assert (refused.status_code, refused.json().get("error_code")) == (409, 409), \
            refused.json()
        assert reg.versions(SUBJECT) == [1]
        assert httpx.get(f"{reg.url}/config").json() == {"compatibilityLevel": "FULL"}


@pytest.mark.parametrize("name", [*VERSIONED_SCHEMAS, "provisioning_outcome",
                                  "provision_request"])
def test_each_history_sequence_then_the_current_schema_registers_at_the_default(name):
    store = Store()
    versions = [p.read_text() for p in sorted(history_dir().glob(f"{name}-*.avsc"))]
    for text in [*versions, (SCHEMAS_DIR / f"{name}.avsc").read_text()]:
        store.register(f"{name}-value", text)
    assert store.lookup(f"{name}-value", schema_json(name))["version"] >= 1
    # the evolution rule (a field added with a default) still passes at FULL
    schema = json.loads(schema_json(name))
    schema["fields"].append({"name": "added_later", "type": ["null", "string"],
                             "default": None})
    store.register(f"{name}-value", json.dumps(schema))


def test_an_outcome_version_from_before_unknown_migrates_as_the_readme_says():
    """FULL refuses today's schema after a pre-``Unknown`` version (an old reader cannot
    read the symbol): register it at BACKWARD for the subject, then set FULL."""
    store = Store()
    store.register(SUBJECT, json.dumps(_before_unknown()))
    with pytest.raises(RegistryError) as info:
        store.register(SUBJECT, json.dumps(OUTCOME))
    assert info.value.status == 409
    store.set_level("BACKWARD", SUBJECT)
    assert store.register(SUBJECT, json.dumps(OUTCOME)) == 2
    store.set_level("FULL", SUBJECT)
    assert store.register(SUBJECT, json.dumps(OUTCOME)) == 2  # the same version
    with pytest.raises(RegistryError):
        store.register(SUBJECT, json.dumps(_without("completed_at")))


def _old_file(path, **extra) -> None:
    path.write_text(json.dumps({"schemas": [], "subjects": {}, "config": {}, **extra}))


def test_an_old_store_files_backward_was_the_default_and_becomes_full(tmp_path):
    path = tmp_path / "registry.json"
    _old_file(path, compatibility="BACKWARD")  # what every store saved before, by default
    store = Store(path)
    assert store.level() == "FULL"
    store.register(SUBJECT, json.dumps(OUTCOME))
    assert "compatibility" not in json.loads(path.read_text())  # a default is not saved
    with pytest.raises(RegistryError):
        store.register(SUBJECT, json.dumps(_without("completed_at")))
    assert Store(path).level() == "FULL"


def test_a_level_set_on_purpose_is_kept(tmp_path):
    path = tmp_path / "registry.json"
    Store(path).set_level("BACKWARD")  # PUT /config
    assert Store(path).level() == "BACKWARD"
    flagged = tmp_path / "flagged.json"
    Store(flagged, compatibility="BACKWARD").register(SUBJECT, json.dumps(OUTCOME))  # the flag
    assert Store(flagged).level() == "BACKWARD"
    assert Store(flagged).register(SUBJECT, json.dumps(_without("completed_at"))) == 2
    # an old file's level other than BACKWARD cannot have been the default: it was chosen
    old = tmp_path / "old.json"
    _old_file(old, compatibility="NONE")
    assert Store(old).level() == "NONE"
    # and the flag still wins over a saved level
    assert Store(path, compatibility="FULL").level() == "FULL"
    assert Store(path).level() == "FULL"

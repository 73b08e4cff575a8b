"""``schemas/history/`` keeps every version of the versioned schemas (the connector's topics).

Their records name the writer's version by fingerprint (``sfprov.schema_fingerprint``) and a
reader finds that version here: a change to ``schemas/connector_offset.avsc`` or
``schemas/replay_gap.avsc`` without its version archived would leave the positions it
writes unreadable by the next release — and, once changed again, the ones written before.
"""

from __future__ import annotations

import json

import fastavro
import pytest

from common.avro import (
    FINGERPRINT_HEADER,
    SCHEMA_HEADER,
    SCHEMAS_DIR,
    UNVERSIONED,
    VERSIONED_SCHEMAS,
    AvroSerde,
    fingerprint,
    history_dir,
    load_schema,
)
from sandbox.registry.compat import can_read


def archived() -> dict[str, dict[str, dict]]:
    """name -> fingerprint -> schema JSON of every file in schemas/history/."""
    out: dict[str, dict[str, dict]] = {}
    for path in sorted(history_dir().glob("*.avsc")):
        name, _, fp = path.stem.rpartition("-")
        out.setdefault(name, {})[fp] = json.loads(path.read_text())
    return out


@pytest.mark.parametrize("name", VERSIONED_SCHEMAS)
def test_the_current_version_is_archived(name):
    fp = fingerprint(load_schema(name))
    assert fp in archived().get(name, {}), (
        f"schemas/{name}.avsc changed (fingerprint {fp}) but this version is not archived: "
        f"copy it to schemas/history/{name}-{fp}.avsc, and keep every earlier file there — "
        "stored records name the version they were written with")


def test_every_archived_file_is_the_version_its_name_says():
    for name, versions in archived().items():
        assert name in VERSIONED_SCHEMAS, f"schemas/history/{name}-*.avsc: not a versioned schema"
        for fp, schema in versions.items():
            assert fingerprint(fastavro.parse_schema(schema)) == fp, (
                f"schemas/history/{name}-{fp}.avsc was edited: archived versions never change")


@pytest.mark.parametrize("name", VERSIONED_SCHEMAS)
def test_records_without_the_header_have_an_archived_version(name):
    assert UNVERSIONED[name] in archived()[name]


@pytest.mark.parametrize("name", VERSIONED_SCHEMAS)
def test_the_current_schema_reads_every_archived_version(name):
    """The evolution rule (fields added with defaults only), checked against history."""
    current = json.loads((SCHEMAS_DIR / f"{name}.avsc").read_text())
    for fp, writer in archived()[name].items():
        assert can_read(current, writer) == [], f"{name}: cannot read version {fp}"


@pytest.mark.parametrize("name", VERSIONED_SCHEMAS)
def test_versioned_records_carry_their_fingerprint(name):
    serde = AvroSerde(name)
    assert dict(serde.headers()) == {SCHEMA_HEADER: serde.full_name.encode(),
                                     FINGERPRINT_HEADER: serde.fingerprint.encode()}
    assert serde.fingerprint == fingerprint(load_schema(name))

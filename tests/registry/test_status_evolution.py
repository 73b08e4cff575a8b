"""``OutcomeStatus`` has a default symbol: a status added later never breaks an old reader."""

from __future__ import annotations

import copy
import io
import json
import time

import fastavro

from common.avro import AvroSerde, SchemaRegistry, frame, schema_json
from sandbox.registry.compat import can_read
from sandbox.registry.harness import running_registry
from sinks.mapping import updates_for

TOPIC = "t.provisioning.outcomes"


def future_schema() -> dict:
    """Our outcome schema as a later release might write it: one more status."""
    schema = json.loads(schema_json("provisioning_outcome"))
    status = next(f for f in schema["fields"] if f["name"] == "status")
    status["type"]["symbols"].insert(2, "Cancelled")
    return schema


def test_the_enum_has_a_default_that_is_one_of_its_symbols():
    schema = json.loads(schema_json("provisioning_outcome"))
    enum = next(f for f in schema["fields"] if f["name"] == "status")["type"]
    assert enum["default"] == "Unknown" and enum["default"] in enum["symbols"]
    # the symbols written today keep their order: old and new readers agree on them
    assert enum["symbols"][:4] == ["Provisioned", "Failed", "Skipped", "Duplicate"]


def test_a_status_added_later_reads_as_unknown_through_the_registry():
    record = {"order_id": "801000000000001AAA", "status": "Cancelled",
              "completed_at": int(time.time() * 1000)}
    writer = fastavro.parse_schema(future_schema())
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, writer, record)
    with running_registry() as reg:
        registry = SchemaRegistry(reg.url)
        schema_id = registry.register(f"{TOPIC}-value", json.dumps(future_schema()))
        decoded = AvroSerde("provisioning_outcome", topic=TOPIC,
                            registry=SchemaRegistry(reg.url)).decode(
            frame(schema_id, buf.getvalue()), [])
    assert decoded["status"] == "Unknown"
    assert updates_for(decoded) == []  # the sink leaves Salesforce alone for it


def test_the_new_schema_is_backward_compatible_both_ways():
    ours = json.loads(schema_json("provisioning_outcome"))
    before = copy.deepcopy(ours)
    status = next(f for f in before["fields"] if f["name"] == "status")["type"]
    status["symbols"].remove("Unknown")
    del status["default"]
    assert can_read(ours, before) == []            # today's readers read yesterday's records
    assert can_read(ours, future_schema()) == []    # and tomorrow's, thanks to the default
    assert can_read(before, future_schema()) != []  # what the default fixes

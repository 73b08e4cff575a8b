"""The connector's own topics across a schema change (no broker).

A position or replay gap stored by today's release must be read by a release whose
``connector_offset.avsc`` / ``replay_gap.avsc`` has one more field with a default — by the
connector at start-up (``load_position`` / ``load_last_gap``) and by ``sfprov tail``
(``ops.kafkaview.Decoder``). Before the schema fingerprint header, such a reader took its
own schema as the writer's: EOFError, the connector could not start.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest

from common import avro
from common.avro import SCHEMA_HEADER
from common.errors import KafkaError
from common.settings import KafkaSettings
from connectors import offsets
from connectors.offsets import EVENT, OffsetCodec, Position, load_last_gap, load_position
from ops.kafkaview import Decoder

NEW_FIELD = {"name": "org_id", "type": ["null", "string"], "default": None}
POSITION = Position(b"\x00\x00\x01\x02", EVENT, 1700000000123, "u-9")


def _clear_caches() -> None:
    avro.schema_json.cache_clear()
    avro.load_schema.cache_clear()
    history = getattr(avro, "schema_history", None)
    if history is not None:
        history.cache_clear()


@pytest.fixture
def next_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], None]]:
    """Call it to make ``schemas/`` what a later release has: both schemas with one more
    field (with a default), each new version archived as the rule asks."""
    def evolve() -> None:
        schemas = tmp_path / "schemas"
        shutil.copytree(avro.SCHEMAS_DIR, schemas)
        for name in ("connector_offset", "replay_gap"):
            path = schemas / f"{name}.avsc"
            schema = json.loads(path.read_text())
            schema["fields"].append(NEW_FIELD)
            path.write_text(json.dumps(schema, indent=2))
            if (schemas / "history").is_dir():
                fp = avro.fingerprint(fastavro.parse_schema(schema))
                shutil.copy(path, schemas / "history" / f"{name}-{fp}.avsc")
        monkeypatch.setattr(avro, "SCHEMAS_DIR", schemas)
        _clear_caches()
    yield evolve
    _clear_caches()


def stored(monkeypatch: pytest.MonkeyPatch, value: bytes, headers: list) -> None:
    """The topic read at start-up holds this record last (no broker)."""
    monkeypatch.setattr(offsets, "_last_value",
                        lambda *_a, **_kw: (value, headers))


def test_a_position_written_today_is_read_by_a_schema_with_one_more_field(
        next_release, monkeypatch):
    value, headers = OffsetCodec("c1", "/event/X__e").position_value(POSITION)
    next_release()
    codec = OffsetCodec("c1", "/event/X__e")
    assert [f["name"] for f in codec._offsets.schema["fields"]][-1] == "org_id"
    assert codec.decode_position(value, headers) == POSITION
    # the connector's start-up path hands the record's headers to the decode
    stored(monkeypatch, value, headers)
    assert load_position("unused:9092", "t.connector-offsets", codec) == POSITION


def test_a_replay_gap_written_today_is_read_by_a_schema_with_one_more_field(
        next_release, monkeypatch):
    value, headers = OffsetCodec("c1", "/event/X__e").gap_value(
        last_good=POSITION, policy="EARLIEST", error_code="x.corrupted",
        error_message="too old", detected_at_ms=5)
    next_release()
    stored(monkeypatch, value, headers)
    gap = load_last_gap("unused:9092", "t.replay-gaps", OffsetCodec("c1", "/event/X__e"))
    assert gap is not None
    assert gap["last_good_replay_id"] == POSITION.replay_id and gap["org_id"] is None


def test_a_position_stored_before_the_fingerprint_header_is_read_as_that_version(
        next_release, monkeypatch):
    """What releases before the header wrote: only ``sfprov.schema``."""
    value, _headers = OffsetCodec("c1", "/event/X__e").position_value(POSITION)
    next_release()
    stored(monkeypatch, value, [(SCHEMA_HEADER, b"sfprov.v1.ConnectorOffset")])
    assert load_position("unused:9092", "t.connector-offsets",
                         OffsetCodec("c1", "/event/X__e")) == POSITION


def test_a_version_this_release_does_not_know_is_a_clear_error(monkeypatch):
    codec = OffsetCodec("c1", "/event/X__e")
    value, headers = codec.position_value(POSITION)
    forged = [(k, b"0123456789abcdef" if k == avro.FINGERPRINT_HEADER else v)
              for k, v in headers]
    stored(monkeypatch, value, forged)
    with pytest.raises(KafkaError, match="0123456789abcdef.*newer release"):
        load_position("unused:9092", "t.connector-offsets", codec)


class _Msg:
    def __init__(self, value: bytes, headers: list) -> None:
        self._value, self._headers = value, headers

    def value(self) -> bytes:
        return self._value

    def headers(self) -> list:
        return self._headers

    def key(self) -> bytes:
        return b"c1|/event/X__e"

    def topic(self) -> str:
        return "t.connector-offsets"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 3

    def timestamp(self) -> tuple[int, int]:
        return (1, 1700000000123)


def test_sfprov_tail_offsets_reads_a_position_written_with_the_previous_version(next_release):
    value, headers = OffsetCodec("c1", "/event/X__e").position_value(POSITION)
    next_release()
    decoder = Decoder(KafkaSettings.load({}), "connector_offset", "t.connector-offsets")
    record: Any = decoder.record(_Msg(value, headers)).value
    assert "undecodable" not in record, record
    assert record["replay_id"] == POSITION.replay_id and record["org_id"] is None

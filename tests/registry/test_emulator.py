"""The schema registry emulator speaks Confluent's REST API (the subset clients use)."""

from __future__ import annotations

import io
import json
import threading

import fastavro
import httpx
import pytest

from common.avro import schema_json
from sandbox.registry.compat import can_read
from sandbox.registry.harness import running_registry
from sandbox.registry.server import RegistryError, RegistryHTTPServer, Store

OUTCOME = schema_json("provisioning_outcome")


def _evolved(**field: object) -> str:
    schema = json.loads(OUTCOME)
    schema["fields"].append({"name": "added", **field})
    return json.dumps(schema)


@pytest.fixture
def reg():
    with running_registry() as r:
        yield r


def post(reg, subject: str, schema: str) -> httpx.Response:
    return httpx.post(f"{reg.url}/subjects/{subject}/versions", json={"schema": schema},
                      headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})


def test_register_is_idempotent_and_ids_are_global(reg):
    first = post(reg, "a-value", OUTCOME)
    assert first.status_code == 200 and first.json() == {"id": 1}
    # the same schema again (other whitespace): same id, no new version
    assert post(reg, "a-value", json.dumps(json.loads(OUTCOME), indent=4)).json() == {"id": 1}
    assert reg.versions("a-value") == [1]
    # the same schema under another subject keeps its id; another schema gets a new one
    assert post(reg, "b-value", OUTCOME).json() == {"id": 1}
    assert post(reg, "c-value", schema_json("provision_request")).json() == {"id": 2}
    assert reg.subjects() == ["a-value", "b-value", "c-value"]
    assert json.loads(reg.schema(2))["name"] == "ProvisionRequest"
    latest = reg.latest("a-value")
    assert latest["subject"] == "a-value" and latest["version"] == 1 and latest["id"] == 1
    assert json.loads(latest["schema"]) == json.loads(OUTCOME)
    assert httpx.get(f"{reg.url}/subjects/a-value/versions/1").json()["id"] == 1
    raw = httpx.get(f"{reg.url}/subjects/a-value/versions/latest/schema").json()
    assert raw == json.loads(OUTCOME)
    assert httpx.get(f"{reg.url}/schemas/ids/1/versions").json() == [
        {"subject": "a-value", "version": 1}, {"subject": "b-value", "version": 1}]
    lookup = httpx.post(f"{reg.url}/subjects/a-value", json={"schema": OUTCOME})
    assert lookup.status_code == 200 and lookup.json()["id"] == 1


def test_errors_have_confluents_shape(reg):
    post(reg, "a-value", OUTCOME)
    resp = httpx.get(f"{reg.url}/schemas/ids/42")
    assert resp.status_code == 404
    assert resp.json() == {"error_code": 40403, "message": "Schema not found"}
    resp = httpx.get(f"{reg.url}/subjects/nope/versions")
    assert resp.status_code == 404 and resp.json()["error_code"] == 40401
    resp = httpx.get(f"{reg.url}/subjects/a-value/versions/7")
    assert resp.status_code == 404 and resp.json()["error_code"] == 40402
    resp = httpx.get(f"{reg.url}/subjects/a-value/versions/zero")
    assert resp.status_code == 422 and resp.json()["error_code"] == 42202
    resp = post(reg, "a-value", '{"type": "record", "name": "X", "fields": [{"name": 1}]}')
    assert resp.status_code == 422 and resp.json()["error_code"] == 42201
    resp = post(reg, "a-value", "not json")
    assert resp.status_code == 422 and resp.json()["error_code"] == 42201
    resp = httpx.get(f"{reg.url}/no/such/route")
    assert resp.status_code == 404 and set(resp.json()) == {"error_code", "message"}
    resp = httpx.post(f"{reg.url}/subjects/x/versions", content=b"{bad",
                      headers={"Content-Type": "application/json"})
    assert resp.status_code in (400, 422) and "error_code" in resp.json()


def test_an_id_past_confluents_integer_range_matches_no_route(reg):
    """Confluent's ``/schemas/ids/{id}`` takes an Integer: an id past 2^31-1 is no route
    (404, error_code 404), not an unknown schema (40403) — what the client must cope with."""
    post(reg, "a-value", OUTCOME)
    for path in ("/schemas/ids/2147483648", "/schemas/ids/4294967295",
                 "/schemas/ids/2147483648/versions", "/schemas/ids/" + "9" * 5000):
        resp = httpx.get(f"{reg.url}{path}")
        assert resp.status_code == 404, path
        assert resp.json() == {"error_code": 404, "message": "HTTP 404 Not Found"}, path
    resp = httpx.get(f"{reg.url}/schemas/ids/2147483647")
    assert resp.status_code == 404 and resp.json()["error_code"] == 40403


def test_an_error_reply_leaves_the_kept_alive_connection_usable():
    """401, 404 and 405 were sent with the request's body unread: on the kept-alive
    connection that body was then parsed as the next request (501, an HTML page)."""
    server = RegistryHTTPServer(("127.0.0.1", 0), Store(), basic_auth=("u", "p"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    body = {"schema": OUTCOME}
    try:
        with httpx.Client(base_url=url, auth=("u", "wrong")) as client:
            assert [client.post("/subjects/a-value/versions", json=body).status_code
                    for _ in range(2)] == [401, 401]
        with httpx.Client(base_url=url, auth=("u", "p")) as client:
            for path, status in (("/subjects/a-value/versions/latest", 405),
                                 ("/no/such/route", 404)):
                answers = [client.post(path, json=body) for _ in range(2)]
                assert [a.status_code for a in answers] == [status, status], path
                assert all(a.json()["error_code"] == status for a in answers)
            assert client.post("/subjects/a-value/versions", json=body).json() == {"id": 1}
    finally:
        server.shutdown()
        server.server_close()


def test_backward_compatibility_is_checked(reg):
    assert post(reg, "a-value", OUTCOME).status_code == 200
    refused = post(reg, "a-value", _evolved(type="string"))
    assert refused.status_code == 409
    assert refused.json()["error_code"] == 409 and "added" in refused.json()["message"]
    assert reg.versions("a-value") == [1]
    ok = post(reg, "a-value", _evolved(type=["null", "string"], default=None))
    assert ok.status_code == 200 and ok.json()["id"] == 2
    assert reg.versions("a-value") == [1, 2]
    # NONE for one subject turns the check off there only
    put = httpx.put(f"{reg.url}/config/b-value", json={"compatibility": "NONE"})
    assert put.json() == {"compatibility": "NONE"}
    post(reg, "b-value", OUTCOME)
    assert post(reg, "b-value", _evolved(type="string")).status_code == 200
    assert httpx.get(f"{reg.url}/config").json() == {"compatibilityLevel": "FULL"}
    assert httpx.get(f"{reg.url}/config/b-value").json() == {"compatibilityLevel": "NONE"}


def test_resolution_rules():
    rec = {"type": "record", "name": "R", "namespace": "n", "fields": [
        {"name": "a", "type": "int"},
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["X", "Y"]}},
        {"name": "l", "type": {"type": "array", "items": "E"}},
        {"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}
    assert can_read(rec, rec) == []
    wider = json.loads(json.dumps(rec))
    wider["fields"][0]["type"] = "long"  # int → long is a promotion
    assert can_read(wider, rec) == []
    assert can_read(rec, wider)  # long → int is not
    fewer = json.loads(json.dumps(rec))
    fewer["fields"][1]["type"]["symbols"] = ["X"]
    assert can_read(fewer, rec)  # the writer's Y has nowhere to go
    assert can_read(rec, fewer) == []
    nullable = json.loads(json.dumps(rec))
    nullable["fields"][0]["type"] = ["null", "int"]
    assert can_read(nullable, rec) == []
    assert can_read(rec, nullable)  # a null cannot be read as int
    removed = {**rec, "fields": rec["fields"][1:]}
    assert can_read(removed, rec) == []  # the reader ignores a field it does not know


def test_only_the_readers_field_aliases_match_writer_fields():
    """Avro resolution (Confluent's check, fastavro) matches a reader field by its name or
    the reader's aliases; the writer's aliases play no part."""
    old = {"type": "record", "name": "R", "fields": [
        {"name": "a", "type": "int", "aliases": ["b"]}]}
    new = {"type": "record", "name": "R", "fields": [{"name": "b", "type": "int"}]}
    assert can_read(new, old) == ["/b: field added without a default"]
    value = io.BytesIO()
    fastavro.schemaless_writer(value, fastavro.parse_schema(old), {"a": 1})
    with pytest.raises(fastavro.read.SchemaResolutionError):
        fastavro.schemaless_reader(io.BytesIO(value.getvalue()), fastavro.parse_schema(old),
                                   fastavro.parse_schema(new))
    renamed = {"type": "record", "name": "R", "fields": [
        {"name": "b", "type": "int", "aliases": ["a"]}]}
    assert can_read(renamed, old) == []  # the reader's alias of the old name: fine


def test_serve_command_keeps_schemas_across_restarts(tmp_path):
    with running_registry(tmp_path, subprocess=True) as reg:
        assert reg.process is not None
        assert post(reg, "a-value", OUTCOME).json() == {"id": 1}
        assert post(reg, "b-value", schema_json("provision_request")).json() == {"id": 2}
        port = reg.port
        reg.stop()
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{reg.url}/subjects", timeout=2)
        reg.start()
        assert reg.port == port
        assert reg.subjects() == ["a-value", "b-value"]
        assert json.loads(reg.schema(2))["name"] == "ProvisionRequest"
        assert post(reg, "a-value", OUTCOME).json() == {"id": 1}


def _renamed(record: str | None = None, enum: str | None = None, **extra: object) -> dict:
    schema = json.loads(OUTCOME)
    if record is not None:
        schema["name"] = record
    status = next(f for f in schema["fields"] if f["name"] == "status")
    if enum is not None:
        status["type"]["name"] = enum
    for key, value in extra.items():  # record_aliases=..., enum_aliases=..., namespace=...
        target, _, attr = key.rpartition("_")
        (status["type"] if target == "enum" else schema)[attr if target else key] = value
    return schema


def _register(schema: dict) -> int:
    store = Store(compatibility="BACKWARD")  # renames: the new reader reads the old name
    store.register("provisioning.outcomes-value", OUTCOME)
    return store.register("provisioning.outcomes-value", json.dumps(schema))


def _reads_old_data(reader: dict) -> dict:
    writer = fastavro.parse_schema(json.loads(OUTCOME))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, writer, {"order_id": "x", "status": "Failed",
                                             "completed_at": 1})
    return fastavro.schemaless_reader(io.BytesIO(buf.getvalue()), writer,
                                      fastavro.parse_schema(reader))


@pytest.mark.parametrize("renamed", [
    _renamed(record="ProvisioningOutcomeV2"),
    _renamed(enum="OutcomeStatusV2"),
    # an alias naming another type does not help
    _renamed(record="ProvisioningOutcomeV2", record_aliases=["Other"]),
    # a relative alias is in the reader's namespace, not the writer's
    _renamed(record="ProvisioningOutcomeV2", namespace="sfprov.v2",
             record_aliases=["ProvisioningOutcome"]),
])
def test_renaming_a_named_type_is_refused(renamed):
    """Confluent refuses it (NAME_MISMATCH) and, but for the last case, fastavro cannot
    read the old data with it: the emulator let it through."""
    with pytest.raises(RegistryError) as info:
        _register(renamed)
    assert info.value.status == 409 and "name" in info.value.message
    assert can_read(renamed, json.loads(OUTCOME))


@pytest.mark.parametrize("renamed", [
    _renamed(record="ProvisioningOutcomeV2", record_aliases=["ProvisioningOutcome"]),
    _renamed(record="ProvisioningOutcomeV2", record_aliases=["sfprov.v1.ProvisioningOutcome"]),
    _renamed(record="sfprov.v2.ProvisioningOutcomeV2",
             record_aliases=["sfprov.v1.ProvisioningOutcome"]),
    _renamed(enum="OutcomeStatusV2", enum_aliases=["OutcomeStatus"]),
    # names are matched unqualified (Avro spec, Avro's SchemaCompatibility, fastavro):
    # moving to another namespace is not a rename
    _renamed(namespace="sfprov.v2"),
])
def test_a_rename_with_an_alias_of_the_old_name_is_accepted(renamed):
    assert _register(renamed) == 2
    assert _reads_old_data(renamed)["status"] == "Failed"


def test_renamed_named_types_inside_unions_and_fixed():
    def fixed(name: str, **more: object) -> dict:
        return {"type": "record", "name": "R", "fields": [
            {"name": "f", "type": ["null", {"type": "fixed", "name": name, "size": 4, **more}]}]}
    assert can_read(fixed("F"), fixed("F")) == []
    assert can_read(fixed("G"), fixed("F"))
    assert can_read(fixed("G", aliases=["F"]), fixed("F")) == []


def test_an_explicit_compatibility_wins_over_the_saved_global_level(tmp_path):
    """``--compatibility NONE`` was ignored once the --store file had a saved level."""
    path = tmp_path / "registry.json"
    Store(path).set_level("BACKWARD")
    assert json.loads(path.read_text())["compatibility"] == "BACKWARD"
    store = Store(path, compatibility="NONE")
    assert store.level() == "NONE"
    store.register("a-value", OUTCOME)
    assert store.register("a-value", _evolved(type="string")) == 2  # NONE: not checked
    # the flag set the level as PUT /config would: it is saved, and without a flag the
    # saved level (from a flag or PUT /config) is kept
    assert Store(path).level() == "NONE"
    Store(path).set_level("FULL")
    assert Store(path).level() == "FULL"
    assert Store(tmp_path / "fresh.json").level() == "FULL"  # nothing saved: default


class _FakeServer:
    stores: list[Store] = []

    def __init__(self, address: tuple[str, int], store: Store, **_: object) -> None:
        self.server_address = (address[0], 1)
        self.stores.append(store)

    def serve_forever(self) -> None:
        raise KeyboardInterrupt

    def server_close(self) -> None:
        pass


@pytest.mark.parametrize("argv,level", [([], "FULL"), (["--compatibility", "NONE"], "NONE")])
def test_the_serve_command_applies_the_compatibility_flag_over_the_store(
        tmp_path, monkeypatch, argv, level):
    import signal

    from sandbox.registry import __main__ as cli

    path = tmp_path / "registry.json"
    Store(path).set_level("FULL")
    monkeypatch.setattr(cli, "RegistryHTTPServer", _FakeServer)
    monkeypatch.setattr(signal, "signal", lambda *_: None)
    _FakeServer.stores = []
    assert cli.main(["serve", "--store", str(path), *argv]) == 0
    assert _FakeServer.stores[0].level() == level

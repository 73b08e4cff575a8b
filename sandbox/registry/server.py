"""The registry emulator: an in-memory store (optionally saved to a JSON file) behind a
threaded ``http.server``.

Routes (Confluent's REST API, the subset clients use)::

    POST /subjects/{subject}/versions        {"schema": "...", "schemaType"?: "AVRO"}
                                             → {"id": n}; same schema → same id, no new version
    POST /subjects/{subject}                 look a schema up → {"subject","version","id","schema"}
    GET  /schemas/ids/{id}                   → {"schema": "..."}   (40403 when unknown; an
                                             id past 2^31-1: 404 with error_code 404)
    GET  /schemas/ids/{id}/versions          → [{"subject", "version"}]
    GET  /subjects                           → ["subject", ...]
    GET  /subjects/{subject}/versions        → [1, 2, ...]          (40401 when unknown)
    GET  /subjects/{subject}/versions/{v}    v = number or "latest" (40402 when unknown)
    GET  /subjects/{subject}/versions/{v}/schema   → the raw schema
    GET|PUT /config, /config/{subject}       {"compatibility": "FULL" | "BACKWARD" | ...}

Ids are global: the same schema (compared as normalised JSON) gets the same id under every
subject, like Confluent's. Compatibility: ``FULL`` (default) checks both ways against the
latest version — the new schema can read it and it can read the new schema, so old readers
keep reading a new producer's records (``BACKWARD`` alone let through a version without a
field old readers need, e.g. ``completed_at``); ``BACKWARD`` only the first way,
``FORWARD`` only the second; their ``_TRANSITIVE`` forms against every version; ``NONE``
nothing. Incompatible → 409 with error_code 409.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import fastavro

from sandbox.registry.compat import can_read

log = logging.getLogger("sandbox.registry")
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
MAX_SCHEMA_ID = 2**31 - 1  # Confluent's ids are Java ints
LEVELS = {"NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE",
          "FULL", "FULL_TRANSITIVE"}
#: the global level unless one is set on purpose (``--compatibility``, ``PUT /config``).
#: Not FULL_TRANSITIVE: the outcome versions from before the ``Unknown`` status symbol
#: cannot read records of today's, so a subject holding one could never evolve again.
DEFAULT_LEVEL = "FULL"
#: the default before: a store file saved it whether or not it was chosen (no marker)
_OLD_DEFAULT_LEVEL = "BACKWARD"


class RegistryError(Exception):
    def __init__(self, status: int, error_code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.error_code, self.message = status, error_code, message


def normalise(schema_text: str) -> str:
    """Parse and re-serialise: whitespace and key order do not make a new schema."""
    try:
        parsed = json.loads(schema_text)
        fastavro.parse_schema(parsed, _write_hint=False)
    except Exception as exc:  # noqa: BLE001 - any invalid schema is a 422
        raise RegistryError(422, 42201, f"Invalid schema: {exc}") from exc
    return json.dumps(parsed, sort_keys=True, separators=(",", ":"))


class Store:
    """Schemas by id, subjects' versions, compatibility levels; thread-safe."""

    def __init__(self, path: Path | None = None, *, compatibility: str | None = None) -> None:
        """``compatibility`` given → the global level, as a ``PUT /config`` at start-up would
        set it (saved to ``path``, over a level saved there before); ``None`` → the level
        saved in ``path`` by an earlier flag or ``PUT /config``, else :data:`DEFAULT_LEVEL`.

        ``path`` records the global level only when it was set on purpose (with
        ``"compatibility_set": true``), so a store keeps no default of an older release.
        A file from before that marker saved its level either way: its ``BACKWARD`` (the
        default then) is taken as the old default — the store is at today's — and any other
        level, which only a flag or ``PUT /config`` could have set, is kept."""
        if compatibility is not None and compatibility not in LEVELS:
            raise ValueError(f"invalid compatibility level: {compatibility}")
        self.path = path
        self.lock = threading.Lock()
        self.schemas: list[str] = []  # id = index + 1 (normalised JSON)
        self.subjects: dict[str, list[int]] = {}  # subject → schema id per version
        self.config: dict[str, str] = {}
        self.compatibility = compatibility or DEFAULT_LEVEL
        self.compatibility_set = compatibility is not None  # on purpose, not by default
        if path is not None and path.exists():
            data = json.loads(path.read_text())
            self.schemas = data["schemas"]
            self.subjects = {k: list(v) for k, v in data["subjects"].items()}
            self.config = data.get("config", {})
            saved = data.get("compatibility")
            saved_set = saved is not None and (bool(data.get("compatibility_set"))
                                               or saved != _OLD_DEFAULT_LEVEL)
            if compatibility is None:
                if saved_set:
                    self.compatibility, self.compatibility_set = saved, True
                elif saved is not None:
                    log.info("%s: the saved global compatibility %s was an earlier "
                             "release's default; now %s (--compatibility or PUT /config "
                             "chooses one)", path, saved, self.compatibility)
            elif not saved_set or compatibility != saved:
                self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        data: dict[str, Any] = {"schemas": self.schemas, "subjects": self.subjects,
                                "config": self.config}
        if self.compatibility_set:  # a default is not recorded: a later one replaces it
            data.update(compatibility=self.compatibility, compatibility_set=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)

    # -- reads --------------------------------------------------------------------------

    def schema(self, schema_id: int) -> str:
        with self.lock:
            if 1 <= schema_id <= len(self.schemas):
                return self.schemas[schema_id - 1]
        raise RegistryError(404, 40403, "Schema not found")

    def subject_versions(self, subject: str) -> list[int]:
        with self.lock:
            if subject not in self.subjects:
                raise RegistryError(404, 40401, f"Subject '{subject}' not found.")
            return list(range(1, len(self.subjects[subject]) + 1))

    def version(self, subject: str, version: str) -> dict[str, Any]:
        with self.lock:
            ids = self.subjects.get(subject)
            if ids is None:
                raise RegistryError(404, 40401, f"Subject '{subject}' not found.")
            if version in ("latest", "-1"):
                number = len(ids)
            else:
                try:
                    number = int(version)
                except ValueError:
                    raise RegistryError(422, 42202, "The specified version "
                                        f"'{version}' is not a valid version id.") from None
                if number < 1:
                    raise RegistryError(422, 42202, "The specified version "
                                        f"'{version}' is not a valid version id.")
                if number > len(ids):
                    raise RegistryError(404, 40402, f"Version {version} not found.")
            schema_id = ids[number - 1]
            return {"subject": subject, "version": number, "id": schema_id,
                    "schema": self.schemas[schema_id - 1]}

    def versions_of_id(self, schema_id: int) -> list[dict[str, Any]]:
        self.schema(schema_id)
        with self.lock:
            return [{"subject": s, "version": i + 1} for s, ids in self.subjects.items()
                    for i, sid in enumerate(ids) if sid == schema_id]

    def lookup(self, subject: str, schema_text: str) -> dict[str, Any]:
        norm = normalise(schema_text)
        with self.lock:
            ids = self.subjects.get(subject)
            if ids is None:
                raise RegistryError(404, 40401, f"Subject '{subject}' not found.")
            for i, sid in enumerate(ids):
                if self.schemas[sid - 1] == norm:
                    return {"subject": subject, "version": i + 1, "id": sid, "schema": norm}
        raise RegistryError(404, 40403, "Schema not found")

    def level(self, subject: str | None = None) -> str:
        with self.lock:
            return self.config.get(subject, self.compatibility) if subject else \
                self.compatibility

    # -- writes -------------------------------------------------------------------------

    def set_level(self, level: str, subject: str | None = None) -> str:
        if level not in LEVELS:
            raise RegistryError(422, 42203, f"Invalid compatibility level: {level}")
        with self.lock:
            if subject:
                self.config[subject] = level
            else:
                self.compatibility, self.compatibility_set = level, True
            self._save()
        return level

    def register(self, subject: str, schema_text: str) -> int:
        norm = normalise(schema_text)
        with self.lock:
            ids = self.subjects.setdefault(subject, [])
            existing = next((sid for sid in ids if self.schemas[sid - 1] == norm), None)
            if existing is not None:
                return existing
            problems = self._incompatible(subject, ids, norm)
            if problems:
                if not ids:
                    del self.subjects[subject]
                raise RegistryError(409, 409, "Schema being registered is incompatible with "
                                    f"an earlier schema for subject \"{subject}\": "
                                    + "; ".join(problems[:5]))
            try:
                schema_id = self.schemas.index(norm) + 1
            except ValueError:
                self.schemas.append(norm)
                schema_id = len(self.schemas)
            ids.append(schema_id)
            self._save()
            log.info("registered %s version %d id %d", subject, len(ids), schema_id)
            return schema_id

    def _incompatible(self, subject: str, ids: list[int], norm: str) -> list[str]:
        level = self.config.get(subject, self.compatibility)
        if level == "NONE" or not ids:
            return []
        new = json.loads(norm)
        olds = [json.loads(self.schemas[sid - 1]) for sid in
                (ids if level.endswith("_TRANSITIVE") else ids[-1:])]
        problems: list[str] = []
        for old in olds:
            if level.startswith(("BACKWARD", "FULL")):
                problems += [f"new schema cannot read old: {p}" for p in can_read(new, old)]
            if level.startswith(("FORWARD", "FULL")):
                problems += [f"old schema cannot read new: {p}" for p in can_read(old, new)]
        return problems


ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(r"^/schemas/ids/(\d+)$"), "get_schema"),
    ("GET", re.compile(r"^/schemas/ids/(\d+)/versions$"), "get_schema_versions"),
    ("GET", re.compile(r"^/subjects$"), "get_subjects"),
    ("GET", re.compile(r"^/subjects/([^/]+)/versions$"), "get_versions"),
    ("GET", re.compile(r"^/subjects/([^/]+)/versions/([^/]+)$"), "get_version"),
    ("GET", re.compile(r"^/subjects/([^/]+)/versions/([^/]+)/schema$"), "get_version_schema"),
    ("POST", re.compile(r"^/subjects/([^/]+)/versions$"), "post_version"),
    ("POST", re.compile(r"^/subjects/([^/]+)$"), "post_lookup"),
    ("GET", re.compile(r"^/config$"), "get_config"),
    ("PUT", re.compile(r"^/config$"), "put_config"),
    ("GET", re.compile(r"^/config/([^/]+)$"), "get_config"),
    ("PUT", re.compile(r"^/config/([^/]+)$"), "put_config"),
    ("GET", re.compile(r"^/$"), "get_root"),
]


class Handler(BaseHTTPRequestHandler):
    server: RegistryHTTPServer
    protocol_version = "HTTP/1.1"
    _raw = b""  # the request's body, read by _dispatch

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    def _reply(self, status: int, body: Any, raw: bool = False) -> None:
        data = body.encode() if raw else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if raw else CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        try:
            body = json.loads(self._raw or b"{}")
        except ValueError:
            raise RegistryError(400, 400, "Unexpected character: the body is not JSON") \
                from None
        if not isinstance(body, dict):
            raise RegistryError(422, 422, "Unrecognized body: expected a JSON object")
        return body

    def _authorized(self) -> bool:
        if self.server.basic_auth is None:
            return True
        user, password = self.server.basic_auth
        want = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        return hmac.compare_digest(self.headers.get("Authorization", "").encode(),
                                   want.encode())

    def _dispatch(self, method: str) -> None:
        # read before any reply, whatever the route: the connection stays open (HTTP/1.1),
        # and a body left unread would be parsed as the next request
        length = int(self.headers.get("Content-Length") or 0)
        self._raw = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if not self._authorized():
            self._reply(401, {"error_code": 401, "message": "Unauthorized"})
            return
        try:
            for verb, pattern, name in ROUTES:
                match = pattern.match(path)
                if verb == method and match:
                    args = [unquote(g) for g in match.groups()]
                    status, body, *raw = getattr(self, name)(*args)
                    self._reply(status, body, bool(raw and raw[0]))
                    return
            if any(p.match(path) for _v, p, _n in ROUTES):
                raise RegistryError(405, 405, "HTTP 405 Method Not Allowed")
            raise RegistryError(404, 404, "HTTP 404 Not Found")
        except RegistryError as exc:
            self._reply(exc.status, {"error_code": exc.error_code, "message": exc.message})
        except Exception as exc:  # noqa: BLE001 - answer 500 rather than drop the connection
            log.exception("internal error")
            self._reply(500, {"error_code": 50001, "message": f"Error in the backend data "
                              f"store: {type(exc).__name__}"})

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    # -- routes -------------------------------------------------------------------------

    def get_root(self) -> tuple[int, Any]:
        return 200, {}

    @staticmethod
    def _schema_id(text: str) -> int:
        """Confluent's ``{id}`` is a Java Integer: past 2^31-1 the path matches no route
        (404 with error_code 404, not 40403 — what a client must tell from an unknown id)."""
        if len(text.lstrip("0")) > len(str(MAX_SCHEMA_ID)) or int(text) > MAX_SCHEMA_ID:
            raise RegistryError(404, 404, "HTTP 404 Not Found")
        return int(text)

    def get_schema(self, schema_id: str) -> tuple[int, Any]:
        return 200, {"schema": self.server.store.schema(self._schema_id(schema_id))}

    def get_schema_versions(self, schema_id: str) -> tuple[int, Any]:
        return 200, self.server.store.versions_of_id(self._schema_id(schema_id))

    def get_subjects(self) -> tuple[int, Any]:
        with self.server.store.lock:
            return 200, sorted(self.server.store.subjects)

    def get_versions(self, subject: str) -> tuple[int, Any]:
        return 200, self.server.store.subject_versions(subject)

    def get_version(self, subject: str, version: str) -> tuple[int, Any]:
        return 200, self.server.store.version(subject, version)

    def get_version_schema(self, subject: str, version: str) -> tuple[int, Any, bool]:
        return 200, self.server.store.version(subject, version)["schema"], True

    def _schema_of(self, body: dict[str, Any]) -> str:
        schema = body.get("schema")
        if not isinstance(schema, str):
            raise RegistryError(422, 42201, "Invalid schema: 'schema' must be a string")
        if body.get("schemaType", "AVRO") != "AVRO":
            raise RegistryError(422, 42201, "Invalid schema: only AVRO is supported here")
        if body.get("references"):
            raise RegistryError(422, 42201, "Invalid schema: references are not supported "
                                "by this emulator")
        return schema

    def post_version(self, subject: str) -> tuple[int, Any]:
        return 200, {"id": self.server.store.register(subject, self._schema_of(self._body()))}

    def post_lookup(self, subject: str) -> tuple[int, Any]:
        return 200, self.server.store.lookup(subject, self._schema_of(self._body()))

    def get_config(self, subject: str | None = None) -> tuple[int, Any]:
        return 200, {"compatibilityLevel": self.server.store.level(subject)}

    def put_config(self, subject: str | None = None) -> tuple[int, Any]:
        level = str(self._body().get("compatibility", "")).upper()
        return 200, {"compatibility": self.server.store.set_level(level, subject)}


class RegistryHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], store: Store,
                 basic_auth: tuple[str, str] | None = None) -> None:
        self.store = store
        # like a registry behind basic auth (Confluent Cloud's API key and secret)
        self.basic_auth = basic_auth
        super().__init__(address, Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client gone mid-request (it closed, or refused our certificate) is the client's
        business, as it is for a real registry: one debug line, not socketserver's
        traceback on stderr. Anything else keeps the traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # ConnectionError, ssl.SSLError, ...
            log.debug("connection from %s ended mid-request: %r", client_address, exc)
            return
        super().handle_error(request, client_address)

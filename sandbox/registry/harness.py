"""Run the schema registry emulator from tests, benchmarks and by hand.

::

    from sandbox.registry.harness import running_registry

    with running_registry() as reg:               # in this process, free port, in memory
        env = reg.env()                           # {"SCHEMA_REGISTRY_URL": reg.url}
        reg.subjects(); reg.versions("t.outcomes-value"); reg.schema(1)
        reg.stop(); ...; reg.start()              # unavailable meanwhile; same port, same data

    with running_registry(tmp_path, subprocess=True) as reg:   # `python -m sandbox.registry serve`
        ...

In process, the server runs on daemon threads (``ThreadingHTTPServer``); as a subprocess it
writes a ready file ``{"url", "port", "pid"}`` and keeps its schemas in
``<directory>/registry.json`` so a restart keeps the ids. Either way the block's exit stops it.
"""

from __future__ import annotations

import json
import os
import subprocess as sp
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from sandbox.registry.server import RegistryHTTPServer, Store

_ROOT = Path(__file__).resolve().parents[2]


class RegistryStartError(RuntimeError):
    """The emulator did not come up; the message carries the tail of its log."""


class Registry:
    """Handle on a running emulator (see the module docstring)."""

    def __init__(self, directory: Path | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, subprocess: bool = False, compatibility: str | None = None,
                 startup_timeout: float = 20.0) -> None:
        self.directory = Path(directory) if directory is not None else None
        if subprocess and self.directory is None:
            raise ValueError("a subprocess registry needs a directory")
        self.host, self.port = host, port
        self.subprocess = subprocess
        self.compatibility = compatibility
        self.startup_timeout = startup_timeout
        self.store_path = self.directory / "registry.json" if self.directory else None
        self.store: Store | None = None
        self._server: RegistryHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.process: sp.Popen[bytes] | None = None
        self._http = httpx.Client(timeout=10)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        return {"SCHEMA_REGISTRY_URL": self.url}

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self.subprocess:
            self._start_process()
            return
        if self.store is None:
            if self.directory is not None:
                self.directory.mkdir(parents=True, exist_ok=True)
            self.store = Store(self.store_path, compatibility=self.compatibility)
        self._server = RegistryHTTPServer((self.host, self.port), self.store)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name=f"registry-{self.port}", daemon=True)
        self._thread.start()

    def _start_process(self) -> None:
        assert self.directory is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        ready = self.directory / "registry.ready.json"
        log_path = self.directory / "registry.log"
        ready.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "sandbox.registry", "serve", "--host", self.host,
               "--port", str(self.port), "--store", str(self.store_path),
               "--ready-file", str(ready)]
        if self.compatibility is not None:  # else a level saved by PUT /config survives
            cmd += ["--compatibility", self.compatibility]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")]))}
        with open(log_path, "ab") as log:
            self.process = sp.Popen(cmd, cwd=self.directory, env=env, stdout=log,
                                    stderr=sp.STDOUT, stdin=sp.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout
        while not ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RegistryStartError(f"schema registry emulator did not start:\n{tail}")
            time.sleep(0.02)
        self.port = json.loads(ready.read_text())["port"]

    def stop(self) -> None:
        """Stop serving (clients then get connection errors); ``start()`` resumes on the
        same port with the same schemas."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except sp.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        self.stop()
        self._http.close()

    # -- looking inside -----------------------------------------------------------------

    def get(self, path: str) -> Any:
        resp = self._http.get(self.url + path)
        resp.raise_for_status()
        return resp.json()

    def subjects(self) -> list[str]:
        return self.get("/subjects")

    def versions(self, subject: str) -> list[int]:
        from urllib.parse import quote

        return self.get(f"/subjects/{quote(subject, safe='')}/versions")

    def latest(self, subject: str) -> dict[str, Any]:
        from urllib.parse import quote

        return self.get(f"/subjects/{quote(subject, safe='')}/versions/latest")

    def schema(self, schema_id: int) -> str:
        return self.get(f"/schemas/ids/{schema_id}")["schema"]


@contextmanager
def running_registry(directory: str | Path | None = None, *, host: str = "127.0.0.1",
                     port: int = 0, subprocess: bool = False, compatibility: str | None = None,
                     startup_timeout: float = 20.0) -> Iterator[Registry]:
    """Start the emulator (in this process unless ``subprocess``); stop it on exit."""
    reg = Registry(Path(directory) if directory is not None else None, host=host, port=port,
                   subprocess=subprocess, compatibility=compatibility,
                   startup_timeout=startup_timeout)
    reg.start()
    try:
        yield reg
    finally:
        reg.close()

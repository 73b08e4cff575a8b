"""A small process supervisor: starts children, restarts crashed ones, stops them in order.

``ops.stack`` launches it detached (``python -m ops.supervisor PLAN.json``). The plan is a
list of processes (name, argv, env, log file, health URL). Each child runs in its own
process group with stdout/stderr appended to its log file; when the supervisor (re)starts a
child whose log is over ``SFPROV_LOG_MAX_MB`` it first rotates it (:func:`rotate_log`; a
running child's log only at its next restart). A child that exits is restarted with
exponential backoff (1 s doubling to 30 s, reset after 60 s of good health). SIGTERM
stops the children in reverse start order (SIGTERM, then SIGKILL after a grace period) and
exits; a child it has to kill is named in its log, on stdout and in
``<state>/supervisor-killed.json`` (:func:`killed_file`), which ``ops.stack down`` reports. A child's grace is its own drain timeout (``WORKER_DRAIN_TIMEOUT_S``,
``SINK_DRAIN_TIMEOUT_S``, as the child reads them) plus :data:`STOP_MARGIN_S` — and, for the
sink, one Salesforce call under way at its drain's end (``SF_TIMEOUT_S``) — so a stop
never kills a drain half way; :data:`DEFAULT_GRACE_S` for a child without one.
``<state>/supervisor.json`` always tells what runs (pids, restarts, last exit), each pid with
its :func:`process_start`, so that ``ops.stack`` never signals a process that merely got a
recorded pid after a restart of the machine.

``ops.stack pause|resume|restart`` talk to it through ``<state>/supervisor-control.json``:
``{"paused": [names], "kick": {name: n}}``. A paused child is stopped and kept down; the
status file lists it under ``"paused"`` once it is (that is the supervisor's acknowledgement).
A changed ``kick`` counter means "try again now" (``resume`` / ``restart``): the child starts
at once, with its backoff reset, even after an exit that was final; the status file's
``"kicks"`` echo the counters applied.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.envparse import environment
from common.errors import ConfigError
from common.settings import SalesforceSettings, SinkSettings, WorkerSettings
from ops import envvars

#: What a child may take after its drain before it is killed: closing its Kafka clients —
#: the sink's close revokes its partitions and commits what Salesforce acknowledged (a
#: stopping sink's revoke flushes nothing more: sinks.app.Sink._on_revoke) —
#: (docker-compose.yml's stop_grace_period keeps the same margin).
STOP_MARGIN_S = 20.0
#: The grace of a child without a drain setting (the sandboxes; the connector has its
#: Kafka call timeout more).
DEFAULT_GRACE_S = 20.0
#: The setting (section, field) that bounds a child's drain on SIGTERM, by child name; its
#: variable and default are the settings' own.
DRAIN_SETTINGS: dict[str, tuple[type[Any], str]] = {
    "worker": (WorkerSettings, "drain_timeout_s"),
    "sink": (SinkSettings, "drain_timeout_s"),
}
#: Settings added to a child's grace: the sink's drain starts no call after its deadline,
#: but one under way then may take its whole timeout (sinks.app.Sink._drain); the worker's
#: guard query runs in a thread, which the interpreter joins at exit.
OVERRUN_SETTINGS: dict[str, list[tuple[type[Any], str]]] = {
    "sink": [(SalesforceSettings, "timeout_s")],
    "worker": [(SalesforceSettings, "timeout_s")],
}


def stop_grace(name: str, env: Mapping[str, str]) -> float:
    """Seconds between SIGTERM and SIGKILL for the child ``name`` whose environment (the
    supervisor's environment over .env, with the plan's overrides) is ``env``."""
    if name == "connector":
        # its stop commits the open batch: a transactional call under way (or that commit)
        # takes up to the writer's call timeout, and is not retried once a stop is asked
        from connectors.writer import CALL_TIMEOUT_S

        return DEFAULT_GRACE_S + CALL_TIMEOUT_S
    if name not in DRAIN_SETTINGS:
        return DEFAULT_GRACE_S
    overrun = sum(_seconds(section, attr, env) for section, attr in OVERRUN_SETTINGS.get(name, []))
    return _seconds(*DRAIN_SETTINGS[name], env) + overrun + STOP_MARGIN_S


def _seconds(section: type[Any], attr: str, env: Mapping[str, str]) -> float:
    """The setting ``attr`` of ``section`` as the child reads it from ``env`` (its default
    when unset or refused: the child refuses it then, exit 64), at least 0."""
    setting = next(f for f in dataclasses.fields(section) if f.name == attr)
    raw = env.get(setting.metadata["env"], "")
    assert isinstance(setting.default, int | float), f"{attr}: no default"
    value = float(setting.default)
    if raw.strip():
        with contextlib.suppress(ValueError, TypeError):
            value = float(setting.metadata["parse"](raw))
    return max(value, 0.0)


#: The make-up variable that caps a child's log, in MB (0: never rotated), and its default.
LOG_MAX_MB_VARIABLE, LOG_MAX_MB_DEFAULT = "SFPROV_LOG_MAX_MB", 100
#: How many rotated logs are kept: ``NAME.log.1`` (the newest) to ``NAME.log.3``.
LOG_KEEP = 3


def log_limit(env: Mapping[str, str]) -> int:
    """``SFPROV_LOG_MAX_MB`` in bytes (0: never rotate); a value that does not parse is a
    :class:`~common.errors.ConfigError` naming it."""
    return envvars.count(env, LOG_MAX_MB_VARIABLE, LOG_MAX_MB_DEFAULT) * 1024 * 1024


def configured_log_limit(env: Mapping[str, str]) -> int:
    """:func:`log_limit`, for the running supervisor: a bad value is said on stdout (its log)
    and the default used — a log setting does not keep the pipeline down."""
    try:
        return log_limit(env)
    except ConfigError as exc:
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} warning: {exc}; logs rotate at "
              f"{LOG_MAX_MB_DEFAULT} MB", flush=True)
        return LOG_MAX_MB_DEFAULT * 1024 * 1024


def rotate_log(log: Path, max_bytes: int, keep: int = LOG_KEEP) -> bool:
    """Rename ``log`` to ``log.1`` (``log.1`` to ``log.2`` …, the oldest of ``keep`` dropped)
    when it is over ``max_bytes`` (0: never); whether it did. Only safe while nothing writes
    to ``log``: a running child holds it open (``O_APPEND``) and would go on writing to the
    renamed file, so the supervisor calls this just before it (re)starts the child."""
    if max_bytes <= 0:
        return False
    try:
        if log.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    for i in range(keep - 1, 0, -1):
        older = log.with_name(f"{log.name}.{i}")
        if older.exists():
            os.replace(older, log.with_name(f"{log.name}.{i + 1}"))
    os.replace(log, log.with_name(f"{log.name}.1"))
    return True


def process_start(pid: int) -> str | None:
    """When the process ``pid`` started, as ``BOOT_ID:TICKS`` (the kernel's boot id and field
    22 of ``/proc/PID/stat``, clock ticks since boot): a pid is reused, this pair is not, even
    across reboots. None when no such process runs (a zombie does not)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # fields[0] is field 3 (the state)
    return None if fields[0] == "Z" else f"{boot}:{fields[19]}"


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: str
    health_url: str = ""
    ca: str = ""
    requires: list[str] = field(default_factory=list)  # names that must be healthy first
    final_exit_codes: list[int] = field(default_factory=list)  # exits not to restart after
    grace_s: float | None = None  # None: stop_grace() of the child's name and environment
    log_max_bytes: int | None = None  # rotate the log over it at a start; None: log_limit()
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    proc_start: str | None = field(default=None, repr=False)  # process_start(proc.pid)
    restarts: int = 0
    last_exit: int | None = None
    started_at: float = 0.0
    next_start: float = 0.0
    backoff: float = 1.0
    start_error: str = ""  # why the last start failed (its program gone, fork refused …)

    def log_limit(self) -> int:
        """The size over which :meth:`start` rotates the log first (0: never)."""
        if self.log_max_bytes is not None:
            return self.log_max_bytes
        return log_limit(environment())

    def start(self) -> None:
        """Start the child. A start that fails (its program gone — a ``.venv`` rebuilt —,
        fork refused for memory or processes, no file descriptor, its log not writable) is
        said on stdout and in its log where it can be, and counts as an exit: tried again
        after the backoff. It used to end the supervisor's loop, which then stopped every
        other child too, for good."""
        log = Path(self.log)
        now = time.strftime('%Y-%m-%dT%H:%M:%S')
        limit = self.log_limit()
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            note = (f"=== {now} {log.name} over {limit / 2**20:g} MB: rotated to {log.name}.1\n"
                    if rotate_log(log, limit) else "")
        except OSError as exc:  # a start does not wait for a rotation
            note = f"=== {now} could not rotate {log.name}: {exc}\n"
        try:
            with open(self.log, "ab") as out:
                out.write(f"{note}\n=== {now} starting {self.name}\n".encode())
                self.proc = subprocess.Popen(self.argv, env={**os.environ, **self.env},
                                             stdout=out, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            self.proc = None  # last_exit stays the exit that made this a restart
            self.start_error = f"{type(exc).__name__}: {exc}"
            self._again(f"could not start: {self.start_error}")
            print(f"{now} {self.name} could not start: {self.start_error}", flush=True)
            return
        self.start_error = ""
        self.proc_start = process_start(self.proc.pid)
        self.started_at = time.monotonic()

    def _again(self, what: str) -> None:
        """Start again after the backoff (which doubles), saying ``what`` happened in the
        log."""
        now = time.monotonic()
        self.restarts += 1
        self.next_start = now + self.backoff
        self.backoff = min(self.backoff * 2, 30.0)
        self._say(f"=== {self.name} {what}; restarting in {self.next_start - now:.0f}s")

    def _say(self, line: str) -> None:
        """A line in the child's log; a log that cannot be written (a full disk) does not
        stop the supervisor."""
        with contextlib.suppress(OSError), open(self.log, "ab") as out:
            out.write(f"{line}\n".encode())

    def poll(self, healthy: set[str]) -> None:
        now = time.monotonic()
        if self.proc is None:
            if now >= self.next_start and all(r in healthy for r in self.requires):
                self.start()
            return
        code = self.proc.poll()
        if code is None:
            if now - self.started_at > 60:
                self.backoff = 1.0
            return
        self.last_exit = code
        self.proc = None
        if code in self.final_exit_codes:
            self.next_start = float("inf")
            self._say(f"=== {self.name} exited with {code}: not restarting")
            return
        self._again(f"exited with {code}")

    def grace(self) -> float:
        """How long ``stop`` waits after SIGTERM before SIGKILL."""
        if self.grace_s is not None:
            return self.grace_s
        return stop_grace(self.name, {**environment(), **self.env})

    def kick(self) -> None:
        """Start (again) as soon as nothing holds it (pause, requirements), even after an exit
        that was final: ``resume`` / ``restart`` is how an operator says "try again"."""
        self.next_start = 0.0
        self.backoff = 1.0

    def stop(self) -> float | None:
        """Stop the child; once it is no longer paused it starts at once, even after an exit
        that was final. Returns the grace it waited before it had to SIGKILL the child (and
        says so in the child's log and on stdout, the supervisor's log), None when the child
        stopped in time (or did not run)."""
        self.kick()
        if self.proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        grace = self.grace()
        killed = None
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            killed = grace
            line = f"=== {self.name} did not stop within {grace:g}s: killed (SIGKILL)"
            self._say(line)
            print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}", flush=True)
        self.proc = None
        return killed

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.proc.pid if self.proc else None,
                "start": self.proc_start if self.proc else None,
                # how long it has run, on this process's monotonic clock (`make up` counts a
                # process without a health URL by it; /proc/uptime is the container's age
                # under lxcfs, while a process's start ticks count from the host's boot)
                "running_s": round(time.monotonic() - self.started_at, 1) if self.proc else None,
                "restarts": self.restarts, "last_exit": self.last_exit, "log": self.log,
                "start_error": self.start_error or None,
                "health_url": self.health_url,
                # left with a final exit code: down until an operator resumes or restarts it
                "final": self.proc is None and self.next_start == float("inf")}


def killed_file(status_file: Path) -> Path:
    """Where the supervisor, stopping, lists the children it had to SIGKILL (``{"pid": its
    pid, "killed": [{"name", "grace_s", "log"}]}``), beside its status file: ``ops.stack
    down`` reads it once the supervisor has exited, warns for each, and removes it."""
    return status_file.with_name("supervisor-killed.json")


def is_healthy(child: Child) -> bool:
    """Health URL answers 200 (a child without one counts as healthy once started)."""
    if not child.health_url:
        return True
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=child.ca) if child.ca else None
    try:
        with urllib.request.urlopen(child.health_url, timeout=2,  # noqa: S310 - local
                                    context=context) as resp:
            return bool(resp.status == 200)
    except Exception:  # noqa: BLE001 - not up (yet)
        return False


def turned_healthy(child: Child) -> bool:
    """Whether the running ``child`` answers its health URL and still runs after the probe:
    another program on its port answers for a child that could not bind it and exited."""
    return child.proc is not None and is_healthy(child) and child.proc.poll() is None


def read_control(path: Path, last: dict[str, Any]) -> dict[str, Any]:
    """The control file (``{}`` when there is none); ``last`` while it cannot be read (an
    older ``ops.stack`` wrote it in place: it may be half written)."""
    try:
        control = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return last
    return control if isinstance(control, dict) else last


def kicks_of(control: dict[str, Any]) -> dict[str, int]:
    kick = control.get("kick")
    if not isinstance(kick, dict):
        return {}
    return {str(k): v for k, v in kick.items() if isinstance(v, int)}


def write_status(status_file: Path, status: dict[str, Any]) -> bool:
    """Replace the status file; a write that fails (a full disk) is said on stdout and tried
    again at the next round — it does not end the supervisor (whose ``finally`` would stop
    every child)."""
    tmp = status_file.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps(status, indent=1))
        os.replace(tmp, status_file)
    except OSError as exc:
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} warning: could not write {status_file}: "
              f"{exc}", flush=True)
        return False
    return True


def run(plan_path: Path) -> int:
    plan = json.loads(plan_path.read_text())
    children = [Child(**spec) for spec in plan["processes"]]
    limit = configured_log_limit(environment())  # once: a bad value is said once
    for child in children:
        if child.log_max_bytes is None:
            child.log_max_bytes = limit
    status_file = Path(plan["status_file"])
    stopping = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    healthy: set[str] = set()
    control_file = status_file.parent / "supervisor-control.json"
    control = read_control(control_file, {})
    applied = kicks_of(control)  # what an earlier supervisor may have left is not a kick
    try:
        while not stopping:
            control = read_control(control_file, control)
            paused = set(control.get("paused") or [])
            kicks = kicks_of(control)
            for child in children:
                if kicks.get(child.name, 0) != applied.get(child.name, 0):
                    child.kick()
                if child.name in paused:
                    child.stop()
                    healthy.discard(child.name)
                    continue
                child.poll(healthy)
                if child.name not in healthy and turned_healthy(child):
                    healthy.add(child.name)
            applied = kicks
            write_status(status_file, {"pid": os.getpid(),
                                       "processes": [c.status() for c in children],
                                       # stopped and kept down (the pause's acknowledgement)
                                       "paused": sorted(c.name for c in children
                                                        if c.name in paused),
                                       "kicks": applied})
            time.sleep(0.5)
    finally:  # whatever happened, leave no child behind
        killed = []
        for child in reversed(children):
            grace = child.stop()
            if grace is not None:
                killed.append({"name": child.name, "grace_s": grace, "log": child.log})
        # what `make down` reads once this process is gone, to name each child it killed
        with contextlib.suppress(OSError):
            tmp = killed_file(status_file).with_suffix(".tmp")
            tmp.write_text(json.dumps({"pid": os.getpid(), "killed": killed}))
            os.replace(tmp, killed_file(status_file))
        status_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))

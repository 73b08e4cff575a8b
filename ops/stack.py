"""``python -m ops.stack up|down|status``: the local stack behind ``make up`` / ``make down``.

``up`` is idempotent: it starts the Kafka broker (unless KAFKA_BOOTSTRAP_SERVERS points
elsewhere), creates missing topics, and — unless the supervisor already runs — launches the
supervisor with the plan of processes: in **sandbox mode** (no SF_CLIENT_ID configured) the
Salesforce and WHMCS sandboxes plus the connector, worker and sink pointed at them; with real
credentials in ``.env`` only the three pipeline processes. It waits until every process is
healthy and prints a map of what runs where.

``down`` stops the supervisor (which stops its children in reverse order) and the broker,
leaving no process behind. Every pid it signals is verified first (:mod:`ops.pids`): pid
files outlive a restart of the machine, their pids do not, and another process of the user
may have one now. ``up`` after a supervisor that died alone stops the children it left.

``KAFKA_LOCAL_SECURE=true`` runs the local broker secured (:mod:`ops.kafka_secure`): a
SASL_SSL listener, SCRAM users and the ACLs of :mod:`ops.acls`; topics and ACLs are made as
the admin, and each pipeline process connects as its own principal (the supervisor's plan
file, mode 0600, carries their passwords).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from common.envparse import (
    ROOT,
    environment,
    environment_at_import,
    exits_64_on_config_error,
    parse_bool,
)
from common.errors import ConfigError
from common.settings import ConnectorSettings, SinkSettings, WorkerSettings, setting
from ops import envvars, pids
from ops.kafka_local import KAFKA_VERSION, BrokerError, LocalBroker, local_bootstrap, port_open
from ops.kafka_secure import ADMIN, PROCESS_USERS, BrokerSecurity
from ops.pids import recorded_pid
from ops.supervisor import (
    Child,
    is_healthy,
    killed_file,
    log_limit,
    process_start,
    rotate_log,
    stop_grace,
)

# the environment over .env, as every process reads it (CommonSettings.state_dir)
STATE = Path(envvars.text(environment_at_import(), "SFPROV_STATE_DIR", ROOT / ".state"))
LOGS = STATE / "logs"
PLAN = STATE / "supervisor-plan.json"
STATUS = STATE / "supervisor.json"
SUPERVISOR_PID = STATE / "supervisor.pid"
CONTROL = STATE / "supervisor-control.json"
PIPELINE_ENV = STATE / "pipeline.env"
PY = sys.executable


def broker(home: Path | None = None, port: int | None = None,
           controller_port: int | None = None) -> LocalBroker:
    """The local broker as the environment (over .env) sets it up: ``KAFKA_PORT``,
    ``KAFKA_CONTROLLER_PORT``, ``KAFKA_LOCAL_SECURE``. ``python -m ops.kafka_local`` builds
    its broker here too (with its ``--dir`` and ports), so a broker started by hand is the
    one ``make up`` expects."""
    env = environment()
    home = home or STATE / "kafka" / "broker"
    return LocalBroker(home, port=port or envvars.port(env, "KAFKA_PORT", 9092),
                       controller_port=controller_port
                       or envvars.port(env, "KAFKA_CONTROLLER_PORT", 9093),
                       state_dir=STATE,
                       security=BrokerSecurity.for_broker_home(home) if secure(env) else None)


def secure(env: dict[str, str]) -> bool:
    """``KAFKA_LOCAL_SECURE``: run the local broker with SASL_SSL, SCRAM users and ACLs."""
    return uses_local_broker(env) and envvars.flag(env, "KAFKA_LOCAL_SECURE", False)


def uses_local_broker(env: dict[str, str]) -> bool:
    """Whether the pipeline's Kafka is the broker ``make up`` runs: ``KAFKA_BOOTSTRAP_SERVERS``
    unset (blank, as for the processes) or naming only the loopback on ``KAFKA_PORT``. Another
    port there is another Kafka (the user's own): no broker is started for it, and its
    processes are not given the local broker's SCRAM credentials."""
    return is_local_broker(local_bootstrap(env), envvars.port(env, "KAFKA_PORT", 9092))


def is_local_broker(servers: str, port: int) -> bool:
    """Whether each of the bootstrap ``servers`` is the loopback on ``port``."""
    def local(server: str) -> bool:
        host, _, given = server.strip().partition(":")
        # no port is the Kafka clients' default, 9092
        return host in ("localhost", "127.0.0.1") and (given.strip() or "9092") == str(port)
    return all(local(server) for server in servers.split(","))


def sandbox_mode(env: dict[str, str]) -> bool:
    return not env.get("SF_CLIENT_ID", "").strip()  # blank is unset, as for the settings


def check_sandbox_kafka(env: dict[str, str]) -> None:
    """Refuse sandbox mode on a Kafka that is not the local broker, unless
    ``SFPROV_SANDBOX_REMOTE_KAFKA=true`` says that cluster is one to test on: on a real
    pipeline's cluster the sandbox connector fences its connector (the same transactional
    id), the worker joins its group and fails its Orders (the sandbox has none of them), and
    the sink takes its outcomes."""
    servers, port = local_bootstrap(env), envvars.port(env, "KAFKA_PORT", 9092)
    if (not sandbox_mode(env) or is_local_broker(servers, port)
            or envvars.flag(env, "SFPROV_SANDBOX_REMOTE_KAFKA", False)):
        return
    raise ConfigError(
        f"KAFKA_BOOTSTRAP_SERVERS: {servers} is not the local broker (127.0.0.1:{port}) and "
        "SF_CLIENT_ID is unset (sandbox mode): the sandboxes' connector, worker and sink would "
        "join the pipeline of that cluster; set SF_CLIENT_ID to run against a real org, unset "
        "KAFKA_BOOTSTRAP_SERVERS to use the local broker, or set "
        "SFPROV_SANDBOX_REMOTE_KAFKA=true if that cluster is one to test on")


def sandbox_env(env: dict[str, str], pipeline_env: dict[str, str]) -> dict[str, str]:
    """What the sandboxes set for the pipeline: their URLs and credentials win over the
    environment; a choice the user made (``ops.sandboxes.USER_CHOICES``: where to start
    reading events) stays theirs, as under docker compose (``ops.container``)."""
    from ops.sandboxes import USER_CHOICES

    return {k: v for k, v in pipeline_env.items()
            if not (k in USER_CHOICES and env.get(k, "").strip())}


def events_enabled(env: dict[str, str]) -> bool:
    """``SF_EVENTS_ENABLED`` (a value that does not parse is left to the connector to refuse,
    with exit 64)."""
    try:
        return parse_bool(env.get("SF_EVENTS_ENABLED", "true"))
    except ValueError:
        return True


FINAL_EXIT_CODES = {"connector": [2, 3, 64], "worker": [64], "sink": [64]}


def _pipeline_processes(env: dict[str, str], overrides: dict[str, str]) -> list[dict[str, Any]]:
    """The three pipeline processes (only those whose package exists)."""
    procs = []
    security = broker().security if secure(env) else None
    for name, module, args, section in (
            ("connector", "connectors", ["run"], ConnectorSettings),
            ("worker", "streams", ["worker"], WorkerSettings),
            ("sink", "sinks", ["run"], SinkSettings)):
        if not (ROOT / module / "__main__.py").exists():
            continue
        if name == "connector" and not events_enabled(env):
            continue  # it would exit 0 at once, and be restarted for ever
        own = dict(overrides)
        if security is not None:  # its own principal
            own.update(security.env(PROCESS_USERS[name]))
        procs.append({"name": name, "argv": [PY, "-m", module, *args], "env": own,
                      "log": str(LOGS / f"{name}.log"),
                      "health_url": _health_url(section, {**env, **own}),
                      # Restarting would not help, an operator must look: connector 2 = replay
                      # id refused under FAIL, 3 = fenced, 64 = bad setting; sink 64 = bad setting;
                      # worker 64 = bad setting (for all three: also a broker refusing their
                      # credentials or ACLs).
                      "final_exit_codes": FINAL_EXIT_CODES.get(name, [])})
    return procs


def _health_url(section: type[Any], env: dict[str, str]) -> str:
    """Where the process's /healthz answers, from its ``*_HTTP_PORT`` and ``*_HTTP_HOST`` as
    it reads them (``env``: what the child sees); "" when port 0 turns its probes off (then
    started counts as healthy). A host listening everywhere is asked on the loopback. A
    value the process refuses (it exits 64) leaves the default."""
    def read(attr: str) -> Any:
        try:
            return setting(section, attr, env)
        except ConfigError:
            return setting(section, attr, {})

    port, host = read("http_port"), str(read("http_host")).strip()
    if port == 0:
        return ""
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    return f"http://{host}:{port}/healthz"


def plan(env: dict[str, str]) -> list[dict[str, Any]]:
    """Processes to supervise. Their env holds only what the stack decides (sandbox URLs and
    credentials, the bootstrap address); everything else they read from the environment and
    .env themselves, so no secret is copied into the plan file. Each carries its stop grace
    as the environment sets it now (``grace_s``): ``down`` waits for those, not for what its
    own environment would say."""
    processes: list[dict[str, Any]] = []
    overrides: dict[str, str] = {"PYTHONPATH": str(ROOT)}
    requires: list[str] = []
    if sandbox_mode(env):
        from ops import sandboxes

        sandbox_procs, pipeline_env = sandboxes.plan(STATE, LOGS)
        processes.extend(sandbox_procs)
        overrides.update(sandbox_env(env, pipeline_env))
        requires = [p["name"] for p in sandbox_procs]
    overrides["KAFKA_BOOTSTRAP_SERVERS"] = local_bootstrap(env)
    cli_env = dict(overrides)
    b = broker()
    if b.security is not None:  # the operator CLI reads, as the read-only ops principal
        cli_env.update(b.security.env(PROCESS_USERS["ops"]))
    # The operator's tools read these as defaults (recorded_env): always the bootstrap
    # address, so that they follow a KAFKA_PORT given to `make up` alone.
    _write_private(PIPELINE_ENV, "".join(f"{k}={v}\n" for k, v in sorted(cli_env.items())
                                         if k != "PYTHONPATH"))
    pipeline = _pipeline_processes(env, overrides)
    for proc in pipeline:
        proc["requires"] = requires
    for proc in processes + pipeline:
        proc["grace_s"] = Child(**proc).grace()
    return processes + pipeline


#: The ports a sandbox listens on: its command-line flag and the variable that moves it.
SANDBOX_PORTS = {"salesforce-sandbox": (("--http-port", "SF_SANDBOX_HTTP_PORT"),
                                        ("--grpc-port", "SF_SANDBOX_GRPC_PORT")),
                 "whmcs-sandbox": (("--port", "WHMCS_SANDBOX_PORT"),),
                 "registry-sandbox": (("--port", "REGISTRY_SANDBOX_PORT"),)}


def busy_port(processes: list[dict[str, Any]]) -> str | None:
    """Which port a planned process would listen on another program holds, or None: a
    sandbox's (from its command line), a pipeline process's ``*_HTTP_PORT`` (its health
    URL). A process that cannot bind its port exits and is restarted for ever, while the
    other program may answer its health URL."""
    for p in processes:
        argv, url = p["argv"], urlsplit(p.get("health_url") or "")
        ports = [("127.0.0.1", int(argv[argv.index(flag) + 1]), variable)
                 for flag, variable in SANDBOX_PORTS.get(p["name"], ()) if flag in argv]
        if p["name"] not in SANDBOX_PORTS and url.port:  # *_HTTP_HOST's, or the loopback
            ports.append((url.hostname or "", url.port, f"{p['name'].upper()}_HTTP_PORT"))
        for host, port, variable in ports:
            if port_open(port, host):
                return f"port {port} ({variable}) is already in use"
    return None


def recorded_env() -> dict[str, str]:
    """What ``up`` recorded for the operator's tools (:data:`PIPELINE_ENV`, while the stack
    runs): the pipeline's bootstrap address; in sandbox mode the sandboxes' settings; with
    a secured broker the read-only ops principal's credentials. ``{}`` when nothing is."""
    try:
        lines = PIPELINE_ENV.read_text().splitlines()
    except FileNotFoundError:
        return {}
    pairs = (line.partition("=") for line in lines)
    return {key: value for key, _, value in pairs if key}


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it may carry local passwords)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o600)


def secure_broker_ready(b: LocalBroker) -> str | None:
    """Why a secured start cannot work, or None: SCRAM users are created when the storage
    is formatted, so a broker formatted without them must be cleaned first."""
    if b.security is None:
        return None
    if not (b.home / "data" / "meta.properties").exists():
        return None
    if b.format_marker.exists():  # formatted by this version: it says how
        without = b.format_marker.read_text().strip() != "scram"
    else:  # formatted before the marker: how the broker last ran is the best hint
        props = b.home / "server.properties"
        without = props.exists() and "StandardAuthorizer" not in props.read_text()
    if without:
        return ("KAFKA_LOCAL_SECURE: the broker's data was formatted without SCRAM users; "
                "run `make clean` (it deletes the local topics) and `make up` again")
    return None


def apply_acls(b: LocalBroker, env: dict[str, str]) -> int:
    """Create every process's ACLs on the secured local broker (idempotent)."""
    from common.kafka import admin_client
    from common.settings import ConnectorSettings, KafkaSettings, SinkSettings, WorkerSettings
    from ops.acls import acls, apply

    assert b.security is not None
    kafka = KafkaSettings.load({**env, **b.security.env(ADMIN),
                                "KAFKA_BOOTSTRAP_SERVERS": b.bootstrap})
    rules = acls(kafka, worker=WorkerSettings.load(env), sink=SinkSettings.load(env),
                 connector=ConnectorSettings.load(env))
    return apply(admin_client(kafka), rules)


def supervisor_argv() -> list[str]:
    """How ``up`` starts the supervisor (how a pid file of an earlier release is checked)."""
    return [PY, "-m", "ops.supervisor", str(PLAN)]


def supervisor_pid() -> int | None:
    """The supervisor's pid (:data:`SUPERVISOR_PID`), None unless that process is still the
    supervisor ``up`` started (:func:`ops.pids.recorded_pid`)."""
    return recorded_pid(SUPERVISOR_PID, supervisor_argv())


def planned() -> list[dict[str, Any]]:
    """The processes of the supervisor's plan (none without one)."""
    return json.loads(PLAN.read_text())["processes"] if PLAN.exists() else []


def stop_leftovers(entries: list[dict[str, Any]], *, grace: bool) -> None:
    """Stop what a supervisor that is gone left running (``entries``: its status file's
    processes), by the plan's specs and graces (:func:`ops.pids.stop_leftovers`)."""
    specs = {p["name"]: p for p in planned()}

    def grace_of(entry: dict[str, Any]) -> float:
        spec = specs.get(entry["name"])
        return Child(**spec).grace() if spec else stop_grace(entry["name"], environment())
    pids.stop_leftovers(entries, specs, grace_of, grace=grace, status_file=STATUS)


#: How long a process without a probe port (its ``*_HTTP_PORT`` is 0: no health URL) must
#: have run, the same process, before ``up`` counts it as started: a bad setting exits 64
#: within a second or two.
STARTED_S = 5.0


def running_for(entry: dict[str, Any]) -> float | None:
    """How long the process a status entry lists has run, as its supervisor measured it
    (``running_s``, at its last status write); None unless that process still runs (its
    ``start`` checked) or when the supervisor does not say (an earlier release's)."""
    pid, start, age = entry.get("pid"), entry.get("start"), entry.get("running_s")
    if not pid or not start or age is None or process_start(int(pid)) != start:
        return None
    return float(age)


def wait_healthy(processes: list[dict[str, Any]], timeout: float = 120.0) -> dict[str, str]:
    """Wait until each process with a health URL answers it while the supervisor lists it
    running (another program on its port may answer for one that cannot bind it), and each
    without one (its probes off) has run, the same process, for :data:`STARTED_S`; one that
    left with a final exit code is not waited for, also when it left after it counted.
    Returns why each other is not healthy."""
    def entry(name: str) -> dict[str, Any]:
        return next((e for e in status_entries() if e["name"] == name), {})

    seen: dict[str, tuple[int, float]] = {}  # pid first listed when (no running_s)

    def started(name: str, e: dict[str, Any]) -> bool:
        if "running_s" in e:
            age = running_for(e)
            return age is not None and age >= STARTED_S
        pid = e.get("pid")  # an earlier supervisor's status: the same pid listed for a while
        if not pid:
            seen.pop(name, None)
            return False
        if seen.get(name, (None, 0.0))[0] != pid:
            seen[name] = (pid, time.monotonic())
        return time.monotonic() - seen[name][1] >= STARTED_S

    def final(e: dict[str, Any]) -> str:
        return f"exited with {e.get('last_exit')}, a final exit code"

    deadline = time.monotonic() + timeout
    pending = {p["name"]: p for p in processes}
    failed: dict[str, str] = {}
    while pending:
        for name, p in list(pending.items()):
            before = entry(name)
            if before.get("final"):
                failed[name] = final(before)
            elif not p.get("health_url"):
                if not started(name, before):
                    continue
            elif not (before.get("pid") and is_healthy(Child(**p))
                      and entry(name).get("pid") == before["pid"]):
                continue
            del pending[name]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    for p in processes:  # counted, then left for good while others were waited for
        if p["name"] not in failed and p["name"] not in pending:
            now = entry(p["name"])
            if now.get("final"):
                failed[p["name"]] = final(now)
    def why(name: str) -> str:  # a start that failed names its cause (its log may not)
        error = entry(name).get("start_error")
        return f": could not start: {error}" if error else ""
    return {**failed, **{
        name: (f"not healthy after {timeout:.0f} s" if p.get("health_url")
               else f"not running for {STARTED_S:.0f} s after {timeout:.0f} s (no probe port)")
        + why(name) for name, p in pending.items()}}


def open_supervisor_log(log_max: int) -> BinaryIO:
    """``LOGS/supervisor.log`` open for append, for a supervisor about to start (none writes
    to it): rotated first when over ``log_max`` bytes (0: never), the new file then starting
    with a line saying so."""
    rotated = rotate_log(LOGS / "supervisor.log", log_max)
    out = open(LOGS / "supervisor.log", "ab")  # noqa: SIM115 - handed to the child
    if rotated:
        out.write(f"=== {time.strftime('%Y-%m-%dT%H:%M:%S')} supervisor.log over "
                  f"{log_max / 2**20:g} MB: rotated to supervisor.log.1\n".encode())
        out.flush()
    return out


def up() -> int:
    env = environment()
    log_max = log_limit(env)  # a bad SFPROV_LOG_MAX_MB: one line, exit 64, before anything
    check_sandbox_kafka(env)  # likewise: nothing is made on another pipeline's cluster
    STATE.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    admin_env: dict[str, str] = {}
    if supervisor_pid() is None:
        # a supervisor killed alone leaves its children running, on their ports; and a port
        # another program holds is said before anything starts (the broker left running by
        # a failed `up` was one more thing for the user to stop)
        stop_leftovers(status_entries(), grace=True)
        busy = busy_port(plan(dict(env)))
        if busy:
            print(f"error: {busy}", file=sys.stderr)
            return 1
    if uses_local_broker(env):
        b = broker()
        problem = secure_broker_ready(b)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 1
        try:
            was_running = b.running_pid() is not None
            b.start()
        except BrokerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"kafka {KAFKA_VERSION}   {b.bootstrap}  "
              f"({'already running' if was_running else 'started'}; log {b.log_file})")
        os.environ.setdefault("KAFKA_BOOTSTRAP_SERVERS", b.bootstrap)
        if b.security is not None:
            admin_env = b.security.env(ADMIN)
            properties = b.security.write_client_properties(b.bootstrap)
            print(f"kafka security: SASL_SSL (SCRAM-SHA-512) with ACLs; CA {b.security.ca_file}; "
                  f"admin client config {properties}")
    topics = subprocess.run([PY, "-m", "ops.topics"], env={**os.environ, **admin_env}, cwd=ROOT)
    if topics.returncode in (1, 3):  # unreachable, or a drift that breaks a guarantee
        return 1
    if admin_env:
        b = broker()
        print(f"kafka acls: {apply_acls(b, {**env, **os.environ})} rules for "
              f"{', '.join(PROCESS_USERS.values())}")
    if supervisor_pid() is not None:
        processes = planned()
        print("pipeline processes already running (supervisor pid "
              f"{supervisor_pid()}); nothing started twice")
    else:
        stop_leftovers(status_entries(), grace=True)  # none, unless one came meanwhile
        processes = plan(dict(env))
        busy = busy_port(processes)
        if busy:
            print(f"error: {busy}", file=sys.stderr)
            return 1
        _write_private(PLAN, json.dumps({"processes": processes, "status_file": str(STATUS)}))
        CONTROL.unlink(missing_ok=True)  # before it starts: an old pause is no longer meant
        STATUS.unlink(missing_ok=True)  # a killed one's: wait_healthy reads the new one's
        out = open_supervisor_log(log_max)  # no supervisor writes to it
        proc = subprocess.Popen(supervisor_argv(), cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        start = process_start(proc.pid)
        SUPERVISOR_PID.write_text(f"{proc.pid} {start}" if start else str(proc.pid))
    sandbox_procs = [p for p in processes if p["name"].endswith("-sandbox")]
    unhealthy = wait_healthy(sandbox_procs)
    if sandbox_procs and not unhealthy:
        from ops import sandboxes

        print(f"salesforce sandbox: {sandboxes.seed_once(STATE)}")
    unhealthy = wait_healthy(processes)
    print_map(processes, unhealthy)
    return 1 if unhealthy else 0


def print_map(processes: list[dict[str, Any]], unhealthy: dict[str, str]) -> None:
    print()
    for p in processes:
        url = p.get("health_url", "")
        if p["name"] in unhealthy:
            state = "NOT HEALTHY"
        elif url:
            state = "healthy"
        else:  # its probes are off (*_HTTP_PORT=0): it runs, nothing says more
            state, url = "running", "(no probe port)"
        print(f"  {p['name']:<18} {state:<11} {url:<36} log {p['log']}")
    print()
    print("next: make demo      approve seeded Orders and watch them provision")
    print("      make logs      follow every log;  .venv/bin/sfprov --help  operator CLI")
    print("      make down      stop everything")
    if unhealthy:
        print("\nerror: not healthy: " + "; ".join(f"{name} ({why})" for name, why in
                                                   unhealthy.items()) + " (see their logs)")


def stop_timeout(names: list[str] | None = None) -> float:
    """How long to wait for the supervisor to stop all its children (``down``) or the named
    ones (``restart``): it stops them one after another, each within its grace (the plan's,
    as ``up`` recorded it; ``ops.supervisor.stop_grace`` for a plan without), so their sum,
    plus a margin."""
    processes = [p for p in planned() if names is None or p["name"] in names]
    return max(60.0, sum(Child(**p).grace() for p in processes) + 10.0)


def status_entries() -> list[dict[str, Any]]:
    """The processes the supervisor's status file lists (it removes the file when it stops)."""
    with contextlib.suppress(FileNotFoundError, ValueError):
        return list(json.loads(STATUS.read_text())["processes"])
    return []


def report_killed(pid: int) -> None:
    """Warn for each child the supervisor ``pid`` had to SIGKILL past its grace (it lists
    them as it exits: :func:`ops.supervisor.killed_file`), then forget the list."""
    path = killed_file(STATUS)
    try:
        stopped = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    path.unlink(missing_ok=True)
    if not isinstance(stopped, dict) or stopped.get("pid") != pid:
        return
    for child in stopped.get("killed") or []:
        print(f"warning: {child['name']} did not stop within {child['grace_s']:g} s: killed"
              + (f" (see {child['log']})" if child.get("log") else ""), file=sys.stderr)


def down() -> int:
    pid = supervisor_pid()
    children = status_entries()
    if pid is not None:
        killed_file(STATUS).unlink(missing_ok=True)  # an earlier supervisor's: not this stop
        os.kill(pid, signal.SIGTERM)
        timeout = stop_timeout()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and supervisor_pid() == pid:  # exited (or a zombie)
            time.sleep(0.2)
        if supervisor_pid() == pid:
            print(f"warning: the supervisor ({pid}) did not stop its processes within "
                  f"{timeout:.0f} s: killing what is left", file=sys.stderr)
        else:
            report_killed(pid)
            print(f"pipeline processes stopped (supervisor {pid})")
    # a supervisor that died must not leave orphans: they get their grace; what one that
    # ran did not stop in its time is killed
    stop_leftovers(children, grace=pid is None)
    SUPERVISOR_PID.unlink(missing_ok=True)
    PIPELINE_ENV.unlink(missing_ok=True)  # the recorded settings are of a stack that ran
    b = broker()
    print("kafka: stopped" if b.stop() else "kafka: not running")
    return 0


def status() -> int:
    pid = supervisor_pid()
    b = broker()
    bpid = b.running_pid()
    print(f"{'kafka':<18} {'running pid ' + str(bpid) if bpid else 'not running'}  {b.bootstrap}")
    if pid is None or not STATUS.exists():
        print(f"{'supervisor':<18} not running")
        return 0 if bpid else 3
    supervised = json.loads(STATUS.read_text())
    for p in supervised["processes"]:
        print(f"{p['name']:<18} pid {p['pid']}  restarts {p['restarts']}  last exit {p['last_exit']}"
              + ("  (paused)" if p["name"] in supervised.get("paused", []) else
                 "  (final exit: fix the cause, then restart it)" if p.get("final") else "")
              + (f"  could not start: {p['start_error']}" if p.get("start_error") else ""))
    return 0


#: How long ``pause`` gives a supervisor that does not acknowledge a pause (one started by
#: an older ``ops.stack``) to read the control file: it reads it every 0.5 s.
UNACKNOWLEDGED_PAUSE_S = 1.5


def _write_control(control: dict[str, Any]) -> None:
    """Replace the control file at once: the supervisor never reads half of it."""
    tmp = CONTROL.with_name(f".{CONTROL.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(control))
    os.replace(tmp, CONTROL)


def pause(names: list[str], paused: bool = True, timeout_s: float = 60.0) -> int:
    """Stop (pause) or start again (resume) supervised processes, e.g. the worker for a
    replay. Resuming also starts a process that left with a final exit code (a bad setting,
    a fenced connector) once the operator has fixed the cause: it bumps the process's
    ``kick`` counter in the control file, which the supervisor cannot miss. A pause is done
    when the supervisor lists the process as paused (then it has stopped it), not merely when
    no process runs. Exit 0 when every named process is in the asked state, 2 for a name the
    supervisor does not run, 1 on timeout or when a resumed process exits finally again, 3
    when the supervisor does not run."""
    if supervisor_pid() is None or not STATUS.exists():
        print("the supervisor is not running (make up)", file=sys.stderr)
        return 3
    known = [p["name"] for p in json.loads(STATUS.read_text())["processes"]]
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        print(f"error: {'unknown process ' + ', '.join(unknown) if unknown else 'name one'}; "
              f"the supervisor runs: {', '.join(known)}", file=sys.stderr)
        return 2
    control: dict[str, Any] = {}
    with contextlib.suppress(FileNotFoundError, ValueError):
        control = json.loads(CONTROL.read_text())
    current = set(control.get("paused") or [])
    current = current | set(names) if paused else current - set(names)
    control["paused"] = sorted(current)
    kicks: dict[str, int] = dict(control.get("kick") or {})
    if not paused:  # "try again now", even after a final exit
        kicks.update({n: int(kicks.get(n, 0)) + 1 for n in names})
        control["kick"] = kicks
    _write_control(control)
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        if not STATUS.exists():
            print("error: the supervisor stopped (see its log)", file=sys.stderr)
            return 3
        supervised = json.loads(STATUS.read_text())
        procs = {p["name"]: p for p in supervised["processes"]}
        acked: list[str] | None = supervised.get("paused")  # None: an older supervisor
        if paused:
            waiting = [n for n in names if procs[n]["pid"] is not None or (
                n not in acked if acked is not None
                else time.monotonic() < started + UNACKNOWLEDGED_PAUSE_S)]
        else:
            waiting = [n for n in names if procs[n]["pid"] is None or n in (acked or [])]
            again = [n for n in waiting if procs[n].get("final")
                     and supervised.get("kicks", {}).get(n, 0) >= kicks[n]]
            if again:
                print("error: " + "; ".join(
                    f"{n} started and exited again with {procs[n]['last_exit']}, a final exit "
                    f"(see {procs[n]['log']})" for n in again), file=sys.stderr)
                return 1
        if not waiting:
            print(f"{'paused' if paused else 'resumed'}: {', '.join(names)}")
            return 0
        if time.monotonic() >= deadline:
            print(f"error: still {'running' if paused else 'not running'} after "
                  f"{timeout_s:.0f} s: {', '.join(waiting)} (see .state/supervisor.json and "
                  "its log)", file=sys.stderr)
            return 1
        time.sleep(0.3)


def restart(names: list[str]) -> int:
    """Stop the named processes and start them again (pause, then resume), also one that
    left with a final exit code. The pause waits as long as the supervisor may take to stop
    them (:func:`stop_timeout`; a worker's drain and grace pass 60 s), and whatever it ends
    with, the resume runs: a process left paused would stay down for good."""
    code = 1
    try:
        code = pause(names, paused=True, timeout_s=stop_timeout(names))
    finally:
        if code in (0, 1):  # not after "unknown process" (2) or "no supervisor" (3)
            code = pause(names, paused=False) or code
    return code


USAGE = """usage: python -m ops.stack [up | down | status | pause NAME... | resume NAME... |
                           restart NAME...]
"""


@exits_64_on_config_error
def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "status"
    if command in ("pause", "resume"):
        return pause(args[1:], paused=command == "pause")
    if command == "restart":
        return restart(args[1:])
    if command in ("up", "down", "status") and len(args) <= 1:
        return {"up": up, "down": down, "status": status}[command]()
    print(USAGE, end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

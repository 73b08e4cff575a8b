"""A real Apache Kafka broker as a local JVM process (KRaft combined mode, no Docker).

The jars come from Maven Central through ``kafka/pom.xml`` (``mvn dependency:copy-dependencies``)
into ``<state>/kafka/libs``; Maven's local repository caches them, and a marker holding the
pom's hash makes a second run skip Maven entirely.

``LocalBroker`` formats a storage directory once, starts ``kafka.Kafka`` in its own process
group with single-node settings (replication factors 1, transaction state log min ISR 1),
waits until the broker answers metadata requests, and stops it with SIGTERM (then SIGKILL
after a grace period) so no orphan JVM is left behind.

Command line (used by the Makefile)::

    python -m ops.kafka_local jars|start|stop|status [--dir D] [--port P] [--nodes N]

``--nodes 3`` runs a replicated cluster instead (``ops.kafka_cluster.LocalCluster``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from common.envparse import environment, environment_at_import, exits_64_on_config_error
from ops import envvars
from ops.pids import verified
from ops.supervisor import process_start

if TYPE_CHECKING:
    from common.connection import KafkaConnection
    from ops.kafka_secure import BrokerSecurity

ROOT = Path(__file__).resolve().parent.parent
POM = ROOT / "kafka" / "pom.xml"
KAFKA_VERSION = "3.9.1"
# the environment over .env, as every process reads it (CommonSettings.state_dir)
# (blank is unset, as for the processes: a blank KAFKA_HEAP_OPTS started the JVM unbounded)
DEFAULT_STATE = Path(envvars.text(environment_at_import(), "SFPROV_STATE_DIR", ROOT / ".state"))
JVM_HEAP = envvars.text(environment_at_import(), "KAFKA_HEAP_OPTS", "-Xms512m -Xmx1g")


class BrokerError(RuntimeError):
    """The local broker could not be provisioned, started or stopped."""


_ARGFILE_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t",
                    "\f": "\\f"}


def argfile_quote(arg: str) -> str:
    """``arg`` as one line of a ``java @file``: in double quotes, where a backslash escapes
    the next character (``\\n`` ``\\r`` ``\\t`` ``\\f``: the control character) and a line
    break would end the argument."""
    return '"' + "".join(_ARGFILE_ESCAPES.get(ch, ch) for ch in arg) + '"'


def write_argfile(path: Path, args: list[str]) -> None:
    """A ``java @file`` holding ``args`` (a main class and its arguments), readable by
    its owner only, from the moment it exists (created 0600, not chmod-ed after)."""
    path.unlink(missing_ok=True)  # a leftover of a killed run; O_EXCL below needs it gone
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:  # bytes as argv would carry them (paths included)
        out.write(os.fsencode("".join(argfile_quote(arg) + "\n" for arg in args)))


def require_tools() -> None:
    """One clear line when Java or Maven is missing."""
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        raise BrokerError(
            f"{' and '.join(missing)} not found on PATH: install Java 17+ and Maven 3.8+ "
            "(Debian: apt-get install openjdk-17-jre-headless maven)")


def libs_dir(state_dir: Path = DEFAULT_STATE) -> Path:
    return state_dir / "kafka" / "libs"


def ensure_jars(state_dir: Path = DEFAULT_STATE, *, quiet: bool = True) -> Path:
    """Resolve the broker's jars once; later calls return at once (hash marker)."""
    libs = libs_dir(state_dir)
    marker = libs / ".pom-sha256"
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    if marker.is_file() and marker.read_text().strip() == digest and any(libs.glob("kafka_*.jar")):
        return libs
    require_tools()
    if libs.exists():
        shutil.rmtree(libs)
    libs.mkdir(parents=True)
    cmd = ["mvn", "-B", "-f", str(POM), "dependency:copy-dependencies",
           f"-DoutputDirectory={libs}", "-DincludeScope=runtime"]
    if quiet:
        cmd.insert(1, "-q")
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BrokerError("mvn could not resolve the Kafka jars:\n" + result.stdout[-3000:]
                          + result.stderr[-2000:])
    marker.write_text(digest)
    return libs


def local_bootstrap(env: Mapping[str, str]) -> str:
    """Where the pipeline's Kafka is: ``KAFKA_BOOTSTRAP_SERVERS`` when set, else the local
    broker's address, ``127.0.0.1:KAFKA_PORT``, as ``make up`` starts it
    (``ops.stack.broker``)."""
    return ((env.get("KAFKA_BOOTSTRAP_SERVERS") or "").strip()  # blank: unset, as read
            or f"127.0.0.1:{envvars.port(env, 'KAFKA_PORT', 9092)}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a program listens on ``host``:``port`` (an IPv4 or IPv6 address)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.settimeout(0.5)
        try:
            return s.connect_ex((host, port)) == 0
        except OSError:  # a host name that does not resolve: nothing of ours listens there
            return False


LOG4J = """\
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File={log}
log4j.appender.file.MaxFileSize=50MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.org.apache.kafka.storage.internals.log=WARN
log4j.logger.kafka.log.LogCleaner=WARN
log4j.logger.state.change.logger=WARN
"""


@dataclass
class LocalBroker:
    """One single-node KRaft broker rooted at ``home`` (data, logs, config, pid file)."""

    home: Path
    port: int = 9092
    controller_port: int = 9093
    host: str = "127.0.0.1"
    state_dir: Path = DEFAULT_STATE
    # SASL_SSL listener, SCRAM users and ACLs (ops.kafka_secure); None: plaintext, no ACLs
    security: BrokerSecurity | None = None
    # More plaintext listeners, name -> (port listened on, port advertised): a client that
    # bootstraps from one is told that listener's advertised addresses of every node, so a
    # forwarder on the advertised port carries all of its traffic (ops.netcut)
    extra_listeners: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def connection(self) -> KafkaConnection:
        """How an admin client reaches this broker (the super user when secured)."""
        from common.connection import KafkaConnection

        if self.security is not None:
            return self.security.connection(self.bootstrap)
        return KafkaConnection(self.bootstrap)

    def _secured(self, properties: str) -> str:
        """The server.properties with the security overlay applied (if any)."""
        if self.security is None:
            return properties
        from ops.kafka_secure import overlay_properties

        return overlay_properties(properties, self.security.broker_properties(
            self.host, self.port, self.controller_port))

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "server.log"

    def _properties(self) -> str:
        data = self.home / "data"
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{self.host}:{self.controller_port}",
            f"listeners=PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}"
            + "".join(f",{name}://{self.host}:{ports[0]}"
                      for name, ports in self.extra_listeners.items()),
            f"advertised.listeners=PLAINTEXT://{self.host}:{self.port}"
            + "".join(f",{name}://{self.host}:{ports[1]}"
                      for name, ports in self.extra_listeners.items()),
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
            + "".join(f",{name}:PLAINTEXT" for name in self.extra_listeners),
            f"log.dirs={data}",
            "num.partitions=1",
            "auto.create.topics.enable=false",
            # Single node: every internal topic with one replica.
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=12",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=12",
            "transaction.abort.timed.out.transaction.cleanup.interval.ms=1000",  # 10 s default
            "default.replication.factor=1",
            "min.insync.replicas=1",
            "group.initial.rebalance.delay.ms=0",
            "log.retention.check.interval.ms=60000",
            "num.network.threads=3",
            "num.io.threads=4",
            "",
        ])

    def running_pid(self) -> int | None:
        """The broker's pid, None unless the pid file's process still is the broker started
        here: the pid file holds ``PID START`` and only a process with that start counts
        (:func:`ops.pids.verified`), as for the supervisor's. A file of an earlier release
        (the pid alone) counts when the process is ours and runs ``kafka.Kafka`` with this
        home; a pid that belongs to another user's process now (the broker died, the machine
        restarted) is not ours."""
        try:
            pid_text, _, start = self.pid_file.read_text().strip().partition(" ")
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        if start:
            return pid if verified(pid, start, []) else None
        try:
            os.kill(pid, 0)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:  # gone, another user's (EPERM), or unreadable: not our broker
            return None
        return pid if b"kafka.Kafka" in cmdline and str(self.home).encode() in cmdline else None

    def listener_port(self) -> int | None:
        """The client port the broker in ``home`` was configured with (its server.properties'
        first ``listeners`` entry), None without one."""
        with contextlib.suppress(OSError):
            for line in (self.home / "server.properties").read_text().splitlines():
                if line.startswith("listeners="):
                    first = line.partition("=")[2].split(",")[0]
                    with contextlib.suppress(ValueError):
                        return int(first.rpartition(":")[2])
        return None

    def _moved(self, running: int) -> str:
        """Why a start on :attr:`port` cannot use the broker that runs on ``running``."""
        return f"the broker runs on {running} (KAFKA_PORT={self.port} asked): make down first"

    def _classpath(self) -> str:
        return str(libs_dir(self.state_dir)) + "/*"

    def _java(self, main: str, *args: str, log_config: Path) -> list[str]:
        return ["java", *JVM_HEAP.split(), "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
                f"-Dlog4j.configuration=file:{log_config}",
                f"-Dkafka.logs.dir={self.home / 'logs'}",
                "-cp", self._classpath(), main, *args]

    def prepare(self) -> Path:
        """Write the config and format the storage directory (once)."""
        ensure_jars(self.state_dir)
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        props = self.home / "server.properties"
        # a secured broker's file holds its admin and keystore passwords: created 0600, never
        # readable by others even for a moment (write_text then chmod was, under the umask)
        fd = os.open(props, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(self._secured(self._properties()))
        props.chmod(0o600)  # an existing file keeps its mode through O_CREAT
        log4j = self.home / "log4j.properties"
        log4j.write_text(LOG4J.format(log=self.log_file))
        if not (self.home / "data" / "meta.properties").exists():
            cluster_id = self._new_cluster_id()
            tool = ["kafka.tools.StorageTool", "format",
                    # "=" form: a base64url id may start with "-", which argparse would take
                    # for an option (one format in 64 failed that way).
                    f"--cluster-id={cluster_id}", f"--config={props}", "--ignore-formatted",
                    *(self.security.format_arguments() if self.security else [])]
            # The --add-scram arguments hold every user's password: never on the command
            # line (ps and /proc/<pid>/cmdline show it to every local user) but in an
            # argument file only the owner reads, which the java launcher expands.
            argfile = (self.security.directory if self.security else self.home) / "format.args"
            write_argfile(argfile, tool)
            try:
                result = subprocess.run(
                    ["java", "-Xmx256m", f"-Dlog4j.configuration=file:{log4j}", "-cp",
                     self._classpath(), f"@{argfile}"], capture_output=True, text=True)
            finally:
                argfile.unlink(missing_ok=True)
            if result.returncode != 0:
                raise BrokerError(f"formatting {self.home / 'data'} failed: "
                                  f"{result.stdout}{result.stderr}")
            # how the storage was formatted, for a later start to read: server.properties
            # is rewritten at every start and says only how the broker runs now
            self.format_marker.write_text("scram\n" if self.security else "plain\n")
        return props

    @property
    def format_marker(self) -> Path:
        """``scram`` or ``plain``: whether the storage was formatted with the SCRAM users."""
        return self.home / "data.format"

    def _new_cluster_id(self) -> str:
        """The id the storage is formatted with (a cluster's nodes share one)."""
        return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")

    def start(self, *, timeout: float = 90.0) -> LocalBroker:
        """Start (or find running) and wait until it serves metadata. Idempotent; a broker
        running on another port than :attr:`port` is an error at once."""
        if self.running_pid() is not None:
            running = self.listener_port()
            if running is not None and running != self.port:
                raise BrokerError(self._moved(running))
            self.wait_ready(timeout=timeout)
            return self
        for port in (self.port, self.controller_port):
            if port_open(port, self.host):
                raise BrokerError(f"port {port} is already in use by another process")
        props = self.prepare()
        stdout = open(self.home / "logs" / "stdout.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(self._java("kafka.Kafka", str(props),
                                           log_config=self.home / "log4j.properties"),
                                stdout=stdout, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        stdout.close()
        start = process_start(proc.pid)  # checked by running_pid: the pid may be reused
        self.pid_file.write_text(f"{proc.pid} {start}" if start else str(proc.pid))
        try:
            self.wait_ready(timeout=timeout, proc=proc)
        except BrokerError:
            self.stop()
            raise
        return self

    def wait_ready(self, *, timeout: float = 90.0, proc: subprocess.Popen[bytes] | None = None) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise BrokerError(f"broker exited with {proc.returncode}; see {self.log_file} "
                                  f"and {self.home / 'logs' / 'stdout.log'}")
            if port_open(self.port, self.host):
                try:
                    md = AdminClient(self.connection().librdkafka(
                        **{"socket.timeout.ms": 2000})).list_topics(timeout=3)
                    if md.brokers:
                        return
                except Exception:  # noqa: BLE001 - not ready yet
                    pass
            time.sleep(0.25)
        raise BrokerError(f"broker on {self.bootstrap} not ready after {timeout:.0f}s; "
                          f"see {self.log_file}")

    def stop(self, *, grace: float = 30.0) -> bool:
        """SIGTERM the broker's process group, wait, SIGKILL if needed (and say so on
        stderr). True if it ran."""
        pid = self.running_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.1)
            print(f"warning: kafka did not stop within {grace:g} s: killed (see "
                  f"{self.log_file})", file=sys.stderr)
        self.pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> None:
        """SIGKILL, as a crash would (chaos tests)."""
        pid = self.running_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Whether our process ``pid`` still runs (a pid that is another user's now is not)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie child of ours counts as gone once reaped
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        stat = Path(f"/proc/{pid}/stat")
        try:
            return stat.read_text().split(")")[-1].split()[0] != "Z"
        except OSError:
            return False


@exits_64_on_config_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.kafka_local",
                                     description="Run the local single-node Kafka broker.")
    parser.add_argument("command", choices=["jars", "start", "stop", "status"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_STATE / "kafka" / "broker",
                        help="broker home (data, logs, pid)")
    env = environment()  # as `make up` reads them (ops.stack.broker)
    parser.add_argument("--port", type=int, default=envvars.port(env, "KAFKA_PORT", 9092))
    parser.add_argument("--controller-port", type=int,
                        default=envvars.port(env, "KAFKA_CONTROLLER_PORT", 9093))
    parser.add_argument("--nodes", type=int, default=1,
                        help="1: the single-node broker (make up); N > 1: a replicated "
                             "N-node cluster (ops/kafka_cluster.py), default dir "
                             ".state/kafka/cluster")
    args = parser.parse_args(argv)
    if args.nodes > 1:
        from ops.kafka_cluster import cluster_command

        return cluster_command(args)
    from ops import stack

    try:
        if args.command == "jars":
            print(f"kafka jars: {ensure_jars()}")
            return 0
        # as `make up` builds it, KAFKA_LOCAL_SECURE included: a broker started here unsecured
        # would have to be deleted (make clean) before a secured `make up` could use it
        broker = stack.broker(args.dir, args.port, args.controller_port)
        if args.command == "start":
            problem = stack.secure_broker_ready(broker)
            if problem:
                raise BrokerError(problem)
            already = broker.running_pid() is not None
            broker.start()
            print(f"kafka {KAFKA_VERSION}: {'already running' if already else 'started'} on "
                  f"{broker.bootstrap} (pid {broker.running_pid()}, logs {broker.log_file})")
        elif args.command == "stop":
            print("kafka: stopped" if broker.stop() else "kafka: not running")
        else:
            pid = broker.running_pid()
            print(f"kafka: running on {broker.bootstrap} (pid {pid})" if pid else "kafka: not running")
            return 0 if pid else 3
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # the package's module, not this __main__ copy of it: the broker comes from ops.stack,
    # which raises ops.kafka_local.BrokerError, a class this copy would not catch
    from ops.kafka_local import main as package_main

    sys.exit(package_main())

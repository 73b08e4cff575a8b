"""Shared fixtures: a real Kafka broker for the session, unique names per test.

The broker is the project's own local KRaft broker (``ops.kafka_local``) in a temporary
directory on free ports — real Apache Kafka, never a mock. ``KAFKA_TEST_BOOTSTRAP`` points
the suite at an existing broker instead; ``SFPROV_TEST_DOCKER=1`` uses testcontainers where
a Docker engine exists (see :data:`DOCKER_KAFKA_IMAGE`). When the broker cannot start,
broker tests are skipped locally but FAIL when ``CI=true``.

The broker runs in its own session (a Ctrl-C or a signal to pytest's process group does not
reach it), so the fixture's teardown stops it: SIGTERM (a cancelled CI job, `timeout`)
ends the run as Ctrl-C does, through the teardown, instead of killing pytest and leaving the
JVM behind. A process that dies without its teardown (SIGKILL, or a pytest-xdist process the
controller kills once it outlasts its exit timeout) leaves it to a watcher
(``ops.owner_watch.stop_with_owner``), which stops it then. Under ``make test`` each of the
suite's processes has a session broker of its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from common.settings import KafkaSettings

if TYPE_CHECKING:
    from ops.netcut import NetCut

IN_CI = os.environ.get("CI", "").lower() == "true"
# testcontainers' KafkaContainer (4.x, ``testcontainers.community.kafka``) configures and
# starts Confluent's cp-kafka images only: it writes /etc/confluent/docker/configure, waits
# for cp-kafka's log line, and its with_kraft() refuses any tag below 7.0.0 — which is why
# ``apache/kafka:3.9.1`` (tag 3.9.1) raised "not supported in Kraft mode". Confluent Platform
# 7.9 ships Apache Kafka 3.9, the version of the local broker and of the compose file.
DOCKER_KAFKA_IMAGE = os.environ.get("SFPROV_TEST_DOCKER_IMAGE", "confluentinc/cp-kafka:7.9.1")


_prior_sigterm: Any = None
_installed = False
_stopping = False  # a Ctrl-C or SIGTERM is being handled: the teardown must get to run
_controller = False  # pytest-xdist's controller: its children are the suite's processes


def _children() -> list[int]:
    """This process's children, from ``/proc`` (none where there is no ``/proc``). Read as
    bytes: a process name is any bytes (a name cut at 15 bytes may split a character), and
    one not UTF-8 anywhere on the box must not stop the scan."""
    me, found = os.getpid(), []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes()
                parent = int(stat.rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if parent == me:
                found.append(int(entry))
    return found


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM ends the session as Ctrl-C does: KeyboardInterrupt, then the fixtures'
    teardown (the session broker stopped). A handler installed before runs first. While a
    stop is already under way a further SIGTERM is ignored, so it cannot cut the teardown
    short (SIGKILL still ends everything, leaving the JVM to the caller)."""
    global _stopping
    if _stopping:
        return
    _stopping = True
    # Under pytest-xdist each process tears down its own session. The controller tells them
    # now: xdist's exit interrupts a process with a SIGINT 5 s later (lost where SIGINT is
    # ignored, as in a background job) and kills it 5 s after that. A process so told lets
    # that SIGINT pass, so it cannot cut the teardown short (the watcher of
    # ops.owner_watch.stop_with_owner stops the broker should the kill come first).
    if _controller:
        for pid in _children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    elif os.environ.get("PYTEST_XDIST_WORKER"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if callable(_prior_sigterm):
        _prior_sigterm(signum, frame)
    raise KeyboardInterrupt(f"signal {signum} (SIGTERM)")


def pytest_sessionstart(session: pytest.Session) -> None:
    global _prior_sigterm, _installed, _controller
    _controller = session.config.pluginmanager.has_plugin("dsession")
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set in the main thread
    prior = signal.getsignal(signal.SIGTERM)
    if prior is signal.SIG_IGN:
        return  # started with SIGTERM ignored (nohup-like): keep it so
    _prior_sigterm = prior
    signal.signal(signal.SIGTERM, _on_sigterm)
    _installed = True


def pytest_keyboard_interrupt(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    global _stopping
    _stopping = True  # Ctrl-C then SIGTERM (a CI cancel sends both): let the teardown finish


def pytest_unconfigure(config: pytest.Config) -> None:
    global _installed
    if _installed and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _prior_sigterm if _prior_sigterm is not None
                      else signal.SIG_DFL)
        _installed = False


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"Kafka broker unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"Kafka broker unavailable: {reason}")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a real broker that lives for the whole test session."""
    external = os.environ.get("KAFKA_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    if os.environ.get("SFPROV_TEST_DOCKER") == "1":
        yield from _docker_kafka()
        return
    from ops.kafka_local import BrokerError, LocalBroker, free_port
    from ops.owner_watch import stop_with_owner

    home = Path(tmp_path_factory.mktemp("kafka"))
    # A second listener for the tests that cut a process off from the broker (broker_cut)
    global _CUT_PORTS
    _CUT_PORTS = (free_port(), free_port())
    broker = LocalBroker(home, port=free_port(), controller_port=free_port(),
                         extra_listeners={CUT_LISTENER: _CUT_PORTS})
    watcher = None
    try:  # a start that fails or is interrupted (Ctrl-C, SIGTERM) stops the broker too
        try:
            broker.start(timeout=120)
        except BrokerError as exc:
            _unavailable(str(exc))
        pid = broker.running_pid()
        if pid is not None:  # and a session that dies without its teardown (SIGKILL)
            watcher = stop_with_owner(pid)
        yield broker.bootstrap
    finally:
        broker.stop()
        if watcher is not None:
            try:
                watcher.wait(timeout=10)  # it ends once the broker's group has
            except subprocess.TimeoutExpired:
                watcher.kill()
                watcher.wait()


CUT_LISTENER = "CUT"
_CUT_PORTS: tuple[int, int] | None = None  # the session broker's (listened, advertised)


@pytest.fixture
def broker_cut(kafka_bootstrap: str) -> Iterator[tuple[NetCut, str]]:
    """``(netcut, bootstrap)``: a process given this bootstrap reaches the session broker
    only through the route ``"cut"`` of ``netcut`` (its ``CUT`` listener advertises the
    forwarder), which ``netcut.cut("cut")`` / ``heal("cut")`` cut and heal."""
    from ops.netcut import NetCut

    if _CUT_PORTS is None:
        _unavailable("the session broker is not this suite's own: no listener to cut")
    listened, advertised = _CUT_PORTS
    with NetCut() as netcut:
        netcut.forward("cut", listened, listen_port=advertised)
        yield netcut, f"127.0.0.1:{advertised}"


def _docker_kafka() -> Iterator[str]:  # pragma: no cover - needs a Docker engine
    """A KRaft broker in Docker through testcontainers (see DOCKER_KAFKA_IMAGE)."""
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:
        try:  # testcontainers < 4.13 only has the old module path
            from testcontainers.kafka import KafkaContainer  # type: ignore[no-redef]
        except ImportError as exc:
            _unavailable(f"testcontainers not importable: {exc}")
    container = KafkaContainer(DOCKER_KAFKA_IMAGE).with_kraft()
    try:
        container.start(timeout=180)  # the default 30 s is short for a first pull's start
    except Exception as exc:  # noqa: BLE001 - no engine, no image: skip locally, fail in CI
        _unavailable(f"testcontainers could not start {DOCKER_KAFKA_IMAGE}: {exc}")
    try:
        yield container.get_bootstrap_server()
    finally:
        container.stop()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``unique_name("orders")`` → ``"orders-<test>-<random>"``: a topic/group no other test uses."""
    test = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40]

    def make(prefix: str) -> str:
        return f"{prefix}-{test}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture
def kafka_settings(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> KafkaSettings:
    """Settings whose every topic name carries a per-test prefix; the topics exist."""
    from common.kafka import ensure_topics

    settings = KafkaSettings.load({}, bootstrap_servers=kafka_bootstrap,
                                  topic_prefix=unique_name("t") + ".", partitions=3)
    ensure_topics(settings)
    return settings


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0,
             interval: float = 0.5) -> Any:
    """``check()``'s first truthy answer, asked every ``interval`` s; AssertionError naming
    ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not after {timeout:.0f}s")


def create_topic(bootstrap: str, name: str, partitions: int = 1,
                 config: dict[str, str] | None = None, *, replication: int = 1,
                 timeout: float = 30) -> None:
    """Create one topic with the project's own create (tests use unique names, so nothing
    else makes it). A fresh client's first request may be retired with its bootstrap
    connection (``_DESTROY_BROKER``) or time out on a loaded box after it reached the
    controller; the retry then finds the topic existing, and ``create_topics`` reports it
    so — two CI runs failed on asserting "created" — so either answer is this create's."""
    from confluent_kafka.admin import AdminClient

    from common.kafka import TopicSpec, create_topics

    admin = AdminClient({"bootstrap.servers": bootstrap})
    created, existing = create_topics(
        admin, [TopicSpec(name, partitions, replication, config or {})], timeout=timeout)
    assert created + existing == [name]


def open_transactions(bootstrap: str, topics: dict[str, int]) -> list[Any]:
    """Partitions (``TopicPartition``) of ``topics`` (name → partition count) whose last
    stable offset is behind their end: a transaction is open there, or one has ended and
    its marker is not written yet."""
    from confluent_kafka import IsolationLevel, TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec

    admin = AdminClient({"bootstrap.servers": bootstrap})
    tps = [TopicPartition(t, p) for t, n in topics.items() for p in range(n)]
    ends = {}
    for level in (IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED):
        futures = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps},
                                     isolation_level=level, request_timeout=30)
        ends[level] = {(tp.topic, tp.partition): f.result().offset for tp, f in futures.items()}
    return [tp for tp in tps if ends[IsolationLevel.READ_COMMITTED][(tp.topic, tp.partition)]
            < ends[IsolationLevel.READ_UNCOMMITTED][(tp.topic, tp.partition)]]


def wait_markers_written(bootstrap: str, topics: dict[str, int], timeout: float = 30.0) -> None:
    """Wait until every partition of ``topics`` is stable (no :func:`open_transactions`).

    ``commit_transaction``/``abort_transaction`` return once the coordinator has logged the
    decision; it writes the markers to the partitions after answering, so for a moment the
    last stable offset still stops a ``read_committed`` reader before the transaction's
    records (its end-of-partition comes early, and a read to it misses them)."""
    wait_for(f"the transaction markers on {sorted(topics)}",
             lambda: not open_transactions(bootstrap, topics), timeout, interval=0.05)
